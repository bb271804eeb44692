//! Actions of the leader, one function each: seeding, the v2 store and
//! settings checks, quorum recovery, retiring clusters, clearing prefixes.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use backup::ClusterSpec;
use backup::layout::{ALLOW_NEW_CLUSTER_FILE, retired_cluster_file};

use super::error::Missing;
use super::execute::JoinTemplate;
use super::observe::{cluster_client, endpoint_of};
use super::{Driver, DriverError, PEER_TIMEOUT, node_configs};
use crate::controller::Observation;
use crate::core::memory::Fact;
use crate::core::model::{JobKind, JobPhase};
use crate::peer::{JOIN_TIMEOUT, JoinPhase, Request, Response};
use crate::{controller, peer};

impl Driver {
    /// [`Action::SeedCluster`]: prepare every chosen peer (cancelled on all
    /// if one refuses), then start each as a member of a new quarantined
    /// cluster.
    pub(super) async fn seed_cluster(
        &mut self,
        token: &str,
        version: &str,
        peers: &[String],
        epoch: u64,
        obs: &Observation,
    ) -> Result<(), DriverError> {
        let pc = &self.settings.peers.clone();
        let fence = self.fence(epoch);
        let nodes = node_configs(obs, peers, "seeding")?;
        let mut addrs: Vec<SocketAddr> = vec![];
        for p in peers {
            addrs.push(self.addr_of(p)?);
        }
        let join = JoinTemplate {
            fence,
            token: token.to_string(),
            version: version.to_string(),
            quarantined: true,
            nodes,
        };
        for (i, a) in addrs.iter().copied().enumerate() {
            if let Err(e) = pc
                .call(a, &join.request(JoinPhase::Prepare), PEER_TIMEOUT)
                .await
            {
                for b in addrs[..i].iter().copied() {
                    let _ = pc
                        .call(b, &join.request(JoinPhase::CancelPrepare), PEER_TIMEOUT)
                        .await;
                }
                return Err(e.into());
            }
        }
        for a in addrs {
            pc.call(a, &join.request(JoinPhase::Initial), JOIN_TIMEOUT)
                .await
                .map_err(DriverError::from)?;
        }
        tracing::info!(%token, %version, members = peers.len(), "seeded a new quarantined cluster");
        if obs.allow_new_cluster {
            self.store
                .delete_manager_file(ALLOW_NEW_CLUSTER_FILE)
                .await
                .map_err(DriverError::from)?;
        }
        Ok(())
    }

