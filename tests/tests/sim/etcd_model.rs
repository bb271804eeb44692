//! A model of etcd for the simulation: the real driver and node talk to it
//! through the same traits they use for the real one
//! ([`etcd_manager::edges::EtcdConnect`], [`etcd_manager::edges::EtcdRuntime`]).
//!
//! What it keeps: clusters by token, each with its members (voters and
//! learners), one replicated key space and revision; which member's process
//! runs on which simulated host; the data dirs the processes wrote. What it
//! enforces as etcd does: reads, writes and membership changes need a quorum
//! of started voters reachable from the member asked; a membership change
//! that would leave fewer started voters than a quorum is refused (the strict
//! reconfiguration check), and so is one within 5 s of a member start; a
//! learner is promoted only once it caught up; a removed member stops. A
//! third of the runs model etcd with `--strict-reconfig-check=false`: there
//! only the manager's own rules keep its membership changes above quorum.
//!
//! Every data dir also exists on disk (`<dir>/member/snap`), because the
//! node looks there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_manager::edges::{EtcdApi, EtcdConnect, EtcdRun, EtcdRuntime};
use serde::{Deserialize, Serialize};

use super::real::{Shared, World};

/// etcd refuses membership changes for this long after a member started.
pub const RECONFIG_QUIET: Duration = Duration::from_secs(5);
/// A learner is in sync this long after it started.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ModelMember {
    pub id: u64,
    /// Empty until it started once.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub id: u64,
    pub members: Vec<ModelMember>,
    pub kv: BTreeMap<String, String>,
    pub revision: i64,
    /// When a member last started (the strict reconfiguration check).
    pub last_start: Duration,
    pub next_member: u64,
}

/// One running (or exited) etcd process.
#[derive(Debug, Clone)]
pub struct Proc {
    pub host: usize,
    /// The host's incarnation it belongs to (a crash ends them all).
    pub incarnation: u64,
    pub token: String,
    pub member: u64,
    pub urls: Vec<String>,
    pub version: String,
    pub started: Duration,
    pub running: bool,
    pub last_exit: Option<String>,
}

/// What a data dir holds.
#[derive(Debug, Clone)]
struct DataDir {
    token: String,
    member: u64,
}

#[derive(Debug, Default)]
pub struct Model {
    pub clusters: BTreeMap<String, Cluster>,
    pub procs: Vec<Proc>,
    data: BTreeMap<PathBuf, DataDir>,
    next_cluster: u64,
}

/// The snapshot format of the model.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    kv: BTreeMap<String, String>,
    revision: i64,
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn member_id(token: &str, name: &str, n: u64) -> u64 {
    // Stable and distinct: a hash of the token and name, never 0.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in token.bytes().chain(name.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h ^ n) | 1
}

impl Model {
    fn data_dir(&self, dir: &Path) -> Option<&DataDir> {
        self.data
            .get(dir)
            .filter(|_| dir.join("member").join("snap").is_dir())
    }

    fn live(&self, p: &Proc, w: &super::real::State) -> bool {
        p.running && w.net.up[p.host] && w.net.incarnation[p.host] == p.incarnation
    }

    /// The running process serving `url`.
    pub fn proc_at(&self, url: &str, w: &super::real::State) -> Option<usize> {
        self.procs
            .iter()
            .position(|p| self.live(p, w) && p.urls.iter().any(|u| u == url))
    }

    /// Started voters of `token` reachable from host `from` (itself included).
    fn started_voters(&self, token: &str, from: Option<usize>, w: &super::real::State) -> usize {
        let Some(c) = self.clusters.get(token) else {
            return 0;
        };
        c.members
            .iter()
            .filter(|m| !m.learner)
            .filter(|m| {
                self.procs.iter().any(|p| {
                    p.token == token
                        && p.member == m.id
                        && self.live(p, w)
                        && from.is_none_or(|f| w.net.reachable(f, p.host))
                })
            })
            .count()
    }

    pub fn has_quorum(&self, token: &str, from: Option<usize>, w: &super::real::State) -> bool {
        let Some(c) = self.clusters.get(token) else {
            return false;
        };
        let voters = c.members.iter().filter(|m| !m.learner).count();
        voters > 0 && self.started_voters(token, from, w) >= quorum(voters)
    }

