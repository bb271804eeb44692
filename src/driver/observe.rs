//! Observation: what the leader asks every peer (GetInfo) and etcd (members,
//! health, status) before each decision, gathered into the controller's
//! [`Observation`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backup::layout::{RECOVER_QUORUM_FILE, served_cluster_file};

use super::control::command_key;
use super::payload::client_url;
use super::{
    Control, Driver, DriverError, ETCD_DEFAULT_QUOTA, ETCD_TIMEOUT, PEER_TIMEOUT, SETTINGS_RECHECK,
};
use crate::controller;
use crate::controller::{ClusterView, MemberView, Observation, PeerView};
use crate::edges::{EtcdApi, EtcdConnect};
use crate::metrics as m;
use crate::peer::{NodeInfo, Request, Response};

/// A failed v2 store check is run again after this long.
const V2STORE_RETRY: Duration = Duration::from_secs(60);

impl Driver {
    pub(super) async fn observe(
        &mut self,
        epoch: u64,
        peers: &BTreeMap<String, SocketAddr>,
    ) -> Result<Observation, DriverError> {
        let pc = &self.settings.peers.clone();
        let targets: Vec<(String, SocketAddr)> =
            peers.iter().map(|(id, a)| (id.clone(), *a)).collect();
        let infos = futures::future::join_all(targets.into_iter().map(|(id, addr)| async move {
            let info = match pc.call(addr, &Request::GetInfo, PEER_TIMEOUT).await {
                // Another manager at that address (the peer's host was wiped
                // and started again under a new id): not the peer's answer.
                Ok(Response::Info(i)) if i.id != id => {
                    tracing::warn!(peer = %id, %addr, answered_by = %i.id, "another manager answers at the peer's address; the peer is gone");
                    None
                }
                Ok(Response::Info(i)) => Some(*i),
                Ok(other) => {
                    tracing::warn!(peer = %id, answer = ?other, "unexpected answer to GetInfo");
                    None
                }
                Err(e) => {
                    tracing::debug!(peer = %id, error = %e, "GetInfo failed");
                    None
                }
            };
            PeerView { id, info }
        }))
        .await;
        let Control {
            spec,
            backup_requested,
            defrag_requested,
            verify_requested,
            retired_tokens,
            served_tokens,
            recover_quorum_request,
            allow_new_cluster: allow_file,
            commands: stored,
            created_marker,
            malformed: _,
        } = self.control().await?.clone();
        // Forget refusals of commands that are gone.
        self.refused
            .retain(|k, _| stored.iter().any(|c| command_key(c) == Some(k.clone())));
        let commands = stored
            .into_iter()
            .filter_map(|c| {
                let r = c.command.restore_backup.as_ref()?;
                Some(controller::CommandView {
                    refused: command_key(&c).and_then(|k| self.refused.get(&k).cloned()),
                    name: c.name.clone(),
                    backup: r.backup.clone(),
                    spec: r.cluster_spec.clone(),
                    started_token: c.restore_started.as_ref().map(|p| p.cluster_token.clone()),
                })
            })
            .collect();
        // A retired cluster's members (back after a restore or a quorum
        // recovery replaced it) are not asked: the view is of the current
        // cluster, and the controller stops them.
        let current: Vec<PeerView> = infos
            .iter()
            .filter(|p| p.token().is_none_or(|t| !retired_tokens.contains(t)))
            .cloned()
            .collect();
        let answered: BTreeSet<String> = infos
            .iter()
            .filter(|p| p.info.is_some())
            .map(|p| p.id.clone())
            .collect();
        let seen = self.last_seen_serving(&answered, &retired_tokens);
        let now = self.clock.now();
        for (id, word) in self.last_words.iter_mut() {
            if seen.iter().any(|(i, _)| i == id) {
                word.out_since.get_or_insert(now);
            } else {
                word.out_since = None;
            }
        }
        let out_of_reach_since = self
            .last_words
            .iter()
            .filter_map(|(id, w)| Some((id.clone(), w.out_since?)))
            .collect();
        let mut last_seen: Vec<String> = seen.into_iter().map(|(_, url)| url).collect();
        last_seen.sort();
        last_seen.dedup();
        let cluster = observe_cluster(
            &current,
            &last_seen,
            &*self.settings.etcd,
            &mut self.etcd_clients,
            self.settings.etcd_quota_bytes,
        )
        .await;
        self.record_served(&current, cluster.as_ref(), &served_tokens)
            .await;
        let backups_exist = if cluster.is_none() && !created_marker {
            !self
                .store
                .list_backups()
                .await
                .map_err(DriverError::from)?
                .is_empty()
        } else {
            false
        };
        let allow_new_cluster = backups_exist && allow_file;
        // While the quorum is lost: the newest backup and its revision (a
        // quorum recovery compares it with the survivors').
        let quorum_lost = cluster.as_ref().is_some_and(|c| !c.has_quorum());
        if quorum_lost {
            if let Ok(names) = self.store.list_backups().await
                && let Some(newest) = names.last()
                && self.latest_backup.as_ref().is_none_or(|(n, _)| n != newest)
            {
                let revision = match self.store.read_backup_extra(newest).await {
                    Ok(x) => x.and_then(|x| x.revision),
                    Err(e) => {
                        tracing::warn!(backup = %newest, error = %e, "cannot read the newest backup's revision");
                        None
                    }
                };
                self.latest_backup = Some((newest.clone(), revision));
            }
        } else {
            self.latest_backup = None;
        }
        let latest_backup = self.latest_backup.clone();
        // Since when each member has been unhealthy, as this leader saw it.
        let now = self.clock.now();
        match &cluster {
            Some(c) => {
                self.unhealthy_since
                    .retain(|id, _| c.members.iter().any(|m| m.id == *id && !m.healthy));
                for m in c.members.iter().filter(|m| !m.healthy) {
                    self.unhealthy_since.entry(m.id).or_insert(now);
                }
                self.silent_since.retain(|id, _| {
                    c.members
                        .iter()
                        .any(|m| m.id == *id && m.progress.is_none())
                });
                for m in c.members.iter().filter(|m| m.progress.is_none()) {
                    self.silent_since.entry(m.id).or_insert(now);
                }
            }
            None => {
                self.unhealthy_since.clear();
                self.silent_since.clear();
            }
        }
        if let (Some(c), Some(s)) = (&cluster, &spec) {
            metrics::gauge!(m::ETCD_MEMBERS, "kind" => "desired").set(s.member_count as f64);
            metrics::gauge!(m::ETCD_MEMBERS, "kind" => "actual").set(c.members.len() as f64);
            metrics::gauge!(m::ETCD_MEMBERS, "kind" => "healthy")
                .set(c.members.iter().filter(|m| m.healthy).count() as f64);
        }
        // v2 store checks of the peers' current data; a failed check is
        // forgotten after a while, so it runs again.
        self.v2store.retain(|_, (c, at)| {
            !matches!(c, controller::V2StoreCheck::Failed(_))
                || now.saturating_duration_since(*at) < V2STORE_RETRY
        });
        let v2store = infos
            .iter()
            .filter_map(|p| {
                let key = (
                    p.id.clone(),
                    p.info.as_ref()?.etcd_state.as_ref()?.cluster_token.clone(),
                );
                Some((p.id.clone(), self.v2store.get(&key)?.0.clone()))
            })
            .collect();
        self.settings_checks
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < SETTINGS_RECHECK);
        let settings = self
            .settings_checks
            .iter()
            .map(|(k, (c, _))| (k.clone(), c.clone()))
            .collect();
        Ok(Observation {
            now: self.clock.now(),
            self_id: self.node.id().to_string(),
            cluster_name: self.settings.cluster_name.clone(),
            epoch: Some(epoch),
            spec,
            created_marker,
            backups_exist,
            peers: infos,
            cluster,
            last_backup: self.last_backup,
            backup_interval: self.settings.backup_interval,
            new_cluster_token: self.settings.randomness.token(16),
            commands,
            last_retention: self.last_retention,
            backup_requested,
            delta_full_needed: self.delta.full_needed(),
            defrag_requested: defrag_requested
                .map(|(file, member)| controller::DefragRequest { file, member }),
            allow_new_cluster,
            unhealthy_since: self.unhealthy_since.clone(),
            silent_since: self.silent_since.clone(),
            out_of_reach_since,
            replace_grace: self.settings.replace_grace,
            defrag: self.settings.defrag,
            v2store,
            settings,
            restore_clear_prefixes: self.settings.restore_clear_prefixes.clone(),
            prefixes_cleared: self.prefixes_cleared.clone(),
            quorum_recovery: controller::QuorumRecovery {
                requested: recover_quorum_request
                    .is_some()
                    .then(|| RECOVER_QUORUM_FILE.to_string()),
                request_age: self.recover_request_age(recover_quorum_request, now),
                auto_after: self.settings.auto_recover_quorum_loss,
                latest_backup,
            },
            unverified_backup: self.unverified_backup.clone(),
            verify_requested,
            retired_tokens,
            rules: self.settings.rules,
        })
    }

    /// Record in the store that the cluster this leader sees serves (once
    /// per token): a later restore or quorum recovery retires it even if
    /// none of its members answers then. A failed write is tried again on
    /// the next pass; it holds nothing up.
    async fn record_served(
        &mut self,
        peers: &[PeerView],
        cluster: Option<&ClusterView>,
        recorded: &BTreeSet<String>,
    ) {
        let Some(c) = cluster.filter(|c| c.has_quorum()) else {
            return;
        };
        let serving: BTreeSet<String> = peers
            .iter()
            .filter(|p| c.members.iter().any(|m| m.healthy && m.name == p.id))
            .filter_map(|p| p.token().map(str::to_string))
            .collect();
        for token in serving.difference(recorded) {
            match self
                .store
                .write_manager_file(&served_cluster_file(token), b"{}\n".to_vec())
                .await
            {
                Ok(()) => {
                    tracing::info!(%token, "recorded the cluster as served");
                    if let Some((_, control)) = &mut self.control {
                        control.served_tokens.insert(token.clone());
                    }
                }
                Err(e) => {
                    tracing::warn!(%token, error = %e, "could not record the cluster as served; trying again next pass")
                }
            }
        }
    }
}

