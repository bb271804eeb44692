//! The crate's one error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while finding, running or talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No directory holds an `etcd` binary of the wanted version.
    #[error(
        "no etcd {version} binary found; searched {}; install it with `deploy/install-etcd.sh {version}` or pass --etcd-bin-dir pointing at a folder holding etcd {version}",
        display_paths(.searched)
    )]
    BinaryNotFound {
        /// The version that was looked for.
        version: String,
        /// Every directory looked at, in search order.
        searched: Vec<PathBuf>,
    },

    /// A version string that is not `MAJOR.MINOR.PATCH` (optionally with a leading `v`).
    #[error(
        "invalid etcd version {version:?}: expected MAJOR.MINOR.PATCH such as 3.5.30 (a leading `v` is allowed)"
    )]
    InvalidVersion {
        /// The text that failed to parse.
        version: String,
    },

    /// A binary could not be started.
    #[error("cannot start {}: {source}; check that the file exists and is executable", binary.display())]
    Spawn {
        /// The binary that failed to start.
        binary: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// etcd answered a call with an error, or could not be reached.
    #[error("etcd {op} against {} failed: {detail}", endpoints.join(","))]
    Client {
        /// The operation (`member_list`, `put`, ...).
        op: &'static str,
        /// The endpoints the client was talking to.
        endpoints: Vec<String>,
        /// etcd-client's error as text.
        detail: String,
    },

    /// etcd did not answer in time.
    #[error("etcd {op} against {} timed out after {after:?}; is etcd running and reachable there?", endpoints.join(","))]
    Timeout {
        /// The operation (`member_list`, `put`, ...).
        op: &'static str,
        /// The endpoints the client was talking to.
        endpoints: Vec<String>,
        /// How long we waited.
        after: Duration,
    },

    /// A state file is unreadable or malformed.
    #[error("state file {} is unusable: {reason}; fix or move the file aside (the node then starts as if it were absent)", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A file system operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// Restoring a snapshot failed or was refused.
    #[error("snapshot restore failed: {detail}")]
    Restore {
        /// What went wrong and what to do.
        detail: String,
    },

    /// An API that needs a tokio runtime was called outside one.
    #[error("{what} must be called from inside a tokio runtime")]
    NoRuntime {
        /// The function that was called.
        what: &'static str,
    },

    /// The supervisor task of an etcd process ended abnormally.
    #[error("etcd supervisor task failed: {detail}")]
    Supervisor {
        /// What happened to the task.
        detail: String,
    },

    /// A caller passed something this crate cannot use.
    #[error("invalid argument: {detail}")]
    InvalidArgument {
        /// What is wrong and what to do.
        detail: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no directories".to_string();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Texts in an etcd error that mean "this will not get better by itself".
const PERMANENT_MARKERS: &[&str] = &[
    "InvalidArgument",
    "OutOfRange",
    "DataLoss",
    "invalid argument",
    "invalid uri",
    "NotFound",
    "not found",
    "AlreadyExists",
    "PermissionDenied",
    "Unauthenticated",
    "Unimplemented",
    "FailedPrecondition",
    "Peer URLs already exists",
    "peerURL exists",
    "member not found",
];

/// Texts in an etcd error that mean "try again shortly".
const TRANSIENT_MARKERS: &[&str] = &[
    "unhealthy cluster",
    "in sync with leader",
    "too many learner",
    "leader changed",
    "no leader",
    "Unavailable",
    "DeadlineExceeded",
    "ResourceExhausted",
    "Aborted",
    "transport error",
    "timed out",
    "connection refused",
    "too many requests",
];

impl From<etcd_manager_core::InvalidVersion> for Error {
    fn from(e: etcd_manager_core::InvalidVersion) -> Self {
        Error::InvalidVersion { version: e.version }
    }
}

impl Error {
    /// True when the same call may succeed if repeated a little later:
    /// timeouts, unreachable members, and etcd's transient refusals
    /// ("unhealthy cluster" right after start, promote before a learner caught up).
    /// False for bad input, missing binaries and permanent refusals
    /// ("member not found", "peerURL exists").
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Client { detail, .. } => {
                if TRANSIENT_MARKERS.iter().any(|m| detail.contains(m)) {
                    return true;
                }
                !PERMANENT_MARKERS.iter().any(|m| detail.contains(m))
            }
            _ => false,
        }
    }

    /// True when only an operator can make the same call succeed: an etcd
    /// version that is not installed, a version string that is not one.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Error::BinaryNotFound { .. } | Error::InvalidVersion { .. }
        )
    }

    /// True for etcd's "unhealthy cluster" refusal of a membership change
    /// (strict reconfig check: the cluster must have had 5 s of connectivity).
    pub fn is_unhealthy_cluster(&self) -> bool {
        matches!(self, Error::Client { detail, .. } if detail.contains("unhealthy cluster"))
    }

    /// True for etcd's refusal to promote a learner that has not caught up yet.
    pub fn is_learner_not_ready(&self) -> bool {
        matches!(self, Error::Client { detail, .. } if detail.contains("in sync with leader"))
    }

    /// True when etcd said the member id is unknown.
    pub fn is_member_not_found(&self) -> bool {
        matches!(self, Error::Client { detail, .. }
            if detail.contains("member not found") || detail.starts_with("NotFound"))
    }

    /// True when the peer URL being added already belongs to a member.
    pub fn is_peer_url_exists(&self) -> bool {
        matches!(self, Error::Client { detail, .. }
            if detail.contains("Peer URLs already exists") || detail.contains("peerURL exists"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(detail: &str) -> Error {
        Error::Client {
            op: "member_add",
            endpoints: vec!["http://127.0.0.1:1".into()],
            detail: detail.into(),
        }
    }

    #[test]
    fn retryable_classification() {
        assert!(client("Unavailable: etcdserver: unhealthy cluster").is_retryable());
        assert!(client("Unavailable: etcdserver: unhealthy cluster").is_unhealthy_cluster());
        assert!(client("FailedPrecondition: etcdserver: can only promote a learner member which is in sync with leader").is_retryable());
        assert!(!client("NotFound: etcdserver: member not found").is_retryable());
        assert!(!client("FailedPrecondition: etcdserver: Peer URLs already exists").is_retryable());
        assert!(
            Error::Timeout {
                op: "get",
                endpoints: vec![],
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(
            !Error::InvalidVersion {
                version: "x".into()
            }
            .is_retryable()
        );
    }

    #[test]
    fn binary_not_found_message_names_dirs_and_fix() {
        let e = Error::BinaryNotFound {
            version: "3.5.30".into(),
            searched: vec!["/a".into(), "/b/c".into()],
        };
        let s = e.to_string();
        assert!(s.contains("/a, /b/c"), "{s}");
        assert!(s.contains("deploy/install-etcd.sh 3.5.30"), "{s}");
        assert!(s.contains("--etcd-bin-dir"), "{s}");
    }
}
