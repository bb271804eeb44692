//! The crate's error type.

/// Everything that can go wrong in the lease.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store does not honour create-only writes, so two nodes could both believe they
    /// hold the lease.
    #[error(
        "object store {store} does not honour create-only (conditional) writes: {detail}; \
         leader election cannot run on it, use a store with conditional writes \
         (S3, GCS, a local file system)"
    )]
    PreconditionsUnsupported {
        /// The store, as it displays itself.
        store: String,
        /// What the probe saw.
        detail: String,
    },
    /// A store request failed.
    #[error("object store {op} of {key} failed: {source}")]
    Store {
        /// The operation: `list`, `get`, `put`, `delete`.
        op: &'static str,
        /// The key (or prefix, for `list`).
        key: String,
        /// What the store said.
        #[source]
        source: object_store::Error,
    },
    /// A lease record could not be read. The lease is treated as held by an unknown holder
    /// and never taken over automatically.
    #[error(
        "lease record {key} is malformed: {reason}; the lease is treated as held by an unknown \
         node: inspect the record and delete it if no etcd-manager wrote it"
    )]
    Malformed {
        /// The record's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The lease configuration is unsafe.
    #[error("invalid lease configuration: {0}")]
    InvalidConfig(String),
}

/// Whether a store error may go away by itself (network trouble,
/// throttling, a server error) rather than need an operator (credentials,
/// permissions, a store that lacks a feature, a bad path or setting). The
/// one judgement of store errors for the lease and the backup store.
pub fn store_error_is_retryable(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

impl Error {
    /// True when trying again later may succeed without anyone changing anything
    /// (network trouble, throttling, a record that changed under us). False for errors that
    /// need an operator: bad configuration, credentials, a store without conditional writes,
    /// a malformed record.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source, .. } => store_error_is_retryable(source),
            Error::PreconditionsUnsupported { .. }
            | Error::Malformed { .. }
            | Error::InvalidConfig(_) => false,
        }
    }
}
