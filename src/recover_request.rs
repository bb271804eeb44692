//! `etcd-manager-ctl recover-quorum`: the request file and its life.
//!
//! The ctl writes `<store>/etcd-manager/recover-quorum` holding a stamp (ns
//! since the epoch, on its clock). The leader acts on it only while the
//! quorum is lost, and only while it is younger than [`TTL`]; it removes a
//! request that has expired, and one it reads while the cluster it sees
//! holds its quorum (the quorum came back first): a request left armed
//! would otherwise rebuild the next quorum loss at once, without the grace
//! an operator decides on. A request without a stamp (an older ctl's) ages
//! from when the leader first read it. `status` shows a pending request and
//! when it expires; the ctl withdraws its own request when it gives up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a request stays valid.
pub const TTL: Duration = Duration::from_secs(3600);
/// A stamp this far ahead of the leader's clock is not believed (the
/// request then ages from when the leader first read it).
pub const MAX_AHEAD: Duration = Duration::from_secs(300);

/// The request file's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoverQuorumRequest {
    /// ns since the epoch, on the ctl's clock.
    pub requested_at: u64,
}

impl RecoverQuorumRequest {
    pub fn body(&self) -> Vec<u8> {
        let mut body = serde_json::to_vec(self).unwrap_or_default();
        body.push(b'\n');
        body
    }

    /// The stamp in a request file; None for a body that is not one (an
    /// older ctl wrote `{}`).
    pub fn parse(body: &[u8]) -> Option<u64> {
        serde_json::from_slice::<RecoverQuorumRequest>(body)
            .ok()
            .map(|r| r.requested_at)
    }
}

/// How old a request is: by its stamp against the leader's wall clock
/// (`wall_ns`), else (no stamp, or one from the future) since the leader
/// first read it (`seen_for`). Pure.
pub fn age(stamp: Option<u64>, wall_ns: u64, seen_for: Duration) -> Duration {
    match stamp {
        Some(at) if at <= wall_ns.saturating_add(MAX_AHEAD.as_nanos() as u64) => {
            Duration::from_nanos(wall_ns.saturating_sub(at)).max(seen_for)
        }
        _ => seen_for,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_ages_by_its_stamp_or_since_it_was_seen() {
        let s = Duration::from_secs;
        let ns = |secs: u64| secs * 1_000_000_000;
        let body = RecoverQuorumRequest {
            requested_at: ns(1000),
        }
        .body();
        assert_eq!(RecoverQuorumRequest::parse(&body), Some(ns(1000)));
        assert_eq!(RecoverQuorumRequest::parse(b"{}\n"), None);
        assert_eq!(age(Some(ns(1000)), ns(1060), s(5)), s(60));
        // Seen longer than its stamp says (the ctl's clock is ahead): the longer.
        assert_eq!(age(Some(ns(1000)), ns(1010), s(30)), s(30));
        // From the future beyond belief, or none: since it was seen.
        assert_eq!(age(Some(ns(9000)), ns(1000), s(7)), s(7));
        assert_eq!(age(None, ns(1000), s(7)), s(7));
    }
}
