//! The leader loop: observe, decide (pure [`crate::controller::reconcile`]),
//! execute, repeat. Every node runs it; only the lease holder gets past the
//! leadership step. IO lives here; decisions do not.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup::{BackupInfo, BackupStore, ClusterSpec};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Clock;
use crate::controller::{self, Action, ClusterView, MemberView, Observation, PeerView, Plan};
use crate::lease::SharedLease;
use crate::metrics as m;
use crate::node::Node;
use crate::peer::{
    self, EtcdNodeConfig, Fence, JoinCluster, JoinPhase, NodeInfo, Reconfigure, Request, Response,
};

/// What each manager puts in its gossip payload: who it is, where its peer
/// API listens, how it runs etcd and a summary of its etcd state (the leader
/// still asks every peer over the peer API before acting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPayload {
    pub cluster_name: String,
    pub peer_api: SocketAddr,
    pub node_config: EtcdNodeConfig,
    pub etcd: Option<EtcdSummary>,
    /// The leader's current lease record (see [`lock::LeaseClaim`]): a
    /// contender counts it as seen when the payload arrives. Last, so a
    /// manager without it (an older version) still reads this payload.
    pub lease: Option<lock::LeaseClaim>,
}

/// Most bytes a gossip payload may claim while it is decoded (a real one is a
/// few hundred bytes; gossip packets are smaller than this anyway).
pub const PAYLOAD_LIMIT: usize = 16 * 1024;

/// The payload of a manager from before `lease` was added.
#[derive(Serialize, Deserialize)]
struct PeerPayloadV1 {
    cluster_name: String,
    peer_api: SocketAddr,
    node_config: EtcdNodeConfig,
    etcd: Option<EtcdSummary>,
}

/// A node's etcd in a few fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdSummary {
    pub cluster_token: String,
    pub etcd_version: String,
    pub running: bool,
    pub quarantined: bool,
}

impl PeerPayload {
    pub fn from_info(
        info: &NodeInfo,
        peer_api: SocketAddr,
        lease: Option<lock::LeaseClaim>,
    ) -> PeerPayload {
        PeerPayload {
            lease,
            cluster_name: info.cluster_name.clone(),
            peer_api,
            node_config: info.node_config.clone(),
            etcd: info.etcd_state.as_ref().map(|s| EtcdSummary {
                cluster_token: s.cluster_token.clone(),
                etcd_version: s.etcd_version.clone(),
                running: s.running,
                quarantined: s.quarantined,
            }),
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode::<_, PAYLOAD_LIMIT>(self).unwrap_or_default()
    }
    /// Decode a payload from gossip (any member may send any bytes): bounded
    /// by [`PAYLOAD_LIMIT`], identifiers checked; None for anything else.
    pub fn decode(b: &[u8]) -> Option<PeerPayload> {
        let p = Self::decode_unchecked(b)?;
        let ok = etcd::check_ident(etcd::IdentKind::MemberName, &p.node_config.name).is_ok()
            || p.node_config.name.is_empty();
        let token_ok = p.etcd.as_ref().is_none_or(|e| {
            etcd::check_ident(etcd::IdentKind::ClusterToken, &e.cluster_token).is_ok()
        });
        (ok && token_ok).then_some(p)
    }
    fn decode_unchecked(b: &[u8]) -> Option<PeerPayload> {
        if let Ok(p) = crate::codec::decode::<PeerPayload, PAYLOAD_LIMIT>(b) {
            return Some(p);
        }
        let v1: PeerPayloadV1 = crate::codec::decode::<_, PAYLOAD_LIMIT>(b).ok()?;
        Some(PeerPayload {
            cluster_name: v1.cluster_name,
            peer_api: v1.peer_api,
            node_config: v1.node_config,
            etcd: v1.etcd,
            lease: None,
        })
    }
}

const PEER_TIMEOUT: Duration = Duration::from_secs(5);
use crate::peer::{JOIN_TIMEOUT, RESTORE_TIMEOUT};
/// etcd's backend quota when none is set: 2 GiB.
const ETCD_DEFAULT_QUOTA: i64 = 2 * 1024 * 1024 * 1024;
/// A NOSPACE alarm back within this long of clearing it is not cleared again.
const SPACE_ALARM_AGAIN: Duration = Duration::from_secs(60);
/// How long one member's defragmentation may take.
const ETCD_DEFRAG_TIMEOUT: Duration = Duration::from_secs(300);
/// Backoff kinds besides the actions' labels.
const LEASE_STEP: &str = "lease_step";
const READ_CONTROL: &str = "read_control";
/// A failed v2 store check is run again after this long.
const V2STORE_RETRY: Duration = Duration::from_secs(60);
/// How long a peer's answer about its etcd settings is trusted: the manager
/// may restart with other settings, so the answer is asked again after this
/// (the node also refuses a move its settings would not survive).
const SETTINGS_RECHECK: Duration = Duration::from_secs(60);
const ETCD_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between passes while the leader waits for something
/// (a member's grace period, a learner catching up) or a candidate for the
/// lease, whatever `--controller-interval` says.
const WAITING_INTERVAL: Duration = Duration::from_secs(2);
/// How long a membership change etcd refuses for now (its strict reconfiguration
/// check) is retried, at most: never past the lease (`membership_deadline`).
const ETCD_MEMBERSHIP_RETRY: Duration = Duration::from_secs(15);
/// How old the leader's copy of the control files (spec, created marker,
/// commands, backup-now) may get before it looks again while the cluster is
/// steady (the last plan had neither actions nor waits); otherwise every pass
/// looks. A look is two listings; only files that changed are read. An
/// operator's command on a steady cluster is seen within this.
pub const CONTROL_REFRESH: Duration = Duration::from_secs(60);

pub struct DriverSettings {
    pub cluster_name: String,
    /// Our peer API address, as published in the gossip payload.
    pub peer_api: SocketAddr,
    pub backup_interval: Duration,
    pub controller_interval: Duration,
    /// Where the leader downloads a backup to verify it before a restore.
    pub scratch_dir: std::path::PathBuf,
    /// Where etcd binaries are looked for (to check snapshots without our checksum).
    pub etcd_bin_dirs: Vec<std::path::PathBuf>,
    pub retention: backup::RetentionPolicy,
    /// How long a member may be unhealthy before it is replaced.
    pub replace_grace: Duration,
    /// When a member's database is defragmented.
    pub defrag: controller::DefragPolicy,
    /// `--restore-clear-prefix`.
    pub restore_clear_prefixes: Vec<String>,
    /// `--auto-recover-quorum-loss`.
    pub auto_recover_quorum_loss: Option<Duration>,
    /// `--backup-verify-every` (0: no restore drills).
    pub backup_verify_every: u32,
    /// `ETCD_QUOTA_BACKEND_BYTES` as etcd is given it (process environment
    /// or `--etcd-env-file`), for the quota metric before 3.6 reports it.
    pub etcd_quota_bytes: Option<i64>,
    /// Calls the other managers' peer APIs (TLS unless `--insecure`).
    pub peers: peer::PeerClient,
    /// Our client identity for etcd (None with `--etcd-insecure`).
    pub etcd_tls: Option<etcd::ClientTls>,
    /// Configuration warnings shown in `status` (e.g. gossip without a key).
    pub warnings: Vec<String>,
    /// `--static-config`: the spec comes from it, no control file is read,
    /// and a new cluster needs `please-create-new-cluster` in our data dir.
    pub static_config: Option<crate::statics::StaticConfig>,
    /// With `--dns-suffix`: the hosts file whose block names every member.
    pub hosts_file: Option<std::path::PathBuf>,
    pub dns_suffix: String,
    /// `--delta-interval`: how often the leader uploads a continuous-backup
    /// segment (zero: no continuous backup).
    pub delta_interval: Duration,
}

/// `etcd-manager-ctl backup-now` leaves this file under `<store>/etcd-manager/`.
pub const BACKUP_NOW_FILE: &str = "backup-now";
/// `etcd-manager-ctl seed-new-cluster` leaves this file under `<store>/etcd-manager/`.
pub const ALLOW_NEW_CLUSTER_FILE: &str = "allow-new-cluster";
/// `etcd-manager-ctl defrag`: every voter (`defrag-now`), or one member
/// (`defrag-now--<member>`), defragmented by the leader now.
pub const DEFRAG_NOW_FILE: &str = "defrag-now";
/// `etcd-manager-ctl recover-quorum`: rebuild a cluster that lost its quorum.
pub const RECOVER_QUORUM_FILE: &str = "recover-quorum";

/// `etcd-manager-ctl verify-backup --on-manager <backup>` leaves
/// `verify-now--<backup>`: a restore drill of that backup, run by the
/// manager the leader picks.
pub const VERIFY_NOW_FILE: &str = "verify-now";

/// The restore drill the manager files ask for, if any: (file, backup); a
/// file naming no valid backup name is ignored.
pub use crate::node::{RETIRED_CLUSTER_FILE, retired_cluster_file, retired_tokens};

pub fn verify_request(files: &std::collections::BTreeSet<String>) -> Option<(String, String)> {
    files.iter().find_map(|f| {
        let backup = crate::node::request_suffix(f, VERIFY_NOW_FILE)?;
        backup::check_backup_name(backup)
            .ok()
            .map(|()| (f.clone(), backup.to_string()))
    })
}

/// The on-demand defragmentation the manager files ask for, if any: Some(None)
/// every voter, Some(Some(name)) one member (an invalid name is ignored).
pub fn defrag_request(
    files: &std::collections::BTreeSet<String>,
) -> Option<(String, Option<String>)> {
    files.iter().find_map(|f| {
        if f == DEFRAG_NOW_FILE {
            return Some((f.clone(), None));
        }
        let member = crate::node::request_suffix(f, DEFRAG_NOW_FILE)?;
        etcd::check_ident(etcd::IdentKind::MemberName, member)
            .ok()
            .map(|()| (f.clone(), Some(member.to_string())))
    })
}

pub struct Driver {
    settings: DriverSettings,
    health: Arc<m::Health>,
    started: Instant,
    store: BackupStore,
    lease: Arc<SharedLease>,
    gossip: gossip::GossipHandle,
    node: Arc<Node>,
    clock: Arc<dyn Clock>,
    /// The control files as last read, and when.
    control: Option<(Instant, Control)>,
    control_cache: backup::ControlCache,
    /// The last plan had neither actions nor waits.
    steady: bool,
    /// Nothing to do or wait for: a steady leader, or a manager that is not
    /// the candidate. The next pass then comes after the controller interval,
    /// otherwise within [`WAITING_INTERVAL`].
    idle: bool,
    /// Who was alive in gossip at the last look (a change starts a pass).
    last_alive: BTreeSet<String>,
    /// Claims already counted: one is counted when first seen, not again.
    seen_claims: std::collections::BTreeSet<(u64, String)>,
    last_backup: Option<Instant>,
    was_leader: bool,
    /// etcd clients of the last pass by client URL, kept while they answer:
    /// a new client per member per pass cost a TLS handshake each, most of
    /// an idle leader's CPU.
    etcd_clients: BTreeMap<String, etcd::EtcdClient>,
    pass: u64,
    last_waits: Vec<String>,
    last_payload: Option<PeerPayload>,
    last_status: Option<(crate::status::ClusterStatus, Instant)>,
    /// Restore commands this leader refused, by (command, backup), so a new
    /// command that reuses a deleted one's folder name is judged anew.
    refused: BTreeMap<(String, String), String>,
    last_retention: Option<Instant>,
    /// The backup this leader took last (a dump-and-restore restores it).
    last_backup_name: Option<String>,
    /// Periodic backups since the last one given to a restore drill.
    backups_since_drill: u32,
    /// A backup awaiting its restore drill.
    unverified_backup: Option<String>,
    unhealthy_since: BTreeMap<u64, Instant>,
    /// Since when each member has not answered at all (no progress).
    silent_since: BTreeMap<u64, Instant>,
    /// Action kinds that failed (and lease steps, reads of the control
    /// files: [`LEASE_STEP`], [`READ_CONTROL`]), and when each may be tried again.
    backoff: crate::backoff::Backoff,
    /// When this leader last cleared etcd's NOSPACE alarm.
    last_space_clear: Option<Instant>,
    /// v2 store checks by (peer id, cluster token), and when they ran.
    v2store: BTreeMap<(String, String), (controller::V2StoreCheck, Instant)>,
    /// Restored clusters (by token) whose prefixes this leader cleared.
    prefixes_cleared: BTreeSet<String>,
    /// The newest backup and its revision, read while quorum is lost.
    latest_backup: Option<(String, Option<i64>)>,
    /// Settings checks by (peer id, version), and when they ran.
    settings_checks: BTreeMap<(String, String), (controller::SettingsCheck, Instant)>,
    had_majority: bool,
    /// How many malformed control files the last read reported (logged on change).
    malformed_seen: usize,
    /// What the hosts file's block last said.
    last_hosts: Option<BTreeMap<String, BTreeSet<String>>>,
    /// The continuous backup: what it should follow, where it stands, and
    /// the streamer until [`Driver::run`] starts it.
    delta_target: tokio::sync::watch::Sender<Option<crate::delta::DeltaTarget>>,
    delta: Arc<crate::delta::DeltaShared>,
    delta_streamer: Option<crate::delta::DeltaStreamer>,
}

/// What the leader reads from the store's control files.
#[derive(Debug, Clone)]
struct Control {
    /// Control files skipped as malformed (path, reason).
    malformed: Vec<backup::MalformedFile>,
    spec: Option<ClusterSpec>,
    backup_requested: bool,
    /// The request file and the member it names (None: every voter).
    defrag_requested: Option<(String, Option<String>)>,
    /// The request file and the backup it names.
    verify_requested: Option<(String, String)>,
    retired_tokens: BTreeSet<String>,
    recover_quorum_requested: bool,
    allow_new_cluster: bool,
    commands: Vec<backup::StoredCommand>,
    created_marker: bool,
}

fn executing_error(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: DriverSettings,
        health: Arc<m::Health>,
        store: BackupStore,
        lease: lock::LeaseClient,
        gossip: gossip::GossipHandle,
        node: Arc<Node>,
        clock: Arc<dyn Clock>,
    ) -> Driver {
        let started = clock.now();
        let (delta_target, target_rx) = tokio::sync::watch::channel(None);
        let delta = Arc::new(crate::delta::DeltaShared::default());
        let delta_streamer =
            (!settings.delta_interval.is_zero()).then(|| crate::delta::DeltaStreamer {
                store: store.clone(),
                clock: clock.clone(),
                interval: settings.delta_interval,
                tls: settings.etcd_tls.clone(),
                shared: delta.clone(),
                target: target_rx,
            });
        Driver {
            settings,
            health,
            started,
            store,
            lease: SharedLease::new(lease, clock.clone()),
            gossip,
            node,
            clock,
            control: None,
            control_cache: backup::ControlCache::default(),
            steady: false,
            idle: false,
            seen_claims: Default::default(),
            last_alive: BTreeSet::new(),
            last_backup: None,
            was_leader: false,
            etcd_clients: BTreeMap::new(),
            pass: 0,
            last_waits: vec![],
            last_payload: None,
            last_status: None,
            refused: BTreeMap::new(),
            last_retention: None,
            last_backup_name: None,
            backups_since_drill: 0,
            unverified_backup: None,
            unhealthy_since: BTreeMap::new(),
            silent_since: BTreeMap::new(),
            v2store: BTreeMap::new(),
            settings_checks: BTreeMap::new(),
            prefixes_cleared: BTreeSet::new(),
            latest_backup: None,
            backoff: Default::default(),
            last_space_clear: None,
            had_majority: false,
            malformed_seen: 0,
            last_hosts: None,
            delta_target,
            delta,
            delta_streamer,
        }
    }

