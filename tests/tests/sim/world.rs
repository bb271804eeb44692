//! One simulated world: 3 or 5 managers, each with the real gossip core, the
//! real lease client and the real controller, on virtual time, over an
//! in-memory network, a shared fault-injecting store and a model of etcd.
//!
//! Everything random comes from one seed; everything is iterated in a fixed
//! order, so a seed always gives the same run (its trace).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use etcd_manager::controller::{self, Action, ClusterView, MemberView, Observation, PeerView};
use etcd_manager::leadership;
use etcd_manager::peer::{EtcdNodeConfig, EtcdState, NodeInfo};
use gossip::{GossipConfig, GossipCore, MemberState};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::store::{FaultyStore, StoreFaults};

const VERSION: &str = "3.5.30";
const CLUSTER: &str = "sim";
/// One step of true time.
const TICK: Duration = Duration::from_millis(100);
/// Faults happen in [FAULTS_FROM, FAULTS_UNTIL); then everything heals.
const FAULTS_FROM: Duration = Duration::from_secs(15);
const FAULTS_UNTIL: Duration = Duration::from_secs(135);
/// After healing, the cluster must be whole again by then.
const END: Duration = Duration::from_secs(255);
const CONTROLLER_INTERVAL: Duration = Duration::from_secs(1);
const ACTED_INTERVAL: Duration = Duration::from_millis(200);
const GOSSIP_REFRESH: Duration = Duration::from_secs(2);
/// How long the driver waits for a peer's answer (`driver::PEER_TIMEOUT`).
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the driver waits for a join (`driver::JOIN_TIMEOUT`).
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request the caller gave up on may still reach its target (TCP
/// keeps retransmitting after a cut heals; the peer API works on a
/// connection for up to 120 s).
const MAX_HOLD: u64 = 60;
/// How long the driver retries a membership change etcd refuses
/// (`member_add_retrying`, `member_remove_retrying` in `Driver::execute_one`).
const ETCD_RETRY: Duration = Duration::from_secs(15);
/// etcd's strict reconfiguration check refuses membership changes until the
/// cluster has been connected for 5 s after a member started.
const RECONFIG_QUIET: Duration = Duration::from_secs(5);

/// Switches for showing that the checks catch a broken safety rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    /// Nodes refuse requests with an epoch below the highest they have seen.
    pub fence: bool,
    /// A leader checks the lease again before each action (rule 1). Off: a
    /// leader that was paused mid-plan resumes the rest of its plan as it was.
    pub recheck_lease: bool,
    /// A membership change etcd refuses is retried only while the lease
    /// lasts (`leadership::retry_deadline`). Off: for the full 15 s, as
    /// before the simulation found it unsafe.
    pub bound_retries: bool,
    /// The lease margin in ms; `None`: production's (30 % of 5 s).
    pub lease_margin_ms: Option<u64>,
    /// Quorum recovery waits `--auto-recover-quorum-loss` for every lost
    /// voter. Off: the leader is given a grace of zero (the world still
    /// checks against the real one).
    pub recovery_grace: bool,
}

impl Knobs {
    pub const PRODUCTION: Knobs = Knobs {
        fence: true,
        recheck_lease: true,
        bound_retries: true,
        lease_margin_ms: None,
        recovery_grace: true,
    };
}

/// A broken invariant, with the step where it broke.
#[derive(Debug, Clone)]
pub struct Violation {
    pub at: Duration,
    pub what: String,
}

/// The outcome of one seed.
#[derive(Debug)]
pub struct Outcome {
    pub nodes: usize,
    pub trace: Vec<String>,
    pub violation: Option<Violation>,
    /// Leader actions applied (peer requests admitted, store writes).
    pub effects: usize,
    /// Requests refused by a fence.
    pub fenced: usize,
    pub leaderships: usize,
    pub store_faults: u64,
    /// Requests that reached their target after the caller gave up.
    pub late: usize,
    /// Of those, admitted although a newer epoch had already acted
    /// elsewhere (the target had not seen it): the fence orders requests
    /// per node, not across nodes.
    pub stale_admitted: usize,
    /// Quorum recoveries the leaders ran (after a majority was wiped).
    pub recoveries: usize,
}

/// The model of one manager's etcd process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalEtcd {
    token: String,
    quarantined: bool,
    running: bool,
}

/// One etcd member in the model.
#[derive(Debug, Clone)]
struct Member {
    /// The node it belongs to.
    node: usize,
    /// Started (a name) or only registered.
    started: bool,
    learner: bool,
    /// How far its raft log is (the model's commit count when it last
    /// served with quorum): what a quorum recovery compares.
    index: u64,
}

#[derive(Debug, Clone, Default)]
struct EtcdModel {
    token: String,
    members: BTreeMap<u64, Member>,
    next_id: u64,
    /// Entries committed while the cluster had quorum (one per tick).
    commit: u64,
}

/// What a fenced request does on its target once admitted.
#[derive(Debug, Clone)]
enum OnTarget {
    Nothing,
    Quarantine(bool),
    /// Start etcd as this member (a join).
    Start {
        member_id: u64,
        token: String,
    },
    /// Stop etcd and forget the assignment.
    Drop,
}

/// A fenced request whose caller gave up (a cut, loss, a paused target) but
/// that is still on its way: it lands when the link and the target are back,
/// unless it is too old by then or the target crashed.
#[derive(Debug, Clone)]
struct InFlight {
    until: Duration,
    from: usize,
    to: usize,
    epoch: u64,
    what: OnTarget,
}

/// A membership change the driver keeps retrying while etcd refuses it.
#[derive(Debug, Clone)]
enum Change {
    Add {
        node: usize,
        learner: bool,
        token: String,
    },
    Remove {
        member_id: u64,
    },
}

#[derive(Debug, Clone)]
struct EtcdCall {
    from: usize,
    epoch: u64,
    change: Change,
    until: Duration,
}

/// A pass interrupted by a pause: the rest of its plan and its epoch.
#[derive(Debug, Clone)]
struct Pending {
    epoch: u64,
    actions: Vec<Action>,
}

struct Node {
    id: String,
    addr: SocketAddr,
    /// Clock rate against true time (0.9 .. 1.1).
    rate: f64,
    up: bool,
    paused_until: Option<Duration>,
    pause_next_pass: Option<Duration>,
    /// The driver waits for a peer's answer until then (gossip and the
    /// node's peer API carry on; only the leader loop is stuck).
    blocked_until: Option<Duration>,
    gossip: Option<GossipCore>,
    lease: lock::LeaseClient,
    /// The lease claim last put in our gossip payload.
    claimed: Option<lock::LeaseClaim>,
    /// Persisted across crashes, like `state.json`.
    highest_epoch: u64,
    etcd: Option<LocalEtcd>,
    next_pass: Instant,
    next_refresh: Instant,
    was_leader: Option<u64>,
    last_backup: Option<Instant>,
    unhealthy_since: BTreeMap<u64, Instant>,
    silent_since: BTreeMap<u64, Instant>,
    pending: Option<Pending>,
    restarts: u64,
    last_waits: Vec<String>,
}

struct Packet {
    at: Duration,
    seq: u64,
    from: usize,
    to: usize,
    data: bytes::Bytes,
}

#[derive(Debug, Clone, Copy)]
struct Effect {
    at: Duration,
    node: usize,
    epoch: u64,
}

