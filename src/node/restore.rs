//! Long jobs on this node: restores from a backup, the v2 store check and
//! restore drills, each started in the background and reported through the
//! job board; and the folders they leave (restore scratch, trashcan).

use std::path::{Path, PathBuf};

use crate::core::model::{JobKind, JobPhase};
use crate::peer::{Refusal, Response};

use super::LocalEtcd;
use super::Node;
use std::sync::atomic::AtomicU64;
use tokio_util::sync::CancellationToken;

/// Where a restore downloads its backup; emptied at every start (a restore
/// cut short by a crash leaves its download here).
pub(super) const RESTORE_DIR: &str = "restore";

/// Under the data dir: scratch folders of restore drills (removed after each).
pub(super) const DRILL_DIR: &str = "restore-drill";

/// Revisions jump by this much on a restore (etcd 3.5+), so every watcher
/// sees a compaction and re-lists instead of silently missing events.
pub const RESTORE_BUMP_REVISION: u64 = 1_000_000_000;

/// Delete all but the newest `keep` entries of the trashcan (by modification
/// time); returns what was deleted. A missing trashcan is empty.
pub fn gc_trashcan(dir: &std::path::Path, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    all.sort();
    let doomed: Vec<PathBuf> = all
        .iter()
        .rev()
        .skip(keep)
        .map(|(_, p)| p.clone())
        .collect();
    for p in &doomed {
        if p.is_dir() {
            std::fs::remove_dir_all(p)?;
        } else {
            std::fs::remove_file(p)?;
        }
    }
    Ok(doomed)
}

pub(super) fn remove_restore_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let gone = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match gone {
            Ok(()) => {
                tracing::info!(path = %p.display(), "removed a leftover of an interrupted restore")
            }
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a restore leftover")
            }
        }
    }
}

/// How a restore ended, as its job reports it.
pub(super) fn job_end(result: &Result<(), Response>) -> JobPhase {
    match result {
        Ok(()) => JobPhase::Done,
        Err(Response::Failed(r)) => JobPhase::Failed(r.to_string()),
        Err(Response::Fenced { highest_epoch }) => JobPhase::Failed(format!(
            "refused: a leader of epoch {highest_epoch} spoke to this node since"
        )),
        Err(other) => JobPhase::Failed(format!("{other:?}")),
    }
}

pub(super) fn unique_path(p: PathBuf) -> PathBuf {
    if !p.exists() {
        return p;
    }
    (1..)
        .map(|i| PathBuf::from(format!("{}.{i}", p.display())))
        .find(|c| !c.exists())
        .unwrap_or(p)
}

