//! The backup store: upstream etcd-manager's layout on any `object_store`
//! backend (see `../shared/design/backup-store-format.md`).
//!
//! Where each file lives and what it is called: [`layout`].

pub mod crypt;
mod delta;
mod error;
pub mod gzip;
pub mod layout;
mod model;
mod retention;
mod store;

pub use crypt::{Encryption, KeyFileError, Recipients};
pub use delta::{
    ChainError, DeltaLease, DeltaOp, DeltaRevision, DeltaSegment, FLUSH_OPS, InvalidSegment,
    MAX_SEGMENT_INFLATED, MAX_SEGMENT_OPS, MAX_SEGMENT_SIZE, SegmentError, check_chain,
    decode_segment, encode_segment, parse_segment_file_name, segment_file_name,
};
pub use error::{Error, RegionError, Result, SseError};
// Upstream's names, where callers have always found them.
pub use layout::{
    BACKUP_DATA_FILE, BACKUP_DRILL_FILE, BACKUP_EXTRA_FILE, BACKUP_META_FILE, COMMAND_FILE,
    CONTROL_DIR, CREATED_FILE, DELTA_DIR, RESTORE_MARKER_FILE, SPEC_FILE,
};
pub use model::{
    BackupEncryption, BackupExtra, BackupFacts, BackupInfo, ClusterSpec, Command, CreatedMarker,
    DrillRecord, DrillVerdict, InvalidExtra, KvHash, MAX_MEMBER_SIZE, MAX_SNAPSHOT_SIZE,
    RestoreBackupCommand, spec_upstream_text,
};
pub use retention::{
    DurationError, MIN_KEPT_BACKUPS, RetentionPolicy, parse_retention, select_for_deletion,
};
pub use store::{
    BackupStore, BackupSummary, ControlCache, ControlSnapshot, DISK_MARGIN, DownloadedBackup,
    MAX_SIDE_FILE, MAX_SMALL_FILE, MalformedFile, RestoreProgress, StoreOptions, StoredCommand,
    bucket_region, check_backup_name, format_backup_name, free_bytes, parse_backup_name,
    resolve_s3_region,
};

/// gzip level of our backups: 6, gzip's default. With blocks compressed on
/// every core by zlib-rs this is still faster than `etcdctl snapshot save`
/// alone and compresses Kubernetes-like data better than `gzip -6` does
/// (0.099 against 0.110 here; level 1 gave 0.176). See BENCHMARKS.md.
pub const GZIP_LEVEL: u32 = 6;

/// Create (or truncate) `path` readable and writable by its owner only
/// (0600): downloaded backups and their decrypted or inflated forms are the
/// whole keyspace.
pub fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}
