//! Continuous backups: while this manager leads, every change to the
//! keyspace after the newest full backup goes to the store in segments
//! (`<backup>/etcd-manager-deltas/`), one every `--delta-interval` or sooner
//! when large. A new full backup starts a new chain; a new leader resumes
//! the chain where the store has it. History that cannot be had (a
//! compacted watch, the store away too long) is never skipped silently: it
//! is a gap, counted and shown, and the leader takes a full backup to start
//! again from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use backup::{BackupStore, DeltaLease, DeltaOp, DeltaRevision, DeltaSegment};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics as m;

/// `--delta-interval`'s default.
pub const DEFAULT_DELTA_INTERVAL: Duration = Duration::from_secs(10);
/// A segment goes up before the interval once this much waits.
pub const FLUSH_BYTES: usize = 8 << 20;
/// The most held while the store does not take segments; past it the
/// changes are dropped and counted as a gap (a full backup follows).
pub const MAX_PENDING_BYTES: usize = 256 << 20;
/// A watch that delivers nothing this long is started again (etcd sends a
/// progress notice every 10 minutes by default).
const WATCH_IDLE: Duration = Duration::from_secs(15 * 60);
const ETCD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the leader asks the streamer to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaTarget {
    /// The lease epoch the leader holds.
    pub epoch: u64,
    /// Client URLs of healthy members.
    pub endpoints: Vec<String>,
    /// The full backup this leader took last; None: the newest backup in
    /// the store.
    pub base: Option<String>,
}

/// Where the continuous backup stands (for `status` and the driver).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaStatus {
    /// The full backup the chain starts from.
    pub base: Option<String>,
    /// The last revision in the store.
    pub uploaded_to: Option<i64>,
    pub last_upload: Option<SystemTime>,
    /// Why the chain stopped and a full backup is needed, if it did.
    pub gap: Option<String>,
}

/// Shared between the streamer and the driver.
#[derive(Debug, Default)]
pub struct DeltaShared {
    status: Mutex<DeltaStatus>,
    full_needed: AtomicBool,
}

impl DeltaShared {
    pub fn status(&self) -> DeltaStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The chain cannot go on without a new full backup.
    pub fn full_needed(&self) -> bool {
        self.full_needed.load(Ordering::Relaxed)
    }

    /// A full backup was taken: the next chain starts from it.
    pub fn full_taken(&self) {
        self.full_needed.store(false, Ordering::Relaxed);
    }

    fn update(&self, f: impl FnOnce(&mut DeltaStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// How a chain ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The leader's target changed (or it stopped leading).
    Retarget,
    /// History is missing: a full backup is needed (counted as a gap).
    Gap(String),
    /// No full backup to start from.
    NoBase(NoBase),
}

/// Why no chain can follow on from the newest full backup: the leader
/// takes a new one to start from (not a gap: no history was lost).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NoBase {
    #[error("no full backup yet")]
    NoBackup,
    #[error("backup {base} has no side file (written by upstream's etcd-manager)")]
    NoSideFile { base: String },
    #[error("backup {base} records no revision")]
    NoRevision { base: String },
    #[error("backup {base} is of etcd cluster {id:016x}, not of the running cluster {live:016x}")]
    OtherCluster { base: String, id: u64, live: u64 },
    #[error(
        "backup {base} does not record its etcd cluster (a replay, or written by an older version)"
    )]
    NoClusterId { base: String },
}

/// Why following a chain stopped before it ended; tried again after a pause.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error(transparent)]
    Store(#[from] backup::Error),
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
}

/// The revision recorded with backup `base` (its side file `extra`), when a
/// chain can follow on from it on the cluster `live` (by id): it was read
/// from that cluster, not from another or an upstream manager or a replay.
fn chain_base(base: &str, extra: Option<&backup::BackupExtra>, live: u64) -> Result<i64, NoBase> {
    let base = base.to_string();
    let Some(extra) = extra else {
        return Err(NoBase::NoSideFile { base });
    };
    let Some(revision) = extra.revision else {
        return Err(NoBase::NoRevision { base });
    };
    match extra.cluster_id_u64() {
        Some(id) if id == live => Ok(revision),
        Some(id) => Err(NoBase::OtherCluster { base, id, live }),
        None => Err(NoBase::NoClusterId { base }),
    }
}

/// The contiguous end of a chain of `ranges` (sorted by start) after
/// `base_revision`: overlapping segments (two writers) are fine, a hole
/// ends the chain.
pub fn chain_end(base_revision: i64, ranges: &[(i64, i64)]) -> i64 {
    let mut end = base_revision;
    for &(start, stop) in ranges {
        if start > end + 1 {
            break;
        }
        end = end.max(stop);
    }
    end
}

