//! Metric names (all `etcd_manager_*`, units in the name), the instrumented
//! store, and the HTTP endpoints `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub const IS_LEADER: &str = "etcd_manager_is_leader";
pub const LEASE_EPOCH: &str = "etcd_manager_lease_epoch";
pub const LEADER_CHANGES: &str = "etcd_manager_leader_changes_total";
pub const LEASE_OPERATIONS: &str = "etcd_manager_lease_operations_total";
pub const BACKUP_LAST_SUCCESS: &str = "etcd_manager_backup_last_success_timestamp_seconds";
pub const BACKUP_INTERVAL: &str = "etcd_manager_backup_interval_seconds";
pub const BACKUP_DURATION: &str = "etcd_manager_backup_duration_seconds";
pub const BACKUP_SIZE: &str = "etcd_manager_backup_size_bytes";
pub const BACKUPS: &str = "etcd_manager_backups_total";
pub const GOSSIP_MEMBERS: &str = "etcd_manager_gossip_members";
pub const GOSSIP_BAD_PACKETS: &str = "etcd_manager_gossip_bad_packets_total";
pub const GOSSIP_AUTHENTICATED: &str = "etcd_manager_gossip_authenticated";
pub const GOSSIP_PLAIN_PEERS: &str = "etcd_manager_gossip_plain_peers";
pub const ETCD_MEMBERS: &str = "etcd_manager_etcd_members";
pub const QUARANTINED: &str = "etcd_manager_quarantined";
pub const RECONCILE_ACTIONS: &str = "etcd_manager_reconcile_actions_total";
pub const RECONCILE_WAITS: &str = "etcd_manager_reconcile_waits_total";
pub const ACTION_BACKOFF: &str = "etcd_manager_action_backoff_seconds";
pub const SPACE_ALARMS_CLEARED: &str = "etcd_manager_space_alarms_cleared_total";
pub const ETCD_DB_SIZE: &str = "etcd_manager_etcd_db_size_bytes";
pub const DEFRAGS: &str = "etcd_manager_defragmentations_total";
pub const DEFRAG_FREED: &str = "etcd_manager_defragmentation_freed_bytes_total";
pub const DEFRAG_DURATION: &str = "etcd_manager_defragmentation_duration_seconds";
pub const ETCD_DB_QUOTA: &str = "etcd_manager_etcd_db_quota_bytes";
pub const STORE_REQUESTS: &str = "etcd_manager_store_requests_total";
pub const PEER_API_REJECTED: &str = "etcd_manager_peer_api_rejected_total";
pub const GOSSIP_BYTES: &str = "etcd_manager_gossip_bytes_total";
pub const GOSSIP_DOWNS: &str = "etcd_manager_gossip_member_downs_total";
pub const GOSSIP_REJOINS: &str = "etcd_manager_gossip_rejoins_total";
pub const STORE_MALFORMED_FILES: &str = "etcd_manager_store_malformed_files";
pub const PEER_API_REFUSED: &str = "etcd_manager_peer_api_refused_total";
pub const BACKUP_LAST_VERIFIED: &str = "etcd_manager_backup_last_verified_timestamp_seconds";
pub const BACKUP_VERIFICATIONS: &str = "etcd_manager_backup_verifications_total";
pub const BACKUP_VERIFICATION_FAILURES: &str = "etcd_manager_backup_verification_failures_total";
pub const BACKUP_VERIFICATION_DURATION: &str = "etcd_manager_backup_verification_duration_seconds";
pub const DELTA_LAST_UPLOAD: &str = "etcd_manager_backup_delta_last_upload_timestamp_seconds";
pub const DELTA_REVISION: &str = "etcd_manager_backup_delta_revision";
pub const DELTA_LAG: &str = "etcd_manager_backup_delta_lag_seconds";
pub const DELTA_SEGMENTS: &str = "etcd_manager_backup_delta_segments_total";
pub const DELTA_BYTES: &str = "etcd_manager_backup_delta_bytes_total";
pub const DELTA_GAPS: &str = "etcd_manager_backup_delta_gaps_total";

