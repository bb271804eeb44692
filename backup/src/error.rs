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

/// S3 server-side encryption settings that cannot be used (see
/// `StoreOptions::s3_server_side_encryption`); opening the store refuses
/// them as an invalid store URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error(
        "S3 server-side encryption '{0}' is not one S3 knows: write AES256 (SSE-S3), aws:kms or aws:kms:dsse (SSE-KMS)"
    )]
    UnknownMode(String),
    #[error("an SSE-KMS key id needs --s3-server-side-encryption=aws:kms (or aws:kms:dsse)")]
    KeyWithoutKms,
    #[error("the SSE-KMS key id is not a key id, alias or ARN")]
    BadKeyId,
}

/// Why S3 did not name a bucket's region ([`crate::bucket_region`]);
/// `target` is the URL asked.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("HEAD {target}: {source}")]
    Request {
        target: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("HEAD {target}: x-amz-bucket-region is not a region name")]
    NotARegion { target: String },
    #[error("HEAD {target}: no such bucket (404)")]
    NoSuchBucket { target: String },
    #[error("HEAD {target}: answered {status} without x-amz-bucket-region")]
    NoRegion {
        target: String,
        status: reqwest::StatusCode,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