pub struct World {
    seed: u64,
    knobs: Knobs,
    rng: StdRng,
    origin: Instant,
    now: Duration,
    nodes: Vec<Node>,
    /// cut[a][b]: packets from a to b are dropped.
    cut: Vec<Vec<bool>>,
    loss: f64,
    max_delay: Duration,
    packets: Vec<Packet>,
    packet_seq: u64,
    inflight: Vec<InFlight>,
    late: usize,
    stale_admitted: usize,
    store: FaultyStore,
    created_marker: bool,
    backups_exist: bool,
    etcd: EtcdModel,
    effects: Vec<Effect>,
    actors: BTreeMap<u64, usize>,
    fenced: usize,
    leaderships: Vec<(Duration, usize, u64)>,
    trace: Vec<String>,
    violation: Option<Violation>,
    faults: Vec<(Duration, Fault)>,
    tokens: u64,
    /// `--member-replace-grace` of this run (10 s .. upstream's 1 min).
    replace_grace: Duration,
    /// Faults in progress, with when they end.
    ending: Vec<(Duration, Fault)>,
    /// An armed `IsolateLeader`: how long the isolation lasts.
    isolate_next_request: Option<Duration>,
    /// Membership changes being retried.
    etcd_calls: Vec<EtcdCall>,
    /// etcd accepts membership changes again from then on.
    reconfig_ok_at: Duration,
    /// `--auto-recover-quorum-loss` of this run (None: off).
    auto_recover: Option<Duration>,
    /// Cluster tokens a quorum recovery retired (the store's files).
    retired: BTreeSet<String>,
    recoveries: usize,
    /// Since when (true time) member id has been unable to serve node i:
    /// down, or cut off from it. Keyed (i, member id).
    gone_since: BTreeMap<(usize, u64), Duration>,
}

#[derive(Debug, Clone)]
enum Fault {
    Partition {
        side: Vec<usize>,
        for_: Duration,
    },
    Bridge {
        a: usize,
        c: usize,
        for_: Duration,
    },
    OneWay {
        from: usize,
        to: usize,
        for_: Duration,
    },
    Loss {
        p: f64,
        for_: Duration,
    },
    Delay {
        max: Duration,
        for_: Duration,
    },
    Store {
        faults: StoreFaults,
        for_: Duration,
    },
    Crash {
        node: usize,
        for_: Duration,
    },
    PauseLeader {
        for_: Duration,
    },
    /// Cut the leader off from every peer just as it sends its next fenced
    /// request: its successor takes over while that request is on its way.
    IsolateLeader {
        for_: Duration,
    },
    /// The hosts of a majority of the voters (never all of them) wiped at
    /// once: each manager comes back at once with its etcd data gone (only
    /// in runs with automatic quorum recovery).
    WipeMajority,
    Heal,
}

fn lease_config(knobs: Knobs) -> lock::LeaseConfig {
    let production = lock::LeaseConfig::default();
    match knobs.lease_margin_ms {
        None => production,
        Some(ms) => lock::LeaseConfig::for_tests(
            production.duration,
            Duration::from_millis(ms),
            production.renew_interval,
        ),
    }
}

