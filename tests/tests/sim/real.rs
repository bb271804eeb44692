//! The simulation of the code that ships: 3 or 5 managers, each the real
//! [`Driver`] (with its lease task), the real [`Node`] answering peer
//! requests, and the real gossip core, on one tokio runtime with paused
//! time (virtual; each manager's clock 0.9-1.1x true time), over the
//! simulation's network, store ([`FaultyStore`]) and model of etcd
//! ([`super::etcd_model`]).
//!
//! Faults come from the seed: hosts crash and restart (their processes end,
//! their data stays), hosts are wiped, links are cut (both ways or one way),
//! packets are lost, hosts get slow, peer requests stall on their way,
//! managers pause (every answer waits until they run again; their etcd
//! serves on), the store fails, loses answers or is down; an operator
//! queues a restore of the newest backup, asks for a backup, changes the
//! member count and leaves a command file that is not JSON. After
//! [`FAULTS_UNTIL`] everything heals. Checked while it runs:
//!
//! * mutual exclusion: every change to etcd's membership or keys that a
//!   manager makes, and every fenced peer request delivered while its caller
//!   still waits, comes from the holder of the newest lease record in the
//!   store;
//! * fencing: no node admits a fenced request older than one it admitted;
//! * no removal takes a cluster below quorum, and no stop of an etcd that a
//!   peer request asked for does, except a restore's (after its marker, or
//!   a StopEtcd followed by a restore within 10 s) and a restart in place;
//! * a quorum recovery only once every lost voter has been silent to the
//!   leader's status calls for the grace (less the clocks' skew);
//!
//! and at the end: one cluster serves, with the spec's (last) member count
//! all started, voters and out of quarantine, every operator command seen
//! through, and every write etcd acknowledged since a restore last
//! replaced the data is in it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_manager::clock::Clock;
use etcd_manager::driver::{Driver, DriverSettings};
use etcd_manager::edges::{Membership, PeerApi, Randomness};
use etcd_manager::node::{Node, NodeSettings};
use etcd_manager::peer::{self, Caller, EtcdNodeConfig, PeerError, Request, Response};
use etcd_manager::rules::SafetyRules;
use gossip::{GossipConfig, GossipCore, MemberView};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::etcd_model::{self, Model, ModelConnect, ModelRuntime};
use super::store::{FaultyStore, StoreFaults, wait_while_paused};

const VERSION: &str = "3.5.30";
/// The versions installed on every simulated host; an operator may move
/// the spec to one of the others (3.5.35, a patch up, rolls member by
/// member; 3.4.23, a minor down, goes by dump and restore; 3.6.16, a minor
/// up, rolls through 3.5.35 after the v2 store and settings checks).
const VERSIONS: [&str; 4] = ["3.4.23", "3.5.30", "3.5.35", "3.6.16"];
/// Mixed into the seed for the draw of 3.6.16 instead of 3.5.35 (half of
/// those runs), so that the other runs' draws stay as they were.
const MINOR_UP_SALT: u64 = 0x0033_2e36;
/// Mixed into the seed for the draw of a version change.
const VERSION_SALT: u64 = 0x0056_4552_5349_4f4e;
const CLUSTER: &str = "sim";
/// Mixed into the seed for the draw of etcd's strict reconfiguration check.
const STRICT_SALT: u64 = 0x5354_5249_4354;
/// Mixed into the seed for the draw of a host whose manager is of the
/// release before jobs.
const OLDER_SALT: u64 = 0x004f_4c44_4552;
/// Mixed into the seed for the draw of an operator's restore of a backup
/// whose data file went bad.
const ROT_SALT: u64 = 0x0052_4f54;
pub const FAULTS_FROM: Duration = Duration::from_secs(20);
pub const FAULTS_UNTIL: Duration = Duration::from_secs(140);
/// After healing, the cluster must be whole again by then.
pub const END: Duration = Duration::from_secs(480);
const PEER_PORT: u16 = 8080;
const GOSSIP_PORT: u16 = 8000;

tokio::task_local! {
    /// The kind of peer request a node is handling (for the quorum check).
    static REQUEST: &'static str;
}

fn host_ip(i: usize) -> [u8; 4] {
    [10, 0, 0, i as u8 + 1]
}

fn peer_addr(i: usize) -> SocketAddr {
    SocketAddr::from((host_ip(i), PEER_PORT))
}

fn gossip_addr(i: usize) -> SocketAddr {
    SocketAddr::from((host_ip(i), GOSSIP_PORT))
}

fn url(i: usize, port: u16) -> String {
    let [a, b, c, d] = host_ip(i);
    format!("http://{a}.{b}.{c}.{d}:{port}")
}

/// Who can reach whom.
#[derive(Debug)]
pub struct Net {
    pub up: Vec<bool>,
    /// Bumped by every crash: what a crashed incarnation started is gone.
    pub incarnation: Vec<u64>,
    /// cut[a][b]: nothing from a reaches b (one way).
    pub cut: Vec<Vec<bool>>,
    pub loss: f64,
    /// Extra time a peer request to or from a host takes (a slow link).
    pub slow: Vec<Duration>,
    /// Probability that a peer request stalls for 10-120 s on its way (a
    /// connection whose segments are lost and retransmitted with backoff,
    /// a middlebox that holds it): it lands after its caller gave up.
    pub stall: f64,
}

impl Net {
    pub fn reachable(&self, a: usize, b: usize) -> bool {
        a == b || !self.cut[a][b]
    }
}

/// A fact of the run that a check needs.
#[derive(Debug, Default)]
pub struct Counters {
    pub effects: u64,
    pub fenced_requests: u64,
    pub late_requests: u64,
    pub acked_writes: u64,
    pub crashes: u64,
    /// Restores started as jobs, and within one request (an older manager).
    pub restore_jobs: u64,
    pub restore_calls: u64,
    /// Members restored from a version change's dump.
    pub dump_restores: u64,
    /// v2 store checks started as jobs (before a move to 3.6).
    pub v2_checks: u64,
}

pub struct State {
    t0: tokio::time::Instant,
    pub net: Net,
    pub model: Model,
    rng: StdRng,
    pub trace: Vec<String>,
    pub violation: Option<String>,
    pub restores: u64,
    pub counters: Counters,
    /// The newest lease record that landed: (seq, holder, released).
    pub lease: Option<(u64, String, bool)>,
    /// Per host: the highest epoch of a fenced request it admitted.
    admitted: Vec<u64>,
    /// Gossip inboxes by host.
    inbox: Vec<Option<mpsc::UnboundedSender<(SocketAddr, Bytes)>>>,
    /// The running nodes by host.
    nodes: Vec<Option<(u64, Arc<Node>)>>,
    /// Every acknowledged write and when etcd acknowledged it.
    acked: BTreeMap<String, Duration>,
    /// Per acknowledged write: the cluster that took it, and until when
    /// the host it went through was last cut off (MAX: it still was).
    acked_via: BTreeMap<String, (String, Duration)>,
    /// Per host: when its last cut (isolation, one-way) ended; MAX while on.
    cut_until: Vec<Duration>,
    /// Clusters an operator's restore retired, and when.
    retired_by_restore: BTreeMap<String, Duration>,
    /// When a restore last replaced the data (an operator's restore or a
    /// quorum recovery): writes acknowledged before may be gone.
    pub replaced_at: Option<Duration>,
    /// The spec's member count the operator asked for last.
    pub want_members: usize,
    /// The spec's etcd version the operator asked for last.
    pub want_version: &'static str,
    /// Operator commands still to be seen through: (what, when issued).
    operator: Vec<(String, Duration)>,
    /// A stop that took a cluster below quorum, fine if a restore follows.
    stop_before_restore: Option<(Duration, String)>,
    /// When a leader last marked a restore command started (its stops of
    /// every member follow, one request each, up to a minute apiece).
    restore_marked_at: Option<Duration>,
    /// Per host: set while its manager is paused (SIGSTOP, a long GC).
    pub paused: Vec<Arc<AtomicBool>>,
    /// Per host: a pause begins at its manager's next answer from etcd.
    pause_armed: Vec<bool>,
    /// Per host: a pause begins when etcd next refuses a membership change
    /// of its manager.
    pause_at_refusal: Vec<bool>,
    /// Per host: how long a pause begun at a refusal lasts (None: until its
    /// fault ends).
    pause_len: Vec<Option<Duration>>,
    /// Per host: set while it cannot reach the store (its peers it can).
    pub store_cut: Vec<Arc<AtomicBool>>,
    /// Per host: its store cut begins when etcd next refuses one of its
    /// manager's membership changes (a retry under way).
    store_cut_armed: Vec<bool>,
    /// last_answer[h][l]: when host h's etcd last answered a status call
    /// of host l's manager, for the quorum recovery's grace check.
    last_answer: Vec<Vec<Duration>>,
    /// silent[h][l]: host l's manager's last status call to h failed.
    silent: Vec<Vec<bool>>,
    /// `--auto-recover-quorum-loss` of this run.
    auto_recover: Option<Duration>,
    /// etcd's strict reconfiguration check of this run (off: etcd run with
    /// `--strict-reconfig-check=false`).
    pub strict_reconfig: bool,
    /// A host whose manager answers as the release before jobs did (no
    /// `jobs` in its GetInfo answers), so the leader restores it within
    /// one request: a rolling upgrade of the managers under way.
    pub older: Option<usize>,
    /// The SHA-256 of each backup's snapshot as its writer declared it in
    /// the side file, when the side file landed.
    pub written: BTreeMap<String, String>,
    /// The backup each restore (by the new cluster's token) was asked to
    /// restore.
    pub restoring: BTreeMap<String, String>,
    /// The backup whose data file is bad now (see `Operator::RestoreRotten`).
    pub rotten: Option<String>,
    /// Restore commands a leader queued (an operator's carry no stamp):
    /// per command, its backup and whether it moves the cluster to a
    /// version its live members did not run when it landed (a version
    /// change by dump and restore; else a quorum recovery).
    leader_commands: BTreeMap<String, (String, bool)>,
    /// The restore command each new cluster's token was begun for (the
    /// marker a leader writes before it stops anything).
    begun_for: BTreeMap<String, String>,
    /// Backups a quorum recovery chose (named by its retired-cluster file).
    recovery_backups: BTreeSet<String>,
}