    /// Run until cancelled; then release the lease if held.
    pub async fn run(mut self, cancel: CancellationToken) {
        // A change of gossip membership (a leader leaving on shutdown, a peer
        // dying or joining) starts the next pass at once instead of after the
        // controller interval: a graceful handover then takes well under a second.
        let mut members = self.gossip.subscribe();
        let mut gossip_open = true;
        let renewals = cancel.child_token();
        tokio::spawn(self.lease.clone().keep_renewed(renewals.clone()));
        if let Some(streamer) = self.delta_streamer.take() {
            tokio::spawn(streamer.run(renewals.clone()));
        }
        let mut claims = self.lease.claims();
        loop {
            let acted = tokio::select! {
                _ = cancel.cancelled() => break,
                acted = self.step() => acted,
            };
            let pause = if acted {
                Duration::from_millis(200)
            } else if self.idle {
                self.settings.controller_interval
            } else {
                self.settings.controller_interval.min(WAITING_INTERVAL)
            };
            let clock = self.clock.clone();
            let wake_at = clock.now() + pause;
            // Wait for the pause, a change of who is alive, or cancellation;
            // meanwhile publish our lease claims and take note of others'
            // (payload changes alone do not start a pass).
            let cancelled = loop {
                let left = wake_at.saturating_duration_since(clock.now());
                tokio::select! {
                    _ = cancel.cancelled() => break true,
                    _ = clock.sleep(left) => break false,
                    // A renewal: tell the others at once (their wait counts
                    // from when they hear of it).
                    Ok(()) = claims.changed() => self.publish_payload().await,
                    changed = members.changed(), if gossip_open => match changed {
                        Ok(()) => {
                            self.note_claims().await;
                            // Judge candidates by the new view at once: a peer
                            // asked before its own next pass would still see
                            // the departed leader and refuse.
                            let peers = self.alive_peers();
                            let alive: BTreeSet<String> = peers.keys().cloned().collect();
                            if alive != self.last_alive {
                                self.node.set_alive_view(alive.iter().cloned().collect());
                                self.last_alive = alive;
                                // Let the news settle for a moment (a leave, then its broadcast).
                                clock.sleep(Duration::from_millis(100)).await;
                                break false;
                            }
                        }
                        Err(_) => gossip_open = false,
                    },
                }
            };
            if cancelled {
                break;
            }
        }
        renewals.cancel();
        if self.lease.held(self.clock.now()).is_some() {
            match self.lease.release().await {
                Ok(()) => tracing::info!("released the leader lease"),
                Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
            }
        }
        metrics::gauge!(m::IS_LEADER).set(0.0);
    }

