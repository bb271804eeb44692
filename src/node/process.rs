//! The local etcd process: how it is started (spec, certificates, the
//! settings a version would lose), joined to a cluster, reconfigured,
//! stopped for good, and checked offline (the v2 store).

use std::path::Path;
use std::time::Duration;

use crate::peer::{JoinCluster, JoinPhase};

use super::LocalEtcd;
use super::restore::unique_path;
use super::{Inner, Node, NodeError};

/// Where the v2 store check copies a member's snapshots and WAL; removed
/// after each check and at every start.
pub(super) const V2CHECK_DIR: &str = "v2store-check";

/// How long etcd may take to write a snapshot with `--snapshot-count=1`.
pub(super) const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long `etcdutl check v2store` may run.
pub(super) const V2CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long etcd gets to stop after SIGTERM.
pub const ETCD_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Delete what a restore cut short left in `dir` (downloads, partial files).
/// Whether a member moving from `from` to `to` must first snapshot on
/// `from`: a move from 3.6 (or older) to 3.7 or later.
pub(super) fn snapshot_before(from: &str, to: &str) -> bool {
    match (
        from.parse::<etcd::EtcdVersion>(),
        to.parse::<etcd::EtcdVersion>(),
    ) {
        (Ok(f), Ok(t)) => f.major == 3 && t.major == 3 && f.minor < 7 && t.minor >= 7,
        _ => false,
    }
}

/// The newest `<term>-<index>.snap` in etcd's snap folder (both fixed-width
/// hex, so names sort as the snapshots do), if any.
pub(super) fn newest_snapshot(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".snap"))
        .max()
}

