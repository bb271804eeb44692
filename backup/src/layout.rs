//! Every name in the store, in one place: upstream etcd-manager's layout
//! (which its readers, kops and `etcd-manager-ctl` rely on, so their
//! meaning never changes) and the files of ours beside it under
//! `<base>/etcd-manager/`, which upstream's readers never look at.
//!
//! ```text
//! <base>/<RFC3339 second>-<6-digit seq>/etcd.backup.gz          gzip of the etcd snapshot
//!                                      /etcd-manager-backup.json ours: sha256 sums, sizes, revision, epoch
//!                                      /etcd-manager-drill.json  ours: the last restore drill of it
//!                                      /_etcd_backup.meta        BackupInfo, written LAST
//!                                      /etcd-manager-deltas/<20-digit start>-<20-digit end>.seg
//!                                                                ours: DeltaSegment, revisions after the backup
//! <base>/control/etcd-cluster-spec                               ClusterSpec
//! <base>/control/etcd-cluster-created                            {"timestamp": unix nanos}
//! <base>/control/<RFC3339 second>-<seq>/_command.json           Command
//!                                      /etcd-manager-restore.json ours: a restore in progress
//! <base>/etcd-manager/lease/...                                  the lock crate's records
//! <base>/etcd-manager/store-id                                   the store's identity
//! <base>/etcd-manager/status.json                                the leader's report
//! <base>/etcd-manager/<request>[--<name>]                        operator requests and markers (below)
//! ```

// Upstream's names.
pub const BACKUP_DATA_FILE: &str = "etcd.backup.gz";
pub const BACKUP_META_FILE: &str = "_etcd_backup.meta";
pub const COMMAND_FILE: &str = "_command.json";
pub const CONTROL_DIR: &str = "control";
pub const SPEC_FILE: &str = "etcd-cluster-spec";
pub const CREATED_FILE: &str = "etcd-cluster-created";

// Ours, inside upstream's folders (names upstream's readers skip).
pub const BACKUP_EXTRA_FILE: &str = "etcd-manager-backup.json";
/// Our record of the last restore drill of a backup (`DrillRecord`).
pub const BACKUP_DRILL_FILE: &str = "etcd-manager-drill.json";
/// Ours, beside `_command.json`: a restore in progress.
pub const RESTORE_MARKER_FILE: &str = "etcd-manager-restore.json";
/// Inside a backup's folder: its delta segments.
pub const DELTA_DIR: &str = "etcd-manager-deltas";

/// Our own folder under the base; the names below are files in it.
pub const MANAGER_DIR: &str = "etcd-manager";
/// The lock crate's lease records (a folder).
pub const LEASE_DIR: &str = "lease";
/// The store's identity, created once by the first manager.
pub const STORE_ID_FILE: &str = "store-id";
/// What `etcd-manager-ctl status` shows, written by the leader.
pub const STATUS_FILE: &str = "status.json";
/// `etcd-manager-ctl backup-now`: a backup now, answered by the leader.
pub const BACKUP_NOW_FILE: &str = "backup-now";
/// `etcd-manager-ctl seed-new-cluster`: a new cluster may be created.
pub const ALLOW_NEW_CLUSTER_FILE: &str = "allow-new-cluster";
/// `etcd-manager-ctl defrag`: every voter (`defrag-now`), or one member
/// (`defrag-now--<member>`), defragmented by the leader now.
pub const DEFRAG_NOW_FILE: &str = "defrag-now";
/// `etcd-manager-ctl recover-quorum`: rebuild a cluster that lost its quorum.
pub const RECOVER_QUORUM_FILE: &str = "recover-quorum";
/// `etcd-manager-ctl verify-backup --on-manager <backup>` leaves
/// `verify-now--<backup>`: a restore drill of that backup, run by the
/// manager the leader picks.
pub const VERIFY_NOW_FILE: &str = "verify-now";
/// A quorum recovery or a restore leaves `retired-cluster--<token>` for the
/// cluster it replaced: its members that come back must not serve their old
/// data.
pub const RETIRED_CLUSTER_FILE: &str = "retired-cluster";
/// `served-cluster--<token>`: a leader saw a cluster of this token serve. A
/// restore or a quorum recovery retires every such cluster, also one whose
/// members are all out of reach at the time (their managers then keep them
/// stopped when they come back).
pub const SERVED_CLUSTER_FILE: &str = "served-cluster";

/// The `<name>` of a manager file `<prefix>--<name>` (request and marker
/// files that name a member, a backup or a cluster).
pub fn request_suffix<'a>(file: &'a str, prefix: &str) -> Option<&'a str> {
    file.strip_prefix(prefix)?.strip_prefix("--")
}

/// `<prefix>--<name>`: the request or marker file about `name`.
pub fn request_file(prefix: &str, name: &str) -> String {
    format!("{prefix}--{name}")
}

/// The file that retires cluster `token`.
pub fn retired_cluster_file(token: &str) -> String {
    request_file(RETIRED_CLUSTER_FILE, token)
}

/// The file that records cluster `token` as served.
pub fn served_cluster_file(token: &str) -> String {
    request_file(SERVED_CLUSTER_FILE, token)
}

/// The `<name>`s of the files `<prefix>--<name>` among `files`, unchecked:
/// the caller validates each as the identifier it should be.
pub fn request_suffixes<'a>(
    files: impl IntoIterator<Item = &'a String>,
    prefix: &'a str,
) -> impl Iterator<Item = &'a str> {
    files
        .into_iter()
        .filter_map(move |f| request_suffix(f, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_files_name_their_subject_after_two_dashes() {
        assert_eq!(retired_cluster_file("tok"), "retired-cluster--tok");
        assert_eq!(
            request_suffix("retired-cluster--tok", RETIRED_CLUSTER_FILE),
            Some("tok")
        );
        assert_eq!(
            request_suffix("retired-clusterX--tok", RETIRED_CLUSTER_FILE),
            None
        );
        assert_eq!(request_suffix(DEFRAG_NOW_FILE, DEFRAG_NOW_FILE), None);
        let files: Vec<String> = vec![
            served_cluster_file("a"),
            retired_cluster_file("b"),
            served_cluster_file("c"),
        ];
        let served: Vec<&str> = request_suffixes(&files, SERVED_CLUSTER_FILE).collect();
        assert_eq!(served, ["a", "c"]);
    }
}