impl Node {
    /// Restore a backup into a new data dir and start it as a quarantined
    /// member of the new cluster. The backup is downloaded and verified
    /// without the node's lock (a download of gigabytes takes minutes, and
    /// GetInfo keeps answering meanwhile) before any data dir is touched;
    /// then, under the lock and only if no newer leader spoke meanwhile, the
    /// old data goes to the trashcan (never deleted here) and the new member
    /// starts.
    pub(super) async fn restore(
        &self,
        r: crate::peer::RestoreBackup,
        cancel: &CancellationToken,
        bytes: &AtomicU64,
    ) -> Result<(), Response> {
        let failed = |e: String| Response::Failed(Refusal::Failed(e));
        let _one = self.restoring.lock().await;
        {
            let inner = self.inner.lock().await;
            if inner
                .state
                .etcd
                .as_ref()
                .is_some_and(|l| l.cluster_token == r.cluster_token)
            {
                return Ok(()); // repeated request
            }
        }
        if !r.nodes.iter().any(|n| n.name == self.id) {
            return Err(failed(
                "this node is not in the cluster it was asked to restore".into(),
            ));
        }
        let version: etcd::EtcdVersion = r
            .etcd_version
            .parse()
            .map_err(|e: etcd::InvalidVersion| failed(e.to_string()))?;
        let binaries = etcd::find_binaries(&version, &self.settings.bin_dirs)
            .map_err(|e| failed(e.to_string()))?;
        let scratch = self.settings.data_dir.join(RESTORE_DIR);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| failed(format!("{}: {e}", scratch.display())))?;
        let file = scratch.join(format!("{}.db", r.cluster_token));
        let result = async {
            tracing::info!(backup = %r.backup, token = %r.cluster_token, "downloading the backup for the restore");
            // Until the data dirs are touched, a newer leader's restore may
            // take over (see crate::node::jobs).
            let fetch = async {
                let got = self
                    .settings
                    .store
                    .download_backup_counting(&r.backup, &file, bytes)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                if !got.verified_checksum {
                    self.jobs.set_phase(&r.cluster_token, JobPhase::Verifying);
                    self.settings
                        .runtime
                        .verify_snapshot(&binaries, &file)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                }
                Ok(got)
            };
            let got = tokio::select! {
                got = fetch => got?,
                () = cancel.cancelled() => return Err(failed("cancelled: a newer leader's restore took over".into())),
            };
            tracing::info!(backup = %r.backup, bytes = got.snapshot_size, "backup downloaded and verified for the restore");
            self.jobs.set_phase(&r.cluster_token, JobPhase::Restoring);
            // Verified: only now touch the data dirs, if this leader still may.
            let mut inner = self.inner.lock().await;
            self.admit(&mut inner, &r.fence, true)?;
            self.stop_for_good(&mut inner)
                .await
                .map_err(|e| Response::Failed(e.into()))?;
            let local = LocalEtcd {
                cluster_token: r.cluster_token.clone(),
                etcd_version: r.etcd_version.clone(),
                quarantined: true,
                nodes: r.nodes.clone(),
                new_cluster: true,
            };
            let spec = self.spec_for(&local);
            let bump = version.has_etcdutl().then_some(RESTORE_BUMP_REVISION);
            self.settings
                .runtime
                .restore_snapshot(&binaries, &file, &spec, bump)
                .await
                .map_err(|e| failed(e.to_string()))?;
            tracing::info!(backup = %r.backup, token = %r.cluster_token, bump_revision = bump, "backup restored into a new data dir");
            inner.state.etcd = Some(local.clone());
            self.persist(&inner).map_err(|e| failed(e.to_string()))?;
            inner.process = Some(self.spawn_etcd(&local).map_err(|e| failed(e.to_string()))?);
            Ok(())
        }
        .await;
        let _ = std::fs::remove_file(&file);
        result
    }

    /// Start a restore as a job: answered at once, once the request is
    /// known to be one this node can carry out; the leader follows the job
    /// in [`NodeInfo::jobs`].
    pub(super) fn start_restore_job(&self, r: crate::peer::RestoreBackup) -> Response {
        if !r.nodes.iter().any(|n| n.name == self.id) {
            return Response::Failed(Refusal::Failed(
                "this node is not in the cluster it was asked to restore".into(),
            ));
        }
        let found = r
            .etcd_version
            .parse::<etcd::EtcdVersion>()
            .map_err(|e| e.to_string())
            .and_then(|v| {
                etcd::find_binaries(&v, &self.settings.bin_dirs).map_err(|e| e.to_string())
            });
        if let Err(e) = found {
            return Response::Failed(Refusal::Failed(e));
        }
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return Response::Failed(Refusal::Failed(
                "this node runs no jobs (it is not shared)".into(),
            ));
        };
        let key = r.cluster_token.clone();
        match self.jobs.begin(JobKind::Restore, &key, r.fence.epoch) {
            crate::node::jobs::Begin::Known(_) => Response::Done,
            crate::node::jobs::Begin::Busy(j) => Response::Failed(Refusal::Busy(format!(
                "busy with the restore of cluster {} for the leader of epoch {}; try again when it ends",
                j.key, j.epoch
            ))),
            crate::node::jobs::Begin::Start { cancel, bytes } => {
                tracing::info!(backup = %r.backup, token = %key, epoch = r.fence.epoch, "restore job started");
                let halted = self.jobs.halted();
                tokio::spawn(async move {
                    tokio::select! {
                        result = me.restore(r, &cancel, &bytes) => {
                            if let Err(resp) = &result {
                                tracing::warn!(token = %key, reason = ?resp, "restore job failed");
                            }
                            me.jobs.set_phase(&key, job_end(&result));
                        }
                        // The node stops: the job ends here, as the process would.
                        () = halted.cancelled() => {}
                    }
                });
                Response::Done
            }
        }
    }

    /// Start the check of this member's v2 store (`data`, of cluster
    /// `token`) as a job for the leader of `epoch`; answered at once.
    pub(super) fn start_v2store_job(&self, token: String, data: PathBuf, epoch: u64) -> Response {
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return Response::Failed(Refusal::Failed(
                "this node runs no jobs (it is not shared)".into(),
            ));
        };
        match self.jobs.begin(JobKind::CheckV2Store, &token, epoch) {
            crate::node::jobs::Begin::Known(_) => Response::Done,
            crate::node::jobs::Begin::Busy(j) => Response::Failed(Refusal::Busy(format!(
                "busy with the {:?} job of cluster {} for the leader of epoch {}; try again when it ends",
                j.kind, j.key, j.epoch
            ))),
            crate::node::jobs::Begin::Start { .. } => {
                tracing::info!(%token, epoch, "v2 store check job started");
                // It only reads the member's data: a newer leader's job that
                // takes over lets it end (and empty its scratch dir).
                let halted = self.jobs.halted();
                tokio::spawn(async move {
                    tokio::select! {
                        verdict = me.check_v2store(&data) => {
                            let phase = match verdict {
                                Ok(etcd::V2StoreVerdict::Clean) => JobPhase::Done,
                                Ok(etcd::V2StoreVerdict::Custom(what)) => JobPhase::Found(what),
                                Err(e) => {
                                    tracing::warn!(%token, reason = %e, "v2 store check job failed");
                                    JobPhase::Failed(e.to_string())
                                }
                            };
                            me.jobs.set_phase(&token, phase);
                        }
                        // The node stops: the job ends here, as the process
                        // would (the scratch dir is emptied at the next start).
                        () = halted.cancelled() => {}
                    }
                });
                Response::Done
            }
        }
    }

    /// Start a restore drill of `backup` in the background (a job: the
    /// leader does not wait; the verdict goes to the store). Skipped while
    /// another drill runs here.
    pub(super) fn start_drill(&self, backup: &str) {
        {
            let mut running = self.drill_running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = running.as_ref() {
                tracing::info!(%backup, running = %other, "restore drill skipped: another one runs here");
                return;
            }
            *running = Some(backup.to_string());
        }
        let store = self.settings.store.clone();
        let settings = crate::backups::drill::DrillSettings {
            bin_dirs: self.settings.bin_dirs.clone(),
            scratch_root: self.settings.data_dir.join(DRILL_DIR),
            by: self.id.clone(),
            clock: std::sync::Arc::new(crate::clock::SystemClock),
        };
        let running = self.drill_running.clone();
        let backup = backup.to_string();
        tokio::spawn(async move {
            tracing::info!(%backup, "restore drill started");
            match crate::backups::drill::verify_backup(&store, &backup, &settings).await {
                Ok(_) => {}
                // The operator keeps the key off this manager: no verdict,
                // which the not-verified alert shows in time.
                Err(e @ backup::Error::Encryption { .. }) => {
                    tracing::info!(%backup, reason = %e, "restore drill not run: the backup is encrypted and this manager cannot decrypt it");
                }
                Err(e) => {
                    tracing::warn!(%backup, error = %e, "could not keep the restore drill's verdict in the store");
                }
            }
            *running.lock().unwrap_or_else(|p| p.into_inner()) = None;
        });
    }
}