    /// Alive gossip members of our cluster, with their peer API address.
    fn alive_peers(&self) -> BTreeMap<String, SocketAddr> {
        metrics::counter!(m::GOSSIP_BAD_PACKETS).absolute(self.gossip.bad_packets());
        let (sent, received) = self.gossip.bytes();
        metrics::counter!(m::GOSSIP_BYTES, "direction" => "sent").absolute(sent);
        metrics::counter!(m::GOSSIP_BYTES, "direction" => "received").absolute(received);
        let (downs, rejoins) = self.gossip.downs();
        metrics::counter!(m::GOSSIP_DOWNS).absolute(downs);
        metrics::counter!(m::GOSSIP_REJOINS).absolute(rejoins);
        let members = self.gossip.members();
        let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for mv in &members {
            let state = match mv.state {
                gossip::MemberState::Alive => "alive",
                gossip::MemberState::Suspect => "suspect",
                gossip::MemberState::Down => "down",
            };
            *by_state.entry(state).or_default() += 1;
            if mv.state != gossip::MemberState::Alive {
                continue;
            }
            if let Some(p) = mv.payload.as_deref().and_then(PeerPayload::decode)
                && p.cluster_name == self.settings.cluster_name
            {
                out.insert(mv.id.clone(), p.peer_api);
            }
        }
        for s in ["alive", "suspect", "down"] {
            metrics::gauge!(m::GOSSIP_MEMBERS, "state" => s)
                .set(by_state.get(s).copied().unwrap_or(0) as f64);
        }
        out
    }