    /// [`Action::CheckV2Store`]: ask each peer whether its data holds custom
    /// v2 content, and keep the answers by peer and cluster token. The
    /// peers check at once. A manager of this release runs the check as a
    /// job that the leader follows; an older one within one request.
    pub(super) async fn check_v2store(
        &mut self,
        peers: &[String],
        epoch: u64,
        obs: &Observation,
    ) -> Result<(), DriverError> {
        let pc = &self.settings.peers.clone();
        let fence = self.fence(epoch);
        let mut asks = Vec::new();
        for id in peers {
            let info = obs
                .peers
                .iter()
                .find(|p| p.id == *id)
                .and_then(|p| p.info.as_ref());
            let token = info
                .and_then(|i| i.etcd_state.as_ref())
                .map(|e| e.cluster_token.clone())
                .ok_or_else(|| Missing::PeerWithoutEtcd(id.clone()))?;
            let jobs = info.is_some_and(|i| i.jobs.is_some());
            asks.push((id.clone(), token, self.addr_of(id)?, jobs));
        }
        let me = &*self;
        let checks = asks.iter().map(|(id, token, addr, jobs)| {
            let fence = fence.clone();
            async move {
                if !jobs {
                    let req = Request::CheckV2Store(fence);
                    return pc.call(*addr, &req, req.deadline()).await;
                }
                match pc
                    .call(*addr, &Request::V2StoreJob(fence), peer::REQUEST_TIMEOUT)
                    .await
                {
                    Ok(Response::Done) => {}
                    other => return other,
                }
                Ok(
                    match me.follow_job(id, *addr, JobKind::CheckV2Store, token).await {
                        Ok(JobPhase::Found(what)) => Response::V2Store { custom: Some(what) },
                        Ok(_) => Response::V2Store { custom: None },
                        Err(e) => Response::Failed(peer::Refusal::Failed(e.to_string())),
                    },
                )
            }
        });
        let answers = futures::future::join_all(checks).await;
        for ((id, token, _, _), answer) in asks.into_iter().zip(answers) {
            let check = match answer {
                Ok(Response::V2Store { custom: None }) => controller::V2StoreCheck::Clean,
                Ok(Response::V2Store { custom: Some(what) }) => {
                    controller::V2StoreCheck::Custom(what)
                }
                Ok(Response::Failed(e)) => controller::V2StoreCheck::Failed(e.to_string()),
                Ok(other) => {
                    controller::V2StoreCheck::Failed(format!("unexpected answer {other:?}"))
                }
                Err(e @ crate::peer::PeerError::Fenced { .. }) => {
                    return Err(DriverError::from(e));
                }
                Err(e) => controller::V2StoreCheck::Failed(e.to_string()),
            };
            tracing::info!(peer = %id, result = ?check, "v2 store checked");
            self.remember(Fact::V2StoreChecked {
                peer: &id,
                token: &token,
                check: &check,
            });
        }
        Ok(())
    }

    /// [`Action::CheckSettings`]: ask each peer whether its etcd settings
    /// survive `version`, and keep the answers by peer and version.
    pub(super) async fn check_settings(
        &mut self,
        peers: &[String],
        version: &str,
    ) -> Result<(), DriverError> {
        let pc = &self.settings.peers.clone();
        let req = Request::CheckSettings {
            version: version.to_string(),
        };
        for id in peers {
            let check = match pc.call(self.addr_of(id)?, &req, req.deadline()).await {
                Ok(Response::Settings { lost }) if lost.is_empty() => {
                    controller::SettingsCheck::Kept
                }
                Ok(Response::Settings { lost }) => controller::SettingsCheck::Lost(lost),
                Ok(Response::Failed(e)) => controller::SettingsCheck::Failed(e.to_string()),
                Ok(other) => {
                    controller::SettingsCheck::Failed(format!("unexpected answer {other:?}"))
                }
                Err(e) => controller::SettingsCheck::Failed(format!(
                    "{e} (a manager older than this one cannot answer; upgrade it first)"
                )),
            };
            match &check {
                controller::SettingsCheck::Lost(lost) => {
                    tracing::warn!(peer = %id, %version, lost = ?lost, "etcd settings would be lost; version change held");
                }
                other => {
                    tracing::info!(peer = %id, %version, result = ?other, "etcd settings checked")
                }
            }
            self.remember(Fact::SettingsChecked {
                peer: id,
                version,
                check: &check,
            });
        }
        Ok(())
    }