impl Node {
    pub(super) fn spec_for(&self, local: &LocalEtcd) -> etcd::EtcdNodeSpec {
        let me = self.node_config();
        etcd::EtcdNodeSpec {
            name: me.name.clone(),
            version: local.etcd_version.clone(),
            data_dir: self.etcd_data_dir(&local.cluster_token),
            cluster_token: local.cluster_token.clone(),
            initial_cluster: local
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.peer_urls.clone()))
                .collect(),
            initial_cluster_state_new: local.new_cluster,
            peer_urls: me.peer_urls,
            client_urls: me.client_urls,
            quarantined_client_urls: me.quarantined_client_urls,
            quarantined: local.quarantined,
            listen_address: self.settings.listen_address.clone(),
            tls: None,
            listen_metrics_urls: self.settings.listen_metrics_urls.clone(),
        }
    }

    pub(super) fn spawn_etcd(
        &self,
        local: &LocalEtcd,
    ) -> Result<Box<dyn crate::edges::EtcdRun>, NodeError> {
        self.spawn_etcd_with(local, &[])
    }

    /// Start etcd with `extra` settings over the user's (`ETCD_*` variables).
    pub(super) fn spawn_etcd_with(
        &self,
        local: &LocalEtcd,
        extra: &[(&str, &str)],
    ) -> Result<Box<dyn crate::edges::EtcdRun>, NodeError> {
        let version: etcd::EtcdVersion = local.etcd_version.parse().map_err(etcd::Error::from)?;
        let binaries = etcd::find_binaries(&version, &self.settings.bin_dirs)?;
        let mut spec = self.spec_for(local);
        if let Some(pki) = &self.settings.etcd_pki {
            let me = self.node_config();
            let client_urls: Vec<String> = me
                .client_urls
                .iter()
                .chain(&me.quarantined_client_urls)
                .cloned()
                .collect();
            let extra = vec![self.settings.address.to_string()];
            let dir = self
                .settings
                .data_dir
                .join("pki")
                .join(&local.cluster_token);
            // Certificate validity is wall-clock time by nature.
            #[allow(clippy::disallowed_methods)]
            let now = std::time::SystemTime::now();
            spec.tls = Some(pki.write_member_certs(
                &dir,
                &me.name,
                &me.peer_urls,
                &client_urls,
                &extra,
                now,
            )?);
            tracing::info!(dir = %dir.display(), "issued etcd peer and client certificates");
        }
        std::fs::create_dir_all(self.settings.data_dir.join("data")).map_err(|e| {
            NodeError::DataDir {
                path: self.settings.data_dir.clone(),
                reason: e.to_string(),
            }
        })?;
        let log = self.settings.data_dir.join("etcd.log");
        let mut env = self.settings.etcd_env_overrides.clone();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let unknown = etcd::not_understood(&env, version);
        if !unknown.is_empty() {
            tracing::warn!(%version, variables = ?unknown, "etcd does not understand these settings and will ignore them; see `etcd --help` of that version");
        }
        Ok(self
            .settings
            .runtime
            .start(binaries, spec, env, Some(log))?)
    }

    /// The settings this node gives etcd (beyond ours) that etcd `to` would
    /// not understand while `from` does, one line each (see
    /// [`etcd::lost_settings`]). Empty when either version does not parse.
    pub fn lost_settings(&self, from: &str, to: &str) -> Vec<String> {
        let (Ok(from), Ok(to)) = (from.parse(), to.parse()) else {
            return vec![];
        };
        etcd::lost_settings(&self.settings.etcd_env_overrides, from, to)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// `etcdutl check v2store` on a copy of `data` (see [`etcd::check_v2store`]),
    /// with the newest installed 3.5 whose etcdutl has the check.
    pub(super) async fn check_v2store(
        &self,
        data: &Path,
    ) -> Result<etcd::V2StoreVerdict, NodeError> {
        let mut candidates: Vec<etcd::EtcdVersion> = self
            .installed()
            .iter()
            .filter_map(|v| v.parse::<etcd::EtcdVersion>().ok())
            .filter(|v| v.major == 3 && v.minor == 5)
            .collect();
        candidates.sort();
        for v in candidates.iter().rev() {
            let Ok(binaries) = etcd::find_binaries(v, &self.settings.bin_dirs) else {
                continue;
            };
            let runtime = &self.settings.runtime;
            if !runtime.can_check_v2store(&binaries).await {
                continue;
            }
            let scratch = self.settings.data_dir.join(V2CHECK_DIR);
            let verdict = runtime
                .check_v2store(&binaries, data, &scratch, V2CHECK_TIMEOUT)
                .await?;
            tracing::info!(data = %data.display(), tool = %binaries.version, ?verdict, "checked the v2 store");
            return Ok(verdict);
        }
        Err(NodeError::NoV2StoreChecker)
    }

    pub(super) async fn join(&self, inner: &mut Inner, j: JoinCluster) -> Result<(), NodeError> {
        let current = inner.state.etcd.as_ref().map(|l| l.cluster_token.clone());
        match j.phase {
            JoinPhase::Prepare => {
                if let Some(t) = &current
                    && *t != j.cluster_token
                {
                    return Err(NodeError::AlreadyMember(t.clone()));
                }
                inner.prepared = Some(j.cluster_token);
                Ok(())
            }
            JoinPhase::CancelPrepare => {
                if inner.prepared.as_deref() == Some(j.cluster_token.as_str()) {
                    inner.prepared = None;
                }
                Ok(())
            }
            JoinPhase::Initial | JoinPhase::JoinExisting => {
                if current.as_deref() == Some(j.cluster_token.as_str()) {
                    return Ok(()); // already done: the request was repeated
                }
                if let Some(t) = current {
                    return Err(NodeError::AlreadyMember(t));
                }
                if inner.prepared.as_deref() != Some(j.cluster_token.as_str()) {
                    return Err(NodeError::NotPrepared(j.cluster_token));
                }
                if !j.nodes.iter().any(|n| n.name == self.id) {
                    return Err(NodeError::NotInCluster);
                }
                let local = LocalEtcd {
                    cluster_token: j.cluster_token,
                    etcd_version: j.etcd_version,
                    quarantined: j.quarantined,
                    nodes: j.nodes,
                    new_cluster: j.phase == JoinPhase::Initial,
                };
                let data = self.etcd_data_dir(&local.cluster_token);
                if data.exists() {
                    return Err(NodeError::DataExists(data));
                }
                let process = self.spawn_etcd(&local)?;
                tracing::info!(token = %local.cluster_token, version = %local.etcd_version, new = local.new_cluster, quarantined = local.quarantined, "started etcd");
                inner.state.etcd = Some(local);
                inner.prepared = None;
                inner.process = Some(process);
                self.persist(inner)
            }
        }
    }

    /// Restart etcd on its own data dir with another quarantine or version.
    /// The new version's binaries are found before the running etcd is stopped.
    pub(super) async fn reconfigure(
        &self,
        inner: &mut Inner,
        quarantined: Option<bool>,
        version: Option<String>,
    ) -> Result<(), NodeError> {
        let Some(old) = inner.state.etcd.clone() else {
            return Err(NodeError::NoEtcd);
        };
        let mut local = old.clone();
        if let Some(q) = quarantined {
            local.quarantined = q;
        }
        if let Some(v) = version {
            let parsed: etcd::EtcdVersion = v.parse().map_err(etcd::Error::from)?;
            etcd::find_binaries(&parsed, &self.settings.bin_dirs)?;
            let lost = self.lost_settings(&old.etcd_version, &v);
            if !lost.is_empty() {
                return Err(NodeError::SettingsLost {
                    from: old.etcd_version.clone(),
                    to: v,
                    lost,
                });
            }
            local.etcd_version = v;
        }
        if local == old {
            return Ok(());
        }
        if let Some(p) = inner.process.take() {
            p.stop(ETCD_STOP_TIMEOUT).await?;
        }
        if snapshot_before(&old.etcd_version, &local.etcd_version)
            && let Err(e) = self.snapshot_with(&old).await
        {
            // Back as it was, on the old version; the leader tries again.
            inner.process = Some(self.spawn_etcd(&old)?);
            return Err(NodeError::SnapshotBefore {
                from: old.etcd_version,
                to: local.etcd_version,
                source: Box::new(e),
            });
        }
        local.new_cluster = false;
        inner.state.etcd = Some(local.clone());
        self.persist(inner)?;
        inner.process = Some(self.spawn_etcd(&local)?);
        tracing::info!(quarantined = local.quarantined, version = %local.etcd_version, "restarted etcd");
        Ok(())
    }

    /// Run `old`'s etcd with `--snapshot-count=1` until it has written a
    /// new snapshot, then stop it: the WAL a newer minor replays then starts
    /// past every entry an older minor wrote (3.7 cannot read some entries
    /// 3.5 wrote, and a cluster born on 3.5 that moved to 3.6 still has them
    /// in its WAL; etcd's 3.6 guide uses the same flag to drop v2 content).
    pub(super) async fn snapshot_with(&self, old: &LocalEtcd) -> Result<(), NodeError> {
        let snap_dir = self
            .etcd_data_dir(&old.cluster_token)
            .join("member")
            .join("snap");
        let before = newest_snapshot(&snap_dir);
        let p = self.spawn_etcd_with(old, &[("ETCD_SNAPSHOT_COUNT", "1")])?;
        tracing::info!(version = %old.etcd_version, "etcd restarted with --snapshot-count=1 to snapshot its WAL before the next minor");
        let waited = tokio::time::timeout(SNAPSHOT_WAIT, async {
            while newest_snapshot(&snap_dir) <= before {
                // Polling a real etcd's files: real time by nature (as for
                // the certificates above), never part of a simulation.
                #[allow(clippy::disallowed_methods)]
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await;
        p.stop(ETCD_STOP_TIMEOUT).await?;
        match waited {
            Ok(()) => {
                tracing::info!(snapshot = ?newest_snapshot(&snap_dir), "etcd snapshotted its WAL");
                Ok(())
            }
            Err(_) => Err(NodeError::NoSnapshot {
                version: old.etcd_version.clone(),
                after: SNAPSHOT_WAIT,
            }),
        }
    }

    pub(super) async fn stop_for_good(&self, inner: &mut Inner) -> Result<(), NodeError> {
        if let Some(p) = inner.process.take() {
            p.stop(ETCD_STOP_TIMEOUT).await?;
        }
        if let Some(local) = inner.state.etcd.take() {
            let from = self.etcd_data_dir(&local.cluster_token);
            if from.exists() {
                let trash = self.settings.data_dir.join("data-trashcan");
                std::fs::create_dir_all(&trash).map_err(|source| NodeError::Io {
                    what: "creating",
                    path: trash.clone(),
                    source,
                })?;
                let to = trash.join(format!(
                    "{}-{}",
                    local.cluster_token, inner.state.highest_epoch
                ));
                let to = unique_path(to);
                std::fs::rename(&from, &to).map_err(|source| NodeError::Io {
                    what: "moving aside",
                    path: from.clone(),
                    source,
                })?;
                tracing::info!(from = %from.display(), to = %to.display(), "etcd data moved to the trashcan");
            }
            self.persist(inner)?;
        }
        Ok(())
    }
}
