//! Talking to etcd: a thin wrapper over `etcd-client` with a timeout on every call.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, ConnectOptions, GetOptions, MemberAddOptions};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The per-call timeout callers use when they have no better value.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The key [`EtcdClient::healthy`] reads (as `etcdctl endpoint health` does)
/// where etcd has no `/readyz`.
const HEALTH_KEY: &str = "health";

/// etcd's own readiness check (3.5.11+ and 3.6+): data not corrupt, a local
/// and a linearizable read. Learners are judged by the caller, so the check
/// that fails on them is left out.
const READYZ_PATH: &str = "/readyz?exclude=non_learner";

/// The most of a `/readyz` answer read (it lists a few named checks).
const READYZ_BODY_LIMIT: usize = 4096;

/// One endpoint's health as etcd judged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Ready: `/readyz` answered 200, or a linearizable read succeeded.
    Ready,
    /// Not ready, with etcd's words (the failed `/readyz` checks) or the
    /// error of the read.
    NotReady(String),
}

/// One etcd cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member id.
    pub id: u64,
    /// Name; empty for a member that was added but has not started yet.
    pub name: String,
    /// Peer urls.
    pub peer_urls: Vec<String>,
    /// Client urls; empty until the member started.
    pub client_urls: Vec<String>,
    /// A raft learner (non-voting) member.
    pub is_learner: bool,
}

impl From<&etcd_client::Member> for Member {
    fn from(m: &etcd_client::Member) -> Self {
        Member {
            id: m.id(),
            name: m.name().to_string(),
            peer_urls: m.peer_urls().to_vec(),
            client_urls: m.client_urls().to_vec(),
            is_learner: m.is_learner(),
        }
    }
}

/// etcd's HashKV of a member at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashKv {
    /// The revision hashed up to.
    pub revision: i64,
    /// The hash.
    pub hash: u32,
    /// The member's compacted revision when it hashed (keys older than it
    /// are not in the hash).
    pub compact_revision: i64,
}

/// The status of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The endpoint asked.
    pub endpoint: String,
    /// The etcd server version, `3.5.30`.
    pub version: String,
    /// The id of the member behind the endpoint.
    pub member_id: u64,
    /// The id of the cluster it belongs to (new with every new cluster,
    /// restores included).
    pub cluster_id: u64,
    /// The id of the raft leader as that member sees it (0: none).
    pub leader: u64,
    /// The member's raft index.
    pub raft_index: u64,
    /// The store revision.
    pub revision: i64,
    /// Database size in bytes.
    pub db_size: i64,
    /// The part of the database in use, in bytes (3.4+; 0 before).
    pub db_in_use: i64,
    /// The member is a learner (always false on 3.3).
    pub is_learner: bool,
    /// The version of the member's data (3.6+: `3.6.0`); None before 3.6.
    pub storage_version: Option<String>,
    /// The version a downgrade is enabled to (3.6+: `3.5.0`), if one is.
    pub downgrade_target: Option<String>,
    /// The member's raised alarms as it reports them (3.4+), e.g.
    /// `memberID:... alarm:NOSPACE`.
    pub errors: Vec<String>,
    /// The backend quota in bytes (3.6+; 0 before).
    pub db_quota: i64,
}

/// A snapshot as a stream of chunks; errors are `io::Error`s.
pub type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::io::Result<Bytes>> + Send>>;

/// An etcd client; every call is bounded by the timeout given at connect, so one hung
/// member cannot stall a caller. Cheap to clone.
#[derive(Clone)]
pub struct EtcdClient {
    client: Client,
    endpoints: Vec<String>,
    timeout: Duration,
    tls: Option<ClientTls>,
    /// For etcd's HTTP endpoints (`/readyz`) of a single-endpoint client.
    http: Option<reqwest::Client>,
}

