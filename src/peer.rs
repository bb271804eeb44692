//! The peer API: how the leader talks to every manager.
//!
//! Length-prefixed frames over TCP: a 4-byte big-endian length, then a
//! bincode 2 (serde, standard config) encoding of [`Envelope`], which carries
//! the protocol version so that managers of different releases can tell each
//! other apart during a rolling upgrade. One request, one response per
//! connection. Mutating requests carry a [`Fence`] (cluster name, leader id,
//! epoch); the receiver refuses epochs lower than the highest it has seen.
//!
//! Unless `--insecure`, every connection is TLS 1.3 with certificates on both
//! sides from the `etcd-manager-ca` ([`crate::pki::PeerTls`]): a client without
//! one is dropped in the handshake, before any request is read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bumped on any incompatible change of the messages below.
pub const PROTOCOL_VERSION: u32 = 1;
/// Larger frames are refused before reading them.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// How one node runs etcd: its member name and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EtcdNodeConfig {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub quarantined_client_urls: Vec<String>,
}

/// What a node says about the etcd it runs (or ran).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdState {
    pub cluster_token: String,
    pub etcd_version: String,
    pub quarantined: bool,
    pub running: bool,
    /// Times the supervisor restarted etcd after it exited on its own.
    pub restarts: u32,
    /// The cluster as this node was told to start it.
    pub nodes: Vec<EtcdNodeConfig>,
}

/// Answer to [`Request::GetInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    pub cluster_name: String,
    pub node_config: EtcdNodeConfig,
    pub etcd_state: Option<EtcdState>,
    /// Highest leader epoch this node has accepted.
    pub highest_epoch: u64,
    /// Versions of etcd this node has binaries for.
    pub installed_versions: Vec<String>,
}

/// Proof of who may mutate: the cluster, the leader, its lease epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub cluster_name: String,
    pub leader_id: String,
    pub epoch: u64,
}

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
    },
    /// Delete old data dirs from the trashcan, keeping the newest `keep`.
    /// Sent only after a backup of a healthy cluster.
    GcTrashcan {
        fence: Fence,
        keep: u32,
    },
}

impl Request {
    pub fn fence(&self) -> Option<&Fence> {
        match self {
            Request::GetInfo | Request::Leadership { .. } => None,
            Request::JoinCluster(j) => Some(&j.fence),
            Request::Reconfigure(r) => Some(&r.fence),
            Request::StopEtcd(f) => Some(f),
            Request::RestoreBackup(r) => Some(&r.fence),
            Request::GcTrashcan { fence, .. } => Some(fence),
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
            Request::GcTrashcan { .. } => "gc_trashcan",
            Request::Leadership { .. } => "leadership",
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
    Failed(String),
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
    #[error("peer {addr} failed: {message}")]
    Failed { addr: SocketAddr, message: String },
}

fn encode<T: Serialize>(body: &T) -> Result<Vec<u8>, String> {
    let env = Envelope {
        version: PROTOCOL_VERSION,
        body,
    };
    bincode::serde::encode_to_vec(&env, bincode::config::standard()).map_err(|e| e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(buf: &[u8]) -> Result<T, String> {
    let (env, _): (Envelope<T>, usize) =
        bincode::serde::decode_from_slice(buf, bincode::config::standard())
            .map_err(|e| e.to_string())?;
    if env.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} (we speak {PROTOCOL_VERSION}); upgrade every etcd-manager to the same release",
            env.version
        ));
    }
    Ok(env.body)
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
    let bytes = encode(req).map_err(|reason| PeerError::Protocol { addr, reason })?;
    write_frame(stream, &bytes)
        .await
        .map_err(|source| PeerError::Io { addr, source })?;
    let buf = read_frame(stream)
        .await
        .map_err(|source| PeerError::Io { addr, source })?;
    decode::<Response>(&buf).map_err(|reason| PeerError::Protocol { addr, reason })
}

/// Calls other managers' peer APIs: plain TCP (`--insecure`) or mutual TLS.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PeerClient {
    tls: Option<crate::pki::PeerTls>,
}

impl PeerClient {
    /// Plain TCP (`--insecure`).
    pub fn insecure() -> Self {
        PeerClient { tls: None }
    }

    /// Mutual TLS with this identity.
    pub fn tls(tls: crate::pki::PeerTls) -> Self {
        PeerClient { tls: Some(tls) }
    }

