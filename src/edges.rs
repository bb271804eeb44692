//! The edges of the leader loop and of the node: their calls to other
//! managers, etcd, gossip, etcd's processes and tools, the store, the clock
//! and randomness go through one of these traits, so the simulation
//! (`tests/tests/sim/`) runs the real [`crate::driver::Driver`], the real lease
//! task and the real [`crate::node::Node`] against its own model of the
//! network, etcd and time, and production runs them against the real ones.
//!
//! Not (yet) through them: local files (the node's state file and data
//! dirs, the leader's scratch folder; the simulation gives each node a real
//! temporary folder), the continuous backup's etcd watch
//! ([`crate::backups::delta`], which connects with `etcd::EtcdClient`
//! itself and which the simulation does not run), and the check of a
//! backup's snapshot with `etcdutl` when it carries no checksum of ours
//! (`driver::backups::verify_backup`).
//!
//! | edge | trait | production | simulation |
//! |---|---|---|---|
//! | other managers | [`PeerApi`] | [`crate::peer::PeerClient`] (TCP, mutual TLS) | calls the other simulated nodes' `Node::handle` over a faulty network |
//! | etcd's API | [`EtcdConnect`], [`EtcdApi`] | [`EtcdConnector`] over [`etcd::EtcdClient`] | the model etcd |
//! | gossip membership | [`Membership`] | [`gossip::GossipHandle`] | the real gossip core over simulated packets |
//! | etcd processes and tools | [`EtcdRuntime`] | [`ProcessRuntime`] (`etcd`, `etcdutl`) | the model etcd |
//! | the store | `object_store::ObjectStore` under [`backup::BackupStore`] and [`lock::LeaseClient`] | S3, GCS, Azure, files | `InMemory` with faults |
//! | time | [`crate::clock::Clock`] | [`crate::clock::SystemClock`] | virtual time, skewed per node |
//! | randomness | [`Randomness`] | the thread's generator | the seed's stream |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::peer::{PeerClient, PeerError, Request, Response};

/// Calls another manager's peer API.
#[async_trait]
pub trait PeerApi: Send + Sync + 'static {
    /// Send one request to the manager at `addr` and wait for its answer,
    /// all within `timeout`. A fenced or failed answer is an error.
    async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, PeerError>;
}

#[async_trait]
impl PeerApi for PeerClient {
    async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        PeerClient::call(self, addr, req, timeout).await
    }
}

/// One connection to etcd (one or several endpoints); cheap to clone as an
/// `Arc`. Every call is bounded by the timeout given at connect.
#[async_trait]
pub trait EtcdApi: Send + Sync + 'static {
    fn endpoints(&self) -> &[String];
    async fn status(&self) -> Result<etcd::EndpointStatus, etcd::Error>;
    /// The endpoint is ready (see [`etcd::EtcdClient::health`]).
    async fn healthy(&self) -> bool;
    async fn member_list(&self) -> Result<Vec<etcd::Member>, etcd::Error>;
    /// See [`etcd::EtcdClient::member_add_retrying`].
    async fn member_add_retrying(
        &self,
        peer_urls: &[String],
        learner: bool,
        deadline: Duration,
    ) -> Result<(etcd::Member, Vec<etcd::Member>), etcd::Error>;
    async fn member_promote(&self, id: u64) -> Result<(), etcd::Error>;
    /// See [`etcd::EtcdClient::member_remove_retrying`].
    async fn member_remove_retrying(&self, id: u64, deadline: Duration) -> Result<(), etcd::Error>;
    async fn enable_downgrade(&self, minor: &str) -> Result<(), etcd::Error>;
    async fn cancel_downgrade(&self) -> Result<(), etcd::Error>;
    async fn move_leader(&self, target: u64) -> Result<(), etcd::Error>;
    async fn alarms(&self) -> Result<Vec<(u64, String)>, etcd::Error>;
    async fn disarm_nospace(&self, member: u64) -> Result<(), etcd::Error>;
    async fn compact(&self, revision: i64) -> Result<(), etcd::Error>;
    async fn defragment(&self) -> Result<(), etcd::Error>;
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, etcd::Error>;
    async fn hash_kv(&self, revision: i64) -> Result<etcd::HashKv, etcd::Error>;
    /// A snapshot of the first endpoint's member (no quorum needed).
    async fn snapshot(&self) -> Result<etcd::SnapshotStream, etcd::Error>;
}

/// Opens connections to etcd.
#[async_trait]
pub trait EtcdConnect: Send + Sync + 'static {
    async fn connect(
        &self,
        endpoints: &[String],
        timeout: Duration,
    ) -> Result<Arc<dyn EtcdApi>, etcd::Error>;
}

/// Connects with [`etcd::EtcdClient`]: our client identity when etcd uses
/// TLS (None with `--etcd-insecure`).
#[derive(Debug, Clone, Default)]
pub struct EtcdConnector {
    pub tls: Option<etcd::ClientTls>,
}