impl State {
    pub fn now(&self) -> Duration {
        tokio::time::Instant::now() - self.t0
    }

    pub fn note(&mut self, line: String) {
        let t = self.now().as_secs_f64();
        self.trace.push(format!("{t:>8.2} {line}"));
    }

    pub fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION {what}"));
            self.violation = Some(what);
        }
    }

    /// A network delay: 1-5 ms.
    pub fn delay(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(1..=5))
    }

    pub fn host_of_url(&self, url: &str) -> Option<usize> {
        let rest = url.strip_prefix("http://10.0.0.")?;
        let n: usize = rest.split(':').next()?.parse().ok()?;
        (1..=self.net.up.len()).contains(&n).then(|| n - 1)
    }

    /// A change to etcd by the manager on `host`: it must hold the newest
    /// lease record. Err (the change is refused) only to stop a broken run
    /// from piling up more; the violation is recorded either way.
    pub fn effect(&mut self, host: usize, what: &str) -> Result<(), String> {
        self.counters.effects += 1;
        let me = format!("n{}", host + 1);
        self.note(format!("{me}: {what}"));
        match &self.lease {
            Some((_, holder, false)) if *holder == me => Ok(()),
            other => {
                let other = format!("{other:?}");
                self.fail(format!(
                    "{me} changed etcd ({what}) while the newest lease record is {other}"
                ));
                Err("refused by the simulation after a violation".into())
            }
        }
    }

    pub fn quorum_lost_by_stop(&mut self, host: usize, token: &str) {
        let kind = REQUEST.try_with(|k| *k).unwrap_or("none");
        // A restore stops every member on purpose (StopEtcd to each, then
        // RestoreBackup: judged when no restore follows within 10 s); a
        // reconfiguration restarts the member in place at once.
        let what = format!(
            "stopping etcd on n{} ({kind}) took cluster {token} below quorum",
            host + 1
        );
        let restoring = self
            .restore_marked_at
            .is_some_and(|t| self.now() < t + Duration::from_secs(600));
        match kind {
            "restore_backup" | "reconfigure" => {}
            "stop_etcd" if restoring => {}
            // A restore job runs outside any request (see crate::node::jobs).
            "none" if restoring => {}
            "stop_etcd" => self.stop_before_restore = Some((self.now(), what)),
            _ => self.fail(what),
        }
    }
}

impl State {
    /// The pause flag of host `h`'s manager, set first if a pause was armed
    /// for its next etcd answer.
    pub fn pause_if_armed(&mut self, h: usize) -> Arc<AtomicBool> {
        if std::mem::take(&mut self.pause_armed[h]) {
            self.paused[h].store(true, Ordering::SeqCst);
            self.note(format!("n{} pauses (at an answer from etcd)", h + 1));
        }
        self.paused[h].clone()
    }

    /// Host `h`'s manager saw etcd refuse a membership change: a pause or a
    /// store cut armed for that moment begins.
    /// Returns how long a pause begun now lasts, when it is not until its
    /// fault ends (the caller ends it).
    pub fn refused_membership_change(&mut self, h: usize) -> Option<Duration> {
        self.cut_store_if_armed(h);
        if !std::mem::take(&mut self.pause_at_refusal[h]) {
            return None;
        }
        self.paused[h].store(true, Ordering::SeqCst);
        self.note(format!(
            "n{} pauses (at a refused membership change)",
            h + 1
        ));
        self.pause_len[h].take()
    }

    fn cut_store_if_armed(&mut self, h: usize) {
        if std::mem::take(&mut self.store_cut_armed[h]) {
            self.store_cut[h].store(true, Ordering::SeqCst);
            self.note(format!(
                "n{} loses the store (at a refused membership change)",
                h + 1
            ));
        }
    }

    /// The host of the newest lease record's holder.
    fn lease_holder(&self) -> Option<usize> {
        let (_, holder, _) = self.lease.as_ref()?;
        let n: usize = holder.strip_prefix('n')?.parse().ok()?;
        n.checked_sub(1)
    }

    /// Host `l`'s manager learned whether host `h`'s etcd answers.
    pub fn status_seen(&mut self, h: usize, l: usize, answered: bool) {
        if answered {
            self.last_answer[h][l] = self.now();
        }
        self.silent[h][l] = !answered;
    }

    /// A quorum recovery retired cluster `token` (its file landed): with
    /// `--auto-recover-quorum-loss` and no operator asking, every lost voter
    /// must have been silent to the leader for the whole grace (in true
    /// time: the grace over the fastest clock's rate). The leader counts
    /// from the first status call that failed after the last one answered,
    /// so its silence is never longer than the time since that answer.
    /// A write an operator's restore gave up: taken by a cluster the
    /// restore retired, through a host that was cut off at or after the
    /// retirement (its clients reach it; nobody stops it before the cut
    /// heals and a leader reaches it). The restore is the operator's
    /// choice to lose it.
    fn restore_lost(&self, key: &str) -> bool {
        self.acked_via.get(key).is_some_and(|(token, cut)| {
            self.retired_by_restore
                .get(token)
                .is_some_and(|retired| cut >= retired)
        })
    }

    /// A member of the new cluster `token` was restored from a snapshot
    /// holding `kv`. A version change's dump loses no acknowledged write
    /// (it was taken with every member quarantined); any other restore (an
    /// operator's, a quorum recovery's) replaces the data, and writes
    /// acknowledged before it may be gone.
    pub fn restored(&mut self, host: usize, token: &str, kv: &BTreeMap<String, String>) {
        let dump = self
            .begun_for
            .get(token)
            .and_then(|c| self.leader_commands.get(c))
            .is_some_and(|(backup, dump)| *dump && !self.recovery_backups.contains(backup));
        if !dump {
            self.replaced_at = Some(self.now());
            return;
        }
        self.counters.dump_restores += 1;
        let since = self.replaced_at.unwrap_or_default();
        let lost: Vec<&String> = self
            .acked
            .iter()
            .filter(|(k, at)| **at >= since && !kv.contains_key(*k) && !self.restore_lost(k))
            .map(|(k, _)| k)
            .collect();
        if let Some(first) = lost.first() {
            let what = format!(
                "n{} restored a version change's dump into {token} without {} acknowledged writes, first {first:?}",
                host + 1,
                lost.len()
            );
            self.fail(what);
        }
    }

    fn retired(&mut self, token: &str) {
        let Some(grace) = self.auto_recover else {
            return;
        };
        let Some(leader) = self.lease_holder() else {
            return;
        };
        let Some(c) = self.model.clusters.get(token) else {
            return;
        };
        let now = self.now();
        let hosts: Vec<usize> = c
            .members
            .iter()
            .filter(|m| !m.learner)
            .filter_map(|m| m.peer_urls.first().and_then(|u| self.host_of_url(u)))
            .collect();
        for h in hosts {
            let silent = now.saturating_sub(self.last_answer[h][leader]);
            if self.silent[h][leader] && silent < grace.div_f64(1.1) {
                self.fail(format!(
                    "n{} recovered quorum of {token} while n{}'s etcd was silent only {silent:?} (grace {grace:?})",
                    leader + 1,
                    h + 1
                ));
            }
        }
    }
}

pub struct Shared {
    state: Mutex<State>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("World")
    }
}

pub type World = Arc<Shared>;

