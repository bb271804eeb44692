//! The sans-IO gossip core: foca, the payload table and the timer list.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, Timer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Error;
use crate::identity::NodeId;
use crate::keys::{GossipKeys, NONCE_LEN, SEAL_OVERHEAD, Sealer};
use crate::payload::{PayloadHandler, PayloadItem, PayloadTable, Round};
use crate::wire::{self, BincodeCodec, IncarnationBound, TAG_FOCA, TAG_HELLO, TAG_HELLO_ACK};
use crate::{GossipConfig, MemberState, MemberView};

/// Headroom kept in each packet for a sender id longer than ours.
const PACKET_HEADROOM: usize = 64;
/// Bytes a datagram adds around a foca packet: the tag byte, and the
/// sealing (reserved even without keys, so keys can be set at run time).
const FRAME_OVERHEAD: usize = 1 + SEAL_OVERHEAD;
/// Smallest datagram limit we accept (foca needs room for a header and a
/// few member updates).
const MIN_PACKET_SIZE: usize = 512;
/// Mixed into the rng seed for the nonce stream, so it differs from foca's.
const NONCE_SEED_MIX: u64 = 0x6e6f_6e63_655f_7267;

type FocaInstance = Foca<NodeId, BincodeCodec, StdRng, PayloadHandler>;

/// A timer held by the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreTimer {
    /// A timer foca asked for.
    Foca(Timer<NodeId>),
    /// Re-broadcast our own payload so late joiners converge.
    PayloadRefresh,
}

/// A membership change seen by the core, in the order foca reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// A member became active (Alive or Suspect).
    MemberUp(NodeId),
    /// A member was declared Down.
    MemberDown(NodeId),
    /// A member's identity was replaced by a newer one (a restart).
    Renamed {
        /// The identity that was replaced.
        from: NodeId,
        /// The newer identity.
        to: NodeId,
    },
    /// The cluster declared us Down; we rejoined with a renewed identity.
    Rejoined(NodeId),
    /// We have at least one active member.
    Active,
    /// We have no active members left.
    Idle,
    /// We are down for good (after leaving, or when renewal failed).
    Defunct,
    /// With keys, a plain packet came from `from`, naming itself `id`: a
    /// manager of a release that cannot seal, or a stranger. Its packets are
    /// dropped until the caller vouches for it ([`GossipCore::vouch_plain`])
    /// by a channel the gossip key does not protect. Reported at most once
    /// per [`PLAIN_REPORT_EVERY`] per address.
    PlainSender {
        /// The packet's source address.
        from: SocketAddr,
        /// The member id the packet claims.
        id: String,
    },
}

/// How often a plain sender is reported again while it is not vouched for
/// (or its vouch is getting old).
pub const PLAIN_REPORT_EVERY: Duration = Duration::from_secs(30);
/// A vouch for a plain sender lasts this long unless renewed.
pub const PLAIN_VOUCH_FOR: Duration = Duration::from_secs(300);
/// Most addresses remembered as reported plain senders (a stranger's flood of
/// addresses cannot grow the core).
const MAX_PLAIN_REPORTED: usize = 64;
/// Most plain peers vouched for at once.
const MAX_PLAIN_PEERS: usize = 16;
/// Most members' payloads kept (ids foca does not know are dropped anyway).
const MAX_PAYLOADS: usize = 64;
/// How far ahead of our own start time (unix milliseconds) another member's
/// incarnation may be: a day of clock difference, plus room for rejoins.
const INCARNATION_AHEAD_MS: u64 = 24 * 3600 * 1000 + (1 << 20);

/// A sender of plain packets vouched for while we have keys.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlainPeer {
    id: String,
    until: Instant,
}