impl World {
    pub fn new(seed: u64, nodes: Option<usize>, knobs: Knobs) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = nodes.unwrap_or(if rng.random_bool(0.5) { 3 } else { 5 });
        let origin = Instant::now();
        let store = FaultyStore::new(rng.random());
        let lease_prefix = object_store::path::Path::from("etcd-manager/lease");
        let mut list = Vec::new();
        for i in 0..n {
            let id = format!("n{}", i + 1);
            let rate = rng.random_range(0.9..1.1);
            let lease = lock::LeaseClient::new(
                std::sync::Arc::new(store.clone()),
                lease_prefix.clone(),
                id.clone(),
                lease_config(knobs),
            )
            .with_instance(rng.random());
            list.push(Node {
                addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 8000)),
                id,
                rate,
                up: true,
                paused_until: None,
                pause_next_pass: None,
                blocked_until: None,
                gossip: None,
                lease,
                claimed: None,
                highest_epoch: 0,
                etcd: None,
                next_pass: origin,
                next_refresh: origin,
                was_leader: None,
                last_backup: None,
                unhealthy_since: BTreeMap::new(),
                silent_since: BTreeMap::new(),
                pending: None,
                restarts: 0,
                last_waits: Vec::new(),
            });
        }
        let mut w = World {
            seed,
            knobs,
            origin,
            now: Duration::ZERO,
            cut: vec![vec![false; n]; n],
            loss: 0.0,
            max_delay: Duration::from_millis(5),
            packets: Vec::new(),
            packet_seq: 0,
            inflight: Vec::new(),
            late: 0,
            stale_admitted: 0,
            store,
            created_marker: false,
            backups_exist: false,
            etcd: EtcdModel {
                next_id: 100,
                ..EtcdModel::default()
            },
            effects: Vec::new(),
            actors: BTreeMap::new(),
            fenced: 0,
            leaderships: Vec::new(),
            trace: Vec::new(),
            violation: None,
            faults: Vec::new(),
            tokens: 0,
            replace_grace: Duration::from_secs(rng.random_range(10..=60)),
            ending: Vec::new(),
            isolate_next_request: None,
            etcd_calls: Vec::new(),
            reconfig_ok_at: Duration::ZERO,
            auto_recover: None,
            retired: BTreeSet::new(),
            recoveries: 0,
            gone_since: BTreeMap::new(),
            nodes: list,
            rng,
        };
        for i in 0..n {
            w.start_gossip(i);
        }
        w.plan_faults();
        // Half the runs recover a lost quorum by themselves, and in those a
        // majority of hosts is wiped once. From a stream of its own, so the
        // other faults of a seed stay as they were.
        let mut extra = StdRng::seed_from_u64(seed ^ 0x7175_6f72_756d);
        if extra.random_bool(0.5) {
            w.auto_recover = Some(Duration::from_secs(extra.random_range(10..=30)));
            let at = Duration::from_secs(extra.random_range(20..70));
            let pos = w
                .faults
                .iter()
                .position(|(t, _)| *t > at)
                .unwrap_or(w.faults.len());
            w.faults.insert(pos, (at, Fault::WipeMajority));
        }
        w
    }

    fn local(&self, i: usize) -> Instant {
        let secs = self.now.as_secs_f64() * self.nodes[i].rate;
        self.origin + Duration::from_secs_f64(secs)
    }

    fn note(&mut self, line: String) {
        self.trace
            .push(format!("{:>7.1} {line}", self.now.as_secs_f64()));
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION {what}"));
            self.violation = Some(Violation { at: self.now, what });
        }
    }

    fn start_gossip(&mut self, i: usize) {
        let n = self.nodes.len();
        let mut config = GossipConfig::new(self.nodes[i].id.clone(), self.nodes[i].addr);
        config.cluster_size_hint = n as u32;
        config.incarnation = 1 + self.nodes[i].restarts;
        let mut core = GossipCore::new(&config, Vec::new(), self.rng.random()).expect("gossip");
        let now = self.local(i);
        core.start(now);
        self.nodes[i].gossip = Some(core);
        self.nodes[i].claimed = None;
        self.nodes[i].next_refresh = now;
    }

    /// A random schedule of faults in [FAULTS_FROM, FAULTS_UNTIL), then healing.
    fn plan_faults(&mut self) {
        let n = self.nodes.len();
        let mut at = FAULTS_FROM;
        while at < FAULTS_UNTIL {
            let for_ = Duration::from_secs(self.rng.random_range(3..40));
            let fault = match self.rng.random_range(0..11) {
                0 => {
                    // A minority cut off (one node, or two of five).
                    let k = if n == 5 && self.rng.random_bool(0.5) {
                        2
                    } else {
                        1
                    };
                    let mut side: Vec<usize> = (0..n).collect();
                    while side.len() > k {
                        let j = self.rng.random_range(0..side.len());
                        side.remove(j);
                    }
                    Fault::Partition { side, for_ }
                }
                1 => {
                    let a = self.rng.random_range(0..n);
                    let c = (a + 1 + self.rng.random_range(0..n - 1)) % n;
                    Fault::Bridge { a, c, for_ }
                }
                2 => {
                    let from = self.rng.random_range(0..n);
                    let to = (from + 1 + self.rng.random_range(0..n - 1)) % n;
                    Fault::OneWay { from, to, for_ }
                }
                3 => Fault::Loss {
                    p: self.rng.random_range(0.05..0.35),
                    for_,
                },
                4 => Fault::Delay {
                    max: Duration::from_millis(self.rng.random_range(50..1500)),
                    for_,
                },
                5 => Fault::Store {
                    faults: StoreFaults {
                        down: self.rng.random_bool(0.3),
                        error: self.rng.random_range(0.0..0.5),
                        lost_answer: self.rng.random_range(0.0..0.3),
                    },
                    for_,
                },
                6 | 7 => Fault::Crash {
                    node: self.rng.random_range(0..n),
                    // Some crashes outlast the replace grace.
                    for_: if self.rng.random_bool(0.4) {
                        Duration::from_secs(self.rng.random_range(30..100))
                    } else {
                        for_
                    },
                },
                8 => Fault::PauseLeader {
                    for_: Duration::from_secs(self.rng.random_range(5..25)),
                },
                _ => Fault::IsolateLeader {
                    for_: Duration::from_secs(self.rng.random_range(10..60)),
                },
            };
            self.faults.push((at, fault));
            at += Duration::from_secs(self.rng.random_range(2..25));
        }
        self.faults.push((FAULTS_UNTIL, Fault::Heal));
    }

    pub fn run(mut self) -> Outcome {
        let mut faults = std::mem::take(&mut self.faults);
        faults.reverse();
        while self.now < END && self.violation.is_none() {
            while faults.last().is_some_and(|(at, _)| *at <= self.now) {
                let (_, f) = faults.pop().expect("a fault");
                self.begin(&f);
            }
            self.ending.sort_by_key(|(at, _)| *at);
            while self.ending.first().is_some_and(|(at, _)| *at <= self.now) {
                let (_, f) = self.ending.remove(0);
                self.end(&f);
            }
            self.step();
            self.now += TICK;
        }
        if self.violation.is_none() {
            self.check_liveness();
        }
        Outcome {
            nodes: self.nodes.len(),
            effects: self.effects.len(),
            fenced: self.fenced,
            leaderships: self.leaderships.len(),
            store_faults: self.store.injected(),
            late: self.late,
            stale_admitted: self.stale_admitted,
            recoveries: self.recoveries,
            violation: self.violation,
            trace: self.trace,
        }
    }

    fn begin(&mut self, f: &Fault) {
        self.note(format!("fault {f:?}"));
        let n = self.nodes.len();
        match f {
            Fault::Partition { side, for_ } => {
                for a in 0..n {
                    for b in 0..n {
                        if side.contains(&a) != side.contains(&b) {
                            self.cut[a][b] = true;
                        }
                    }
                }
                self.ending.push((self.now + *for_, f.clone()));
            }
            Fault::Bridge { a, c, for_ } => {
                self.cut[*a][*c] = true;
                self.cut[*c][*a] = true;
                self.ending.push((self.now + *for_, f.clone()));
            }
            Fault::OneWay { from, to, for_ } => {
                self.cut[*from][*to] = true;
                self.ending.push((self.now + *for_, f.clone()));
            }
            Fault::Loss { p, for_ } => {
                self.loss = *p;
                self.ending.push((self.now + *for_, f.clone()));
            }
            Fault::Delay { max, for_ } => {
                self.max_delay = *max;
                self.ending.push((self.now + *for_, f.clone()));
            }
            Fault::Store { faults, for_ } => {
                self.store.set_faults(*faults);
                self.ending.push((self.now + *for_, f.clone()));
            }
            Fault::Crash { node, for_ } => {
                if self.nodes[*node].up {
                    self.crash(*node);
                    self.ending.push((self.now + *for_, f.clone()));
                }
            }
            Fault::PauseLeader { for_ } => {
                if let Some(i) = (0..n).find(|i| self.nodes[*i].was_leader.is_some()) {
                    self.nodes[i].pause_next_pass = Some(*for_);
                }
            }
            Fault::IsolateLeader { for_ } => self.isolate_next_request = Some(*for_),
            Fault::WipeMajority => {
                let mut nodes: Vec<usize> = self
                    .etcd
                    .members
                    .values()
                    .filter(|m| !m.learner)
                    .map(|m| m.node)
                    .collect();
                let keep = nodes.len() - (nodes.len() / 2 + 1);
                if keep == 0 {
                    return;
                }
                for _ in 0..keep {
                    let j = self.rng.random_range(0..nodes.len());
                    nodes.remove(j);
                }
                for &j in &nodes {
                    self.note(format!("wipe {}", self.nodes[j].id));
                    if self.nodes[j].up {
                        self.crash(j);
                        self.nodes[j].etcd = None;
                        self.restart(j);
                    } else {
                        self.nodes[j].etcd = None;
                    }
                }
            }
            Fault::Heal => {
                self.cut = vec![vec![false; n]; n];
                self.loss = 0.0;
                self.max_delay = Duration::from_millis(5);
                self.store.set_faults(StoreFaults::default());
                for i in 0..n {
                    if !self.nodes[i].up {
                        self.restart(i);
                    }
                    self.nodes[i].paused_until = None;
                    self.nodes[i].pause_next_pass = None;
                }
                self.isolate_next_request = None;
                self.ending.clear();
            }
        }
    }

    fn end(&mut self, f: &Fault) {
        self.note(format!("end {f:?}"));
        let n = self.nodes.len();
        match f {
            Fault::Partition { .. } | Fault::Bridge { .. } | Fault::OneWay { .. } => {
                // Faults may overlap; healing one cut heals its links.
                self.cut = vec![vec![false; n]; n];
            }
            Fault::Loss { .. } => self.loss = 0.0,
            Fault::Delay { .. } => self.max_delay = Duration::from_millis(5),
            Fault::Store { .. } => self.store.set_faults(StoreFaults::default()),
            Fault::Crash { node, .. } => {
                if !self.nodes[*node].up {
                    self.restart(*node);
                }
            }
            Fault::IsolateLeader { .. }
            | Fault::PauseLeader { .. }
            | Fault::WipeMajority
            | Fault::Heal => {}
        }
    }

    fn crash(&mut self, i: usize) {
        self.note(format!("crash {}", self.nodes[i].id));
        // The requests on their way to it die with its sockets.
        self.inflight.retain(|r| r.to != i);
        self.etcd_calls.retain(|c| c.from != i);
        let node = &mut self.nodes[i];
        node.up = false;
        node.gossip = None;
        node.pending = None;
        node.blocked_until = None;
        node.was_leader = None;
        if let Some(e) = node.etcd.as_mut() {
            e.running = false;
        }
    }

    fn restart(&mut self, i: usize) {
        self.note(format!("restart {}", self.nodes[i].id));
        let instance = self.rng.random();
        let prefix = object_store::path::Path::from("etcd-manager/lease");
        let node = &mut self.nodes[i];
        node.up = true;
        node.restarts += 1;
        // A new process: a new lease client; the highest epoch comes from state.json.
        node.lease = lock::LeaseClient::new(
            std::sync::Arc::new(self.store.clone()),
            prefix,
            node.id.clone(),
            lease_config(self.knobs),
        )
        .with_instance(instance);
        node.last_backup = None;
        node.unhealthy_since.clear();
        node.silent_since.clear();
        // retire_if_replaced(): a member of a cluster a quorum recovery
        // retired is not started again; its data goes to the trashcan.
        if node
            .etcd
            .as_ref()
            .is_some_and(|e| self.retired.contains(&e.token))
        {
            node.etcd = None;
        }
        // resume(): etcd starts again as the state file says.
        if let Some(e) = node.etcd.as_mut() {
            e.running = true;
            self.reconfig_ok_at = self.now + RECONFIG_QUIET;
        }
        self.start_gossip(i);
        self.nodes[i].next_pass = self.local(i);
    }

    fn active(&self, i: usize) -> bool {
        self.nodes[i].up && self.nodes[i].paused_until.is_none()
    }

    /// A request/answer between two managers succeeds now.
    fn rpc(&mut self, from: usize, to: usize) -> bool {
        if from == to {
            return true;
        }
        if !self.active(to) || self.cut[from][to] || self.cut[to][from] {
            return false;
        }
        !(self.loss > 0.0 && self.rng.random_bool(self.loss))
    }

    fn step(&mut self) {
        let n = self.nodes.len();
        // Paused nodes wake up.
        for i in 0..n {
            if self.nodes[i].paused_until.is_some_and(|t| t <= self.now) {
                self.nodes[i].paused_until = None;
                self.note(format!("resume {}", self.nodes[i].id));
            }
            if self.nodes[i].blocked_until.is_some_and(|t| t <= self.now) {
                self.nodes[i].blocked_until = None;
                self.note(format!(
                    "{} gave up waiting for an answer",
                    self.nodes[i].id
                ));
            }
        }
        self.deliver();
        self.deliver_late();
        self.retry_etcd_calls();
        self.track_progress();
        for i in 0..n {
            if !self.active(i) {
                continue;
            }
            let now = self.local(i);
            let node = &mut self.nodes[i];
            let g = node.gossip.as_mut().expect("an up node gossips");
            if g.next_deadline().is_some_and(|d| d <= now) {
                g.handle_timers(now);
            }
            if node.next_refresh <= now {
                node.next_refresh = now + GOSSIP_REFRESH;
                for j in 0..n {
                    if j != i && !g.is_active_id(&format!("n{}", j + 1)) {
                        g.announce(SocketAddr::from(([10, 0, 0, j as u8 + 1], 8000)));
                    }
                }
            }
        }
        for i in 0..n {
            if self.active(i)
                && self.nodes[i].blocked_until.is_none()
                && self.nodes[i].next_pass <= self.local(i)
            {
                let acted = self.pass(i);
                let wait = if acted {
                    ACTED_INTERVAL
                } else {
                    CONTROLLER_INTERVAL
                };
                self.nodes[i].next_pass = self.local(i) + wait;
            }
        }
        self.send();
    }

    fn send(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            if !self.active(i) {
                continue;
            }
            let packets = self.nodes[i]
                .gossip
                .as_mut()
                .expect("gossip")
                .drain_packets();
            for (to, data) in packets {
                let Some(j) = (0..n).find(|j| self.nodes[*j].addr == to) else {
                    continue;
                };
                if self.cut[i][j] || (self.loss > 0.0 && self.rng.random_bool(self.loss)) {
                    continue;
                }
                let delay = Duration::from_millis(
                    1 + self.rng.random_range(0..=self.max_delay.as_millis() as u64),
                );
                self.packet_seq += 1;
                self.packets.push(Packet {
                    at: self.now + delay,
                    seq: self.packet_seq,
                    from: i,
                    to: j,
                    data,
                });
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due: Vec<Packet> = Vec::new();
        let mut later = Vec::new();
        for p in self.packets.drain(..) {
            if p.at <= now {
                due.push(p);
            } else {
                later.push(p);
            }
        }
        self.packets = later;
        due.sort_by_key(|p| (p.at, p.seq));
        for p in due {
            if !self.active(p.to) {
                continue;
            }
            let local = self.local(p.to);
            let from = self.nodes[p.from].addr;
            if let Some(g) = self.nodes[p.to].gossip.as_mut() {
                g.handle_packet(from, &p.data, local);
            }
        }
    }

    /// Ids this node's gossip sees alive, itself included.
    fn alive_view(&self, i: usize) -> BTreeSet<String> {
        let mut alive: BTreeSet<String> = self.nodes[i]
            .gossip
            .as_ref()
            .map(|g| {
                g.members()
                    .into_iter()
                    .filter(|m| m.state == MemberState::Alive)
                    .map(|m| m.id)
                    .collect()
            })
            .unwrap_or_default();
        alive.insert(self.nodes[i].id.clone());
        alive
    }

    fn known(&self, i: usize) -> usize {
        let mut ids: BTreeSet<String> = self.nodes[i]
            .gossip
            .as_ref()
            .map(|g| g.members().into_iter().map(|m| m.id).collect())
            .unwrap_or_default();
        ids.insert(self.nodes[i].id.clone());
        ids.len()
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// One pass of node i, as `Driver::step`: leadership, then reconcile.
    fn pass(&mut self, i: usize) -> bool {
        let now = self.local(i);
        let me = self.nodes[i].id.clone();
        // A leader paused in the middle of its last plan resumes it.
        if let Some(p) = self.nodes[i].pending.take() {
            self.execute(i, p.epoch, p.actions);
        }
        let alive = self.alive_view(i);
        let mut candidate = leadership::is_candidate(&me, alive.iter().map(String::as_str));
        if candidate {
            let mut accepted = 1;
            for id in alive.iter().filter(|id| **id != me) {
                let Some(j) = self.index_of(id) else { continue };
                if self.rpc(i, j) {
                    let view = self.alive_view(j);
                    if leadership::judge(view.iter().map(String::as_str), &me).is_ok() {
                        accepted += 1;
                    }
                }
            }
            let known = self.known(i);
            candidate = leadership::has_majority(accepted, known, self.nodes.len());
        }
        // The leader's claims arrive through the gossip payloads, as in the driver.
        let claims: Vec<lock::LeaseClaim> = self.nodes[i]
            .gossip
            .as_ref()
            .map(|g| {
                g.members()
                    .into_iter()
                    .filter(|m| m.state == MemberState::Alive)
                    .filter_map(|m| serde_json::from_slice(m.payload.as_deref()?).ok())
                    .collect()
            })
            .unwrap_or_default();
        for claim in &claims {
            self.nodes[i].lease.note_claim(claim, now);
        }
        let tick = futures::executor::block_on(self.nodes[i].lease.tick(now, candidate));
        // A renewal (or a new holding) goes into our payload at once.
        if let Some(claim) = self.nodes[i].lease.claim(now)
            && self.nodes[i].claimed.as_ref() != Some(&claim)
        {
            let body = serde_json::to_vec(&claim).unwrap_or_default();
            self.nodes[i].claimed = Some(claim);
            if let Some(g) = self.nodes[i].gossip.as_mut()
                && let Err(e) = g.set_payload(body, now)
            {
                self.note(format!("{me} could not publish its claim: {e}"));
            }
        }
        if let Err(e) = &tick {
            self.note(format!("{me} lease step failed: {e}"));
        }
        let highest = self.nodes[i].highest_epoch;
        self.nodes[i].lease.observe_epoch(highest);
        let held = self.nodes[i].lease.held(now);
        if held != self.nodes[i].was_leader {
            match held {
                Some(epoch) => {
                    self.note(format!("{me} became leader at epoch {epoch}"));
                    // Epochs only grow: a new leadership has a higher epoch
                    // than every earlier one (the same holder may carry on).
                    if let Some((_, who, last)) = self.leaderships.last().copied()
                        && (epoch < last || (epoch == last && who != i))
                    {
                        self.fail(format!(
                            "{me} became leader at epoch {epoch}, not above the last leadership's {last}"
                        ));
                    }
                    self.leaderships.push((self.now, i, epoch));
                    self.nodes[i].last_backup = None;
                    self.nodes[i].unhealthy_since.clear();
                    self.nodes[i].silent_since.clear();
                }
                None => self.note(format!("{me} no longer leader")),
            }
            self.nodes[i].was_leader = held;
        }
        let Some(epoch) = held else { return false };
        let Some(obs) = self.observe(i, epoch) else {
            return false;
        };
        let plan = controller::reconcile(&obs);
        let waits: Vec<String> = plan.waits.iter().map(ToString::to_string).collect();
        if waits != self.nodes[i].last_waits {
            self.note(format!("{me} waits: {}", waits.join("; ")));
            self.nodes[i].last_waits = waits;
        }
        if plan.actions.is_empty() {
            return false;
        }
        self.check_plan_keeps_quorum(i, &plan.actions);
        self.execute(i, epoch, plan.actions);
        true
    }

    /// What node i, as leader, sees: `Driver::observe` on the model.
    fn observe(&mut self, i: usize, epoch: u64) -> Option<Observation> {
        let now = self.local(i);
        // The spec and the markers are read from the store.
        if self.store.fails_now() {
            return None;
        }
        let alive = self.alive_view(i);
        let mut peers = Vec::new();
        for id in &alive {
            let Some(j) = self.index_of(id) else { continue };
            let info = self.rpc(i, j).then(|| self.info(j));
            peers.push(PeerView {
                id: id.clone(),
                info,
            });
        }
        let reachable: Vec<usize> = peers
            .iter()
            .filter(|p| p.info.is_some())
            .filter_map(|p| self.index_of(&p.id))
            .collect();
        let cluster = self.cluster_view(&reachable);
        // The leader's own memory of unhealthy members.
        if let Some(c) = &cluster {
            let node = &mut self.nodes[i];
            for m in &c.members {
                if m.healthy {
                    node.unhealthy_since.remove(&m.id);
                } else {
                    node.unhealthy_since.entry(m.id).or_insert(now);
                }
            }
            node.unhealthy_since
                .retain(|id, _| c.members.iter().any(|m| m.id == *id));
            // As the driver: since when each member has not answered at all.
            node.silent_since.retain(|id, _| {
                c.members
                    .iter()
                    .any(|m| m.id == *id && m.progress.is_none())
            });
            for m in c.members.iter().filter(|m| m.progress.is_none()) {
                node.silent_since.entry(m.id).or_insert(now);
            }
        } else {
            self.nodes[i].silent_since.clear();
        }
        self.tokens += 1;
        let node = &self.nodes[i];
        Some(Observation {
            now,
            self_id: node.id.clone(),
            cluster_name: CLUSTER.into(),
            epoch: Some(epoch),
            spec: Some(backup::ClusterSpec {
                member_count: self.nodes.len() as i32,
                etcd_version: VERSION.into(),
            }),
            created_marker: self.created_marker,
            backups_exist: self.backups_exist,
            peers,
            cluster,
            last_backup: node.last_backup,
            backup_interval: Duration::from_secs(900),
            new_cluster_token: format!("t{}-{}", self.seed, self.tokens),
            commands: Vec::new(),
            last_retention: node.last_backup,
            backup_requested: false,
            delta_full_needed: false,
            allow_new_cluster: false,
            unhealthy_since: node.unhealthy_since.clone(),
            silent_since: node.silent_since.clone(),
            replace_grace: self.replace_grace,
            defrag: Default::default(),
            v2store: Default::default(),
            settings: Default::default(),
            defrag_requested: None,
            restore_clear_prefixes: vec![],
            prefixes_cleared: Default::default(),
            quorum_recovery: controller::QuorumRecovery {
                requested: None,
                auto_after: self.auto_recover.map(|g| {
                    if self.knobs.recovery_grace {
                        g
                    } else {
                        Duration::ZERO
                    }
                }),
                latest_backup: None,
            },
            unverified_backup: None,
            verify_requested: None,
            retired_tokens: self.retired.clone(),
            rules: Default::default(),
        })
    }

    fn info(&self, j: usize) -> NodeInfo {
        let node = &self.nodes[j];
        let ip = node.addr.ip();
        NodeInfo {
            id: node.id.clone(),
            cluster_name: CLUSTER.into(),
            node_config: EtcdNodeConfig {
                name: node.id.clone(),
                peer_urls: vec![format!("https://{ip}:2380")],
                client_urls: vec![format!("https://{ip}:4001")],
                quarantined_client_urls: vec![format!("https://{ip}:8001")],
            },
            etcd_state: node.etcd.as_ref().map(|e| EtcdState {
                cluster_token: e.token.clone(),
                etcd_version: VERSION.into(),
                quarantined: e.quarantined,
                running: e.running,
                restarts: 0,
                nodes: Vec::new(),
            }),
            highest_epoch: node.highest_epoch,
            installed_versions: vec![VERSION.into()],
        }
    }

    /// Ground truth: member `m` runs and could serve.
    fn member_up(&self, m: &Member) -> bool {
        let node = &self.nodes[m.node];
        m.started
            && node.up
            && node
                .etcd
                .as_ref()
                .is_some_and(|e| e.running && e.token == self.etcd.token)
    }

    /// The model's raft progress (members that serve with quorum follow the
    /// commit count) and, for each node, since when each member has been
    /// unable to serve it (down, or cut off from it).
    fn track_progress(&mut self) {
        let ups: Vec<u64> = self
            .etcd
            .members
            .iter()
            .filter(|(_, m)| self.member_up(m))
            .map(|(id, _)| *id)
            .collect();
        if self.has_quorum() {
            self.etcd.commit += 1;
            let commit = self.etcd.commit;
            for id in &ups {
                if let Some(m) = self.etcd.members.get_mut(id) {
                    m.index = commit;
                }
            }
        }
        let n = self.nodes.len();
        let now = self.now;
        let mut serving = Vec::new();
        for i in 0..n {
            for (id, m) in &self.etcd.members {
                let ok = ups.contains(id)
                    && (m.node == i || (!self.cut[i][m.node] && !self.cut[m.node][i]));
                serving.push(((i, *id), ok));
            }
        }
        self.gone_since
            .retain(|(_, id), _| self.etcd.members.contains_key(id));
        for (key, ok) in serving {
            if ok {
                self.gone_since.remove(&key);
            } else {
                self.gone_since.entry(key).or_insert(now);
            }
        }
    }

    fn has_quorum(&self) -> bool {
        let voters: Vec<&Member> = self.etcd.members.values().filter(|m| !m.learner).collect();
        let up = voters.iter().filter(|m| self.member_up(m)).count();
        !voters.is_empty() && up * 2 > voters.len()
    }

    /// The cluster as the leader sees it through the members it reaches.
    fn cluster_view(&self, reachable: &[usize]) -> Option<ClusterView> {
        if self.etcd.members.is_empty() {
            return None;
        }
        // A member answers (status, raft index) when it runs and is reached;
        // it is healthy (a linearizable read) only while there is quorum.
        let answers = |m: &Member| self.member_up(m) && reachable.contains(&m.node);
        let quorum = self.has_quorum();
        let healthy = |m: &Member| quorum && answers(m);
        if !self.etcd.members.values().any(&answers) {
            return None;
        }
        let raft_leader = self
            .etcd
            .members
            .iter()
            .filter(|(_, m)| quorum && !m.learner && self.member_up(m))
            .map(|(id, _)| *id)
            .next();
        let members: Vec<MemberView> = self
            .etcd
            .members
            .iter()
            .map(|(id, m)| MemberView {
                id: *id,
                name: if m.started {
                    self.nodes[m.node].id.clone()
                } else {
                    String::new()
                },
                peer_urls: vec![format!("https://{}:2380", self.nodes[m.node].addr.ip())],
                is_learner: m.learner,
                healthy: healthy(m),
                is_leader: raft_leader == Some(*id),
                storage_version: None,
                db_size: 0,
                db_in_use: 0,
                progress: answers(m).then_some((m.index, m.index as i64)),
            })
            .collect();
        let versions = members
            .iter()
            .filter(|m| m.healthy)
            .map(|_| VERSION.to_string())
            .collect();
        Some(ClusterView {
            members,
            versions,
            downgrade_target: None,
            space_alarm: false,
        })
    }

    /// Invariant: a plan never takes a cluster with quorum below quorum.
    fn check_plan_keeps_quorum(&mut self, i: usize, actions: &[Action]) {
        if !self.has_quorum() {
            return;
        }
        let mut etcd = self.etcd.clone();
        let mut stopped: BTreeSet<usize> = BTreeSet::new();
        for a in actions {
            match a {
                Action::RemoveMember { member_id, .. } => {
                    if let Some(m) = etcd.members.remove(member_id) {
                        stopped.insert(m.node);
                    }
                }
                Action::StopEtcd { peer } => {
                    if let Some(j) = self.index_of(peer) {
                        stopped.insert(j);
                    }
                }
                Action::Quarantine { .. } | Action::RestoreBackup { .. } => return,
                _ => {}
            }
        }
        let voters: Vec<&Member> = etcd.members.values().filter(|m| !m.learner).collect();
        let up = voters
            .iter()
            .filter(|m| self.member_up(m) && !stopped.contains(&m.node))
            .count();
        if voters.is_empty() || up * 2 <= voters.len() {
            let labels: Vec<&str> = actions.iter().map(|a| a.label()).collect();
            self.fail(format!(
                "{}'s plan {labels:?} takes the cluster below quorum",
                self.nodes[i].id
            ));
        }
    }

    /// Execute a plan as `Driver::execute`: stop at the first failure, and
    /// (unless the knob says otherwise) check the lease before each action.
    fn execute(&mut self, i: usize, epoch: u64, actions: Vec<Action>) {
        let mut rest = actions.into_iter();
        while let Some(action) = rest.next() {
            if !self.active(i) {
                return;
            }
            if self.knobs.recheck_lease {
                let now = self.local(i);
                if self.nodes[i].lease.held(now) != Some(epoch) {
                    self.note(format!(
                        "{} lease no longer held; stopping",
                        self.nodes[i].id
                    ));
                    return;
                }
            }
            let ok = self.apply(i, epoch, &action);
            self.note(format!(
                "{} epoch {epoch} {action:?} -> {}",
                self.nodes[i].id,
                if ok { "ok" } else { "failed" }
            ));
            if !ok {
                return;
            }
            // A pause (SIGSTOP, a long GC) in the middle of a plan.
            if let Some(for_) = self.nodes[i].pause_next_pass.take() {
                self.note(format!("pause {} for {for_:?}", self.nodes[i].id));
                self.nodes[i].paused_until = Some(self.now + for_);
                self.nodes[i].pending = Some(Pending {
                    epoch,
                    actions: rest.collect(),
                });
                return;
            }
        }
    }

    /// A leader action took effect: check that actions are ordered by epoch.
    /// `late`: a request that reached its target after its caller gave up;
    /// the lease cannot order those (the caller no longer runs), only the
    /// target's fence can, which `admit` checks.
    fn effect(&mut self, i: usize, epoch: u64, late: bool) {
        if let Some(&other) = self.actors.get(&epoch)
            && other != i
        {
            self.fail(format!(
                "two nodes acted in epoch {epoch}: {} and {}",
                self.nodes[other].id, self.nodes[i].id
            ));
        }
        self.actors.insert(epoch, i);
        if !late && let Some(later) = self.effects.iter().rev().find(|e| e.epoch > epoch).copied() {
            self.fail(format!(
                "{} acted in epoch {epoch} after {} acted in epoch {} (at {:?}): overlapping epochs",
                self.nodes[i].id, self.nodes[later.node].id, later.epoch, later.at
            ));
        }
        self.effects.push(Effect {
            at: self.now,
            node: i,
            epoch,
        });
    }

    /// The driver is stuck in a call to a peer that does not answer.
    fn block(&mut self, i: usize, timeout: Duration) {
        self.nodes[i].blocked_until = Some(self.now + timeout);
    }

    /// A fenced request from i to j, as `PeerClient::call`; true if j
    /// admitted it and i heard so. A request to a cut, lossy or paused peer
    /// hangs until the timeout and may still land later; an answer can be
    /// lost after the request was applied.
    fn request(
        &mut self,
        i: usize,
        j: usize,
        epoch: u64,
        what: OnTarget,
        timeout: Duration,
    ) -> bool {
        if self.nodes[i].blocked_until.is_some() {
            return false;
        }
        if i != j && !self.nodes[j].up {
            // Connection refused.
            return false;
        }
        if i != j {
            self.maybe_isolate(i);
        }
        let lost = |w: &mut World| w.loss > 0.0 && w.rng.random_bool(w.loss);
        if i != j && (!self.active(j) || self.cut[i][j] || lost(self)) {
            if self.rng.random_bool(0.8) {
                let hold = Duration::from_secs(self.rng.random_range(1..=MAX_HOLD));
                self.note(format!(
                    "{} epoch {epoch} {what:?} to {} is on its way (up to {hold:?})",
                    self.nodes[i].id, self.nodes[j].id
                ));
                self.inflight.push(InFlight {
                    until: self.now + hold,
                    from: i,
                    to: j,
                    epoch,
                    what,
                });
            }
            self.block(i, timeout);
            return false;
        }
        let admitted = self.admit(i, j, epoch, what, false);
        if admitted && i != j && (self.cut[j][i] || lost(self)) {
            self.note(format!(
                "{} applied epoch {epoch} but the answer to {} was lost",
                self.nodes[j].id, self.nodes[i].id
            ));
            self.block(i, timeout);
            return false;
        }
        admitted
    }

    /// An armed `IsolateLeader` fires: i is cut off from every peer.
    fn maybe_isolate(&mut self, i: usize) {
        let Some(for_) = self.isolate_next_request.take() else {
            return;
        };
        self.note(format!("isolate {} for {for_:?}", self.nodes[i].id));
        for k in 0..self.nodes.len() {
            if k != i {
                self.cut[i][k] = true;
                self.cut[k][i] = true;
            }
        }
        self.ending.push((
            self.now + for_,
            Fault::Partition {
                side: vec![i],
                for_,
            },
        ));
    }

    /// etcd, reached from node i, accepts a membership change now: it has
    /// quorum, i reaches a majority of the voters, and the strict
    /// reconfiguration check is satisfied.
    fn etcd_accepts(&self, i: usize) -> bool {
        let voters: Vec<&Member> = self.etcd.members.values().filter(|m| !m.learner).collect();
        let reached = voters
            .iter()
            .filter(|m| {
                self.member_up(m) && (m.node == i || !(self.cut[i][m.node] || self.cut[m.node][i]))
            })
            .count();
        self.has_quorum() && self.now >= self.reconfig_ok_at && reached * 2 > voters.len()
    }

    /// A membership change, as `Driver::execute_one`: applied now if etcd
    /// accepts it, else retried for `ETCD_RETRY` while the leader waits
    /// (without looking at its lease) and applied when etcd comes round.
    fn change_membership(&mut self, i: usize, epoch: u64, change: Change) -> bool {
        if !self.has_quorum() {
            return false;
        }
        self.maybe_isolate(i);
        if self.etcd_accepts(i) {
            return self.apply_change(i, epoch, change);
        }
        let deadline = if self.knobs.bound_retries {
            let local = self.local(i);
            let Some(left) = self.nodes[i].lease.remaining(local) else {
                return false;
            };
            // The deadline runs on i's clock.
            let local = leadership::retry_deadline(ETCD_RETRY, left);
            Duration::from_secs_f64(local.as_secs_f64() / self.nodes[i].rate)
        } else {
            ETCD_RETRY
        };
        self.note(format!(
            "{} epoch {epoch} {change:?}: etcd refuses, retrying for {deadline:?}",
            self.nodes[i].id
        ));
        self.etcd_calls.push(EtcdCall {
            from: i,
            epoch,
            change,
            until: self.now + deadline,
        });
        self.block(i, deadline);
        false
    }

    fn retry_etcd_calls(&mut self) {
        for c in std::mem::take(&mut self.etcd_calls) {
            if c.until < self.now {
                continue;
            }
            if !self.active(c.from) || !self.etcd_accepts(c.from) {
                self.etcd_calls.push(c);
                continue;
            }
            self.note(format!(
                "{} epoch {} {:?} lands after retrying",
                self.nodes[c.from].id, c.epoch, c.change
            ));
            self.nodes[c.from].blocked_until = None;
            self.apply_change(c.from, c.epoch, c.change);
        }
    }

    /// The change lands in etcd; then the driver goes on without checking
    /// its lease: it starts the added member or stops the removed one.
    fn apply_change(&mut self, i: usize, epoch: u64, change: Change) -> bool {
        match change {
            Change::Add {
                node: j,
                learner,
                token,
            } => {
                let id = self.etcd.next_id;
                self.etcd.next_id += 1;
                self.etcd.members.insert(
                    id,
                    Member {
                        node: j,
                        started: false,
                        learner,
                        index: 0,
                    },
                );
                self.effect(i, epoch, false);
                self.start_member(i, j, id, &token, epoch)
            }
            Change::Remove { member_id } => {
                let Some(m) = self.etcd.members.remove(&member_id) else {
                    return false;
                };
                // The removed member's etcd exits and is not restarted; the
                // leader then tells its node to drop it (StopEtcd).
                if let Some(e) = self.nodes[m.node].etcd.as_mut() {
                    e.running = false;
                }
                self.effect(i, epoch, false);
                self.request(i, m.node, epoch, OnTarget::Drop, JOIN_TIMEOUT)
            }
        }
    }

    /// Requests on their way land once their link and target are back.
    fn deliver_late(&mut self) {
        let mut keep = Vec::new();
        for r in std::mem::take(&mut self.inflight) {
            if r.until < self.now {
                continue;
            }
            if !self.active(r.to) || self.cut[r.from][r.to] {
                keep.push(r);
                continue;
            }
            self.note(format!(
                "late: {} epoch {} {:?} reaches {}",
                self.nodes[r.from].id, r.epoch, r.what, self.nodes[r.to].id
            ));
            self.late += 1;
            let newest = self.effects.iter().map(|e| e.epoch).max().unwrap_or(0);
            if self.admit(r.from, r.to, r.epoch, r.what, true) && r.epoch < newest {
                self.stale_admitted += 1;
                self.note(format!(
                    "{} admitted epoch {} after epoch {newest} acted elsewhere",
                    self.nodes[r.to].id, r.epoch
                ));
            }
        }
        keep.extend(std::mem::take(&mut self.inflight));
        self.inflight = keep;
    }

    /// Node j judges a request of `epoch` from i (`Node::admit`) and, if it
    /// admits it, applies it.
    fn admit(&mut self, i: usize, j: usize, epoch: u64, what: OnTarget, late: bool) -> bool {
        let highest = self.nodes[j].highest_epoch;
        if self.knobs.fence && !leadership::admits(highest, epoch) {
            self.fenced += 1;
            self.note(format!(
                "{} refused epoch {epoch} (highest {highest})",
                self.nodes[j].id
            ));
            return false;
        }
        if epoch < highest {
            self.fail(format!(
                "{} applied a request of epoch {epoch} after seeing epoch {highest}: a fenced leader was not silenced",
                self.nodes[j].id
            ));
        }
        self.nodes[j].highest_epoch = highest.max(epoch);
        match what {
            OnTarget::Nothing => {}
            OnTarget::Quarantine(q) => {
                if let Some(e) = self.nodes[j].etcd.as_mut() {
                    e.quarantined = q;
                }
            }
            OnTarget::Drop => self.nodes[j].etcd = None,
            OnTarget::Start { member_id, token } => {
                let quarantined = self.etcd.members.values().filter(|m| m.started).any(|m| {
                    self.nodes[m.node]
                        .etcd
                        .as_ref()
                        .is_some_and(|e| e.quarantined)
                });
                self.nodes[j].etcd = Some(LocalEtcd {
                    token,
                    quarantined,
                    running: true,
                });
                if let Some(m) = self.etcd.members.get_mut(&member_id)
                    && m.node == j
                {
                    m.started = true;
                    self.reconfig_ok_at = self.now + RECONFIG_QUIET;
                }
            }
        }
        self.effect(i, epoch, late);
        true
    }

    fn store_write(&mut self, i: usize, epoch: u64) -> bool {
        if self.store.fails_now() {
            return false;
        }
        self.effect(i, epoch, false);
        true
    }

    fn apply(&mut self, i: usize, epoch: u64, action: &Action) -> bool {
        let idx = |w: &World, id: &str| w.index_of(id);
        match action {
            Action::SeedCluster { token, peers, .. } => {
                let targets: Vec<usize> = peers.iter().filter_map(|p| idx(self, p)).collect();
                let mut all = targets.len() == peers.len();
                for &j in &targets {
                    all = all && self.request(i, j, epoch, OnTarget::Nothing, PEER_TIMEOUT);
                }
                if !all {
                    return false;
                }
                self.etcd = EtcdModel {
                    token: token.clone(),
                    members: BTreeMap::new(),
                    next_id: self.etcd.next_id,
                    commit: self.etcd.commit,
                };
                for &j in &targets {
                    let id = self.etcd.next_id;
                    self.etcd.next_id += 1;
                    self.etcd.members.insert(
                        id,
                        Member {
                            node: j,
                            started: true,
                            learner: false,
                            index: 0,
                        },
                    );
                    self.nodes[j].etcd = Some(LocalEtcd {
                        token: token.clone(),
                        quarantined: true,
                        running: true,
                    });
                }
                true
            }
            Action::WriteCreatedMarker => {
                let ok = self.store_write(i, epoch);
                self.created_marker |= ok;
                ok
            }
            Action::TakeBackup { .. } => {
                if !self.has_quorum() {
                    return false;
                }
                let ok = self.store_write(i, epoch);
                if ok {
                    self.backups_exist = true;
                    self.nodes[i].last_backup = Some(self.local(i));
                }
                ok
            }
            Action::ApplyRetention | Action::ClearBackupRequest => self.store_write(i, epoch),
            // The simulation takes no restore drills (its leaders never set
            // an unverified backup); a drill changes no cluster state.
            Action::VerifyBackup { .. } => true,
            Action::LiftQuarantine { peers } | Action::Quarantine { peers } => {
                let quarantined = matches!(action, Action::Quarantine { .. });
                let mut all = true;
                for p in peers {
                    let Some(j) = idx(self, p) else { return false };
                    all &=
                        self.request(i, j, epoch, OnTarget::Quarantine(quarantined), PEER_TIMEOUT);
                }
                all
            }
            Action::AddMember {
                peer,
                learner,
                token,
                ..
            } => {
                let Some(j) = idx(self, peer) else {
                    return false;
                };
                let change = Change::Add {
                    node: j,
                    learner: *learner,
                    token: token.clone(),
                };
                self.change_membership(i, epoch, change)
            }
            Action::StartAddedMember {
                peer,
                member_id,
                token,
                ..
            } => {
                let Some(j) = idx(self, peer) else {
                    return false;
                };
                self.start_member(i, j, *member_id, token, epoch)
            }
            Action::PromoteMember { member_id, .. } => {
                if !self.has_quorum() {
                    return false;
                }
                let Some(m) = self.etcd.members.get_mut(member_id) else {
                    return false;
                };
                m.learner = false;
                self.effect(i, epoch, false);
                true
            }
            Action::RemoveMember { member_id, .. } => {
                if !self.has_quorum() {
                    return false;
                }
                if !self.etcd.members.contains_key(member_id) {
                    return false;
                }
                let change = Change::Remove {
                    member_id: *member_id,
                };
                self.change_membership(i, epoch, change)
            }
            Action::StopEtcd { peer } => {
                let Some(j) = idx(self, peer) else {
                    return false;
                };
                self.request(i, j, epoch, OnTarget::Drop, PEER_TIMEOUT)
            }
            Action::GcTrashcan { peers, .. } => {
                let mut all = true;
                for p in peers {
                    let Some(j) = idx(self, p) else { return false };
                    all &= self.request(i, j, epoch, OnTarget::Nothing, PEER_TIMEOUT);
                }
                all
            }
            Action::RecoverQuorum {
                from: Some((survivor, _)),
                ..
            } => self.recover_quorum(i, epoch, *survivor),
            Action::RestoreBackup { .. }
            | Action::CompleteRestore { .. }
            | Action::QueueRestore { .. }
            | Action::UpgradeMember { .. }
            | Action::CheckV2Store { .. }
            | Action::CheckSettings { .. }
            | Action::EnableDowngrade { .. }
            | Action::CancelDowngrade
            | Action::ClearSpaceAlarm
            | Action::Defragment { .. }
            | Action::DefragmentNow { .. }
            | Action::ClearPrefixes { .. }
            | Action::RecoverQuorum { .. } => {
                self.fail(format!(
                    "unexpected action {} (no commands, one version)",
                    action.label()
                ));
                false
            }
        }
    }

    /// `RecoverQuorum` from member `survivor`, checked, then applied as its
    /// outcome: the survivor's data as a one-member cluster of a new token,
    /// the old token retired (the driver's backup, retirement and queued
    /// restore, which the model does not take apart). Invariants: every
    /// voter left out has been unable to serve this leader for the grace
    /// (less the clocks' 10 % skew), and no member that answers is ahead
    /// of the survivor.
    fn recover_quorum(&mut self, i: usize, epoch: u64, survivor: u64) -> bool {
        let Some(grace) = self.auto_recover else {
            self.fail("a quorum recovery without --auto-recover-quorum-loss or a request".into());
            return false;
        };
        let Some(best) = self.etcd.members.get(&survivor).cloned() else {
            return false;
        };
        let me = self.nodes[i].id.clone();
        let ids: Vec<u64> = self.etcd.members.keys().copied().collect();
        for id in ids {
            let m = self.etcd.members[&id].clone();
            if m.learner || id == survivor {
                continue;
            }
            match self.gone_since.get(&(i, id)) {
                None => {
                    if m.index > best.index {
                        self.fail(format!(
                            "{me} recovered from member {survivor} (index {}) while member {id} answers at index {}",
                            best.index, m.index
                        ));
                        return false;
                    }
                }
                Some(since) => {
                    let gone = self.now.saturating_sub(*since);
                    if gone < grace.mul_f64(0.8) {
                        self.fail(format!(
                            "{me} recovered the quorum while member {id} had been gone only {gone:?} of the {grace:?} grace"
                        ));
                        return false;
                    }
                }
            }
        }
        if !self.store_write(i, epoch) {
            return false;
        }
        let old = std::mem::take(&mut self.etcd.token);
        self.retired.insert(old);
        self.recoveries += 1;
        let token = format!("recovered-{}-{}", self.seed, self.recoveries);
        let id = self.etcd.next_id;
        self.etcd.next_id += 1;
        self.etcd.token = token.clone();
        self.etcd.members = BTreeMap::from([(
            id,
            Member {
                node: best.node,
                started: true,
                learner: false,
                index: best.index,
            },
        )]);
        self.nodes[best.node].etcd = Some(LocalEtcd {
            token,
            quarantined: false,
            running: true,
        });
        self.reconfig_ok_at = self.now + RECONFIG_QUIET;
        self.note(format!(
            "{me} recovered the quorum from {} as member {id}",
            self.nodes[best.node].id
        ));
        true
    }

    fn start_member(&mut self, i: usize, j: usize, id: u64, token: &str, epoch: u64) -> bool {
        let what = OnTarget::Start {
            member_id: id,
            token: token.to_string(),
        };
        self.request(i, j, epoch, what, JOIN_TIMEOUT)
    }

    /// Each node's gossip view, for failure messages.
    fn views(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let members = node
                .gossip
                .as_ref()
                .map(|g| {
                    g.members()
                        .iter()
                        .map(|m| format!("{}:{:?}", m.id, m.state))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            out += &format!("\n  {} sees [{members}]", node.id);
        }
        out
    }

    /// Liveness after healing: one leader, the spec reached, all healthy.
    fn check_liveness(&mut self) {
        let leaders: Vec<String> = (0..self.nodes.len())
            .filter(|i| {
                let now = self.local(*i);
                self.nodes[*i].lease.held(now).is_some()
            })
            .map(|i| self.nodes[i].id.clone())
            .collect();
        if leaders.len() != 1 {
            self.fail(format!(
                "liveness: {} leaders {leaders:?} {:?} after healing{}",
                leaders.len(),
                END - FAULTS_UNTIL,
                self.views()
            ));
            return;
        }
        let n = self.nodes.len();
        let voters = self
            .etcd
            .members
            .values()
            .filter(|m| !m.learner && self.member_up(m))
            .count();
        let quarantined = self
            .nodes
            .iter()
            .filter(|node| node.etcd.as_ref().is_some_and(|e| e.quarantined))
            .count();
        if voters != n || self.etcd.members.len() != n || quarantined > 0 || !self.created_marker {
            self.fail(format!(
                "liveness: the cluster is not whole after healing: {voters} healthy voters of {} members (spec {n}), {quarantined} quarantined, created marker {}{}",
                self.etcd.members.len(),
                self.created_marker,
                self.views()
            ));
        }
    }
}
