//! The peer API: how the leader talks to every manager.
//!
//! Length-prefixed frames over TCP: a 4-byte big-endian length, then a
//! bincode 2 (serde, standard config) encoding of [`Envelope`], which carries
//! the protocol version so that managers of different releases can tell each
//! other apart during a rolling upgrade. One request, one response per
//! connection. Decoding is bounded: no value inside a frame may claim more
//! than [`MAX_FRAME`] bytes, so a forged length fails before any allocation.
//!
//! Mutating requests carry a [`Fence`] (cluster name, leader id, epoch and
//! the lease record it holds). The receiver refuses epochs lower than the
//! highest it has seen, and with TLS it accepts a request only from the node
//! the fence names (the caller's certificate names its node, see
//! [`crate::platform::pki::node_id_of_cert`]); an epoch higher than any it has seen is
//! checked against the lease records in the store first
//! ([`crate::node::Node`]).
//!
//! Unless `--insecure`, every connection is TLS 1.3 with certificates on both
//! sides from the `etcd-manager-ca` ([`crate::platform::pki::PeerTls`]): a client without
//! one is dropped in the handshake, before any request is read. At most
//! [`MAX_CONNECTIONS`] connections are served at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub mod refusal;
pub use refusal::Refusal;

/// Bumped on any incompatible change of the messages below (2: the fence
/// names the lease record).
pub const PROTOCOL_VERSION: u32 = 2;
/// Larger frames are refused before reading them, and no value inside a frame
/// may claim more bytes than this while it is decoded.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a caller has to send its request once connected (and the TLS
/// handshake, when on, is done).
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection to a peer may take to open: a host that is down
/// (no answer to the SYN) fails the call after this, not after the call's
/// own timeout (two hours for a restore).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take over a restore (download, verify, restore, start
/// etcd); the leader waits as long and the peer server cuts no sooner. Long:
/// a backup of gigabytes over a slow link takes many minutes, and a download
/// that stalls fails by itself (no byte for 30 s, see the backup store).
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// How long a node may take to join (start etcd as a member).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Any other request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