/// The sans-IO core: feed it packets, due timers and commands with the
/// current time; take packets to send and events out.
///
/// It never reads a clock, does IO or spawns; all randomness comes from the
/// seed given to [`GossipCore::new`], so equal inputs give equal outputs.
pub struct GossipCore {
    foca: FocaInstance,
    runtime: AccumulatingRuntime<NodeId>,
    table: PayloadTable,
    timers: BTreeMap<(Instant, u64), CoreTimer>,
    timer_seq: u64,
    refresh_armed: bool,
    refresh_interval: Duration,
    outbox: VecDeque<(SocketAddr, Bytes)>,
    events: VecDeque<GossipEvent>,
    payload: Vec<u8>,
    version: u64,
    max_item_len: usize,
    item_overhead: usize,
    bad_packets: u64,
    left: bool,
    defunct: bool,
    sealer: Option<Sealer>,
    nonce_rng: StdRng,
    /// Since when each member (id, incarnation) has been Suspect here.
    suspect_since: BTreeMap<(String, u64), Instant>,
    /// A suspicion older than this lost its timer: see [`GossipCore::clear_stuck_suspects`].
    stuck_suspect_after: Duration,
    /// Local health (Lifeguard's "local health multiplier"): 0 while our own
    /// timers fire on time, up to [`MAX_HEALTH_SCORE`] while they fire late
    /// (we are starved of CPU) or after the cluster declared us down. Our
    /// suspicions take `1 + score` times as long to become Down, so a slow node
    /// does not accuse healthy ones.
    health_score: u32,
    /// When the score last changed.
    health_changed: Option<Instant>,
    /// foca's configuration at score 0.
    base_config: foca::Config,
    /// When a valid message last came from each address.
    last_heard: BTreeMap<SocketAddr, Instant>,
    /// [`GossipConfig::lifeguard`]: local health and reviving talking suspects.
    lifeguard: bool,
    /// Plain senders vouched for (by address), while we have keys.
    plain_peers: BTreeMap<SocketAddr, PlainPeer>,
    /// When each plain sender was last reported.
    plain_reported: BTreeMap<SocketAddr, Instant>,
    /// The highest incarnation the codec takes (raised with our time).
    incarnation_bound: IncarnationBound,
    /// Our starting incarnation (unix milliseconds at start; 0 in tests
    /// without a wall clock, which leaves incarnations unbounded) and the
    /// first `now` we were given.
    clock_base: (u64, Option<Instant>),
    /// The members our own item reached in a broadcast round.
    round: Round,
    /// Payload items dropped because another member sent them.
    foreign_items: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Highest local health score: suspicions last at most 9 times as long.
pub const MAX_HEALTH_SCORE: u32 = 8;
/// A timer this late means we did not get the CPU in time: the score rises.
const LATE: Duration = Duration::from_millis(200);
/// Timers this punctual for a while let the score fall, one step per second.
const PUNCTUAL: Duration = Duration::from_millis(50);

/// The least time a member stays Suspect before the core declares it down itself.
const MIN_STUCK_SUSPECT: Duration = Duration::from_secs(10);

impl std::fmt::Debug for GossipCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipCore")
            .field("identity", self.foca.identity())
            .field("members", &self.foca.num_members())
            .field("version", &self.version)
            .field("bad_packets", &self.bad_packets)
            .field("keys", &self.sealer.as_ref().map(|s| s.keys().len()))
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl GossipCore {
    /// Builds a core for `config.id` at `config.advertise` with the given
    /// payload; `rng_seed` seeds foca's random choices.
    ///
    /// `config.advertise` must be the final address (the driver replaces
    /// port 0 by the bound port before calling this).
    pub fn new(config: &GossipConfig, payload: Vec<u8>, rng_seed: u64) -> Result<Self, Error> {
        if config.id.is_empty() {
            return Err(Error::InvalidConfig {
                reason: "the node id is empty; give every node a unique, stable id".to_string(),
            });
        }
        if config.refresh_interval.is_zero() {
            return Err(Error::InvalidConfig {
                reason: "refresh_interval is 0; use a few seconds (default 2s)".to_string(),
            });
        }
        let mut foca_config = config.effective_foca_config()?;
        let datagram_max = foca_config.max_packet_size.get();
        foca_config.max_packet_size = datagram_max
            .checked_sub(FRAME_OVERHEAD)
            .filter(|_| datagram_max >= MIN_PACKET_SIZE)
            .and_then(std::num::NonZeroUsize::new)
            .ok_or_else(|| Error::InvalidConfig {
                reason: format!(
                    "foca max_packet_size {datagram_max} is too small; use at least {MIN_PACKET_SIZE} (default 1400)"
                ),
            })?;
        let identity = NodeId {
            id: config.id.clone(),
            addr: config.advertise,
            incarnation: config.incarnation,
        };
        let header_len = wire::encode(&foca::Header {
            src: identity.clone(),
            src_incarnation: u16::MAX,
            dst: identity.clone(),
            message: foca::Message::<NodeId>::Broadcast,
        })
        .map_err(|e| Error::Foca(e.to_string()))?
        .len();
        let item_overhead = wire::encode(&PayloadItem {
            id: identity.id.clone(),
            incarnation: u64::MAX,
            version: u64::MAX,
            payload: Vec::new(),
        })
        .map_err(|e| Error::Foca(e.to_string()))?
        .len()
            // the payload length prefix grows with the payload
            + 4;
        let max_item_len = foca_config
            .max_packet_size
            .get()
            .saturating_sub(1 + header_len + 2 + PACKET_HEADROOM);
        let table = PayloadTable::default();
        let round = Round::default();
        let handler = PayloadHandler::new(identity.id.clone(), table.clone(), round.clone());
        let foreign_items = handler.foreign.clone();
        let incarnation_bound = IncarnationBound::default();
        let stuck_suspect_after = (foca_config.suspect_to_down_after * 3
            + foca_config.probe_period * 2)
            .max(MIN_STUCK_SUSPECT);
        let base_config = foca_config.clone();
        let foca = Foca::with_custom_broadcast(
            identity,
            foca_config,
            StdRng::seed_from_u64(rng_seed),
            BincodeCodec::with_bound(incarnation_bound.clone()),
            handler,
        );
        let core = Self {
            foca,
            runtime: AccumulatingRuntime::new(),
            table,
            timers: BTreeMap::new(),
            timer_seq: 0,
            refresh_armed: false,
            refresh_interval: config.refresh_interval,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            payload: Vec::new(),
            version: 0,
            max_item_len,
            item_overhead,
            bad_packets: 0,
            left: false,
            defunct: false,
            sealer: config.keys.clone().map(Sealer::new),
            nonce_rng: StdRng::seed_from_u64(rng_seed ^ NONCE_SEED_MIX),
            suspect_since: BTreeMap::new(),
            stuck_suspect_after,
            health_score: 0,
            health_changed: None,
            base_config,
            lifeguard: config.lifeguard,
            last_heard: BTreeMap::new(),
            plain_peers: BTreeMap::new(),
            plain_reported: BTreeMap::new(),
            incarnation_bound,
            clock_base: (config.incarnation, None),
            round,
            foreign_items,
        };
        core.check_payload(&payload)?;
        Ok(Self {
            payload,
            version: 1,
            ..core
        })
    }

    /// Our current identity (the incarnation grows on every rejoin).
    pub fn identity(&self) -> &NodeId {
        self.foca.identity()
    }

    /// The largest payload (in bytes) that fits in one packet.
    pub fn max_payload_len(&self) -> usize {
        self.max_item_len.saturating_sub(self.item_overhead)
    }

    /// Packets that failed to decode so far.
    pub fn bad_packets(&self) -> u64 {
        self.bad_packets
    }

    /// Replaces the keyring (`None`: plain packets). Takes effect for the
    /// next packet sent and received; see [`GossipKeys`] for the rotation
    /// order that keeps a cluster whole.
    pub fn set_keys(&mut self, keys: Option<GossipKeys>) {
        match &keys {
            Some(keys) => {
                tracing::info!(keys = keys.len(), fingerprints = ?keys.fingerprints(), "gossip keys set");
            }
            None => tracing::warn!("gossip keys removed; packets are now sent in plain"),
        }
        self.sealer = keys.map(Sealer::new);
    }

    /// Vouches for a plain sender (see [`GossipEvent::PlainSender`]): while
    /// we have keys, plain packets from `from` whose sender is `id` are taken
    /// and our packets to `from` go out plain, for [`PLAIN_VOUCH_FOR`]. The
    /// caller checked by other means that the manager `id` runs there (the
    /// peer API's certificate). Ends when `from` sends a sealed packet.
    pub fn vouch_plain(&mut self, from: SocketAddr, id: String, now: Instant) {
        if crate::ident::check_member_id(&id).is_err() {
            return;
        }
        self.plain_peers.retain(|_, p| p.until > now);
        if self.plain_peers.len() >= MAX_PLAIN_PEERS && !self.plain_peers.contains_key(&from) {
            tracing::warn!(%from, member = %id, "too many plain gossip peers; not vouching for another");
            return;
        }
        tracing::info!(%from, member = %id, "gossip in plain with a manager that cannot seal (vouched for by its peer API certificate)");
        self.plain_peers.insert(
            from,
            PlainPeer {
                id,
                until: now + PLAIN_VOUCH_FOR,
            },
        );
        self.plain_reported.remove(&from);
    }

    /// The plain senders vouched for now: (address, member id).
    pub fn plain_peers(&self) -> Vec<(SocketAddr, String)> {
        self.plain_peers
            .iter()
            .map(|(a, p)| (*a, p.id.clone()))
            .collect()
    }

    /// Payload items dropped so far because a member other than the one they
    /// describe sent them (relays of the release before, or forgeries).
    pub fn foreign_items(&self) -> u64 {
        self.foreign_items
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Raises the codec's incarnation bound with our time (see
    /// [`INCARNATION_AHEAD_MS`]); unbounded without a wall-clock base.
    fn note_time(&mut self, now: Instant) {
        let base = self.clock_base.0;
        if base == 0 {
            return;
        }
        let first = *self.clock_base.1.get_or_insert(now);
        let elapsed = now.saturating_duration_since(first).as_millis() as u64;
        self.incarnation_bound.set(
            base.saturating_add(elapsed)
                .saturating_add(INCARNATION_AHEAD_MS),
        );
    }

    /// The member id a plain datagram claims: a foca header's source or a
    /// hello's identity.
    fn claimed_id(&self, data: &[u8]) -> Option<String> {
        match data.split_first() {
            Some((&TAG_FOCA, body)) => wire::decode::<foca::Header<NodeId>>(body)
                .ok()
                .map(|(h, _)| h.src.id),
            Some((&(TAG_HELLO | TAG_HELLO_ACK), body)) => {
                wire::decode_hello(body, self.incarnation_bound.get())
                    .ok()
                    .map(|n| n.id)
            }
            _ => None,
        }
        .filter(|id| crate::ident::check_member_id(id).is_ok())
    }

    /// A plain datagram while we have keys: taken from a vouched sender that
    /// names itself as vouched; otherwise dropped, and its sender reported.
    fn handle_unsealed(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        let claimed = self.claimed_id(data);
        let vouched = self
            .plain_peers
            .get(&from)
            .is_some_and(|p| p.until > now && claimed.as_deref() == Some(p.id.as_str()));
        if vouched {
            self.handle_plain(from, data, now);
            let renew = self
                .plain_peers
                .get(&from)
                .is_some_and(|p| p.until.saturating_duration_since(now) < PLAIN_VOUCH_FOR / 2);
            if renew {
                self.report_plain(from, claimed, now);
            }
            return;
        }
        self.bad_packets += 1;
        tracing::debug!(%from, member = claimed.as_deref().unwrap_or(""), len = data.len(), "dropped plain gossip packet (we seal)");
        self.report_plain(from, claimed, now);
    }

    /// Reports a plain sender to the caller, once per [`PLAIN_REPORT_EVERY`].
    fn report_plain(&mut self, from: SocketAddr, claimed: Option<String>, now: Instant) {
        let Some(id) = claimed else { return };
        if self
            .plain_reported
            .get(&from)
            .is_some_and(|at| now.saturating_duration_since(*at) < PLAIN_REPORT_EVERY)
        {
            return;
        }
        if self.plain_reported.len() >= MAX_PLAIN_REPORTED {
            self.plain_reported
                .retain(|_, at| now.saturating_duration_since(*at) < PLAIN_REPORT_EVERY);
            if self.plain_reported.len() >= MAX_PLAIN_REPORTED {
                return;
            }
        }
        self.plain_reported.insert(from, now);
        self.events.push_back(GossipEvent::PlainSender { from, id });
    }

    /// Drops the payloads of ids foca does not know (a sender that made up
    /// an id, or one foca forgot), and keeps the table bounded.
    fn prune_payloads(&mut self) {
        let mut table = self.table.lock();
        if table.is_empty() {
            return;
        }
        let known: std::collections::BTreeSet<&str> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().id.as_str())
            .collect();
        table.retain(|id, _| known.contains(id.as_str()));
        while table.len() > MAX_PAYLOADS {
            table.pop_last();
        }
    }

    /// The keyring in use, if any.
    pub fn keys(&self) -> Option<&GossipKeys> {
        self.sealer.as_ref().map(Sealer::keys)
    }

    /// True once [`GossipCore::leave`] ran.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Arms the periodic payload refresh. Every other entry point does this
    /// too; call it once at start so [`GossipCore::next_deadline`] is set.
    pub fn start(&mut self, now: Instant) {
        self.note_time(now);
        self.arm_refresh(now);
    }

    /// The earliest timer deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Our local health score (see [`MAX_HEALTH_SCORE`]).
    pub fn health_score(&self) -> u32 {
        self.health_score
    }

    /// Judge our own punctuality by how late the earliest due timer fires.
    fn note_lateness(&mut self, now: Instant) {
        let Some(due) = self.next_deadline().filter(|d| *d <= now) else {
            return;
        };
        let late = now.saturating_duration_since(due);
        let since_change = self
            .health_changed
            .map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        if late >= LATE {
            self.set_health(self.health_score + 1, now);
        } else if late <= PUNCTUAL && since_change >= Duration::from_secs(1) {
            self.set_health(self.health_score.saturating_sub(1), now);
        }
    }

    fn set_health(&mut self, score: u32, now: Instant) {
        let score = score.min(MAX_HEALTH_SCORE);
        if score == self.health_score || !self.lifeguard {
            return;
        }
        let mut config = self.base_config.clone();
        config.suspect_to_down_after = self.base_config.suspect_to_down_after * (1 + score);
        match self.foca.set_config(config) {
            Ok(()) => {
                if score > self.health_score {
                    tracing::debug!(
                        score,
                        "gossip: our timers fire late; slower to declare others down"
                    );
                }
                self.health_score = score;
                self.health_changed = Some(now);
            }
            Err(error) => tracing::warn!(%error, "gossip: could not scale the suspicion timeout"),
        }
    }

    /// Fires every timer due at `now` (deadline <= now), earliest first.
    pub fn handle_timers(&mut self, now: Instant) {
        self.note_lateness(now);
        self.note_time(now);
        let expired: Vec<SocketAddr> = self
            .plain_peers
            .iter()
            .filter(|(_, p)| p.until <= now)
            .map(|(a, _)| *a)
            .collect();
        for addr in expired {
            tracing::info!(%addr, "vouch for a plain gossip peer expired");
            self.plain_peers.remove(&addr);
        }
        self.arm_refresh(now);
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.fire(timer, now);
        }
    }