/// Every metric name above.
pub const ALL: &[&str] = &[
    IS_LEADER,
    LEASE_EPOCH,
    LEADER_CHANGES,
    LEASE_OPERATIONS,
    BACKUP_LAST_SUCCESS,
    BACKUP_INTERVAL,
    BACKUP_DURATION,
    BACKUP_SIZE,
    BACKUPS,
    GOSSIP_MEMBERS,
    GOSSIP_BAD_PACKETS,
    GOSSIP_AUTHENTICATED,
    GOSSIP_PLAIN_PEERS,
    ETCD_MEMBERS,
    QUARANTINED,
    RECONCILE_ACTIONS,
    RECONCILE_WAITS,
    ACTION_BACKOFF,
    SPACE_ALARMS_CLEARED,
    ETCD_DB_SIZE,
    ETCD_DB_QUOTA,
    DEFRAGS,
    DEFRAG_FREED,
    DEFRAG_DURATION,
    STORE_REQUESTS,
    PEER_API_REJECTED,
    GOSSIP_BYTES,
    GOSSIP_DOWNS,
    GOSSIP_REJOINS,
    STORE_MALFORMED_FILES,
    PEER_API_REFUSED,
    BACKUP_LAST_VERIFIED,
    BACKUP_VERIFICATIONS,
    BACKUP_VERIFICATION_FAILURES,
    BACKUP_VERIFICATION_DURATION,
    DELTA_LAST_UPLOAD,
    DELTA_REVISION,
    DELTA_LAG,
    DELTA_SEGMENTS,
    DELTA_BYTES,
    DELTA_GAPS,
];

/// Describe every metric once, so /metrics carries HELP lines.
pub fn describe() {
    describe_leadership();
    describe_backups();
    describe_continuous_backup();
    describe_gossip();
    describe_etcd();
    describe_store_and_peers();
}

use metrics::{describe_counter as c, describe_gauge as g};

/// The lease and who leads.
fn describe_leadership() {
    g!(
        IS_LEADER,
        "1 while this manager holds the lease and acts as leader"
    );
    g!(
        LEASE_EPOCH,
        "epoch of the lease this manager holds or last saw"
    );
    c!(
        LEADER_CHANGES,
        "times this manager gained or lost leadership"
    );
    c!(
        LEASE_OPERATIONS,
        "lease steps (acquire, renew, observe, release), by result"
    );
}

/// Full backups and their restore drills.
fn describe_backups() {
    g!(
        BACKUP_LAST_SUCCESS,
        "unix time of the last successful backup by this manager"
    );
    g!(BACKUP_INTERVAL, "configured time between periodic backups");
    g!(BACKUP_DURATION, "duration of the last backup");
    g!(BACKUP_SIZE, "compressed size of the last backup");
    c!(BACKUPS, "backups attempted, by result");
    g!(
        BACKUP_LAST_VERIFIED,
        "unix time of the last restore drill by this manager that verified a backup (restored, served, HashKV equal)"
    );
    c!(
        BACKUP_VERIFICATIONS,
        "restore drills run by this manager, by verdict (verified, mismatch, restored, failed)"
    );
    c!(
        BACKUP_VERIFICATION_FAILURES,
        "restore drills by this manager whose backup did not restore or held other data (mismatch or failed)"
    );
    g!(
        BACKUP_VERIFICATION_DURATION,
        "duration of this manager's last restore drill"
    );
}

/// The continuous backup's segments.
fn describe_continuous_backup() {
    g!(
        DELTA_LAST_UPLOAD,
        "unix time this manager last uploaded a continuous-backup segment"
    );
    g!(
        DELTA_REVISION,
        "the last etcd revision this manager's continuous backup has in the store"
    );
    g!(
        DELTA_LAG,
        "age of the oldest change this leader saw and has not yet uploaded (0: none waiting)"
    );
    c!(
        DELTA_SEGMENTS,
        "continuous-backup segment uploads by this manager, by result"
    );
    c!(
        DELTA_BYTES,
        "bytes of continuous-backup segments this manager uploaded"
    );
    c!(
        DELTA_GAPS,
        "times the continuous backup lost history (compacted or undeliverable) and needed a full backup to go on"
    );
}