impl Shared {
    pub fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

/// Each manager's clock: true virtual time at its own rate.
#[derive(Debug)]
struct SimClock {
    t0: tokio::time::Instant,
    origin: std::time::Instant,
    rate: f64,
    /// A paused manager wakes up only when the pause ends.
    paused: Arc<AtomicBool>,
}

impl Clock for SimClock {
    fn now(&self) -> std::time::Instant {
        let t = tokio::time::Instant::now() - self.t0;
        self.origin + Duration::from_secs_f64(t.as_secs_f64() * self.rate)
    }
    fn wall(&self) -> std::time::SystemTime {
        let t = tokio::time::Instant::now() - self.t0;
        std::time::UNIX_EPOCH
            + Duration::from_secs(1_790_000_000)
            + Duration::from_secs_f64(t.as_secs_f64() * self.rate)
    }
    fn sleep(&self, d: Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let sleep = tokio::time::sleep(Duration::from_secs_f64(d.as_secs_f64() / self.rate));
        let paused = self.paused.clone();
        Box::pin(async move {
            sleep.await;
            wait_while_paused(&paused).await;
        })
    }
}

#[derive(Debug)]
struct SeededRandomness(Mutex<StdRng>);

impl Randomness for SeededRandomness {
    fn token(&self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = self.0.lock().unwrap();
        (0..len)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }
}

/// The peer API over the simulated network.
struct SimPeers {
    world: World,
    host: usize,
}

#[async_trait]
impl PeerApi for SimPeers {
    async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        let me = self.host;
        // The bytes go over the wire: encode and decode as the real API does.
        let protocol = |e: peer::FrameError| PeerError::Protocol {
            addr,
            reason: e.to_string(),
        };
        let bytes = peer::encode_request(req).map_err(protocol)?;
        let req = peer::decode_request(&bytes).map_err(protocol)?;
        let (target, delay, reach, hold, paused) = self.world.with(|w| {
            let target = (0..w.net.up.len()).find(|j| peer_addr(*j) == addr);
            // A request to itself never leaves the host: no slow link, no stall.
            let remote = target.is_some_and(|t| t != me);
            let slow = target
                .filter(|_| remote)
                .map(|t| w.net.slow[me] + w.net.slow[t]);
            let stall = if remote && w.net.stall > 0.0 && w.rng.random_bool(w.net.stall) {
                Duration::from_secs(w.rng.random_range(10..=120))
            } else {
                Duration::ZERO
            };
            let delay = w.delay() + slow.unwrap_or_default() + stall;
            let reach = target.map(|t| (w.net.up[t], w.net.reachable(me, t) && w.net.up[me]));
            let hold = w.rng.random_bool(0.3);
            (target, delay, reach, hold, w.paused[me].clone())
        });
        let timed_out = || PeerError::Timeout {
            addr,
            after: timeout,
        };
        let (Some(target), Some((up, reachable))) = (target, reach) else {
            return Err(PeerError::Io {
                addr,
                source: std::io::ErrorKind::ConnectionRefused.into(),
            });
        };
        if !up {
            // No answer to the SYN: the connection gives up, as the real
            // client's does, before a long request's own timeout.
            let connect = etcd_manager::peer::CONNECT_TIMEOUT;
            if timeout <= connect {
                tokio::time::sleep(timeout).await;
                return Err(timed_out());
            }
            tokio::time::sleep(connect).await;
            return Err(PeerError::Io {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        if reachable || hold {
            // Held requests wait for the cut to heal (TCP retransmits) for
            // up to a minute, and may land after the caller gave up.
            let world = self.world.clone();
            tokio::spawn(async move {
                let until = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let ok = world.with(|w| w.net.reachable(me, target) && w.net.up[target]);
                    if ok {
                        break;
                    }
                    if tokio::time::Instant::now() >= until {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(delay).await;
                deliver(world, me, target, req, tx).await;
            });
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        // The answer reaches a paused caller once it runs again.
        wait_while_paused(&paused).await;
        // The answer's bytes go over the wire too (a refusal's typed trailer).
        let answer = match answer {
            Ok(Ok(resp)) => {
                let bytes = peer::encode_response(&resp).map_err(protocol)?;
                Ok(Ok(peer::decode_response(&bytes).map_err(protocol)?))
            }
            other => other,
        };
        match answer {
            Ok(Ok(Response::Fenced { highest_epoch })) => Err(PeerError::Fenced {
                addr,
                highest_epoch,
            }),
            Ok(Ok(Response::Failed(refusal))) => {
                // A manager of the release before typed refusals sends only
                // its words (see etcd_manager::peer::refusal).
                let refusal = if self.world.with(|w| w.older == Some(target)) {
                    etcd_manager::peer::Refusal::Untyped(refusal.to_string())
                } else {
                    refusal
                };
                Err(PeerError::Refused { addr, refusal })
            }
            Ok(Ok(Response::Info(mut info))) => {
                if self.world.with(|w| w.older == Some(target)) {
                    info.jobs = None;
                }
                Ok(Response::Info(info))
            }
            Ok(Ok(other)) => Ok(other),
            Ok(Err(_)) | Err(_) => Err(timed_out()),
        }
    }
}

/// A request reaches host `target`'s node, which handles it as the real
/// server would (to the end, even when the caller gave up).
async fn deliver(
    world: World,
    from: usize,
    target: usize,
    req: Request,
    tx: oneshot::Sender<Response>,
) {
    let Some((incarnation, node)) = world.with(|w| w.nodes[target].clone()) else {
        return;
    };
    let fence = req.fence().cloned();
    let waiting = !tx.is_closed();
    if let Some(f) = &fence {
        world.with(|w| {
            w.counters.fenced_requests += 1;
            if !waiting {
                w.counters.late_requests += 1;
            }
            w.note(format!(
                "n{} -> n{}: {} epoch {}{}",
                from + 1,
                target + 1,
                req.kind(),
                f.epoch,
                if waiting { "" } else { " (late)" }
            ));
        });
    }
    let kind = req.kind();
    if let Request::RestoreBackup(r) | Request::RestoreJob(r) = &req {
        world.with(|w| {
            w.restoring
                .insert(r.cluster_token.clone(), r.backup.clone())
        });
    }
    if kind == "v2store_job" {
        world.with(|w| w.counters.v2_checks += 1);
    }
    if kind == "restore_backup" || kind == "restore_job" {
        world.with(|w| {
            w.stop_before_restore = None;
            if kind == "restore_job" {
                w.counters.restore_jobs += 1;
            } else {
                w.counters.restore_calls += 1;
            }
        });
    }
    // A paused node reads the request once it runs again.
    let paused = world.with(|w| w.paused[target].clone());
    wait_while_paused(&paused).await;
    let caller = Caller::node(peer_addr(from), &format!("n{}", from + 1));
    let resp = REQUEST.scope(kind, node.handle(&caller, req)).await;
    let resp_ok = !matches!(resp, Response::Fenced { .. } | Response::Failed(_));
    world.with(|w| {
        if w.nodes[target].as_ref().map(|(i, _)| *i) != Some(incarnation) {
            return;
        }
        if let (Some(f), true) = (&fence, resp_ok) {
            if f.epoch < w.admitted[target] {
                w.fail(format!(
                    "n{} admitted {kind} of epoch {} after one of epoch {}",
                    target + 1,
                    f.epoch,
                    w.admitted[target]
                ));
            }
            w.admitted[target] = w.admitted[target].max(f.epoch);
        }
    });
    let (back, answered) = world.with(|w| (w.delay(), w.net.reachable(target, from)));
    tokio::time::sleep(back).await;
    // A one-way cut: the request was handled, its answer is lost.
    if answered {
        let _ = tx.send(resp);
    }
}

/// Gossip membership: the real gossip core, packets over the simulated network.
struct SimMembership {
    members: watch::Receiver<Vec<MemberView>>,
    payload: watch::Sender<Vec<u8>>,
}

impl Membership for SimMembership {
    fn members(&self) -> Vec<MemberView> {
        self.members.borrow().clone()
    }
    fn subscribe(&self) -> watch::Receiver<Vec<MemberView>> {
        self.members.clone()
    }
    fn set_payload(&self, payload: Vec<u8>) {
        self.payload.send_replace(payload);
    }
    fn downs(&self) -> (u64, u64) {
        (0, 0)
    }
    fn bytes(&self) -> (u64, u64) {
        (0, 0)
    }
    fn bad_packets(&self) -> u64 {
        0
    }
}

#[allow(clippy::too_many_arguments)]
fn start_gossip(
    world: &World,
    i: usize,
    n: usize,
    incarnation: u64,
    clock: Arc<SimClock>,
    seed: u64,
    cancel: CancellationToken,
) -> SimMembership {
    let mut config = GossipConfig::new(format!("n{}", i + 1), gossip_addr(i));
    config.cluster_size_hint = n as u32;
    config.incarnation = incarnation;
    let mut core = GossipCore::new(&config, Vec::new(), seed).expect("gossip");
    core.start(clock.now());
    let (members_tx, members_rx) = watch::channel(core.members());
    let (payload_tx, mut payload_rx) = watch::channel(Vec::new());
    let (in_tx, mut in_rx) = mpsc::unbounded_channel();
    world.with(|w| w.inbox[i] = Some(in_tx));
    let world = world.clone();
    tokio::spawn(async move {
        let mut refresh = tokio::time::interval(Duration::from_secs(2));
        let paused = world.with(|w| w.paused[i].clone());
        loop {
            // A paused manager neither sends nor reads: packets wait.
            wait_while_paused(&paused).await;
            let wait = core
                .next_deadline()
                .map(|d| d.saturating_duration_since(clock.now()))
                .unwrap_or(Duration::from_secs(1));
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some((from, data)) = in_rx.recv() => core.handle_packet(from, &data, clock.now()),
                Ok(()) = payload_rx.changed() => {
                    let p = payload_rx.borrow_and_update().clone();
                    let _ = core.set_payload(p, clock.now());
                }
                _ = refresh.tick() => {
                    for j in (0..n).filter(|j| *j != i) {
                        if !core.is_active_id(&format!("n{}", j + 1)) {
                            core.announce(gossip_addr(j));
                        }
                    }
                }
                _ = clock.sleep(wait) => core.handle_timers(clock.now()),
            }
            for (to, data) in core.drain_packets() {
                let route = world.with(|w| {
                    let j = (0..n).find(|j| gossip_addr(*j) == to)?;
                    let lost = w.net.loss > 0.0 && w.rng.random_bool(w.net.loss);
                    if !w.net.up[j] || !w.net.reachable(i, j) || lost {
                        return None;
                    }
                    Some((w.inbox[j].clone()?, w.delay()))
                });
                if let Some((inbox, delay)) = route {
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = inbox.send((gossip_addr(i), data));
                    });
                }
            }
            let now = core.members();
            members_tx.send_if_modified(|m| {
                let changed = *m != now;
                *m = now;
                changed
            });
        }
    });
    SimMembership {
        members: members_rx,
        payload: payload_tx,
    }
}

/// One host: its folder and what runs there now.
struct Host {
    dir: PathBuf,
    rate: f64,
    incarnation: u64,
    cancel: Option<CancellationToken>,
    dead: Arc<AtomicBool>,
    /// Set while the host's manager is paused (kept across incarnations; a
    /// crash ends a pause).
    paused: Arc<AtomicBool>,
}

pub struct Outcome {
    pub nodes: usize,
    pub violation: Option<String>,
    pub trace: Vec<String>,
    pub effects: u64,
    pub fenced_requests: u64,
    pub late_requests: u64,
    pub acked_writes: u64,
    pub restores: u64,
    pub restore_jobs: u64,
    pub restore_calls: u64,
    /// Members restored from a version change's dump (no write lost).
    pub dump_restores: u64,
    /// v2 store checks started as jobs.
    pub v2_checks: u64,
    pub crashes: u64,
    pub store_faults: u64,
    /// [`Scenario::DenyBackups`]: the status report said, while the store
    /// denied backup writes, that an operator is needed (the status line).
    pub needs_operator_said: Option<String>,
}

/// What a run plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Faults drawn from the seed.
    Random,
    /// No fault but a store that denies every backup write (a bucket policy
    /// gone wrong) until [`FAULTS_UNTIL`]; then it takes them again.
    DenyBackups,
}

#[derive(Debug, Clone)]
enum Fault {
    Crash(usize, Duration),
    Wipe(usize, Duration),
    Isolate(usize, Duration),
    Loss(f64, Duration),
    StoreErrors(f64, Duration),
    StoreDown(Duration),
    /// The manager on a host (None: the lease holder when it begins) stops
    /// running for a while (SIGSTOP, a long GC); its etcd runs on.
    Pause(Option<usize>, Duration),
    /// The lease holder's manager stops running for a while, from when etcd
    /// next refuses one of its membership changes (scheduled with a spec
    /// change, which brings membership changes and refusals).
    /// (how long it stays armed, how long the pause lasts once begun)
    PauseAtRefusal(Duration, Duration),
    /// Peer requests to and from a host take this much longer.
    Slow(usize, Duration, Duration),
    /// Nothing from the first host reaches the second; the other way works.
    OneWay(usize, usize, Duration),
    /// Peer requests stall on their way with this probability.
    Stalls(f64, Duration),
    /// A host (None: the lease holder when it begins) cannot reach the
    /// store; its peers and etcd it can.
    StoreCut(Option<usize>, Duration),
    /// An operator's command (instant; the operator retries until the
    /// store takes it).
    Operator(Operator),
}

/// What an operator does to the running cluster, through the store as
/// `etcd-manager-ctl` does.
#[derive(Debug, Clone)]
pub enum Operator {
    /// `etcd-manager-ctl restore-backup` of the newest backup.
    Restore,
    /// The same, after the newest backup's data file was replaced by an
    /// older backup's (a copy gone wrong: valid gzip, other content). The
    /// leader must refuse it; the operator then deletes the command and
    /// puts the file back.
    RestoreRotten,
    /// `etcd-manager-ctl backup-now`.
    BackupNow,
    /// A new spec: this many members.
    Spec(i32),
    /// A new spec: this etcd version.
    Version(&'static str),
    /// A command file that is not JSON (a broken tool, a bad hand edit).
    Malformed,
}

pub struct Sim {
    seed: u64,
    n: usize,
    world: World,
    store: FaultyStore,
    hosts: Vec<Host>,
    rng: StdRng,
    tmp: tempfile::TempDir,
    origin: std::time::Instant,
    t0: tokio::time::Instant,
    replace_grace: Duration,
    auto_recover: Option<Duration>,
    rules: SafetyRules,
    scenario: Scenario,
    needs_operator_said: Option<String>,
}

impl Sim {
    /// One run; `rules`: production's ([`SafetyRules::ALL`]) or with one
    /// switched off, to see the checks catch it.
    pub fn run(seed: u64, nodes: Option<usize>, rules: SafetyRules) -> Outcome {
        Sim::run_scenario(seed, nodes, rules, Scenario::Random)
    }

