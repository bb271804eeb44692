//! Restore drills: evidence that a backup restores. A backup is downloaded
//! (its checksum verified), restored into a scratch folder with etcd's own
//! tool, served by a throwaway etcd on loopback at the lowest CPU priority,
//! and its HashKV at the backup's revision compared with the live cluster's,
//! taken when the backup was made and kept in our side file. The verdict is
//! kept beside the backup ([`backup::BACKUP_DRILL_FILE`]) for
//! `etcd-manager-ctl list-backups -o wide`, and counted in metrics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backup::{BackupStore, DrillRecord, DrillVerdict, KvHash};

use crate::metrics as m;

/// How long the throwaway etcd may take to answer.
const DRILL_START_DEADLINE: Duration = Duration::from_secs(120);
/// Room a drill leaves free on the scratch disk besides what it writes.
const DISK_MARGIN: u64 = 256 << 20;

/// Where and how drills run on this machine.
#[derive(Clone)]
pub struct DrillSettings {
    /// Folders with etcd binaries besides /opt.
    pub bin_dirs: Vec<PathBuf>,
    /// Under it each drill gets a scratch folder, removed afterwards.
    pub scratch_root: PathBuf,
    /// Who runs it (a manager's id, or `etcd-manager-ctl`).
    pub by: String,
    /// Times the drill and stamps its record.
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
}

/// Run a restore drill of backup `name` and keep its record beside the
/// backup. What went wrong in the drill is the record's `failed` verdict;
/// an error means no record was written: the backup is not there (its
/// meta does not read), it is encrypted and this process has no key for it
/// ([`backup::Error::Encryption`]: not the backup's fault, so not a
/// verdict), or the record could not be written.
pub async fn verify_backup(
    store: &BackupStore,
    name: &str,
    settings: &DrillSettings,
) -> Result<DrillRecord, backup::Error> {
    let started = settings.clock.now();
    let info = store.read_backup_info(name).await?;
    if let Ok(Some(x)) = store.read_backup_extra(name).await
        && x.encryption.is_some()
    {
        store.encryption().identities(&format!("backup {name}"))?;
    }
    let outcome = drill_once(store, name, &info, settings).await;
    let millis = settings
        .clock
        .now()
        .saturating_duration_since(started)
        .as_millis() as u64;
    let at = settings
        .clock
        .wall()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let record = match outcome {
        Ok(o) => {
            let (verdict, reason) = judge(o.expected, o.found);
            DrillRecord {
                verdict,
                reason,
                at,
                by: settings.by.clone(),
                millis,
                etcd_version: o.etcd_version,
                expected: o.expected,
                found: Some(o.found),
            }
        }
        Err(e) => DrillRecord {
            verdict: DrillVerdict::Failed,
            reason: e.to_string(),
            at,
            by: settings.by.clone(),
            millis,
            etcd_version: String::new(),
            expected: None,
            found: None,
        },
    };
    let verdict = record.verdict.as_str();
    metrics::counter!(m::BACKUP_VERIFICATIONS, "verdict" => verdict).increment(1);
    metrics::gauge!(m::BACKUP_VERIFICATION_DURATION).set(millis as f64 / 1000.0);
    match record.verdict {
        DrillVerdict::Verified => {
            metrics::gauge!(m::BACKUP_LAST_VERIFIED).set(at as f64);
            tracing::info!(backup = %name, millis, revision = record.found.map(|f| f.revision), "restore drill: backup verified");
        }
        DrillVerdict::Restored => {
            tracing::info!(backup = %name, millis, "restore drill: backup restored; it carries no HashKV to compare with");
        }
        DrillVerdict::Mismatch | DrillVerdict::Failed => {
            metrics::counter!(m::BACKUP_VERIFICATION_FAILURES).increment(1);
            tracing::error!(backup = %name, verdict, reason = %record.reason, "restore drill: the backup did not prove restorable");
        }
    }
    store.write_drill(name, &record).await?;
    Ok(record)
}