pub use crate::core::model::{EtcdNodeConfig, EtcdState, Fence, NodeInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinPhase {
    /// Reserve the node for this cluster token (it will refuse other clusters).
    Prepare,
    /// Start etcd as a member of a new cluster.
    Initial,
    /// Start etcd as a member added to a running cluster.
    JoinExisting,
    /// Drop a reservation.
    CancelPrepare,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinCluster {
    pub fence: Fence,
    pub phase: JoinPhase,
    pub cluster_token: String,
    pub etcd_version: String,
    pub quarantined: bool,
    /// The whole initial cluster (Initial), or the members after the add (JoinExisting).
    pub nodes: Vec<EtcdNodeConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconfigure {
    pub fence: Fence,
    pub quarantined: Option<bool>,
    /// Restart on the same data dir with this etcd version.
    pub etcd_version: Option<String>,
}

/// Replace this node's etcd with a member of a new cluster restored from a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreBackup {
    pub fence: Fence,
    pub cluster_token: String,
    pub backup: String,
    pub etcd_version: String,
    /// The whole new cluster.
    pub nodes: Vec<EtcdNodeConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    GetInfo,
    JoinCluster(JoinCluster),
    Reconfigure(Reconfigure),
    /// Stop etcd for good and move its data to the trashcan (the member was removed).
    StopEtcd(Fence),
    RestoreBackup(RestoreBackup),
    /// The sender believes it is the lowest alive id and asks to lead; the
    /// receiver refuses if it knows an alive manager with a lower id.
    Leadership {
        cluster_name: String,
        candidate: String,
        /// The candidate's backup store id (see `BackupStore::store_id`): a
        /// node refuses a candidate that uses another store, so managers
        /// whose `--backup-store` is not one shared store never lead (their
        /// leases would not exclude each other).
        store_id: String,
    },
    /// Delete old data dirs from the trashcan, keeping the newest `keep`.
    /// Sent only after a backup of a healthy cluster.
    GcTrashcan {
        fence: Fence,
        keep: u32,
    },
    /// Check a copy of this node's etcd data for custom v2 content (before
    /// a 3.5 cluster moves to 3.6); answered with [`Response::V2Store`].
    CheckV2Store(Fence),
    /// Would etcd `version` understand every `ETCD_*` setting this node
    /// gives its etcd now? Answered with [`Response::Settings`]; read-only.
    CheckSettings {
        version: String,
    },
    /// Run a restore drill of `backup` (see [`crate::backups::drill`]) as a job: the
    /// answer comes at once, the verdict goes beside the backup in the
    /// store. A node already running one skips the request.
    VerifyBackup {
        fence: Fence,
        backup: String,
    },
    /// [`Request::RestoreBackup`] as a job: answered once the node has
    /// checked the request and started the restore; the leader then follows
    /// it in [`NodeInfo::jobs`]. Sent only to a node whose `jobs` is Some (a
    /// manager of this release or newer). Last, so older managers still
    /// read every other request.
    RestoreJob(RestoreBackup),
    /// [`Request::CheckV2Store`] as a job: answered once the check has
    /// started; the leader follows it in [`NodeInfo::jobs`]
    /// ([`crate::core::model::JobKind::CheckV2Store`], keyed by the
    /// member's cluster token). Sent only to a node whose `jobs` is Some.
    V2StoreJob(Fence),
}

impl Request {
    pub fn fence(&self) -> Option<&Fence> {
        match self {
            Request::GetInfo | Request::Leadership { .. } | Request::CheckSettings { .. } => None,
            Request::JoinCluster(j) => Some(&j.fence),
            Request::Reconfigure(r) => Some(&r.fence),
            Request::StopEtcd(f) => Some(f),
            Request::RestoreBackup(r) | Request::RestoreJob(r) => Some(&r.fence),
            Request::GcTrashcan { fence, .. } => Some(fence),
            Request::CheckV2Store(f) | Request::V2StoreJob(f) => Some(f),
            Request::VerifyBackup { fence, .. } => Some(fence),
        }
    }

    /// Check every identifier the request carries before anything uses it
    /// (they become paths, member names and log fields).
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        use etcd::{IdentKind, check_ident};
        let fence = |f: &Fence| check_ident(IdentKind::NodeId, &f.leader_id);
        let nodes = |nodes: &[EtcdNodeConfig]| -> Result<(), InvalidRequest> {
            for n in nodes {
                check_ident(IdentKind::MemberName, &n.name)?;
            }
            Ok(())
        };
        match self {
            Request::GetInfo => Ok(()),
            Request::Leadership { candidate, .. } => Ok(check_ident(IdentKind::NodeId, candidate)?),
            Request::JoinCluster(j) => {
                fence(&j.fence)?;
                check_ident(IdentKind::ClusterToken, &j.cluster_token)?;
                nodes(&j.nodes)
            }
            Request::Reconfigure(r) => Ok(fence(&r.fence)?),
            Request::StopEtcd(f) => Ok(fence(f)?),
            Request::RestoreBackup(r) | Request::RestoreJob(r) => {
                fence(&r.fence)?;
                check_ident(IdentKind::ClusterToken, &r.cluster_token)?;
                backup::check_backup_name(&r.backup)?;
                nodes(&r.nodes)
            }
            Request::GcTrashcan { fence: f, .. } => Ok(fence(f)?),
            Request::CheckV2Store(f) | Request::V2StoreJob(f) => Ok(fence(f)?),
            Request::VerifyBackup { fence: f, backup } => {
                fence(f)?;
                Ok(backup::check_backup_name(backup)?)
            }
            Request::CheckSettings { version } => {
                version.parse::<etcd::EtcdVersion>()?;
                Ok(())
            }
        }
    }

    /// How long the server lets this request run (the caller waits as long).
    pub fn deadline(&self) -> Duration {
        match self {
            // Long IO on a member's data: a download and restore, or a copy
            // of its WAL and etcdutl's check of it.
            Request::RestoreBackup(_) | Request::CheckV2Store(_) => RESTORE_TIMEOUT,
            Request::JoinCluster(_) => JOIN_TIMEOUT,
            _ => REQUEST_TIMEOUT,
        }
    }

    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::GetInfo => "get_info",
            Request::JoinCluster(_) => "join_cluster",
            Request::Reconfigure(_) => "reconfigure",
            Request::StopEtcd(_) => "stop_etcd",
            Request::RestoreBackup(_) => "restore_backup",
            Request::RestoreJob(_) => "restore_job",
            Request::GcTrashcan { .. } => "gc_trashcan",
            Request::Leadership { .. } => "leadership",
            Request::CheckV2Store(_) => "check_v2store",
            Request::V2StoreJob(_) => "v2store_job",
            Request::CheckSettings { .. } => "check_settings",
            Request::VerifyBackup { .. } => "verify_backup",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Info(Box<NodeInfo>),
    Done,
    /// Refused: the epoch is older than one this node has seen.
    Fenced {
        highest_epoch: u64,
    },
    /// Refused, or tried and failed, and why. On the wire: the text, as
    /// the previous release reads it, and the typed refusal after the
    /// envelope (see [`refusal`]).
    Failed(#[serde(with = "refusal::as_text")] Refusal),
    /// The v2 store check: None when clean, else what was found.
    V2Store {
        custom: Option<String>,
    },
    /// The settings check: the settings the asked version would not
    /// understand, one line each; empty when every one is kept.
    Settings {
        lost: Vec<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    body: T,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {addr}: no answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("peer {addr}: bad frame: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
    #[error("peer {addr} refused: leader epoch is behind its highest seen epoch {highest_epoch}")]
    Fenced {
        addr: SocketAddr,
        highest_epoch: u64,
    },
    #[error("peer {addr} failed: {refusal}")]
    Refused { addr: SocketAddr, refusal: Refusal },
    /// The leader's own guard: a fenced request is not sent once the lease
    /// of its epoch is gone.
    #[error("peer {addr}: not sent: the lease of epoch {epoch} is no longer held")]
    NotSent { addr: SocketAddr, epoch: u64 },
}

impl PeerError {
    /// Only an operator can mend it (see [`Refusal::needs_operator`]); a
    /// peer that did not answer, or answered with a fence, may pass.
    pub fn needs_operator(&self) -> bool {
        matches!(self, PeerError::Refused { refusal, .. } if refusal.needs_operator())
    }
}

/// An identifier in a request that must not be used (see [`Request::validate`]).
#[derive(Debug, thiserror::Error)]
pub enum InvalidRequest {
    #[error(transparent)]
    Ident(#[from] etcd::InvalidIdent),
    #[error(transparent)]
    Backup(#[from] backup::Error),
    #[error(transparent)]
    Version(#[from] etcd::InvalidVersion),
}

/// Why a frame did not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    #[error(
        "protocol version {0} (we speak {PROTOCOL_VERSION}); upgrade every etcd-manager to the same release"
    )]
    Version(u32),
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
}

fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, FrameError> {
    let env = Envelope {
        version: PROTOCOL_VERSION,
        body,
    };
    Ok(crate::codec::encode::<_, MAX_FRAME>(&env)?)
}

fn decode<T: serde::de::DeserializeOwned>(buf: &[u8]) -> Result<T, FrameError> {
    decode_with_rest(buf).map(|(body, _)| body)
}

/// [`decode`], and the bytes after the envelope.
fn decode_with_rest<T: serde::de::DeserializeOwned>(buf: &[u8]) -> Result<(T, &[u8]), FrameError> {
    let (env, rest): (Envelope<T>, _) = crate::codec::decode_with_rest::<_, MAX_FRAME>(buf)?;
    if env.version != PROTOCOL_VERSION {
        return Err(FrameError::Version(env.version));
    }
    Ok((env.body, rest))
}

/// A response as a frame body: a refusal's typed form follows its envelope.
pub fn encode_response(resp: &Response) -> Result<Vec<u8>, FrameError> {
    let mut bytes = encode(resp)?;
    if let Response::Failed(r) = resp {
        bytes.extend(refusal::trailer(r));
    }
    Ok(bytes)
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    stream.flush().await
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
        ));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// One request, one answer on an open stream.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    addr: SocketAddr,
    req: &Request,
) -> Result<Response, PeerError> {
    let protocol = |e: FrameError| PeerError::Protocol {
        addr,
        reason: e.to_string(),
    };
    let bytes = encode(req).map_err(protocol)?;
    write_frame(stream, &bytes)
        .await
        .map_err(|source| PeerError::Io { addr, source })?;
    let buf = read_frame(stream)
        .await
        .map_err(|source| PeerError::Io { addr, source })?;
    decode_response(&buf).map_err(protocol)
}

/// Decode one request frame's body as the server does (for fuzzing and tests).
pub fn decode_request(buf: &[u8]) -> Result<Request, FrameError> {
    let req = decode::<Request>(buf)?;
    req.validate()?;
    Ok(req)
}

/// Encode a request as a frame body (without the length prefix).
pub fn encode_request(req: &Request) -> Result<Vec<u8>, FrameError> {
    encode(req)
}

/// Decode one response frame's body as the client does: an answer to
/// GetInfo from a manager older than jobs (its `NodeInfo` ends before
/// `jobs`) is read as such, with `jobs` None; a refusal is typed by the
/// trailer after its envelope, when the sender wrote one.
pub fn decode_response(buf: &[u8]) -> Result<Response, FrameError> {
    let e = match decode_with_rest::<Response>(buf) {
        Ok((Response::Failed(words), rest)) => {
            return Ok(Response::Failed(
                refusal::read_trailer(rest).unwrap_or(words),
            ));
        }
        Ok((resp, _)) => return Ok(resp),
        Err(e) => e,
    };
    match decode::<InfoWithoutJobs>(buf) {
        Ok(InfoWithoutJobs::Info(old)) => Ok(Response::Info(Box::new(NodeInfo {
            id: old.id,
            cluster_name: old.cluster_name,
            node_config: old.node_config,
            etcd_state: old.etcd_state,
            highest_epoch: old.highest_epoch,
            installed_versions: old.installed_versions,
            jobs: None,
        }))),
        Err(_) => Err(e),
    }
}

/// `Response::Info` as a manager older than jobs sends it: the same
/// variant (the first), and `NodeInfo` without its last field.
#[derive(Serialize, Deserialize)]
enum InfoWithoutJobs {
    Info(NodeInfoWithoutJobs),
}

#[derive(Serialize, Deserialize)]
struct NodeInfoWithoutJobs {
    id: String,
    cluster_name: String,
    node_config: EtcdNodeConfig,
    etcd_state: Option<EtcdState>,
    highest_epoch: u64,
    installed_versions: Vec<String>,
}

/// Calls other managers' peer APIs: plain TCP (`--insecure`) or mutual TLS.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PeerClient {
    tls: Option<crate::platform::pki::PeerTls>,
}

impl PeerClient {
    /// Plain TCP (`--insecure`).
    pub fn insecure() -> Self {
        PeerClient { tls: None }
    }

    /// Mutual TLS with this identity.
    pub fn tls(tls: crate::platform::pki::PeerTls) -> Self {
        PeerClient { tls: Some(tls) }
    }

    /// The same identity for serving (None: plain TCP).
    pub fn server_tls(&self) -> Option<crate::platform::pki::PeerTls> {
        self.tls.clone()
    }

    /// Who answers at `addr`: the node id its TLS certificate (signed by our
    /// CA) names, and its `GetInfo` answer, within `timeout`. `None` over
    /// plain TCP, where nothing proves who answers.
    pub async fn certified_info(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Option<(String, NodeInfo)>, PeerError> {
        let Some(t) = self.tls.as_ref() else {
            return Ok(None);
        };
        let fut = async {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| PeerError::Timeout {
                    addr,
                    after: CONNECT_TIMEOUT,
                })?
                .map_err(|source| PeerError::Io { addr, source })?;
            let mut s = tls_handshake(t, stream, addr).await?;
            let node_id = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|der| crate::platform::pki::node_id_of_cert(der));
            let resp = exchange(&mut s, addr, &Request::GetInfo).await;
            let _ = s.shutdown().await;
            Ok::<_, PeerError>((node_id, resp?))
        };
        let (node_id, resp) =
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| PeerError::Timeout {
                    addr,
                    after: timeout,
                })??;
        match (node_id, resp) {
            (Some(id), Response::Info(info)) => Ok(Some((id, *info))),
            (None, _) => Err(PeerError::Protocol {
                addr,
                reason: "its certificate names no node".into(),
            }),
            (_, Response::Failed(refusal)) => Err(PeerError::Refused { addr, refusal }),
            (_, _) => Err(PeerError::Protocol {
                addr,
                reason: "GetInfo answered something else than its info".into(),
            }),
        }
    }

    /// Send one request and wait for its answer, all within `timeout`.
    pub async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        call_with(self.tls.as_ref(), addr, req, timeout).await
    }
}

