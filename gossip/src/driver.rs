//! The tokio driver: one task owns the socket and the core.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::core::{GossipCore, GossipEvent};
use crate::discovery::{self, DiscoveryRecord};
use crate::error::Error;
use crate::{GossipConfig, GossipKeys, MemberView};

/// The longest a refresh waits for DNS before giving up until the next one.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer: larger than any packet foca accepts, so oversized
/// datagrams are seen (and counted) rather than silently cut.
const RECV_BUFFER: usize = 64 * 1024;
/// Commands waiting for the driver task; senders wait when it is full.
const COMMAND_QUEUE: usize = 16;
/// Most checks of plain senders under way at once.
const MAX_PLAIN_CHECKS: usize = 4;

/// A command from a handle to the driver task.
enum Command {
    /// Replace the keyring; the sender learns when it is in effect.
    SetKeys(GossipKeys, oneshot::Sender<()>),
}

#[derive(Debug)]
struct Shared {
    id: String,
    local_addr: SocketAddr,
    advertise: SocketAddr,
    bad_packets: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// Members this node saw declared down.
    downs: AtomicU64,
    /// Times the cluster declared this node down and it rejoined.
    rejoins: AtomicU64,
    /// Plain senders vouched for now.
    plain_peers: AtomicU64,
    /// Payload items dropped because another member sent them.
    foreign_items: AtomicU64,
}

/// A cheap, cloneable handle on a running gossip node.
#[derive(Clone)]
pub struct GossipHandle {
    shared: Arc<Shared>,
    payload_tx: Arc<watch::Sender<Vec<u8>>>,
    commands: mpsc::Sender<Command>,
    members_rx: watch::Receiver<Vec<MemberView>>,
    leave: CancellationToken,
    done: CancellationToken,
}

impl std::fmt::Debug for GossipHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipHandle")
            .field("id", &self.shared.id)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl GossipHandle {
    /// Our node id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The address the UDP socket is bound to (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The address we advertise to others (port 0 resolved).
    pub fn advertise_addr(&self) -> SocketAddr {
        self.shared.advertise
    }

    /// Publishes a new payload (the latest call wins if several are pending).
    /// A payload too large for one packet is logged and not published.
    pub fn set_payload(&self, payload: Vec<u8>) {
        self.payload_tx.send_replace(payload);
    }

    /// Replaces the keyring of the running node (e.g. after the key file
    /// changed or on SIGHUP) and returns once packets are sealed and opened
    /// with it. Rotate without downtime by applying, on every node in turn
    /// and waiting for each step to reach all of them: `[old, new]`, then
    /// `[new, old]`, then `[new]`.
    ///
    /// Fails with [`Error::NotRunning`] if the gossip task has ended.
    pub async fn set_keys(&self, keys: GossipKeys) -> Result<(), Error> {
        let (done_tx, done_rx) = oneshot::channel();
        self.commands
            .send(Command::SetKeys(keys, done_tx))
            .await
            .map_err(|_| Error::NotRunning)?;
        done_rx.await.map_err(|_| Error::NotRunning)
    }

    /// All known members including ourselves (is_self), sorted by id.
    pub fn members(&self) -> Vec<MemberView> {
        self.members_rx.borrow().clone()
    }

    /// Membership snapshots, published whenever one changes.
    pub fn subscribe(&self) -> watch::Receiver<Vec<MemberView>> {
        self.members_rx.clone()
    }

    /// Packets dropped because they did not decode or (with keys) were not
    /// authenticated by any key of the ring.
    pub fn bad_packets(&self) -> u64 {
        self.shared.bad_packets.load(Ordering::Relaxed)
    }

    /// UDP payload bytes sent and received so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.bytes_sent.load(Ordering::Relaxed),
            self.shared.bytes_received.load(Ordering::Relaxed),
        )
    }

    /// (members this node saw declared down, times this node was declared
    /// down and rejoined) so far. A live member declared down is a false
    /// down; both stay at zero on a healthy network.
    pub fn downs(&self) -> (u64, u64) {
        (
            self.shared.downs.load(Ordering::Relaxed),
            self.shared.rejoins.load(Ordering::Relaxed),
        )
    }

    /// Plain senders (managers of a release that cannot seal) taken now.
    pub fn plain_peers(&self) -> u64 {
        self.shared.plain_peers.load(Ordering::Relaxed)
    }

    /// Payload items dropped because a member other than the one they
    /// describe sent them.
    pub fn foreign_items(&self) -> u64 {
        self.shared.foreign_items.load(Ordering::Relaxed)
    }

    /// True once the driver task has ended (left, cancelled or failed).
    pub fn is_finished(&self) -> bool {
        self.done.is_cancelled()
    }

    /// Announce leave, flush, and wait (up to `timeout`) for the task to end.
    pub async fn leave(&self, timeout: Duration) {
        self.leave.cancel();
        if tokio::time::timeout(timeout, self.done.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(id = %self.shared.id, ?timeout, "gossip task did not end in time after leave");
        }
    }
}

