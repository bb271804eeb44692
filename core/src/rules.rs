//! The safety rules, each one switchable off for the simulation only.
//!
//! Production always runs with [`SafetyRules::ALL`]: no flag, environment
//! variable or file sets these. They exist so that the simulation in
//! `tests/` can switch one rule off in the code that ships and show that its
//! checks catch what the rule prevents (a check that cannot fail proves
//! nothing).

/// Which safety rules are on. Every field is `true` in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafetyRules {
    /// A node refuses a fenced request whose epoch is older than the
    /// highest it has seen (the fence).
    pub fence: bool,
    /// The leader checks its lease again before every action and right
    /// before every membership change.
    pub recheck_lease: bool,
    /// A membership change etcd refuses is retried only while the lease
    /// lasts, never past it.
    pub bound_retries: bool,
    /// `--auto-recover-quorum-loss` waits until the lost voters have been
    /// gone for its whole grace.
    pub recovery_grace: bool,
    /// A dead member is removed only while the healthy voters left are a
    /// quorum of the members that remain.
    pub quorum_guard: bool,
    /// A manager seeks the lease only once its gossip has had the settle
    /// time since start to show it the other managers (see
    /// [`crate::leadership::settle_time`]).
    pub settle: bool,
    /// A backup is restored only once what was downloaded matches the
    /// checksums its side file gives (the leader checks before anything is
    /// touched, every node again before it restores). The backup store
    /// applies it (`backup::BackupStore::without_checksums`).
    pub restore_checksum: bool,
    /// A version change by dump and restore quarantines every member
    /// before it takes the dump, so no client write lands after the dump.
    pub dump_quarantine: bool,
}

/// A name [`SafetyRules::without`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown safety rule {name:?}: expected fence, recheck, retries, grace, quorum, settle, checksum or dump"
)]
pub struct UnknownRule {
    /// The name as given.
    pub name: String,
}

impl SafetyRules {
    /// Every rule on: what production runs.
    pub const ALL: SafetyRules = SafetyRules {
        fence: true,
        recheck_lease: true,
        bound_retries: true,
        recovery_grace: true,
        quorum_guard: true,
        settle: true,
        restore_checksum: true,
        dump_quarantine: true,
    };

    /// The rules with the ones named in `list` (comma-separated: `fence`,
    /// `recheck`, `retries`, `grace`, `quorum`, `settle`, `checksum`, `dump`)
    /// switched off.
    pub fn without(list: &str) -> Result<SafetyRules, UnknownRule> {
        let mut r = SafetyRules::ALL;
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "fence" => r.fence = false,
                "recheck" => r.recheck_lease = false,
                "retries" => r.bound_retries = false,
                "grace" => r.recovery_grace = false,
                "quorum" => r.quorum_guard = false,
                "settle" => r.settle = false,
                "checksum" => r.restore_checksum = false,
                "dump" => r.dump_quarantine = false,
                other => {
                    return Err(UnknownRule {
                        name: other.to_string(),
                    });
                }
            }
        }
        Ok(r)
    }
}

impl Default for SafetyRules {
    fn default() -> Self {
        SafetyRules::ALL
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rules_are_switched_off_by_name_only() {
        assert_eq!(SafetyRules::without("").unwrap(), SafetyRules::ALL);
        let r = SafetyRules::without("fence, quorum").unwrap();
        assert!(!r.fence && !r.quorum_guard);
        assert!(r.recheck_lease && r.bound_retries && r.recovery_grace && r.settle);
        assert!(!SafetyRules::without("settle").unwrap().settle);
        assert!(!SafetyRules::without("checksum").unwrap().restore_checksum);
        let e = SafetyRules::without("fense").unwrap_err();
        assert_eq!(e.name, "fense");
        let e = e.to_string();
        assert!(
            e.contains("\"fense\"") && e.contains("expected fence"),
            "{e}"
        );
    }
}
