//! Backup-only mode (upstream's `etcd-backup`): back up an etcd cluster that
//! something else manages, in the same store layout, from the local member
//! and only while it is the raft leader, so a cluster with a sidecar on every
//! member takes one backup per interval, not one per member.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics as m;

pub struct SidecarSettings {
    /// Client URL of the local etcd member.
    pub endpoint: String,
    pub backup_interval: Duration,
    pub retention: backup::RetentionPolicy,
    /// Our client identity for etcd (None with `--etcd-insecure`).
    pub tls: Option<etcd::ClientTls>,
}

/// Whether to back up now: only the raft leader's sidecar, once per interval.
pub fn backup_due(
    is_raft_leader: bool,
    last: Option<Instant>,
    now: Instant,
    interval: Duration,
) -> bool {
    is_raft_leader && last.is_none_or(|t| now.saturating_duration_since(t) >= interval)
}

/// Run until cancelled.
pub async fn run(
    settings: SidecarSettings,
    store: backup::BackupStore,
    clock: Arc<dyn Clock>,
    health: Arc<m::Health>,
    cancel: CancellationToken,
) {
    let started = clock.now();
    let mut last: Option<Instant> = None;
    let mut last_retention: Option<Instant> = None;
    let pause = settings.backup_interval.min(Duration::from_secs(5));
    loop {
        let now = clock.now();
        health.pass_done(now.saturating_duration_since(started).as_millis() as u64);
        match leader_status(&settings.endpoint, settings.tls.as_ref()).await {
            Ok((client, status, leader)) => {
                health.set_etcd_down(false);
                if backup_due(leader, last, now, settings.backup_interval) {
                    match take(&client, &status, &store, clock.as_ref()).await {
                        Ok(summary) => {
                            last = Some(now);
                            metrics::counter!(m::BACKUPS, "result" => "success").increment(1);
                            let wall = clock
                                .wall()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default();
                            metrics::gauge!(m::BACKUP_LAST_SUCCESS).set(wall.as_secs_f64());
                            metrics::gauge!(m::BACKUP_SIZE).set(summary.compressed_size as f64);
                            tracing::info!(name = %summary.name, bytes = summary.compressed_size, "took backup");
                            if last_retention.is_none_or(|t| {
                                now.saturating_duration_since(t)
                                    >= crate::controller::RETENTION_INTERVAL
                            }) {
                                match store
                                    .apply_retention(clock.wall(), &settings.retention)
                                    .await
                                {
                                    Ok(deleted) => {
                                        last_retention = Some(now);
                                        tracing::info!(
                                            deleted = deleted.len(),
                                            "retention applied"
                                        );
                                    }
                                    Err(e) => tracing::warn!(error = %e, "retention failed"),
                                }
                            }
                        }
                        Err(e) => {
                            metrics::counter!(m::BACKUPS, "result" => "failure").increment(1);
                            tracing::warn!(error = %e, "backup failed");
                        }
                    }
                }
            }
            Err(e) => {
                health.set_etcd_down(true);
                tracing::debug!(endpoint = %settings.endpoint, error = %e, "local etcd not answering");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = clock.sleep(pause) => {}
        }
    }
}

async fn leader_status(
    endpoint: &str,
    tls: Option<&etcd::ClientTls>,
) -> Result<(etcd::EtcdClient, etcd::EndpointStatus, bool), etcd::Error> {
    let client =
        etcd::EtcdClient::connect_with(&[endpoint.to_string()], Duration::from_secs(5), tls)
            .await?;
    let status = client.status().await?;
    let leader = status.leader != 0 && status.leader == status.member_id;
    Ok((client, status, leader))
}

/// Why a backup was not taken; the next pass tries again.
#[derive(Debug, thiserror::Error)]
enum BackupError {
    #[error(transparent)]
    Store(#[from] backup::Error),
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
}

async fn take(
    client: &etcd::EtcdClient,
    status: &etcd::EndpointStatus,
    store: &backup::BackupStore,
    clock: &dyn Clock,
) -> Result<backup::BackupSummary, BackupError> {
    let spec = store.read_spec().await?;
    let kv_hash = crate::backups::drill::cluster_hash(client, status.revision).await;
    let stream = client.snapshot().await?;
    let wall = clock.wall();
    let info = backup::BackupInfo {
        etcd_version: status.version.clone(),
        timestamp: wall
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        cluster_spec: spec,
    };
    store
        .write_backup_hashed(
            stream,
            &info,
            Some(status.revision),
            None,
            backup::BackupFacts {
                kv_hash,
                cluster_id: Some(status.cluster_id).filter(|id| *id != 0),
                replayed_from: None,
                requested_at: None,
            },
            wall,
        )
        .await
        .map_err(BackupError::Store)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)]
    use super::*;

    #[test]
    fn only_the_raft_leader_backs_up_once_per_interval() {
        let t0 = Instant::now();
        let i = Duration::from_secs(60);
        assert!(backup_due(true, None, t0, i));
        assert!(!backup_due(false, None, t0, i));
        assert!(!backup_due(true, Some(t0), t0 + Duration::from_secs(59), i));
        assert!(backup_due(true, Some(t0), t0 + i, i));
    }
}
