//! Restore to a point: a full backup plus its continuous-backup segments,
//! replayed up to the latest revision, a chosen revision or a time, become
//! a new full backup, which the ordinary (upstream-compatible) restore
//! command then restores.
//!
//! Nothing is touched before the whole chain is read and checked
//! (checksums, contiguous revisions). The replay writes each recorded
//! revision as one transaction into a throwaway etcd serving the full
//! backup, so the replayed keyspace has the very revisions, versions and
//! create revisions the cluster had; each transaction must land on the
//! revision it had, or the replay stops. Deletes are replayed as deletes.
//! A key keeps its lease id; a lease the full backup lacks is granted with
//! the TTL it had (at least [`MIN_REPLAY_LEASE_TTL`]); leases are kept
//! alive while the replay runs, and after the restore count down from
//! their TTL as after any restore.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backup::{BackupInfo, BackupStore, DeltaOp, DeltaSegment, KvHash};

/// The shortest TTL a replayed lease gets.
pub const MIN_REPLAY_LEASE_TTL: i64 = 60;
const START_DEADLINE: Duration = Duration::from_secs(120);

/// Where a replay stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayTo {
    /// Everything the chain holds.
    Latest,
    /// Up to and including this revision.
    Revision(i64),
    /// Every revision the leader saw at or before this time (Unix millis).
    Time(i64),
}

/// A checked chain: a full backup and the segments that follow it.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    pub base: String,
    pub info: BackupInfo,
    /// The revision recorded with the full backup.
    pub base_revision: i64,
    pub segments: Vec<DeltaSegment>,
    /// The last revision the chain holds.
    pub chain_end: i64,
    /// The revision the replay stops at.
    pub target: i64,
    /// Segments after a hole in the chain, which cannot be used.
    pub unusable: usize,
}

impl ReplayPlan {
    /// When the leader saw the target revision (Unix millis), if a
    /// segment holds it.
    pub fn target_time_ms(&self) -> Option<i64> {
        self.segments
            .iter()
            .flat_map(|s| s.revisions.iter())
            .find(|r| r.revision == self.target)
            .map(|r| r.at_ms)
    }
}

/// Why a restore to a point cannot be planned or replayed, and what to do.
/// Nothing is queued after any of them.
#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    /// The store, or the backup's encryption keys.
    #[error(transparent)]
    Backup(#[from] backup::Error),
    /// The throwaway etcd the replay runs in.
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
    #[error(
        "backup {base} has no continuous-backup segments: it restores only as it is (leave out -to-revision and -to-time)"
    )]
    NoSegments { base: String },
    #[error(
        "backup {base} records no revision, so its segments cannot be placed; restore it as it is (-full-only)"
    )]
    NoRevision { base: String },
    #[error(
        "revision {revision} is not in backup {base}'s chain (revisions {first} to {last}); list-backups -o wide shows each backup's range"
    )]
    OutsideChain {
        base: String,
        revision: i64,
        first: i64,
        last: i64,
    },
    #[error("{}: {source}; choose another -scratch-dir", path.display())]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}; the backup's meta names no etcd version a replay can run")]
    Version(#[source] etcd::InvalidVersion),
    #[error(
        "{source}; replaying continuous-backup segments needs etcd {version} where the replay runs"
    )]
    NoEtcd {
        version: String,
        #[source]
        source: etcd::Error,
    },
    #[error(
        "revision {target} is older than backup {base}'s snapshot, which holds revision {snapshot}: restore an older backup to reach it"
    )]
    BeforeSnapshot {
        target: i64,
        base: String,
        snapshot: i64,
    },
    #[error(
        "backup {base}'s snapshot holds revision {snapshot}, past its chain's end {chain_end}; restore it as it is (-full-only)"
    )]
    SnapshotPastChain {
        base: String,
        snapshot: i64,
        chain_end: i64,
    },
    #[error(
        "replaying revision {expected} gave revision {got}: the recorded history does not follow on from the snapshot (or a lease expired during the replay)"
    )]
    Diverged { expected: i64, got: i64 },
    #[error("after the replay the keyspace is at revision {got}, not {target}")]
    WrongEnd { got: i64, target: i64 },
    #[error(
        "the keys of the identity file do not make recipients for the replay's backup: {reason}; pass --backup-encryption-recipients-file"
    )]
    Keys { reason: String },
}

