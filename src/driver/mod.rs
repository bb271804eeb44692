//! The leader loop: observe, decide (pure [`crate::controller::reconcile`]),
//! execute, repeat. Every node runs it; only the lease holder gets past the
//! leadership step. IO lives here; decisions do not.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backup::{BackupStore, ClusterSpec};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Clock;
use crate::controller::{self, Observation};
use crate::core::memory::{Fact, Memory};
use crate::driver::lease::SharedLease;
use crate::edges::{EtcdConnect, Membership, PeerApi};
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
pub use self::error::{DriverError, JobError, Missing};
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
    store: BackupStore,
    lease: Arc<SharedLease>,
    gossip: Arc<dyn Membership>,
    node: Arc<Node>,
    clock: Arc<dyn Clock>,
    /// What this leader learnt across passes (see [`Memory`]): folded from
    /// what it observes and does, read into each observation.
    memory: Memory,
    /// The pace of passes: how many, whether the last was steady, what
    /// failed and when it may be tried again.
    pace: Pace,
    /// This manager's standing: since when it runs, whether gossip settled,
    /// whether a majority accepts it, whether it leads.
    standing: leading::Standing,
    /// The store's control files as last read.
    control_files: control::ControlFiles,
    /// Backup bookkeeping: when the last backup and retention ran, which
    /// backup awaits its drill, which request was answered.
    books: backups::Books,
    /// What this manager last published (gossip payload, status report,
    /// hosts file), so it writes only changes.
    published: control::Published,
    /// The jobs this leader follows (shared with their pollers).
    following: jobs::Following,
    /// The members' etcd as this leader reaches it.
    etcd_link: maintenance::EtcdLink,
    /// The continuous backup this leader points at the members.
    delta: control::DeltaLink,
}

/// The pace of the leader's passes.
#[derive(Default)]
struct Pace {
    pass: u64,
    /// The last plan had neither actions nor waits.
    steady: bool,
    /// Nothing to do or wait for (a steady leader, or not the candidate): the
    /// next pass comes after the controller interval, else within [`WAITING_INTERVAL`].
    idle: bool,
    /// Who was alive in gossip at the last look (a change starts a pass).
    last_alive: BTreeSet<String>,
    /// The waits of the last plan, as logged (logged again when they change).
    last_waits: Vec<String>,
    /// Action kinds that failed (and lease steps, reads of the control
    /// files: [`LEASE_STEP`], [`READ_CONTROL`]), and when each may be tried again.
    backoff: crate::backoff::Backoff,
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
    /// Fold `fact`, as of now, into the leader's memory.
    fn remember(&mut self, fact: Fact<'_>) {
        let now = self.clock.now();
        self.memory = std::mem::take(&mut self.memory).fold(&fact, now);
    }

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
        let delta = control::DeltaLink::new(&settings, &store, &clock);
        Driver {
            settings,
            health,
            store,
            lease,
            gossip,
            node,
            clock,
            memory: Memory::default(),
            pace: Pace::default(),
            standing: leading::Standing::new(started),
            control_files: Default::default(),
            books: Default::default(),
            published: Default::default(),
            following: Default::default(),
            etcd_link: Default::default(),
            delta,
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
        if let Some(streamer) = self.delta.streamer.take() {
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
            } else if self.pace.idle {
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
                            if alive != self.pace.last_alive {
                                self.node.set_alive_view(alive.iter().cloned().collect());
                                self.pace.last_alive = alive;
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
            .saturating_duration_since(self.standing.started)
            .as_millis() as u64;
        self.health.pass_done(now_ms);
        self.publish_payload().await;
        self.note_claims().await;
        let peers = self.alive_peers();
        self.hear_gossip();
        self.node.set_alive_view(peers.keys().cloned().collect());
        self.pace.last_alive = peers.keys().cloned().collect();
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
        if held || self.pace.backoff.waiting(LEASE_STEP, before).is_none() {
            match self.lease.tick(before, candidate).await {
                Ok(_) => {
                    metrics::counter!(m::LEASE_OPERATIONS, "result" => "ok").increment(1);
                    self.pace.backoff.succeeded(LEASE_STEP);
                }
                Err(e) => {
                    metrics::counter!(m::LEASE_OPERATIONS, "result" => "error").increment(1);
                    let e = e.to_string();
                    let wait = self
                        .pace
                        .backoff
                        .failed(LEASE_STEP, self.clock.now(), &e, false);
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
            self.delta.target.send_if_modified(|t| t.take().is_some());
            // A candidate waits for the lease; the others have nothing to do.
            self.pace.idle = !candidate;
            return false;
        };

        self.pace.pass += 1;
        let span = tracing::info_span!("reconcile", pass = self.pace.pass, epoch);
        let acted = self.reconcile_pass(epoch, &peers).instrument(span).await;
        self.pace.idle = self.pace.steady;
        acted
    }

    async fn reconcile_pass(&mut self, epoch: u64, peers: &BTreeMap<String, SocketAddr>) -> bool {
        let obs = match self.observe(epoch, peers).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "observation failed");
                self.pace.steady = false;
                return false;
            }
        };
        self.follow_changes(epoch, &obs);
        let plan = self
            .pace
            .backoff
            .gate(controller::reconcile(&obs), self.clock.now());
        self.report_waits(&plan);
        self.write_status(&obs, &plan).await;
        self.pace.steady = plan.actions.is_empty() && plan.waits.is_empty();
        let acted = self.execute(plan, epoch, &obs).await;
        if acted {
            // What we did may have changed the control files (the created
            // marker, a command's progress): read them again next pass.
            self.control_files.forget();
        }
        acted
    }

    fn addr_of(&self, id: &str) -> Result<SocketAddr, DriverError> {
        self.alive_peers()
            .get(id)
            .copied()
            .ok_or_else(|| Missing::PeerGone(id.to_string()).into())
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
        return Err(Missing::PeerVanished(before.to_string()).into());
    }
    Ok(nodes)
}
