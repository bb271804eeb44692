//! The backup store: upstream etcd-manager's layout on any `object_store`
//! backend (see `../shared/design/backup-store-format.md`).
//!
//! ```text
//! <base>/<RFC3339 second>-<6-digit seq>/etcd.backup.gz          gzip of the etcd snapshot
//!                                      /etcd-manager-backup.json ours: sha256 sums, sizes, revision, epoch
//!                                      /_etcd_backup.meta        BackupInfo, written LAST
//!                                      /etcd-manager-deltas/<20-digit start>-<20-digit end>.seg
//!                                                                ours: DeltaSegment, revisions after the backup
//! <base>/control/etcd-cluster-spec                               ClusterSpec
//! <base>/control/etcd-cluster-created                            {"timestamp": unix nanos}
//! <base>/control/<RFC3339 second>-<seq>/_command.json           Command
//! <base>/etcd-manager/lease/...                                  the lock crate's records
//! ```

pub mod crypt;
mod delta;
mod error;
pub mod gzip;
mod model;
mod retention;
mod store;

pub use crypt::{Encryption, Recipients};
pub use delta::{
    DELTA_DIR, DeltaLease, DeltaOp, DeltaRevision, DeltaSegment, FLUSH_OPS, MAX_SEGMENT_INFLATED,
    MAX_SEGMENT_OPS, MAX_SEGMENT_SIZE, check_chain, decode_segment, encode_segment,
    parse_segment_file_name, segment_file_name,
};
pub use error::{Error, Result};
pub use model::{
    BackupEncryption, BackupExtra, BackupFacts, BackupInfo, ClusterSpec, Command, CreatedMarker,
    DrillRecord, DrillVerdict, KvHash, MAX_MEMBER_SIZE, MAX_SNAPSHOT_SIZE, RestoreBackupCommand,
};
pub use retention::{MIN_KEPT_BACKUPS, RetentionPolicy, parse_retention, select_for_deletion};
pub use store::{
    BackupStore, BackupSummary, ControlCache, ControlSnapshot, DISK_MARGIN, DownloadedBackup,
    MAX_SIDE_FILE, MAX_SMALL_FILE, MalformedFile, RestoreProgress, StoreOptions, StoredCommand,
    bucket_region, check_backup_name, format_backup_name, free_bytes, parse_backup_name,
    resolve_s3_region,
};

pub const BACKUP_DATA_FILE: &str = "etcd.backup.gz";
pub const BACKUP_META_FILE: &str = "_etcd_backup.meta";
pub const BACKUP_EXTRA_FILE: &str = "etcd-manager-backup.json";
/// Our record of the last restore drill of a backup ([`DrillRecord`]).
pub const BACKUP_DRILL_FILE: &str = "etcd-manager-drill.json";
pub const COMMAND_FILE: &str = "_command.json";
/// Ours, beside `_command.json`: a restore in progress.
pub const RESTORE_MARKER_FILE: &str = "etcd-manager-restore.json";
pub const CONTROL_DIR: &str = "control";
pub const SPEC_FILE: &str = "etcd-cluster-spec";
pub const CREATED_FILE: &str = "etcd-cluster-created";
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