/// The keys a replay encrypts its backup to: the recipients configured
/// here, else the public keys of the identity file configured here; None
/// when neither is (the base was then plaintext, or could not be read).
pub fn local_recipients(enc: &backup::Encryption) -> Result<Option<backup::Recipients>, PitrError> {
    if let Some(r) = &enc.recipients {
        return Ok(Some(r.clone()));
    }
    if enc.identity_file.is_none() {
        return Ok(None);
    }
    let ids = enc.identities("the replay's backup")?;
    let keys: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
    backup::Recipients::parse(&keys.join("\n"))
        .map(Some)
        .map_err(|e| PitrError::Keys {
            reason: e.to_string(),
        })
}

/// Read and check backup `base`'s chain and find the revision to stop at.
/// Ok(None): the backup has no segments and none was asked for by
/// revision or time (an ordinary restore).
pub async fn plan(
    store: &BackupStore,
    base: &str,
    to: ReplayTo,
) -> Result<Option<ReplayPlan>, PitrError> {
    let ranges = store.list_segments(base).await?;
    if ranges.is_empty() {
        return match to {
            ReplayTo::Latest => Ok(None),
            _ => Err(PitrError::NoSegments {
                base: base.to_string(),
            }),
        };
    }
    let info = store.read_backup_info(base).await?;
    let extra = store.read_backup_extra(base).await?;
    let base_revision = extra
        .and_then(|x| x.revision)
        .ok_or_else(|| PitrError::NoRevision {
            base: base.to_string(),
        })?;
    let mut end = base_revision;
    let mut segments = Vec::new();
    let mut unusable = 0;
    for (i, &(start, stop)) in ranges.iter().enumerate() {
        if start > end + 1 {
            unusable = ranges.len() - i;
            break;
        }
        if stop <= end {
            continue;
        }
        let mut seg = store.read_segment(base, start, stop).await?;
        // Two writers may have overlapped: each revision is replayed once.
        seg.revisions.retain(|r| r.revision > end);
        end = stop;
        segments.push(seg);
    }
    let target = match to {
        ReplayTo::Latest => end,
        ReplayTo::Revision(r) if r < base_revision || r > end => {
            return Err(PitrError::OutsideChain {
                base: base.to_string(),
                revision: r,
                first: base_revision,
                last: end,
            });
        }
        ReplayTo::Revision(r) => r,
        ReplayTo::Time(t) => segments
            .iter()
            .flat_map(|s| s.revisions.iter())
            .take_while(|r| r.at_ms <= t)
            .map(|r| r.revision)
            .last()
            .unwrap_or(base_revision),
    };
    Ok(Some(ReplayPlan {
        base: base.to_string(),
        info,
        base_revision,
        segments,
        chain_end: end,
        target,
        unusable,
    }))
}

/// Where a replay runs.
#[derive(Clone)]
pub struct ReplaySettings {
    pub bin_dirs: Vec<PathBuf>,
    /// The scratch folder (emptied first, removed afterwards).
    pub scratch: PathBuf,
    pub clock: Arc<dyn crate::clock::Clock>,
}

/// What a replay made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The new full backup.
    pub name: String,
    /// Its revision (the plan's target).
    pub revision: i64,
    /// The revision the full backup's snapshot held.
    pub snapshot_revision: i64,
    /// Revisions replayed on top of it.
    pub replayed: usize,
    pub hash: KvHash,
}

/// Replay `plan` and store the result as a new full backup.
pub async fn replay(
    store: &BackupStore,
    plan: &ReplayPlan,
    settings: &ReplaySettings,
) -> Result<Replayed, PitrError> {
    let scratch = &settings.scratch;
    let scratch_error = |source| PitrError::Scratch {
        path: scratch.clone(),
        source,
    };
    if let Err(e) = std::fs::remove_dir_all(scratch)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(scratch_error(e));
    }
    // Private: the chain, the snapshot and the throwaway etcd's data are the
    // whole keyspace, decrypted.
    etcd::private_dir(scratch).map_err(scratch_error)?;
    let result = replay_in(store, plan, settings).await;
    let _ = std::fs::remove_dir_all(scratch);
    result
}

