//! Accept loops (the peer API, `/metrics`): how long to pause after a failed
//! accept, so a process out of file descriptors does not spin.

use std::time::Duration;

/// Pauses after a failed accept (out of file descriptors, say): the first,
/// doubled on every further failure up to the last.
const ACCEPT_PAUSE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// The pause before the next accept after `failures` failed ones in a row.
pub(crate) fn pause(failures: u32) -> Duration {
    let (first, most) = ACCEPT_PAUSE;
    first
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(most)
}

/// Wait out an accept pause. The servers are IO edges, not decisions: the
/// pause is real time whatever clock the controller runs on.
#[allow(clippy::disallowed_methods)]
pub(crate) async fn backoff(pause: Duration) {
    tokio::time::sleep(pause).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_and_are_capped() {
        assert_eq!(pause(1), Duration::from_millis(50));
        assert_eq!(pause(2), Duration::from_millis(100));
        assert_eq!(pause(40), Duration::from_secs(1));
    }
}
