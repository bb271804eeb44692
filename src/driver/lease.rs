//! The leader lease as the driver uses it: one [`lock::LeaseClient`] shared by
//! the leader loop and a renewal task, so the lease is renewed on time while
//! the loop is busy with a long action (a backup, a member start, waiting for
//! a restore) instead of lapsing until the next pass.
//!
//! Every store call of the lease is bounded by the lease duration: a store
//! that does not answer cannot hold the loop for object_store's whole retry
//! budget. A write cut off that way is remembered by the client as one whose
//! outcome is unknown and settled by its next look.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics as m;

/// After a failed renewal, the next attempt waits this long.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What the loop may read without waiting for a store call in flight.
#[derive(Debug, Default, Clone)]
struct View {
    /// Our epoch and how long we may act with it.
    held: Option<(u64, Instant)>,
    /// The sequence number of our current lease record.
    seq: u64,
    /// When the next renewal is due.
    renew_at: Option<Instant>,
    highest_epoch: u64,
}

impl View {
    fn valid(&self, now: Instant) -> Option<(u64, Instant)> {
        self.held.filter(|(_, until)| now < *until)
    }
}

/// The lease client behind a lock, with a view of its state that never waits.
pub struct SharedLease {
    client: tokio::sync::Mutex<lock::LeaseClient>,
    view: Mutex<View>,
    /// The leader loop's last wish: renew only while it still wants the lease.
    want: AtomicBool,
    changed: Notify,
    /// Our current record while we hold the lease, for the gossip payload.
    claims: watch::Sender<Option<lock::LeaseClaim>>,
    clock: Arc<dyn Clock>,
    bound: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Lease(#[from] lock::Error),
    #[error("the lease store did not answer within {0:?}; the next step tries again")]
    Timeout(Duration),
}

impl SharedLease {
    pub fn new(client: lock::LeaseClient, clock: Arc<dyn Clock>) -> Arc<SharedLease> {
        let bound = client.config().duration;
        Arc::new(SharedLease {
            client: tokio::sync::Mutex::new(client),
            view: Mutex::new(View::default()),
            want: AtomicBool::new(false),
            changed: Notify::new(),
            claims: watch::Sender::new(None),
            clock,
            bound,
        })
    }

    fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn refresh(&self, client: &lock::LeaseClient, now: Instant) {
        let held = client
            .held(now)
            .zip(client.remaining(now))
            .map(|(epoch, left)| (epoch, now + left));
        *self.view.lock().unwrap_or_else(|e| e.into_inner()) = View {
            held,
            seq: client.held_seq(now).unwrap_or(0),
            renew_at: client.renew_at(),
            highest_epoch: client.highest_epoch_seen(),
        };
        let claim = client.claim(now);
        self.claims.send_if_modified(|c| {
            let changed = *c != claim;
            *c = claim;
            changed
        });
        self.changed.notify_one();
    }

    /// Our claim (see [`lock::LeaseClaim`]), whenever it changes.
    pub fn claims(&self) -> watch::Receiver<Option<lock::LeaseClaim>> {
        self.claims.subscribe()
    }

    /// Manager `claimant`'s claim, received through gossip (its own payload);
    /// `now` read when it arrived.
    pub async fn note_claim(&self, claim: &lock::LeaseClaim, claimant: &str, now: Instant) {
        let mut client = self.client.lock().await;
        client.note_claim(claim, claimant, now);
        self.refresh(&client, self.clock.now());
    }

    /// Some(epoch) while we hold the lease and may act (`now` before its validity ends).
    pub fn held(&self, now: Instant) -> Option<u64> {
        self.view().valid(now).map(|(epoch, _)| epoch)
    }

    /// The sequence number of our current lease record (0 when not holding).
    pub fn seq(&self) -> u64 {
        self.view().seq
    }

    /// How long we may still act.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.view().valid(now).map(|(_, until)| until - now)
    }

    pub fn highest_epoch_seen(&self) -> u64 {
        self.view().highest_epoch
    }

    /// One lease step (see [`lock::LeaseClient::tick`]); `now` read before the call.
    pub async fn tick(&self, now: Instant, want: bool) -> Result<lock::LeaseState, LeaseError> {
        self.want.store(want, Ordering::SeqCst);
        let mut client = self.client.lock().await;
        self.tick_locked(&mut client, now, want).await
    }

    async fn tick_locked(
        &self,
        client: &mut lock::LeaseClient,
        now: Instant,
        want: bool,
    ) -> Result<lock::LeaseState, LeaseError> {
        let result = tokio::select! {
            biased;
            r = client.tick(now, want) => r.map_err(LeaseError::from),
            _ = self.clock.sleep(self.bound) => Err(LeaseError::Timeout(self.bound)),
        };
        self.refresh(client, self.clock.now());
        result
    }

    /// Raise the highest epoch seen; a higher one than ours ends our holding at once.
    pub async fn observe_epoch(&self, epoch: u64) {
        let mut client = self.client.lock().await;
        client.observe_epoch(epoch);
        self.refresh(&client, self.clock.now());
    }

    /// Release if held (one write, bounded like every other).
    pub async fn release(&self) -> Result<(), LeaseError> {
        self.want.store(false, Ordering::SeqCst);
        let mut client = self.client.lock().await;
        let now = self.clock.now();
        let result = tokio::select! {
            biased;
            r = client.release(now) => r.map_err(LeaseError::from),
            _ = self.clock.sleep(self.bound) => Err(LeaseError::Timeout(self.bound)),
        };
        self.refresh(&client, self.clock.now());
        result
    }

    /// Renew whenever a renewal falls due while we hold the lease and the loop
    /// wants it, until cancelled. A failed renewal is tried again after
    /// [`RETRY_PAUSE`] while the lease is still valid; once it is not, the
    /// loop's next step decides.
    pub async fn keep_renewed(self: Arc<Self>, cancel: CancellationToken) {
        let mut retry_at: Option<Instant> = None;
        loop {
            let view = self.view();
            let now = self.clock.now();
            let valid = view.valid(now).is_some();
            let wait = match view.renew_at {
                Some(at) if valid && self.want.load(Ordering::SeqCst) => at
                    .max(retry_at.unwrap_or(at))
                    .saturating_duration_since(now),
                // Nothing to renew: wait for the loop's next step.
                _ => Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = self.changed.notified() => continue,
                _ = self.clock.sleep(wait) => {}
            }
            let mut client = self.client.lock().await;
            // Judged under the lock: the loop may have stepped down (a renewal now would
            // take back a lease it just released) or renewed while we waited.
            let now = self.clock.now();
            if !self.want.load(Ordering::SeqCst)
                || client.held(now).is_none()
                || client.renew_at().is_none_or(|at| now < at)
                || retry_at.is_some_and(|at| now < at)
            {
                continue;
            }
            match self.tick_locked(&mut client, now, true).await {
                Ok(_) => {
                    retry_at = None;
                    metrics::counter!(m::LEASE_OPERATIONS, "result" => "ok").increment(1);
                }
                Err(e) => {
                    retry_at = Some(now + RETRY_PAUSE);
                    metrics::counter!(m::LEASE_OPERATIONS, "result" => "error").increment(1);
                    tracing::warn!(error = %e, "lease renewal failed");
                }
            }
        }
    }
}