/// Bind the socket (errors here, synchronously in the caller's await, not inside the task), start the driver task.
///
/// The task ends on graceful leave ([`GossipHandle::leave`]) or when
/// `cancel` fires (then without telling the cluster, as a crash would).
pub async fn start(
    mut config: GossipConfig,
    payload: Vec<u8>,
    cancel: CancellationToken,
) -> Result<(GossipHandle, JoinHandle<()>), Error> {
    for seed in &config.seeds {
        discovery::parse_seed(seed)?;
    }
    if config.id.is_empty() {
        return Err(Error::InvalidConfig {
            reason: "the node id is empty; give every node a unique, stable id".to_string(),
        });
    }
    // Peers check every id they receive; ours must pass their check. (The
    // sans-IO core takes any non-empty id, so a test can play a stranger.)
    discovery::check_id_for_file(&config.id)?;
    config.effective_foca_config()?;

    let bind_err = |source| Error::Bind {
        addr: config.bind,
        source,
    };
    let socket = UdpSocket::bind(config.bind).await.map_err(bind_err)?;
    let local_addr = socket.local_addr().map_err(bind_err)?;
    if config.advertise.port() == 0 {
        config.advertise.set_port(local_addr.port());
    }
    if config.advertise.ip().is_unspecified() {
        if local_addr.ip().is_unspecified() {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "advertise address {} is unspecified; set it to an address other nodes can reach",
                    config.advertise
                ),
            });
        }
        config.advertise.set_ip(local_addr.ip());
    }

    let core = GossipCore::new(&config, payload.clone(), rand::random())?;
    let record = DiscoveryRecord {
        id: config.id.clone(),
        addr: config.advertise,
    };
    if let Some(dir) = &config.discovery_dir {
        discovery::write_record(dir, &record).await?;
    }

    let shared = Arc::new(Shared {
        id: config.id.clone(),
        local_addr,
        advertise: config.advertise,
        bad_packets: AtomicU64::new(0),
        downs: AtomicU64::new(0),
        rejoins: AtomicU64::new(0),
        bytes_sent: AtomicU64::new(0),
        bytes_received: AtomicU64::new(0),
        plain_peers: AtomicU64::new(0),
        foreign_items: AtomicU64::new(0),
    });
    let (payload_tx, payload_rx) = watch::channel(payload);
    let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
    let (members_tx, members_rx) = watch::channel(core.members());
    let leave = CancellationToken::new();
    let done = CancellationToken::new();
    let driver = Driver {
        core,
        socket,
        local_addr,
        seeds: config.seeds.clone(),
        discovery_dir: config.discovery_dir.clone(),
        seed_dir: config.seed_dir.clone(),
        record,
        refresh_interval: config.refresh_interval,
        payload_rx,
        commands_rx,
        members_tx,
        shared: shared.clone(),
        plain_check: config.plain_check.clone(),
        plain_checks: JoinSet::new(),
    };
    tracing::info!(id = %config.id, %local_addr, advertise = %config.advertise, incarnation = config.incarnation, keys = config.keys.as_ref().map_or(0, GossipKeys::len), "gossip started");
    let span = tracing::info_span!("gossip", id = %config.id);
    let task = tokio::spawn(
        driver
            .run(leave.clone(), cancel, done.clone())
            .instrument(span),
    );
    let handle = GossipHandle {
        shared,
        payload_tx: Arc::new(payload_tx),
        commands: commands_tx,
        members_rx,
        leave,
        done,
    };
    Ok((handle, task))
}