    /// [`Action::RecoverQuorum`]: the survivor's data (or the chosen backup)
    /// becomes the backup to restore; the old cluster is retired, the
    /// restore queued and the operator's request removed.
    pub(super) async fn recover_quorum(
        &mut self,
        from: Option<&(u64, String)>,
        backup: Option<&str>,
        spec: &ClusterSpec,
        request: Option<&str>,
        epoch: u64,
        obs: &Observation,
    ) -> Result<(), DriverError> {
        let name = match (from, backup) {
            (Some((_, member)), _) => {
                let ep = obs
                    .peers
                    .iter()
                    .find(|p| p.id == *member)
                    .and_then(|p| endpoint_of(p.info.as_ref()?))
                    .ok_or_else(|| Missing::SurvivorWithoutUrl(member.to_string()))?;
                let stored = obs.spec.clone().unwrap_or_else(|| spec.clone());
                let summary = self.backup_from(&ep, epoch, stored, None).await?;
                tracing::warn!(survivor = %member, backup = %summary.name, "quorum recovery: the survivor's data stored as a backup");
                summary.name
            }
            (None, Some(b)) => b.to_string(),
            (None, None) => return Err(Missing::NoRecoverySource.into()),
        };
        // The restore is queued first, then the cluster being replaced is
        // retired: its members that come back later (down, not wiped) are
        // stopped instead of serving their old data. In this order a
        // failure between the two leaves a queued restore (which retires
        // the same clusters before it stops anything), never a retired
        // cluster with nothing to replace it (found by the simulation: the
        // leader then saw no cluster and waited for ever).
        let queued = self.queue_restore(&name, spec).await?;
        self.retire_clusters(obs, "quorum recovery", &name, None, epoch)
            .await?;
        if let Some(r) = request {
            self.store
                .delete_manager_file(r)
                .await
                .map_err(DriverError::from)?;
        }
        tracing::warn!(backup = %name, command = %queued, "quorum recovery: a restore of one member queued; the cluster grows back to its spec afterwards");
        Ok(())
    }

    /// Retire every cluster the peers run (but `keep`, the one being
    /// restored): a member of a retired cluster that comes back later (its
    /// host was down or cut off, not wiped) is stopped and joins the current
    /// cluster instead of running its old data beside it.
    pub(super) async fn retire_clusters(
        &self,
        obs: &Observation,
        by: &str,
        backup: &str,
        keep: Option<&str>,
        epoch: u64,
    ) -> Result<(), DriverError> {
        let (served, retired) = match self.control_files.last() {
            Some(c) => (c.served_tokens.clone(), c.retired_tokens.clone()),
            None => Default::default(),
        };
        // Also the token of a restore a leader began and did not finish:
        // a member it reached late (its leader paused, cut off) must not
        // keep that cluster.
        let begun = obs.commands.iter().filter_map(|c| c.started_token.clone());
        let old: BTreeSet<String> = obs
            .peers
            .iter()
            .filter_map(|p| p.token().map(str::to_string))
            .chain(served)
            .chain(begun)
            .filter(|t| Some(t.as_str()) != keep && !retired.contains(t))
            .collect();
        for token in &old {
            let body = serde_json::json!({
                "retiredBy": by,
                "backup": backup,
                "epoch": epoch,
            });
            self.store
                .write_manager_file(
                    &retired_cluster_file(token),
                    format!("{body}\n").into_bytes(),
                )
                .await
                .map_err(DriverError::from)?;
            tracing::warn!(%token, by, "the old cluster is retired; its members that come back are stopped");
        }
        Ok(())
    }

    /// [`Action::ClearPrefixes`]: keys a restore must not bring back
    /// (`--restore-clear-prefix`), deleted before clients reach the cluster.
    pub(super) async fn clear_prefixes(
        &mut self,
        obs: &Observation,
        token: &str,
        prefixes: &[String],
    ) -> Result<(), DriverError> {
        let client = cluster_client(obs, &*self.settings.etcd).await?;
        for prefix in prefixes {
            let n = client.delete_prefix(prefix).await?;
            tracing::info!(%prefix, deleted = n, %token, "cleared keys from the restored cluster before clients reach it");
        }
        self.remember(Fact::PrefixesCleared { token });
        Ok(())
    }

    /// [`Action::WriteCreatedMarker`] with `--static-config`: upstream's
    /// static store, where the cluster exists once this file is gone.
    pub(super) fn remove_create_file(&self) -> Result<(), DriverError> {
        let file = self
            .node
            .data_dir()
            .join(crate::platform::statics::PLEASE_CREATE_NEW_CLUSTER);
        match std::fs::remove_file(&file) {
            Ok(()) => {
                tracing::info!(file = %file.display(), "cluster created; removed the file that allowed it");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DriverError::File {
                what: "removing",
                path: file,
                source,
            }),
        }
    }
}