/// The cluster's HashKV at `revision` through `client`, for a backup's side
/// file: taken just before the snapshot, which then holds that revision or a
/// later one. None (logged) when etcd does not give it: that backup's drill
/// will only restore it.
pub async fn cluster_hash(client: &dyn crate::edges::EtcdApi, revision: i64) -> Option<KvHash> {
    match client.hash_kv(revision).await {
        Ok(h) => Some(KvHash {
            revision: h.revision,
            hash: h.hash,
            compact_revision: h.compact_revision,
        }),
        Err(e) => {
            tracing::warn!(error = %e, revision, "no HashKV for the backup; its restore drill will only restore it");
            None
        }
    }
}

/// The verdict from the hash the backup recorded and the one the restored
/// data gave.
pub fn judge(expected: Option<KvHash>, found: KvHash) -> (DrillVerdict, String) {
    let Some(e) = expected else {
        return (
            DrillVerdict::Restored,
            "restored and served; the backup carries no HashKV to compare with".into(),
        );
    };
    if e.compact_revision != found.compact_revision {
        return (
            DrillVerdict::Failed,
            format!(
                "inconclusive: the cluster compacted between the hash and the snapshot (compacted revision {} then {})",
                e.compact_revision, found.compact_revision
            ),
        );
    }
    if e.hash == found.hash {
        (DrillVerdict::Verified, String::new())
    } else {
        (
            DrillVerdict::Mismatch,
            format!(
                "HashKV at revision {} is {:#010x} in the restored data, {:#010x} in the cluster when the backup was made",
                e.revision, found.hash, e.hash
            ),
        )
    }
}

/// Why a drill did not get to a verdict of its own: the record's `failed`
/// verdict, with this as its reason.
#[derive(Debug, thiserror::Error)]
enum DrillError {
    #[error(transparent)]
    Backup(#[from] backup::Error),
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
    #[error("no etcd to restore it with: tried {}; install it with deploy/install-etcd.sh", tried.join(", "))]
    NoEtcd { tried: Vec<String> },
    #[error("{}: {source}; point the drill at a writable scratch folder", path.display())]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}; point the drill at a scratch folder on a mounted disk", path.display())]
    FreeSpace {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error(
        "not run: {} has {} MiB free, the drill needs {} MiB; free space or point the drill elsewhere",
        path.display(), .free >> 20, .needed >> 20
    )]
    NoRoom {
        path: PathBuf,
        free: u64,
        needed: u64,
    },
    #[error(
        "not run: {} has {} MiB free, restoring the {} MiB snapshot needs {} MiB; free space or point the drill elsewhere",
        path.display(), .free >> 20, .snapshot >> 20, .needed >> 20
    )]
    NoRoomToRestore {
        path: PathBuf,
        free: u64,
        snapshot: u64,
        needed: u64,
    },
}

impl DrillError {
    fn scratch(path: &Path) -> impl FnOnce(std::io::Error) -> DrillError + '_ {
        move |source| DrillError::Scratch {
            path: path.to_path_buf(),
            source,
        }
    }
}

struct Outcome {
    expected: Option<KvHash>,
    found: KvHash,
    etcd_version: String,
}

