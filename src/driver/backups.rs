//! Backups and restores as the leader runs them: take, verify before a
//! restore, restore as a new quarantined cluster, queue a restore.

use std::time::Instant;

use backup::layout::BACKUP_NOW_FILE;
use backup::{BackupInfo, ClusterSpec};

use super::error::Missing;
use super::observe::healthy_endpoints;
use super::{Driver, DriverError, ETCD_TIMEOUT, PEER_TIMEOUT, node_configs};
use crate::controller::Observation;
use crate::core::memory::Fact;
use crate::core::model::JobKind;
use crate::metrics as m;
use crate::peer::{Fence, JOIN_TIMEOUT, RESTORE_TIMEOUT, Request};
use crate::{controller, peer};

/// The leader's backup bookkeeping.
#[derive(Default)]
pub(super) struct Books {
    /// When this leader last finished a backup, and its name (a
    /// dump-and-restore restores it; the continuous backup chains from it).
    pub(super) last_backup: Option<Instant>,
    pub(super) last_backup_name: Option<String>,
    pub(super) last_retention: Option<Instant>,
    /// The `backup-now` request the last on-demand backup answered.
    pub(super) backup_request: Option<bytes::Bytes>,
    /// Periodic backups since the last one given to a restore drill.
    backups_since_drill: u32,
    /// A backup awaiting its restore drill.
    pub(super) unverified_backup: Option<String>,
    /// The newest backup and its revision, read while quorum is lost.
    pub(super) latest_backup: Option<(String, Option<i64>)>,
}

impl Books {
    /// Backup `name` finished at `now`; a periodic one is given to a drill
    /// every `verify_every` (0: never).
    pub(super) fn taken(&mut self, name: &str, now: Instant, periodic: bool, verify_every: u32) {
        self.last_backup = Some(now);
        self.last_backup_name = Some(name.to_string());
        if periodic && verify_every > 0 {
            self.backups_since_drill += 1;
            if self.backups_since_drill >= verify_every {
                self.backups_since_drill = 0;
                self.unverified_backup = Some(name.to_string());
            }
        }
    }
}

