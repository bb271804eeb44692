//! The lease alone under clock skew: two real `LeaseClient`s over the
//! simulation's store, each on its own clock (0.9-1.1x true time). The holder
//! renews for a while and then stops (cut off from the store, or paused);
//! the other contends all along. Mutual exclusion: at no instant of true time
//! do both hold the lease. The whole simulation rarely puts a holder's last
//! action at the very end of its validity (a holder cut off from the
//! managers gives up at once), so this drives the margin directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::store::FaultyStore;

/// One true-time step.
const STEP: Duration = Duration::from_millis(10);
const END: Duration = Duration::from_secs(40);

/// Run one seed with `config`; `Some(what)` if both clients held the lease at
/// one instant.
pub fn overlap(seed: u64, config: &lock::LeaseConfig) -> Option<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = FaultyStore::new(rng.random());
    let origin = Instant::now();
    let rates = [rng.random_range(0.9..1.1), rng.random_range(0.9..1.1)];
    let mut clients: Vec<lock::LeaseClient> = ["a", "b"]
        .into_iter()
        .map(|id| {
            lock::LeaseClient::new(
                Arc::new(store.clone()),
                Path::from("lease"),
                id.to_string(),
                config.clone(),
            )
            .with_instance(rng.random())
        })
        .collect();
    // Each ticks on its own period (the driver's passes: 0.2-1 s, plus
    // wake-ups); a stops ticking at `stop`.
    let periods = [
        Duration::from_millis(rng.random_range(100..1000)),
        Duration::from_millis(rng.random_range(100..1000)),
    ];
    let mut next = [
        Duration::ZERO,
        Duration::from_millis(rng.random_range(1..500)),
    ];
    let stop = Duration::from_millis(rng.random_range(500..20_000));
    let mut now = Duration::ZERO;
    while now < END {
        let local = |i: usize| origin + Duration::from_secs_f64(now.as_secs_f64() * rates[i]);
        for i in 0..2 {
            if now >= next[i] && (i == 1 || now < stop) {
                let t = local(i);
                let _ = futures::executor::block_on(clients[i].tick(t, true));
                next[i] = now + periods[i];
            }
        }
        let held: Vec<Option<u64>> = (0..2).map(|i| clients[i].held(local(i))).collect();
        if let [Some(ea), Some(eb)] = held[..] {
            return Some(format!(
                "seed {seed}: at {now:?} both hold the lease (a epoch {ea}, clock {:.3}x, stopped at {stop:?}; b epoch {eb}, clock {:.3}x)",
                rates[0], rates[1]
            ));
        }
        now += STEP;
    }
    None
}
