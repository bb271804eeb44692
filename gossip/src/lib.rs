//! SWIM membership for etcd-manager, on [`foca`] 2 over UDP.
//!
//! Two layers:
//! - [`GossipCore`]: sans-IO. It owns the `Foca` instance by value, the table
//!   of members' payloads and a list of timers. Every method takes the current
//!   time as a value and accumulates outputs (packets to send, events); it
//!   never reads a clock, touches a socket or spawns. A seeded rng makes it
//!   reproducible, so a test can drive many cores on virtual time.
//! - [`start`]: the tokio driver. It binds the UDP socket, owns a core and
//!   runs one `select!` loop over the socket, the earliest timer, payload
//!   updates, the periodic seed/discovery refresh, leave and cancellation.
//!   Membership snapshots are published through a `tokio::sync::watch`.
//!
//! Each node publishes opaque bytes (its payload) with a version counter.
//! Payloads travel as foca custom broadcasts: for one node id the newest
//! `(incarnation, version)` wins. A member that goes Down keeps its last
//! payload visible; a restarted member (same id, higher incarnation) replaces
//! its old self.
//!
//! Wire format: every UDP datagram starts with one tag byte,
//! [`wire::TAG_FOCA`] (a foca packet encoded with bincode 2) or
//! [`wire::TAG_HELLO`] / [`wire::TAG_HELLO_ACK`] (a bincode-encoded
//! [`NodeId`]). foca only accepts an Announce addressed to the receiver's
//! id, so to join through a seed known only as `host:port` a node sends a
//! hello; the seed answers with its identity and the node then announces to
//! it with foca (and receives the seed's member list in foca's Feed).
//! Anything else is a bad packet: dropped and counted.
//!
//! With a keyring ([`GossipConfig::keys`]) every datagram, hellos included,
//! is sealed with XChaCha20-Poly1305: the version byte [`SEALED_V1`], a
//! 24-byte random nonce, then the ciphertext of the framed packet and its
//! 16-byte tag (associated data: the fixed string
//! `etcd-manager-gossip-v1`). Packets are sealed with the first key and opened with any key of the ring (see [`GossipKeys`] for
//! rotation). Plain, tampered or wrongly keyed packets are dropped and
//! counted as bad. The nonces come from the core's seeded rng.
//!
//! Packet size: foca builds packets of at most `max_packet_size` minus the
//! framing (tag byte and [`SEAL_OVERHEAD`], reserved with or without keys),
//! so every datagram stays within the configured `max_packet_size` (1400
//! bytes by default).

mod core;
mod discovery;
mod driver;
mod error;
mod ident;
mod identity;
mod keys;
mod payload;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::core::{CoreTimer, GossipCore, GossipEvent, PLAIN_REPORT_EVERY, PLAIN_VOUCH_FOR};
pub use crate::discovery::{DiscoveryRecord, RecordError, parse_record, parse_seed};
pub use crate::driver::{GossipHandle, start};
pub use crate::error::Error;
pub use crate::ident::{MAX_ID_LEN, check_member_id};
pub use crate::identity::NodeId;
pub use crate::keys::{
    GossipKeys, KEY_LEN, NONCE_LEN, SEAL_OVERHEAD, SEALED_V1, TAG_LEN, load_key_file,
    parse_key_file, parse_key_line,
};
pub use foca;

/// Default interval of the seed/discovery/payload refresh.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// Configuration of one gossip node.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Stable node id (survives restarts; a restarted node with a higher
    /// incarnation replaces its old self).
    pub id: String,
    /// UDP bind address, e.g. `127.0.0.1:8000`. Port 0 lets the OS choose;
    /// see [`GossipHandle::local_addr`].
    pub bind: SocketAddr,
    /// Address others reach us at (usually equal to `bind`). A port of 0 is
    /// replaced by the bound port.
    pub advertise: SocketAddr,
    /// Seeds as `host:port`; resolved again on every refresh.
    pub seeds: Vec<String>,
    /// Shared discovery folder: each node writes `<dir>/<id>.json`.
    pub discovery_dir: Option<PathBuf>,
    /// Upstream's seeds folder (`/etc/kubernetes/etcd-manager/seeds`): every
    /// file whose name is an IP address is a peer at that address and this
    /// port; read again on every refresh.
    pub seed_dir: Option<(PathBuf, u16)>,
    /// Expected cluster size (3 or 5); sizes foca's timings.
    pub cluster_size_hint: u32,
    /// Starting incarnation; the caller passes wall-clock millis at start so
    /// a restart always outranks the previous run.
    pub incarnation: u64,
    /// Interval of the seeds/discovery/payload refresh.
    pub refresh_interval: Duration,
    /// Overrides `foca::Config::new_lan(cluster_size_hint)` (tests use faster
    /// probes).
    pub foca_config: Option<foca::Config>,
    /// The gossip keyring; `None` sends and accepts plain packets. Every
    /// node of a cluster must share a key (see [`load_key_file`]).
    pub keys: Option<GossipKeys>,
    /// Lifeguard-style robustness on top of foca (default `true`): every
    /// update sent at least [`MIN_TRANSMISSIONS`] times, a local health
    /// score that slows our accusations while our own timers run late, and
    /// suspects we still hear from kept alive. `false` runs foca's
    /// `new_lan(cluster_size_hint)` as shipped: the baseline the benchmarks
    /// compare against, not for production.
    pub lifeguard: bool,
    /// With keys: how to check a plain sender (a manager of a release that
    /// cannot seal) by other means; `None` never takes plain packets. See
    /// [`PlainPeerCheck`].
    pub plain_check: Option<std::sync::Arc<dyn PlainPeerCheck>>,
}