/// The client side of our peer API's TLS handshake on `stream`.
async fn tls_handshake(
    t: &crate::platform::pki::PeerTls,
    stream: TcpStream,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, PeerError> {
    let name = rustls_pki_types::ServerName::try_from(crate::platform::pki::PEER_API_SERVER_NAME)
        .map_err(|e| PeerError::Protocol {
        addr,
        reason: e.to_string(),
    })?;
    t.connector
        .connect(name, stream)
        .await
        .map_err(|source| PeerError::Io { addr, source })
}

async fn call_with(
    tls: Option<&crate::platform::pki::PeerTls>,
    addr: SocketAddr,
    req: &Request,
    timeout: Duration,
) -> Result<Response, PeerError> {
    let fut = async {
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| PeerError::Io {
                addr,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {CONNECT_TIMEOUT:?} (is the host up?)"),
                ),
            })?
            .map_err(|source| PeerError::Io { addr, source })?;
        match tls {
            None => exchange(&mut stream, addr, req).await,
            Some(t) => {
                let mut s = tls_handshake(t, stream, addr).await?;
                let resp = exchange(&mut s, addr, req).await;
                let _ = s.shutdown().await;
                resp
            }
        }
    };
    let resp = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| PeerError::Timeout {
            addr,
            after: timeout,
        })??;
    match resp {
        Response::Fenced { highest_epoch } => Err(PeerError::Fenced {
            addr,
            highest_epoch,
        }),
        Response::Failed(refusal) => Err(PeerError::Refused { addr, refusal }),
        other => Ok(other),
    }
}