    /// The cluster the spec's hosts serve now: the token most live processes run.
    pub fn serving_token(&self, w: &super::real::State) -> Option<String> {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for p in self.procs.iter().filter(|p| self.live(p, w)) {
            *count.entry(&p.token).or_default() += 1;
        }
        count
            .into_iter()
            .max_by_key(|(t, n)| (*n, t.to_string()))
            .map(|(t, _)| t.to_string())
    }

    /// The versions the serving cluster's live processes run.
    pub fn serving_versions(&self, w: &super::real::State) -> BTreeSet<String> {
        let token = self.serving_token(w);
        self.procs
            .iter()
            .filter(|p| self.live(p, w) && Some(&p.token) == token.as_ref())
            .map(|p| p.version.clone())
            .collect()
    }

    fn new_cluster(&mut self, token: &str, initial: &[(String, Vec<String>)]) -> &mut Cluster {
        self.next_cluster += 1;
        let id = member_id(token, "cluster", self.next_cluster);
        let members = initial
            .iter()
            .map(|(name, peers)| ModelMember {
                id: member_id(token, name, 0),
                name: name.clone(),
                peer_urls: peers.clone(),
                client_urls: vec![],
                learner: false,
            })
            .collect();
        self.clusters.entry(token.to_string()).or_insert(Cluster {
            id,
            members,
            ..Cluster::default()
        })
    }
}

fn client_err(op: &'static str, endpoints: &[String], detail: &str) -> etcd::Error {
    etcd::Error::Client {
        op,
        endpoints: endpoints.to_vec(),
        detail: detail.to_string(),
    }
}

fn mkdirs(dir: &Path) -> Result<(), etcd::Error> {
    let snap = dir.join("member").join("snap");
    std::fs::create_dir_all(&snap).map_err(|source| etcd::Error::Io { path: snap, source })
}

/// The model's side of one host: starts processes, restores data dirs.
#[derive(Debug, Clone)]
pub struct ModelRuntime {
    pub world: World,
    pub host: usize,
    pub incarnation: u64,
}

/// A process handle as the node holds it.
#[derive(Debug)]
struct ModelRun {
    world: World,
    index: usize,
    spec: etcd::EtcdNodeSpec,
}

#[async_trait]
impl EtcdRun for ModelRun {
    fn spec(&self) -> &etcd::EtcdNodeSpec {
        &self.spec
    }
    fn status(&self) -> etcd::ProcessStatus {
        self.world.with(|w| {
            let p = &w.model.procs[self.index];
            etcd::ProcessStatus {
                running: w.model.live(p, w),
                pid: None,
                restarts: 0,
                last_exit: p.last_exit.clone(),
            }
        })
    }
    async fn stop(self: Box<Self>, _timeout: Duration) -> Result<(), etcd::Error> {
        self.world.stop_proc(self.index);
        Ok(())
    }
}

#[async_trait]
impl EtcdRuntime for ModelRuntime {
    fn start(
        &self,
        binaries: etcd::EtcdBinaries,
        spec: etcd::EtcdNodeSpec,
        _env: Vec<(String, String)>,
        _log: Option<PathBuf>,
    ) -> Result<Box<dyn EtcdRun>, etcd::Error> {
        let index = self.world.with(|w| {
            if w.net.incarnation[self.host] != self.incarnation {
                return Err(etcd::Error::NoRuntime {
                    what: "a crashed host's etcd start",
                });
            }
            let now = w.now();
            let token = spec.cluster_token.clone();
            let m = &mut w.model;
            let (member, exit) = match m.data_dir(&spec.data_dir).cloned() {
                Some(d) if d.token == token => {
                    let known = m
                        .clusters
                        .get(&token)
                        .is_some_and(|c| c.members.iter().any(|x| x.id == d.member));
                    let exit =
                        (!known).then(|| "the member has been permanently removed".to_string());
                    (d.member, exit)
                }
                _ if spec.initial_cluster_state_new => {
                    let c = m.new_cluster(&token, &spec.initial_cluster);
                    match c.members.iter().find(|x| x.name == spec.name) {
                        Some(x) => (x.id, None),
                        None => (0, Some("not in the initial cluster".to_string())),
                    }
                }
                _ => {
                    let found = m.clusters.get(&token).and_then(|c| {
                        c.members
                            .iter()
                            .find(|x| x.name.is_empty() && x.peer_urls == spec.peer_urls)
                            .map(|x| x.id)
                    });
                    match found {
                        Some(id) => (id, None),
                        None => (
                            0,
                            Some("no member with these peer URLs to join".to_string()),
                        ),
                    }
                }
            };
            let urls = if spec.quarantined {
                spec.quarantined_client_urls.clone()
            } else {
                spec.client_urls.clone()
            };
            if exit.is_none() {
                mkdirs(&spec.data_dir)?;
                m.data.insert(
                    spec.data_dir.clone(),
                    DataDir {
                        token: token.clone(),
                        member,
                    },
                );
                let c = m.clusters.get_mut(&token).expect("the cluster exists");
                c.last_start = now;
                if let Some(x) = c.members.iter_mut().find(|x| x.id == member) {
                    x.name = spec.name.clone();
                    x.client_urls = spec.client_urls.clone();
                }
            }
            // One process per host: an older one of this host is gone.
            for p in m.procs.iter_mut().filter(|p| p.host == self.host) {
                p.running = false;
            }
            m.procs.push(Proc {
                host: self.host,
                incarnation: self.incarnation,
                token: token.clone(),
                member,
                urls,
                version: binaries.version.to_string(),
                started: now,
                running: exit.is_none(),
                last_exit: exit.clone(),
            });
            w.note(format!(
                "etcd on n{} starts: token {token} member {member:x}{}",
                self.host + 1,
                exit.map(|e| format!(" and exits: {e}")).unwrap_or_default()
            ));
            Ok(w.model.procs.len() - 1)
        })?;
        Ok(Box::new(ModelRun {
            world: self.world.clone(),
            index,
            spec,
        }))
    }