/// TLS for talking to etcd: the CA that signed the members' serving
/// certificates and our client identity, all PEM.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl EtcdClient {
    /// Makes a client for `endpoints` (`http://host:port`). Connections are made lazily,
    /// so this succeeds while etcd is still starting; it never waits longer than `timeout`.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Self, Error> {
        Self::connect_inner(endpoints, timeout, true, None).await
    }

    /// Like [`EtcdClient::connect`], over TLS when `tls` is given (`https://` endpoints).
    pub async fn connect_with(
        endpoints: &[String],
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Self, Error> {
        Self::connect_inner(endpoints, timeout, true, tls).await
    }

    async fn connect_inner(
        endpoints: &[String],
        timeout: Duration,
        request_timeout: bool,
        tls: Option<&ClientTls>,
    ) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument {
                detail: "no etcd endpoints given; pass at least one client URL".into(),
            });
        }
        if timeout.is_zero() {
            return Err(Error::InvalidArgument {
                detail: "etcd client timeout is zero; pass a positive duration".into(),
            });
        }
        // A throwaway etcd's unix socket (see `connect_unix`), again.
        if let [only] = endpoints
            && let Some(path) = only.strip_prefix("unix://")
            && tls.is_none()
        {
            return Self::connect_unix_inner(std::path::Path::new(path), timeout, request_timeout)
                .await;
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(timeout, timeout);
        if request_timeout {
            options = options.with_timeout(timeout);
        }
        if let Some(t) = tls {
            options = options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&t.ca_pem))
                    .identity(etcd_client::Identity::from_pem(&t.cert_pem, &t.key_pem)),
            );
        }
        let endpoints = endpoints.to_vec();
        let http = match endpoints.as_slice() {
            [_] => http_client(timeout, tls),
            _ => None,
        };
        let client =
            match tokio::time::timeout(timeout, Client::connect(&endpoints, Some(options))).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(Error::Client {
                        op: "connect",
                        endpoints,
                        detail: describe(&e),
                    });
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        op: "connect",
                        endpoints,
                        after: timeout,
                    });
                }
            };
        Ok(Self {
            client,
            endpoints,
            timeout,
            tls: tls.cloned(),
            http,
        })
    }

    /// A client of an etcd listening on the unix socket `socket` (the
    /// throwaway etcd of a drill or replay: no TCP port, so no other process
    /// can reach it or take its place). Its endpoint is named
    /// `unix://<socket>` in errors.
    pub async fn connect_unix(socket: &std::path::Path, timeout: Duration) -> Result<Self, Error> {
        Self::connect_unix_inner(socket, timeout, true).await
    }

    async fn connect_unix_inner(
        socket: &std::path::Path,
        timeout: Duration,
        request_timeout: bool,
    ) -> Result<Self, Error> {
        let endpoints = vec![format!("unix://{}", socket.display())];
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let mut endpoint = tonic::transport::Endpoint::from_static("http://throwaway.invalid")
            .connect_timeout(timeout);
        let mut options = ConnectOptions::new().with_connect_timeout(timeout);
        if request_timeout {
            endpoint = endpoint.timeout(timeout);
            options = options.with_timeout(timeout);
        }
        let channel = endpoint.connect_with_connector_lazy(connector);
        let client = Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options))
            .await
            .map_err(|e| Error::Client {
                op: "connect",
                endpoints: endpoints.clone(),
                detail: describe(&e),
            })?;
        Ok(Self {
            client,
            endpoints,
            timeout,
            tls: None,
            http: None,
        })
    }

    /// The endpoints this client talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A client for just one endpoint, with the same timeout.
    pub async fn for_endpoint(&self, endpoint: &str) -> Result<Self, Error> {
        Self::connect_inner(
            &[endpoint.to_string()],
            self.timeout,
            true,
            self.tls.as_ref(),
        )
        .await
    }

    /// The underlying client (cheap clone).
    pub(crate) fn raw(&self) -> Client {
        self.client.clone()
    }

    pub(crate) async fn call<T, F>(&self, op: &'static str, fut: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::Client {
                op,
                endpoints: self.endpoints.clone(),
                detail: describe(&e),
            }),
            Err(_) => Err(Error::Timeout {
                op,
                endpoints: self.endpoints.clone(),
                after: self.timeout,
            }),
        }
    }

    /// All members of the cluster.
    pub async fn member_list(&self) -> Result<Vec<Member>, Error> {
        let mut c = self.client.clone();
        let resp = self.call("member_list", c.member_list()).await?;
        Ok(resp.members().iter().map(Member::from).collect())
    }

    /// Adds a member with `peer_urls` (as a learner if asked; 3.4+). Returns the new member
    /// (name empty until it starts: match it by peer URL) and the full list after the add.
    pub async fn member_add(
        &self,
        peer_urls: &[String],
        learner: bool,
    ) -> Result<(Member, Vec<Member>), Error> {
        let mut c = self.client.clone();
        let mut opts = MemberAddOptions::new();
        if learner {
            opts = opts.with_is_learner();
        }
        let resp = self
            .call("member_add", c.member_add(peer_urls, Some(opts)))
            .await?;
        let list: Vec<Member> = resp.member_list().iter().map(Member::from).collect();
        let added = match resp.member() {
            Some(m) => Member::from(m),
            None => find_by_peer_urls(&list, peer_urls).ok_or_else(|| Error::Client {
                op: "member_add",
                endpoints: self.endpoints.clone(),
                detail: "etcd answered the add without the new member; list members to check"
                    .into(),
            })?,
        };
        tracing::info!(id = added.id, peer_urls = ?added.peer_urls, learner, "added etcd member");
        Ok((added, list))
    }

    /// [`member_add`](Self::member_add), repeated while etcd refuses with a retryable error
    /// (notably "unhealthy cluster": the strict reconfig check wants 5 s of connectivity
    /// after a start or a join) until `deadline` has passed. If an earlier attempt timed out
    /// but was applied, the member is found by its peer URL and returned.
    pub async fn member_add_retrying(
        &self,
        peer_urls: &[String],
        learner: bool,
        deadline: Duration,
    ) -> Result<(Member, Vec<Member>), Error> {
        let mut backoff = Backoff::new("member_add", deadline);
        let mut maybe_applied = false;
        loop {
            let e = match self.member_add(peer_urls, learner).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if e.is_peer_url_exists() && maybe_applied {
                let list = self.member_list().await?;
                if let Some(m) = find_by_peer_urls(&list, peer_urls) {
                    return Ok((m, list));
                }
            }
            if matches!(e, Error::Timeout { .. }) {
                maybe_applied = true;
            }
            backoff.again(e).await?;
        }
    }

    /// Promotes learner `id` to a voter (3.4+). Fails while the learner has not caught up.
    pub async fn member_promote(&self, id: u64) -> Result<(), Error> {
        let mut c = self.client.clone();
        self.call("member_promote", c.member_promote(id)).await?;
        tracing::info!(id, "promoted etcd learner");
        Ok(())
    }

    /// [`member_promote`](Self::member_promote), repeated while etcd says the learner is
    /// not in sync yet (or another retryable error) until `deadline` has passed.
    pub async fn member_promote_retrying(&self, id: u64, deadline: Duration) -> Result<(), Error> {
        let mut backoff = Backoff::new("member_promote", deadline);
        loop {
            match self.member_promote(id).await {
                Ok(()) => return Ok(()),
                Err(e) => backoff.again(e).await?,
            }
        }
    }

    /// Removes member `id`.
    pub async fn member_remove(&self, id: u64) -> Result<(), Error> {
        let mut c = self.client.clone();
        self.call("member_remove", c.member_remove(id)).await?;
        tracing::info!(id, "removed etcd member");
        Ok(())
    }

    /// [`member_remove`](Self::member_remove), repeated while etcd refuses with a retryable
    /// error (notably "unhealthy cluster": the strict reconfig check wants the remaining
    /// members connected for 5 s) until `deadline` has passed. "Member not found" after an
    /// earlier attempt timed out counts as success (that attempt was applied).
    pub async fn member_remove_retrying(&self, id: u64, deadline: Duration) -> Result<(), Error> {
        let mut backoff = Backoff::new("member_remove", deadline);
        let mut maybe_applied = false;
        loop {
            match self.member_remove(id).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_member_not_found() && maybe_applied => return Ok(()),
                Err(e) => {
                    if matches!(e, Error::Timeout { .. }) {
                        maybe_applied = true;
                    }
                    backoff.again(e).await?;
                }
            }
        }
    }

    /// This client when it has one endpoint, else a client of its first
    /// endpoint alone (for calls about one member: status, defragment).
    async fn first_only(&self) -> Result<std::borrow::Cow<'_, Self>, Error> {
        if self.endpoints.len() == 1 {
            Ok(std::borrow::Cow::Borrowed(self))
        } else {
            Ok(std::borrow::Cow::Owned(
                self.for_endpoint(&self.first_endpoint()).await?,
            ))
        }
    }

    /// Status of ONE endpoint: the first of this client's endpoints.
    pub async fn status(&self) -> Result<EndpointStatus, Error> {
        let endpoint = self.first_endpoint();
        let client = self.first_only().await?;
        let mut c = client.client.clone();
        let resp = client.call("status", c.status()).await?;
        let (member_id, cluster_id, revision) = resp
            .header()
            .map(|h| (h.member_id(), h.cluster_id(), h.revision()))
            .unwrap_or((0, 0, 0));
        Ok(EndpointStatus {
            endpoint,
            version: resp.version().to_string(),
            member_id,
            cluster_id,
            leader: resp.leader(),
            raft_index: resp.raft_index(),
            revision,
            db_size: resp.db_size(),
            db_in_use: resp.raft_used_db_size(),
            is_learner: resp.is_learner(),
            storage_version: Some(resp.storage_version().to_string()).filter(|v| !v.is_empty()),
            downgrade_target: resp
                .downgrade_info()
                .filter(|d| d.enabled())
                .map(|d| d.target_version().to_string()),
            errors: resp.errors().iter().take(16).cloned().collect(),
            db_quota: resp.db_size_quota(),
        })
    }

    /// etcd's hash of the key-value store up to `revision` on the member
    /// behind the first endpoint (HashKV): equal on every member, and on a
    /// restore of a snapshot taken at or after `revision`, while nothing
    /// newer than `compact_revision` was compacted.
    pub async fn hash_kv(&self, revision: i64) -> Result<HashKv, Error> {
        let client = self.first_only().await?;
        let mut c = client.client.maintenance_client();
        let resp = client.call("hash_kv", c.hash_kv(revision)).await?;
        Ok(HashKv {
            revision,
            hash: resp.hash(),
            compact_revision: resp.compact_version(),
        })
    }

    /// The cluster's raised alarms: (member id, kind: `NOSPACE`, `CORRUPT`).
    pub async fn alarms(&self) -> Result<Vec<(u64, String)>, Error> {
        let mut c = self.client.maintenance_client();
        let resp = self
            .call(
                "alarm_list",
                c.alarm(
                    etcd_client::AlarmAction::Get,
                    etcd_client::AlarmType::None,
                    None,
                ),
            )
            .await?;
        Ok(resp
            .alarms()
            .iter()
            .map(|a| (a.member_id(), format!("{:?}", a.alarm()).to_uppercase()))
            .collect())
    }

    /// Clear the NOSPACE alarm of `member`.
    pub async fn disarm_nospace(&self, member: u64) -> Result<(), Error> {
        let mut c = self.client.maintenance_client();
        let mut opts = etcd_client::AlarmOptions::new();
        opts.with_member(member);
        self.call(
            "alarm_disarm",
            c.alarm(
                etcd_client::AlarmAction::Deactivate,
                etcd_client::AlarmType::Nospace,
                Some(opts),
            ),
        )
        .await?;
        Ok(())
    }

    /// Compact the keyspace's history up to `revision` (physical, so the
    /// space can be reclaimed by a defragmentation). Already compacted that
    /// far counts as done.
    pub async fn compact(&self, revision: i64) -> Result<(), Error> {
        let mut c = self.client.clone();
        let opts = etcd_client::CompactionOptions::new().with_physical();
        match self.call("compact", c.compact(revision, Some(opts))).await {
            Err(Error::Client { detail, .. }) if detail.contains("compacted") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Defragment the member behind the first endpoint.
    pub async fn defragment(&self) -> Result<(), Error> {
        let client = self.first_only().await?;
        let mut c = client.client.maintenance_client();
        client.call("defragment", c.defragment()).await?;
        Ok(())
    }

    /// etcd's downgrade protocol (3.6+): `validate` then `enable` a
    /// downgrade of the cluster to `minor` (`3.6`), after which every
    /// member migrates its data to that version and may be restarted on its
    /// binary; etcd ends the downgrade itself once all run it.
    pub async fn enable_downgrade(&self, minor: &str) -> Result<(), Error> {
        let mut c = self.client.maintenance_client();
        self.call(
            "downgrade_validate",
            c.downgrade(etcd_client::DowngradeOptions::Validate(minor.to_string())),
        )
        .await?;
        let mut c = self.client.maintenance_client();
        self.call(
            "downgrade_enable",
            c.downgrade(etcd_client::DowngradeOptions::Enable(minor.to_string())),
        )
        .await?;
        Ok(())
    }

    /// Hand raft leadership to member `target` (asked of the current
    /// leader: the client's first endpoint must be it).
    pub async fn move_leader(&self, target: u64) -> Result<(), Error> {
        let mut c = self.client.maintenance_client();
        self.call("move_leader", c.move_leader(target)).await?;
        Ok(())
    }

    /// Cancel an enabled downgrade (3.6+).
    pub async fn cancel_downgrade(&self) -> Result<(), Error> {
        let mut c = self.client.maintenance_client();
        self.call(
            "downgrade_cancel",
            c.downgrade(etcd_client::DowngradeOptions::Cancel),
        )
        .await?;
        Ok(())
    }

    /// True when the endpoint is ready (see [`EtcdClient::health`]).
    pub async fn healthy(&self) -> bool {
        match self.health().await {
            Health::Ready => true,
            Health::NotReady(why) => {
                tracing::debug!(endpoints = ?self.endpoints, reason = %why, "etcd not healthy");
                false
            }
        }
    }

    /// The endpoint's health by etcd's own `/readyz` where it has one (3.5.11+,
    /// 3.6+; a single-endpoint client), else by a linearizable read within the
    /// timeout (the cluster has a leader and quorum, and this endpoint can
    /// reach it). A `/readyz` that is not there (404) or not served on this
    /// URL falls back to the read.
    pub async fn health(&self) -> Health {
        if let (Some(http), [endpoint]) = (&self.http, self.endpoints.as_slice()) {
            let url = format!("{}{READYZ_PATH}", endpoint.trim_end_matches('/'));
            match tokio::time::timeout(self.timeout, readyz(http, &url)).await {
                Ok(Some(health)) => return health,
                Ok(None) => {}
                Err(_) => {
                    return Health::NotReady(format!(
                        "{url} did not answer within {:?}",
                        self.timeout
                    ));
                }
            }
        }
        let mut c = self.client.clone();
        match self.call("health", c.get(HEALTH_KEY, None)).await {
            Ok(_) => Health::Ready,
            Err(e) => Health::NotReady(e.to_string()),
        }
    }

    /// Writes `key` = `value`.
    pub async fn put(&self, key: &str, value: &str) -> Result<(), Error> {
        self.put_bytes(key, value.as_bytes().to_vec()).await
    }

    /// Every key under `prefix` (keys only, one linearizable read).
    pub async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, Error> {
        let mut c = self.client.clone();
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let resp = self.call("get", c.get(prefix, Some(opts))).await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    /// How many keys are under `prefix` (`""`: all keys), without reading them.
    pub async fn count_with_prefix(&self, prefix: &str) -> Result<u64, Error> {
        let mut c = self.client.clone();
        let opts = GetOptions::new().with_prefix().with_count_only();
        let resp = self.call("get", c.get(prefix, Some(opts))).await?;
        Ok(u64::try_from(resp.count()).unwrap_or(0))
    }

    /// Delete every key under `prefix` (which must not be empty): how many
    /// were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, Error> {
        if prefix.is_empty() {
            return Err(Error::InvalidArgument {
                detail: "refusing to delete with an empty prefix (every key)".into(),
            });
        }
        let mut c = self.client.clone();
        let opts = etcd_client::DeleteOptions::new().with_prefix();
        let resp = self.call("delete", c.delete(prefix, Some(opts))).await?;
        Ok(u64::try_from(resp.deleted()).unwrap_or(0))
    }

    /// Put a value that need not be text.
    pub async fn put_bytes(&self, key: &str, value: Vec<u8>) -> Result<(), Error> {
        let mut c = self.client.clone();
        self.call("put", c.put(key, value, None)).await?;
        Ok(())
    }

    /// Reads `key` (linearizable). Values that are not UTF-8 are converted lossily.
    pub async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        let mut c = self.client.clone();
        let resp = self.call("get", c.get(key, None::<GetOptions>)).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Streams a snapshot from the first endpoint. There is no overall timeout (a large
    /// database takes a while), but each chunk must arrive within the client's timeout.
    pub async fn snapshot(&self) -> Result<SnapshotStream, Error> {
        let endpoint = self.first_endpoint();
        // A client without a per-request deadline: tonic's deadline would cut a long stream.
        let single = Self::connect_inner(
            std::slice::from_ref(&endpoint),
            self.timeout,
            false,
            self.tls.as_ref(),
        )
        .await?;
        let mut c = single.client.clone();
        let stream = single.call("snapshot", c.snapshot()).await?;
        let idle = self.timeout;
        tracing::info!(endpoint = %endpoint, "streaming etcd snapshot");
        let s = futures::stream::unfold(Some((stream, endpoint)), move |state| async move {
            let (mut stream, endpoint) = state?;
            match tokio::time::timeout(idle, stream.message()).await {
                Ok(Ok(Some(msg))) => Some((
                    Ok(Bytes::copy_from_slice(msg.blob())),
                    Some((stream, endpoint)),
                )),
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some((
                    Err(std::io::Error::other(format!(
                        "etcd snapshot from {endpoint} failed: {}",
                        describe(&e)
                    ))),
                    None,
                )),
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("etcd snapshot from {endpoint} stalled: no data for {idle:?}"),
                    )),
                    None,
                )),
            }
        });
        Ok(Box::pin(s))
    }

    fn first_endpoint(&self) -> String {
        self.endpoints.first().cloned().unwrap_or_default()
    }
}