struct Driver {
    core: GossipCore,
    socket: UdpSocket,
    local_addr: SocketAddr,
    seeds: Vec<String>,
    discovery_dir: Option<PathBuf>,
    seed_dir: Option<(PathBuf, u16)>,
    record: DiscoveryRecord,
    refresh_interval: Duration,
    payload_rx: watch::Receiver<Vec<u8>>,
    commands_rx: mpsc::Receiver<Command>,
    members_tx: watch::Sender<Vec<MemberView>>,
    shared: Arc<Shared>,
    plain_check: Option<Arc<dyn crate::PlainPeerCheck>>,
    /// Checks of plain senders under way: (address, id, confirmed).
    plain_checks: JoinSet<(SocketAddr, String, bool)>,
}

/// An address to announce to, with the node id when a discovery record
/// named it.
type Candidate = (Option<String>, SocketAddr);

impl Driver {
    async fn run(
        mut self,
        leave: CancellationToken,
        cancel: CancellationToken,
        done: CancellationToken,
    ) {
        let _done = done.drop_guard();
        self.core.start(Instant::now().into_std());
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut refresh = tokio::time::interval(self.refresh_interval);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut jobs: JoinSet<Vec<Candidate>> = JoinSet::new();
        let mut payload_open = true;
        let mut commands_open = true;
        loop {
            let deadline = self.core.next_deadline();
            let timer = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => {
                    tracing::info!(id = %self.record.id, "gossip cancelled; stopping without leaving");
                    break;
                }
                () = leave.cancelled() => {
                    jobs.shutdown().await;
                    self.core.leave(Instant::now().into_std());
                    self.flush().await;
                    if let Some(dir) = &self.discovery_dir {
                        discovery::remove_record(dir, &self.record.id).await;
                    }
                    self.publish();
                    tracing::info!(id = %self.record.id, "left the gossip cluster");
                    break;
                }
                () = timer => {
                    let now = Instant::now().into_std();
                    // Read what has already arrived before judging timeouts:
                    // a node that was not scheduled for a while must not take
                    // its own delay for its peers' silence (with the local
                    // health score in the core, Lifeguard's self-awareness).
                    loop {
                        match self.socket.try_recv_from(&mut buf) {
                            Ok((len, from)) => {
                                self.shared.bytes_received.fetch_add(len as u64, Ordering::Relaxed);
                                let data = buf.get(..len).unwrap_or_default();
                                self.core.handle_packet(from, data, now);
                            }
                            Err(error) => {
                                if error.kind() != std::io::ErrorKind::WouldBlock {
                                    tracing::debug!(%error, "gossip receive failed");
                                }
                                break;
                            }
                        }
                    }
                    self.core.handle_timers(now);
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        self.shared.bytes_received.fetch_add(len as u64, Ordering::Relaxed);
                        let data = buf.get(..len).unwrap_or_default();
                        self.core.handle_packet(from, data, Instant::now().into_std());
                    }
                    Err(error) => tracing::debug!(%error, "gossip receive failed"),
                },
                changed = self.payload_rx.changed(), if payload_open => match changed {
                    Ok(()) => {
                        let payload = self.payload_rx.borrow_and_update().clone();
                        if let Err(error) = self.core.set_payload(payload, Instant::now().into_std()) {
                            tracing::error!(%error, "gossip payload not published");
                        }
                    }
                    Err(_) => payload_open = false,
                },
                command = self.commands_rx.recv(), if commands_open => match command {
                    Some(Command::SetKeys(keys, done)) => {
                        self.core.set_keys(Some(keys));
                        // The caller may have stopped waiting; nothing to do then.
                        let _ = done.send(());
                    }
                    None => commands_open = false,
                },
                _ = refresh.tick() => {
                    if jobs.is_empty() {
                        jobs.spawn(discover(self.seeds.clone(), self.discovery_dir.clone(), self.seed_dir.clone(), self.record.clone()));
                    }
                }
                Some(found) = jobs.join_next(), if !jobs.is_empty() => match found {
                    Ok(candidates) => self.announce(candidates),
                    Err(error) => tracing::warn!(%error, "gossip discovery job failed"),
                },
                Some(checked) = self.plain_checks.join_next(), if !self.plain_checks.is_empty() => match checked {
                    Ok((from, id, true)) => {
                        self.core.vouch_plain(from, id, Instant::now().into_std());
                        // Announce to it now, in plain, rather than at the next refresh.
                        self.core.announce(from);
                    }
                    Ok((from, id, false)) => {
                        tracing::warn!(%from, member = %id, "a plain gossip sender could not be confirmed by its peer API certificate; its packets stay dropped");
                    }
                    Err(error) => tracing::warn!(%error, "gossip plain sender check failed"),
                },
            }
            self.flush().await;
            self.publish();
        }
    }

    fn announce(&mut self, candidates: Vec<Candidate>) {
        for (id, addr) in candidates {
            let ours = addr == self.local_addr || addr == self.record.addr;
            let known = self.core.is_active_addr(addr)
                || id.as_deref().is_some_and(|id| self.core.is_active_id(id));
            if !ours && !known {
                tracing::debug!(%addr, member = id.as_deref().unwrap_or(""), "announcing to seed");
                self.core.announce(addr);
            }
        }
    }

    async fn flush(&mut self) {
        while let Some((to, packet)) = self.core.pop_packet() {
            match self.socket.send_to(&packet, to).await {
                Ok(n) => {
                    self.shared
                        .bytes_sent
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(error) => tracing::debug!(%to, %error, "gossip send failed"),
            }
        }
    }

    fn publish(&mut self) {
        self.shared
            .bad_packets
            .store(self.core.bad_packets(), Ordering::Relaxed);
        self.shared
            .plain_peers
            .store(self.core.plain_peers().len() as u64, Ordering::Relaxed);
        self.shared
            .foreign_items
            .store(self.core.foreign_items(), Ordering::Relaxed);
        for event in self.core.drain_events() {
            match event {
                GossipEvent::PlainSender { from, id } => match &self.plain_check {
                    Some(check) if self.plain_checks.len() < MAX_PLAIN_CHECKS => {
                        let fut = check.check(from, id.clone());
                        self.plain_checks
                            .spawn(async move { (from, id, fut.await) });
                    }
                    Some(_) => {
                        tracing::debug!(%from, member = %id, "plain gossip sender not checked now: too many checks under way")
                    }
                    None => {
                        tracing::debug!(%from, member = %id, "plain gossip packet dropped (we seal)")
                    }
                },
                GossipEvent::MemberDown(_) => {
                    self.shared.downs.fetch_add(1, Ordering::Relaxed);
                }
                GossipEvent::Rejoined(_) => {
                    self.shared.rejoins.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        let members = self.core.members();
        self.members_tx.send_if_modified(|current| {
            if *current == members {
                false
            } else {
                *current = members;
                true
            }
        });
    }
}

/// One refresh: resolve seeds, rewrite our discovery record, read the others.
async fn discover(
    seeds: Vec<String>,
    dir: Option<PathBuf>,
    seed_dir: Option<(PathBuf, u16)>,
    me: DiscoveryRecord,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> =
        match tokio::time::timeout(RESOLVE_TIMEOUT, discovery::resolve_seeds(&seeds)).await {
            Ok(addrs) => addrs.into_iter().map(|a| (None, a)).collect(),
            Err(_) => {
                tracing::debug!("gossip seed resolution timed out");
                Vec::new()
            }
        };
    if let Some((sd, port)) = seed_dir {
        out.extend(
            discovery::read_seed_dir(&sd, port)
                .await
                .into_iter()
                .map(|a| (None, a)),
        );
    }
    if let Some(dir) = dir {
        if let Err(error) = discovery::write_record(&dir, &me).await {
            tracing::warn!(%error, "cannot refresh our gossip discovery record");
        }
        out.extend(
            discovery::read_records(&dir, &me.id)
                .await
                .into_iter()
                .map(|r| (Some(r.id), r.addr)),
        );
    }
    out
}