    async fn verify_snapshot(
        &self,
        _binaries: &etcd::EtcdBinaries,
        file: &Path,
    ) -> Result<etcd::SnapshotInfo, etcd::Error> {
        let snap = read_snapshot(file)?;
        Ok(etcd::SnapshotInfo {
            hash: 0,
            revision: snap.revision,
            total_keys: snap.kv.len() as u64,
            total_size: 0,
        })
    }

    async fn restore_snapshot(
        &self,
        _binaries: &etcd::EtcdBinaries,
        file: &Path,
        spec: &etcd::EtcdNodeSpec,
        bump: Option<u64>,
    ) -> Result<(), etcd::Error> {
        let snap = read_snapshot(file)?;
        let sha = {
            use sha2::Digest;
            let body = std::fs::read(file).map_err(|source| etcd::Error::Io {
                path: file.to_path_buf(),
                source,
            })?;
            format!("{:x}", sha2::Sha256::digest(&body))
        };
        mkdirs(&spec.data_dir)?;
        self.world.with(|w| {
            // What is restored is the backup the restore names, as written.
            let token = &spec.cluster_token;
            if let Some(backup) = w.restoring.get(token).cloned()
                && let Some(want) = w.written.get(&backup).cloned()
                && want != sha
            {
                w.fail(format!(
                    "n{} restored into {token} a snapshot that is not {backup} as written (sha256 {sha}, written {want})",
                    self.host + 1
                ));
            }
            w.note(format!(
                "n{} restores a snapshot at revision {} into token {}",
                self.host + 1,
                snap.revision,
                spec.cluster_token
            ));
            w.restores += 1;
            w.restored(self.host, token, &snap.kv);
            let m = &mut w.model;
            let fresh = !m.clusters.contains_key(&spec.cluster_token);
            let c = m.new_cluster(&spec.cluster_token, &spec.initial_cluster);
            if fresh {
                c.kv = snap.kv.clone();
                c.revision = snap.revision + bump.unwrap_or(0) as i64;
            }
            let member = c
                .members
                .iter()
                .find(|x| x.name == spec.name)
                .map(|x| x.id)
                .unwrap_or(0);
            m.data.insert(
                spec.data_dir.clone(),
                DataDir {
                    token: spec.cluster_token.clone(),
                    member,
                },
            );
        });
        Ok(())
    }

    async fn can_check_v2store(&self, binaries: &etcd::EtcdBinaries) -> bool {
        binaries.version.major == 3 && binaries.version.minor == 5
    }

    /// A host's crash ends its etcd with its manager here (no manager dies
    /// alone in the simulation): nothing is left to stop.
    async fn stop_orphans(&self, _data_root: &Path) -> Result<usize, etcd::Error> {
        Ok(0)
    }