/// An HTTP client for one etcd endpoint's `/readyz`: the members' CA only and
/// our client identity when TLS is used. None when the TLS material does not
/// parse (the gRPC client reports that; health then falls back to a read).
fn http_client(timeout: Duration, tls: Option<&ClientTls>) -> Option<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(t) = tls {
        let ca = reqwest::Certificate::from_pem_bundle(t.ca_pem.as_bytes()).ok()?;
        let identity =
            reqwest::Identity::from_pem(format!("{}\n{}", t.cert_pem, t.key_pem).as_bytes())
                .ok()?;
        b = b.tls_certs_only(ca).identity(identity);
    }
    b.build().ok()
}

/// GET `url` (etcd's `/readyz`): Some(health) when etcd answered with a
/// verdict, None when it gave none (404 on etcd before 3.5.11, or no answer).
async fn readyz(http: &reqwest::Client, url: &str) -> Option<Health> {
    // A transport error (nothing listens, no HTTP on this URL, a TLS
    // mismatch) gives no verdict: the read then decides, as before /readyz.
    let resp = http.get(url).send().await.ok()?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    if status.is_success() {
        return Some(Health::Ready);
    }
    let body = read_limited(resp, READYZ_BODY_LIMIT).await;
    let failed: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("[-]"))
        .map(|l| l.trim_start_matches("[-]").trim())
        .collect();
    let why = if failed.is_empty() {
        body.trim().to_string()
    } else {
        failed.join("; ")
    };
    Some(Health::NotReady(format!("{url} answered {status}: {why}")))
}