/// Gossip's membership, traffic and keys.
fn describe_gossip() {
    g!(GOSSIP_MEMBERS, "gossip members by state");
    c!(
        GOSSIP_BAD_PACKETS,
        "gossip packets dropped: undecodable, or not sealed with a known key"
    );
    c!(
        GOSSIP_BYTES,
        "gossip UDP payload bytes, by direction (sent, received)"
    );
    g!(
        GOSSIP_AUTHENTICATED,
        "1 while gossip packets are sealed and authenticated, by mode (ca_derived, key_file, off)"
    );
    g!(
        GOSSIP_PLAIN_PEERS,
        "managers taken in plain while this one seals: an older release during a rolling update, confirmed by its peer API certificate"
    );
    c!(
        GOSSIP_DOWNS,
        "gossip members this manager saw declared down (a live one declared down is a false down)"
    );
    c!(
        GOSSIP_REJOINS,
        "times the gossip cluster declared this manager down and it rejoined"
    );
}

/// etcd's members and database as the leader keeps them, and its reconcile loop.
fn describe_etcd() {
    g!(
        ETCD_MEMBERS,
        "etcd members: desired, actual, healthy (leader only)"
    );
    g!(QUARANTINED, "1 while this node's etcd is quarantined");
    c!(
        RECONCILE_ACTIONS,
        "actions the leader executed, by action and result"
    );
    c!(RECONCILE_WAITS, "controller passes that waited, by reason");
    g!(
        ACTION_BACKOFF,
        "how long the leader waits before trying an action kind again after failures (0: not failing), by action"
    );
    g!(
        ETCD_DB_SIZE,
        "size of each etcd member's database file, by member (leader only)"
    );
    c!(
        DEFRAGS,
        "etcd members the leader defragmented (past the fragmentation threshold, or clearing a NOSPACE alarm)"
    );
    c!(DEFRAG_FREED, "bytes the leader's defragmentations freed");
    g!(
        DEFRAG_DURATION,
        "duration of the leader's last defragmentation of a member"
    );
    g!(
        ETCD_DB_QUOTA,
        "etcd's backend quota: the database size at which etcd raises NOSPACE and takes no writes (leader only)"
    );
    c!(
        SPACE_ALARMS_CLEARED,
        "times the leader cleared etcd's NOSPACE alarm (compact, defragment, disarm)"
    );
}

/// The backup store's requests and the peer API's refusals.
fn describe_store_and_peers() {
    c!(
        STORE_REQUESTS,
        "backup store requests, by operation and result"
    );
    g!(
        STORE_MALFORMED_FILES,
        "control files in the store the leader skips because they are malformed (see status)"
    );
    c!(
        PEER_API_REJECTED,
        "peer API connections dropped before a request ran, by reason (handshake: no or a foreign certificate; bad_request: undecodable or invalid)"
    );
    c!(
        PEER_API_REFUSED,
        "peer requests refused by this node, by reason (fenced, late, not_the_caller, unverified_epoch)"
    );
}

/// Counters that alerts take `increase()` of exist from the start, at 0, so
/// the first failure counts.
pub fn init_counters() {
    for result in ["success", "failure"] {
        metrics::counter!(BACKUPS, "result" => result).increment(0);
    }
    for result in ["ok", "error"] {
        metrics::counter!(LEASE_OPERATIONS, "result" => result).increment(0);
    }
    for reason in crate::controller::WAIT_LABELS {
        metrics::counter!(RECONCILE_WAITS, "reason" => *reason).increment(0);
    }
    // A first drill failure must be an increase (the alert uses increase()).
    metrics::counter!(BACKUP_VERIFICATION_FAILURES).increment(0);
    metrics::counter!(DELTA_GAPS).increment(0);
    for result in ["success", "failure"] {
        metrics::counter!(DELTA_SEGMENTS, "result" => result).increment(0);
    }
    metrics::counter!(GOSSIP_DOWNS).increment(0);
    metrics::counter!(GOSSIP_REJOINS).increment(0);
    metrics::gauge!(STORE_MALFORMED_FILES).set(0.0);
}

