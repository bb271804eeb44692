//! The leader loop: observe, decide (pure [`crate::controller::reconcile`]),
//! execute, repeat. Every node runs it; only the lease holder gets past the
//! leadership step. IO lives here; decisions do not.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup::{BackupStore, ClusterSpec};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Clock;
use crate::controller::{self, Observation};
use crate::driver::lease::SharedLease;
use crate::edges::{EtcdApi, EtcdConnect, Membership, PeerApi};
use crate::metrics as m;
use crate::node::Node;
use crate::peer::{EtcdNodeConfig, Fence, NodeInfo};

mod actions;
mod backups;
mod control;
mod error;
mod execute;
mod jobs;
mod leading;
pub mod lease;
mod maintenance;
mod membership;
mod observe;
mod payload;
mod reach;

pub use self::control::{defrag_request, verify_request};
pub use self::error::DriverError;
pub use self::payload::*;

const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's backend quota when none is set: 2 GiB.
const ETCD_DEFAULT_QUOTA: i64 = 2 * 1024 * 1024 * 1024;
/// A NOSPACE alarm back within this long of clearing it is not cleared again.
const SPACE_ALARM_AGAIN: Duration = Duration::from_secs(60);
/// How long one member's defragmentation may take.
const ETCD_DEFRAG_TIMEOUT: Duration = Duration::from_secs(300);
/// Backoff kinds besides the actions' labels.
const LEASE_STEP: &str = "lease_step";
const READ_CONTROL: &str = "read_control";
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
    /// Calls the other managers' peer APIs (production: [`peer::PeerClient`],
    /// TLS unless `--insecure`).
    pub peers: Arc<dyn PeerApi>,
    /// Connects to etcd (production: [`crate::edges::EtcdConnector`]).
    pub etcd: Arc<dyn EtcdConnect>,
    /// Our client identity for etcd (None with `--etcd-insecure`), for the
    /// continuous backup's watch.
    pub etcd_tls: Option<etcd::ClientTls>,
    /// New cluster tokens come from here.
    pub randomness: Arc<dyn crate::edges::Randomness>,
    /// Configuration warnings shown in `status` (e.g. gossip without a key).
    pub warnings: Vec<String>,
    /// How gossip is keyed, in words (`config::GossipAuth::describe`), for
    /// `status`.
    pub gossip_mode: String,
    /// `--static-config`: the spec comes from it, no control file is read,
    /// and a new cluster needs `please-create-new-cluster` in our data dir.
    pub static_config: Option<crate::platform::statics::StaticConfig>,
    /// With `--dns-suffix`: the hosts file whose block names every member.
    pub hosts_file: Option<std::path::PathBuf>,
    pub dns_suffix: String,
    /// `--delta-interval`: continuous-backup segments this often (zero: none).
    pub delta_interval: Duration,
    /// How long after start this manager waits before it seeks the lease
    /// (production: [`crate::leadership::settle_time`] of gossip's refresh).
    pub gossip_settle: Duration,
    /// All on in production (no flag sets them); see [`crate::rules`].
    pub rules: crate::rules::SafetyRules,
}