    /// The model has no v2 API: no store holds custom v2 content.
    async fn check_v2store(
        &self,
        _binaries: &etcd::EtcdBinaries,
        data_dir: &Path,
        _scratch: &Path,
        _deadline: Duration,
    ) -> Result<etcd::V2StoreVerdict, etcd::Error> {
        match self.world.with(|w| w.model.data_dir(data_dir).is_some()) {
            true => Ok(etcd::V2StoreVerdict::Clean),
            false => Err(etcd::Error::InvalidArgument {
                detail: format!("{} holds no member data", data_dir.display()),
            }),
        }
    }
}

fn read_snapshot(file: &Path) -> Result<Snapshot, etcd::Error> {
    let body = std::fs::read(file).map_err(|source| etcd::Error::Io {
        path: file.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&body).map_err(|e| etcd::Error::Io {
        path: file.to_path_buf(),
        source: std::io::Error::other(format!("not a model snapshot: {e}")),
    })
}

/// The keys in a snapshot file of the model (a downloaded backup).
pub fn snapshot_keys(file: &Path) -> Result<std::collections::BTreeSet<String>, String> {
    read_snapshot(file)
        .map(|s| s.kv.into_keys().collect())
        .map_err(|e| e.to_string())
}

/// Connections of the manager on `host` to the model.
#[derive(Debug, Clone)]
pub struct ModelConnect {
    pub world: World,
    pub host: usize,
}

#[async_trait]
impl EtcdConnect for ModelConnect {
    async fn connect(
        &self,
        endpoints: &[String],
        timeout: Duration,
    ) -> Result<Arc<dyn EtcdApi>, etcd::Error> {
        Ok(Arc::new(ModelClient {
            world: self.world.clone(),
            host: self.host,
            endpoints: endpoints.to_vec(),
            timeout,
        }))
    }
}

#[derive(Debug, Clone)]
pub struct ModelClient {
    pub world: World,
    /// The caller's host.
    pub host: usize,
    pub endpoints: Vec<String>,
    pub timeout: Duration,
}

/// Which way a call may go.
enum Route {
    /// The process (index) that answers.
    To(usize),
    /// Nothing listens there: refused at once.
    Refused,
    /// No answer: the caller waits out its timeout.
    Silent,
}

impl ModelClient {
    fn route(&self, w: &super::real::State) -> Route {
        let mut refused = false;
        for ep in &self.endpoints {
            let Some(host) = w.host_of_url(ep) else {
                refused = true;
                continue;
            };
            if !w.net.up[self.host] || !w.net.reachable(self.host, host) || !w.net.up[host] {
                continue;
            }
            match w.model.proc_at(ep, w) {
                Some(p) => return Route::To(p),
                None => refused = true,
            }
        }
        if refused {
            Route::Refused
        } else {
            Route::Silent
        }
    }

    /// Run `f` on the process the call reaches, after the network's delay;
    /// an unreachable endpoint costs the whole timeout.
    async fn call<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut super::real::State, usize) -> Result<T, String>,
    ) -> Result<T, etcd::Error> {
        let delay = self.world.with(|w| w.delay());
        tokio::time::sleep(delay).await;
        let route = self.world.with(|w| self.route(w));
        match route {
            Route::Silent => {
                tokio::time::sleep(self.timeout).await;
                Err(etcd::Error::Timeout {
                    op,
                    endpoints: self.endpoints.clone(),
                    after: self.timeout,
                })
            }
            Route::Refused => Err(client_err(
                op,
                &self.endpoints,
                "transport error: connection refused",
            )),
            Route::To(p) => {
                let result = self.world.with(|w| f(w, p));
                // The answer reaches a paused manager once it runs again (a
                // pause armed for the leader's next etcd answer begins now:
                // in the middle of a pass).
                let paused = self.world.with(|w| w.pause_if_armed(self.host));
                super::store::wait_while_paused(&paused).await;
                result.map_err(|detail| client_err(op, &self.endpoints, &detail))
            }
        }
    }

    /// `call` repeated while the answer is retryable, until `deadline`, by
    /// the real client's retry policy ([`etcd::Backoff`]).
    async fn retrying<T>(
        &self,
        op: &'static str,
        deadline: Duration,
        f: impl Fn(&mut super::real::State, usize) -> Result<T, String>,
    ) -> Result<T, etcd::Error> {
        let mut backoff = etcd::Backoff::new(op, deadline);
        loop {
            match self.call(op, &f).await {
                Err(e) if e.is_retryable() => {
                    // A pause or a store cut armed for this moment begins
                    // (a leader in the middle of a membership retry).
                    let (paused, len) = self.world.with(|w| {
                        let len = w.refused_membership_change(self.host);
                        (w.paused[self.host].clone(), len)
                    });
                    if let Some(len) = len {
                        let (world, host) = (self.world.clone(), self.host);
                        let flag = paused.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(len).await;
                            if flag.swap(false, Ordering::SeqCst) {
                                world.with(|w| w.note(format!("n{} runs again", host + 1)));
                            }
                        });
                    }
                    super::store::wait_while_paused(&paused).await;
                    backoff.again(e).await?;
                }
                other => return other,
            }
        }
    }
}

