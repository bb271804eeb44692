use std::path::PathBuf;

/// What went wrong with the store, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid backup store URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("{path} is malformed: {reason}")]
    Malformed { path: String, reason: String },
    #[error("{path} does not exist")]
    NotFound { path: String },
    #[error("backup store {op} of {path} failed: {source}")]
    Store {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("backup {backup} is corrupt: {reason}; choose another backup (list-backups)")]
    Corrupt { backup: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid name '{name}': {reason}")]
    InvalidName { name: String, reason: String },
    /// An encrypted backup or segment this process cannot decrypt, or a key
    /// file that is wrong.
    #[error("{what}: {reason}")]
    Encryption { what: String, reason: String },
    #[error("reading the etcd snapshot failed: {0}")]
    Snapshot(#[source] std::io::Error),
    /// A download would not fit on its disk (beside the margin kept free).
    #[error(
        "{} has room for {free} bytes, the snapshot needs {needed}: free space there (a download never fills the disk)",
        path.display()
    )]
    NoRoom {
        path: std::path::PathBuf,
        needed: u64,
        free: u64,
    },
}

impl Error {
    /// Worth trying again later (the store or the network may recover).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source, .. } => lock::store_error_is_retryable(source),
            Error::Snapshot(_) | Error::Io { .. } | Error::NoRoom { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn store(
        op: &'static str,
        path: &object_store::path::Path,
        source: object_store::Error,
    ) -> Error {
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound {
                path: path.to_string(),
            },
            source => Error::Store {
                op,
                path: path.to_string(),
                source,
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