/// Liveness and readiness, fed by the daemon and the driver.
#[derive(Debug, Default)]
pub struct Health {
    /// Milliseconds (on the daemon's monotonic clock) of the last driver pass.
    last_pass_ms: AtomicU64,
    gossip_up: AtomicBool,
    /// Our etcd is assigned but not running.
    etcd_down: AtomicBool,
}

impl Health {
    pub fn pass_done(&self, now_ms: u64) {
        self.last_pass_ms.store(now_ms, Ordering::Relaxed);
    }
    pub fn set_gossip_up(&self, up: bool) {
        self.gossip_up.store(up, Ordering::Relaxed);
    }
    pub fn set_etcd_down(&self, down: bool) {
        self.etcd_down.store(down, Ordering::Relaxed);
    }
    /// Alive: the driver made a pass within `stale`.
    pub fn live(&self, now_ms: u64, stale: Duration) -> Result<(), Unhealthy> {
        let last = self.last_pass_ms.load(Ordering::Relaxed);
        let age_ms = now_ms.saturating_sub(last);
        if age_ms > stale.as_millis() as u64 {
            return Err(Unhealthy::Stalled { age_ms });
        }
        Ok(())
    }
    /// Ready: alive, in the gossip mesh, and our etcd runs if we have one.
    pub fn ready(&self, now_ms: u64, stale: Duration) -> Result<(), Unhealthy> {
        self.live(now_ms, stale)?;
        if !self.gossip_up.load(Ordering::Relaxed) {
            return Err(Unhealthy::GossipDown);
        }
        if self.etcd_down.load(Ordering::Relaxed) {
            return Err(Unhealthy::EtcdDown);
        }
        Ok(())
    }
}

/// Why `/healthz` or `/readyz` answers 503 (the body is this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    /// Not alive: the leader loop is stuck.
    #[error(
        "the controller loop made no pass for {age_ms} ms; the log says where it hangs (often the store or etcd), restart the manager if it stays so"
    )]
    Stalled { age_ms: u64 },
    #[error("gossip is not running; the log says why (a UDP port taken, bad gossip keys)")]
    GossipDown,
    #[error(
        "this node's etcd is assigned but not running; the log says why it stopped (see also etcd-manager-ctl status)"
    )]
    EtcdDown,
}

/// The Prometheus recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot install the metrics recorder: {0}; another recorder runs in this process (a bug: report it), or drop --metrics-address"
)]
pub struct RecorderError(#[source] metrics_exporter_prometheus::BuildError);

/// Install the Prometheus recorder (once per process) and return its handle.
pub fn install_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, RecorderError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(RecorderError)?;
    describe();
    init_counters();
    Ok(handle)
}

/// What the HTTP endpoints need.
pub struct HttpState {
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub health: Arc<Health>,
    /// Reads the daemon's monotonic clock in ms.
    pub now_ms: Box<dyn Fn() -> u64 + Send + Sync>,
    pub stale: Duration,
}

/// Scrapes served at once; more wait in the kernel's backlog.
pub const MAX_HTTP_CONNECTIONS: usize = 16;

/// Serve `/metrics`, `/healthz` and `/readyz` until cancelled: a deliberately
/// small HTTP/1.1 responder (GET only, one request per connection).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    cancel: CancellationToken,
) {
    let mut conns = tokio::task::JoinSet::new();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept(), if conns.len() < MAX_HTTP_CONNECTIONS => {
                let mut stream = match accepted {
                    Ok((stream, _)) => {
                        failures = 0;
                        stream
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let pause = crate::accept::pause(failures);
                        tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "metrics accept failed");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = crate::accept::backoff(pause) => continue,
                        }
                    }
                };
                let state = state.clone();
                conns.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), respond(&mut stream, &state)).await;
                });
            }
        }
    }
    conns.shutdown().await;
}