#[async_trait]
impl EtcdConnect for EtcdConnector {
    async fn connect(
        &self,
        endpoints: &[String],
        timeout: Duration,
    ) -> Result<Arc<dyn EtcdApi>, etcd::Error> {
        let client = etcd::EtcdClient::connect_with(endpoints, timeout, self.tls.as_ref()).await?;
        Ok(Arc::new(client))
    }
}

#[async_trait]
impl EtcdApi for etcd::EtcdClient {
    fn endpoints(&self) -> &[String] {
        etcd::EtcdClient::endpoints(self)
    }
    async fn status(&self) -> Result<etcd::EndpointStatus, etcd::Error> {
        etcd::EtcdClient::status(self).await
    }
    async fn healthy(&self) -> bool {
        etcd::EtcdClient::healthy(self).await
    }
    async fn member_list(&self) -> Result<Vec<etcd::Member>, etcd::Error> {
        etcd::EtcdClient::member_list(self).await
    }
    async fn member_add_retrying(
        &self,
        peer_urls: &[String],
        learner: bool,
        deadline: Duration,
    ) -> Result<(etcd::Member, Vec<etcd::Member>), etcd::Error> {
        etcd::EtcdClient::member_add_retrying(self, peer_urls, learner, deadline).await
    }
    async fn member_promote(&self, id: u64) -> Result<(), etcd::Error> {
        etcd::EtcdClient::member_promote(self, id).await
    }
    async fn member_remove_retrying(&self, id: u64, deadline: Duration) -> Result<(), etcd::Error> {
        etcd::EtcdClient::member_remove_retrying(self, id, deadline).await
    }
    async fn enable_downgrade(&self, minor: &str) -> Result<(), etcd::Error> {
        etcd::EtcdClient::enable_downgrade(self, minor).await
    }
    async fn cancel_downgrade(&self) -> Result<(), etcd::Error> {
        etcd::EtcdClient::cancel_downgrade(self).await
    }
    async fn move_leader(&self, target: u64) -> Result<(), etcd::Error> {
        etcd::EtcdClient::move_leader(self, target).await
    }
    async fn alarms(&self) -> Result<Vec<(u64, String)>, etcd::Error> {
        etcd::EtcdClient::alarms(self).await
    }
    async fn disarm_nospace(&self, member: u64) -> Result<(), etcd::Error> {
        etcd::EtcdClient::disarm_nospace(self, member).await
    }
    async fn compact(&self, revision: i64) -> Result<(), etcd::Error> {
        etcd::EtcdClient::compact(self, revision).await
    }
    async fn defragment(&self) -> Result<(), etcd::Error> {
        etcd::EtcdClient::defragment(self).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, etcd::Error> {
        etcd::EtcdClient::delete_prefix(self, prefix).await
    }
    async fn hash_kv(&self, revision: i64) -> Result<etcd::HashKv, etcd::Error> {
        etcd::EtcdClient::hash_kv(self, revision).await
    }
    async fn snapshot(&self) -> Result<etcd::SnapshotStream, etcd::Error> {
        etcd::EtcdClient::snapshot(self).await
    }
}

/// Who is alive, as gossip sees it, and our published payload.
pub trait Membership: Send + Sync + 'static {
    /// All known members including ourselves (`is_self`), sorted by id.
    fn members(&self) -> Vec<gossip::MemberView>;
    /// Membership snapshots, published whenever one changes.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Vec<gossip::MemberView>>;
    /// Publishes our payload (the latest call wins).
    fn set_payload(&self, payload: Vec<u8>);
    /// (members we saw declared down, times we were declared down and rejoined).
    fn downs(&self) -> (u64, u64);
    /// Payload bytes sent and received so far.
    fn bytes(&self) -> (u64, u64);
    /// Packets dropped as undecodable or unauthenticated so far.
    fn bad_packets(&self) -> u64;
    /// Managers taken in plain while we seal (a release that cannot seal,
    /// confirmed by its peer API certificate).
    fn plain_peers(&self) -> u64 {
        0
    }
}

impl Membership for gossip::GossipHandle {
    fn members(&self) -> Vec<gossip::MemberView> {
        gossip::GossipHandle::members(self)
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Vec<gossip::MemberView>> {
        gossip::GossipHandle::subscribe(self)
    }
    fn set_payload(&self, payload: Vec<u8>) {
        gossip::GossipHandle::set_payload(self, payload)
    }
    fn downs(&self) -> (u64, u64) {
        gossip::GossipHandle::downs(self)
    }
    fn bytes(&self) -> (u64, u64) {
        gossip::GossipHandle::bytes(self)
    }
    fn bad_packets(&self) -> u64 {
        gossip::GossipHandle::bad_packets(self)
    }
    fn plain_peers(&self) -> u64 {
        gossip::GossipHandle::plain_peers(self)
    }
}

/// A running etcd member process, as the node supervises it.
#[async_trait]
pub trait EtcdRun: Send + Sync + 'static {
    fn spec(&self) -> &etcd::EtcdNodeSpec;
    fn status(&self) -> etcd::ProcessStatus;
    /// Stop it (SIGTERM, SIGKILL after `timeout`); returns when it is gone.
    async fn stop(self: Box<Self>, timeout: Duration) -> Result<(), etcd::Error>;
}

