use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the gossip crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The UDP socket could not be bound.
    #[error(
        "cannot bind UDP {addr}: {source}; is another etcd-manager running? choose another --address/port"
    )]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A seed is not of the form `host:port`.
    #[error("invalid gossip seed {seed:?}: {reason}; write seeds as host:port, e.g. 10.0.0.1:8000")]
    InvalidSeed {
        /// The seed as given.
        seed: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The discovery folder or our record in it could not be written.
    #[error(
        "cannot use gossip discovery file {}: {source}; check that the folder exists and is writable, or drop the discovery folder option",
        path.display()
    )]
    Discovery {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid gossip configuration: {reason}")]
    InvalidConfig {
        /// What is wrong and what to do.
        reason: String,
    },
    /// The payload does not fit in one gossip packet.
    #[error(
        "gossip payload of {size} bytes is too large: at most {max} bytes fit in one packet; publish less peer info"
    )]
    PayloadTooLarge {
        /// Encoded size of the payload.
        size: usize,
        /// The most that fits.
        max: usize,
    },
    /// foca refused an operation (a bug or an invalid foca configuration).
    #[error("gossip protocol error: {0}")]
    Foca(String),
    /// A gossip key file has a bad line or holds no key.
    #[error("invalid gossip key file {} (line {line}): {reason}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The 1-based line number; 0 when the file as a whole is wrong
        /// (no key at all).
        line: usize,
        /// What is wrong (never the key material) and what a valid line
        /// looks like.
        reason: String,
    },
    /// A gossip key file could not be read.
    #[error(
        "cannot read gossip key file {}: {source}; check the --gossip-key-file path and that etcd-manager may read it",
        path.display()
    )]
    KeyFileRead {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gossip task has ended, so the command could not be applied.
    #[error("the gossip task is not running (it left, was cancelled or failed); restart the node")]
    NotRunning,
}