    /// Ask every other alive manager whether it accepts us; true with a
    /// majority of all known managers of our cluster, and of the spec's member
    /// count, so a manager alone in its gossip view (a wrong gossip key, a
    /// partition) cannot take the lease from the real cluster.
    async fn majority_accepts(&mut self, peers: &BTreeMap<String, SocketAddr>) -> bool {
        let pc = &self.settings.peers.clone();
        let me = self.node.id().to_string();
        let spec_count = match self.control().await {
            Ok(c) => c
                .spec
                .as_ref()
                .map_or(0, |s| s.member_count.max(0) as usize),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the spec for majority acceptance");
                return false;
            }
        };
        let members = self.gossip.members();
        let known = crate::leadership::known_managers(
            members
                .iter()
                .filter(|mv| {
                    mv.payload
                        .as_deref()
                        .and_then(PeerPayload::decode)
                        .is_some_and(|p| p.cluster_name == self.settings.cluster_name)
                })
                .map(|mv| {
                    (
                        mv.id.as_str(),
                        mv.addr,
                        mv.state == gossip::MemberState::Down,
                    )
                }),
        )
        .max(1);
        let Some(store_id) = self.node.store_id() else {
            tracing::debug!("not leading: this node has not read the store id yet");
            return false;
        };
        let req = Request::Leadership {
            cluster_name: self.settings.cluster_name.clone(),
            candidate: me.clone(),
            store_id,
        };
        // One process per address: an old id whose address a new manager
        // took over must not count that manager's acceptance twice.
        let mut seen: BTreeSet<SocketAddr> = peers.get(&me).copied().into_iter().collect();
        let others: Vec<(String, SocketAddr)> = peers
            .iter()
            .filter(|(id, a)| **id != me && seen.insert(**a))
            .map(|(id, a)| (id.clone(), *a))
            .collect();
        let answers = futures::future::join_all(others.into_iter().map(|(id, addr)| {
            let req = req.clone();
            async move { (id, pc.call(addr, &req, Duration::from_secs(2)).await) }
        }))
        .await;
        let mut accepted = 1; // ourselves
        for (id, answer) in answers {
            match answer {
                Ok(_) => accepted += 1,
                Err(e) if e.to_string().contains("another backup store") => {
                    tracing::warn!(peer = %id, error = %e, "leadership not accepted: the managers do not share one backup store")
                }
                Err(e) => tracing::debug!(peer = %id, error = %e, "leadership not accepted"),
            }
        }
        let majority = crate::leadership::has_majority(accepted, known, spec_count);
        let known = known.max(spec_count);
        if majority != self.had_majority {
            if majority {
                tracing::info!(
                    accepted,
                    known,
                    "a majority of the known managers accepts this node"
                );
            } else {
                tracing::info!(
                    accepted,
                    known,
                    "not leading: no majority of the known managers accepts this node"
                );
            }
            self.had_majority = majority;
        }
        majority
    }

    /// One pass; true if something was done (so the next pass comes soon).
    async fn step(&mut self) -> bool {
        let now_ms = self
            .clock
            .now()
            .saturating_duration_since(self.started)
            .as_millis() as u64;
        self.health.pass_done(now_ms);
        self.publish_payload().await;
        self.note_claims().await;
        let peers = self.alive_peers();
        self.node.set_alive_view(peers.keys().cloned().collect());
        self.last_alive = peers.keys().cloned().collect();
        self.keep_hosts_file();
        let me = self.node.id().to_string();
        let lowest = peers.contains_key(&me)
            && crate::leadership::is_candidate(&me, peers.keys().map(String::as_str));
        // Majority acceptance: the lowest alive id leads only if a majority of
        // the managers gossip has ever known (down ones included) accept it.
        let candidate = lowest && self.majority_accepts(&peers).await;
        let before = self.clock.now();
        // A lease step that failed (the store does not answer) is tried again
        // after a growing pause (1 s doubling to 60 s) unless the lease is
        // held: renewals keep their pace, acquiring and observing wait.
        let held = self.lease.held(before).is_some();
        if held || self.backoff.waiting(LEASE_STEP, before).is_none() {
            match self.lease.tick(before, candidate).await {
                Ok(_) => {
                    metrics::counter!(m::LEASE_OPERATIONS, "result" => "ok").increment(1);
                    self.backoff.succeeded(LEASE_STEP);
                }
                Err(e) => {
                    metrics::counter!(m::LEASE_OPERATIONS, "result" => "error").increment(1);
                    let e = e.to_string();
                    let wait = self.backoff.failed(LEASE_STEP, self.clock.now(), &e);
                    tracing::warn!(error = %e, retry_in = ?wait, "lease step failed");
                }
            }
        }
        self.lease
            .observe_epoch(self.node.highest_epoch().await)
            .await;
        let epoch = self.lease.held(self.clock.now());
        self.note_leadership(epoch);
        let Some(epoch) = epoch else {
            self.delta_target.send_if_modified(|t| t.take().is_some());
            // A candidate waits for the lease; the others have nothing to do.
            self.idle = !candidate;
            return false;
        };

        self.pass += 1;
        let span = tracing::info_span!("reconcile", pass = self.pass, epoch);
        let acted = self.reconcile_pass(epoch, &peers).instrument(span).await;
        self.idle = self.steady;
        acted
    }

    async fn reconcile_pass(&mut self, epoch: u64, peers: &BTreeMap<String, SocketAddr>) -> bool {
        let obs = match self.observe(epoch, peers).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "observation failed");
                self.steady = false;
                return false;
            }
        };
        self.follow_changes(epoch, &obs);
        let plan = self
            .backoff
            .gate(controller::reconcile(&obs), self.clock.now());
        self.report_waits(&plan);
        self.write_status(&obs, &plan).await;
        self.steady = plan.actions.is_empty() && plan.waits.is_empty();
        let acted = self.execute(plan, epoch, &obs).await;
        if acted {
            // What we did may have changed the control files (the created
            // marker, a command's progress): read them again next pass.
            self.control = None;
        }
        acted
    }

    /// Point the continuous backup at the healthy members and the newest
    /// full backup this leader took (None before its first: the streamer
    /// resumes the store's newest chain).
    fn follow_changes(&mut self, epoch: u64, obs: &Observation) {
        if self.settings.delta_interval.is_zero() {
            return;
        }
        let mut endpoints: Vec<String> =
            healthy_endpoints(obs).into_iter().map(|(_, e)| e).collect();
        endpoints.sort();
        let target = (!endpoints.is_empty()).then(|| crate::delta::DeltaTarget {
            epoch,
            endpoints,
            base: self.last_backup_name.clone(),
        });
        self.delta_target.send_if_modified(|t| {
            // Members coming and going alone do not restart the chain: the
            // streamer reads the endpoints when it (re)connects.
            let same = match (&*t, &target) {
                (Some(a), Some(b)) => a.epoch == b.epoch && a.base == b.base,
                (None, None) => true,
                _ => false,
            };
            if let (Some(a), Some(b)) = (t.as_mut(), &target) {
                a.endpoints = b.endpoints.clone();
            }
            if !same {
                *t = target;
            }
            !same
        });
    }

    /// The control files, read again when older than [`CONTROL_REFRESH`].
    async fn control(&mut self) -> Result<&Control, String> {
        let now = self.clock.now();
        let fresh = self.steady
            && self
                .control
                .as_ref()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) < CONTROL_REFRESH);
        if !fresh {
            // After a failed read, the store is asked again only after a
            // growing pause (1 s doubling to 60 s), not on every pass.
            if let Some((failures, left)) = self.backoff.waiting(READ_CONTROL, now) {
                return Err(format!(
                    "the backup store did not answer the last {failures} reads of the control files; next try in {:.1} s",
                    left.as_secs_f64()
                ));
            }
            let snap = match self.store.read_control(&mut self.control_cache).await {
                Ok(snap) => {
                    self.backoff.succeeded(READ_CONTROL);
                    snap
                }
                Err(e) => {
                    let e = executing_error(e);
                    self.backoff.failed(READ_CONTROL, now, &e);
                    return Err(e);
                }
            };
            if snap.malformed.len() != self.malformed_seen {
                for f in &snap.malformed {
                    tracing::warn!(path = %f.path, reason = %f.reason, "skipping a malformed control file");
                }
                self.malformed_seen = snap.malformed.len();
            }
            metrics::gauge!(m::STORE_MALFORMED_FILES).set(snap.malformed.len() as f64);
            let mut control = Control {
                malformed: snap.malformed,
                spec: snap.spec,
                backup_requested: snap.manager_files.contains(BACKUP_NOW_FILE),
                defrag_requested: defrag_request(&snap.manager_files),
                verify_requested: verify_request(&snap.manager_files),
                retired_tokens: retired_tokens(&snap.manager_files),
                recover_quorum_requested: snap.manager_files.contains(RECOVER_QUORUM_FILE),
                allow_new_cluster: snap.manager_files.contains(ALLOW_NEW_CLUSTER_FILE),
                commands: snap.commands,
                created_marker: snap.created,
            };
            if let Some(sc) = &self.settings.static_config {
                // --static-config: the spec is fixed, and as upstream a new
                // cluster needs please-create-new-cluster in our data dir.
                // Operators' commands (restore-backup, backup-now) still work.
                let allow = self
                    .node
                    .data_dir()
                    .join(crate::statics::PLEASE_CREATE_NEW_CLUSTER)
                    .exists();
                control.spec = Some(sc.spec());
                control.allow_new_cluster = allow;
                control.created_marker = !allow;
            }
            self.control = Some((now, control));
        }
        match &self.control {
            Some((_, c)) => Ok(c),
            None => Err("the control files were not read".to_string()),
        }
    }

    /// Count the lease records other managers claim in their payloads as seen
    /// now (see [`lock::LeaseClaim`]).
    async fn note_claims(&mut self) {
        let now = self.clock.now();
        let me = self.node.id().to_string();
        let claims: Vec<lock::LeaseClaim> = self
            .gossip
            .members()
            .into_iter()
            .filter(|mv| mv.id != me && mv.state == gossip::MemberState::Alive)
            .filter_map(|mv| PeerPayload::decode(mv.payload.as_deref()?))
            .filter(|p| p.cluster_name == self.settings.cluster_name)
            .filter_map(|p| p.lease)
            .collect();
        for claim in claims {
            if self.seen_claims.insert((claim.seq, claim.nonce.clone())) {
                self.lease.note_claim(&claim, now).await;
            }
        }
        if self.seen_claims.len() > 64 {
            self.seen_claims.clear();
        }
    }

    /// With `--dns-suffix`, name every manager of our cluster that gossip
    /// knows (down ones too: their names must resolve when they return) in
    /// the hosts file; written only when the names change.
    fn keep_hosts_file(&mut self) {
        let Some(path) = self.settings.hosts_file.clone() else {
            return;
        };
        let mut records: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for mv in self.gossip.members() {
            let Some(p) = mv.payload.as_deref().and_then(PeerPayload::decode) else {
                continue;
            };
            if p.cluster_name != self.settings.cluster_name {
                continue;
            }
            records
                .entry(p.peer_api.ip().to_string())
                .or_default()
                .insert(crate::config::dns_name(&mv.id, &self.settings.dns_suffix));
        }
        records
            .entry(self.settings.peer_api.ip().to_string())
            .or_default()
            .insert(crate::config::dns_name(
                self.node.id(),
                &self.settings.dns_suffix,
            ));
        if self.last_hosts.as_ref() == Some(&records) {
            return;
        }
        match crate::hosts::update(&path, &self.settings.cluster_name, &records) {
            Ok(changed) => {
                if changed {
                    tracing::info!(path = %path.display(), names = records.values().map(BTreeSet::len).sum::<usize>(), "hosts file updated");
                }
                self.last_hosts = Some(records);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot update the hosts file")
            }
        }
    }

    /// Keep our gossip payload in step with the node's state.
    async fn publish_payload(&mut self) {
        let info = self.node.info().await;
        let state = info.etcd_state.as_ref();
        metrics::gauge!(m::QUARANTINED).set(if state.is_some_and(|s| s.quarantined) {
            1.0
        } else {
            0.0
        });
        self.health.set_etcd_down(state.is_some_and(|s| !s.running));
        let claim = self.lease.claims().borrow().clone();
        let payload = PeerPayload::from_info(&info, self.settings.peer_api, claim);
        if self.last_payload.as_ref() != Some(&payload) {
            self.gossip.set_payload(payload.encode());
            self.last_payload = Some(payload);
        }
    }

    /// Write the status report when it changed or is getting old.
    async fn write_status(&mut self, obs: &Observation, plan: &Plan) {
        use crate::status::{ClusterStatus, STATUS_FILE, STATUS_REFRESH};
        let wall = self
            .clock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut status = ClusterStatus::from_pass(obs, plan, wall);
        status.warnings = self.settings.warnings.clone();
        if !self.settings.delta_interval.is_zero() {
            let d = self.delta.status();
            status.continuous_backup = Some(match (d.gap, d.base) {
                (Some(gap), _) => format!("GAP: {gap}; a full backup starts a new chain"),
                (None, Some(base)) => format!("on, chain from backup {base}"),
                (None, None) => "on, starting".into(),
            });
        }
        if let Some((_, c)) = &self.control {
            status.warnings.extend(
                c.malformed
                    .iter()
                    .map(|f| format!("skipping malformed {}: {}", f.path, f.reason)),
            );
        }
        let last_change = self
            .last_status
            .as_ref()
            .and_then(|(l, _)| l.version_change.clone());
        if let Some(v) = &status.version_change
            && last_change.as_ref() != Some(v)
        {
            tracing::info!(change = %v, "version change planned");
        }
        let now = self.clock.now();
        if let Some((last, at)) = &self.last_status
            && last.same_content(&status)
            && now.saturating_duration_since(*at) < STATUS_REFRESH
        {
            return;
        }
        let body = serde_json::to_vec_pretty(&status).unwrap_or_default();
        match self.store.write_manager_file(STATUS_FILE, body).await {
            Ok(()) => self.last_status = Some((status, now)),
            Err(e) => tracing::warn!(error = %e, "could not write the status report"),
        }
    }

    fn note_leadership(&mut self, epoch: Option<u64>) {
        let leader = epoch.is_some();
        if leader != self.was_leader {
            metrics::counter!(m::LEADER_CHANGES).increment(1);
            // Whatever changed while we were not leading, read it afresh.
            self.control = None;
            self.steady = false;
            self.etcd_clients.clear();
            if leader {
                tracing::info!(epoch, "became leader");
                self.last_backup = None;
                // A new leader gives every member a full grace period.
                self.unhealthy_since.clear();
            } else {
                tracing::info!("no longer leader");
            }
            self.was_leader = leader;
        }
        metrics::gauge!(m::IS_LEADER).set(if leader { 1.0 } else { 0.0 });
        metrics::gauge!(m::LEASE_EPOCH)
            .set(epoch.unwrap_or(self.lease.highest_epoch_seen()) as f64);
    }

    fn report_waits(&mut self, plan: &Plan) {
        let texts: Vec<String> = plan.waits.iter().map(ToString::to_string).collect();
        for w in &plan.waits {
            metrics::counter!(m::RECONCILE_WAITS, "reason" => w.label()).increment(1);
        }
        if texts != self.last_waits {
            for (w, t) in plan.waits.iter().zip(&texts) {
                tracing::info!(reason = w.label(), "{t}");
            }
            self.last_waits = texts;
        }
    }

    async fn observe(
        &mut self,
        epoch: u64,
        peers: &BTreeMap<String, SocketAddr>,
    ) -> Result<Observation, String> {
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
            recover_quorum_requested,
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
        let cluster = observe_cluster(
            &infos,
            self.settings.etcd_tls.as_ref(),
            &mut self.etcd_clients,
            self.settings.etcd_quota_bytes,
        )
        .await;
        let backups_exist = if cluster.is_none() && !created_marker {
            !self
                .store
                .list_backups()
                .await
                .map_err(executing_error)?
                .is_empty()
        } else {
            false
        };
        let allow_new_cluster = backups_exist && allow_file;
        // While the quorum is lost: the newest backup and its revision (a
        // quorum recovery compares it with the survivors').
        let quorum_lost = cluster.as_ref().is_some_and(|c| {
            let voters = c.members.iter().filter(|m| !m.is_learner).count();
            let healthy = c
                .members
                .iter()
                .filter(|m| !m.is_learner && m.healthy)
                .count();
            voters > 0 && healthy < controller::quorum(voters)
        });
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
            new_cluster_token: new_token(),
            commands,
            last_retention: self.last_retention,
            backup_requested,
            delta_full_needed: self.delta.full_needed(),
            defrag_requested: defrag_requested
                .map(|(file, member)| controller::DefragRequest { file, member }),
            allow_new_cluster,
            unhealthy_since: self.unhealthy_since.clone(),
            silent_since: self.silent_since.clone(),
            replace_grace: self.settings.replace_grace,
            defrag: self.settings.defrag,
            v2store,
            settings,
            restore_clear_prefixes: self.settings.restore_clear_prefixes.clone(),
            prefixes_cleared: self.prefixes_cleared.clone(),
            quorum_recovery: controller::QuorumRecovery {
                requested: recover_quorum_requested.then(|| RECOVER_QUORUM_FILE.to_string()),
                auto_after: self.settings.auto_recover_quorum_loss,
                latest_backup,
            },
            unverified_backup: self.unverified_backup.clone(),
            verify_requested,
            retired_tokens,
        })
    }

    /// etcd's NOSPACE alarm, as etcd's maintenance guide clears it: compact
    /// the history to the current revision, defragment every healthy member
    /// (the raft leader last), disarm. An alarm back within a minute means
    /// the data itself is at the quota: that is an error (and backs off).
    async fn clear_space_alarm(&mut self, obs: &Observation) -> Result<(), String> {
        let now = self.clock.now();
        if self
            .last_space_clear
            .is_some_and(|at| now.saturating_duration_since(at) < SPACE_ALARM_AGAIN)
        {
            return Err(
                "etcd's NOSPACE alarm came back within a minute of clearing it: the data itself \
                 is at the quota; raise ETCD_QUOTA_BACKEND_BYTES (etcd's --quota-backend-bytes) \
                 or delete data"
                    .into(),
            );
        }
        let tls = self.settings.etcd_tls.as_ref();
        let client = cluster_client(obs, tls).await?;
        let alarmed: Vec<u64> = client
            .alarms()
            .await
            .map_err(executing_error)?
            .into_iter()
            .filter(|(_, kind)| kind == "NOSPACE")
            .map(|(m, _)| m)
            .collect();
        if alarmed.is_empty() {
            return Ok(());
        }
        let revision = client.status().await.map_err(executing_error)?.revision;
        client.compact(revision).await.map_err(executing_error)?;
        tracing::info!(revision, "space alarm: history compacted");
        let mut members: Vec<(u64, String, bool)> = obs
            .cluster
            .as_ref()
            .map(|c| {
                c.members
                    .iter()
                    .filter(|m| m.healthy)
                    .map(|m| (m.id, m.name.clone(), m.is_leader))
                    .collect()
            })
            .unwrap_or_default();
        members.sort_by_key(|(_, _, leader)| *leader);
        for (id, name, _) in members {
            self.defragment(obs, id, &name, false).await?;
            tracing::info!(member = %name, "space alarm: member defragmented");
        }
        for m in alarmed {
            client.disarm_nospace(m).await.map_err(executing_error)?;
        }
        metrics::counter!(m::SPACE_ALARMS_CLEARED).increment(1);
        tracing::info!("space alarm cleared: etcd takes writes again");
        self.last_space_clear = Some(now);
        Ok(())
    }

    /// Defragment member `name` (its own endpoint); when it is the raft
    /// leader, hand leadership to another healthy voter first, so the
    /// cluster keeps a leader that answers while this one is busy.
    async fn defragment(
        &mut self,
        obs: &Observation,
        member_id: u64,
        name: &str,
        move_leader: bool,
    ) -> Result<(), String> {
        let tls = self.settings.etcd_tls.as_ref();
        let endpoints = healthy_endpoints(obs);
        let ep = endpoints
            .iter()
            .find(|(id, _)| *id == name)
            .map(|(_, ep)| ep.clone())
            .ok_or_else(|| format!("member {name} has no healthy endpoint"))?;
        let client =
            etcd::EtcdClient::connect_with(std::slice::from_ref(&ep), ETCD_DEFRAG_TIMEOUT, tls)
                .await
                .map_err(executing_error)?;
        if move_leader {
            let to = obs
                .cluster
                .as_ref()
                .and_then(|c| {
                    c.members
                        .iter()
                        .find(|m| m.id != member_id && m.healthy && !m.is_learner)
                })
                .map(|m| (m.id, m.name.clone()))
                .ok_or("no other healthy voter to hand raft leadership to")?;
            client.move_leader(to.0).await.map_err(executing_error)?;
            tracing::info!(from = %name, to = %to.1, "raft leadership moved before defragmenting");
        }
        let before = client.status().await.map_err(executing_error)?.db_size;
        let started = self.clock.now();
        client.defragment().await.map_err(executing_error)?;
        let seconds = self
            .clock
            .now()
            .saturating_duration_since(started)
            .as_secs_f64();
        let after = client.status().await.map_err(executing_error)?.db_size;
        let freed = (before - after).max(0);
        metrics::counter!(m::DEFRAGS).increment(1);
        metrics::counter!(m::DEFRAG_FREED).increment(freed as u64);
        metrics::gauge!(m::DEFRAG_DURATION).set(seconds);
        tracing::info!(member = %name, seconds, before, after, freed, "member defragmented");
        Ok(())
    }

    /// Move each peer's etcd onto (true) or off (false) its quarantine URLs.
    async fn set_quarantine(
        &self,
        peers: &[String],
        quarantined: bool,
        fence: &Fence,
    ) -> Result<(), String> {
        let pc = &self.settings.peers.clone();
        let req = Request::Reconfigure(Reconfigure {
            fence: fence.clone(),
            quarantined: Some(quarantined),
            etcd_version: None,
        });
        for p in peers {
            pc.call(self.addr_of(p)?, &req, JOIN_TIMEOUT)
                .await
                .map_err(executing_error)?;
        }
        Ok(())
    }

    fn addr_of(&self, id: &str) -> Result<SocketAddr, String> {
        self.alive_peers()
            .get(id)
            .copied()
            .ok_or_else(|| format!("peer {id} is gone"))
    }

    fn fence(&self, epoch: u64) -> Fence {
        Fence {
            cluster_name: self.settings.cluster_name.clone(),
            leader_id: self.node.id().to_string(),
            epoch,
            lease_seq: self.lease.seq(),
        }
    }

    async fn execute(&mut self, plan: Plan, epoch: u64, obs: &Observation) -> bool {
        let mut acted = false;
        for action in plan.actions {
            // Rule 1: act only while the lease is valid, judged again before every action.
            if self.lease.held(self.clock.now()) != Some(epoch) {
                tracing::warn!(action = action.label(), "lease no longer held; stopping");
                break;
            }
            tracing::info!(action = action.label(), details = ?action, "executing");
            let result = self.execute_one(&action, epoch, obs).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!(m::RECONCILE_ACTIONS, "action" => action.label(), "result" => label)
                .increment(1);
            acted = true;
            match result {
                Ok(()) => {
                    self.backoff.succeeded(action.label());
                    metrics::gauge!(m::ACTION_BACKOFF, "action" => action.label()).set(0.0);
                }
                Err(e) => {
                    let wait = self.backoff.failed(action.label(), self.clock.now(), &e);
                    metrics::gauge!(m::ACTION_BACKOFF, "action" => action.label())
                        .set(wait.as_secs_f64());
                    tracing::warn!(action = action.label(), error = %e, retry_in = ?wait, "action failed");
                    break;
                }
            }
        }
        acted
    }

    /// How long a membership change may keep retrying: `ETCD_MEMBERSHIP_RETRY`, cut to
    /// what is left of the lease.
    fn membership_deadline(&self) -> Result<Duration, String> {
        let left = self
            .lease
            .remaining(self.clock.now())
            .ok_or("lease no longer held")?;
        Ok(crate::leadership::retry_deadline(
            ETCD_MEMBERSHIP_RETRY,
            left,
        ))
    }

    async fn execute_one(
        &mut self,
        action: &Action,
        epoch: u64,
        obs: &Observation,
    ) -> Result<(), String> {
        let pc = &self.settings.peers.clone();
        let fence = self.fence(epoch);
        match action {
            Action::SeedCluster {
                token,
                version,
                peers,
            } => {
                let nodes: Vec<EtcdNodeConfig> = peers
                    .iter()
                    .filter_map(|p| info_of(obs, p))
                    .map(|i| i.node_config)
                    .collect();
                if nodes.len() != peers.len() {
                    return Err("a chosen peer vanished before seeding".into());
                }
                let mut addrs: Vec<SocketAddr> = vec![];
                for p in peers {
                    addrs.push(self.addr_of(p)?);
                }
                let join = JoinTemplate {
                    fence,
                    token: token.clone(),
                    version: version.clone(),
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
                        return Err(e.to_string());
                    }
                }
                for a in addrs {
                    pc.call(a, &join.request(JoinPhase::Initial), JOIN_TIMEOUT)
                        .await
                        .map_err(executing_error)?;
                }
                tracing::info!(%token, %version, members = peers.len(), "seeded a new quarantined cluster");
                if obs.allow_new_cluster {
                    self.store
                        .delete_manager_file(ALLOW_NEW_CLUSTER_FILE)
                        .await
                        .map_err(executing_error)?;
                }
                Ok(())
            }
            Action::WriteCreatedMarker if self.settings.static_config.is_some() => {
                // Upstream's static store: the cluster exists once this file is gone.
                let file = self
                    .node
                    .data_dir()
                    .join(crate::statics::PLEASE_CREATE_NEW_CLUSTER);
                match std::fs::remove_file(&file) {
                    Ok(()) => {
                        tracing::info!(file = %file.display(), "cluster created; removed the file that allowed it");
                        Ok(())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(format!("removing {}: {e}", file.display())),
                }
            }
            Action::WriteCreatedMarker => self
                .store
                .write_created(self.clock.wall())
                .await
                .map_err(executing_error),
            Action::LiftQuarantine { peers } => {
                self.set_quarantine(peers, false, &fence).await?;
                tracing::info!(peers = ?peers, "quarantine lifted");
                Ok(())
            }
            Action::TakeBackup { reason } => self.take_backup(epoch, obs, *reason).await,
            Action::AddMember {
                peer: id,
                learner,
                token,
                version,
            } => {
                let info = info_of(obs, id).ok_or_else(|| format!("peer {id} did not answer"))?;
                let client = cluster_client(obs, self.settings.etcd_tls.as_ref()).await?;
                let deadline = self.membership_deadline()?;
                let (added, all) = client
                    .member_add_retrying(&info.node_config.peer_urls, *learner, deadline)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(peer = %id, member_id = added.id, learner, "member added");
                self.start_member(id, &info, &all, token, version, &fence)
                    .await
            }
            Action::StartAddedMember {
                peer: id,
                member_id: _,
                token,
                version,
            } => {
                let info = info_of(obs, id).ok_or_else(|| format!("peer {id} did not answer"))?;
                let client = cluster_client(obs, self.settings.etcd_tls.as_ref()).await?;
                let all = client.member_list().await.map_err(executing_error)?;
                self.start_member(id, &info, &all, token, version, &fence)
                    .await
            }
            Action::EnableDowngrade { minor } => {
                let client = cluster_client(obs, self.settings.etcd_tls.as_ref()).await?;
                client
                    .enable_downgrade(minor)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(%minor, "downgrade validated and enabled (etcd's downgrade protocol)");
                Ok(())
            }
            Action::ClearSpaceAlarm => self.clear_space_alarm(obs).await,
            Action::Defragment {
                member_id,
                name,
                move_leader,
            } => self.defragment(obs, *member_id, name, *move_leader).await,
            Action::CancelDowngrade => {
                let client = cluster_client(obs, self.settings.etcd_tls.as_ref()).await?;
                client.cancel_downgrade().await.map_err(executing_error)?;
                tracing::info!("downgrade cancelled: the spec no longer asks for it");
                Ok(())
            }
            Action::PromoteMember { member_id, name } => {
                let client = cluster_client(obs, self.settings.etcd_tls.as_ref()).await?;
                match client.member_promote(*member_id).await {
                    Ok(()) => {
                        tracing::info!(member = %name, "learner promoted to voter");
                        Ok(())
                    }
                    Err(e) => {
                        tracing::info!(member = %name, error = %e, "learner not ready for promotion yet");
                        Ok(())
                    }
                }
            }
            Action::RemoveMember { member_id, name } => {
                let client = cluster_client(obs, self.settings.etcd_tls.as_ref()).await?;
                let deadline = self.membership_deadline()?;
                client
                    .member_remove_retrying(*member_id, deadline)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(member = %name, "member removed");
                if let Ok(addr) = self.addr_of(name) {
                    pc.call(addr, &Request::StopEtcd(fence.clone()), JOIN_TIMEOUT)
                        .await
                        .map_err(executing_error)?;
                }
                Ok(())
            }
            Action::RestoreBackup {
                command,
                backup,
                token,
                version,
                peers,
            } => {
                self.restore_backup(command, backup, token, version, peers, obs, &fence)
                    .await
            }
            Action::UpgradeMember { peer: id, version } => {
                let req = Request::Reconfigure(Reconfigure {
                    fence: fence.clone(),
                    quarantined: None,
                    etcd_version: Some(version.clone()),
                });
                pc.call(self.addr_of(id)?, &req, JOIN_TIMEOUT)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(peer = %id, %version, "member restarted on the new version");
                Ok(())
            }
            Action::Quarantine { peers } => {
                self.set_quarantine(peers, true, &fence).await?;
                tracing::info!(peers = ?peers, "quarantined: clients are kept out");
                Ok(())
            }
            Action::QueueRestore { spec } => {
                let name = self
                    .last_backup_name
                    .clone()
                    .ok_or("no backup taken by this leader to restore")?;
                let queued = self.queue_restore(&name, spec).await?;
                tracing::info!(backup = %name, version = %spec.etcd_version, command = %queued, "queued a restore for the version change");
                Ok(())
            }
            Action::VerifyBackup {
                backup,
                peer,
                request,
            } => {
                let req = Request::VerifyBackup {
                    fence: fence.clone(),
                    backup: backup.clone(),
                };
                pc.call(self.addr_of(peer)?, &req, PEER_TIMEOUT)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(%backup, %peer, "restore drill handed to a manager");
                match request {
                    Some(r) => self
                        .store
                        .delete_manager_file(r)
                        .await
                        .map_err(executing_error)?,
                    None => self.unverified_backup = None,
                }
                Ok(())
            }
            Action::GcTrashcan { peers, keep } => {
                // Best effort: a peer that cannot clean up now will on the next round.
                for p in peers.clone() {
                    let req = Request::GcTrashcan {
                        fence: fence.clone(),
                        keep: *keep,
                    };
                    match self.addr_of(&p) {
                        Ok(addr) => {
                            if let Err(e) = pc.call(addr, &req, JOIN_TIMEOUT).await {
                                tracing::warn!(peer = %p, error = %e, "trashcan clean-up failed");
                            }
                        }
                        Err(e) => {
                            tracing::debug!(peer = %p, error = %e, "trashcan clean-up skipped")
                        }
                    }
                }
                Ok(())
            }
            Action::ApplyRetention => {
                let deleted = self
                    .store
                    .apply_retention(self.clock.wall(), &self.settings.retention)
                    .await
                    .map_err(executing_error)?;
                self.last_retention = Some(self.clock.now());
                tracing::info!(deleted = deleted.len(), "retention applied");
                Ok(())
            }
            Action::CheckV2Store { peers } => {
                for id in peers {
                    let token = obs
                        .peers
                        .iter()
                        .find(|p| p.id == *id)
                        .and_then(|p| p.info.as_ref()?.etcd_state.as_ref())
                        .map(|e| e.cluster_token.clone())
                        .ok_or_else(|| format!("peer {id} runs no etcd"))?;
                    let req = Request::CheckV2Store(fence.clone());
                    let check = match pc.call(self.addr_of(id)?, &req, req.deadline()).await {
                        Ok(Response::V2Store { custom: None }) => controller::V2StoreCheck::Clean,
                        Ok(Response::V2Store { custom: Some(what) }) => {
                            controller::V2StoreCheck::Custom(what)
                        }
                        Ok(other) => {
                            controller::V2StoreCheck::Failed(format!("unexpected answer {other:?}"))
                        }
                        Err(e @ crate::peer::PeerError::Fenced { .. }) => {
                            return Err(executing_error(e));
                        }
                        Err(e) => controller::V2StoreCheck::Failed(e.to_string()),
                    };
                    tracing::info!(peer = %id, result = ?check, "v2 store checked");
                    self.v2store
                        .insert((id.clone(), token), (check, self.clock.now()));
                }
                Ok(())
            }
            Action::CheckSettings { peers, version } => {
                let req = Request::CheckSettings {
                    version: version.clone(),
                };
                for id in peers {
                    let check = match pc.call(self.addr_of(id)?, &req, req.deadline()).await {
                        Ok(Response::Settings { lost }) if lost.is_empty() => {
                            controller::SettingsCheck::Kept
                        }
                        Ok(Response::Settings { lost }) => controller::SettingsCheck::Lost(lost),
                        Ok(Response::Failed(e)) => controller::SettingsCheck::Failed(e),
                        Ok(other) => controller::SettingsCheck::Failed(format!(
                            "unexpected answer {other:?}"
                        )),
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
                    self.settings_checks
                        .insert((id.clone(), version.clone()), (check, self.clock.now()));
                }
                Ok(())
            }
            Action::DefragmentNow {
                members,
                move_leader,
                request,
            } => {
                if members.is_empty() {
                    tracing::warn!(%request, "an operator asked to defragment a member the cluster does not have; request dropped");
                }
                let last = members.len().saturating_sub(1);
                for (i, (id, name)) in members.iter().enumerate() {
                    self.defragment(obs, *id, name, *move_leader && i == last)
                        .await?;
                }
                self.store
                    .delete_manager_file(request)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(
                    members = members.len(),
                    "defragmentation an operator asked for is done"
                );
                Ok(())
            }
            Action::RecoverQuorum {
                from,
                backup,
                spec,
                request,
            } => {
                let name = match (from, backup) {
                    (Some((_, member)), _) => {
                        let ep = obs
                            .peers
                            .iter()
                            .find(|p| p.id == *member)
                            .and_then(|p| endpoint_of(p.info.as_ref()?))
                            .ok_or_else(|| format!("survivor {member} has no client URL"))?;
                        let stored = obs.spec.clone().unwrap_or_else(|| spec.clone());
                        let summary = self.backup_from(&ep, epoch, stored).await?;
                        tracing::warn!(survivor = %member, backup = %summary.name, "quorum recovery: the survivor's data stored as a backup");
                        summary.name
                    }
                    (None, Some(b)) => b.clone(),
                    (None, None) => return Err("quorum recovery without a source".into()),
                };
                // The cluster being replaced is retired before the restore is
                // queued: its members that come back later (down, not wiped)
                // are stopped instead of serving their old data.
                let old: BTreeSet<String> = obs
                    .peers
                    .iter()
                    .filter_map(|p| p.token().map(str::to_string))
                    .collect();
                for token in &old {
                    let body = serde_json::json!({
                        "retiredBy": "quorum recovery",
                        "backup": name,
                        "epoch": epoch,
                    });
                    self.store
                        .write_manager_file(
                            &retired_cluster_file(token),
                            format!("{body}\n").into_bytes(),
                        )
                        .await
                        .map_err(executing_error)?;
                    tracing::warn!(%token, "quorum recovery: the old cluster is retired; its members that come back are stopped");
                }
                let queued = self.queue_restore(&name, spec).await?;
                if let Some(r) = request {
                    self.store
                        .delete_manager_file(r)
                        .await
                        .map_err(executing_error)?;
                }
                tracing::warn!(backup = %name, command = %queued, "quorum recovery: a restore of one member queued; the cluster grows back to its spec afterwards");
                Ok(())
            }
            Action::ClearPrefixes { token, prefixes } => {
                let client = cluster_client(obs, self.settings.etcd_tls.as_ref()).await?;
                for prefix in prefixes {
                    let n = client
                        .delete_prefix(prefix)
                        .await
                        .map_err(executing_error)?;
                    tracing::info!(%prefix, deleted = n, %token, "cleared keys from the restored cluster before clients reach it");
                }
                self.prefixes_cleared.insert(token.clone());
                Ok(())
            }
            Action::ClearBackupRequest => self
                .store
                .delete_manager_file(BACKUP_NOW_FILE)
                .await
                .map_err(executing_error),
            Action::CompleteRestore { command } => {
                self.store
                    .delete_command(command)
                    .await
                    .map_err(executing_error)?;

                tracing::info!(%command, "restore complete; command removed");
                Ok(())
            }
            Action::StopEtcd { peer: id } => pc
                .call(
                    self.addr_of(id)?,
                    &Request::StopEtcd(fence.clone()),
                    JOIN_TIMEOUT,
                )
                .await
                .map(|_| ())
                .map_err(executing_error),
        }
    }

    async fn start_member(
        &self,
        id: &str,
        info: &NodeInfo,
        members: &[etcd::Member],
        token: &str,
        version: &str,
        fence: &Fence,
    ) -> Result<(), String> {
        let pc = &self.settings.peers.clone();
        let nodes: Vec<EtcdNodeConfig> = members
            .iter()
            .map(|mb| {
                let is_new = mb
                    .peer_urls
                    .iter()
                    .any(|u| info.node_config.peer_urls.contains(u));
                EtcdNodeConfig {
                    name: if is_new {
                        id.to_string()
                    } else {
                        mb.name.clone()
                    },
                    peer_urls: mb.peer_urls.clone(),
                    client_urls: mb.client_urls.clone(),
                    quarantined_client_urls: vec![],
                }
            })
            .collect();
        let addr = self.addr_of(id)?;
        let join = JoinTemplate {
            fence: fence.clone(),
            token: token.to_string(),
            version: version.to_string(),
            quarantined: false,
            nodes,
        };
        pc.call(addr, &join.request(JoinPhase::Prepare), PEER_TIMEOUT)
            .await
            .map_err(executing_error)?;
        pc.call(addr, &join.request(JoinPhase::JoinExisting), JOIN_TIMEOUT)
            .await
            .map_err(executing_error)?;
        tracing::info!(peer = %id, "new member started");
        Ok(())
    }

    /// Verify first (nothing is touched if the backup is missing or corrupt),
    /// then record the new token, stop every etcd, restore on the chosen peers.
    #[allow(clippy::too_many_arguments)]
    async fn restore_backup(
        &mut self,
        command: &str,
        backup: &str,
        token: &str,
        version: &str,
        peers: &[String],
        obs: &Observation,
        fence: &Fence,
    ) -> Result<(), String> {
        let pc = &self.settings.peers.clone();
        match self.verify_backup(backup, version).await {
            Ok(()) => {}
            Err((true, reason)) => {
                tracing::error!(%command, %backup, %reason, "restore refused");
                let key = (command.to_string(), backup.to_string());
                self.refused.insert(key, reason.clone());
                return Err(reason);
            }
            Err((false, reason)) => {
                return Err(format!("cannot verify backup {backup} now: {reason}"));
            }
        }
        let nodes: Vec<EtcdNodeConfig> = peers
            .iter()
            .filter_map(|p| info_of(obs, p))
            .map(|i| i.node_config)
            .collect();
        if nodes.len() != peers.len() {
            return Err("a chosen peer vanished before the restore".into());
        }
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
            .map_err(executing_error)?;
        // Stop every etcd first, so no member of the old cluster serves while the new one forms.
        let running: Vec<String> = obs
            .peers
            .iter()
            .filter(|p| p.info.as_ref().is_some_and(|i| i.etcd_state.is_some()))
            .map(|p| p.id.clone())
            .collect();
        for p in running {
            let addr = self.addr_of(&p)?;
            pc.call(addr, &Request::StopEtcd(fence.clone()), JOIN_TIMEOUT)
                .await
                .map_err(executing_error)?;
        }
        let req = Request::RestoreBackup(peer::RestoreBackup {
            fence: fence.clone(),
            cluster_token: token.to_string(),
            backup: backup.to_string(),
            etcd_version: version.to_string(),
            nodes,
        });
        for addr in targets {
            pc.call(addr, &req, RESTORE_TIMEOUT)
                .await
                .map_err(executing_error)?;
        }
        tracing::info!(%backup, %token, %version, members = peers.len(), "backup restored into a new quarantined cluster");
        Ok(())
    }

    /// Download and check a backup on the leader before anything is touched.
    /// Err((true, why)): the backup itself is unusable (missing, corrupt);
    /// Err((false, why)): a passing problem (store unreachable, disk), try later.
    async fn verify_backup(&self, backup: &str, version: &str) -> Result<(), (bool, String)> {
        let dir = &self.settings.scratch_dir;
        std::fs::create_dir_all(dir).map_err(|e| (false, format!("{}: {e}", dir.display())))?;
        let file = dir.join("verify.db");
        let result = async {
            let got = self.store.download_backup(backup, &file).await.map_err(|e| (!e.is_retryable(), e.to_string()))?;
            if !got.verified_checksum {
                let v: etcd::EtcdVersion = version.parse().map_err(|e: etcd::Error| (true, e.to_string()))?;
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

    async fn take_backup(
        &mut self,
        epoch: u64,
        obs: &Observation,
        reason: controller::BackupReason,
    ) -> Result<(), String> {
        let started = self.clock.now();
        let result = self.backup_once(epoch, obs).await;
        let label = if result.is_ok() { "success" } else { "failure" };
        metrics::counter!(m::BACKUPS, "result" => label).increment(1);
        let summary = result?;
        let secs = self
            .clock
            .now()
            .saturating_duration_since(started)
            .as_secs_f64();
        self.last_backup = Some(self.clock.now());
        self.last_backup_name = Some(summary.name.clone());
        self.delta.full_taken();
        if reason == controller::BackupReason::Periodic && self.settings.backup_verify_every > 0 {
            self.backups_since_drill += 1;
            if self.backups_since_drill >= self.settings.backup_verify_every {
                self.backups_since_drill = 0;
                self.unverified_backup = Some(summary.name.clone());
            }
        }
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

    async fn backup_once(
        &self,
        epoch: u64,
        obs: &Observation,
    ) -> Result<backup::BackupSummary, String> {
        let spec: ClusterSpec = obs.spec.clone().ok_or("no spec")?;
        // Prefer our own member; any healthy one will do.
        let mut endpoints = healthy_endpoints(obs);
        endpoints.sort_by_key(|(id, _)| *id != self.node.id());
        let (_, endpoint) = endpoints
            .into_iter()
            .next()
            .ok_or("no healthy member to back up from")?;
        self.backup_from(&endpoint, epoch, spec).await
    }

    /// Queue a restore of `backup` on `spec`, as an operator's
    /// `restore-backup` command would: the command's name.
    async fn queue_restore(&self, backup: &str, spec: &ClusterSpec) -> Result<String, String> {
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
            .map_err(executing_error)
    }

    /// A backup of the member behind `endpoint` (a snapshot is read from
    /// that member alone: it needs no quorum).
    async fn backup_from(
        &self,
        endpoint: &str,
        epoch: u64,
        spec: ClusterSpec,
    ) -> Result<backup::BackupSummary, String> {
        let endpoint = endpoint.to_string();
        let client = etcd::EtcdClient::connect_with(
            std::slice::from_ref(&endpoint),
            ETCD_TIMEOUT,
            self.settings.etcd_tls.as_ref(),
        )
        .await
        .map_err(executing_error)?;
        let status = client.status().await.map_err(executing_error)?;
        let kv_hash = crate::drill::cluster_hash(&client, status.revision).await;
        let stream = client.snapshot().await.map_err(executing_error)?;
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
                },
                wall,
            )
            .await
            .map_err(executing_error)
    }
}

/// The parts of a JoinCluster request that stay the same across its phases.
struct JoinTemplate {
    fence: Fence,
    token: String,
    version: String,
    quarantined: bool,
    nodes: Vec<EtcdNodeConfig>,
}

impl JoinTemplate {
    fn request(&self, phase: JoinPhase) -> Request {
        Request::JoinCluster(JoinCluster {
            fence: self.fence.clone(),
            phase,
            cluster_token: self.token.clone(),
            etcd_version: self.version.clone(),
            quarantined: self.quarantined,
            nodes: self.nodes.clone(),
        })
    }
}

/// What identifies one queued restore command.
fn command_key(c: &backup::StoredCommand) -> Option<(String, String)> {
    let r = c.command.restore_backup.as_ref()?;
    Some((c.name.clone(), r.backup.clone()))
}

fn info_of(obs: &Observation, id: &str) -> Option<NodeInfo> {
    obs.peers
        .iter()
        .find(|p| p.id == id)
        .and_then(|p| p.info.clone())
}

/// A random cluster token (the only randomness the leader needs).
#[allow(clippy::disallowed_methods)]
fn new_token() -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The client URLs a peer's etcd listens on right now.
fn endpoint_of(info: &NodeInfo) -> Option<String> {
    let state = info.etcd_state.as_ref().filter(|s| s.running)?;
    let urls = if state.quarantined {
        &info.node_config.quarantined_client_urls
    } else {
        &info.node_config.client_urls
    };
    urls.first().cloned()
}

fn healthy_endpoints(obs: &Observation) -> Vec<(&str, String)> {
    let Some(cluster) = &obs.cluster else {
        return vec![];
    };
    obs.peers
        .iter()
        .filter(|p| cluster.members.iter().any(|m| m.healthy && m.name == p.id))
        .filter_map(|p| Some((p.id.as_str(), endpoint_of(p.info.as_ref()?)?)))
        .collect()
}

async fn cluster_client(
    obs: &Observation,
    tls: Option<&etcd::ClientTls>,
) -> Result<etcd::EtcdClient, String> {
    let endpoints: Vec<String> = healthy_endpoints(obs).into_iter().map(|(_, e)| e).collect();
    if endpoints.is_empty() {
        return Err("no healthy etcd endpoint".into());
    }
    etcd::EtcdClient::connect_with(&endpoints, ETCD_TIMEOUT, tls)
        .await
        .map_err(executing_error)
}

/// One member's etcd that answered [`observe_cluster`].
struct Answer {
    status: etcd::EndpointStatus,
    healthy: bool,
    client: etcd::EtcdClient,
    endpoint: String,
}

/// Asks every peer's etcd for its status and health, and one of them for the
/// member list. `clients` holds the clients of the last pass by URL: reused
/// (a tonic channel reconnects by itself), and replaced by those that
/// answered this time, so a member that failed gets a fresh client next pass.
async fn observe_cluster(
    peers: &[PeerView],
    tls: Option<&etcd::ClientTls>,
    clients: &mut BTreeMap<String, etcd::EtcdClient>,
    quota_given: Option<i64>,
) -> Option<ClusterView> {
    let endpoints: Vec<String> = peers
        .iter()
        .filter_map(|p| endpoint_of(p.info.as_ref()?))
        .collect();
    if endpoints.is_empty() {
        clients.clear();
        return None;
    }
    let known = &*clients;
    let statuses = futures::future::join_all(endpoints.into_iter().map(|ep| async move {
        let client = match known.get(&ep) {
            Some(c) => c.clone(),
            None => etcd::EtcdClient::connect_with(std::slice::from_ref(&ep), ETCD_TIMEOUT, tls)
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
    }))
    .await;
    let alive: Vec<Answer> = statuses.into_iter().flatten().collect();
    *clients = alive
        .iter()
        .map(|a| (a.endpoint.clone(), a.client.clone()))
        .collect();
    let mut members = None;
    for Answer { client, .. } in &alive {
        if let Ok(list) = client.member_list().await {
            members = Some(list);
            break;
        }
    }
    let members = members?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::EtcdState;

    #[test]
    fn payload_round_trips_and_fits_a_gossip_packet() {
        let host = "ip-10-120-123-245.eu-central-1.compute.internal";
        let info = NodeInfo {
            id: "GEyIUF0s9J07setaePSQ3Q".into(),
            cluster_name: "main".into(),
            node_config: EtcdNodeConfig {
                name: "GEyIUF0s9J07setaePSQ3Q".into(),
                peer_urls: vec![format!("https://{host}:2380")],
                client_urls: vec![format!("https://{host}:4001")],
                quarantined_client_urls: vec![format!("https://{host}:8001")],
            },
            etcd_state: Some(EtcdState {
                cluster_token: "XypoARu3zvWjVHHmWSGr_Q".into(),
                etcd_version: "3.5.30".into(),
                quarantined: false,
                running: true,
                restarts: 0,
                nodes: vec![],
            }),
            highest_epoch: 9,
            installed_versions: vec![],
        };
        let claim = lock::LeaseClaim {
            seq: 123_456,
            nonce: "GEyIUF0s9J07setaePSQ3Q-0123456789abcdef-98765".into(),
            epoch: 12,
            duration_ms: 5000,
        };
        let p = PeerPayload::from_info(
            &info,
            "10.120.123.245:8000".parse().expect("addr"),
            Some(claim),
        );
        let bytes = p.encode();
        assert!(
            bytes.len() < 1024,
            "payload of {} bytes may not fit a gossip packet",
            bytes.len()
        );
        assert_eq!(PeerPayload::decode(&bytes), Some(p.clone()));
        assert_eq!(PeerPayload::decode(&bytes[..bytes.len() / 2]), None);

        // Mixed versions during an upgrade: an older manager's payload reads
        // with no claim, and an older manager reads ours (trailing bytes ignored).
        let config = bincode::config::standard();
        let v1 = PeerPayloadV1 {
            cluster_name: p.cluster_name.clone(),
            peer_api: p.peer_api,
            node_config: p.node_config.clone(),
            etcd: p.etcd.clone(),
        };
        let old = bincode::serde::encode_to_vec(&v1, config).expect("encode");
        let read = PeerPayload::decode(&old).expect("an older payload reads");
        assert_eq!(
            (read.lease, read.cluster_name),
            (None, p.cluster_name.clone())
        );
        let (back, _): (PeerPayloadV1, _) =
            bincode::serde::decode_from_slice(&bytes, config).expect("older managers read ours");
        assert_eq!(back.node_config, p.node_config);
    }

    #[test]
    fn a_crafted_payload_is_dropped_not_fatal() {
        // cluster_name claiming 2^42 bytes (used to abort every manager on
        // allocation), and 2^63 (capacity overflow panic).
        for len in [1u64 << 42, 1u64 << 63, u64::MAX] {
            let mut b = vec![253u8];
            b.extend_from_slice(&len.to_le_bytes());
            assert_eq!(PeerPayload::decode(&b), None);
        }
        // A well-formed payload whose token would be a path is dropped too.
        let p = PeerPayload {
            cluster_name: "c".into(),
            peer_api: "127.0.0.1:8000".parse().expect("addr"),
            node_config: EtcdNodeConfig::default(),
            etcd: Some(EtcdSummary {
                cluster_token: "../../etc".into(),
                etcd_version: "3.5.30".into(),
                running: true,
                quarantined: false,
            }),
            lease: None,
        };
        assert_eq!(PeerPayload::decode(&p.encode()), None);
    }
}