/// Confirms a plain gossip sender (a manager of the release before gossip
/// keys were derived from the CA) by its peer API: at the sender's address
/// and our peer API port, a TLS handshake whose certificate, signed by our
/// CA, names the id the packets claim, and a `GetInfo` answer for our
/// cluster. See `gossip::PlainPeerCheck`.
#[derive(Debug, Clone)]
pub struct PeerCertCheck {
    pub client: PeerClient,
    pub peer_port: u16,
    pub cluster_name: String,
}

/// How long a plain sender's check may take.
const PLAIN_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

impl gossip::PlainPeerCheck for PeerCertCheck {
    fn check(
        &self,
        from: SocketAddr,
        id: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
        let this = self.clone();
        Box::pin(async move {
            let addr = SocketAddr::new(from.ip(), this.peer_port);
            match this.client.certified_info(addr, PLAIN_CHECK_TIMEOUT).await {
                Ok(Some((cert_id, info)))
                    if cert_id == id && info.cluster_name == this.cluster_name =>
                {
                    true
                }
                Ok(Some((cert_id, info))) => {
                    tracing::warn!(%from, claimed = %id, certificate = %cert_id, cluster = %info.cluster_name, "a plain gossip sender's peer API names another node or cluster");
                    false
                }
                Ok(None) => false,
                Err(e) => {
                    tracing::info!(%from, claimed = %id, error = %e, "cannot confirm a plain gossip sender by its peer API");
                    false
                }
            }
        })
    }
}

/// Who sent a request, as far as the connection can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub addr: SocketAddr,
    /// The node its TLS certificate names (see [`crate::platform::pki::node_id_of_cert`]);
    /// None over plain TCP (`--insecure`), where nothing can be verified.
    pub node_id: Option<String>,
    /// True when the connection is mutual TLS: then a request is accepted
    /// only from the node it claims to come from.
    pub authenticated: bool,
}

impl Caller {
    /// A caller over plain TCP (`--insecure`).
    pub fn insecure(addr: SocketAddr) -> Caller {
        Caller {
            addr,
            node_id: None,
            authenticated: false,
        }
    }

    /// A caller whose certificate names `node_id`.
    pub fn node(addr: SocketAddr, node_id: &str) -> Caller {
        Caller {
            addr,
            node_id: Some(node_id.to_string()),
            authenticated: true,
        }
    }

    /// Err (the refusal to send) unless this caller may speak as `id`: over
    /// TLS its certificate must name `id`; over plain TCP anyone may.
    pub fn may_act_as(&self, id: &str) -> Result<(), Refusal> {
        if !self.authenticated {
            return Ok(());
        }
        match &self.node_id {
            Some(me) if me == id => Ok(()),
            Some(me) => Err(Refusal::NotTheCaller(format!(
                "the caller's certificate names node {me}, but the request speaks for {id}"
            ))),
            None => Err(Refusal::NotTheCaller(format!(
                "the caller's certificate names no node (no {} URI); only a manager's own certificate may send this",
                crate::platform::pki::node_uri("<id>")
            ))),
        }
    }
}

/// Something that answers peer requests (the local node).
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        caller: &Caller,
        req: Request,
    ) -> impl std::future::Future<Output = Response> + Send;
}