    fn fire(&mut self, timer: CoreTimer, now: Instant) {
        if self.left {
            return;
        }
        match timer {
            CoreTimer::PayloadRefresh => {
                self.refresh_armed = false;
                self.clear_stuck_suspects(now);
                self.broadcast_own(now);
                self.arm_refresh(now);
            }
            CoreTimer::Foca(Timer::ChangeSuspectToDown { member_id, .. })
                if self.heard_recently(member_id.addr, now) =>
            {
                // It talks to us: its refutation got lost, it is not down.
                self.revive(&member_id, now);
            }
            CoreTimer::Foca(timer) => {
                let removed = match &timer {
                    Timer::RemoveDown(id) => Some(id.id.clone()),
                    _ => None,
                };
                if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
                    tracing::warn!(%error, "gossip timer failed");
                }
                if let Some(id) = removed
                    && !self.foca.iter_membership_state().any(|m| m.id().id == id)
                {
                    self.table.lock().remove(&id);
                }
                self.collect(now);
            }
        }
    }

    /// A valid message came from `addr` within the last two probe periods.
    fn heard_recently(&self, addr: SocketAddr, now: Instant) -> bool {
        self.lifeguard
            && self.last_heard.get(&addr).is_some_and(|at| {
                now.saturating_duration_since(*at) <= self.base_config.probe_period * 2
            })
    }

    /// A member we suspect but keep hearing from is alive (Lifeguard's point:
    /// independent evidence beats a lost refutation). Mark it Alive one
    /// incarnation up, as its own refutation would; if it is suspected again
    /// at that incarnation it refutes as usual.
    fn revive(&mut self, member: &NodeId, now: Instant) {
        let Some(current) = self
            .foca
            .iter_membership_state()
            .find(|m| m.id() == member && m.state() == foca::State::Suspect)
            .map(|m| m.incarnation())
        else {
            return;
        };
        let Some(next) = current.checked_add(1) else {
            return;
        };
        tracing::debug!(member = %member.id, "suspected gossip member still talks to us; keeping it alive");
        let alive = foca::Member::new(member.clone(), next, foca::State::Alive);
        if let Err(error) = self
            .foca
            .apply_many(std::iter::once(alive), true, &mut self.runtime)
        {
            tracing::warn!(%error, "could not keep a talking member alive");
        }
        self.collect(now);
    }

    /// One UDP address is one process: when `node` is up at an address
    /// where another identity was known, the older of the two (by
    /// incarnation, which starts at the process' start time) is gone, so it
    /// is declared down now. Without this a host wiped and started again
    /// under a new id kept its old id alive: the old id's address still
    /// talks (Lifeguard's "heard recently" keeps it from going down) and
    /// peer calls meant for it reach the new manager.
    fn retire_replaced(&mut self, node: &NodeId) {
        let me = self.foca.identity().clone();
        let mut candidates: Vec<NodeId> =
            self.foca.iter_members().map(|m| m.id().clone()).collect();
        candidates.push(me.clone());
        candidates.push(node.clone());
        let older: Vec<foca::Member<NodeId>> = candidates
            .iter()
            .filter(|other| {
                other.addr == node.addr
                    && other.id != me.id
                    && candidates.iter().any(|newer| {
                        newer.addr == other.addr
                            && newer.id != other.id
                            && newer.incarnation > other.incarnation
                    })
            })
            .filter_map(|old| {
                self.foca
                    .iter_members()
                    .find(|m| m.id() == old)
                    .map(|m| foca::Member::new(old.clone(), m.incarnation(), foca::State::Down))
            })
            .collect();
        for m in &older {
            tracing::warn!(member = %m.id().id, addr = %m.id().addr, "gossip member replaced by a newer manager at its address; declared down");
        }
        if !older.is_empty()
            && let Err(error) = self
                .foca
                .apply_many(older.into_iter(), true, &mut self.runtime)
        {
            tracing::warn!(%error, "could not declare a replaced member down");
        }
    }

    /// Declares down a member that stayed Suspect here far longer than the
    /// suspicion timeout. Only the prober that suspected a member holds the
    /// timer that turns the suspicion into Down; when that node renews its own
    /// identity (it was paused, declared down and rejoined) the timer is void,
    /// and the nodes that learned the suspicion by gossip keep the member
    /// Suspect forever unless it hears of it and refutes. Down is safe here: the
    /// member is told (foca's notify_down_members), renews its identity and
    /// rejoins Alive. Found by the simulation in `tests/tests/sim.rs`.
    fn clear_stuck_suspects(&mut self, now: Instant) {
        let suspects: Vec<foca::Member<NodeId>> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .cloned()
            .collect();
        let keys: Vec<(String, u64)> = suspects
            .iter()
            .map(|m| (m.id().id.clone(), m.id().incarnation))
            .collect();
        self.suspect_since.retain(|k, _| keys.contains(k));
        let mut stuck = Vec::new();
        for (m, key) in suspects.into_iter().zip(keys) {
            if self.heard_recently(m.id().addr, now) {
                self.suspect_since.remove(&key);
                self.revive(m.id(), now);
                continue;
            }
            let since = *self.suspect_since.entry(key.clone()).or_insert(now);
            if now.saturating_duration_since(since)
                >= self.stuck_suspect_after * (1 + self.health_score)
            {
                tracing::warn!(member = %key.0, suspect_for = ?now.saturating_duration_since(since), "gossip member stuck as suspect; declaring it down so it rejoins");
                self.suspect_since.remove(&key);
                stuck.push(foca::Member::new(
                    m.id().clone(),
                    m.incarnation(),
                    foca::State::Down,
                ));
            }
        }
        if !stuck.is_empty() {
            if let Err(error) = self
                .foca
                .apply_many(stuck.into_iter(), true, &mut self.runtime)
            {
                tracing::warn!(%error, "could not declare a stuck suspect down");
            }
            self.collect(now);
        }
    }

    /// Handles one datagram from `from`. Packets that do not decode are
    /// dropped and counted; this never panics.
    pub fn handle_packet(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        self.arm_refresh(now);
        self.note_time(now);
        if self.left {
            return;
        }
        match &self.sealer {
            None => self.handle_plain(from, data, now),
            Some(_) if data.first() != Some(&crate::keys::SEALED_V1) => {
                self.handle_unsealed(from, data, now)
            }
            Some(sealer) => match sealer.open(data) {
                Ok(plain) => {
                    if self.plain_peers.remove(&from).is_some() {
                        tracing::info!(%from, "a plain gossip peer now seals its packets");
                    }
                    self.handle_plain(from, &plain, now)
                }
                Err(error) => {
                    self.bad_packets += 1;
                    tracing::debug!(%from, %error, len = data.len(), "dropped unauthenticated gossip packet");
                }
            },
        }
        self.prune_payloads();
    }

    /// Handles one datagram after opening (or as received, without keys).
    fn handle_plain(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        match data.split_first() {
            Some((&TAG_FOCA, body)) => {
                let result = self.foca.handle_data(body, &mut self.runtime);
                if result.is_ok() {
                    self.last_heard.insert(from, now);
                }
                if let Err(error) = result {
                    match error {
                        foca::Error::Decode(_)
                        | foca::Error::MalformedPacket
                        | foca::Error::DataTooBig
                        | foca::Error::CustomBroadcast(_) => {
                            self.bad_packets += 1;
                            tracing::debug!(%from, %error, len = data.len(), "dropped bad gossip packet");
                        }
                        other => {
                            tracing::debug!(%from, error = %other, "gossip packet ignored");
                        }
                    }
                }
                self.collect(now);
            }
            Some((&tag @ (TAG_HELLO | TAG_HELLO_ACK), body)) => {
                match wire::decode_hello(body, self.incarnation_bound.get()) {
                    Ok(node) if node.id == self.identity().id => {
                        tracing::debug!(%from, "ignored hello carrying our own id");
                    }
                    Ok(node) if tag == TAG_HELLO => {
                        tracing::debug!(%from, member = %node.id, "hello: answering with our identity");
                        match wire::hello(TAG_HELLO_ACK, self.foca.identity()) {
                            Ok(packet) => self.send(from, packet),
                            Err(error) => tracing::warn!(%error, "cannot encode gossip hello ack"),
                        }
                    }
                    Ok(node) => {
                        tracing::debug!(%from, member = %node.id, addr = %node.addr, "hello ack: announcing to member");
                        if let Err(error) = self.foca.announce(node, &mut self.runtime) {
                            tracing::warn!(%error, "gossip announce failed");
                        }
                        self.collect(now);
                    }
                    Err(error) => {
                        self.bad_packets += 1;
                        tracing::debug!(%from, %error, "dropped bad hello packet");
                    }
                }
            }
            _ => {
                self.bad_packets += 1;
                tracing::debug!(%from, len = data.len(), "dropped gossip packet with unknown tag");
            }
        }
    }

    /// Joins the cluster of the node at `addr`: sends it a hello; its
    /// answer carries its identity, to which we then announce with foca.
    /// Our own address is skipped.
    pub fn announce(&mut self, addr: SocketAddr) {
        if self.left || addr == self.identity().addr {
            return;
        }
        match wire::hello(TAG_HELLO, self.foca.identity()) {
            Ok(packet) => self.send(addr, packet),
            Err(error) => tracing::warn!(%error, "cannot encode gossip hello"),
        }
    }

    /// Publishes a new payload (version + 1) and starts disseminating it.
    pub fn set_payload(&mut self, payload: Vec<u8>, now: Instant) -> Result<(), Error> {
        self.arm_refresh(now);
        self.check_payload(&payload)?;
        self.payload = payload;
        self.version += 1;
        self.broadcast_own(now);
        Ok(())
    }

    /// Leaves the cluster: tells a few members we are down. Packets to flush
    /// are in the outbox; afterwards the core ignores all input.
    pub fn leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::warn!(%error, "gossip leave failed");
        }
        self.collect(now);
        self.left = true;
        self.timers.clear();
        self.refresh_armed = false;
    }

    /// Takes the next packet to send.
    pub fn pop_packet(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.outbox.pop_front()
    }

    /// Takes all packets to send, in order.
    pub fn drain_packets(&mut self) -> Vec<(SocketAddr, Bytes)> {
        self.outbox.drain(..).collect()
    }

    /// Takes all membership events since the last call, in order.
    pub fn drain_events(&mut self) -> Vec<GossipEvent> {
        self.events.drain(..).collect()
    }

    /// True if a member with this address is active (Alive or Suspect).
    pub fn is_active_addr(&self, addr: SocketAddr) -> bool {
        self.foca.iter_members().any(|m| m.id().addr == addr)
    }

    /// True if a member with this id is active (Alive or Suspect).
    pub fn is_active_id(&self, id: &str) -> bool {
        self.foca.iter_members().any(|m| m.id().id == id)
    }

    /// Every known member including ourselves (`is_self`), sorted by id.
    /// Down members stay listed (with their last payload) until foca
    /// forgets them (`remove_down_after`).
    pub fn members(&self) -> Vec<MemberView> {
        let me = self.foca.identity();
        let table = self.table.lock();
        let mut views: BTreeMap<String, MemberView> = BTreeMap::new();
        for member in self.foca.iter_membership_state() {
            let node = member.id();
            if node.id == me.id {
                continue;
            }
            if views
                .get(&node.id)
                .is_some_and(|v| v.incarnation >= node.incarnation)
            {
                continue;
            }
            views.insert(
                node.id.clone(),
                MemberView {
                    id: node.id.clone(),
                    addr: node.addr,
                    incarnation: node.incarnation,
                    state: member.state().into(),
                    payload: table.get(&node.id).map(|e| e.payload.clone()),
                    is_self: false,
                },
            );
        }
        views.insert(
            me.id.clone(),
            MemberView {
                id: me.id.clone(),
                addr: me.addr,
                incarnation: me.incarnation,
                state: if self.left || self.defunct {
                    MemberState::Down
                } else {
                    MemberState::Alive
                },
                payload: Some(self.payload.clone()),
                is_self: true,
            },
        );
        views.into_values().collect()
    }

    /// Queues a framed datagram, sealed when we have keys (plain to a
    /// vouched plain peer).
    fn send(&mut self, to: SocketAddr, framed: Vec<u8>) {
        let Some(sealer) = &self.sealer else {
            self.outbox.push_back((to, Bytes::from(framed)));
            return;
        };
        if self.plain_peers.contains_key(&to) {
            self.outbox.push_back((to, Bytes::from(framed)));
            return;
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.nonce_rng.fill_bytes(&mut nonce);
        match sealer.seal(&framed, nonce) {
            Some(sealed) => self.outbox.push_back((to, Bytes::from(sealed))),
            None => tracing::warn!(%to, len = framed.len(), "cannot seal gossip packet; not sent"),
        }
    }

    fn check_payload(&self, payload: &[u8]) -> Result<(), Error> {
        let max = self.max_payload_len();
        if payload.len() > max {
            Err(Error::PayloadTooLarge {
                size: payload.len(),
                max,
            })
        } else {
            Ok(())
        }
    }

    fn arm_refresh(&mut self, now: Instant) {
        if !self.refresh_armed && !self.left {
            self.refresh_armed = true;
            self.schedule(now + self.refresh_interval, CoreTimer::PayloadRefresh);
        }
    }

    fn schedule(&mut self, at: Instant, timer: CoreTimer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    /// Queues our own payload as a custom broadcast and sends it to a few
    /// active members right away.
    fn broadcast_own(&mut self, now: Instant) {
        if self.left {
            return;
        }
        let item = PayloadItem {
            id: self.identity().id.clone(),
            incarnation: self.identity().incarnation,
            version: self.version,
            payload: self.payload.clone(),
        };
        let data = match wire::encode(&item) {
            Ok(data) => data,
            Err(error) => {
                tracing::warn!(%error, "cannot encode our gossip payload");
                return;
            }
        };
        // Items are not relayed (see `payload`): send ours to every active
        // member, a few at a time as foca chooses, until all have it.
        let active: std::collections::BTreeSet<String> = self
            .foca
            .iter_members()
            .map(|m| m.id().id.clone())
            .collect();
        self.round.begin();
        for _ in 0..=active.len() {
            if let Err(error) = self.foca.add_broadcast(&data) {
                tracing::warn!(%error, len = data.len(), "cannot queue our gossip payload");
                break;
            }
            let before = self.outbox.len();
            if let Err(error) = self.foca.broadcast(&mut self.runtime) {
                tracing::warn!(%error, "gossip broadcast failed");
                break;
            }
            self.collect(now);
            if self.outbox.len() == before || active.iter().all(|id| self.round.has(id)) {
                break;
            }
        }
        self.round.end();
    }

    /// Moves foca's outputs into the core: packets to the outbox, timers to
    /// the list, notifications to events (reacting to some).
    fn collect(&mut self, now: Instant) {
        loop {
            let mut rebroadcast = false;
            let mut came_up = Vec::new();
            while let Some((dst, data)) = self.runtime.to_send() {
                self.round.reached(&dst.id);
                let mut framed = Vec::with_capacity(data.len() + FRAME_OVERHEAD);
                framed.push(TAG_FOCA);
                framed.extend_from_slice(&data);
                self.send(dst.addr, framed);
            }
            while let Some((after, timer)) = self.runtime.to_schedule() {
                self.schedule(now + after, CoreTimer::Foca(timer));
            }
            while let Some(notification) = self.runtime.to_notify() {
                let event = match notification {
                    OwnedNotification::MemberUp(node) => {
                        tracing::info!(member = %node.id, addr = %node.addr, incarnation = node.incarnation, "gossip member up");
                        rebroadcast = true;
                        came_up.push(node.clone());
                        GossipEvent::MemberUp(node)
                    }
                    OwnedNotification::MemberDown(node) => {
                        tracing::info!(member = %node.id, addr = %node.addr, incarnation = node.incarnation, "gossip member down");
                        GossipEvent::MemberDown(node)
                    }
                    OwnedNotification::Rename(from, to) => {
                        tracing::info!(member = %to.id, old_incarnation = from.incarnation, incarnation = to.incarnation, addr = %to.addr, "gossip member restarted");
                        GossipEvent::Renamed { from, to }
                    }
                    OwnedNotification::Rejoin(node) => {
                        // Refuting is a sign of trouble on our side (Lifeguard).
                        self.set_health(self.health_score + 2, now);
                        tracing::warn!(
                            incarnation = node.incarnation,
                            "the cluster declared us down; rejoined with a new incarnation"
                        );
                        self.defunct = false;
                        rebroadcast = true;
                        GossipEvent::Rejoined(node)
                    }
                    OwnedNotification::Active => GossipEvent::Active,
                    OwnedNotification::Idle => GossipEvent::Idle,
                    OwnedNotification::Defunct => {
                        self.defunct = true;
                        GossipEvent::Defunct
                    }
                };
                self.events.push_back(event);
            }
            for node in &came_up {
                self.retire_replaced(node);
            }
            if rebroadcast && !self.left {
                self.broadcast_own(now);
            }
            if self.runtime.backlog() == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    // A fixed starting point is all the core needs; tests may read the clock.
    #![allow(clippy::disallowed_methods)]
    use super::*;

    fn config() -> GossipConfig {
        GossipConfig::new("a".into(), SocketAddr::from(([127, 0, 0, 1], 9000)))
    }

    /// Timers that fire late raise the local health score (to at most
    /// MAX_HEALTH_SCORE); punctual ones lower it again, one step a second.
    #[test]
    fn late_timers_raise_the_local_health_score() {
        let mut core = GossipCore::new(&config(), vec![], 7).unwrap();
        let t0 = Instant::now();
        core.start(t0);
        assert_eq!(core.health_score(), 0);
        let mut now = t0;
        for _ in 0..20 {
            let due = core.next_deadline().expect("a timer is armed");
            now = due.max(now) + Duration::from_millis(400);
            core.handle_timers(now);
        }
        assert_eq!(core.health_score(), MAX_HEALTH_SCORE);
        // On time again: back to 0 within MAX_HEALTH_SCORE seconds or so.
        for _ in 0..200 {
            let due = core.next_deadline().expect("a timer is armed");
            now = due.max(now);
            core.handle_timers(now);
        }
        assert!(now > t0 + Duration::from_secs(8));
        assert_eq!(core.health_score(), 0);
    }

    /// Without lifeguard (the benchmarks' baseline) foca runs as shipped:
    /// new_lan's send count, and late timers leave the score at 0.
    #[test]
    fn without_lifeguard_foca_runs_as_shipped() {
        let mut plain = config();
        plain.lifeguard = false;
        let lan = foca::Config::new_lan(std::num::NonZeroU32::new(3).unwrap());
        let effective = plain.effective_foca_config().unwrap();
        assert_eq!(effective.max_transmissions, lan.max_transmissions);
        assert!(lan.max_transmissions < crate::MIN_TRANSMISSIONS);
        assert_eq!(
            config().effective_foca_config().unwrap().max_transmissions,
            crate::MIN_TRANSMISSIONS
        );
        let mut core = GossipCore::new(&plain, vec![], 7).unwrap();
        let t0 = Instant::now();
        core.start(t0);
        let mut now = t0;
        for _ in 0..20 {
            let due = core.next_deadline().expect("a timer is armed");
            now = due.max(now) + Duration::from_millis(400);
            core.handle_timers(now);
        }
        assert_eq!(core.health_score(), 0);
    }

    /// A suspect we keep hearing from is kept alive when its suspicion runs
    /// out (its refutation was lost); one we did not hear from goes down.
    #[test]
    fn a_suspect_that_talks_to_us_is_not_declared_down() {
        let mut core = GossipCore::new(&config(), vec![], 7).unwrap();
        let t0 = Instant::now();
        core.start(t0);
        let node = |id: &str, last: u8| NodeId {
            id: id.into(),
            addr: SocketAddr::from(([127, 0, 0, last], 9000)),
            incarnation: 1,
        };
        let (b, c) = (node("b", 2), node("c", 3));
        for state in [foca::State::Alive, foca::State::Suspect] {
            let updates = [b.clone(), c.clone()].map(|n| foca::Member::new(n, 0, state));
            core.foca
                .apply_many(updates.into_iter(), true, &mut core.runtime)
                .unwrap();
        }
        core.collect(t0);
        let now = t0 + Duration::from_secs(4);
        core.last_heard
            .insert(b.addr, now - Duration::from_millis(300));
        for member_id in [b.clone(), c.clone()] {
            let timer = Timer::ChangeSuspectToDown {
                member_id,
                incarnation: 0,
                token: 0,
            };
            core.fire(CoreTimer::Foca(timer), now);
        }
        let state = |id: &str| {
            core.members()
                .into_iter()
                .find(|m| m.id == id)
                .map(|m| m.state)
        };
        assert_eq!(state("b"), Some(MemberState::Alive));
        assert_eq!(state("c"), Some(MemberState::Down));
    }

    #[test]
    fn rejects_bad_config_and_oversized_payload() {
        let mut bad = config();
        bad.id = String::new();
        assert!(matches!(
            GossipCore::new(&bad, vec![], 1),
            Err(Error::InvalidConfig { .. })
        ));
        let mut bad = config();
        bad.cluster_size_hint = 0;
        assert!(matches!(
            GossipCore::new(&bad, vec![], 1),
            Err(Error::InvalidConfig { .. })
        ));
        let mut bad = config();
        let mut tiny = foca::Config::new_lan(std::num::NonZeroU32::new(3).unwrap());
        tiny.max_packet_size = std::num::NonZeroUsize::new(100).unwrap();
        bad.foca_config = Some(tiny);
        let err = GossipCore::new(&bad, vec![], 1).unwrap_err();
        assert!(err.to_string().contains("max_packet_size 100"), "{err}");
        let mut core = GossipCore::new(&config(), vec![1; 1024], 1).unwrap();
        let max = core.max_payload_len();
        assert!(max >= 1024, "1 KiB payloads must fit, max is {max}");
        let err = core
            .set_payload(vec![0; max + 1], Instant::now())
            .unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
        core.set_payload(vec![0; max], Instant::now()).unwrap();
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let mut core = GossipCore::new(&config(), b"p".to_vec(), 1).unwrap();
        let from = SocketAddr::from(([127, 0, 0, 1], 1));
        let now = Instant::now();
        core.handle_packet(from, &[], now);
        core.handle_packet(from, &[0x00, 1, 2, 3], now);
        core.handle_packet(from, &[TAG_FOCA, 0xff, 0xff, 0xff], now);
        core.handle_packet(from, &[TAG_HELLO, 0xff], now);
        core.handle_packet(from, &[TAG_FOCA; 5000], now);
        assert_eq!(core.bad_packets(), 5);
        assert_eq!(core.members().len(), 1);
    }

    #[test]
    fn announce_skips_ourselves() {
        let mut core = GossipCore::new(&config(), vec![], 1).unwrap();
        core.announce(SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert!(core.pop_packet().is_none());
        core.announce(SocketAddr::from(([127, 0, 0, 1], 9001)));
        let (to, packet) = core.pop_packet().unwrap();
        assert_eq!(to.port(), 9001);
        assert_eq!(packet[0], TAG_HELLO);
    }

    fn keyed(id: &str, port: u16, key: u8) -> GossipConfig {
        let mut config = GossipConfig::new(id.into(), SocketAddr::from(([127, 0, 0, 1], port)));
        config.keys = Some(GossipKeys::new(vec![[key; 32]]).unwrap());
        config
    }

    /// Delivers packets between `cores` (by address) and fires timers for
    /// `steps` steps of 100 ms; returns every datagram's length.
    fn exchange(cores: &mut [GossipCore], start: Instant, steps: u32) -> Vec<usize> {
        let mut lens = Vec::new();
        for step in 0..steps {
            let now = start + Duration::from_millis(100) * step;
            for core in cores.iter_mut() {
                core.handle_timers(now);
            }
            loop {
                let mut sent = Vec::new();
                for core in cores.iter_mut() {
                    let from = core.identity().addr;
                    sent.extend(
                        core.drain_packets()
                            .into_iter()
                            .map(|(to, p)| (from, to, p)),
                    );
                }
                if sent.is_empty() {
                    break;
                }
                for (from, to, packet) in sent {
                    lens.push(packet.len());
                    if let Some(core) = cores.iter_mut().find(|c| c.identity().addr == to) {
                        core.handle_packet(from, &packet, now);
                    }
                }
            }
        }
        lens
    }

    /// A host wiped and started again: a new id at the old one's address.
    /// Everyone (the newcomer too, which learns of the old id from the
    /// others) declares the old id down at once, although its address keeps
    /// talking.
    #[test]
    fn a_new_id_at_an_old_address_retires_the_old_id() {
        let start = Instant::now();
        let plain = |id: &str, port: u16, incarnation: u64| {
            let mut c = GossipConfig::new(id.into(), SocketAddr::from(([127, 0, 0, 1], port)));
            c.incarnation = incarnation;
            c
        };
        let mut cores: Vec<GossipCore> = [("a", 9000), ("b", 9001), ("c", 9002)]
            .iter()
            .enumerate()
            .map(|(i, (id, port))| {
                GossipCore::new(&plain(id, *port, 100), vec![], i as u64).unwrap()
            })
            .collect();
        for core in &mut cores {
            core.start(start);
        }
        cores[1].announce(SocketAddr::from(([127, 0, 0, 1], 9000)));
        cores[2].announce(SocketAddr::from(([127, 0, 0, 1], 9000)));
        exchange(&mut cores, start, 30);
        assert!(
            cores.iter().all(|c| c.members().len() == 3
                && c.members().iter().all(|m| m.state == MemberState::Alive))
        );
        // Host c comes back as c2 on the same address, knowing only a.
        let mut c2 = GossipCore::new(&plain("c2", 9002, 200), vec![], 9).unwrap();
        let later = start + Duration::from_secs(3);
        c2.start(later);
        c2.announce(SocketAddr::from(([127, 0, 0, 1], 9000)));
        cores[2] = c2;
        // Two seconds: shorter than foca's probe period plus the suspicion
        // timeout, so "down" here is the retirement, not a failed probe.
        exchange(&mut cores, later, 20);
        for core in &cores {
            let view = core.members();
            let state = |id: &str| view.iter().find(|m| m.id == id).map(|m| m.state);
            assert_eq!(
                state("c"),
                Some(MemberState::Down),
                "{} sees {view:?}",
                core.identity().id
            );
            assert_eq!(
                state("c2"),
                Some(MemberState::Alive),
                "{} sees {view:?}",
                core.identity().id
            );
            assert_eq!(
                state("b"),
                Some(MemberState::Alive),
                "{} sees {view:?}",
                core.identity().id
            );
        }
    }

    #[test]
    fn keyed_cores_seal_everything_and_stay_under_the_packet_limit() {
        let start = Instant::now();
        let a = GossipCore::new(&keyed("a", 9000, 1), vec![], 1).unwrap();
        let max = a.max_payload_len();
        let mut cores = vec![
            GossipCore::new(&keyed("a", 9000, 1), vec![b'a'; max], 1).unwrap(),
            GossipCore::new(&keyed("b", 9001, 1), vec![b'b'; max], 2).unwrap(),
        ];
        let plain = GossipCore::new(&config(), vec![], 1).unwrap();
        assert_eq!(plain.max_payload_len(), max, "keys do not change the room");
        cores[1].announce(SocketAddr::from(([127, 0, 0, 1], 9000)));
        let lens = exchange(&mut cores, start, 50);
        assert!(lens.len() > 10, "too little traffic: {lens:?}");
        let limit = foca::Config::new_lan(std::num::NonZeroU32::new(3).unwrap())
            .max_packet_size
            .get();
        assert!(
            lens.iter().all(|len| *len <= limit),
            "a datagram exceeds {limit}: {lens:?}"
        );
        assert!(
            lens.iter().any(|len| *len > limit - 200),
            "payloads were not sent: {lens:?}"
        );
        for core in &cores {
            assert_eq!(core.bad_packets(), 0);
            let view = core.members();
            assert_eq!(view.len(), 2);
            assert!(view.iter().all(|m| m.state == MemberState::Alive
                && m.payload.as_ref().is_some_and(|p| p.len() == max)));
        }
    }

    #[test]
    fn a_keyed_core_drops_plain_and_wrongly_keyed_packets() {
        let start = Instant::now();
        let mut cores = vec![
            GossipCore::new(&keyed("a", 9000, 1), vec![], 1).unwrap(),
            GossipCore::new(&keyed("b", 9001, 2), vec![], 2).unwrap(),
        ];
        cores[1].announce(SocketAddr::from(([127, 0, 0, 1], 9000)));
        exchange(&mut cores, start, 20);
        assert!(cores[0].bad_packets() >= 1);
        assert_eq!(cores[0].members().len(), 1);
        assert_eq!(cores[1].members().len(), 1);

        // A plain hello is refused by a keyed core ...
        let mut plain = GossipCore::new(&config(), vec![], 3).unwrap();
        plain.announce(SocketAddr::from(([127, 0, 0, 1], 9001)));
        let (_, hello) = plain.pop_packet().unwrap();
        let before = cores[1].bad_packets();
        cores[1].handle_packet(SocketAddr::from(([127, 0, 0, 1], 9000)), &hello, start);
        assert_eq!(cores[1].bad_packets(), before + 1);
        assert!(cores[1].pop_packet().is_none(), "answered a plain hello");

        // ... until the keys match: b switches to a's key at run time.
        cores[1].set_keys(Some(GossipKeys::new(vec![[1; 32]]).unwrap()));
        cores[1].announce(SocketAddr::from(([127, 0, 0, 1], 9000)));
        exchange(&mut cores, start + Duration::from_secs(5), 20);
        for core in &cores {
            assert_eq!(core.members().len(), 2, "{:?}", core.members());
        }
        // Keys can also be dropped again: back to plain packets.
        cores[1].set_keys(None);
        assert!(cores[1].keys().is_none());
        cores[1].announce(SocketAddr::from(([127, 0, 0, 2], 1)));
        assert_eq!(cores[1].pop_packet().unwrap().1[0], TAG_HELLO);
    }

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Items are not relayed, yet every member of seven has every other's
    /// payload within a refresh: each sends its own to all.
    #[test]
    fn every_payload_reaches_every_member_directly() {
        let start = Instant::now();
        let mut cores: Vec<GossipCore> = (0..7u16)
            .map(|i| {
                let mut c = GossipConfig::new(format!("m{i}"), at(9000 + i));
                c.cluster_size_hint = 7;
                GossipCore::new(&c, vec![i as u8; 8], u64::from(i)).unwrap()
            })
            .collect();
        for (i, core) in cores.iter_mut().enumerate() {
            core.start(start);
            if i > 0 {
                core.announce(at(9000));
            }
        }
        exchange(&mut cores, start, 40);
        // A new payload everywhere within one step of 100 ms.
        let later = start + Duration::from_secs(4);
        cores[3].set_payload(vec![42; 8], later).unwrap();
        exchange(&mut cores, later, 1);
        for core in &cores {
            let view = core.members();
            assert_eq!(view.len(), 7, "{view:?}");
            assert_eq!(
                view.iter()
                    .find(|m| m.id == "m3")
                    .and_then(|m| m.payload.clone()),
                Some(vec![42; 8]),
                "at {}",
                core.identity().id
            );
            assert_eq!(core.foreign_items(), 0);
        }
    }

    /// A keyed core takes plain packets only from a sender vouched for (a
    /// manager of a release that cannot seal), at that address and under
    /// that id, and answers it in plain; strangers stay out.
    #[test]
    fn plain_packets_only_from_a_vouched_sender() {
        let start = Instant::now();
        let mut cores = vec![
            GossipCore::new(&keyed("a", 9000, 1), b"a".to_vec(), 1).unwrap(),
            GossipCore::new(
                &GossipConfig::new("old".into(), at(9001)),
                b"old".to_vec(),
                2,
            )
            .unwrap(),
            GossipCore::new(
                &GossipConfig::new("liar".into(), at(9002)),
                b"x".to_vec(),
                3,
            )
            .unwrap(),
        ];
        for core in &mut cores {
            core.start(start);
        }
        cores[1].announce(at(9000));
        cores[2].announce(at(9000));
        exchange(&mut cores, start, 10);
        assert_eq!(cores[0].members().len(), 1, "plain senders got in");
        let reported: Vec<GossipEvent> = cores[0]
            .drain_events()
            .into_iter()
            .filter(|e| matches!(e, GossipEvent::PlainSender { .. }))
            .collect();
        assert_eq!(
            reported,
            vec![
                GossipEvent::PlainSender {
                    from: at(9001),
                    id: "old".into()
                },
                GossipEvent::PlainSender {
                    from: at(9002),
                    id: "liar".into()
                },
            ]
        );
        // Reported once, not for every packet.
        cores[1].announce(at(9000));
        exchange(&mut cores, start + Duration::from_secs(1), 3);
        assert!(
            cores[0]
                .drain_events()
                .iter()
                .all(|e| !matches!(e, GossipEvent::PlainSender { .. }))
        );
        // Vouched for "old" at 9001; "liar" claims to be "old" elsewhere.
        let later = start + Duration::from_secs(2);
        cores[0].vouch_plain(at(9001), "old".into(), later);
        cores[2] =
            GossipCore::new(&GossipConfig::new("old".into(), at(9002)), b"x".to_vec(), 4).unwrap();
        cores[2].start(later);
        cores[1].announce(at(9000));
        cores[2].announce(at(9000));
        exchange(&mut cores, later, 30);
        let view = cores[0].members();
        let old = view
            .iter()
            .find(|m| m.id == "old")
            .expect("old is a member");
        assert_eq!((old.addr, old.state), (at(9001), MemberState::Alive));
        assert_eq!(old.payload.as_deref(), Some(&b"old"[..]));
        assert!(
            cores[1]
                .members()
                .iter()
                .any(|m| m.id == "a" && m.state == MemberState::Alive)
        );
        assert_eq!(cores[0].plain_peers(), vec![(at(9001), "old".to_string())]);
        // Once it seals (an upgrade), plain packets from it are refused again.
        cores[1].set_keys(Some(GossipKeys::new(vec![[1; 32]]).unwrap()));
        exchange(&mut cores, later + Duration::from_secs(3), 20);
        assert!(cores[0].plain_peers().is_empty());
        // The vouch also runs out.
        cores[0].vouch_plain(at(9005), "other".into(), later);
        cores[0].handle_timers(later + PLAIN_VOUCH_FOR);
        assert!(cores[0].plain_peers().is_empty());
    }

    /// Incarnations are unix milliseconds at a manager's start: one far in
    /// the future (u64::MAX) would outrank the real member for good.
    #[test]
    fn incarnations_from_the_future_are_refused() {
        let start = Instant::now();
        let base = 1_765_000_000_000u64;
        let mut a = GossipConfig::new("a".into(), at(9000));
        a.incarnation = base;
        let mut a = GossipCore::new(&a, vec![], 1).unwrap();
        a.start(start);
        let hello = |incarnation: u64| {
            wire::hello(
                TAG_HELLO,
                &NodeId {
                    id: "b".into(),
                    addr: at(9001),
                    incarnation,
                },
            )
            .unwrap()
        };
        a.handle_packet(at(9001), &hello(base + 3_600_000), start);
        assert_eq!(
            a.pop_packet().map(|(to, _)| to),
            Some(at(9001)),
            "a sane hello is answered"
        );
        let bad = a.bad_packets();
        a.handle_packet(at(9001), &hello(u64::MAX), start);
        assert_eq!(a.bad_packets(), bad + 1);
        assert!(a.pop_packet().is_none());
        // The bound moves with our time.
        let later = start + Duration::from_secs(48 * 3600);
        a.handle_packet(at(9001), &hello(base + 47 * 3600 * 1000), later);
        assert!(a.pop_packet().is_some());
    }
}