/// At most `limit` bytes of a response body, as text (lossy).
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> String {
    let mut out = Vec::new();
    while out.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - out.len();
                out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// etcd-client's error as text; gRPC refusals as `Code: message` (`Unavailable: etcdserver: unhealthy cluster`).
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

fn find_by_peer_urls(list: &[Member], peer_urls: &[String]) -> Option<Member> {
    list.iter()
        .find(|m| peer_urls.iter().any(|u| m.peer_urls.contains(u)))
        .cloned()
}

/// Retries with backoff (200 ms doubling to 1 s) while errors are retryable and
/// the deadline allows another try. A plain struct rather than a closure-taking
/// helper, so the callers' futures stay `Send` (async closures are not yet).
/// Public so the simulation's etcd model retries exactly as the client does.
pub struct Backoff {
    op: &'static str,
    until: tokio::time::Instant,
    wait: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(op: &'static str, deadline: Duration) -> Backoff {
        Backoff {
            op,
            until: tokio::time::Instant::now() + deadline,
            wait: Duration::from_millis(200),
            attempt: 1,
        }
    }

    /// Sleep and return Ok when another try fits; else hand the error back.
    pub async fn again(&mut self, e: Error) -> Result<(), Error> {
        if !e.is_retryable() || tokio::time::Instant::now() + self.wait >= self.until {
            return Err(e);
        }
        tracing::debug!(op = self.op, attempt = self.attempt, error = %e, "etcd refused; retrying");
        tokio::time::sleep(self.wait).await;
        // A process stopped during the sleep (SIGSTOP, a long pause) wakes
        // past the deadline: no further try then (the caller's lease may
        // have ended meanwhile).
        if tokio::time::Instant::now() >= self.until {
            return Err(e);
        }
        self.wait = (self.wait * 2).min(Duration::from_secs(1));
        self.attempt += 1;
        Ok(())
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    /// A retry whose sleep ends past the deadline (the process was stopped
    /// meanwhile) tries no more: found by the simulation, where a leader
    /// paused in this sleep changed the membership after its lease ended.
    #[tokio::test(start_paused = true)]
    async fn a_sleep_that_ends_past_the_deadline_tries_no_more() {
        let refused = || Error::Timeout {
            op: "member_add",
            endpoints: vec![],
            after: Duration::from_secs(1),
        };
        let mut b = Backoff::new("member_add", Duration::from_secs(5));
        assert!(b.again(refused()).await.is_ok(), "within the deadline");
        // Stopped for 10 s in the middle of the next sleep.
        let stop = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tokio::time::advance(Duration::from_secs(10)).await;
        });
        assert!(b.again(refused()).await.is_err(), "a try past the deadline");
        stop.await.expect("advanced");
    }
}