/// Bind the peer API listener; binding errors surface here, before anything runs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Answer one request on an open stream: read it within
/// [`REQUEST_READ_TIMEOUT`], then [`answer_frame`].
async fn answer<S: AsyncRead + AsyncWrite + Unpin, H: Handler>(
    stream: &mut S,
    caller: &Caller,
    handler: &H,
) -> std::io::Result<()> {
    let buf = tokio::time::timeout(REQUEST_READ_TIMEOUT, read_frame(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in time"))??;
    answer_frame(stream, caller, handler, &buf).await
}

/// Decode and check a request, let the handler run it within the request's
/// own deadline, answer.
async fn answer_frame<S: AsyncRead + AsyncWrite + Unpin, H: Handler>(
    stream: &mut S,
    caller: &Caller,
    handler: &H,
    buf: &[u8],
) -> std::io::Result<()> {
    let from = caller.addr;
    let resp = match decode_request(buf) {
        Ok(req) => {
            tracing::debug!(%from, caller = ?caller.node_id, kind = req.kind(), "peer request");
            let deadline = req.deadline();
            let kind = req.kind();
            match tokio::time::timeout(deadline, handler.handle(caller, req)).await {
                Ok(resp) => resp,
                Err(_) => {
                    tracing::warn!(%from, kind, deadline_s = deadline.as_secs(), "peer request cut at its deadline");
                    Response::Failed(Refusal::Deadline {
                        kind: kind.to_string(),
                        deadline,
                    })
                }
            }
        }
        Err(reason) => {
            metrics::counter!(crate::metrics::PEER_API_REJECTED, "reason" => "bad_request")
                .increment(1);
            tracing::warn!(%from, %reason, "undecodable peer request dropped");
            Response::Failed(Refusal::BadRequest(reason.to_string()))
        }
    };
    let bytes = encode_response(&resp).map_err(std::io::Error::other)?;
    tokio::time::timeout(REQUEST_READ_TIMEOUT, write_frame(stream, &bytes))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "answer not read in time"))?
}

/// How long a new connection may take to prove itself: the TLS handshake
/// (a client certificate from our CA), or with `--insecure` its whole
/// request. Until then it holds no request slot, only a place among the
/// [`MAX_UNPROVEN`] connections being proven.
pub const PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections that have not yet proven themselves, at most. A new one
/// beyond takes the place of the oldest.
pub const MAX_UNPROVEN: usize = 32;
/// Connections from one address that have not yet proven themselves, at
/// most. A new one beyond takes the place of that address's oldest.
pub const MAX_UNPROVEN_PER_SOURCE: usize = 8;

/// The connections not yet proven, oldest first: a flood of idle or slow
/// connections can neither hold the request slots (only proven connections
/// take one) nor keep a newcomer out (it takes the oldest one's place).
#[derive(Debug, Default)]
struct Unproven {
    next: u64,
    conns: BTreeMap<u64, (std::net::IpAddr, CancellationToken)>,
}

/// A connection's place among the unproven; dropped (or [`Place::proven`])
/// when it leaves them.
struct Place {
    seq: u64,
    cancel: CancellationToken,
    table: Arc<std::sync::Mutex<Unproven>>,
}

impl Place {
    /// Take a place for a connection from `ip`, pushing out the oldest of
    /// that address, or of all, when full.
    fn take(table: &Arc<std::sync::Mutex<Unproven>>, ip: std::net::IpAddr) -> Place {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        let push_out = |t: &mut Unproven, same_source: bool| {
            let oldest = t
                .conns
                .iter()
                .find(|(_, (from, _))| !same_source || *from == ip)
                .map(|(seq, _)| *seq);
            if let Some((from, cancel)) = oldest.and_then(|seq| t.conns.remove(&seq)) {
                cancel.cancel();
                metrics::counter!(crate::metrics::PEER_API_REJECTED, "reason" => "pushed_out")
                    .increment(1);
                tracing::debug!(%from, "peer API: an unproven connection made room for a newer one");
            }
        };
        if t.conns.values().filter(|(from, _)| *from == ip).count() >= MAX_UNPROVEN_PER_SOURCE {
            push_out(&mut t, true);
        }
        if t.conns.len() >= MAX_UNPROVEN {
            push_out(&mut t, false);
        }
        let seq = t.next;
        t.next += 1;
        let cancel = CancellationToken::new();
        t.conns.insert(seq, (ip, cancel.clone()));
        Place {
            seq,
            cancel,
            table: table.clone(),
        }
    }

    /// The connection proved itself: it leaves the unproven for good.
    fn proven(&self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.conns.remove(&self.seq);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.proven();
    }
}

/// One connection: proven (TLS handshake, or the request read, within
/// [`PRE_AUTH_TIMEOUT`]), then served in a request slot.
async fn serve_one<H: Handler>(
    mut stream: TcpStream,
    from: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    handler: Arc<H>,
    slots: Arc<tokio::sync::Semaphore>,
    place: Place,
) -> std::io::Result<()> {
    let rejected = |reason: &'static str| {
        metrics::counter!(crate::metrics::PEER_API_REJECTED, "reason" => reason).increment(1);
    };
    match acceptor {
        None => {
            let buf = match tokio::time::timeout(PRE_AUTH_TIMEOUT, read_frame(&mut stream)).await {
                Ok(read) => read?,
                Err(_) => {
                    rejected("slow");
                    tracing::debug!(%from, "peer API: no request within the time to prove a connection");
                    return Ok(());
                }
            };
            place.proven();
            let _slot = slots.acquire_owned().await.map_err(std::io::Error::other)?;
            answer_frame(&mut stream, &Caller::insecure(from), handler.as_ref(), &buf).await
        }
        Some(acceptor) => {
            let mut s = match tokio::time::timeout(PRE_AUTH_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    rejected("handshake");
                    tracing::warn!(%from, error = %e, "peer API TLS handshake refused");
                    return Ok(());
                }
                Err(_) => {
                    rejected("slow");
                    tracing::debug!(%from, "peer API TLS handshake not done in time");
                    return Ok(());
                }
            };
            place.proven();
            let node_id = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|der| crate::platform::pki::node_id_of_cert(der));
            let caller = Caller {
                addr: from,
                node_id,
                authenticated: true,
            };
            let _slot = slots.acquire_owned().await.map_err(std::io::Error::other)?;
            answer(&mut s, &caller, handler.as_ref()).await?;
            s.shutdown().await
        }
    }
}