async fn respond(stream: &mut tokio::net::TcpStream, state: &HttpState) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let now = (state.now_ms)();
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            state.metrics.render(),
        ),
        ("GET", "/healthz") => match state.health.live(now, state.stale) {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(e) => ("503 Service Unavailable", "text/plain", format!("{e}\n")),
        },
        ("GET", "/readyz") => match state.health.ready(now, state.stale) {
            Ok(()) => ("200 OK", "text/plain", "ok\n".to_string()),
            Err(e) => ("503 Service Unavailable", "text/plain", format!("{e}\n")),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

/// Counts every store request by operation and result (`etcd_manager_store_requests_total`).
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn object_store::ObjectStore>,
    /// How many objects one delete request removes: S3 deletes up to 1,000
    /// in one request (object_store batches them), the others one each.
    delete_batch: usize,
}

impl InstrumentedStore {
    /// Count the requests of the store at `url` (its scheme tells how deletes batch).
    pub fn wrap(
        inner: Arc<dyn object_store::ObjectStore>,
        url: &str,
    ) -> Arc<dyn object_store::ObjectStore> {
        let delete_batch = if url.starts_with("s3://") { 1000 } else { 1 };
        Arc::new(InstrumentedStore {
            inner,
            delete_batch,
        })
    }
}

fn count<T>(op: &'static str, r: &object_store::Result<T>) {
    let result = match r {
        Ok(_) => "ok",
        Err(object_store::Error::NotFound { .. }) => "not_found",
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => "conflict",
        Err(_) => "error",
    };
    metrics::counter!(STORE_REQUESTS, "op" => op, "result" => result).increment(1);
}

impl std::fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner)
    }
}

use futures::StreamExt;
use object_store::path::Path;

#[async_trait::async_trait]
impl object_store::ObjectStore for InstrumentedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await;
        count("put", &r);
        r
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        let r = self.inner.put_multipart_opts(location, opts).await;
        count("put_multipart", &r);
        r
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let r = self.inner.get_opts(location, options).await;
        count("get", &r);
        r
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        let batch = self.delete_batch.max(1);
        self.inner
            .delete_stream(locations)
            .enumerate()
            .map(move |(i, r)| {
                if i % batch == 0 {
                    count("delete", &r);
                }
                r
            })
            .boxed()
    }
    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        // A listing is counted when issued; its failures are counted again as errors.
        metrics::counter!(STORE_REQUESTS, "op" => "list", "result" => "issued").increment(1);
        self.inner
            .list(prefix)
            .inspect(|r| {
                if r.is_err() {
                    metrics::counter!(STORE_REQUESTS, "op" => "list", "result" => "error")
                        .increment(1);
                }
            })
            .boxed()
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        let r = self.inner.list_with_delimiter(prefix).await;
        count("list", &r);
        r
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        let r = self.inner.copy_opts(from, to, options).await;
        count("copy", &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Liveness fails only for a stuck loop (a restart may help); readiness
    /// also for gossip or etcd down, each naming which.
    #[test]
    fn health_names_what_is_down() {
        let stale = Duration::from_secs(10);
        let h = Health::default();
        h.pass_done(1_000);
        assert_eq!(
            h.live(20_000, stale),
            Err(Unhealthy::Stalled { age_ms: 19_000 })
        );
        assert_eq!(h.live(5_000, stale), Ok(()));
        assert_eq!(h.ready(5_000, stale), Err(Unhealthy::GossipDown));
        h.set_gossip_up(true);
        h.set_etcd_down(true);
        assert_eq!(h.ready(5_000, stale), Err(Unhealthy::EtcdDown));
        assert_eq!(h.live(5_000, stale), Ok(()), "etcd down is not death");
        h.set_etcd_down(false);
        assert_eq!(h.ready(5_000, stale), Ok(()));
        let text = Unhealthy::Stalled { age_ms: 19_000 }.to_string();
        assert!(text.contains("made no pass for 19000 ms"), "{text}");
    }
}