async fn replay_in(
    store: &BackupStore,
    plan: &ReplayPlan,
    settings: &ReplaySettings,
) -> Result<Replayed, PitrError> {
    let version: etcd::EtcdVersion = plan.info.etcd_version.parse().map_err(PitrError::Version)?;
    let binaries =
        etcd::find_binaries(&version, &settings.bin_dirs).map_err(|source| PitrError::NoEtcd {
            version: version.to_string(),
            source,
        })?;
    let full = settings.scratch.join("full.db");
    store.download_backup(&plan.base, &full).await?;
    let etcd = etcd::Throwaway::start(
        &binaries,
        &full,
        &settings.scratch.join("etcd"),
        START_DEADLINE,
    )
    .await?;
    let _ = std::fs::remove_file(&full);
    let client = etcd.client.clone();
    let keeper = tokio::spawn(keep_leases_alive(client.clone(), settings.clock.clone()));
    let result = apply(&client, plan, etcd.revision).await;
    let result = match result {
        Ok(replayed) => store_result(store, plan, &client, settings, etcd.revision, replayed).await,
        Err(e) => Err(e),
    };
    keeper.abort();
    etcd.stop().await;
    result
}

async fn apply(
    client: &etcd::EtcdClient,
    plan: &ReplayPlan,
    snapshot_revision: i64,
) -> Result<usize, PitrError> {
    if plan.target < snapshot_revision {
        return Err(PitrError::BeforeSnapshot {
            target: plan.target,
            base: plan.base.clone(),
            snapshot: snapshot_revision,
        });
    }
    if plan.chain_end < snapshot_revision {
        return Err(PitrError::SnapshotPastChain {
            base: plan.base.clone(),
            snapshot: snapshot_revision,
            chain_end: plan.chain_end,
        });
    }
    let ttls: std::collections::BTreeMap<i64, i64> = plan
        .segments
        .iter()
        .flat_map(|s| s.leases.iter())
        .map(|l| (l.id, l.ttl))
        .collect();
    let mut granted = std::collections::BTreeSet::new();
    let mut replayed = 0;
    for rev in plan
        .segments
        .iter()
        .flat_map(|s| s.revisions.iter())
        .filter(|r| r.revision > snapshot_revision && r.revision <= plan.target)
    {
        let mut changes = Vec::with_capacity(rev.ops.len());
        for op in &rev.ops {
            changes.push(match op {
                DeltaOp::Put { key, value, lease } => {
                    if *lease != 0 && granted.insert(*lease) {
                        let ttl = ttls
                            .get(lease)
                            .copied()
                            .unwrap_or(0)
                            .max(MIN_REPLAY_LEASE_TTL);
                        client.lease_grant_id(*lease, ttl).await?;
                    }
                    etcd::KeyChange::Put {
                        key: key.clone(),
                        value: value.clone(),
                        lease: *lease,
                    }
                }
                DeltaOp::Delete { key } => etcd::KeyChange::Delete { key: key.clone() },
            });
        }
        let got = client.apply_changes(&changes).await?;
        if got != rev.revision {
            return Err(PitrError::Diverged {
                expected: rev.revision,
                got,
            });
        }
        replayed += 1;
    }
    Ok(replayed)
}

async fn store_result(
    store: &BackupStore,
    plan: &ReplayPlan,
    client: &etcd::EtcdClient,
    settings: &ReplaySettings,
    snapshot_revision: i64,
    replayed: usize,
) -> Result<Replayed, PitrError> {
    let status = client.status().await?;
    if status.revision != plan.target {
        return Err(PitrError::WrongEnd {
            got: status.revision,
            target: plan.target,
        });
    }
    let h = client.hash_kv(plan.target).await?;
    let hash = KvHash {
        revision: h.revision,
        hash: h.hash,
        compact_revision: h.compact_revision,
    };
    let stream = client.snapshot().await?;
    let wall = settings.clock.wall();
    let info = BackupInfo {
        etcd_version: plan.info.etcd_version.clone(),
        timestamp: wall
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        cluster_spec: plan.info.cluster_spec.clone(),
    };
    // The replay's backup is encrypted to keys configured here, never to
    // the recipients a side file lists (anyone who can write the store
    // could have added a key of theirs there): this process's recipients,
    // else the public keys of its identity file (which decrypted the base).
    let encrypting;
    let store = match local_recipients(store.encryption())? {
        Some(keys) if store.encryption().recipients.is_none() => {
            encrypting = store.clone().with_encryption(backup::Encryption {
                recipients: Some(keys),
                identity_file: store.encryption().identity_file.clone(),
            });
            &encrypting
        }
        _ => store,
    };
    let summary = store
        .write_backup_hashed(
            stream,
            &info,
            Some(plan.target),
            None,
            backup::BackupFacts {
                kv_hash: Some(hash),
                // Not a live cluster's: no continuous backup goes on from it.
                cluster_id: None,
                replayed_from: Some(plan.base.clone()),
                requested_at: None,
            },
            wall,
        )
        .await?;
    tracing::info!(base = %plan.base, backup = %summary.name, revision = plan.target, replayed, "continuous backup replayed into a new full backup");
    Ok(Replayed {
        name: summary.name,
        revision: plan.target,
        snapshot_revision,
        replayed,
        hash,
    })
}