/// Serve requests until cancelled, over TLS when `tls` is given. Each
/// connection gets its own task. It first proves itself within
/// [`PRE_AUTH_TIMEOUT`] (the TLS handshake with a certificate from our CA;
/// with `--insecure`, its whole request) while holding only a place among
/// the unproven (at most [`MAX_UNPROVEN`], [`MAX_UNPROVEN_PER_SOURCE`] per
/// address, a newcomer taking the oldest one's place); then it takes one of
/// [`MAX_CONNECTIONS`] request slots and is bounded by the read and request
/// deadlines. Refused connections are counted in
/// `etcd_manager_peer_api_rejected_total` by reason.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    tls: Option<crate::platform::pki::PeerTls>,
    cancel: CancellationToken,
) {
    let mut conns = tokio::task::JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let unproven = Arc::new(std::sync::Mutex::new(Unproven::default()));
    let mut failures = 0u32;
    loop {
        let accepted = loop {
            tokio::select! {
                _ = cancel.cancelled() => break None,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                a = listener.accept() => break Some(a),
            }
        };
        let Some(accepted) = accepted else { break };
        let (stream, from) = match accepted {
            Ok(x) => {
                failures = 0;
                x
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = crate::accept::pause(failures);
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "peer API accept failed");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = crate::accept::backoff(pause) => continue,
                }
            }
        };
        let place = Place::take(&unproven, from.ip());
        let handler = handler.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        let slots = slots.clone();
        conns.spawn(async move {
            let pushed_out = place.cancel.clone();
            let work = serve_one(stream, from, acceptor, handler, slots, place);
            tokio::select! {
                biased;
                _ = pushed_out.cancelled() => {}
                result = work => match result {
                    Ok(()) => {}
                    Err(e) => tracing::debug!(%from, error = %e, "peer connection ended"),
                },
            }
        });
    }
    conns.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server for `handler` on a free loopback port.
    async fn start<H: Handler>(
        handler: H,
        tls: Option<crate::platform::pki::PeerTls>,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(handler), tls, cancel.clone()));
        (addr, cancel, server)
    }

    struct Echo;
    impl Handler for Echo {
        async fn handle(&self, _caller: &Caller, req: Request) -> Response {
            match req {
                Request::GetInfo => Response::Info(Box::new(NodeInfo {
                    id: "a".into(),
                    cluster_name: "c".into(),
                    node_config: EtcdNodeConfig::default(),
                    etcd_state: None,
                    highest_epoch: 3,
                    installed_versions: vec!["3.5.30".into()],
                    jobs: Some(vec![]),
                })),
                Request::StopEtcd(f) if f.epoch < 3 => Response::Fenced { highest_epoch: 3 },
                _ => Response::Done,
            }
        }
    }

    /// Managers of this release and of the one before jobs read each
    /// other's `GetInfo` answers: `jobs` is the last field, older readers
    /// ignore trailing bytes, and we read the shorter answer as `jobs: None`.
    #[test]
    fn info_answers_are_read_across_the_release_that_added_jobs() {
        use crate::core::model::{Job, JobKind, JobPhase};
        let old = InfoWithoutJobs::Info(NodeInfoWithoutJobs {
            id: "old".into(),
            cluster_name: "c".into(),
            node_config: EtcdNodeConfig::default(),
            etcd_state: None,
            highest_epoch: 9,
            installed_versions: vec!["3.5.30".into()],
        });
        let Ok(Response::Info(read)) = decode_response(&encode(&old).expect("encode")) else {
            panic!("an older manager's answer is read");
        };
        assert_eq!((read.id.as_str(), read.highest_epoch), ("old", 9));
        assert_eq!(read.jobs, None, "an older manager runs no jobs");

        let job = Job {
            kind: JobKind::Restore,
            key: "tok".into(),
            epoch: 4,
            phase: JobPhase::Failed("no space".into()),
            bytes: 77,
        };
        let ours = Response::Info(Box::new(NodeInfo {
            id: "new".into(),
            cluster_name: "c".into(),
            node_config: EtcdNodeConfig::default(),
            etcd_state: None,
            highest_epoch: 10,
            installed_versions: vec![],
            jobs: Some(vec![job.clone()]),
        }));
        let bytes = encode(&ours).expect("encode");
        assert_eq!(decode_response(&bytes).ok(), Some(ours));
        // As an older manager reads it.
        let Ok(InfoWithoutJobs::Info(older)) = decode::<InfoWithoutJobs>(&bytes) else {
            panic!("an older manager reads our answer");
        };
        assert_eq!((older.id.as_str(), older.highest_epoch), ("new", 10));
        // Other answers are not mistaken for an old Info.
        let done = encode(&Response::Done).expect("encode");
        assert_eq!(decode_response(&done).ok(), Some(Response::Done));
        assert!(decode_response(&done[..1]).is_err());
    }

    /// `Response` as the release before typed refusals has it: the same
    /// variants in the same order, a refusal as its text.
    #[derive(Debug, Serialize, Deserialize)]
    enum ResponseWithWords {
        Info(Box<NodeInfo>),
        Done,
        Fenced { highest_epoch: u64 },
        Failed(String),
    }

    /// Typed refusals cross releases both ways: the previous release reads
    /// our refusal's words (the trailer after the envelope is ignored), we
    /// read its words as an untyped refusal, and ours typed.
    #[test]
    fn refusals_are_typed_between_us_and_words_for_the_release_before() {
        let other_store = Refusal::OtherStore {
            candidate: "a".into(),
            theirs: "S".into(),
            ours: "T".into(),
        };
        let ours = encode_response(&Response::Failed(other_store.clone())).expect("encode");
        let Ok(ResponseWithWords::Failed(words)) = decode::<ResponseWithWords>(&ours) else {
            panic!("the release before reads our refusal");
        };
        assert_eq!(words, other_store.to_string());
        assert!(
            words.contains("another backup store"),
            "the words it matched on: {words}"
        );
        match decode_response(&ours) {
            Ok(Response::Failed(r)) => {
                assert_eq!(r, other_store);
                assert!(r.needs_operator());
            }
            other => panic!("typed refusal expected, got {other:?}"),
        }
        let theirs = encode(&ResponseWithWords::Failed(other_store.to_string())).expect("encode");
        match decode_response(&theirs) {
            Ok(Response::Failed(Refusal::Untyped(w))) => assert_eq!(w, words),
            other => panic!("an untyped refusal expected, got {other:?}"),
        }
        // A fenced answer is still a fence for both.
        let fenced = encode_response(&Response::Fenced { highest_epoch: 4 }).expect("encode");
        assert!(matches!(
            decode::<ResponseWithWords>(&fenced),
            Ok(ResponseWithWords::Fenced { highest_epoch: 4 })
        ));
    }

    #[tokio::test]
    async fn request_response_round_trip_and_fencing() {
        let (addr, cancel, server) = start(Echo, None).await;
        let t = Duration::from_secs(5);
        match PeerClient::insecure()
            .call(addr, &Request::GetInfo, t)
            .await
            .expect("info")
        {
            Response::Info(i) => assert_eq!(i.highest_epoch, 3),
            other => panic!("unexpected {other:?}"),
        }
        let fence = |epoch| Fence {
            cluster_name: "c".into(),
            leader_id: "a".into(),
            epoch,
            lease_seq: 1,
        };
        let err = PeerClient::insecure()
            .call(addr, &Request::StopEtcd(fence(2)), t)
            .await
            .expect_err("fenced");
        assert!(
            matches!(
                err,
                PeerError::Fenced {
                    highest_epoch: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            PeerClient::insecure()
                .call(addr, &Request::StopEtcd(fence(3)), t)
                .await
                .expect("ok"),
            Response::Done
        );
        cancel.cancel();
        server.await.expect("server ends");
    }

    /// 64 idle connections (issue 30, tried: they held every slot for 10 s,
    /// and the leader's calls timed out) do not keep GetInfo from being
    /// answered within a second, from the same address as the flood or
    /// another; with TLS (the handshake no longer holds a slot) and without.
    #[tokio::test(flavor = "multi_thread")]
    async fn idle_connections_do_not_hold_the_server() {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        let ca =
            crate::platform::pki::Ca::generate(crate::platform::pki::MANAGER_CA, now).expect("ca");
        for tls in [false, true] {
            let server_tls = tls.then(|| tls_for(&ca, "server"));
            let client = if tls {
                PeerClient::tls(tls_for(&ca, "client"))
            } else {
                PeerClient::insecure()
            };
            let (addr, cancel, server) = start(Echo, server_tls).await;
            let mut idle = vec![];
            for _ in 0..64 {
                idle.push(TcpStream::connect(addr).await.expect("connect"));
            }
            // Half the flood sent one byte and stopped.
            for s in idle.iter_mut().step_by(2) {
                s.write_all(&[0]).await.expect("write");
            }
            for round in 0..3 {
                let answer = client
                    .call(addr, &Request::GetInfo, Duration::from_secs(1))
                    .await;
                assert!(
                    matches!(answer, Ok(Response::Info(_))),
                    "tls {tls}, round {round}: {answer:?}"
                );
                // The flood reconnects: still answered.
                for _ in 0..16 {
                    idle.push(TcpStream::connect(addr).await.expect("connect"));
                }
            }
            cancel.cancel();
            let _ = server.await;
        }
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_do_not_kill_the_server() {
        let (addr, cancel, server) = start(Echo, None).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd])
            .await
            .expect("write");
        let resp = read_frame(&mut s).await.expect("answer");
        assert!(matches!(
            decode_response(&resp),
            Ok(Response::Failed(Refusal::BadRequest(_)))
        ));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        assert!(
            read_frame(&mut s).await.is_err(),
            "oversized frame must be refused"
        );
        assert!(
            PeerClient::insecure()
                .call(addr, &Request::GetInfo, Duration::from_secs(5))
                .await
                .is_ok()
        );
        cancel.cancel();
        server.await.expect("server ends");
    }

    /// A frame whose body claims a 2^42-byte string (and 2^63 items) used to
    /// abort the process on allocation; now it is answered as a bad request and
    /// the server goes on.
    #[tokio::test]
    async fn a_crafted_frame_is_refused_and_the_server_goes_on() {
        let (addr, cancel, server) = start(Echo, None).await;
        for claim in [1u64 << 42, 1u64 << 63] {
            // Envelope { version: 2 (varint), body: Request variant 1 (JoinCluster),
            // whose first field, fence.cluster_name, claims `claim` bytes }.
            let mut body = vec![2u8, 1u8, 253u8];
            body.extend_from_slice(&claim.to_le_bytes());
            let mut s = TcpStream::connect(addr).await.expect("connect");
            write_frame(&mut s, &body).await.expect("write");
            let resp = read_frame(&mut s).await.expect("an answer, not a crash");
            assert!(
                matches!(
                    decode_response(&resp),
                    Ok(Response::Failed(Refusal::BadRequest(_)))
                ),
                "{claim}"
            );
        }
        assert!(decode_request(&[2u8, 1u8, 253u8, 0, 0, 0, 0, 0, 4, 0, 0]).is_err());
        assert!(
            PeerClient::insecure()
                .call(addr, &Request::GetInfo, Duration::from_secs(5))
                .await
                .is_ok()
        );
        cancel.cancel();
        server.await.expect("server ends");
    }

    struct Slow;
    impl Handler for Slow {
        #[allow(clippy::disallowed_methods)] // virtual time (start_paused)
        async fn handle(&self, _caller: &Caller, req: Request) -> Response {
            if let Request::RestoreBackup(_) = req {
                // A large or throttled backup: longer than any other request may take.
                tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_secs(60)).await;
            }
            Response::Done
        }
    }

    /// A restore request of leader `a`, epoch 1.
    fn restore_request() -> Request {
        Request::RestoreBackup(RestoreBackup {
            fence: Fence {
                cluster_name: "c".into(),
                leader_id: "a".into(),
                epoch: 1,
                lease_seq: 1,
            },
            cluster_token: "t".into(),
            backup: "2026-01-02T03:04:05Z-000001".into(),
            etcd_version: "3.5.30".into(),
            nodes: vec![],
        })
    }

    /// The server used to cut every request at 120 s while the leader waited
    /// 900 s for a restore; now a restore gets the leader's deadline.
    #[tokio::test(start_paused = true)]
    #[allow(clippy::disallowed_methods)] // virtual time (start_paused)
    async fn a_restore_longer_than_two_minutes_is_not_cut() {
        let (addr, cancel, server) = start(Slow, None).await;
        let req = restore_request();
        let started = tokio::time::Instant::now();
        let resp = PeerClient::insecure()
            .call(addr, &req, RESTORE_TIMEOUT)
            .await
            .expect("the restore finishes");
        assert_eq!(resp, Response::Done);
        assert!(
            started.elapsed() > REQUEST_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        assert!(Request::GetInfo.deadline() < req.deadline());
        cancel.cancel();
        server.await.expect("server ends");
    }

    /// A peer whose host does not answer the SYN (here: a listener whose
    /// accept queue is full, so the kernel drops further SYNs) fails a call
    /// after `CONNECT_TIMEOUT`, not after the call's own deadline (two hours
    /// for a restore).
    #[tokio::test(start_paused = true)]
    #[allow(clippy::disallowed_methods)] // virtual time (start_paused)
    async fn a_host_that_drops_the_syn_fails_a_restore_after_the_connect_timeout() {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        let _listener = socket.listen(0).expect("listen");
        // Fill the accept queue (nobody accepts): later SYNs are dropped.
        let fillers: Vec<_> = (0..3)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()
            })
            .collect();
        assert!(!fillers.is_empty(), "no connection filled the accept queue");
        let started = tokio::time::Instant::now();
        let req = restore_request();
        let err = PeerClient::insecure()
            .call(addr, &req, RESTORE_TIMEOUT)
            .await
            .expect_err("nobody answers");
        let waited = started.elapsed();
        assert!(
            err.to_string().contains("no connection within 10s"),
            "{err}"
        );
        assert!(
            waited >= CONNECT_TIMEOUT && waited < CONNECT_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    /// rustls checks validity against the real clock, so issue for now.
    fn tls_for(ca: &crate::platform::pki::Ca, id: &str) -> crate::platform::pki::PeerTls {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        crate::platform::pki::PeerTls::issue(ca, id, "127.0.0.1".parse().expect("ip"), now)
            .expect("issue")
    }

    #[tokio::test]
    async fn mutual_tls_admits_only_certificates_from_the_managers_ca() {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        let ca =
            crate::platform::pki::Ca::generate(crate::platform::pki::MANAGER_CA, now).expect("ca");
        let stranger_ca =
            crate::platform::pki::Ca::generate(crate::platform::pki::MANAGER_CA, now).expect("ca");
        let (addr, cancel, server) = start(Echo, Some(tls_for(&ca, "server"))).await;
        let t = Duration::from_secs(5);

        // A manager with a certificate from the same CA is answered.
        let good = PeerClient::tls(tls_for(&ca, "client"));
        match good.call(addr, &Request::GetInfo, t).await.expect("info") {
            Response::Info(i) => assert_eq!(i.highest_epoch, 3),
            other => panic!("unexpected {other:?}"),
        }
        // Plain TCP, as an old or misconfigured manager would speak: no answer.
        let err = PeerClient::insecure()
            .call(addr, &Request::GetInfo, t)
            .await
            .expect_err("plain TCP must be refused");
        assert!(matches!(err, PeerError::Io { .. }), "{err}");
        // A certificate from another CA: refused in the handshake.
        let err = PeerClient::tls(tls_for(&stranger_ca, "client"))
            .call(addr, &Request::GetInfo, t)
            .await
            .expect_err("foreign CA must be refused");
        assert!(matches!(err, PeerError::Io { .. }), "{err}");
        // A TLS client that trusts the CA but shows no certificate: refused.
        let roots = {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject;
            let mut r = tokio_rustls::rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
                r.add(c.expect("pem")).expect("root");
            }
            r
        };
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name =
            rustls_pki_types::ServerName::try_from(crate::platform::pki::PEER_API_SERVER_NAME)
                .expect("name");
        let outcome = async {
            let mut s = connector.connect(name, tcp).await?;
            let bytes = encode(&Request::GetInfo).map_err(std::io::Error::other)?;
            write_frame(&mut s, &bytes).await?;
            read_frame(&mut s).await
        }
        .await;
        assert!(
            outcome.is_err(),
            "a client without a certificate got an answer"
        );
        // The good client still works: the refusals did not hurt the server.
        assert!(good.call(addr, &Request::GetInfo, t).await.is_ok());
        cancel.cancel();
        server.await.expect("server ends");
    }
}
