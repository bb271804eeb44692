//! Observation: what the leader asks every peer (GetInfo) and etcd (members,
//! health, status) before each decision, gathered into the controller's
//! [`Observation`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backup::layout::{RECOVER_QUORUM_FILE, served_cluster_file};

use super::error::Missing;
use super::payload::client_url;
use super::{Control, Driver, DriverError, ETCD_DEFAULT_QUOTA, ETCD_TIMEOUT, PEER_TIMEOUT};
use crate::controller;
use crate::controller::{ClusterView, MemberView, Observation, PeerView};
use crate::core::memory::Fact;
use crate::edges::{EtcdApi, EtcdConnect};
use crate::metrics as m;
use crate::peer::{NodeInfo, Request, Response};

impl Driver {
    pub(super) async fn observe(
        &mut self,
        epoch: u64,
        peers: &BTreeMap<String, SocketAddr>,
    ) -> Result<Observation, DriverError> {
        let infos = self.ask_peers(peers).await;
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
        let command_keys: Vec<(String, String)> = stored.iter().filter_map(command_key).collect();
        let commands = self.commands_view(&stored);
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
        let last_seen = self.last_seen_urls(&answered, &retired_tokens);
        let cluster = observe_cluster(
            &current,
            &last_seen,
            &*self.settings.etcd,
            &mut self.etcd_link.clients,
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
        let quorum_lost = cluster.as_ref().is_some_and(|c| !c.has_quorum());
        let latest_backup = self.newest_backup_while_lost(quorum_lost).await;
        // Since when members have been unhealthy or silent, managers out of
        // reach; which checks are still fresh; which refusals still apply.
        let now = self.clock.now();
        self.remember(Fact::Pass {
            answered: &answered,
            retired: &retired_tokens,
            cluster: cluster.as_ref(),
            commands: &command_keys,
        });
        if let (Some(c), Some(s)) = (&cluster, &spec) {
            metrics::gauge!(m::ETCD_MEMBERS, "kind" => "desired").set(s.member_count as f64);
            metrics::gauge!(m::ETCD_MEMBERS, "kind" => "actual").set(c.members.len() as f64);
            metrics::gauge!(m::ETCD_MEMBERS, "kind" => "healthy")
                .set(c.members.iter().filter(|m| m.healthy).count() as f64);
        }
        let v2store = self.memory.v2store_of(&infos);
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
            last_backup: self.books.last_backup,
            backup_interval: self.settings.backup_interval,
            new_cluster_token: self.settings.randomness.token(16),
            commands,
            last_retention: self.books.last_retention,
            backup_requested,
            delta_full_needed: self.delta.shared.full_needed(),
            defrag_requested: defrag_requested
                .map(|(file, member)| controller::DefragRequest { file, member }),
            allow_new_cluster,
            unhealthy_since: self.memory.unhealthy_since().clone(),
            silent_since: self.memory.silent_since().clone(),
            out_of_reach_since: self.memory.out_of_reach_since(),
            replace_grace: self.settings.replace_grace,
            defrag: self.settings.defrag,
            v2store,
            settings: self.memory.settings(),
            restore_clear_prefixes: self.settings.restore_clear_prefixes.clone(),
            prefixes_cleared: self.memory.prefixes_cleared().clone(),
            quorum_recovery: controller::QuorumRecovery {
                requested: recover_quorum_request
                    .is_some()
                    .then(|| RECOVER_QUORUM_FILE.to_string()),
                request_age: self.recover_request_age(recover_quorum_request, now),
                auto_after: self.settings.auto_recover_quorum_loss,
                latest_backup,
            },
            unverified_backup: self.books.unverified_backup.clone(),
            verify_requested,
            retired_tokens,
            rules: self.settings.rules,
        })
    }

    /// The client URLs of etcd that managers out of reach said last they
    /// serve (see [`crate::core::memory::Memory::serving_out_of_reach`]).
    fn last_seen_urls(
        &self,
        answered: &BTreeSet<String>,
        retired: &BTreeSet<String>,
    ) -> Vec<String> {
        let mut urls: Vec<String> = self
            .memory
            .serving_out_of_reach(answered, retired)
            .into_iter()
            .map(|(_, url)| url)
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// The queued restore commands as the controller sees them, with this
    /// leader's refusals.
    fn commands_view(&self, stored: &[backup::StoredCommand]) -> Vec<controller::CommandView> {
        stored
            .iter()
            .filter_map(|c| {
                let r = c.command.restore_backup.as_ref()?;
                Some(controller::CommandView {
                    refused: self.memory.refusal(&c.name, &r.backup).map(str::to_string),
                    name: c.name.clone(),
                    backup: r.backup.clone(),
                    spec: r.cluster_spec.clone(),
                    started_token: c.restore_started.as_ref().map(|p| p.cluster_token.clone()),
                })
            })
            .collect()
    }

    /// Every alive peer's `GetInfo` answer (None: no answer, or another
    /// manager answers at its address).
    async fn ask_peers(&self, peers: &BTreeMap<String, SocketAddr>) -> Vec<PeerView> {
        let pc = &self.settings.peers;
        futures::future::join_all(peers.iter().map(|(id, addr)| async move {
            let info = match pc.call(*addr, &Request::GetInfo, PEER_TIMEOUT).await {
                // Another manager at that address (the peer's host was wiped
                // and started again under a new id): not the peer's answer.
                Ok(Response::Info(i)) if i.id != *id => {
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
            PeerView {
                id: id.clone(),
                info,
            }
        }))
        .await
    }

    /// While the quorum is lost: the newest backup and its revision (a
    /// quorum recovery compares it with the survivors'), read once per backup.
    async fn newest_backup_while_lost(
        &mut self,
        quorum_lost: bool,
    ) -> Option<(String, Option<i64>)> {
        if !quorum_lost {
            self.books.latest_backup = None;
            return None;
        }
        if let Ok(names) = self.store.list_backups().await
            && let Some(newest) = names.last()
            && self
                .books
                .latest_backup
                .as_ref()
                .is_none_or(|(n, _)| n != newest)
        {
            let revision = match self.store.read_backup_extra(newest).await {
                Ok(x) => x.and_then(|x| x.revision),
                Err(e) => {
                    tracing::warn!(backup = %newest, error = %e, "cannot read the newest backup's revision");
                    None
                }
            };
            self.books.latest_backup = Some((newest.clone(), revision));
        }
        self.books.latest_backup.clone()
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
                    self.control_files.served(token);
                }
                Err(e) => {
                    tracing::warn!(%token, error = %e, "could not record the cluster as served; trying again next pass")
                }
            }
        }
    }
}

/// What identifies one queued restore command: (command, backup).
fn command_key(c: &backup::StoredCommand) -> Option<(String, String)> {
    let r = c.command.restore_backup.as_ref()?;
    Some((c.name.clone(), r.backup.clone()))
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
        return Err(Missing::NoHealthyEndpoint.into());
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
    record_sizes(&members, &alive, quota_given);
    Some(view_of(&members, &alive))
}

/// The cluster as its members' answers show it.
fn view_of(members: &[etcd::Member], alive: &[Answer]) -> ClusterView {
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
    let downgrade_target = alive.iter().find_map(|a| a.status.downgrade_target.clone());
    let space_alarm = alive
        .iter()
        .any(|a| a.status.errors.iter().any(|e| e.contains("NOSPACE")));
    ClusterView {
        members: view,
        versions,
        downgrade_target,
        space_alarm,
    }
}

/// Database sizes against etcd's quota (3.6+ reports it; before, the
/// ETCD_QUOTA_BACKEND_BYTES etcd was given, or etcd's 2 GiB default).
fn record_sizes(members: &[etcd::Member], alive: &[Answer], quota_given: Option<i64>) {
    for a in alive {
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
}
