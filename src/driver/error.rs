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
    /// Another manager's peer API: it did not answer, or refused for now
    /// (a fence, a request it could not carry out yet); always retried.
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    /// Anything else that may pass (no answer yet, a lease not held).
    #[error("{0}")]
    Retryable(String),
    /// Only an operator can fix it.
    #[error("{0}")]
    Permanent(String),
}

impl DriverError {
    pub fn is_permanent(&self) -> bool {
        match self {
            DriverError::Store(e) => !e.is_retryable(),
            DriverError::Etcd(e) => e.needs_operator(),
            DriverError::Peer(_) | DriverError::Retryable(_) => false,
            DriverError::Permanent(_) => true,
        }
    }
}

impl From<String> for DriverError {
    fn from(e: String) -> Self {
        DriverError::Retryable(e)
    }
}

impl From<&str> for DriverError {
    fn from(e: &str) -> Self {
        DriverError::Retryable(e.to_string())
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
        let other: DriverError = "peer 10.0.0.1:3997 did not answer".into();
        assert!(!other.is_permanent());
        assert_eq!(other.to_string(), "peer 10.0.0.1:3997 did not answer");
    }
}