/// Changes seen and not yet uploaded.
#[derive(Default)]
struct Pending {
    revisions: Vec<DeltaRevision>,
    bytes: usize,
    /// Operations held (a segment is flushed at [`backup::FLUSH_OPS`], so
    /// none exceeds what a reader decodes: [`backup::MAX_SEGMENT_OPS`]).
    ops: u64,
    oldest: Option<Instant>,
}

/// The leader's continuous backup.
pub struct DeltaStreamer {
    pub store: BackupStore,
    pub clock: Arc<dyn Clock>,
    pub interval: Duration,
    pub tls: Option<etcd::ClientTls>,
    pub shared: Arc<DeltaShared>,
    pub target: watch::Receiver<Option<DeltaTarget>>,
}

impl DeltaStreamer {
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut pause = Duration::from_secs(1);
        loop {
            let Some(target) = self.wait_for_target(&cancel).await else {
                return;
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.chain(&target) => r,
            };
            match result {
                Ok(End::Retarget) => pause = Duration::from_secs(1),
                Ok(End::Gap(reason)) => {
                    metrics::counter!(m::DELTA_GAPS).increment(1);
                    tracing::error!(%reason, "continuous backup has a gap: a full backup starts a new chain");
                    self.stopped(reason);
                    if !self.wait_for_retarget(&target, &cancel).await {
                        return;
                    }
                }
                Ok(End::NoBase(reason)) => {
                    tracing::info!(%reason, "continuous backup waits for a full backup");
                    self.stopped(reason.to_string());
                    if !self.wait_for_retarget(&target, &cancel).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "continuous backup interrupted");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.clock.sleep(pause) => {}
                        _ = self.target.changed() => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    fn stopped(&self, reason: String) {
        self.shared.full_needed.store(true, Ordering::Relaxed);
        self.shared.update(|s| s.gap = Some(reason));
        metrics::gauge!(m::DELTA_LAG).set(0.0);
    }

    async fn wait_for_target(&mut self, cancel: &CancellationToken) -> Option<DeltaTarget> {
        loop {
            if let Some(t) = self.target.borrow_and_update().clone() {
                return Some(t);
            }
            metrics::gauge!(m::DELTA_LAG).set(0.0);
            tokio::select! {
                _ = cancel.cancelled() => return None,
                changed = self.target.changed() => changed.ok()?,
            }
        }
    }

    /// Wait until the leader's epoch or base differs from `target`'s.
    async fn wait_for_retarget(
        &mut self,
        target: &DeltaTarget,
        cancel: &CancellationToken,
    ) -> bool {
        loop {
            if !same_chain(self.target.borrow_and_update().as_ref(), target) {
                return true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                changed = self.target.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// Follow one chain until the target changes or history is missing.
    async fn chain(&mut self, target: &DeltaTarget) -> Result<End, ChainError> {
        let client =
            etcd::EtcdClient::connect_with(&target.endpoints, ETCD_TIMEOUT, self.tls.as_ref())
                .await?;
        let live = client.status().await?.cluster_id;
        let base = match &target.base {
            Some(name) => name.clone(),
            None => match self.store.list_backups().await?.pop() {
                Some(name) => name,
                None => return Ok(End::NoBase(NoBase::NoBackup)),
            },
        };
        let extra = self.store.read_backup_extra(&base).await?;
        let base_revision = match chain_base(&base, extra.as_ref(), live) {
            Ok(r) => r,
            Err(reason) => return Ok(End::NoBase(reason)),
        };
        let ranges = self.store.list_segments(&base).await?;
        let mut uploaded = chain_end(base_revision, &ranges);
        self.shared.update(|s| {
            s.base = Some(base.clone());
            s.uploaded_to = Some(uploaded);
            s.gap = None;
        });
        self.shared.full_needed.store(false, Ordering::Relaxed);
        metrics::gauge!(m::DELTA_REVISION).set(uploaded as f64);
        let mut watch = client.watch_keyspace(uploaded + 1, WATCH_IDLE).await?;
        tracing::info!(%base, from = uploaded + 1, "continuous backup following the keyspace");
        let mut pending = Pending::default();
        let mut leases: BTreeMap<i64, i64> = BTreeMap::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                changed = self.target.changed() => {
                    let now = self.target.borrow_and_update().clone();
                    if changed.is_err() || !same_chain(now.as_ref(), target) {
                        // Still ours while the leader holds the same epoch: what
                        // waits belongs to this chain. Otherwise leave it to
                        // the next leader, which reads it again from etcd.
                        if now.as_ref().is_some_and(|n| n.epoch == target.epoch) {
                            self.flush(&base, &mut pending, &leases, &mut uploaded).await;
                        }
                        return Ok(End::Retarget);
                    }
                }
                _ = tick.tick() => {
                    self.flush(&base, &mut pending, &leases, &mut uploaded).await;
                }
                batch = watch.next() => match batch? {
                    etcd::WatchBatch::Compacted { compact_revision } => {
                        return Ok(End::Gap(format!(
                            "etcd compacted revision {} before it was uploaded (compacted to {compact_revision})",
                            uploaded + 1
                        )));
                    }
                    etcd::WatchBatch::Progress { .. } => {}
                    etcd::WatchBatch::Changes(changes) => {
                        if let Some(reason) = self.take(changes, &mut pending, uploaded, &client, &mut leases).await {
                            return Ok(End::Gap(reason));
                        }
                        if pending.bytes >= FLUSH_BYTES || pending.ops >= backup::FLUSH_OPS {
                            self.flush(&base, &mut pending, &leases, &mut uploaded).await;
                        }
                        if pending.bytes > MAX_PENDING_BYTES {
                            return Ok(End::Gap(format!(
                                "more than {} MiB of changes waited for the store",
                                MAX_PENDING_BYTES >> 20
                            )));
                        }
                    }
                },
            }
            let lag = pending
                .oldest
                .map(|t| self.clock.now().saturating_duration_since(t).as_secs_f64())
                .unwrap_or(0.0);
            metrics::gauge!(m::DELTA_LAG).set(lag);
        }
    }

    /// Add watched changes to `pending`; Some(reason) when they do not
    /// follow on from what came before.
    async fn take(
        &self,
        changes: Vec<(i64, etcd::KeyChange)>,
        pending: &mut Pending,
        uploaded: i64,
        client: &etcd::EtcdClient,
        leases: &mut BTreeMap<i64, i64>,
    ) -> Option<String> {
        let at_ms = self
            .clock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for (revision, change) in changes {
            let last = pending
                .revisions
                .last()
                .map(|r| r.revision)
                .unwrap_or(uploaded);
            if revision != last && revision != last + 1 {
                return Some(format!(
                    "the watch skipped from revision {last} to {revision}"
                ));
            }
            let op = match change {
                etcd::KeyChange::Put { key, value, lease } => {
                    if lease != 0 && !leases.contains_key(&lease) {
                        // The TTL it was granted with, for a replay to grant it
                        // again (0: already gone, or etcd did not say).
                        let ttl = client
                            .lease_granted_ttl(lease)
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or(0);
                        leases.insert(lease, ttl);
                    }
                    pending.bytes += key.len() + value.len() + 16;
                    pending.ops += 1;
                    DeltaOp::Put { key, value, lease }
                }
                etcd::KeyChange::Delete { key } => {
                    pending.bytes += key.len() + 8;
                    pending.ops += 1;
                    DeltaOp::Delete { key }
                }
            };
            match pending.revisions.last_mut() {
                Some(r) if r.revision == revision => r.ops.push(op),
                _ => pending.revisions.push(DeltaRevision {
                    revision,
                    at_ms,
                    ops: vec![op],
                }),
            }
            pending.oldest.get_or_insert_with(|| self.clock.now());
        }
        None
    }

    /// Upload what waits as one segment; kept for the next try if the
    /// store refuses.
    async fn flush(
        &self,
        base: &str,
        pending: &mut Pending,
        leases: &BTreeMap<i64, i64>,
        uploaded: &mut i64,
    ) {
        let (Some(first), Some(last)) = (pending.revisions.first(), pending.revisions.last())
        else {
            return;
        };
        let (start, end) = (first.revision, last.revision);
        let used: std::collections::BTreeSet<i64> = pending
            .revisions
            .iter()
            .flat_map(|r| r.ops.iter())
            .filter_map(|op| match op {
                DeltaOp::Put { lease, .. } if *lease != 0 => Some(*lease),
                _ => None,
            })
            .collect();
        let segment = DeltaSegment {
            base: base.to_string(),
            start_revision: start,
            end_revision: end,
            revisions: std::mem::take(&mut pending.revisions),
            leases: used
                .into_iter()
                .map(|id| DeltaLease {
                    id,
                    ttl: leases.get(&id).copied().unwrap_or(0),
                })
                .collect(),
        };
        let written = match self.store.write_segment(&segment).await {
            Ok(bytes) => Ok(bytes),
            // Another writer (a leader that has not yet noticed it lost the
            // lease) uploaded this range first: the same history, seen at
            // other times. Ours is then already in the store.
            Err(e) => match self.store.read_segment(base, start, end).await {
                Ok(theirs) if same_changes(&theirs, &segment) => {
                    tracing::info!(%base, start, end, "continuous-backup segment already uploaded by another writer");
                    Ok(0)
                }
                _ => Err(e),
            },
        };
        match written {
            Ok(bytes) => {
                *uploaded = end;
                pending.bytes = 0;
                pending.ops = 0;
                pending.oldest = None;
                let wall = self.clock.wall();
                self.shared.update(|s| {
                    s.uploaded_to = Some(end);
                    s.last_upload = Some(wall);
                });
                metrics::counter!(m::DELTA_SEGMENTS, "result" => "success").increment(1);
                metrics::counter!(m::DELTA_BYTES).increment(bytes);
                metrics::gauge!(m::DELTA_REVISION).set(end as f64);
                metrics::gauge!(m::DELTA_LAST_UPLOAD).set(
                    wall.duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64(),
                );
                tracing::debug!(%base, start, end, bytes, "continuous-backup segment uploaded");
            }
            Err(e) => {
                pending.revisions = segment.revisions;
                metrics::counter!(m::DELTA_SEGMENTS, "result" => "failure").increment(1);
                tracing::warn!(%base, start, end, error = %e, "continuous-backup segment not uploaded; kept for the next try");
            }
        }
    }
}

/// The same revisions with the same changes (when they were seen aside).
fn same_changes(a: &DeltaSegment, b: &DeltaSegment) -> bool {
    a.revisions.len() == b.revisions.len()
        && a.revisions
            .iter()
            .zip(&b.revisions)
            .all(|(x, y)| x.revision == y.revision && x.ops == y.ops)
}

/// Whether `now` is the same chain as `target` (same epoch and base).
fn same_chain(now: Option<&DeltaTarget>, target: &DeltaTarget) -> bool {
    now.is_some_and(|n| n.epoch == target.epoch && n.base == target.base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_ends_at_its_first_hole() {
        assert_eq!(chain_end(10, &[]), 10);
        assert_eq!(chain_end(10, &[(11, 20), (21, 30)]), 30);
        // A segment may start before the base's recorded revision (the
        // snapshot is taken after it), and two writers may overlap.
        assert_eq!(chain_end(10, &[(9, 15), (11, 18), (16, 25)]), 25);
        assert_eq!(chain_end(10, &[(11, 20), (22, 30)]), 20);
        assert_eq!(chain_end(10, &[(12, 20)]), 10);
    }

    fn extra(revision: Option<i64>, cluster_id: Option<&str>) -> backup::BackupExtra {
        backup::BackupExtra {
            format: 1,
            snapshot_sha256: "a".repeat(64),
            snapshot_size: 1,
            compressed_sha256: "b".repeat(64),
            compressed_size: 1,
            revision,
            leader_epoch: None,
            writer: "w".into(),
            members: vec![],
            kv_hash: None,
            cluster_id: cluster_id.map(str::to_string),
            replayed_from: None,
            encryption: None,
            requested_at: None,
        }
    }

    /// A chain follows on only from a backup of the running cluster that
    /// records its revision; anything else waits for a new full backup.
    #[test]
    fn a_chain_starts_only_from_a_backup_of_the_running_cluster() {
        let live = 0xcdf8_1819_4e3a_8c32;
        let ours = extra(Some(10), Some("cdf818194e3a8c32"));
        assert_eq!(chain_base("b", Some(&ours), live), Ok(10));
        assert!(matches!(
            chain_base("b", None, live),
            Err(NoBase::NoSideFile { .. })
        ));
        assert!(matches!(
            chain_base("b", Some(&extra(None, Some("cdf818194e3a8c32"))), live),
            Err(NoBase::NoRevision { .. })
        ));
        assert_eq!(
            chain_base("b", Some(&ours), 1),
            Err(NoBase::OtherCluster {
                base: "b".into(),
                id: live,
                live: 1
            })
        );
        assert!(matches!(
            chain_base("b", Some(&extra(Some(10), None)), live),
            Err(NoBase::NoClusterId { .. })
        ));
        let text = chain_base("b", Some(&ours), 1)
            .expect_err("another cluster")
            .to_string();
        assert!(text.contains("not of the running cluster"), "{text}");
    }
}