/// The client URLs a peer's etcd listens on right now.
pub(super) fn endpoint_of(info: &NodeInfo) -> Option<String> {
    let state = info.etcd_state.as_ref()?;
    client_url(&info.node_config, state.running, state.quarantined)
}

pub(super) fn healthy_endpoints(obs: &Observation) -> Vec<(&str, String)> {
    let Some(cluster) = &obs.cluster else {
        return vec![];
    };
    obs.peers
        .iter()
        .filter(|p| cluster.members.iter().any(|m| m.healthy && m.name == p.id))
        .filter_map(|p| Some((p.id.as_str(), endpoint_of(p.info.as_ref()?)?)))
        .collect()
}

pub(super) async fn cluster_client(
    obs: &Observation,
    etcd: &dyn EtcdConnect,
) -> Result<Arc<dyn EtcdApi>, DriverError> {
    let endpoints: Vec<String> = healthy_endpoints(obs).into_iter().map(|(_, e)| e).collect();
    if endpoints.is_empty() {
        return Err("no healthy etcd endpoint".into());
    }
    etcd.connect(&endpoints, ETCD_TIMEOUT)
        .await
        .map_err(DriverError::from)
}

/// How long the leader waits for the etcd of a member no peer of ours runs.
const UNSEEN_MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// One member's etcd that answered [`observe_cluster`].
pub(super) struct Answer {
    status: etcd::EndpointStatus,
    healthy: bool,
    client: Arc<dyn EtcdApi>,
    endpoint: String,
}