pub struct Driver {
    settings: DriverSettings,
    health: Arc<m::Health>,
    started: Instant,
    store: BackupStore,
    lease: Arc<SharedLease>,
    gossip: Arc<dyn Membership>,
    node: Arc<Node>,
    clock: Arc<dyn Clock>,
    /// The control files as last read, and when.
    control: Option<(Instant, Control)>,
    control_cache: backup::ControlCache,
    /// The last plan had neither actions nor waits.
    steady: bool,
    /// Nothing to do or wait for (a steady leader, or not the candidate): the
    /// next pass comes after the controller interval, else within [`WAITING_INTERVAL`].
    idle: bool,
    /// Who was alive in gossip at the last look (a change starts a pass).
    last_alive: BTreeSet<String>,
    /// Claims already counted: one is counted when first seen, not again.
    seen_claims: std::collections::BTreeSet<(u64, String)>,
    last_backup: Option<Instant>,
    was_leader: bool,
    /// etcd clients of the last pass by client URL, kept while they answer (a
    /// new client per member per pass cost a TLS handshake each, most of an idle leader's CPU).
    etcd_clients: BTreeMap<String, Arc<dyn EtcdApi>>,
    pass: u64,
    last_waits: Vec<String>,
    last_payload: Option<PeerPayload>,
    last_status: Option<(crate::status::ClusterStatus, Instant)>,
    following: jobs::Following,
    /// Restore commands this leader refused, by (command, backup), so a new
    /// command that reuses a deleted one's folder name is judged anew.
    refused: BTreeMap<(String, String), String>,
    last_retention: Option<Instant>,
    /// The backup this leader took last (a dump-and-restore restores it).
    last_backup_name: Option<String>,
    /// The `backup-now` request the last on-demand backup answered.
    backup_request: Option<bytes::Bytes>,
    /// The recover-quorum request last read, and when this leader first
    /// read that body (a request without a stamp ages from then).
    recover_seen: Option<(bytes::Bytes, Instant)>,
    /// Periodic backups since the last one given to a restore drill.
    backups_since_drill: u32,
    /// A backup awaiting its restore drill.
    unverified_backup: Option<String>,
    unhealthy_since: BTreeMap<u64, Instant>,
    /// Since when each member has not answered at all (no progress), and
    /// what each manager said last in gossip about its etcd.
    silent_since: BTreeMap<u64, Instant>,
    last_words: BTreeMap<String, reach::LastWord>,
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
    /// Whether gossip's settle time since start has passed (logged once).
    gossip_settled: bool,
    /// How many malformed control files the last read reported (logged on change).
    malformed_seen: usize,
    /// What the hosts file's block last said.
    last_hosts: Option<BTreeMap<String, BTreeSet<String>>>,
    /// The continuous backup: what it should follow, where it stands, and
    /// the streamer until [`Driver::run`] starts it.
    delta_target: tokio::sync::watch::Sender<Option<crate::backups::delta::DeltaTarget>>,
    delta: Arc<crate::backups::delta::DeltaShared>,
    delta_streamer: Option<crate::backups::delta::DeltaStreamer>,
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
    /// Clusters a leader saw serve (see [`backup::layout::SERVED_CLUSTER_FILE`]).
    served_tokens: BTreeSet<String>,
    /// `etcd-manager-ctl recover-quorum`'s request file, its body.
    recover_quorum_request: Option<bytes::Bytes>,
    allow_new_cluster: bool,
    commands: Vec<backup::StoredCommand>,
    created_marker: bool,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut settings: DriverSettings,
        health: Arc<m::Health>,
        store: BackupStore,
        lease: lock::LeaseClient,
        gossip: Arc<dyn Membership>,
        node: Arc<Node>,
        clock: Arc<dyn Clock>,
    ) -> Driver {
        let started = clock.now();
        let lease = SharedLease::new(lease, clock.clone());
        settings.peers = leading::LeaseGuard::around(&settings, &lease, &clock);
        let (delta_target, target_rx) = tokio::sync::watch::channel(None);
        let delta = Arc::new(crate::backups::delta::DeltaShared::default());
        let delta_streamer =
            (!settings.delta_interval.is_zero()).then(|| crate::backups::delta::DeltaStreamer {
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
            lease,
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
            following: Default::default(),
            refused: BTreeMap::new(),
            last_retention: None,
            last_backup_name: None,
            backup_request: None,
            recover_seen: None,
            backups_since_drill: 0,
            unverified_backup: None,
            unhealthy_since: BTreeMap::new(),
            silent_since: BTreeMap::new(),
            last_words: BTreeMap::new(),
            v2store: BTreeMap::new(),
            settings_checks: BTreeMap::new(),
            prefixes_cleared: BTreeSet::new(),
            latest_backup: None,
            backoff: Default::default(),
            last_space_clear: None,
            had_majority: false,
            gossip_settled: false,
            malformed_seen: 0,
            last_hosts: None,
            delta_target,
            delta,
            delta_streamer,
        }
    }

    /// Run until cancelled; then release the lease if held. The `select!`s are
    /// biased: the same order every time (a simulated seed replays exactly).
    pub async fn run(mut self, cancel: CancellationToken) {
        // A change of gossip membership (a leader leaving, a peer dying or
        // joining) starts the next pass at once: a handover takes well under a second.
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
                biased;
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
                    biased;
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
        self.remember_last_words();
        self.node.set_alive_view(peers.keys().cloned().collect());
        self.last_alive = peers.keys().cloned().collect();
        self.keep_hosts_file();
        let me = self.node.id().to_string();
        let lowest = peers.contains_key(&me)
            && crate::leadership::is_candidate(&me, peers.keys().map(String::as_str))
            && self.settled();
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
                    let wait = self.backoff.failed(LEASE_STEP, self.clock.now(), &e, false);
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

    fn addr_of(&self, id: &str) -> Result<SocketAddr, DriverError> {
        self.alive_peers()
            .get(id)
            .copied()
            .ok_or_else(|| format!("peer {id} is gone").into())
    }

    fn fence(&self, epoch: u64) -> Fence {
        Fence {
            cluster_name: self.settings.cluster_name.clone(),
            leader_id: self.node.id().to_string(),
            epoch,
            lease_seq: self.lease.seq(),
        }
    }
}

fn info_of(obs: &Observation, id: &str) -> Option<NodeInfo> {
    obs.peers
        .iter()
        .find(|p| p.id == id)
        .and_then(|p| p.info.clone())
}

/// How each of `peers` runs etcd, from their answers; an error naming
/// `before` if one of them no longer answers.
fn node_configs(
    obs: &Observation,
    peers: &[String],
    before: &str,
) -> Result<Vec<EtcdNodeConfig>, DriverError> {
    let nodes: Vec<EtcdNodeConfig> = peers
        .iter()
        .filter_map(|p| info_of(obs, p))
        .map(|i| i.node_config)
        .collect();
    if nodes.len() != peers.len() {
        return Err(format!("a chosen peer vanished before {before}").into());
    }
    Ok(nodes)
}
