//! Backoff per action kind after a failure: the next try of an action that
//! failed waits 1 s, 2 s, 4 s ... up to a minute, and the wait is reset by a
//! success. While an action waits, the leader's plan holds (shown in
//! `status` as a wait, and in `etcd_manager_action_backoff_seconds`), so a
//! failing step (a store that is down, an etcd that refuses) is not tried
//! again on every pass. Pure: times are given.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::controller::{Plan, WaitReason};

/// The first wait after a failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest wait.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// The wait after `failures` failures in a row (1 s, 2 s, 4 s ... 60 s).
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_CAP)
}

#[derive(Debug, Clone)]
struct Failing {
    failures: u32,
    retry_at: Instant,
    error: String,
}

/// The failing action kinds (by [`crate::controller::Action::label`]).
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    failing: BTreeMap<&'static str, Failing>,
}

impl Backoff {
    /// `action` failed at `now`: the wait before its next try. A
    /// `permanent` failure (one an operator must fix) waits the longest at
    /// once, and its error says it needs an operator.
    pub fn failed(
        &mut self,
        action: &'static str,
        now: Instant,
        error: &str,
        permanent: bool,
    ) -> Duration {
        let f = self.failing.entry(action).or_insert(Failing {
            failures: 0,
            retry_at: now,
            error: String::new(),
        });
        f.failures = f.failures.saturating_add(1);
        let wait = if permanent {
            BACKOFF_CAP
        } else {
            delay(f.failures)
        };
        f.retry_at = now + wait;
        let error: String = error.chars().take(300).collect();
        f.error = if permanent {
            format!("needs an operator: {error}")
        } else {
            error
        };
        wait
    }

    /// While `action` waits after failures: how many in a row, and how long
    /// until it may be tried again.
    pub fn waiting(&self, action: &str, now: Instant) -> Option<(u32, Duration)> {
        let f = self.failing.get(action)?;
        (now < f.retry_at).then(|| (f.failures, f.retry_at.duration_since(now)))
    }

    /// `action` succeeded: its next failure waits the base time again.
    pub fn succeeded(&mut self, action: &'static str) {
        self.failing.remove(action);
    }

    /// The plan as it may run at `now`: unchanged, or, when one of its
    /// actions is still waiting after a failure, no actions and a wait
    /// saying so (the plan's earlier steps, a backup before a change, are
    /// not repeated meanwhile).
    pub fn gate(&self, plan: Plan, now: Instant) -> Plan {
        let waiting = plan.actions.iter().find_map(|a| {
            let (failures, left) = self.waiting(a.label(), now)?;
            Some((a.label(), failures, left))
        });
        match waiting {
            Some((action, failures, left)) => {
                let mut waits = plan.waits;
                waits.push(WaitReason::BackingOff {
                    action: action.to_string(),
                    failures,
                    retry_in_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                    error: self
                        .failing
                        .get(action)
                        .map(|f| f.error.clone())
                        .unwrap_or_default(),
                });
                Plan {
                    actions: vec![],
                    waits,
                }
            }
            None => plan,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // a base instant; every time is an offset of it
    use super::*;
    use crate::controller::{Action, BackupReason};

    fn backup() -> Plan {
        Plan {
            actions: vec![Action::TakeBackup {
                reason: BackupReason::Periodic,
            }],
            waits: vec![],
        }
    }

    #[test]
    fn waits_double_up_to_a_minute_and_reset_on_success() {
        let waits: Vec<u64> = (1..=9).map(|n| delay(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(u32::MAX), BACKOFF_CAP);
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(
            b.failed("take_backup", t0, "store down", false),
            Duration::from_secs(1)
        );
        assert_eq!(
            b.failed("take_backup", t0, "store down", false),
            Duration::from_secs(2)
        );
        b.succeeded("take_backup");
        assert_eq!(
            b.failed("take_backup", t0, "store down", false),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_failure_an_operator_must_fix_waits_the_longest_at_once_and_says_so() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(
            b.failed("clear_space_alarm", t0, "data at the quota", true),
            BACKOFF_CAP
        );
        let space = Plan {
            actions: vec![Action::ClearSpaceAlarm],
            waits: vec![],
        };
        let held = b.gate(space.clone(), t0 + Duration::from_secs(59));
        assert!(held.actions.is_empty());
        assert!(
            held.waits[0]
                .to_string()
                .contains("needs an operator: data at the quota"),
            "{held:?}"
        );
        assert_eq!(b.gate(space.clone(), t0 + BACKOFF_CAP), space);
        // A passing failure after it starts from the base again once it succeeded.
        b.succeeded("clear_space_alarm");
        assert_eq!(
            b.failed("clear_space_alarm", t0, "etcd did not answer", false),
            BACKOFF_BASE
        );
    }

    #[test]
    fn a_plan_whose_first_action_waits_holds_with_the_reason() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.gate(backup(), t0), backup());
        b.failed("take_backup", t0, "store down", false);
        b.failed("take_backup", t0, "store down", false);
        let held = b.gate(backup(), t0 + Duration::from_millis(500));
        assert!(held.actions.is_empty());
        assert!(
            matches!(&held.waits[..], [WaitReason::BackingOff { action, failures: 2, retry_in_ms: 1500, error }]
                if action == "take_backup" && error == "store down"),
            "{held:?}"
        );
        assert!(held.waits[0].to_string().contains("store down"));
        // Due again after the wait; other actions never wait for it.
        assert_eq!(b.gate(backup(), t0 + Duration::from_secs(2)), backup());
        let other = Plan {
            actions: vec![Action::ApplyRetention],
            waits: vec![],
        };
        assert_eq!(b.gate(other.clone(), t0), other);
        // A backup before a change is not repeated while the change waits.
        let change = Plan {
            actions: vec![
                Action::TakeBackup {
                    reason: BackupReason::BeforeChange,
                },
                Action::UpgradeMember {
                    peer: "b".into(),
                    version: "3.6.16".into(),
                },
            ],
            waits: vec![],
        };
        b.failed("upgrade_member", t0, "peer b is gone", false);
        assert!(b.gate(change, t0).actions.is_empty());
    }
}