impl Driver {
    /// Verify first (nothing is touched if the backup is missing or corrupt),
    /// then record the new token, stop every etcd, restore on the chosen peers.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn restore_backup(
        &mut self,
        command: &str,
        backup: &str,
        token: &str,
        version: &str,
        peers: &[String],
        obs: &Observation,
        fence: &Fence,
    ) -> Result<(), DriverError> {
        let pc = &self.settings.peers.clone();
        match self.verify_backup(backup, version).await {
            Ok(()) => {}
            Err((true, reason)) => {
                tracing::error!(%command, %backup, %reason, "restore refused");
                self.remember(Fact::Refused {
                    command,
                    backup,
                    reason: &reason,
                });
                // Not a permanent failure of the action kind: this command is
                // never tried again (`refused`), and another one queued by an
                // operator must run at once, not after the longest backoff.
                return Err(DriverError::RestoreRefused(reason));
            }
            Err((false, reason)) => {
                return Err(DriverError::VerifyLater {
                    backup: backup.to_string(),
                    reason,
                });
            }
        }
        let nodes = node_configs(obs, peers, "the restore")?;
        let mut targets = vec![];
        for p in peers {
            targets.push(self.addr_of(p)?);
        }
        self.store
            .mark_restore_started(
                command,
                &backup::RestoreProgress {
                    cluster_token: token.to_string(),
                    leader_epoch: fence.epoch,
                },
            )
            .await
            .map_err(DriverError::from)?;
        // The old cluster is retired first: a member out of reach now (down,
        // cut off) is stopped when it comes back and then joins the
        // restored cluster, instead of running the old data beside it.
        self.retire_clusters(obs, "restore-backup", backup, Some(token), fence.epoch)
            .await?;
        // Stop every etcd first, so no member of the old cluster serves while
        // the new one forms (a member of the new one, restored by an earlier
        // try of this restore, is left as it is).
        let running: Vec<String> = obs
            .peers
            .iter()
            .filter(|p| p.token() != Some(token))
            .filter(|p| p.info.as_ref().is_some_and(|i| i.etcd_state.is_some()))
            .map(|p| p.id.clone())
            .collect();
        for p in running {
            let addr = self.addr_of(&p)?;
            pc.call(addr, &Request::StopEtcd(fence.clone()), JOIN_TIMEOUT)
                .await
                .map_err(DriverError::from)?;
        }
        let body = peer::RestoreBackup {
            fence: fence.clone(),
            cluster_token: token.to_string(),
            backup: backup.to_string(),
            etcd_version: version.to_string(),
            nodes,
        };
        // Every node downloads and restores at once: a restore takes one
        // download's time, not one per member. A manager of this release
        // runs it as a job that the leader follows; an older one within
        // one request.
        let me = &*self;
        let restores = peers.iter().zip(targets).map(|(id, addr)| {
            let jobs = obs
                .peers
                .iter()
                .find(|p| p.id == *id)
                .and_then(|p| p.info.as_ref())
                .is_some_and(|i| i.jobs.is_some());
            let body = body.clone();
            async move {
                if !jobs {
                    let req = Request::RestoreBackup(body);
                    return pc
                        .call(addr, &req, RESTORE_TIMEOUT)
                        .await
                        .map(drop)
                        .map_err(DriverError::from);
                }
                // Answered once the node has checked the fence (a store
                // read) and started the job.
                pc.call(addr, &Request::RestoreJob(body), peer::REQUEST_TIMEOUT)
                    .await
                    .map_err(DriverError::from)?;
                me.follow_job(id, addr, JobKind::Restore, token)
                    .await
                    .map(drop)
            }
        });
        for result in futures::future::join_all(restores).await {
            result?;
        }
        tracing::info!(%backup, %token, %version, members = peers.len(), "backup restored into a new quarantined cluster");
        Ok(())
    }

    /// Download and check a backup on the leader before anything is touched.
    /// Err((true, why)): the backup itself is unusable (missing, corrupt);
    /// Err((false, why)): a passing problem (store unreachable, disk), try later.
    pub(super) async fn verify_backup(
        &self,
        backup: &str,
        version: &str,
    ) -> Result<(), (bool, String)> {
        let dir = &self.settings.scratch_dir;
        std::fs::create_dir_all(dir).map_err(|e| (false, format!("{}: {e}", dir.display())))?;
        let file = dir.join("verify.db");
        let result = async {
            let got = self.store.download_backup(backup, &file).await.map_err(|e| (!e.is_retryable(), e.to_string()))?;
            if !got.verified_checksum {
                let v: etcd::EtcdVersion = version.parse().map_err(|e: etcd::InvalidVersion| (true, e.to_string()))?;
                let binaries = etcd::find_binaries(&v, &self.settings.etcd_bin_dirs).map_err(|e| (false, e.to_string()))?;
                etcd::verify_snapshot(&binaries, &file).await.map_err(|e| (true, e.to_string()))?;
            }
            tracing::info!(%backup, bytes = got.snapshot_size, checksum = got.verified_checksum, "backup verified");
            Ok(())
        }
        .await;
        let _ = std::fs::remove_file(&file);
        result
    }

    pub(super) async fn take_backup(
        &mut self,
        epoch: u64,
        obs: &Observation,
        reason: controller::BackupReason,
    ) -> Result<(), DriverError> {
        let started = self.clock.now();
        // An operator's request: read before the snapshot opens, so the
        // backup holds every write acknowledged before it (its stamp goes
        // into the side file; see crate::backups::backup_now).
        let requested_at = if reason == controller::BackupReason::OnDemand {
            self.books.backup_request = self.read_backup_request().await?;
            self.books
                .backup_request
                .as_deref()
                .and_then(crate::backups::backup_now::BackupNowRequest::parse)
        } else {
            None
        };
        let result = self.backup_once(epoch, obs, requested_at).await;
        let label = if result.is_ok() { "success" } else { "failure" };
        metrics::counter!(m::BACKUPS, "result" => label).increment(1);
        let summary = result?;
        let secs = self
            .clock
            .now()
            .saturating_duration_since(started)
            .as_secs_f64();
        let periodic = reason == controller::BackupReason::Periodic;
        let now = self.clock.now();
        self.books.taken(
            &summary.name,
            now,
            periodic,
            self.settings.backup_verify_every,
        );
        self.delta.shared.full_taken();
        let wall = self
            .clock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!(m::BACKUP_LAST_SUCCESS).set(wall.as_secs_f64());
        metrics::gauge!(m::BACKUP_DURATION).set(secs);
        metrics::gauge!(m::BACKUP_SIZE).set(summary.compressed_size as f64);
        tracing::info!(name = %summary.name, reason = ?reason, bytes = summary.compressed_size, seconds = secs, "took backup");
        Ok(())
    }

    /// The `backup-now` request's body; None when it is gone, or too large
    /// to be one (then [`Self::clear_backup_request`] deletes it).
    async fn read_backup_request(&self) -> Result<Option<bytes::Bytes>, DriverError> {
        match self.store.read_manager_file(BACKUP_NOW_FILE).await {
            Ok(body) => Ok(body),
            Err(backup::Error::Malformed { .. }) => Ok(None),
            Err(e) => Err(DriverError::from(e)),
        }
    }

    /// Delete the `backup-now` request just answered, unless a newer one
    /// replaced it during the backup: that one gets a backup of its own.
    pub(super) async fn clear_backup_request(&mut self) -> Result<(), DriverError> {
        let answered = self.books.backup_request.take();
        let now = match self.store.read_manager_file(BACKUP_NOW_FILE).await {
            Ok(None) => return Ok(()),
            Ok(Some(body)) => Some(body),
            Err(backup::Error::Malformed { path, reason }) => {
                tracing::warn!(%path, %reason, "deleting a backup-now request that is not one");
                None
            }
            Err(e) => return Err(e.into()),
        };
        if now.is_some() && now != answered {
            tracing::info!("a newer backup-now request arrived during the backup; it gets its own");
            return Ok(());
        }
        self.store
            .delete_manager_file(BACKUP_NOW_FILE)
            .await
            .map_err(DriverError::from)
    }

    pub(super) async fn backup_once(
        &self,
        epoch: u64,
        obs: &Observation,
        requested_at: Option<u64>,
    ) -> Result<backup::BackupSummary, DriverError> {
        let spec: ClusterSpec = obs.spec.clone().ok_or(Missing::NoSpec)?;
        // Prefer our own member; any healthy one will do.
        let mut endpoints = healthy_endpoints(obs);
        endpoints.sort_by_key(|(id, _)| *id != self.node.id());
        let (_, endpoint) = endpoints
            .into_iter()
            .next()
            .ok_or(Missing::NoMemberToBackUp)?;
        self.backup_from(&endpoint, epoch, spec, requested_at).await
    }

    /// Queue a restore of `backup` on `spec`, as an operator's
    /// `restore-backup` command would: the command's name.
    pub(super) async fn queue_restore(
        &self,
        backup: &str,
        spec: &ClusterSpec,
    ) -> Result<String, DriverError> {
        let wall = self.clock.wall();
        let cmd = backup::Command {
            timestamp: wall
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            restore_backup: Some(backup::RestoreBackupCommand {
                cluster_spec: Some(spec.clone()),
                backup: backup.to_string(),
            }),
        };
        self.store
            .add_command(&cmd, wall)
            .await
            .map_err(DriverError::from)
    }

    /// A backup of the member behind `endpoint` (a snapshot is read from
    /// that member alone: it needs no quorum).
    pub(super) async fn backup_from(
        &self,
        endpoint: &str,
        epoch: u64,
        spec: ClusterSpec,
        requested_at: Option<u64>,
    ) -> Result<backup::BackupSummary, DriverError> {
        let endpoint = endpoint.to_string();
        let client = self
            .settings
            .etcd
            .connect(std::slice::from_ref(&endpoint), ETCD_TIMEOUT)
            .await
            .map_err(DriverError::from)?;
        let status = client.status().await.map_err(DriverError::from)?;
        let kv_hash = crate::backups::drill::cluster_hash(&*client, status.revision).await;
        let stream = client.snapshot().await.map_err(DriverError::from)?;
        let wall = self.clock.wall();
        let info = BackupInfo {
            etcd_version: status.version.clone(),
            timestamp: wall
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            cluster_spec: Some(spec),
        };
        self.store
            .write_backup_hashed(
                stream,
                &info,
                Some(status.revision),
                Some(epoch),
                backup::BackupFacts {
                    kv_hash,
                    cluster_id: Some(status.cluster_id).filter(|id| *id != 0),
                    replayed_from: None,
                    requested_at,
                },
                wall,
            )
            .await
            .map_err(DriverError::from)
    }

    /// [`Action::QueueRestore`]: a version change by dump and restore
    /// restores the backup this leader just took.
    pub(super) async fn queue_version_restore(
        &self,
        spec: &ClusterSpec,
    ) -> Result<(), DriverError> {
        let name = self
            .books
            .last_backup_name
            .clone()
            .ok_or(Missing::NoOwnBackup)?;
        let queued = self.queue_restore(&name, spec).await?;
        tracing::info!(backup = %name, version = %spec.etcd_version, command = %queued, "queued a restore for the version change");
        Ok(())
    }

    /// [`Action::CompleteRestore`]: the restore is done; its command goes.
    /// A command already gone (an operator deleted it meanwhile) is what
    /// this action wants, not a failure.
    pub(super) async fn complete_restore(&self, command: &str) -> Result<(), DriverError> {
        match self.store.delete_command(command).await {
            Ok(()) => tracing::info!(%command, "restore complete; command removed"),
            Err(backup::Error::NotFound { .. }) => {
                tracing::info!(%command, "restore complete; the command was already gone")
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// [`Action::VerifyBackup`]: a restore drill handed to the chosen
    /// manager; an operator's request file is removed once it is handed on.
    pub(super) async fn hand_over_drill(
        &mut self,
        backup: &str,
        peer: &str,
        request: Option<&str>,
        fence: &Fence,
    ) -> Result<(), DriverError> {
        let req = Request::VerifyBackup {
            fence: fence.clone(),
            backup: backup.to_string(),
        };
        self.settings
            .peers
            .call(self.addr_of(peer)?, &req, PEER_TIMEOUT)
            .await?;
        tracing::info!(%backup, %peer, "restore drill handed to a manager");
        match request {
            Some(r) => self.store.delete_manager_file(r).await?,
            None => self.books.unverified_backup = None,
        }
        Ok(())
    }

    /// [`Action::GcTrashcan`]: best effort; a peer that cannot clean up now
    /// will on the next round.
    /// [`Action::GcTrashcan`]: best effort, never failed (a node that cannot
    /// clean now is asked again later).
    pub(super) async fn gc_trashcans(
        &self,
        peers: &[String],
        keep: u32,
        fence: &Fence,
    ) -> Result<(), DriverError> {
        for p in peers {
            let req = Request::GcTrashcan {
                fence: fence.clone(),
                keep,
            };
            match self.addr_of(p) {
                Ok(addr) => {
                    if let Err(e) = self.settings.peers.call(addr, &req, JOIN_TIMEOUT).await {
                        tracing::warn!(peer = %p, error = %e, "trashcan clean-up failed");
                    }
                }
                Err(e) => tracing::debug!(peer = %p, error = %e, "trashcan clean-up skipped"),
            }
        }
        Ok(())
    }

    /// [`Action::ApplyRetention`]: the retention policy applied to the store.
    pub(super) async fn apply_retention(&mut self) -> Result<(), DriverError> {
        let deleted = self
            .store
            .apply_retention(self.clock.wall(), &self.settings.retention)
            .await?;
        self.books.last_retention = Some(self.clock.now());
        tracing::info!(deleted = deleted.len(), "retention applied");
        Ok(())
    }
}
