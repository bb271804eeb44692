//! The leadership rules as pure functions: the driver and the node use them
//! on real processes, the simulation in `tests/` on many simulated nodes, so
//! both run one implementation.

use std::time::Duration;

/// The candidate rule: a manager asks for the lease only while it has the
/// lowest id among the managers its gossip sees alive (itself included).
pub fn is_candidate<'a>(me: &str, alive: impl IntoIterator<Item = &'a str>) -> bool {
    alive.into_iter().all(|id| id >= me)
}

/// Majority acceptance: `accepted` (the candidate included) must be more than
/// half of every manager gossip has known (down ones included) and of the
/// spec's member count, so a manager alone in its view (a partition, a wrong
/// gossip key) cannot lead.
pub fn has_majority(accepted: usize, known: usize, spec_count: usize) -> bool {
    accepted * 2 > known.max(spec_count).max(1)
}

/// The managers majority acceptance counts: every one gossip has known
/// (`(id, address, down)`), down ones included (a partition must not shrink
/// the count), except a down one whose address a different manager now
/// holds alive: that host was wiped and started again under a new id, so the
/// old id is gone for good. Without the exception every host replaced
/// within gossip's memory (a day) would raise the count, and three replaced
/// hosts of three would leave no majority at all.
pub fn known_managers<'a, A: PartialEq + 'a>(
    members: impl IntoIterator<Item = (&'a str, A, bool)>,
) -> usize {
    let all: Vec<(&str, A, bool)> = members.into_iter().collect();
    all.iter()
        .filter(|(id, addr, down)| {
            !*down
                || !all
                    .iter()
                    .any(|(other, a, d)| !*d && other != id && a == addr)
        })
        .count()
}

/// Why a manager refuses a candidate ([`judge`]): it knows an alive
/// manager with a lower id, which the candidate rule makes the one to lead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{lower} is alive and has a lower id than {candidate}")]
pub struct LowerIdAlive {
    /// The lowest alive id this manager knows.
    pub lower: String,
    /// The candidate refused.
    pub candidate: String,
}

/// A manager's judgement of a candidate: refused, naming the reason, if it
/// knows an alive manager with a lower id.
pub fn judge<'a>(
    alive: impl IntoIterator<Item = &'a str>,
    candidate: &str,
) -> Result<(), LowerIdAlive> {
    match alive.into_iter().filter(|id| *id < candidate).min() {
        Some(lower) => Err(LowerIdAlive {
            lower: lower.to_string(),
            candidate: candidate.to_string(),
        }),
        None => Ok(()),
    }
}

/// How long an action may keep retrying (an etcd membership change that
/// etcd refuses for now): `wanted`, but never past what is left of the lease
/// (`lease_left`), so no new attempt starts after a successor may have taken
/// over. Found by the simulation: a 15 s retry under a 5 s lease removed the
/// new leader's member. Not covered: the last attempt itself, which etcd can
/// still apply up to its call timeout (5 s) later, more than the margin
/// leaves (etcd's membership API cannot be fenced by our epoch).
pub fn retry_deadline(wanted: Duration, lease_left: Duration) -> Duration {
    wanted.min(lease_left)
}

/// How long a manager that just started waits before it seeks the lease:
/// two of gossip's payload refreshes (`refresh`) and a second. Its first
/// pass comes before any other manager has answered its gossip, so its view
/// holds itself alone; a leader with that view would see no etcd running
/// anywhere and could restore or create a cluster beside the one its peers
/// still serve (found by the simulation, seed 842: a manager back from a 4 s
/// crash took the lease, restored onto itself alone, and 13 writes
/// acknowledged by the old cluster meanwhile were lost). Within the settle
/// time every alive manager has sent its payload at least once.
pub fn settle_time(refresh: Duration) -> Duration {
    refresh * 2 + Duration::from_secs(1)
}

/// Whether a manager `since_start` after its start may seek the lease.
pub fn settled(since_start: Duration, settle: Duration) -> bool {
    since_start >= settle
}

/// The fence: a request carrying `epoch` is admitted only if no higher epoch
/// has been seen.
pub fn admits(highest_seen: u64, epoch: u64) -> bool {
    epoch >= highest_seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_alive_id_is_the_candidate() {
        assert!(is_candidate("a", ["b", "c"]));
        assert!(!is_candidate("b", ["a", "c"]));
        assert!(is_candidate("b", []));
    }

    #[test]
    fn majority_counts_known_managers_and_the_spec() {
        assert!(has_majority(2, 3, 3));
        assert!(!has_majority(1, 1, 3), "alone, with a spec of three");
        assert!(!has_majority(2, 4, 3));
        assert!(!has_majority(2, 3, 5));
        assert!(has_majority(1, 1, 0), "no spec yet: a single manager");
    }

    #[test]
    fn a_replaced_manager_leaves_the_count_a_partitioned_one_stays() {
        // Three hosts, all three wiped and started again under new ids.
        let replaced = [
            ("a", 1, true),
            ("b", 2, true),
            ("c", 3, true),
            ("x", 1, false),
            ("y", 2, false),
            ("z", 3, false),
        ];
        assert_eq!(known_managers(replaced), 3);
        assert!(has_majority(3, known_managers(replaced), 3));
        // Down without a successor at its address: still counted.
        assert_eq!(
            known_managers([("a", 1, false), ("b", 2, true), ("c", 3, true)]),
            3
        );
        // Two ids alive at one address are both counted (nothing is known gone).
        assert_eq!(known_managers([("a", 1, false), ("b", 1, false)]), 2);
    }

    #[test]
    fn a_lower_alive_id_refuses_and_fences_keep_order() {
        assert!(judge(["b", "c"], "b").is_ok());
        let refused = judge(["a", "c"], "b").expect_err("a is lower");
        assert_eq!(refused.lower, "a");
        assert!(refused.to_string().contains("a is alive"), "{refused}");
        assert!(admits(5, 5) && admits(5, 6) && !admits(5, 4));
    }

    #[test]
    fn a_manager_seeks_the_lease_only_after_two_payload_refreshes() {
        let s = Duration::from_secs;
        let settle = settle_time(s(2));
        assert_eq!(settle, s(5));
        assert!(!settled(Duration::ZERO, settle));
        assert!(!settled(Duration::from_millis(4_999), settle));
        assert!(settled(s(5), settle));
    }

    #[test]
    fn retries_stop_with_the_lease() {
        let s = Duration::from_secs;
        assert_eq!(retry_deadline(s(15), s(3)), s(3));
        assert_eq!(retry_deadline(s(15), s(20)), s(15));
    }
}