async fn drill_once(
    store: &BackupStore,
    name: &str,
    info: &backup::BackupInfo,
    settings: &DrillSettings,
) -> Result<Outcome, DrillError> {
    let extra = store.read_backup_extra(name).await?;
    let binaries = binaries_for(info, &settings.bin_dirs)?;
    std::fs::create_dir_all(&settings.scratch_root)
        .map_err(DrillError::scratch(&settings.scratch_root))?;
    // The download, the restored database and its WAL: three times the
    // snapshot (what the side file declares, else a guess from the gzip).
    let snapshot_size = match &extra {
        Some(x) => x.snapshot_size,
        None => 64 << 20,
    };
    let free = free_bytes(&settings.scratch_root)?;
    let needed = snapshot_size.saturating_mul(3).saturating_add(DISK_MARGIN);
    if free < needed {
        return Err(DrillError::NoRoom {
            path: settings.scratch_root.clone(),
            free,
            needed,
        });
    }
    let scratch = settings.scratch_root.join(format!("drill-{name}"));
    let _ = std::fs::remove_dir_all(&scratch);
    // Private: the download is the whole keyspace, decrypted.
    etcd::private_dir(&scratch).map_err(DrillError::scratch(&scratch))?;
    let file = scratch.join("snapshot.db");
    let result = async {
        let got = store.download_backup(name, &file).await?;
        if !got.verified_checksum {
            etcd::verify_snapshot(&binaries, &file).await?;
        }
        // An upstream backup declares no size: the download was bounded by
        // the disk; the restored database and its WAL need room too.
        let free = free_bytes(&scratch)?;
        let needed = got
            .snapshot_size
            .saturating_mul(2)
            .saturating_add(DISK_MARGIN);
        if free < needed {
            return Err(DrillError::NoRoomToRestore {
                path: scratch.clone(),
                free,
                snapshot: got.snapshot_size,
                needed,
            });
        }
        let expected = extra.as_ref().and_then(|x| x.kv_hash);
        // HashKV at revision 0 is at the restored data's newest revision.
        let revision = expected.map_or(0, |e| e.revision);
        let found = etcd::drill(
            &binaries,
            &file,
            &scratch.join("etcd"),
            revision,
            DRILL_START_DEADLINE,
        )
        .await?;
        Ok(Outcome {
            expected,
            found: KvHash {
                revision: found.hash.revision,
                hash: found.hash.hash,
                compact_revision: found.hash.compact_revision,
            },
            etcd_version: binaries.version.to_string(),
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// etcd of the version that wrote the backup, else of the version its spec
/// names.
fn binaries_for(
    info: &backup::BackupInfo,
    dirs: &[PathBuf],
) -> Result<etcd::EtcdBinaries, DrillError> {
    let mut versions = vec![info.etcd_version.clone()];
    if let Some(s) = &info.cluster_spec {
        versions.push(s.etcd_version.clone());
    }
    let mut tried = Vec::new();
    for v in versions.iter().filter(|v| !v.is_empty()) {
        let Ok(parsed) = v.parse::<etcd::EtcdVersion>() else {
            tried.push(format!("{v} (not a version)"));
            continue;
        };
        match etcd::find_binaries(&parsed, dirs) {
            Ok(b) => return Ok(b),
            Err(_) => tried.push(v.clone()),
        }
    }
    Err(DrillError::NoEtcd { tried })
}

fn free_bytes(path: &Path) -> Result<u64, DrillError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| DrillError::FreeSpace {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hash: u32, compact: i64) -> KvHash {
        KvHash {
            revision: 10,
            hash,
            compact_revision: compact,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(judge(Some(h(1, 2)), h(1, 2)).0, DrillVerdict::Verified);
        let (v, why) = judge(Some(h(1, 2)), h(3, 2));
        assert_eq!(v, DrillVerdict::Mismatch);
        assert!(why.contains("revision 10"), "{why}");
        let (v, why) = judge(Some(h(1, 2)), h(1, 5));
        assert_eq!(v, DrillVerdict::Failed);
        assert!(why.contains("inconclusive"), "{why}");
        assert_eq!(judge(None, h(1, 2)).0, DrillVerdict::Restored);
    }

    /// A drill without room is "not run" (in MiB), and names the folder:
    /// operators grep the records' reasons.
    #[test]
    fn no_room_reasons_name_the_folder_in_mib() {
        let e = DrillError::NoRoom {
            path: "/scratch".into(),
            free: 100 << 20,
            needed: 300 << 20,
        }
        .to_string();
        assert!(
            e.starts_with("not run: /scratch has 100 MiB free, the drill needs 300 MiB"),
            "{e}"
        );
        let e = DrillError::NoRoomToRestore {
            path: "/scratch/drill-b".into(),
            free: 100 << 20,
            snapshot: 64 << 20,
            needed: 384 << 20,
        }
        .to_string();
        assert!(
            e.contains("100 MiB free, restoring the 64 MiB snapshot needs 384 MiB"),
            "{e}"
        );
        let info = backup::BackupInfo {
            etcd_version: "latest".into(),
            timestamp: 0,
            cluster_spec: None,
        };
        let e = binaries_for(&info, &[]).expect_err("no such version");
        assert!(
            matches!(&e, DrillError::NoEtcd { tried } if tried == &["latest (not a version)"]),
            "{e}"
        );
    }
}