    /// The same identity for serving (None: plain TCP).
    pub fn server_tls(&self) -> Option<crate::pki::PeerTls> {
        self.tls.clone()
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

async fn call_with(
    tls: Option<&crate::pki::PeerTls>,
    addr: SocketAddr,
    req: &Request,
    timeout: Duration,
) -> Result<Response, PeerError> {
    let fut = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|source| PeerError::Io { addr, source })?;
        match tls {
            None => exchange(&mut stream, addr, req).await,
            Some(t) => {
                let name = rustls_pki_types::ServerName::try_from(crate::pki::PEER_API_SERVER_NAME)
                    .map_err(|e| PeerError::Protocol {
                        addr,
                        reason: e.to_string(),
                    })?;
                let mut s = t
                    .connector
                    .connect(name, stream)
                    .await
                    .map_err(|source| PeerError::Io { addr, source })?;
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
        Response::Failed(message) => Err(PeerError::Failed { addr, message }),
        other => Ok(other),
    }
}

/// Something that answers peer requests (the local node).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// Bind the peer API listener; binding errors surface here, before anything runs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Answer one request on an open stream.
async fn answer<S: AsyncRead + AsyncWrite + Unpin, H: Handler>(
    stream: &mut S,
    from: SocketAddr,
    handler: &H,
) -> std::io::Result<()> {
    let buf = read_frame(stream).await?;
    let resp = match decode::<Request>(&buf) {
        Ok(req) => {
            tracing::debug!(%from, kind = req.kind(), "peer request");
            handler.handle(req).await
        }
        Err(reason) => {
            tracing::warn!(%from, %reason, "undecodable peer request dropped");
            Response::Failed(format!("bad request: {reason}"))
        }
    };
    let bytes = encode(&resp).map_err(std::io::Error::other)?;
    write_frame(stream, &bytes).await
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve requests until cancelled, over TLS when `tls` is given. Each connection
/// gets its own task, bounded by a timeout. Failed handshakes (no certificate, one
/// from another CA) are counted in `etcd_manager_peer_api_rejected_total`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    tls: Option<crate::pki::PeerTls>,
    cancel: CancellationToken,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, from) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "peer API accept failed");
                        continue;
                    }
                };
                let handler = handler.clone();
                let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
                conns.spawn(async move {
                    let mut stream = stream;
                    let work = async {
                        match acceptor {
                            None => answer(&mut stream, from, handler.as_ref()).await,
                            Some(acceptor) => {
                                let handshake =
                                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                        .await;
                                let mut s = match handshake {
                                    Ok(Ok(s)) => s,
                                    Ok(Err(e)) => {
                                        metrics::counter!(crate::metrics::PEER_API_REJECTED)
                                            .increment(1);
                                        tracing::warn!(%from, error = %e, "peer API TLS handshake refused");
                                        return Ok(());
                                    }
                                    Err(_) => {
                                        metrics::counter!(crate::metrics::PEER_API_REJECTED)
                                            .increment(1);
                                        tracing::warn!(%from, "peer API TLS handshake timed out");
                                        return Ok(());
                                    }
                                };
                                answer(&mut s, from, handler.as_ref()).await?;
                                s.shutdown().await
                            }
                        }
                    };
                    match tokio::time::timeout(Duration::from_secs(120), work).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!(%from, error = %e, "peer connection ended"),
                        Err(_) => tracing::warn!(%from, "peer connection timed out"),
                    }
                });
            }
        }
    }
    conns.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        async fn handle(&self, req: Request) -> Response {
            match req {
                Request::GetInfo => Response::Info(Box::new(NodeInfo {
                    id: "a".into(),
                    cluster_name: "c".into(),
                    node_config: EtcdNodeConfig::default(),
                    etcd_state: None,
                    highest_epoch: 3,
                    installed_versions: vec!["3.5.30".into()],
                })),
                Request::StopEtcd(f) if f.epoch < 3 => Response::Fenced { highest_epoch: 3 },
                _ => Response::Done,
            }
        }
    }

    #[tokio::test]
    async fn request_response_round_trip_and_fencing() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(Echo), None, cancel.clone()));
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

    #[tokio::test]
    async fn garbage_and_oversized_frames_do_not_kill_the_server() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(Echo), None, cancel.clone()));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&[0, 0, 0, 3, 0xff, 0xfe, 0xfd])
            .await
            .expect("write");
        let resp = read_frame(&mut s).await.expect("answer");
        assert!(matches!(decode::<Response>(&resp), Ok(Response::Failed(_))));
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

    /// rustls checks validity against the real clock, so issue for now.
    fn tls_for(ca: &crate::pki::Ca, id: &str) -> crate::pki::PeerTls {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        crate::pki::PeerTls::issue(ca, id, "127.0.0.1".parse().expect("ip"), now).expect("issue")
    }

    #[tokio::test]
    async fn mutual_tls_admits_only_certificates_from_the_managers_ca() {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        let ca = crate::pki::Ca::generate(crate::pki::MANAGER_CA, now).expect("ca");
        let stranger_ca = crate::pki::Ca::generate(crate::pki::MANAGER_CA, now).expect("ca");
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Echo),
            Some(tls_for(&ca, "server")),
            cancel.clone(),
        ));
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
            rustls_pki_types::ServerName::try_from(crate::pki::PEER_API_SERVER_NAME).expect("name");
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