/// Checks, by a channel the gossip key does not protect, that the manager
/// `id` runs at `from` (the manager uses the peer API: a TLS handshake whose
/// certificate, signed by the cluster's CA, names `id`, at `from`'s
/// address). A sender it confirms is taken in plain for
/// [`PLAIN_VOUCH_FOR`]: how managers of the release before derived keys
/// stay in one membership with the new ones during a rolling update.
pub trait PlainPeerCheck: Send + Sync + std::fmt::Debug {
    /// True when the manager `id` is confirmed at `from`.
    fn check(
        &self,
        from: SocketAddr,
        id: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;
}

impl GossipConfig {
    /// A configuration with defaults: advertise = bind, no seeds, no
    /// discovery folder, cluster size hint 3, incarnation 0, refresh 2 s.
    pub fn new(id: String, bind: SocketAddr) -> Self {
        Self {
            id,
            bind,
            advertise: bind,
            seeds: Vec::new(),
            discovery_dir: None,
            seed_dir: None,
            cluster_size_hint: 3,
            incarnation: 0,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            foca_config: None,
            keys: None,
            lifeguard: true,
            plain_check: None,
        }
    }

    /// The foca configuration asked for: the override if given, else
    /// `Config::new_lan(cluster_size_hint)` with at least
    /// [`MIN_TRANSMISSIONS`] sends per update. Its `max_packet_size` bounds
    /// whole datagrams; the core hands foca a limit lowered by the framing
    /// overhead (see the crate docs).
    pub fn effective_foca_config(&self) -> Result<foca::Config, Error> {
        if let Some(config) = &self.foca_config {
            return Ok(config.clone());
        }
        let size = std::num::NonZeroU32::new(self.cluster_size_hint).ok_or_else(|| {
            Error::InvalidConfig {
                reason: "cluster_size_hint is 0; pass the expected number of members (3 or 5)"
                    .to_string(),
            }
        })?;
        let mut config = foca::Config::new_lan(size);
        if !self.lifeguard {
            return Ok(config);
        }
        // new_lan sends each update (a suspicion, its refutation) only
        // log10(n + 1) * 4 times: twice for 3 members. With 10 % packet loss
        // a suspected member then often never hears of it, cannot refute and
        // is declared down while alive. Five sends cost bytes only while
        // something changes.
        config.max_transmissions = config.max_transmissions.max(MIN_TRANSMISSIONS);
        Ok(config)
    }
}

/// Every membership update is sent at least this many times (see
/// [`GossipConfig::effective_foca_config`]).
pub const MIN_TRANSMISSIONS: std::num::NonZeroU8 = match std::num::NonZeroU8::new(5) {
    Some(n) => n,
    None => panic!("5 is not zero"),
};

/// The state of a member as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; will be declared Down unless it refutes.
    Suspect,
    /// Declared down (failed, or left the cluster).
    Down,
}

impl From<foca::State> for MemberState {
    fn from(state: foca::State) -> Self {
        match state {
            foca::State::Alive => Self::Alive,
            foca::State::Suspect => Self::Suspect,
            foca::State::Down => Self::Down,
        }
    }
}

/// One member as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The member's stable id.
    pub id: String,
    /// The address it advertises.
    pub addr: SocketAddr,
    /// Its current incarnation (start millis, bumped on every rejoin).
    pub incarnation: u64,
    /// Alive, Suspect or Down.
    pub state: MemberState,
    /// Its latest payload, if one has reached us.
    pub payload: Option<Vec<u8>>,
    /// True for this node itself.
    pub is_self: bool,
}
