//! Why an action failed, and whether trying again soon can help.

/// Why an action failed, with its typed source where it has one; each
/// source says itself whether trying again can help. Retryable: something
/// did not answer or refused for now (the store, a peer, etcd), and the same
/// action may work on a later try. Permanent: trying again changes nothing
/// until an operator does something (data at etcd's quota, a store error the
/// store itself calls final: access denied, a key missing, a corrupt object). A restore refused for a corrupt
/// backup is neither: that command is never tried again, and the next one
/// an operator queues runs at once. Both back the action kind off; a
/// permanent one waits the longest at once, and `status` says that it needs
/// an operator.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The store, judged by [`backup::Error::is_retryable`].
    #[error(transparent)]
    Store(#[from] backup::Error),
    /// etcd's API or its tools, judged by [`etcd::Error::needs_operator`].
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
    /// Another manager's peer API: it did not answer, or refused, judged by
    /// [`crate::peer::PeerError::needs_operator`] (the managers do not share
    /// one store or one cluster name: permanent; anything else may pass).
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    /// Something the action needs is not there now: retried.
    #[error(transparent)]
    Missing(#[from] Missing),
    /// A job on a node ended without success: retried.
    #[error(transparent)]
    Job(#[from] JobError),
    /// This leader refused a restore command (a missing or corrupt backup):
    /// that command is never tried again (the memory keeps the refusal), and
    /// the next one an operator queues must run at once, so it is no
    /// permanent failure of the action kind.
    #[error("{0}")]
    RestoreRefused(String),
    /// The backup of a restore could not be verified now (the store did not
    /// answer): tried again.
    #[error("cannot verify backup {backup} now: {reason}")]
    VerifyLater { backup: String, reason: String },
    /// A local file this manager must change (`--static-config`'s
    /// `please-create-new-cluster`): permanent when access is denied.
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// etcd's NOSPACE alarm came back within a minute of clearing it: the
    /// data itself is at the quota. Only an operator can mend it.
    #[error(
        "etcd's NOSPACE alarm came back within a minute of clearing it: the data itself is at the quota; raise ETCD_QUOTA_BACKEND_BYTES (etcd's --quota-backend-bytes) or delete data"
    )]
    AtQuota,
}

/// What an action needs and cannot find now; a later pass may.
#[derive(Debug, thiserror::Error)]
pub enum Missing {
    #[error("peer {0} is gone")]
    PeerGone(String),
    #[error("peer {0} did not answer")]
    PeerSilent(String),
    #[error("peer {0} runs no etcd")]
    PeerWithoutEtcd(String),
    #[error("a chosen peer vanished before {0}")]
    PeerVanished(String),
    #[error("survivor {0} has no client URL")]
    SurvivorWithoutUrl(String),
    #[error("member {0} has no healthy endpoint")]
    MemberUnreachable(String),
    #[error("no healthy etcd endpoint")]
    NoHealthyEndpoint,
    #[error("no healthy member to back up from")]
    NoMemberToBackUp,
    #[error("no other healthy voter to hand raft leadership to")]
    NoOtherVoter,
    #[error("no spec")]
    NoSpec,
    #[error("no backup taken by this leader to restore")]
    NoOwnBackup,
    #[error("quorum recovery without a source")]
    NoRecoverySource,
    #[error("lease no longer held")]
    LeaseLost,
    #[error("the control files were not read")]
    ControlUnread,
    #[error(
        "the backup store did not answer the last {failures} reads of the control files; next try in {:.1} s",
        left.as_secs_f64()
    )]
    StoreBackingOff {
        failures: u32,
        left: std::time::Duration,
    },
}

/// A node's job (a restore, a v2 store check) that ended without success.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{what} on {id} failed: {why}")]
    Failed {
        what: String,
        id: String,
        why: String,
    },
    #[error("{id} no longer runs {what} (it restarted, or a newer leader's job replaced it)")]
    Gone { what: String, id: String },
    #[error("{what} on {id} has not moved for {after:?} (last seen: {seen})")]
    Stalled {
        what: String,
        id: String,
        after: std::time::Duration,
        seen: String,
    },
}

impl DriverError {
    pub fn is_permanent(&self) -> bool {
        match self {
            DriverError::Store(e) => !e.is_retryable(),
            DriverError::Etcd(e) => e.needs_operator(),
            DriverError::Peer(e) => e.needs_operator(),
            DriverError::File { source, .. } => {
                source.kind() == std::io::ErrorKind::PermissionDenied
            }
            DriverError::AtQuota => true,
            DriverError::Missing(_)
            | DriverError::Job(_)
            | DriverError::RestoreRefused(_)
            | DriverError::VerifyLater { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_says_what_is_worth_retrying() {
        let corrupt = backup::Error::Corrupt {
            backup: "2026-01-02T03:04:05Z-000001".into(),
            reason: "checksum mismatch".into(),
        };
        assert!(DriverError::from(corrupt).is_permanent());
        let disk = backup::Error::Io {
            path: "/var/lib/x".into(),
            source: std::io::Error::other("disk full"),
        };
        assert!(!DriverError::from(disk).is_permanent());
        // A bucket policy that denies the write: the store calls it final.
        let denied = backup::Error::Store {
            op: "put",
            path: "b/2026-01-02T03:04:05Z-000001/etcd.backup.gz".into(),
            source: object_store::Error::PermissionDenied {
                path: "b".into(),
                source: "AccessDenied".into(),
            },
        };
        let e = DriverError::from(denied);
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("AccessDenied"), "{e}");
        let missing = etcd::Error::BinaryNotFound {
            version: "3.6.16".into(),
            searched: vec![],
        };
        assert!(DriverError::from(missing).is_permanent());
        let timeout = etcd::Error::Timeout {
            op: "member_list",
            endpoints: vec!["https://10.0.0.1:4001".into()],
            after: std::time::Duration::from_secs(5),
        };
        assert!(!DriverError::from(timeout).is_permanent());
        let peer = DriverError::from(crate::peer::PeerError::Timeout {
            addr: "10.0.0.1:3997".parse().expect("addr"),
            after: std::time::Duration::from_secs(5),
        });
        assert!(!peer.is_permanent());
        // A peer's typed refusal: another backup store needs an operator,
        // a busy node does not; the previous release's words are retried.
        let refused = |refusal| {
            DriverError::from(crate::peer::PeerError::Refused {
                addr: "10.0.0.1:3997".parse().expect("addr"),
                refusal,
            })
        };
        let other_store = crate::peer::Refusal::OtherStore {
            candidate: "a".into(),
            theirs: "S".into(),
            ours: "T".into(),
        };
        assert!(refused(other_store.clone()).is_permanent());
        assert!(!refused(crate::peer::Refusal::Busy("a restore runs".into())).is_permanent());
        assert!(!refused(crate::peer::Refusal::Untyped(other_store.to_string())).is_permanent());
        let other = DriverError::from(Missing::PeerSilent("a".into()));
        assert!(!other.is_permanent());
        assert_eq!(other.to_string(), "peer a did not answer");
        assert!(DriverError::AtQuota.is_permanent());
        let file = |kind| DriverError::File {
            what: "removing",
            path: "/var/lib/x".into(),
            source: std::io::Error::from(kind),
        };
        assert!(file(std::io::ErrorKind::PermissionDenied).is_permanent());
        assert!(!file(std::io::ErrorKind::Other).is_permanent());
    }
}