/// The cluster of process `p`, if it has quorum as seen from its host.
fn with_quorum(w: &mut super::real::State, p: usize) -> Result<(&mut Cluster, String), String> {
    let token = w.model.procs[p].token.clone();
    let host = w.model.procs[p].host;
    if !w.model.has_quorum(&token, Some(host), w) {
        return Err("etcdserver: request timed out, possibly due to no leader".into());
    }
    let c = w
        .model
        .clusters
        .get_mut(&token)
        .ok_or("etcdserver: no cluster")?;
    Ok((c, token))
}

fn to_member(m: &ModelMember) -> etcd::Member {
    etcd::Member {
        id: m.id,
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
        is_learner: m.learner,
    }
}

/// The strict reconfiguration check: after the change, a quorum of the
/// voters must have started, and no member started in the last 5 s. Off
/// (etcd run with `--strict-reconfig-check=false`, as an operator may) it
/// lets every change through, and only the manager's own guards remain.
fn strict_check(
    w: &super::real::State,
    token: &str,
    voters_after: usize,
    started_after: usize,
) -> Result<(), String> {
    if !w.strict_reconfig {
        return Ok(());
    }
    let c = &w.model.clusters[token];
    if w.now() < c.last_start + RECONFIG_QUIET {
        return Err("etcdserver: unhealthy cluster".into());
    }
    if started_after < quorum(voters_after) {
        return Err("etcdserver: re-configuration failed due to not enough started members".into());
    }
    Ok(())
}