    /// One run of `scenario`.
    pub fn run_scenario(
        seed: u64,
        nodes: Option<usize>,
        rules: SafetyRules,
        scenario: Scenario,
    ) -> Outcome {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        if std::env::var("SIM_LOG").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_max_level(if std::env::var("SIM_LOG").as_deref() == Ok("debug") {
                    tracing::Level::DEBUG
                } else {
                    tracing::Level::INFO
                })
                .with_ansi(false)
                .try_init();
        }
        rt.block_on(async move {
            let mut sim = Sim::new(seed, nodes, rules).await;
            sim.scenario = scenario;
            sim.play().await
        })
    }

    async fn new(seed: u64, nodes: Option<usize>, rules: SafetyRules) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = nodes.unwrap_or(if rng.random_bool(0.5) { 3 } else { 5 });
        let tmp = tempfile::tempdir().expect("tempdir");
        for version in VERSIONS {
            let bin = tmp.path().join("bin").join(format!("etcd-v{version}"));
            std::fs::create_dir_all(&bin).unwrap();
            for tool in ["etcd", "etcdctl", "etcdutl"] {
                let f = bin.join(tool);
                std::fs::write(&f, "#!/bin/sh\nexit 1\n").unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let t0 = tokio::time::Instant::now();
        let store = FaultyStore::new(rng.random());
        let paused: Vec<Arc<AtomicBool>> =
            (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let replace_grace = Duration::from_secs(rng.random_range(10..=60));
        let auto_recover = rng
            .random_bool(0.5)
            .then(|| Duration::from_secs(rng.random_range(10..=30)));
        let world = Arc::new(Shared {
            state: Mutex::new(State {
                t0,
                net: Net {
                    up: vec![true; n],
                    incarnation: vec![1; n],
                    cut: vec![vec![false; n]; n],
                    loss: 0.0,
                    slow: vec![Duration::ZERO; n],
                    stall: 0.0,
                },
                model: Model::default(),
                rng: StdRng::seed_from_u64(rng.random()),
                trace: vec![],
                violation: None,
                restores: 0,
                counters: Counters::default(),
                lease: None,
                admitted: vec![0; n],
                inbox: vec![None; n],
                nodes: vec![None; n],
                acked: BTreeMap::new(),
                acked_via: BTreeMap::new(),
                cut_until: vec![Duration::ZERO; n],
                retired_by_restore: BTreeMap::new(),
                replaced_at: None,
                want_members: n,
                want_version: VERSION,
                operator: vec![],
                stop_before_restore: None,
                restore_marked_at: None,
                paused: paused.clone(),
                pause_armed: vec![false; n],
                pause_at_refusal: vec![false; n],
                pause_len: vec![None; n],
                store_cut: (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect(),
                store_cut_armed: vec![false; n],
                last_answer: vec![vec![Duration::ZERO; n]; n],
                silent: vec![vec![false; n]; n],
                auto_recover,
                // Drawn apart from the run's generator, so a seed's fault
                // schedule stays what it was before this choice existed.
                strict_reconfig: !StdRng::seed_from_u64(seed ^ STRICT_SALT).random_bool(0.3),
                older: {
                    let mut salted = StdRng::seed_from_u64(seed ^ OLDER_SALT);
                    salted.random_bool(0.25).then(|| salted.random_range(0..n))
                },
                written: BTreeMap::new(),
                restoring: BTreeMap::new(),
                leader_commands: BTreeMap::new(),
                begun_for: BTreeMap::new(),
                recovery_backups: BTreeSet::new(),
                rotten: None,
            }),
        });
        store.observe({
            let world = world.clone();
            Arc::new(move |location, body| landed(&world, location, body))
        });
        let hosts = (0..n)
            .map(|i| Host {
                dir: tmp.path().join(format!("n{}", i + 1)),
                rate: rng.random_range(0.9..1.1),
                incarnation: 1,
                cancel: None,
                dead: Arc::new(AtomicBool::new(false)),
                paused: paused[i].clone(),
            })
            .collect();
        Sim {
            seed,
            n,
            world,
            store,
            hosts,
            rng,
            tmp,
            origin: std::time::Instant::now(),
            t0,
            replace_grace,
            auto_recover,
            rules,
            scenario: Scenario::Random,
            needs_operator_said: None,
        }
    }

    /// Until [`FAULTS_UNTIL`], read the status report every second as an
    /// operator's dashboard does, and keep the first line that says an
    /// operator is needed.
    async fn watch_for_an_operator_call(&mut self) {
        let nobody = Arc::new(AtomicBool::new(false));
        let status = self.backup_store(&nobody, &nobody, &nobody);
        while tokio::time::Instant::now() < self.t0 + FAULTS_UNTIL {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.needs_operator_said.is_some() {
                continue;
            }
            let line = status
                .read_manager_file(backup::layout::STATUS_FILE)
                .await
                .ok()
                .flatten()
                .and_then(|b| {
                    serde_json::from_slice::<etcd_manager::status::ClusterStatus>(&b).ok()
                })
                .and_then(|s| {
                    s.waits
                        .into_iter()
                        .find(|w| w.contains("needs an operator"))
                });
            if let Some(line) = line {
                self.world.with(|w| w.note(format!("status: {line}")));
                self.needs_operator_said = Some(line);
            }
        }
    }

    fn backup_store(
        &self,
        dead: &Arc<AtomicBool>,
        paused: &Arc<AtomicBool>,
        cut: &Arc<AtomicBool>,
    ) -> backup::BackupStore {
        // CPU work inline: a blocking-pool task would finish when real
        // threads decide, and the run would not replay exactly.
        let store = backup::BackupStore::new(
            Arc::new(
                self.store
                    .for_manager(dead.clone(), paused.clone(), cut.clone()),
            ),
            object_store::path::Path::from(CLUSTER),
            format!("memory://{CLUSTER}"),
        )
        .with_inline_cpu();
        if self.rules.restore_checksum {
            store
        } else {
            store.without_checksums()
        }
    }

    async fn start_host(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        let dead = Arc::new(AtomicBool::new(false));
        h.dead = dead.clone();
        let incarnation = h.incarnation;
        let cancel = CancellationToken::new();
        h.cancel = Some(cancel.clone());
        let rate = h.rate;
        let dir = h.dir.clone();
        let paused = h.paused.clone();
        let cut = self.world.with(|w| w.store_cut[i].clone());
        let store = self.backup_store(&dead, &paused, &cut);
        let clock = Arc::new(SimClock {
            t0: self.t0,
            origin: self.origin,
            rate,
            paused: paused.clone(),
        });
        let id = format!("n{}", i + 1);
        let node = Node::open(NodeSettings {
            cluster_name: CLUSTER.into(),
            data_dir: dir.clone(),
            node_config: EtcdNodeConfig {
                name: id.clone(),
                peer_urls: vec![url(i, 2380)],
                client_urls: vec![url(i, 4001)],
                quarantined_client_urls: vec![url(i, 3994)],
            },
            fixed_id: Some(id.clone()),
            dns_suffix: String::new(),
            listen_metrics_urls: vec![],
            address: std::net::IpAddr::from(host_ip(i)),
            listen_address: None,
            bin_dirs: vec![self.tmp.path().join("bin")],
            etcd_env_overrides: vec![],
            store: store.clone(),
            etcd_pki: None,
            runtime: Arc::new(ModelRuntime {
                world: self.world.clone(),
                host: i,
                incarnation,
            }),
            rules: self.rules,
        })
        .expect("node opens")
        .shared();
        node.set_store_id("sim-store".into());
        self.world.with(|w| {
            w.nodes[i] = Some((incarnation, node.clone()));
            w.note(format!("{id} starts (incarnation {incarnation})"));
        });
        // As the daemon starts: a member of a cluster replaced meanwhile
        // (a quorum recovery) is retired, not started.
        node.retire_if_replaced(&store, Duration::from_secs(3))
            .await;
        if let Err(e) = node.resume().await {
            self.world
                .with(|w| w.note(format!("{id}: resume failed: {e}")));
        }
        let membership = start_gossip(
            &self.world,
            i,
            self.n,
            incarnation,
            clock.clone(),
            self.rng.random(),
            cancel.clone(),
        );
        let lease = lock::LeaseClient::new(
            Arc::new(
                self.store
                    .for_manager(dead.clone(), paused.clone(), cut.clone()),
            ),
            store.lease_prefix(),
            id.clone(),
            lock::LeaseConfig::default(),
        )
        .with_instance(self.rng.random());
        let driver = Driver::new(
            DriverSettings {
                cluster_name: CLUSTER.into(),
                peer_api: peer_addr(i),
                backup_interval: Duration::from_secs(60),
                controller_interval: Duration::from_secs(10),
                scratch_dir: dir.join("restore-check"),
                etcd_bin_dirs: vec![self.tmp.path().join("bin")],
                retention: Default::default(),
                replace_grace: self.replace_grace,
                defrag: Default::default(),
                restore_clear_prefixes: vec![],
                auto_recover_quorum_loss: self.auto_recover,
                backup_verify_every: 0,
                etcd_quota_bytes: None,
                peers: Arc::new(SimPeers {
                    world: self.world.clone(),
                    host: i,
                }),
                etcd: Arc::new(ModelConnect {
                    world: self.world.clone(),
                    host: i,
                }),
                etcd_tls: None,
                randomness: Arc::new(SeededRandomness(Mutex::new(StdRng::seed_from_u64(
                    self.rng.random(),
                )))),
                warnings: vec![],
                gossip_mode: "simulated".into(),
                static_config: None,
                hosts_file: None,
                dns_suffix: String::new(),
                delta_interval: Duration::ZERO,
                gossip_settle: etcd_manager::leadership::settle_time(
                    gossip::DEFAULT_REFRESH_INTERVAL,
                ),
                rules: self.rules,
            },
            Arc::new(etcd_manager::metrics::Health::default()),
            store,
            lease,
            Arc::new(membership),
            node,
            clock,
        );
        use tracing::Instrument;
        let span = tracing::info_span!("manager", id = %id);
        tokio::spawn(driver.run(cancel).instrument(span));
    }

    /// The host dies: its processes end, its store handle fails, its
    /// tasks stop; its disk stays.
    fn crash(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        h.dead.store(true, Ordering::SeqCst);
        h.paused.store(false, Ordering::SeqCst);
        if let Some(c) = h.cancel.take() {
            c.cancel();
        }
        h.incarnation += 1;
        let inc = h.incarnation;
        self.world.with(|w| {
            w.counters.crashes += 1;
            w.net.up[i] = false;
            w.net.incarnation[i] = inc;
            // Its jobs end where they are, as its process does.
            if let Some((_, node)) = w.nodes[i].take() {
                node.halt();
            }
            w.inbox[i] = None;
            w.pause_armed[i] = false;
            w.note(format!("n{} crashes", i + 1));
        });
    }

    async fn restart(&mut self, i: usize) {
        self.world.with(|w| w.net.up[i] = true);
        self.start_host(i).await;
    }

    fn plan_faults(&mut self) -> Vec<(Duration, Fault)> {
        let mut out = vec![];
        let mut wiped = false;
        let mut at = FAULTS_FROM;
        while at < FAULTS_UNTIL {
            let for_ = Duration::from_secs(self.rng.random_range(3..40));
            let host = self.rng.random_range(0..self.n);
            let f = match self.rng.random_range(0..14) {
                0..=2 => Fault::Crash(host, for_),
                // Without `--auto-recover-quorum-loss`, wiped hosts could
                // take a majority's data, which only an operator can bring
                // back: those runs crash hosts instead.
                // One wipe per run: two could take every voter's data
                // (after a recovery to one voter), which only an operator
                // can bring back.
                3 if self.auto_recover.is_some() && !wiped => {
                    wiped = true;
                    Fault::Wipe(host, for_)
                }
                3 => Fault::Crash(host, for_),
                4..=5 => Fault::Isolate(host, for_),
                6 => Fault::Loss(self.rng.random_range(0.05..0.3), for_),
                7 => Fault::StoreErrors(self.rng.random_range(0.05..0.4), for_),
                8 => Fault::StoreDown(for_),
                9 => Fault::Pause(
                    self.rng.random_bool(0.3).then_some(host),
                    Duration::from_secs(self.rng.random_range(3..30)),
                ),
                10 => Fault::Slow(
                    host,
                    Duration::from_secs(self.rng.random_range(2..25)),
                    for_,
                ),
                11 => {
                    let other = (host + self.rng.random_range(1..self.n)) % self.n;
                    Fault::OneWay(host, other, for_)
                }
                12 => Fault::Stalls(self.rng.random_range(0.1..0.5), for_),
                _ => Fault::StoreCut(self.rng.random_bool(0.3).then_some(host), for_),
            };
            out.push((at, f));
            at += Duration::from_secs(self.rng.random_range(5..30));
        }
        // An operator acts now and then, at most once of each kind (two spec
        // changes: away and back, or on).
        let span = FAULTS_FROM.as_secs()..FAULTS_UNTIL.as_secs();
        let sizes: Vec<i32> = (1..=self.n as i32).filter(|k| k % 2 == 1).collect();
        let mut ops = vec![];
        if self.rng.random_bool(0.3) {
            ops.push(Operator::Restore);
        }
        if self.rng.random_bool(0.6) {
            ops.push(Operator::BackupNow);
        }
        if self.rng.random_bool(0.2) {
            ops.push(Operator::Malformed);
        }
        for _ in 0..self.rng.random_range(0..=2) {
            if self.rng.random_bool(0.5) {
                ops.push(Operator::Spec(sizes[self.rng.random_range(0..sizes.len())]));
            }
        }
        // Two in five restores are of a bad backup, drawn apart from the
        // run's generator (the fault schedule stays as it was).
        let rot = StdRng::seed_from_u64(self.seed ^ ROT_SALT).random_bool(0.4);
        for op in ops {
            let op = match op {
                Operator::Restore if rot => Operator::RestoreRotten,
                other => other,
            };
            let at = Duration::from_secs(self.rng.random_range(span.clone()));
            // Half the spec changes come with a pause of the leader in the
            // middle of one of the membership retries they bring, long
            // enough for a successor and shorter than a retry's 15 s.
            if matches!(op, Operator::Spec(_)) && self.rng.random_bool(0.5) {
                let len = Duration::from_secs(self.rng.random_range(7..14));
                out.push((
                    at,
                    Fault::PauseAtRefusal(len + Duration::from_secs(60), len),
                ));
            }
            out.push((at, Fault::Operator(op)));
        }
        // A third of the runs move the spec to another etcd version, drawn
        // apart from the run's generator (the fault schedule stays as it was).
        let mut salted = StdRng::seed_from_u64(self.seed ^ VERSION_SALT);
        if salted.random_bool(0.3) {
            let others: Vec<&'static str> = VERSIONS
                .into_iter()
                .filter(|v| *v != VERSION && *v != "3.6.16")
                .collect();
            let mut v = others[salted.random_range(0..others.len())];
            if v == "3.5.35" && StdRng::seed_from_u64(self.seed ^ MINOR_UP_SALT).random_bool(0.5) {
                v = "3.6.16";
            }
            let at = Duration::from_secs(salted.random_range(span.clone()));
            out.push((at, Fault::Operator(Operator::Version(v))));
        }
        out.sort_by_key(|(at, _)| *at);
        out
    }

    async fn play(&mut self) -> Outcome {
        let nobody = Arc::new(AtomicBool::new(false));
        self.backup_store(&nobody, &nobody, &nobody)
            .write_spec(&backup::ClusterSpec {
                member_count: self.n as i32,
                etcd_version: VERSION.into(),
            })
            .await
            .expect("spec");
        let (seed, recover, grace) = (self.seed, self.auto_recover, self.replace_grace);
        self.world.with(|w| {
            w.note(format!(
                "seed {seed}: {} managers, auto-recover {recover:?}, replace grace {grace:?}, strict reconfiguration check {}, older manager {:?}",
                w.net.up.len(),
                if w.strict_reconfig { "on" } else { "off" },
                w.older.map(|h| format!("n{}", h + 1)),
            ))
        });
        if self.scenario == Scenario::DenyBackups {
            self.store.deny_writes(Some("etcd.backup"));
        }
        for i in 0..self.n {
            self.start_host(i).await;
        }
        let faults = match self.scenario {
            Scenario::Random => self.plan_faults(),
            Scenario::DenyBackups => vec![],
        };
        // Events: (at, what): begins and ends of faults, in time order.
        let mut events: Vec<(Duration, usize, bool)> = vec![];
        for (k, (at, f)) in faults.iter().enumerate() {
            let len = match f {
                Fault::Crash(_, d)
                | Fault::Wipe(_, d)
                | Fault::Isolate(_, d)
                | Fault::Loss(_, d)
                | Fault::StoreErrors(_, d)
                | Fault::StoreDown(d)
                | Fault::Pause(_, d)
                | Fault::PauseAtRefusal(d, _)
                | Fault::Slow(_, _, d)
                | Fault::OneWay(_, _, d)
                | Fault::Stalls(_, d)
                | Fault::StoreCut(_, d) => *d,
                Fault::Operator(_) => Duration::ZERO,
            };
            events.push((*at, k, true));
            events.push(((*at + len).min(FAULTS_UNTIL), k, false));
        }
        events.sort_by_key(|(t, k, begin)| (*t, !*begin, *k));
        let writer = tokio::spawn(write_load(self.world.clone(), self.n));
        let watchdog = tokio::spawn({
            let world = self.world.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    world.with(|w| {
                        if let Some((at, what)) = w.stop_before_restore.clone()
                            && w.now() > at + Duration::from_secs(10)
                        {
                            w.fail(what);
                        }
                    });
                }
            }
        });
        let mut crashed = vec![0u32; self.n];
        // The host each Pause fault paused, by fault.
        let mut paused_by: BTreeMap<usize, usize> = BTreeMap::new();
        // The host each StoreCut fault cut off, by fault.
        let mut cut_by: BTreeMap<usize, usize> = BTreeMap::new();
        for (at, k, begin) in events {
            tokio::time::sleep_until(self.t0 + at).await;
            let f = faults[k].1.clone();
            self.world
                .with(|w| w.note(format!("{} {f:?}", if begin { "begin" } else { "end" })));
            match (f, begin) {
                (Fault::Crash(i, _), true) => {
                    crashed[i] += 1;
                    if crashed[i] == 1 {
                        self.crash(i);
                    }
                }
                (Fault::Crash(i, _), false) | (Fault::Wipe(i, _), false) => {
                    crashed[i] -= 1;
                    if crashed[i] == 0 {
                        self.restart(i).await;
                    }
                }
                (Fault::Wipe(i, _), true) => {
                    crashed[i] += 1;
                    if crashed[i] == 1 {
                        self.crash(i);
                    }
                    let _ = std::fs::remove_dir_all(&self.hosts[i].dir);
                }
                (Fault::Isolate(i, _), begin) => self.world.with(|w| {
                    w.cut_until[i] = if begin { Duration::MAX } else { w.now() };
                    for j in 0..w.net.up.len() {
                        if j != i {
                            w.net.cut[i][j] = begin;
                            w.net.cut[j][i] = begin;
                        }
                    }
                }),
                (Fault::Loss(p, _), begin) => self
                    .world
                    .with(|w| w.net.loss = if begin { p } else { 0.0 }),
                (Fault::StoreErrors(p, _), begin) => self.store.set_faults(StoreFaults {
                    error: if begin { p } else { 0.0 },
                    lost_answer: if begin { p / 2.0 } else { 0.0 },
                    ..StoreFaults::default()
                }),
                (Fault::StoreDown(_), begin) => self.store.set_faults(StoreFaults {
                    down: begin,
                    ..StoreFaults::default()
                }),
                (f @ (Fault::Pause(..) | Fault::PauseAtRefusal(..)), true) => {
                    // A third of the pauses begin at once, a third at the
                    // manager's next answer from etcd (in the middle of a
                    // pass), a third when etcd next refuses one of its
                    // membership changes (a retry under way).
                    let (host, when, len) = match f {
                        Fault::Pause(host, _) => (host, self.rng.random_range(0..3), None),
                        Fault::PauseAtRefusal(_, len) => (None, 2, Some(len)),
                        _ => (None, 0, None),
                    };
                    let holder = self.world.with(|w| w.lease_holder());
                    let i = host.or(holder).unwrap_or(0);
                    if crashed[i] == 0 && when > 0 {
                        paused_by.insert(k, i);
                        self.world.with(|w| {
                            if when == 1 {
                                w.pause_armed[i] = true;
                            } else {
                                w.pause_at_refusal[i] = true;
                                w.pause_len[i] = len;
                            }
                        });
                    } else if crashed[i] == 0 && !self.hosts[i].paused.swap(true, Ordering::SeqCst)
                    {
                        paused_by.insert(k, i);
                        self.world.with(|w| w.note(format!("n{} pauses", i + 1)));
                    }
                }
                (Fault::Pause(..) | Fault::PauseAtRefusal(..), false) => {
                    if let Some(i) = paused_by.remove(&k) {
                        self.world.with(|w| {
                            w.pause_armed[i] = false;
                            w.pause_at_refusal[i] = false;
                            w.pause_len[i] = None;
                        });
                        self.hosts[i].paused.store(false, Ordering::SeqCst);
                        self.world
                            .with(|w| w.note(format!("n{} runs again", i + 1)));
                    }
                }
                (Fault::Slow(i, extra, _), begin) => self
                    .world
                    .with(|w| w.net.slow[i] = if begin { extra } else { Duration::ZERO }),
                (Fault::OneWay(a, b, _), begin) => self.world.with(|w| {
                    w.net.cut[a][b] = begin;
                    for h in [a, b] {
                        w.cut_until[h] = if begin { Duration::MAX } else { w.now() };
                    }
                }),
                (Fault::Stalls(p, _), begin) => self
                    .world
                    .with(|w| w.net.stall = if begin { p } else { 0.0 }),
                (Fault::StoreCut(host, _), true) => {
                    let i = host.or(self.world.with(|w| w.lease_holder())).unwrap_or(0);
                    // Half the cuts begin at once, half when etcd next
                    // refuses a membership change of the manager there.
                    let armed = self.rng.random_bool(0.5);
                    cut_by.insert(k, i);
                    self.world.with(|w| {
                        if armed {
                            w.store_cut_armed[i] = true;
                        } else {
                            w.store_cut[i].store(true, Ordering::SeqCst);
                            w.note(format!("n{} loses the store", i + 1));
                        }
                    });
                }
                (Fault::StoreCut(..), false) => {
                    if let Some(i) = cut_by.remove(&k) {
                        self.world.with(|w| {
                            w.store_cut_armed[i] = false;
                            if w.store_cut[i].swap(false, Ordering::SeqCst) {
                                w.note(format!("n{} reaches the store again", i + 1));
                            }
                        });
                    }
                }
                (Fault::Operator(op), true) => {
                    let nobody = Arc::new(AtomicBool::new(false));
                    let store = self.backup_store(&nobody, &nobody, &nobody);
                    let (world, raw) = (self.world.clone(), self.store.clone());
                    let dir = self.tmp.path().to_path_buf();
                    tokio::spawn(operator(world, store, raw, dir, op));
                }
                (Fault::Operator(_), false) => {}
            }
        }
        if self.scenario == Scenario::DenyBackups {
            self.watch_for_an_operator_call().await;
        }
        // Heal whatever is left.
        self.store.set_faults(StoreFaults::default());
        self.store.deny_writes(None);
        self.world.with(|w| {
            w.net.loss = 0.0;
            w.net.slow.fill(Duration::ZERO);
            w.net.stall = 0.0;
            for row in w.net.cut.iter_mut() {
                row.fill(false);
            }
        });
        for h in &self.hosts {
            h.paused.store(false, Ordering::SeqCst);
        }
        self.world.with(|w| {
            w.pause_armed.fill(false);
            w.pause_at_refusal.fill(false);
            w.store_cut_armed.fill(false);
            for c in &w.store_cut {
                c.store(false, Ordering::SeqCst);
            }
        });
        let down: Vec<usize> = (0..self.n).filter(|i| crashed[*i] > 0).collect();
        for i in down {
            self.restart(i).await;
        }
        // Wait until the spec is reached (then a little more), or the end.
        // An operator on call answers `status` asking for a restore (every
        // voter's data lost, e.g. a one-member cluster's disk) once.
        let mut whole_since: Option<Duration> = None;
        let mut answered_alert = false;
        let nobody = Arc::new(AtomicBool::new(false));
        let status_store = self.backup_store(&nobody, &nobody, &nobody);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (now, whole, broken) = self.world.with(|w| {
                let whole = whole(w, w.want_members).is_ok() && w.operator.is_empty();
                (w.now(), whole, w.violation.is_some())
            });
            if broken {
                break;
            }
            if !whole
                && !answered_alert
                && now.as_secs() % 10 == 0
                && status_says(&status_store, "must issue restore-backup").await
            {
                answered_alert = true;
                self.world
                    .with(|w| w.note("operator: status asks for a restore".into()));
                let (world, raw) = (self.world.clone(), self.store.clone());
                let dir = self.tmp.path().to_path_buf();
                let store = self.backup_store(&nobody, &nobody, &nobody);
                tokio::spawn(operator(world, store, raw, dir, Operator::Restore));
            }
            if whole {
                let since = *whole_since.get_or_insert(now);
                if now >= since + Duration::from_secs(30) {
                    break;
                }
            } else {
                whole_since = None;
            }
            if now >= END {
                break;
            }
        }
        writer.abort();
        watchdog.abort();
        let store_faults = self.store.injected();
        for h in &mut self.hosts {
            if let Some(c) = h.cancel.take() {
                h.dead.store(true, Ordering::SeqCst);
                c.cancel();
            }
        }
        self.world.with(|w| {
            if w.violation.is_none() {
                if let Err(e) = whole(w, w.want_members) {
                    w.fail(format!(
                        "not whole {:?} after healing at {FAULTS_UNTIL:?}: {e}",
                        END
                    ));
                } else if let Some((what, at)) = w.operator.first() {
                    let what = format!("the operator's {what} of {at:?} was not done by {END:?}");
                    w.fail(what);
                } else {
                    // Every write acknowledged since the data was last
                    // replaced (a restore) is in the cluster that serves.
                    let token = w.model.serving_token(w).unwrap_or_default();
                    let kv = &w.model.clusters[&token].kv;
                    let since = w.replaced_at.unwrap_or_default();
                    let lost: Vec<(&String, &Duration)> = w
                        .acked
                        .iter()
                        .filter(|(k, at)| **at >= since && !kv.contains_key(*k) && !w.restore_lost(k))
                        .collect();
                    if let Some((key, at)) = lost.first() {
                        let what = format!(
                            "{} acknowledged writes lost outside a restore (data last replaced at {:?}), first {key:?} acknowledged at {at:?}",
                            lost.len(),
                            w.replaced_at
                        );
                        w.fail(what);
                    }
                }
            }
            Outcome {
                nodes: self.n,
                violation: w.violation.clone(),
                trace: std::mem::take(&mut w.trace),
                effects: w.counters.effects,
                fenced_requests: w.counters.fenced_requests,
                late_requests: w.counters.late_requests,
                acked_writes: w.counters.acked_writes,
                restores: w.restores,
                restore_jobs: w.counters.restore_jobs,
                restore_calls: w.counters.restore_calls,
                dump_restores: w.counters.dump_restores,
                v2_checks: w.counters.v2_checks,
                crashes: w.counters.crashes,
                store_faults,
                needs_operator_said: self.needs_operator_said.clone(),
            }
        })
    }
}

/// The operator's command, retried until the store takes it (as an
/// operator would run `etcd-manager-ctl` again); then it waits until the
/// command is seen through and clears it from the list the end checks.
async fn operator(
    world: World,
    store: backup::BackupStore,
    raw: FaultyStore,
    dir: std::path::PathBuf,
    op: Operator,
) {
    use object_store::ObjectStoreExt;
    let what = format!("{op:?}");
    let issued = world.with(|w| {
        let now = w.now();
        w.note(format!("operator: {what}"));
        w.operator.push((what.clone(), now));
        now
    });
    let wall = std::time::UNIX_EPOCH + Duration::from_secs(1_790_000_000) + issued;
    let stamp = wall
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut before: Option<std::collections::BTreeSet<String>> = None;
    let mut requested = issued;
    let mut requested_first: Option<Duration> = None;
    let mut restore_of: Option<String> = None;
    // The rotten backup and its data file as written.
    let mut rotten: Option<(String, Bytes)> = None;
    let mut rotten_command: Option<String> = None;
    let data_of = |name: &str| {
        object_store::path::Path::from(format!("{CLUSTER}/{name}/{}", backup::BACKUP_DATA_FILE))
    };
    match &op {
        Operator::Spec(k) => world.with(|w| w.want_members = *k as usize),
        Operator::Version(v) => world.with(|w| w.want_version = v),
        _ => {}
    }
    loop {
        let done: Result<(), String> =
            async {
                match &op {
                    Operator::Restore => {
                        let backups = store.list_backups().await.map_err(|e| e.to_string())?;
                        // Not the one another operator restores to show it is
                        // refused (see RestoreRotten).
                        let rotten = world.with(|w| w.rotten.clone());
                        let Some(newest) =
                            backups.iter().rev().find(|b| Some(*b) != rotten.as_ref())
                        else {
                            return Ok(());
                        };
                        queue_restore(&store, newest, wall).await?;
                        restore_of = Some(newest.clone());
                        Ok(())
                    }
                    Operator::RestoreRotten => {
                        if rotten.is_none() {
                            let backups = store.list_backups().await.map_err(|e| e.to_string())?;
                            let Some(newest) = backups.last() else {
                                return Ok(());
                            };
                            let extra = |b: &str| {
                                let (store, b) = (store.clone(), b.to_string());
                                async move {
                                    store.read_backup_extra(&b).await.map_err(|e| e.to_string())
                                }
                            };
                            let Some(want) = extra(newest).await? else {
                                return Ok(());
                            };
                            // An older backup with other content that fits in
                            // what the newest one declares.
                            let mut donor = None;
                            for b in backups.iter().rev().skip(1) {
                                if let Some(x) = extra(b).await?
                                    && x.snapshot_sha256 != want.snapshot_sha256
                                    && x.snapshot_size <= want.snapshot_size
                                    && x.compressed_size <= want.compressed_size
                                {
                                    donor = Some(b.clone());
                                    break;
                                }
                            }
                            let Some(donor) = donor else {
                                return Ok(());
                            };
                            let get = |p: object_store::path::Path| {
                                let raw = raw.clone();
                                async move {
                                    match raw.get(&p).await {
                                        Ok(r) => r.bytes().await.map_err(|e| e.to_string()),
                                        Err(e) => Err(e.to_string()),
                                    }
                                }
                            };
                            let original = get(data_of(newest)).await?;
                            let other = get(data_of(&donor)).await?;
                            raw.put(&data_of(newest), other.into())
                                .await
                                .map_err(|e| e.to_string())?;
                            world.with(|w| {
                                w.rotten = Some(newest.clone());
                                w.note(format!("operator: the data of {newest} is now {donor}'s"));
                            });
                            rotten = Some((newest.clone(), original));
                        }
                        let Some((name, _)) = &rotten else {
                            return Ok(());
                        };
                        rotten_command = Some(queue_restore(&store, name, wall).await?);
                        restore_of = Some(name.clone());
                        Ok(())
                    }
                    Operator::BackupNow => {
                        // As the ctl: the backups before, then the request.
                        if before.is_none() {
                            let names = store.list_backups().await.map_err(|e| e.to_string())?;
                            before = Some(names.into_iter().collect());
                            // The ctl's own time between its look and its
                            // request (a backup may begin meanwhile).
                            let ms = world.with(|w| w.rng.random_range(0..10_000));
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let body = etcd_manager::backups::backup_now::BackupNowRequest {
                            requested_at: stamp,
                        }
                        .body();
                        // The request counts from its first attempt: a write
                        // whose answer was lost may have landed then, and the
                        // retry carries the same stamp.
                        if requested_first.is_none() {
                            requested_first = Some(world.with(|w| w.now()));
                        }
                        store
                            .write_manager_file(backup::layout::BACKUP_NOW_FILE, body)
                            .await
                            .map_err(|e| e.to_string())?;
                        requested = requested_first.unwrap_or(issued);
                        Ok(())
                    }
                    // The spec as the operator wants it now: a concurrent change
                    // of the other field is kept.
                    Operator::Spec(_) | Operator::Version(_) => {
                        let spec = world.with(|w| backup::ClusterSpec {
                            member_count: w.want_members as i32,
                            etcd_version: w.want_version.into(),
                        });
                        store.write_spec(&spec).await.map_err(|e| e.to_string())
                    }
                    Operator::Malformed => {
                        let path = object_store::path::Path::from(format!(
                            "{CLUSTER}/{}/2026-12-01T00:00:00Z-000000/{}",
                            backup::CONTROL_DIR,
                            backup::COMMAND_FILE
                        ));
                        raw.put(&path, b"{\"restoreBackup\": [not json".to_vec().into())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                }
            }
            .await;
        match done {
            Ok(()) => break,
            Err(e) => {
                world.with(|w| w.note(format!("operator: {what} failed, again in 5 s: {e}")));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
    match &op {
        Operator::Restore | Operator::RestoreRotten if restore_of.is_none() => {
            world.with(|w| w.note("operator: no backup to restore (or none to rot) yet".into()));
        }
        _ => {}
    }
    // Seen through: the restore ran and its command is gone; the backup
    // was taken and its request file is gone. A spec or a bad file needs
    // nothing more here (the end checks the spec).
    loop {
        let pending = match &op {
            Operator::Restore if restore_of.is_some() => {
                let restored = world.with(|w| w.replaced_at.is_some_and(|t| t > issued));
                !restored || !matches!(store.list_commands().await, Ok(c) if c.is_empty())
            }
            // Refused, as it must be: the status says so. Then the command
            // goes and the file is put back.
            Operator::RestoreRotten if rotten.is_some() => {
                let (name, original) = rotten.clone().unwrap_or_default();
                let refused = status_says(&store, &format!("refusing restore-backup {name}")).await;
                let cleared = refused
                    && async {
                        if let Some(c) = &rotten_command {
                            match store.delete_command(c).await {
                                Ok(()) | Err(backup::Error::NotFound { .. }) => {}
                                Err(e) => return Err(e.to_string()),
                            }
                        }
                        raw.put(&data_of(&name), original.clone().into())
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<(), String>(())
                    }
                    .await
                    .is_ok();
                if cleared {
                    world.with(|w| {
                        w.rotten = None;
                        w.note(format!(
                            "operator: the restore of the bad {name} was refused; command deleted, data put back"
                        ));
                    });
                }
                !cleared
            }
            Operator::BackupNow => {
                let before = before.clone().unwrap_or_default();
                match etcd_manager::backups::backup_now::find_answer(&store, &before, stamp).await {
                    // Checked once the backup downloads (the store fails now and then).
                    Ok(Some(name)) => !answered(&world, &store, &dir, &name, requested).await,
                    _ => true,
                }
            }
            _ => false,
        };
        if !pending {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    world.with(|w| {
        w.note(format!("operator: {what} seen through"));
        w.operator.retain(|(x, at)| !(x == &what && *at == issued));
    });
}

/// Whether one of the waits in the leader's status report (as
/// `etcd-manager-ctl status` reads it) contains `needle`.
async fn status_says(store: &backup::BackupStore, needle: &str) -> bool {
    store
        .read_manager_file(backup::layout::STATUS_FILE)
        .await
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<etcd_manager::status::ClusterStatus>(&b).ok())
        .is_some_and(|s| s.waits.iter().any(|w| w.contains(needle)))
}

/// `etcd-manager-ctl restore-backup <backup>`: a command with the spec of
/// now; its name.
async fn queue_restore(
    store: &backup::BackupStore,
    backup: &str,
    wall: std::time::SystemTime,
) -> Result<String, String> {
    let spec = store.read_spec().await.map_err(|e| e.to_string())?;
    let cmd = backup::Command {
        timestamp: 0,
        restore_backup: Some(backup::RestoreBackupCommand {
            cluster_spec: spec,
            backup: backup.to_string(),
        }),
    };
    store
        .add_command(&cmd, wall)
        .await
        .map_err(|e| e.to_string())
}

/// The backup `backup-now` answered with holds every write acknowledged
/// before the request (since the data was last replaced). False when the
/// store failed the download: the caller asks again.
async fn answered(
    world: &World,
    store: &backup::BackupStore,
    dir: &std::path::Path,
    name: &str,
    requested: Duration,
) -> bool {
    if world.with(|w| w.rotten.as_deref() == Some(name)) {
        return false; // asked again once the operator has put it back
    }
    let dest = dir.join(format!("answer-{}", requested.as_millis()));
    let keys = match store.download_backup(name, &dest).await {
        Ok(_) => etcd_model::snapshot_keys(&dest),
        Err(backup::Error::Store { .. }) => return false,
        Err(e) => Err(e.to_string()),
    };
    let _ = std::fs::remove_file(&dest);
    world.with(|w| {
        let keys = match keys {
            Ok(keys) => keys,
            Err(e) => {
                w.fail(format!("backup-now answered with {name}, which does not restore: {e}"));
                return;
            }
        };
        let since = w.replaced_at.unwrap_or_default();
        let missing: Vec<(&String, &Duration)> = w
            .acked
            .iter()
            .filter(|(k, at)| {
                **at < requested && **at >= since && !keys.contains(*k) && !w.restore_lost(k)
            })
            .collect();
        if let Some((key, at)) = missing.first() {
            let what = format!(
                "backup-now of {requested:?} answered with {name}, which lacks {} writes acknowledged before the request, first {key:?} at {at:?}",
                missing.len()
            );
            w.fail(what);
        } else {
            w.note(format!("operator: backup-now answered with {name}"));
        }
    });
    true
}

/// A write landed in the store: lease records and retired clusters are
/// facts the checks need.
fn landed(world: &World, location: &object_store::path::Path, body: &Bytes) {
    let path = location.as_ref();
    if let Some(name) = location.filename()
        && path.contains("etcd-manager/lease/")
        && let Ok(seq) = name.parse::<u64>()
        && let Ok(r) = lock::LeaseRecord::parse(location, seq, body)
    {
        world.with(|w| {
            if w.lease.as_ref().is_none_or(|(s, _, _)| r.seq > *s) {
                w.note(format!(
                    "lease record {}: {}{}",
                    r.seq,
                    r.holder,
                    if r.released { " (released)" } else { "" }
                ));
                w.lease = Some((r.seq, r.holder.clone(), r.released));
            }
        });
    }
    if let Some(dir) = path.strip_suffix(&format!("/{}", backup::BACKUP_EXTRA_FILE))
        && let Some((_, name)) = dir.rsplit_once('/')
        && let Ok(x) = serde_json::from_slice::<backup::BackupExtra>(body)
    {
        world.with(|w| {
            w.written
                .entry(name.to_string())
                .or_insert(x.snapshot_sha256);
        });
    }
    if let Some(dir) = path.strip_suffix(&format!("/{}", backup::RESTORE_MARKER_FILE)) {
        let token = serde_json::from_slice::<backup::RestoreProgress>(body)
            .ok()
            .map(|p| p.cluster_token);
        let command = dir.rsplit_once('/').map(|(_, c)| c.to_string());
        world.with(|w| {
            let now = w.now();
            w.restore_marked_at = Some(now);
            if let (Some(token), Some(command)) = (token, command) {
                w.begun_for.insert(token, command);
            }
        });
    }
    if let Some(dir) = path.strip_suffix(&format!("/{}", backup::COMMAND_FILE))
        && let Some((_, name)) = dir.rsplit_once('/')
        && let Ok(c) = serde_json::from_slice::<backup::Command>(body)
        && c.timestamp != 0
        && let Some(r) = c.restore_backup
    {
        world.with(|w| {
            let running = w.model.serving_versions(w);
            let dump = r
                .cluster_spec
                .as_ref()
                .is_some_and(|s| !running.is_empty() && !running.contains(&s.etcd_version));
            w.leader_commands
                .insert(name.to_string(), (r.backup.clone(), dump));
        });
    }
    let retired = format!("etcd-manager/{}--", backup::layout::RETIRED_CLUSTER_FILE);
    if let Some((_, token)) = path.split_once(&retired) {
        let v = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
        let by_recovery = v["retiredBy"] == "quorum recovery";
        let by_restore = v["retiredBy"] == "restore-backup";
        if by_recovery {
            let backup = v["backup"].as_str().map(str::to_string);
            world.with(|w| {
                w.recovery_backups.extend(backup);
                w.retired(token);
            });
        }
        if by_restore {
            world.with(|w| {
                let now = w.now();
                w.retired_by_restore.entry(token.to_string()).or_insert(now);
            });
        }
    }
}

/// The spec is reached: one cluster serves with `n` started voters, none
/// quarantined, every one of them on its own host.
fn whole(w: &State, n: usize) -> Result<(), String> {
    let token = w.model.serving_token(w).ok_or("no etcd runs")?;
    let c = &w.model.clusters[&token];
    let voters: Vec<_> = c.members.iter().filter(|m| !m.learner).collect();
    if voters.len() != n || c.members.len() != n {
        return Err(format!(
            "cluster {token} has {} members ({} voters), not {n}",
            c.members.len(),
            voters.len()
        ));
    }
    for m in voters {
        let Some(p) = w.model.procs.iter().find(|p| {
            p.token == token
                && p.member == m.id
                && p.running
                && w.net.up[p.host]
                && w.net.incarnation[p.host] == p.incarnation
        }) else {
            return Err(format!("member {} ({:x}) does not run", m.name, m.id));
        };
        if p.urls.iter().any(|u| u.ends_with(":3994")) {
            return Err(format!("member {} is quarantined", m.name));
        }
        if p.version != w.want_version {
            return Err(format!(
                "member {} runs etcd {}, not {}",
                m.name, p.version, w.want_version
            ));
        }
    }
    Ok(())
}

/// A client writes a key every half second through a random host's etcd.
async fn write_load(world: World, n: usize) {
    let mut k = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        world.with(|w| {
            let host = w.rng.random_range(0..n);
            k += 1;
            let key = format!("/registry/k{k:06}");
            if let Ok(token) = etcd_model::client_put(w, &url(host, 4001), &key, "v") {
                w.counters.acked_writes += 1;
                let now = w.now();
                let cut = w.cut_until[host];
                w.acked_via.insert(key.clone(), (token, cut));
                w.acked.insert(key, now);
            }
        });
    }
}