/// One etcd's status and health through `ep` (the client of the last pass
/// when there is one); `None` when it does not answer.
async fn probe(
    ep: String,
    known: &BTreeMap<String, Arc<dyn EtcdApi>>,
    etcd: &dyn EtcdConnect,
    timeout: Duration,
) -> Option<Answer> {
    let client = match known.get(&ep) {
        Some(c) => c.clone(),
        None => etcd
            .connect(std::slice::from_ref(&ep), timeout)
            .await
            .ok()?,
    };
    let status = client.status().await.ok()?;
    // A learner serves no reads; that it answers status is its health.
    let healthy = status.is_learner || client.healthy().await;
    Some(Answer {
        status,
        healthy,
        client,
        endpoint: ep,
    })
}

/// The clients to keep for the next pass: those that answered.
fn answered(alive: &[Answer]) -> BTreeMap<String, Arc<dyn EtcdApi>> {
    alive
        .iter()
        .map(|a| (a.endpoint.clone(), a.client.clone()))
        .collect()
}

/// Asks every peer's etcd for its status and health, and one of them for the
/// member list; then every member no peer's etcd answered for, at the client
/// URLs it advertises: a member whose manager is not among our peers (an
/// upstream manager's, during a rolling move, or one whose manager is down
/// while its etcd serves) is judged by its etcd, not taken for dead.
/// When no peer runs etcd, the etcd of the last pass and those `last_seen`
/// serving (gossip's last word of managers it no longer reaches) are asked.
/// `clients` holds the clients of the last pass by URL: reused (a tonic
/// channel reconnects by itself), and replaced by those that answered this
/// time, so a member that failed gets a fresh client next pass.
pub(super) async fn observe_cluster(
    peers: &[PeerView],
    last_seen: &[String],
    etcd: &dyn EtcdConnect,
    clients: &mut BTreeMap<String, Arc<dyn EtcdApi>>,
    quota_given: Option<i64>,
) -> Option<ClusterView> {
    let mut endpoints: Vec<String> = peers
        .iter()
        .filter_map(|p| endpoint_of(p.info.as_ref()?))
        .collect();
    let mut unmanaged = Vec::new();
    if endpoints.is_empty() {
        // No peer of ours runs etcd now: the members that answered last
        // pass are asked once more, and those gossip last saw serving (their
        // managers may be paused or cut off while their etcd still serves,
        // a new leader has no last pass, and a restore must know).
        endpoints = clients.keys().cloned().collect();
        unmanaged = last_seen
            .iter()
            .filter(|u| !endpoints.contains(u))
            .cloned()
            .collect();
    }
    if endpoints.is_empty() && unmanaged.is_empty() {
        return None;
    }
    let known = &*clients;
    let probes = endpoints
        .into_iter()
        .map(|ep| (ep, ETCD_TIMEOUT))
        .chain(unmanaged.into_iter().map(|ep| (ep, UNSEEN_MEMBER_TIMEOUT)));
    let mut alive: Vec<Answer> =
        futures::future::join_all(probes.map(|(ep, timeout)| probe(ep, known, etcd, timeout)))
            .await
            .into_iter()
            .flatten()
            .collect();
    let mut members = None;
    for Answer { client, .. } in &alive {
        if let Ok(list) = client.member_list().await {
            members = Some(list);
            break;
        }
    }
    let Some(members) = members else {
        *clients = answered(&alive);
        return None;
    };
    let unseen: Vec<String> = members
        .iter()
        .filter(|mb| !alive.iter().any(|a| a.status.member_id == mb.id))
        .filter_map(|mb| mb.client_urls.first().cloned())
        .filter(|ep| !alive.iter().any(|a| a.endpoint == *ep))
        .collect();
    if !unseen.is_empty() {
        // A shorter timeout: a member without a manager is often a dead
        // host, and its probe holds up the pass.
        let more = futures::future::join_all(
            unseen
                .into_iter()
                .map(|ep| probe(ep, known, etcd, UNSEEN_MEMBER_TIMEOUT)),
        );
        alive.extend(more.await.into_iter().flatten());
    }
    *clients = answered(&alive);
    let leader = alive
        .iter()
        .map(|a| a.status.leader)
        .find(|l| *l != 0)
        .unwrap_or(0);
    let view = members
        .iter()
        .map(|mb| {
            let st = alive.iter().find(|a| a.status.member_id == mb.id);
            MemberView {
                id: mb.id,
                name: mb.name.clone(),
                peer_urls: mb.peer_urls.clone(),
                is_learner: mb.is_learner,
                healthy: st.is_some_and(|a| a.healthy),
                is_leader: mb.id == leader,
                storage_version: st.and_then(|a| a.status.storage_version.clone()),
                db_size: st.map_or(0, |a| a.status.db_size),
                db_in_use: st.map_or(0, |a| a.status.db_in_use),
                progress: st.map(|a| (a.status.raft_index, a.status.revision)),
            }
        })
        .collect();
    let versions = alive
        .iter()
        .filter(|a| a.healthy)
        .map(|a| a.status.version.clone())
        .collect();
    // Database sizes against etcd's quota (3.6+ reports it; before, the
    // ETCD_QUOTA_BACKEND_BYTES etcd was given, or etcd's 2 GiB default).
    for a in &alive {
        if let Some(mb) = members.iter().find(|mb| mb.id == a.status.member_id) {
            metrics::gauge!(m::ETCD_DB_SIZE, "member" => mb.name.clone())
                .set(a.status.db_size as f64);
        }
    }
    let quota = alive
        .iter()
        .map(|a| a.status.db_quota)
        .max()
        .filter(|q| *q > 0)
        .or(quota_given.filter(|q| *q > 0))
        .unwrap_or(ETCD_DEFAULT_QUOTA);
    metrics::gauge!(m::ETCD_DB_QUOTA).set(quota as f64);
    let downgrade_target = alive.iter().find_map(|a| a.status.downgrade_target.clone());
    let space_alarm = alive
        .iter()
        .any(|a| a.status.errors.iter().any(|e| e.contains("NOSPACE")));
    Some(ClusterView {
        members: view,
        versions,
        downgrade_target,
        space_alarm,
    })
}