fn hash(kv: &BTreeMap<String, String>) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for (k, v) in kv {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

#[async_trait]
impl EtcdApi for ModelClient {
    fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    async fn status(&self) -> Result<etcd::EndpointStatus, etcd::Error> {
        let endpoint = self.endpoints.first().cloned().unwrap_or_default();
        let result = self
            .call("status", |w, p| {
                let proc_ = w.model.procs[p].clone();
                let quorate = w.model.has_quorum(&proc_.token, Some(proc_.host), w);
                let c = &w.model.clusters[&proc_.token];
                let leader = if quorate {
                    c.members
                        .iter()
                        .filter(|m| !m.learner)
                        .map(|m| m.id)
                        .find(|id| {
                            w.model.procs.iter().any(|q| {
                                q.token == proc_.token
                                    && q.member == *id
                                    && w.model.live(q, w)
                                    && w.net.reachable(proc_.host, q.host)
                            })
                        })
                        .unwrap_or(0)
                } else {
                    0
                };
                Ok(etcd::EndpointStatus {
                    endpoint: endpoint.clone(),
                    version: proc_.version.clone(),
                    member_id: proc_.member,
                    cluster_id: c.id,
                    leader,
                    raft_index: c.revision as u64 + c.members.len() as u64,
                    revision: c.revision,
                    db_size: 20_000 + 100 * c.kv.len() as i64,
                    db_in_use: 10_000 + 100 * c.kv.len() as i64,
                    is_learner: c.members.iter().any(|m| m.id == proc_.member && m.learner),
                    storage_version: None,
                    downgrade_target: None,
                    errors: vec![],
                    db_quota: 0,
                })
            })
            .await;
        // What the caller's manager learned of that member (when it learned it).
        self.world.with(|w| {
            if let Some(h) = w.host_of_url(&endpoint) {
                w.status_seen(h, self.host, result.is_ok());
            }
        });
        result
    }

    async fn healthy(&self) -> bool {
        self.call("health", |w, p| {
            let proc_ = &w.model.procs[p];
            if w.model.has_quorum(&proc_.token, Some(proc_.host), w) {
                Ok(())
            } else {
                Err("no leader".into())
            }
        })
        .await
        .is_ok()
    }

    async fn member_list(&self) -> Result<Vec<etcd::Member>, etcd::Error> {
        // Not linearizable (the client's default): the member answers from
        // its own copy, with or without a quorum.
        self.call("member_list", |w, p| {
            let c = &w.model.clusters[&w.model.procs[p].token];
            Ok(c.members.iter().map(to_member).collect())
        })
        .await
    }

    async fn member_add_retrying(
        &self,
        peer_urls: &[String],
        learner: bool,
        deadline: Duration,
    ) -> Result<(etcd::Member, Vec<etcd::Member>), etcd::Error> {
        let caller = self.host;
        self.retrying("member_add", deadline, |w, p| {
            let token = w.model.procs[p].token.clone();
            with_quorum(w, p)?;
            let c = &w.model.clusters[&token];
            if let Some(m) = c.members.iter().find(|m| m.peer_urls == peer_urls) {
                // An earlier attempt landed: found by its peer URL.
                return Ok((to_member(m), c.members.iter().map(to_member).collect()));
            }
            if c.members
                .iter()
                .any(|m| m.peer_urls.iter().any(|u| peer_urls.contains(u)))
            {
                return Err("etcdserver: Peer URLs already exists".into());
            }
            let voters = c.members.iter().filter(|m| !m.learner).count();
            if !learner {
                let started = w.model.started_voters(&token, None, w);
                strict_check(w, &token, voters + 1, started)?;
            } else if w.strict_reconfig && w.now() < c.last_start + RECONFIG_QUIET {
                return Err("etcdserver: unhealthy cluster".into());
            }
            w.effect(
                caller,
                &format!("member_add {peer_urls:?} learner={learner}"),
            )?;
            let c = w.model.clusters.get_mut(&token).expect("cluster");
            c.next_member += 1;
            let m = ModelMember {
                id: member_id(&token, &peer_urls.join(","), c.next_member),
                name: String::new(),
                peer_urls: peer_urls.to_vec(),
                client_urls: vec![],
                learner,
            };
            c.members.push(m.clone());
            Ok((to_member(&m), c.members.iter().map(to_member).collect()))
        })
        .await
    }

    async fn member_promote(&self, id: u64) -> Result<(), etcd::Error> {
        let caller = self.host;
        self.call("member_promote", |w, p| {
            let token = w.model.procs[p].token.clone();
            with_quorum(w, p)?;
            let now = w.now();
            let c = &w.model.clusters[&token];
            let Some(m) = c.members.iter().find(|m| m.id == id) else {
                return Err("etcdserver: member not found".into());
            };
            if !m.learner {
                return Err("etcdserver: can only promote a learner member".into());
            }
            let synced = w.model.procs.iter().any(|q| {
                q.token == token
                    && q.member == id
                    && w.model.live(q, w)
                    && now >= q.started + LEARNER_CATCH_UP
            });
            if !synced {
                return Err(
                    "etcdserver: can only promote a learner member which is in sync with leader"
                        .into(),
                );
            }
            let voters = c.members.iter().filter(|m| !m.learner).count();
            let started = w.model.started_voters(&token, None, w) + 1;
            strict_check(w, &token, voters + 1, started)?;
            w.effect(caller, &format!("member_promote {id:x}"))?;
            let c = w.model.clusters.get_mut(&token).expect("cluster");
            if let Some(m) = c.members.iter_mut().find(|m| m.id == id) {
                m.learner = false;
            }
            Ok(())
        })
        .await
    }

    async fn member_remove_retrying(&self, id: u64, deadline: Duration) -> Result<(), etcd::Error> {
        let caller = self.host;
        self.retrying("member_remove", deadline, |w, p| {
            let token = w.model.procs[p].token.clone();
            with_quorum(w, p)?;
            let c = &w.model.clusters[&token];
            let Some(m) = c.members.iter().find(|m| m.id == id).cloned() else {
                return Err("etcdserver: member not found".into());
            };
            if !m.learner {
                let voters = c.members.iter().filter(|m| !m.learner).count();
                let started_self = w
                    .model
                    .procs
                    .iter()
                    .any(|q| q.token == token && q.member == id && w.model.live(q, w));
                let started = w.model.started_voters(&token, None, w) - usize::from(started_self);
                strict_check(w, &token, voters - 1, started)?;
            }
            w.effect(caller, &format!("member_remove {id:x}"))?;
            let c = w.model.clusters.get_mut(&token).expect("cluster");
            c.members.retain(|m| m.id != id);
            // A removed member's etcd stops by itself.
            for q in w
                .model
                .procs
                .iter_mut()
                .filter(|q| q.token == token && q.member == id)
            {
                if q.running {
                    q.running = false;
                    q.last_exit = Some("the member has been permanently removed".into());
                }
            }
            // It had quorum (with_quorum above): a removal must not take it away.
            if !w.model.has_quorum(&token, None, w) {
                w.fail(format!(
                    "removing member {} ({id:x}) took cluster {token} below quorum",
                    m.name
                ));
            }
            Ok(())
        })
        .await
    }

    async fn enable_downgrade(&self, _minor: &str) -> Result<(), etcd::Error> {
        self.call("downgrade_enable", |w, p| with_quorum(w, p).map(|_| ()))
            .await
    }

    async fn cancel_downgrade(&self) -> Result<(), etcd::Error> {
        self.call("downgrade_cancel", |w, p| with_quorum(w, p).map(|_| ()))
            .await
    }

    async fn move_leader(&self, _target: u64) -> Result<(), etcd::Error> {
        self.call("move_leader", |w, p| with_quorum(w, p).map(|_| ()))
            .await
    }

    async fn alarms(&self) -> Result<Vec<(u64, String)>, etcd::Error> {
        self.call("alarm_list", |w, p| with_quorum(w, p).map(|_| vec![]))
            .await
    }

    async fn disarm_nospace(&self, _member: u64) -> Result<(), etcd::Error> {
        self.call("alarm_disarm", |w, p| with_quorum(w, p).map(|_| ()))
            .await
    }

    async fn compact(&self, _revision: i64) -> Result<(), etcd::Error> {
        self.call("compact", |w, p| with_quorum(w, p).map(|_| ()))
            .await
    }

    async fn defragment(&self) -> Result<(), etcd::Error> {
        self.call("defragment", |_, _| Ok(())).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, etcd::Error> {
        let caller = self.host;
        self.call("delete_prefix", |w, p| {
            let token = w.model.procs[p].token.clone();
            with_quorum(w, p)?;
            w.effect(caller, &format!("delete_prefix {prefix}"))?;
            let c = w.model.clusters.get_mut(&token).expect("cluster");
            let before = c.kv.len();
            c.kv.retain(|k, _| !k.starts_with(prefix));
            let n = (before - c.kv.len()) as u64;
            if n > 0 {
                c.revision += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn hash_kv(&self, revision: i64) -> Result<etcd::HashKv, etcd::Error> {
        self.call("hash_kv", |w, p| {
            let c = &w.model.clusters[&w.model.procs[p].token];
            Ok(etcd::HashKv {
                revision,
                hash: hash(&c.kv),
                compact_revision: 0,
            })
        })
        .await
    }

    async fn snapshot(&self) -> Result<etcd::SnapshotStream, etcd::Error> {
        let body = self
            .call("snapshot", |w, p| {
                let c = &w.model.clusters[&w.model.procs[p].token];
                serde_json::to_vec(&Snapshot {
                    kv: c.kv.clone(),
                    revision: c.revision,
                })
                .map_err(|e| e.to_string())
            })
            .await?;
        Ok(Box::pin(futures::stream::once(async move {
            Ok(Bytes::from(body))
        })))
    }
}

/// Writes through the model as a client of the cluster would: `key`
/// through the endpoint at `url`; Ok once acknowledged.
pub fn client_put(
    w: &mut super::real::State,
    url: &str,
    key: &str,
    value: &str,
) -> Result<String, String> {
    let p = w.model.proc_at(url, w).ok_or("no etcd there")?;
    let token = w.model.procs[p].token.clone();
    let (c, _) = with_quorum(w, p)?;
    c.kv.insert(key.to_string(), value.to_string());
    c.revision += 1;
    Ok(token)
}

impl Shared {
    /// Stop process `index` (the node asked: a stop, a restore, a move).
    pub fn stop_proc(&self, index: usize) {
        self.with(|w| {
            let p = &w.model.procs[index];
            if !w.model.live(p, w) {
                return;
            }
            let token = p.token.clone();
            let host = p.host;
            let quorate = w.model.has_quorum(&token, None, w);
            w.model.procs[index].running = false;
            w.model.procs[index].last_exit = Some("signal: 15 (SIGTERM)".into());
            w.note(format!("etcd on n{} stops (token {token})", host + 1));
            if quorate && !w.model.has_quorum(&token, None, w) {
                w.quorum_lost_by_stop(host, &token);
            }
        });
    }
}
