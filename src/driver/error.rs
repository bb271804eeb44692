//! Why an action failed, and whether trying again soon can help.

/// Why an action failed. Retryable: something did not answer or refused for
/// now (the store, a peer, etcd), and the same action may work on a later
/// try. Permanent: trying again changes nothing until an operator does
/// something (data at etcd's quota, a store error the store itself calls
/// final: a key missing, a corrupt object). A restore refused for a corrupt
/// backup is neither: that command is never tried again, and the next one
/// an operator queues runs at once. Both back the action kind off; a permanent one waits the
/// longest at once, and `status` says that it needs an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

/// An error of a call the leader made, as its action reports it.
pub(super) fn executing_error(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl DriverError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DriverError::Permanent(_))
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

impl From<backup::Error> for DriverError {
    /// The store's own judgement: a store that did not answer is retried;
    /// a corrupt backup or a missing key is not.
    fn from(e: backup::Error) -> Self {
        if e.is_retryable() {
            DriverError::Retryable(e.to_string())
        } else {
            DriverError::Permanent(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_says_what_is_worth_retrying() {
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
        let peer: DriverError = "peer 10.0.0.1:3997: connection refused".into();
        assert!(!peer.is_permanent());
        assert_eq!(peer.to_string(), "peer 10.0.0.1:3997: connection refused");
    }
}