/// Renew every lease of the throwaway etcd each second while the replay
/// runs, so none expires and deletes keys at a revision of its own.
async fn keep_leases_alive(client: etcd::EtcdClient, clock: Arc<dyn crate::clock::Clock>) {
    loop {
        if let Ok(ids) = client.lease_ids().await {
            for id in ids {
                let _ = client.lease_renew(id).await;
            }
        }
        clock.sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use backup::DeltaRevision;

    fn segment(base: &str, start: i64, end: i64) -> DeltaSegment {
        DeltaSegment {
            base: base.into(),
            start_revision: start,
            end_revision: end,
            revisions: (start..=end)
                .map(|r| DeltaRevision {
                    revision: r,
                    at_ms: r * 1000,
                    ops: vec![DeltaOp::Put {
                        key: format!("/k/{r}").into_bytes(),
                        value: b"v".to_vec(),
                        lease: 0,
                    }],
                })
                .collect(),
            leases: vec![],
        }
    }

    /// A backup at revision 10 with segments as two leaders may leave
    /// them: overlapping, and one after a hole.
    async fn store_with_chain() -> (BackupStore, String) {
        let store = BackupStore::open("memory://pitr", &Default::default()).unwrap();
        let snapshot = futures::stream::iter(vec![Ok(bytes::Bytes::from_static(b"snapshot"))]);
        let info = BackupInfo {
            etcd_version: "3.5.30".into(),
            timestamp: 1,
            cluster_spec: None,
        };
        let base = store
            .write_backup(snapshot, &info, Some(10), None, std::time::UNIX_EPOCH)
            .await
            .unwrap()
            .name;
        for (s, e) in [(11, 15), (13, 18), (11, 12), (20, 21)] {
            store.write_segment(&segment(&base, s, e)).await.unwrap();
        }
        (store, base)
    }

    #[tokio::test]
    async fn overlapping_segments_replay_each_revision_once_and_a_hole_ends_the_chain() {
        let (store, base) = store_with_chain().await;
        let p = plan(&store, &base, ReplayTo::Latest)
            .await
            .unwrap()
            .unwrap();
        let revisions: Vec<i64> = p
            .segments
            .iter()
            .flat_map(|s| s.revisions.iter().map(|r| r.revision))
            .collect();
        assert_eq!(revisions, (11..=18).collect::<Vec<_>>());
        assert_eq!((p.base_revision, p.chain_end, p.target), (10, 18, 18));
        assert_eq!(p.unusable, 1, "the segment after the hole at 19");

        let p = plan(&store, &base, ReplayTo::Revision(14))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.target, 14);
        // By time: the last revision seen at or before it.
        let p = plan(&store, &base, ReplayTo::Time(16_500))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.target, 16);
        assert_eq!(p.target_time_ms(), Some(16_000));
        let p = plan(&store, &base, ReplayTo::Time(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.target, 10, "before the first change: the full backup");
        for outside in [9, 19, 21] {
            let err = plan(&store, &base, ReplayTo::Revision(outside))
                .await
                .unwrap_err();
            assert!(
                matches!(err, PitrError::OutsideChain { first: 10, last: 18, revision, .. } if revision == outside),
                "{err}"
            );
            assert!(err.to_string().contains("revisions 10 to 18"), "{err}");
        }
    }
}