#[async_trait]
impl EtcdRun for etcd::EtcdProcess {
    fn spec(&self) -> &etcd::EtcdNodeSpec {
        etcd::EtcdProcess::spec(self)
    }
    fn status(&self) -> etcd::ProcessStatus {
        etcd::EtcdProcess::status(self)
    }
    async fn stop(self: Box<Self>, timeout: Duration) -> Result<(), etcd::Error> {
        etcd::EtcdProcess::stop(*self, timeout).await
    }
}

/// Starting etcd and running its offline tools on this machine.
#[async_trait]
pub trait EtcdRuntime: Send + Sync + std::fmt::Debug + 'static {
    /// Start a member with `spec` and the user's `ETCD_*` settings.
    fn start(
        &self,
        binaries: etcd::EtcdBinaries,
        spec: etcd::EtcdNodeSpec,
        env: Vec<(String, String)>,
        log: Option<PathBuf>,
    ) -> Result<Box<dyn EtcdRun>, etcd::Error>;
    /// Check a snapshot file with `etcdutl snapshot status`.
    async fn verify_snapshot(
        &self,
        binaries: &etcd::EtcdBinaries,
        file: &Path,
    ) -> Result<etcd::SnapshotInfo, etcd::Error>;
    /// Write a member's data dir from a snapshot (`etcdutl snapshot restore`).
    async fn restore_snapshot(
        &self,
        binaries: &etcd::EtcdBinaries,
        file: &Path,
        spec: &etcd::EtcdNodeSpec,
        bump: Option<u64>,
    ) -> Result<(), etcd::Error>;
    /// Whether these binaries' etcdutl has `check v2store`.
    async fn can_check_v2store(&self, binaries: &etcd::EtcdBinaries) -> bool;
    /// Stop every etcd of a data dir under `data_root` that runs without
    /// this manager (the one before died on its own; see
    /// [`etcd::stop_orphans`]); how many were stopped.
    async fn stop_orphans(&self, data_root: &Path) -> Result<usize, etcd::Error>;
    /// `etcdutl check v2store` on a copy of `data_dir` made under `scratch`.
    async fn check_v2store(
        &self,
        binaries: &etcd::EtcdBinaries,
        data_dir: &Path,
        scratch: &Path,
        deadline: Duration,
    ) -> Result<etcd::V2StoreVerdict, etcd::Error>;
}

/// How long an orphaned etcd has to stop on SIGTERM before SIGKILL (as
/// long as the node gives its own etcd).
const ORPHAN_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The real processes and tools.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessRuntime;

#[async_trait]
impl EtcdRuntime for ProcessRuntime {
    fn start(
        &self,
        binaries: etcd::EtcdBinaries,
        spec: etcd::EtcdNodeSpec,
        env: Vec<(String, String)>,
        log: Option<PathBuf>,
    ) -> Result<Box<dyn EtcdRun>, etcd::Error> {
        Ok(Box::new(etcd::EtcdProcess::start(
            binaries, spec, env, log,
        )?))
    }
    async fn verify_snapshot(
        &self,
        binaries: &etcd::EtcdBinaries,
        file: &Path,
    ) -> Result<etcd::SnapshotInfo, etcd::Error> {
        etcd::verify_snapshot(binaries, file).await
    }
    async fn restore_snapshot(
        &self,
        binaries: &etcd::EtcdBinaries,
        file: &Path,
        spec: &etcd::EtcdNodeSpec,
        bump: Option<u64>,
    ) -> Result<(), etcd::Error> {
        etcd::restore_snapshot(binaries, file, spec, bump).await
    }
    async fn can_check_v2store(&self, binaries: &etcd::EtcdBinaries) -> bool {
        etcd::can_check_v2store(binaries).await
    }
    async fn stop_orphans(&self, data_root: &Path) -> Result<usize, etcd::Error> {
        Ok(etcd::stop_orphans(data_root, ORPHAN_STOP_TIMEOUT)
            .await?
            .len())
    }
    async fn check_v2store(
        &self,
        binaries: &etcd::EtcdBinaries,
        data_dir: &Path,
        scratch: &Path,
        deadline: Duration,
    ) -> Result<etcd::V2StoreVerdict, etcd::Error> {
        etcd::check_v2store(binaries, data_dir, scratch, deadline).await
    }
}

/// The randomness the leader and the node need: new cluster tokens and
/// node ids. Production draws from the thread's generator; the simulation
/// from its seed, so a seed replays exactly.
pub trait Randomness: Send + Sync + 'static {
    /// `len` characters of `[a-z0-9]`.
    fn token(&self, len: usize) -> String;
}

/// The thread's generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRandomness;

impl Randomness for ThreadRandomness {
    #[allow(clippy::disallowed_methods)]
    fn token(&self, len: usize) -> String {
        use rand::RngExt;
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        (0..len)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }
}
