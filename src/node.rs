//! The etcd host: what every manager does for its own machine, leader or not.
//!
//! It keeps the node's identity and etcd assignment in `<data-dir>/state.json`
//! (written atomically), supervises the local etcd process, and answers the
//! leader's peer-API requests. Every mutating request is fenced: a request
//! whose epoch is below the highest this node has seen is refused; with TLS
//! it must come from the node its fence names; an epoch above the highest
//! seen is first checked against the lease records in the store (a record
//! must name that leader at that epoch); an equal epoch must name the same
//! leader as before. The highest epoch and its leader are persisted before a
//! request is acted on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::core::model::{JobKind, JobPhase};

use crate::peer::{
    EtcdNodeConfig, EtcdState, Fence, JoinCluster, JoinPhase, NodeInfo, Request, Response,
};

const STATE_FILE: &str = "state.json";
/// Where a restore downloads its backup; emptied at every start (a restore
/// cut short by a crash leaves its download here).
const RESTORE_DIR: &str = "restore";
/// Under the data dir: scratch folders of restore drills (removed after each).
const DRILL_DIR: &str = "restore-drill";
/// A quorum recovery leaves `retired-cluster--<token>` for the cluster it
/// replaced: its members that come back must not serve their old data (see
/// `controller::Observation::retired_tokens` and [`Node::retire_if_replaced`]).
pub const RETIRED_CLUSTER_FILE: &str = "retired-cluster";

/// The `<name>` of a manager file `<prefix>--<name>` (request and marker
/// files that name a member, a backup or a cluster).
pub fn request_suffix<'a>(file: &'a str, prefix: &str) -> Option<&'a str> {
    file.strip_prefix(prefix)?.strip_prefix("--")
}

/// The name of the file that retires cluster `token`.
pub fn retired_cluster_file(token: &str) -> String {
    format!("{RETIRED_CLUSTER_FILE}--{token}")
}

/// The retired cluster tokens among the manager files.
pub fn retired_tokens(
    files: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    tokens_named(files, RETIRED_CLUSTER_FILE)
}

/// `<store>/etcd-manager/served-cluster--<token>`: a leader saw a cluster
/// of this token serve. A restore or a quorum recovery retires every such
/// cluster, also one whose members are all out of reach at the time (their
/// managers then keep them stopped when they come back).
pub const SERVED_CLUSTER_FILE: &str = "served-cluster";

pub fn served_cluster_file(token: &str) -> String {
    format!("{SERVED_CLUSTER_FILE}--{token}")
}

/// The cluster tokens recorded as served among the manager files.
pub fn served_tokens(
    files: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    tokens_named(files, SERVED_CLUSTER_FILE)
}

fn tokens_named(
    files: &std::collections::BTreeSet<String>,
    prefix: &str,
) -> std::collections::BTreeSet<String> {
    files
        .iter()
        .filter_map(|f| request_suffix(f, prefix))
        .filter(|t| etcd::check_ident(etcd::IdentKind::ClusterToken, t).is_ok())
        .map(str::to_string)
        .collect()
}

/// Where the v2 store check copies a member's snapshots and WAL; removed
/// after each check and at every start.
const V2CHECK_DIR: &str = "v2store-check";
/// How long etcd may take to write a snapshot with `--snapshot-count=1`.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long `etcdutl check v2store` may run.
const V2CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
const STATE_FORMAT: u32 = 1;
/// Revisions jump by this much on a restore (etcd 3.5+), so every watcher
/// sees a compaction and re-lists instead of silently missing events.
pub const RESTORE_BUMP_REVISION: u64 = 1_000_000_000;
/// How long etcd gets to stop after SIGTERM.
pub const ETCD_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The etcd this node was told to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEtcd {
    pub cluster_token: String,
    pub etcd_version: String,
    pub quarantined: bool,
    pub nodes: Vec<EtcdNodeConfig>,
    /// Started as a member of a new cluster (else added to an existing one).
    pub new_cluster: bool,
}

/// `<data-dir>/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub format: u32,
    pub id: String,
    pub cluster_name: String,
    pub highest_epoch: u64,
    /// The leader that holds `highest_epoch` (checked against the store).
    #[serde(default)]
    pub highest_epoch_leader: Option<String>,
    /// The newest lease record (of `highest_epoch`'s leader) a request
    /// admitted here was sent under: an older one arriving later was held
    /// up on its way (its caller gave up and may have acted since).
    #[serde(default)]
    pub highest_lease_seq: u64,
    pub etcd: Option<LocalEtcd>,
}

impl NodeState {
    /// Identifiers in the state file end up in paths: check them on load.
    fn validate(&self) -> Result<(), String> {
        use etcd::{IdentKind, check_ident};
        check_ident(IdentKind::NodeId, &self.id).map_err(|e| e.to_string())?;
        if let Some(l) = &self.etcd {
            check_ident(IdentKind::ClusterToken, &l.cluster_token).map_err(|e| e.to_string())?;
            for n in &l.nodes {
                check_ident(IdentKind::MemberName, &n.name).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// How long a node waits for the store when it checks a new epoch.
const EPOCH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data dir {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
    #[error("etcd certificates: {0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error(
        "data dir {path} belongs to cluster '{found}', not '{want}'; use another --data-dir or the right --cluster-name"
    )]
    WrongCluster {
        path: PathBuf,
        found: String,
        want: String,
    },
}

/// Settings the node needs from the configuration.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub cluster_name: String,
    pub data_dir: PathBuf,
    /// The member's URLs; `__name__` is replaced by the node's DNS name at open.
    pub node_config: EtcdNodeConfig,
    /// The node's id when a volume names it (external volumes); None: kept in
    /// (or drawn into) the state file.
    pub fixed_id: Option<String>,
    /// `--dns-suffix`: `__name__` is `<id>.<suffix>`.
    pub dns_suffix: String,
    /// etcd's dedicated metrics URLs (`__name__` replaced as above).
    pub listen_metrics_urls: Vec<String>,
    /// The manager's address (also in etcd's certificates).
    pub address: std::net::IpAddr,
    pub listen_address: Option<String>,
    pub bin_dirs: Vec<PathBuf>,
    pub etcd_env_overrides: Vec<(String, String)>,
    /// Where backups are read from for a restore.
    pub store: backup::BackupStore,
    /// etcd's TLS: certificates are issued from these CAs at every etcd start.
    /// None: plain http (`--etcd-insecure`).
    pub etcd_pki: Option<std::sync::Arc<crate::pki::EtcdPki>>,
    /// How etcd is started and its offline tools run ([`crate::edges::ProcessRuntime`]
    /// in production, the model etcd in the simulation).
    pub runtime: std::sync::Arc<dyn crate::edges::EtcdRuntime>,
    /// The safety rules: all on in production (no flag sets them); the
    /// simulation switches the fence off to show its checks catch it.
    pub rules: crate::core::rules::SafetyRules,
}

struct Inner {
    state: NodeState,
    process: Option<Box<dyn crate::edges::EtcdRun>>,
    prepared: Option<String>,
}

pub struct Node {
    settings: NodeSettings,
    id: String,
    /// The backup store's id, once read (see [`Node::set_store_id`]).
    store_id: std::sync::Mutex<Option<String>>,
    /// Alive managers of our cluster as our gossip sees them (set by the driver).
    alive_view: std::sync::Mutex<Vec<String>>,
    inner: Mutex<Inner>,
    /// The installed etcd versions and what they were read from (see
    /// [`install_signature`]): scanned again only when that changes.
    installed: std::sync::Mutex<Option<(InstallSignature, Vec<String>)>>,
    /// How many times the installed versions were scanned.
    installed_scans: std::sync::atomic::AtomicU64,
    /// The backup whose restore drill runs now, if one does.
    drill_running: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Held by the restore that runs now: one at a time, and a repeated
    /// request waits for the first and then finds it done.
    restoring: Mutex<()>,
    /// The restore job running or run last (see [`crate::jobs`]).
    jobs: crate::jobs::JobBoard,
    /// This node as shared with the peer server (see [`Node::shared`]):
    /// what a job holds while it runs in the background.
    me: std::sync::OnceLock<std::sync::Weak<Node>>,
}

/// Every folder etcd binaries are looked for in, and every `etcd` binary
/// there, with their modification times: a new, removed or replaced
/// version changes it (a folder's time changes when entries come or go).
type InstallSignature = Vec<(PathBuf, Option<std::time::SystemTime>)>;

fn install_signature(bin_dirs: &[PathBuf]) -> InstallSignature {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut sig = Vec::new();
    let mut roots: Vec<PathBuf> = bin_dirs.to_vec();
    roots.push(PathBuf::from("/opt"));
    for root in &roots {
        sig.push((root.clone(), mtime(root)));
        let bin = root.join("etcd");
        sig.push((bin.clone(), mtime(&bin)));
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("etcd-v"))
            .map(|e| e.path())
            .collect();
        names.sort();
        for dir in names {
            for sub in ["", "usr/local/bin", "usr/bin"] {
                let bin = dir.join(sub).join("etcd");
                sig.push((bin.clone(), mtime(&bin)));
            }
        }
    }
    sig
}

/// A new random node id: 16 bytes, base64url without padding (as upstream's ids look).
#[allow(clippy::disallowed_methods)] // the one place a node id is drawn
fn new_node_id() -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..64)] as char)
        .collect()
}

/// Versions with binaries in /opt or the extra folders (`etcd-v<version>[-linux-amd64]`).
pub fn installed_versions(bin_dirs: &[PathBuf]) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut roots: Vec<PathBuf> = bin_dirs.to_vec();
    roots.push(PathBuf::from("/opt"));
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(v) = name.strip_prefix("etcd-v") else {
                continue;
            };
            let v = v.trim_end_matches("-linux-amd64");
            if let Ok(version) = v.parse::<etcd::EtcdVersion>()
                && etcd::find_binaries(&version, bin_dirs).is_ok()
            {
                found.insert(version.to_string());
            }
        }
    }
    found.into_iter().collect()
}

fn check_writable(dir: &Path) -> Result<(), NodeError> {
    let err = |reason: String| NodeError::DataDir {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        err(format!(
            "cannot create it ({e}); choose a writable --data-dir"
        ))
    })?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok").map_err(|e| {
        err(format!(
            "is not writable ({e}); fix its permissions or choose another --data-dir"
        ))
    })?;
    std::fs::remove_file(&probe)
        .map_err(|e| err(format!("cannot remove {} ({e})", probe.display())))?;
    Ok(())
}

impl Node {
    /// Load the node's state from its data dir, or create a fresh identity.
    pub fn open(settings: NodeSettings) -> Result<Node, NodeError> {
        check_writable(&settings.data_dir)?;
        let path = settings.data_dir.join(STATE_FILE);
        let state = match etcd::read_json::<NodeState>(&path)? {
            Some(s) => {
                s.validate().map_err(|reason| NodeError::DataDir {
                    path: path.clone(),
                    reason: format!("{reason}; the state file was not written by etcd-manager, restore it or move the data dir aside"),
                })?;
                if let Some(fixed) = &settings.fixed_id
                    && *fixed != s.id
                {
                    return Err(NodeError::DataDir {
                        path: path.clone(),
                        reason: format!(
                            "the volume is named {fixed} but its state file says this member is {}; was the volume folder renamed? rename it back",
                            s.id
                        ),
                    });
                }
                if s.cluster_name != settings.cluster_name {
                    return Err(NodeError::WrongCluster {
                        path: settings.data_dir.clone(),
                        found: s.cluster_name,
                        want: settings.cluster_name.clone(),
                    });
                }
                s
            }
            None => {
                let bad = |reason: String| NodeError::DataDir {
                    path: settings.data_dir.clone(),
                    reason,
                };
                // A volume upstream etcd-manager wrote: its member, its data.
                let adopted = match crate::upstream_state::read(&settings.data_dir).map_err(bad)? {
                    Some(pb) => crate::upstream_state::from_upstream(&pb).map_err(bad)?,
                    None => None,
                };
                let myid = crate::upstream_state::read_myid(&settings.data_dir).map_err(bad)?;
                let id = settings
                    .fixed_id
                    .clone()
                    .or(myid)
                    .unwrap_or_else(new_node_id);
                if let Some(l) = &adopted
                    && !l.nodes.iter().any(|n| n.name == id)
                {
                    return Err(bad(format!(
                        "upstream's state file names the members {:?}, not this node ({id}); the volume belongs to another member",
                        l.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>()
                    )));
                }
                let s = NodeState {
                    format: STATE_FORMAT,
                    id,
                    cluster_name: settings.cluster_name.clone(),
                    highest_epoch: 0,
                    highest_epoch_leader: None,
                    highest_lease_seq: 0,
                    etcd: adopted,
                };
                etcd::write_json_atomic(&path, &s)?;
                match &s.etcd {
                    Some(l) => {
                        tracing::info!(id = %s.id, token = %l.cluster_token, version = %l.etcd_version, path = %path.display(), "adopted upstream etcd-manager's volume: same member, same data")
                    }
                    None => tracing::info!(id = %s.id, path = %path.display(), "new node identity"),
                }
                s
            }
        };
        // Without a volume provider upstream finds itself by `myid`: keep one
        // beside ours, so its image takes this data dir back as it is.
        if settings.fixed_id.is_none()
            && let Err(e) = crate::upstream_state::ensure_myid(&settings.data_dir, &state.id)
        {
            tracing::warn!(error = %e, "cannot write upstream's myid beside our state; going back to upstream's image would not find this member");
        }
        remove_restore_leftovers(&settings.data_dir.join(RESTORE_DIR));
        let _ = std::fs::remove_dir_all(settings.data_dir.join(V2CHECK_DIR));
        let _ = std::fs::remove_dir_all(settings.data_dir.join(DRILL_DIR));
        let id = state.id.clone();
        let mut settings = settings;
        let (n, suffix) = (&mut settings.node_config, settings.dns_suffix.as_str());
        n.peer_urls = crate::config::expand_name(&n.peer_urls, &id, suffix);
        n.client_urls = crate::config::expand_name(&n.client_urls, &id, suffix);
        n.quarantined_client_urls =
            crate::config::expand_name(&n.quarantined_client_urls, &id, suffix);
        settings.listen_metrics_urls =
            crate::config::expand_name(&settings.listen_metrics_urls, &id, suffix);
        Ok(Node {
            settings,
            id,
            store_id: std::sync::Mutex::new(None),
            alive_view: std::sync::Mutex::new(Vec::new()),
            installed: std::sync::Mutex::new(None),
            installed_scans: std::sync::atomic::AtomicU64::new(0),
            drill_running: Default::default(),
            restoring: Mutex::new(()),
            jobs: Default::default(),
            me: std::sync::OnceLock::new(),
            inner: Mutex::new(Inner {
                state,
                process: None,
                prepared: None,
            }),
        })
    }

    /// Share the node (with the peer server and the driver); only a shared
    /// node runs jobs in the background.
    pub fn shared(self) -> std::sync::Arc<Node> {
        let node = std::sync::Arc::new(self);
        let _ = node.me.set(std::sync::Arc::downgrade(&node));
        node
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The node's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }

    /// Record the backup store's id (read or created at start).
    pub fn set_store_id(&self, id: String) {
        *self.store_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
    }

    /// The backup store's id, once known.
    pub fn store_id(&self) -> Option<String> {
        self.store_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A fresh random id (for the store id).
    pub fn fresh_id() -> String {
        new_node_id()
    }

    /// Record which managers our gossip sees alive (ids of our cluster).
    pub fn set_alive_view(&self, ids: Vec<String>) {
        if let Ok(mut v) = self.alive_view.lock() {
            *v = ids;
        }
    }

    /// Accept `candidate` as leader unless we know an alive manager with a
    /// lower id, or it uses another backup store than ours (or we have not
    /// read ours yet).
    pub fn judge_leadership(
        &self,
        cluster_name: &str,
        candidate: &str,
        store_id: &str,
    ) -> Response {
        if cluster_name != self.settings.cluster_name {
            return Response::Failed(format!(
                "this node manages cluster '{}'",
                self.settings.cluster_name
            ));
        }
        match self.store_id() {
            None => {
                return Response::Failed("this node has not read the backup store's id yet".into());
            }
            Some(ours) if ours != store_id => {
                tracing::warn!(candidate, ours = %ours, theirs = %store_id,
                    "a candidate uses another backup store: every manager's --backup-store must be one shared store; nobody leads until they are");
                return Response::Failed(format!(
                    "{candidate} uses another backup store (id {store_id}, ours {ours}); every manager's --backup-store must be the same shared store"
                ));
            }
            Some(_) => {}
        }
        let view = self
            .alive_view
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        match crate::leadership::judge(view.iter().map(String::as_str), candidate) {
            Err(reason) => Response::Failed(reason),
            Ok(()) => Response::Done,
        }
    }

    pub fn node_config(&self) -> EtcdNodeConfig {
        EtcdNodeConfig {
            name: self.id.clone(),
            ..self.settings.node_config.clone()
        }
    }

    fn state_path(&self) -> PathBuf {
        self.settings.data_dir.join(STATE_FILE)
    }

    fn etcd_data_dir(&self, token: &str) -> PathBuf {
        self.settings.data_dir.join("data").join(token)
    }

    /// An `ETCD_*` setting etcd is given by the user (process environment
    /// or `--etcd-env-file`; the last one wins, as when etcd starts).
    pub fn etcd_setting(&self, key: &str) -> Option<String> {
        self.settings
            .etcd_env_overrides
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// The installed etcd versions, scanned again only when the folders
    /// that hold them change (a scan may run `etcd --version`).
    pub fn installed(&self) -> Vec<String> {
        let sig = install_signature(&self.settings.bin_dirs);
        let mut cache = self
            .installed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached, versions)) = cache.as_ref()
            && *cached == sig
        {
            return versions.clone();
        }
        let versions = installed_versions(&self.settings.bin_dirs);
        self.installed_scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if cache.as_ref().is_none_or(|(_, v)| *v != versions) {
            tracing::info!(versions = ?versions, "installed etcd versions");
        }
        *cache = Some((sig, versions.clone()));
        versions
    }

    /// The highest epoch this node has accepted (persisted).
    pub async fn highest_epoch(&self) -> u64 {
        self.inner.lock().await.state.highest_epoch
    }

    /// Start etcd if the state file says this node runs one (after a restart).
    /// Before [`Node::resume`]: when the store says the cluster of our
    /// assigned etcd was replaced by a quorum recovery while we were away
    /// (our host was down, not wiped), do not start it: with others of its
    /// kind it could still have its old quorum and serve old data. Its data
    /// goes to the trashcan and the node is idle, for the leader to add to
    /// the current cluster. A store that does not answer within `within`
    /// does not hold etcd back (the leader stops such a member later).
    pub async fn retire_if_replaced(&self, store: &backup::BackupStore, within: Duration) {
        let assigned = self.inner.lock().await.state.etcd.clone();
        let Some(token) = assigned.map(|l| l.cluster_token) else {
            return;
        };
        // The store is asked without holding the lock.
        let file = retired_cluster_file(&token);
        match tokio::time::timeout(within, store.read_manager_file(&file)).await {
            Ok(Ok(Some(_))) => {
                let mut inner = self.inner.lock().await;
                tracing::error!(%token, "this member's cluster was replaced (a restore or a quorum recovery) while it was away; its etcd is not started and its data goes to the trashcan; the leader adds it to the current cluster");
                if let Err(e) = self.stop_for_good(&mut inner).await {
                    tracing::error!(error = %e, "could not move the replaced cluster's data aside");
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%token, error = %e, "could not ask the store whether this member's cluster was replaced; starting etcd")
            }
            Err(_) => {
                tracing::warn!(%token, ?within, "the store did not say in time whether this member's cluster was replaced; starting etcd")
            }
        }
    }

    pub async fn resume(&self) -> Result<(), NodeError> {
        let mut inner = self.inner.lock().await;
        if let Some(local) = inner.state.etcd.clone() {
            tracing::info!(token = %local.cluster_token, version = %local.etcd_version, "resuming etcd");
            let p = self.spawn_etcd(&local)?;
            inner.process = Some(p);
        }
        Ok(())
    }

    fn spec_for(&self, local: &LocalEtcd) -> etcd::EtcdNodeSpec {
        let me = self.node_config();
        etcd::EtcdNodeSpec {
            name: me.name.clone(),
            version: local.etcd_version.clone(),
            data_dir: self.etcd_data_dir(&local.cluster_token),
            cluster_token: local.cluster_token.clone(),
            initial_cluster: local
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.peer_urls.clone()))
                .collect(),
            initial_cluster_state_new: local.new_cluster,
            peer_urls: me.peer_urls,
            client_urls: me.client_urls,
            quarantined_client_urls: me.quarantined_client_urls,
            quarantined: local.quarantined,
            listen_address: self.settings.listen_address.clone(),
            tls: None,
            listen_metrics_urls: self.settings.listen_metrics_urls.clone(),
        }
    }

    fn spawn_etcd(&self, local: &LocalEtcd) -> Result<Box<dyn crate::edges::EtcdRun>, NodeError> {
        self.spawn_etcd_with(local, &[])
    }

    /// Start etcd with `extra` settings over the user's (`ETCD_*` variables).
    fn spawn_etcd_with(
        &self,
        local: &LocalEtcd,
        extra: &[(&str, &str)],
    ) -> Result<Box<dyn crate::edges::EtcdRun>, NodeError> {
        let version: etcd::EtcdVersion = local.etcd_version.parse()?;
        let binaries = etcd::find_binaries(&version, &self.settings.bin_dirs)?;
        let mut spec = self.spec_for(local);
        if let Some(pki) = &self.settings.etcd_pki {
            let me = self.node_config();
            let client_urls: Vec<String> = me
                .client_urls
                .iter()
                .chain(&me.quarantined_client_urls)
                .cloned()
                .collect();
            let extra = vec![self.settings.address.to_string()];
            let dir = self
                .settings
                .data_dir
                .join("pki")
                .join(&local.cluster_token);
            // Certificate validity is wall-clock time by nature.
            #[allow(clippy::disallowed_methods)]
            let now = std::time::SystemTime::now();
            spec.tls = Some(pki.write_member_certs(
                &dir,
                &me.name,
                &me.peer_urls,
                &client_urls,
                &extra,
                now,
            )?);
            tracing::info!(dir = %dir.display(), "issued etcd peer and client certificates");
        }
        std::fs::create_dir_all(self.settings.data_dir.join("data")).map_err(|e| {
            NodeError::DataDir {
                path: self.settings.data_dir.clone(),
                reason: e.to_string(),
            }
        })?;
        let log = self.settings.data_dir.join("etcd.log");
        let mut env = self.settings.etcd_env_overrides.clone();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let unknown = etcd::not_understood(&env, version);
        if !unknown.is_empty() {
            tracing::warn!(%version, variables = ?unknown, "etcd does not understand these settings and will ignore them; see `etcd --help` of that version");
        }
        Ok(self
            .settings
            .runtime
            .start(binaries, spec, env, Some(log))?)
    }

    /// The settings this node gives etcd (beyond ours) that etcd `to` would
    /// not understand while `from` does, one line each (see
    /// [`etcd::lost_settings`]). Empty when either version does not parse.
    pub fn lost_settings(&self, from: &str, to: &str) -> Vec<String> {
        let (Ok(from), Ok(to)) = (from.parse(), to.parse()) else {
            return vec![];
        };
        etcd::lost_settings(&self.settings.etcd_env_overrides, from, to)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Everything the leader asks about.
    pub async fn info(&self) -> NodeInfo {
        let inner = self.inner.lock().await;
        let status = inner.process.as_ref().map(|p| p.status());
        let running = status.as_ref().is_some_and(|s| s.running);
        let restarts = status.as_ref().map_or(0, |s| s.restarts);
        NodeInfo {
            id: self.id.clone(),
            cluster_name: self.settings.cluster_name.clone(),
            node_config: self.node_config(),
            etcd_state: inner.state.etcd.as_ref().map(|l| EtcdState {
                cluster_token: l.cluster_token.clone(),
                etcd_version: l.etcd_version.clone(),
                quarantined: l.quarantined,
                running,
                restarts,
                nodes: l.nodes.clone(),
            }),
            highest_epoch: inner.state.highest_epoch,
            installed_versions: self.installed(),
            jobs: Some(self.jobs.list()),
        }
    }

    /// Check and record the fence; Err is the response to send. `verified`:
    /// the store confirmed this fence's leader at its epoch (checked by the
    /// caller before taking the lock, see [`Node::handle`]).
    fn admit(&self, inner: &mut Inner, fence: &Fence, verified: bool) -> Result<(), Response> {
        if fence.cluster_name != self.settings.cluster_name {
            return Err(Response::Failed(format!(
                "this node manages cluster '{}', not '{}'",
                self.settings.cluster_name, fence.cluster_name
            )));
        }
        let highest = inner.state.highest_epoch;
        if !self.settings.rules.fence && fence.epoch < highest {
            // Only with the fence switched off (the simulation): admitted,
            // and the higher epoch stays recorded.
            return Ok(());
        }
        if !crate::leadership::admits(highest, fence.epoch) {
            tracing::warn!(leader = %fence.leader_id, epoch = fence.epoch, highest, "refused a stale leader");
            refused("fenced");
            return Err(Response::Fenced {
                highest_epoch: highest,
            });
        }
        let same_leader =
            inner.state.highest_epoch_leader.as_deref() == Some(fence.leader_id.as_str());
        if fence.epoch == highest && !same_leader && !verified {
            refused("unverified_epoch");
            return Err(Response::Failed(format!(
                "epoch {} belongs to {}, not {}",
                fence.epoch,
                inner
                    .state
                    .highest_epoch_leader
                    .as_deref()
                    .unwrap_or("an unrecorded leader"),
                fence.leader_id
            )));
        }
        if fence.epoch > highest && !verified {
            refused("unverified_epoch");
            return Err(Response::Failed(format!(
                "epoch {} of {} is not confirmed by the lease records in the store",
                fence.epoch, fence.leader_id
            )));
        }
        if fence.epoch == highest
            && same_leader
            && fence.lease_seq < inner.state.highest_lease_seq
            && self.settings.rules.fence
        {
            tracing::warn!(leader = %fence.leader_id, epoch = fence.epoch, lease_seq = fence.lease_seq, newest = inner.state.highest_lease_seq, "refused a request that arrived after a newer one of its leader");
            refused("late");
            return Err(Response::Failed(format!(
                "sent under lease record {} of epoch {}, after which this node admitted a request of record {}: it was held up on its way; not applied",
                fence.lease_seq, fence.epoch, inner.state.highest_lease_seq
            )));
        }
        if fence.epoch > highest || !same_leader {
            inner.state.highest_epoch = fence.epoch;
            inner.state.highest_epoch_leader = Some(fence.leader_id.clone());
            inner.state.highest_lease_seq = fence.lease_seq;
            self.persist(inner)
                .map_err(|e| Response::Failed(e.to_string()))?;
        } else if fence.lease_seq > inner.state.highest_lease_seq {
            inner.state.highest_lease_seq = fence.lease_seq;
            self.persist(inner)
                .map_err(|e| Response::Failed(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether `fence` needs the store's word before it can be admitted: its
    /// epoch is above the highest seen, or equal with a leader not recorded,
    /// or it names a lease record beyond the newest admitted (the record it
    /// names must exist: one never written would raise the newest admitted
    /// and refuse the leader's real requests as late).
    async fn needs_check(&self, fence: &Fence) -> bool {
        let inner = self.inner.lock().await;
        let same_leader =
            inner.state.highest_epoch_leader.as_deref() == Some(fence.leader_id.as_str());
        let same_epoch = fence.epoch == inner.state.highest_epoch;
        fence.epoch > inner.state.highest_epoch
            || (same_epoch && (!same_leader || fence.lease_seq > inner.state.highest_lease_seq))
    }

    /// Ask the store whether a lease record names the fence's leader at its
    /// epoch; Err is the refusal to send.
    async fn check_fence(&self, fence: &Fence) -> Result<(), Response> {
        let store = self.settings.store.object_store();
        let prefix = self.settings.store.lease_prefix();
        let check = lock::check_epoch(
            store.as_ref(),
            &prefix,
            fence.lease_seq,
            &fence.leader_id,
            fence.epoch,
        );
        match tokio::time::timeout(EPOCH_CHECK_TIMEOUT, check).await {
            Ok(Ok(lock::EpochCheck::Confirmed)) => Ok(()),
            Ok(Ok(lock::EpochCheck::Refuted(why))) => {
                tracing::warn!(leader = %fence.leader_id, epoch = fence.epoch, reason = %why, "refused a leader the store does not confirm");
                refused("unverified_epoch");
                Err(Response::Failed(format!("epoch not confirmed: {why}")))
            }
            Ok(Err(e)) => {
                refused("unverified_epoch");
                Err(Response::Failed(format!(
                    "cannot check epoch {} against the store: {e}",
                    fence.epoch
                )))
            }
            Err(_) => {
                refused("unverified_epoch");
                Err(Response::Failed(format!(
                    "cannot check epoch {}: the store did not answer within {EPOCH_CHECK_TIMEOUT:?}",
                    fence.epoch
                )))
            }
        }
    }

    /// Write our state, and upstream's `state` beside it (so upstream's
    /// image reads the volume back in place).
    fn persist(&self, inner: &Inner) -> Result<(), NodeError> {
        etcd::write_json_atomic(&self.state_path(), &inner.state)?;
        let dir = &self.settings.data_dir;
        let pb = match &inner.state.etcd {
            Some(l) => Some(crate::upstream_state::to_upstream(
                l,
                self.settings.etcd_pki.is_some(),
            )),
            // No etcd here any more: upstream's file must not say otherwise.
            None => dir
                .join(crate::upstream_state::STATE_FILE)
                .exists()
                .then(crate::upstream_state::PbEtcdState::default),
        };
        if let Some(pb) = pb
            && let Err(e) = crate::upstream_state::write(dir, &pb)
        {
            tracing::warn!(error = %e, "cannot write upstream's state file beside ours; going back to upstream's image would need a restore");
        }
        Ok(())
    }

    /// Answer one peer-API request from `caller`.
    pub async fn handle(&self, caller: &crate::peer::Caller, req: Request) -> Response {
        if let Request::GetInfo = req {
            return Response::Info(Box::new(self.info().await));
        }
        if let Err(msg) = req.validate() {
            return Response::Failed(format!("bad request: {msg}"));
        }
        if let Request::Leadership {
            cluster_name,
            candidate,
            store_id,
        } = &req
        {
            if let Err(msg) = caller.may_act_as(candidate) {
                refused("not_the_caller");
                return Response::Failed(msg);
            }
            return self.judge_leadership(cluster_name, candidate, store_id);
        }
        if let Request::CheckSettings { version } = &req {
            let current = self.inner.lock().await.state.etcd.clone();
            return match current {
                None => Response::Failed("this node runs no etcd".into()),
                Some(local) => Response::Settings {
                    lost: self.lost_settings(&local.etcd_version, version),
                },
            };
        }
        let mut verified = false;
        if let Some(fence) = req.fence() {
            if let Err(msg) = caller.may_act_as(&fence.leader_id) {
                tracing::warn!(caller = ?caller.node_id, leader = %fence.leader_id, from = %caller.addr, "refused a request sent for another node");
                refused("not_the_caller");
                return Response::Failed(msg);
            }
            // The store is asked without holding the lock (GetInfo keeps answering).
            if self.needs_check(fence).await {
                if let Err(resp) = self.check_fence(fence).await {
                    return resp;
                }
                verified = true;
            }
        }
        let mut inner = self.inner.lock().await;
        if let Some(fence) = req.fence()
            && let Err(resp) = self.admit(&mut inner, fence, verified)
        {
            return resp;
        }
        if let Request::VerifyBackup { backup, .. } = &req {
            drop(inner);
            self.start_drill(backup);
            return Response::Done;
        }
        if let Request::RestoreJob(r) = req {
            drop(inner);
            return self.start_restore_job(r);
        }
        if let Request::RestoreBackup(r) = req {
            // An older leader's restore, answered when it ends. The
            // download runs without the lock: GetInfo keeps answering.
            drop(inner);
            let (cancel, bytes) =
                match self
                    .jobs
                    .begin(JobKind::Restore, &r.cluster_token, r.fence.epoch)
                {
                    crate::jobs::Begin::Start { cancel, bytes } => (cancel, bytes),
                    // Repeated, or behind another: it waits for the one running.
                    _ => Default::default(),
                };
            let key = r.cluster_token.clone();
            let result = self.restore(r, &cancel, &bytes).await;
            self.jobs.set_phase(&key, job_end(&result));
            return match result {
                Ok(()) => Response::Done,
                Err(resp) => resp,
            };
        }
        if let Request::V2StoreJob(f) = req {
            let data = inner.state.etcd.as_ref().map(|l| {
                (
                    l.cluster_token.clone(),
                    self.etcd_data_dir(&l.cluster_token),
                )
            });
            drop(inner);
            return match data {
                None => Response::Failed("this node runs no etcd".into()),
                Some((token, data)) => self.start_v2store_job(token, data, f.epoch),
            };
        }
        if let Request::CheckV2Store(_) = req {
            let data = inner
                .state
                .etcd
                .as_ref()
                .map(|l| self.etcd_data_dir(&l.cluster_token));
            // An older leader's check, answered when it ends. The copy and
            // the check run without the lock: GetInfo answers.
            drop(inner);
            return match data {
                None => Response::Failed("this node runs no etcd".into()),
                Some(data) => match self.check_v2store(&data).await {
                    Ok(etcd::V2StoreVerdict::Clean) => Response::V2Store { custom: None },
                    Ok(etcd::V2StoreVerdict::Custom(what)) => {
                        Response::V2Store { custom: Some(what) }
                    }
                    Err(e) => Response::Failed(e),
                },
            };
        }
        let result = match req {
            Request::GetInfo
            | Request::Leadership { .. }
            | Request::CheckV2Store(_)
            | Request::VerifyBackup { .. }
            | Request::RestoreBackup(_)
            | Request::RestoreJob(_)
            | Request::V2StoreJob(_)
            | Request::CheckSettings { .. } => unreachable_info(),
            Request::JoinCluster(j) => self.join(&mut inner, j).await,
            Request::Reconfigure(r) => {
                self.reconfigure(&mut inner, r.quarantined, r.etcd_version)
                    .await
            }
            Request::StopEtcd(_) => self.stop_for_good(&mut inner).await,
            Request::GcTrashcan { keep, .. } => {
                let dir = self.settings.data_dir.join("data-trashcan");
                // Never empty it: the newest old data dir stays whatever is asked.
                match gc_trashcan(&dir, keep.max(1) as usize) {
                    Ok(gone) => {
                        for p in &gone {
                            tracing::info!(path = %p.display(), "old etcd data deleted from the trashcan");
                        }
                        Ok(())
                    }
                    Err(e) => Err(format!("cleaning {}: {e}", dir.display())),
                }
            }
        };
        match result {
            Ok(()) => Response::Done,
            Err(msg) => Response::Failed(msg),
        }
    }

    /// `etcdutl check v2store` on a copy of `data` (see [`etcd::check_v2store`]),
    /// with the newest installed 3.5 whose etcdutl has the check.
    async fn check_v2store(&self, data: &Path) -> Result<etcd::V2StoreVerdict, String> {
        let mut candidates: Vec<etcd::EtcdVersion> = self
            .installed()
            .iter()
            .filter_map(|v| v.parse::<etcd::EtcdVersion>().ok())
            .filter(|v| v.major == 3 && v.minor == 5)
            .collect();
        candidates.sort();
        for v in candidates.iter().rev() {
            let Ok(binaries) = etcd::find_binaries(v, &self.settings.bin_dirs) else {
                continue;
            };
            let runtime = &self.settings.runtime;
            if !runtime.can_check_v2store(&binaries).await {
                continue;
            }
            let scratch = self.settings.data_dir.join(V2CHECK_DIR);
            let verdict = runtime
                .check_v2store(&binaries, data, &scratch, V2CHECK_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(data = %data.display(), tool = %binaries.version, ?verdict, "checked the v2 store");
            return Ok(verdict);
        }
        Err(
            "no installed etcd 3.5 has `etcdutl check v2store` (3.5.30 and later do); \
             install one (deploy/install-etcd.sh 3.5.35) on every master"
                .into(),
        )
    }

    async fn join(&self, inner: &mut Inner, j: JoinCluster) -> Result<(), String> {
        let current = inner.state.etcd.as_ref().map(|l| l.cluster_token.clone());
        match j.phase {
            JoinPhase::Prepare => {
                if let Some(t) = &current
                    && *t != j.cluster_token
                {
                    return Err(format!("already a member of cluster {t}"));
                }
                inner.prepared = Some(j.cluster_token);
                Ok(())
            }
            JoinPhase::CancelPrepare => {
                if inner.prepared.as_deref() == Some(j.cluster_token.as_str()) {
                    inner.prepared = None;
                }
                Ok(())
            }
            JoinPhase::Initial | JoinPhase::JoinExisting => {
                if current.as_deref() == Some(j.cluster_token.as_str()) {
                    return Ok(()); // already done: the request was repeated
                }
                if let Some(t) = current {
                    return Err(format!("already a member of cluster {t}"));
                }
                if inner.prepared.as_deref() != Some(j.cluster_token.as_str()) {
                    return Err(format!(
                        "not prepared for cluster {}; send Prepare first",
                        j.cluster_token
                    ));
                }
                if !j.nodes.iter().any(|n| n.name == self.id) {
                    return Err("this node is not in the cluster it was asked to join".into());
                }
                let local = LocalEtcd {
                    cluster_token: j.cluster_token,
                    etcd_version: j.etcd_version,
                    quarantined: j.quarantined,
                    nodes: j.nodes,
                    new_cluster: j.phase == JoinPhase::Initial,
                };
                let data = self.etcd_data_dir(&local.cluster_token);
                if data.exists() {
                    return Err(format!(
                        "{} exists already; refusing to reuse old data",
                        data.display()
                    ));
                }
                let process = self.spawn_etcd(&local).map_err(|e| e.to_string())?;
                tracing::info!(token = %local.cluster_token, version = %local.etcd_version, new = local.new_cluster, quarantined = local.quarantined, "started etcd");
                inner.state.etcd = Some(local);
                inner.prepared = None;
                inner.process = Some(process);
                self.persist(inner).map_err(|e| e.to_string())
            }
        }
    }

    /// Restart etcd on its own data dir with another quarantine or version.
    /// The new version's binaries are found before the running etcd is stopped.
    async fn reconfigure(
        &self,
        inner: &mut Inner,
        quarantined: Option<bool>,
        version: Option<String>,
    ) -> Result<(), String> {
        let Some(old) = inner.state.etcd.clone() else {
            return Err("this node runs no etcd".into());
        };
        let mut local = old.clone();
        if let Some(q) = quarantined {
            local.quarantined = q;
        }
        if let Some(v) = version {
            let parsed: etcd::EtcdVersion = v.parse().map_err(|e: etcd::Error| e.to_string())?;
            etcd::find_binaries(&parsed, &self.settings.bin_dirs).map_err(|e| e.to_string())?;
            let lost = self.lost_settings(&old.etcd_version, &v);
            if !lost.is_empty() {
                return Err(format!(
                    "refused to move etcd {} -> {v}: {}; nothing was changed",
                    old.etcd_version,
                    lost.join("; ")
                ));
            }
            local.etcd_version = v;
        }
        if local == old {
            return Ok(());
        }
        if let Some(p) = inner.process.take() {
            p.stop(ETCD_STOP_TIMEOUT).await.map_err(|e| e.to_string())?;
        }
        if snapshot_before(&old.etcd_version, &local.etcd_version)
            && let Err(e) = self.snapshot_with(&old).await
        {
            // Back as it was, on the old version; the leader tries again.
            inner.process = Some(self.spawn_etcd(&old).map_err(|e| e.to_string())?);
            return Err(format!(
                "{} -> {}: {e}; etcd {} runs again",
                old.etcd_version, local.etcd_version, old.etcd_version
            ));
        }
        local.new_cluster = false;
        inner.state.etcd = Some(local.clone());
        self.persist(inner).map_err(|e| e.to_string())?;
        inner.process = Some(self.spawn_etcd(&local).map_err(|e| e.to_string())?);
        tracing::info!(quarantined = local.quarantined, version = %local.etcd_version, "restarted etcd");
        Ok(())
    }

    /// Run `old`'s etcd with `--snapshot-count=1` until it has written a
    /// new snapshot, then stop it: the WAL a newer minor replays then starts
    /// past every entry an older minor wrote (3.7 cannot read some entries
    /// 3.5 wrote, and a cluster born on 3.5 that moved to 3.6 still has them
    /// in its WAL; etcd's 3.6 guide uses the same flag to drop v2 content).
    async fn snapshot_with(&self, old: &LocalEtcd) -> Result<(), String> {
        let snap_dir = self
            .etcd_data_dir(&old.cluster_token)
            .join("member")
            .join("snap");
        let before = newest_snapshot(&snap_dir);
        let p = self
            .spawn_etcd_with(old, &[("ETCD_SNAPSHOT_COUNT", "1")])
            .map_err(|e| e.to_string())?;
        tracing::info!(version = %old.etcd_version, "etcd restarted with --snapshot-count=1 to snapshot its WAL before the next minor");
        let waited = tokio::time::timeout(SNAPSHOT_WAIT, async {
            while newest_snapshot(&snap_dir) <= before {
                // Polling a real etcd's files: real time by nature (as for
                // the certificates above), never part of a simulation.
                #[allow(clippy::disallowed_methods)]
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await;
        p.stop(ETCD_STOP_TIMEOUT).await.map_err(|e| e.to_string())?;
        match waited {
            Ok(()) => {
                tracing::info!(snapshot = ?newest_snapshot(&snap_dir), "etcd snapshotted its WAL");
                Ok(())
            }
            Err(_) => Err(format!(
                "etcd {} wrote no snapshot within {SNAPSHOT_WAIT:?} with --snapshot-count=1",
                old.etcd_version
            )),
        }
    }

    async fn stop_for_good(&self, inner: &mut Inner) -> Result<(), String> {
        if let Some(p) = inner.process.take() {
            p.stop(ETCD_STOP_TIMEOUT).await.map_err(|e| e.to_string())?;
        }
        if let Some(local) = inner.state.etcd.take() {
            let from = self.etcd_data_dir(&local.cluster_token);
            if from.exists() {
                let trash = self.settings.data_dir.join("data-trashcan");
                std::fs::create_dir_all(&trash).map_err(|e| format!("{}: {e}", trash.display()))?;
                let to = trash.join(format!(
                    "{}-{}",
                    local.cluster_token, inner.state.highest_epoch
                ));
                let to = unique_path(to);
                std::fs::rename(&from, &to)
                    .map_err(|e| format!("moving {} aside: {e}", from.display()))?;
                tracing::info!(from = %from.display(), to = %to.display(), "etcd data moved to the trashcan");
            }
            self.persist(inner).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Restore a backup into a new data dir and start it as a quarantined
    /// member of the new cluster. The backup is downloaded and verified
    /// without the node's lock (a download of gigabytes takes minutes, and
    /// GetInfo keeps answering meanwhile) before any data dir is touched;
    /// then, under the lock and only if no newer leader spoke meanwhile, the
    /// old data goes to the trashcan (never deleted here) and the new member
    /// starts.
    async fn restore(
        &self,
        r: crate::peer::RestoreBackup,
        cancel: &CancellationToken,
        bytes: &AtomicU64,
    ) -> Result<(), Response> {
        let failed = Response::Failed;
        let _one = self.restoring.lock().await;
        {
            let inner = self.inner.lock().await;
            if inner
                .state
                .etcd
                .as_ref()
                .is_some_and(|l| l.cluster_token == r.cluster_token)
            {
                return Ok(()); // repeated request
            }
        }
        if !r.nodes.iter().any(|n| n.name == self.id) {
            return Err(failed(
                "this node is not in the cluster it was asked to restore".into(),
            ));
        }
        let version: etcd::EtcdVersion = r
            .etcd_version
            .parse()
            .map_err(|e: etcd::Error| failed(e.to_string()))?;
        let binaries = etcd::find_binaries(&version, &self.settings.bin_dirs)
            .map_err(|e| failed(e.to_string()))?;
        let scratch = self.settings.data_dir.join(RESTORE_DIR);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| failed(format!("{}: {e}", scratch.display())))?;
        let file = scratch.join(format!("{}.db", r.cluster_token));
        let result = async {
            tracing::info!(backup = %r.backup, token = %r.cluster_token, "downloading the backup for the restore");
            // Until the data dirs are touched, a newer leader's restore may
            // take over (see crate::jobs).
            let fetch = async {
                let got = self
                    .settings
                    .store
                    .download_backup_counting(&r.backup, &file, bytes)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                if !got.verified_checksum {
                    self.jobs.set_phase(&r.cluster_token, JobPhase::Verifying);
                    self.settings
                        .runtime
                        .verify_snapshot(&binaries, &file)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                }
                Ok(got)
            };
            let got = tokio::select! {
                got = fetch => got?,
                () = cancel.cancelled() => return Err(failed("cancelled: a newer leader's restore took over".into())),
            };
            tracing::info!(backup = %r.backup, bytes = got.snapshot_size, "backup downloaded and verified for the restore");
            self.jobs.set_phase(&r.cluster_token, JobPhase::Restoring);
            // Verified: only now touch the data dirs, if this leader still may.
            let mut inner = self.inner.lock().await;
            self.admit(&mut inner, &r.fence, true)?;
            self.stop_for_good(&mut inner).await.map_err(failed)?;
            let local = LocalEtcd {
                cluster_token: r.cluster_token.clone(),
                etcd_version: r.etcd_version.clone(),
                quarantined: true,
                nodes: r.nodes.clone(),
                new_cluster: true,
            };
            let spec = self.spec_for(&local);
            let bump = version.has_etcdutl().then_some(RESTORE_BUMP_REVISION);
            self.settings
                .runtime
                .restore_snapshot(&binaries, &file, &spec, bump)
                .await
                .map_err(|e| failed(e.to_string()))?;
            tracing::info!(backup = %r.backup, token = %r.cluster_token, bump_revision = bump, "backup restored into a new data dir");
            inner.state.etcd = Some(local.clone());
            self.persist(&inner).map_err(|e| failed(e.to_string()))?;
            inner.process = Some(self.spawn_etcd(&local).map_err(|e| failed(e.to_string()))?);
            Ok(())
        }
        .await;
        let _ = std::fs::remove_file(&file);
        result
    }

    /// Start a restore as a job: answered at once, once the request is
    /// known to be one this node can carry out; the leader follows the job
    /// in [`NodeInfo::jobs`].
    fn start_restore_job(&self, r: crate::peer::RestoreBackup) -> Response {
        if !r.nodes.iter().any(|n| n.name == self.id) {
            return Response::Failed(
                "this node is not in the cluster it was asked to restore".into(),
            );
        }
        let found = r
            .etcd_version
            .parse::<etcd::EtcdVersion>()
            .map_err(|e| e.to_string())
            .and_then(|v| {
                etcd::find_binaries(&v, &self.settings.bin_dirs).map_err(|e| e.to_string())
            });
        if let Err(e) = found {
            return Response::Failed(e);
        }
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return Response::Failed("this node runs no jobs (it is not shared)".into());
        };
        let key = r.cluster_token.clone();
        match self.jobs.begin(JobKind::Restore, &key, r.fence.epoch) {
            crate::jobs::Begin::Known(_) => Response::Done,
            crate::jobs::Begin::Busy(j) => Response::Failed(format!(
                "busy with the restore of cluster {} for the leader of epoch {}; try again when it ends",
                j.key, j.epoch
            )),
            crate::jobs::Begin::Start { cancel, bytes } => {
                tracing::info!(backup = %r.backup, token = %key, epoch = r.fence.epoch, "restore job started");
                let halted = self.jobs.halted();
                tokio::spawn(async move {
                    tokio::select! {
                        result = me.restore(r, &cancel, &bytes) => {
                            if let Err(resp) = &result {
                                tracing::warn!(token = %key, reason = ?resp, "restore job failed");
                            }
                            me.jobs.set_phase(&key, job_end(&result));
                        }
                        // The node stops: the job ends here, as the process would.
                        () = halted.cancelled() => {}
                    }
                });
                Response::Done
            }
        }
    }

    /// Start the check of this member's v2 store (`data`, of cluster
    /// `token`) as a job for the leader of `epoch`; answered at once.
    fn start_v2store_job(&self, token: String, data: PathBuf, epoch: u64) -> Response {
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return Response::Failed("this node runs no jobs (it is not shared)".into());
        };
        match self.jobs.begin(JobKind::CheckV2Store, &token, epoch) {
            crate::jobs::Begin::Known(_) => Response::Done,
            crate::jobs::Begin::Busy(j) => Response::Failed(format!(
                "busy with the {:?} job of cluster {} for the leader of epoch {}; try again when it ends",
                j.kind, j.key, j.epoch
            )),
            crate::jobs::Begin::Start { .. } => {
                tracing::info!(%token, epoch, "v2 store check job started");
                // It only reads the member's data: a newer leader's job that
                // takes over lets it end (and empty its scratch dir).
                let halted = self.jobs.halted();
                tokio::spawn(async move {
                    tokio::select! {
                        verdict = me.check_v2store(&data) => {
                            let phase = match verdict {
                                Ok(etcd::V2StoreVerdict::Clean) => JobPhase::Done,
                                Ok(etcd::V2StoreVerdict::Custom(what)) => JobPhase::Found(what),
                                Err(e) => {
                                    tracing::warn!(%token, reason = %e, "v2 store check job failed");
                                    JobPhase::Failed(e)
                                }
                            };
                            me.jobs.set_phase(&token, phase);
                        }
                        // The node stops: the job ends here, as the process
                        // would (the scratch dir is emptied at the next start).
                        () = halted.cancelled() => {}
                    }
                });
                Response::Done
            }
        }
    }

    /// Start a restore drill of `backup` in the background (a job: the
    /// leader does not wait; the verdict goes to the store). Skipped while
    /// another drill runs here.
    fn start_drill(&self, backup: &str) {
        {
            let mut running = self.drill_running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = running.as_ref() {
                tracing::info!(%backup, running = %other, "restore drill skipped: another one runs here");
                return;
            }
            *running = Some(backup.to_string());
        }
        let store = self.settings.store.clone();
        let settings = crate::drill::DrillSettings {
            bin_dirs: self.settings.bin_dirs.clone(),
            scratch_root: self.settings.data_dir.join(DRILL_DIR),
            by: self.id.clone(),
            clock: std::sync::Arc::new(crate::clock::SystemClock),
        };
        let running = self.drill_running.clone();
        let backup = backup.to_string();
        tokio::spawn(async move {
            tracing::info!(%backup, "restore drill started");
            match crate::drill::verify_backup(&store, &backup, &settings).await {
                Ok(_) => {}
                // The operator keeps the key off this manager: no verdict,
                // which the not-verified alert shows in time.
                Err(e @ backup::Error::Encryption { .. }) => {
                    tracing::info!(%backup, reason = %e, "restore drill not run: the backup is encrypted and this manager cannot decrypt it");
                }
                Err(e) => {
                    tracing::warn!(%backup, error = %e, "could not keep the restore drill's verdict in the store");
                }
            }
            *running.lock().unwrap_or_else(|p| p.into_inner()) = None;
        });
    }

    /// The node stops: its jobs end at their next await point, as they
    /// would if the process ended there.
    pub fn halt(&self) {
        self.jobs.halt();
    }

    /// Stop the local etcd (shutdown of the manager); the assignment stays.
    pub async fn shutdown(&self) {
        self.halt();
        let mut inner = self.inner.lock().await;
        if let Some(p) = inner.process.take()
            && let Err(e) = p.stop(ETCD_STOP_TIMEOUT).await
        {
            tracing::warn!(error = %e, "stopping etcd");
        }
    }
}

/// Delete all but the newest `keep` entries of the trashcan (by modification
/// time); returns what was deleted. A missing trashcan is empty.
pub fn gc_trashcan(dir: &std::path::Path, keep: usize) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    all.sort();
    let doomed: Vec<PathBuf> = all
        .iter()
        .rev()
        .skip(keep)
        .map(|(_, p)| p.clone())
        .collect();
    for p in &doomed {
        if p.is_dir() {
            std::fs::remove_dir_all(p)?;
        } else {
            std::fs::remove_file(p)?;
        }
    }
    Ok(doomed)
}

/// Delete what a restore cut short left in `dir` (downloads, partial files).
/// Whether a member moving from `from` to `to` must first snapshot on
/// `from`: a move from 3.6 (or older) to 3.7 or later.
fn snapshot_before(from: &str, to: &str) -> bool {
    match (
        from.parse::<etcd::EtcdVersion>(),
        to.parse::<etcd::EtcdVersion>(),
    ) {
        (Ok(f), Ok(t)) => f.major == 3 && t.major == 3 && f.minor < 7 && t.minor >= 7,
        _ => false,
    }
}

/// The newest `<term>-<index>.snap` in etcd's snap folder (both fixed-width
/// hex, so names sort as the snapshots do), if any.
fn newest_snapshot(dir: &Path) -> Option<String> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".snap"))
        .max()
}

fn remove_restore_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let gone = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match gone {
            Ok(()) => {
                tracing::info!(path = %p.display(), "removed a leftover of an interrupted restore")
            }
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a restore leftover")
            }
        }
    }
}

/// How a restore ended, as its job reports it.
fn job_end(result: &Result<(), Response>) -> JobPhase {
    match result {
        Ok(()) => JobPhase::Done,
        Err(Response::Failed(m)) => JobPhase::Failed(m.clone()),
        Err(Response::Fenced { highest_epoch }) => JobPhase::Failed(format!(
            "refused: a leader of epoch {highest_epoch} spoke to this node since"
        )),
        Err(other) => JobPhase::Failed(format!("{other:?}")),
    }
}

fn unreachable_info() -> Result<(), String> {
    Err("GetInfo is answered before fencing".into())
}

fn unique_path(p: PathBuf) -> PathBuf {
    if !p.exists() {
        return p;
    }
    (1..)
        .map(|i| PathBuf::from(format!("{}.{i}", p.display())))
        .find(|c| !c.exists())
        .unwrap_or(p)
}

impl crate::peer::Handler for Node {
    async fn handle(&self, caller: &crate::peer::Caller, req: Request) -> Response {
        Node::handle(self, caller, req).await
    }
}

/// Count a refused peer request by reason.
fn refused(reason: &'static str) {
    metrics::counter!(crate::metrics::PEER_API_REFUSED, "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every id we draw passes the identifier check (base64url ids may start
    /// with '-' or '_'; refusing those made one node in 32 invisible).
    #[test]
    fn drawn_node_ids_are_valid_identifiers() {
        for _ in 0..2000 {
            let id = new_node_id();
            assert_eq!(
                etcd::check_ident(etcd::IdentKind::NodeId, &id),
                Ok(()),
                "{id}"
            );
        }
    }

    #[test]
    fn trashcan_keeps_the_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let trash = dir.path().join("data-trashcan");
        for i in 0..5 {
            let d = trash.join(format!("tok{i}-1"));
            std::fs::create_dir_all(d.join("member")).unwrap();
            std::fs::write(d.join("member/db"), b"x").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i);
            std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
        }
        let mut gone = gc_trashcan(&trash, 3).unwrap();
        gone.sort();
        assert_eq!(gone, vec![trash.join("tok0-1"), trash.join("tok1-1")]);
        let mut left: Vec<_> = std::fs::read_dir(&trash)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["tok2-1", "tok3-1", "tok4-1"]);
        assert!(
            gc_trashcan(&dir.path().join("missing"), 3)
                .unwrap()
                .is_empty()
        );
    }
}

#[cfg(test)]
mod leadership_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(dir: &std::path::Path) -> Node {
        Node::open(NodeSettings {
            cluster_name: "c".into(),
            data_dir: dir.to_path_buf(),
            node_config: EtcdNodeConfig::default(),
            fixed_id: None,
            dns_suffix: String::new(),
            listen_metrics_urls: vec![],
            address: std::net::IpAddr::from([127, 0, 0, 1]),
            listen_address: None,
            bin_dirs: vec![],
            etcd_env_overrides: vec![],
            store: backup::BackupStore::open("memory://x", &Default::default()).unwrap(),
            etcd_pki: None,
            runtime: std::sync::Arc::new(crate::edges::ProcessRuntime),
            rules: Default::default(),
        })
        .unwrap()
    }

    /// The installed versions are scanned once, and again only when a
    /// version folder comes (or a binary is replaced).
    #[test]
    fn installed_versions_are_scanned_again_only_on_a_change() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bins = tempfile::tempdir().unwrap();
        let add = |v: &str| {
            let d = bins.path().join(format!("etcd-v{v}"));
            std::fs::create_dir_all(&d).unwrap();
            let f = d.join("etcd");
            std::fs::write(&f, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        add("9.1.1");
        let mut n = node(dir.path());
        n.settings.bin_dirs = vec![bins.path().to_path_buf()];
        let scans = || n.installed_scans.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n.installed().contains(&"9.1.1".to_string()));
        assert!(n.installed().contains(&"9.1.1".to_string()));
        assert_eq!(scans(), 1);
        add("9.2.0");
        assert!(n.installed().contains(&"9.2.0".to_string()));
        assert_eq!(scans(), 2);
        n.installed();
        assert_eq!(scans(), 2);
    }

    #[test]
    fn a_candidate_is_refused_when_a_lower_id_is_alive() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path());
        n.set_alive_view(vec!["b".into(), "c".into(), "d".into()]);
        assert!(
            matches!(n.judge_leadership("c", "b", "S"), Response::Failed(m) if m.contains("store's id")),
            "no store id read yet: nobody is accepted"
        );
        n.set_store_id("S".into());
        assert_eq!(n.judge_leadership("c", "b", "S"), Response::Done);
        assert!(
            matches!(n.judge_leadership("c", "c", "S"), Response::Failed(m) if m.contains("b is alive"))
        );
        assert!(matches!(
            n.judge_leadership("other", "a", "S"),
            Response::Failed(_)
        ));
        // A manager on another store (a per-host file:// store) is never accepted.
        assert!(
            matches!(n.judge_leadership("c", "b", "T"), Response::Failed(m) if m.contains("another backup store"))
        );
    }

    #[tokio::test]
    async fn the_store_id_is_created_once_and_shared() {
        let store = backup::BackupStore::open("memory://x", &Default::default()).unwrap();
        let a = store.store_id("first".into()).await.unwrap();
        let b = store.store_id("second".into()).await.unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("first", "first"));
        let other = backup::BackupStore::open("memory://y", &Default::default()).unwrap();
        assert_eq!(other.store_id("third".into()).await.unwrap(), "third");
    }
}

#[cfg(test)]
mod fencing_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::peer::{Caller, Fence};
    use object_store::ObjectStoreExt;

    fn store() -> backup::BackupStore {
        backup::BackupStore::new(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            object_store::path::Path::from("c"),
            "memory://c".into(),
        )
    }

    fn node(dir: &std::path::Path, store: &backup::BackupStore) -> Node {
        Node::open(NodeSettings {
            cluster_name: "c".into(),
            data_dir: dir.to_path_buf(),
            node_config: EtcdNodeConfig::default(),
            fixed_id: None,
            dns_suffix: String::new(),
            listen_metrics_urls: vec![],
            address: std::net::IpAddr::from([127, 0, 0, 1]),
            listen_address: None,
            bin_dirs: vec![],
            etcd_env_overrides: vec![],
            store: store.clone(),
            etcd_pki: None,
            runtime: std::sync::Arc::new(crate::edges::ProcessRuntime),
            rules: Default::default(),
        })
        .unwrap()
    }

    /// Write lease record `seq` naming `holder` at `epoch`, as the lease does.
    async fn lease(store: &backup::BackupStore, seq: u64, holder: &str, epoch: u64) {
        let record = lock::LeaseRecord {
            holder: holder.into(),
            epoch,
            seq,
            nonce: format!("{holder}-{seq}"),
            duration_ms: 5000,
            released: false,
        };
        store
            .object_store()
            .put(
                &lock::record_key(&store.lease_prefix(), seq),
                record.to_json().into(),
            )
            .await
            .unwrap();
    }

    fn fence(leader: &str, epoch: u64, seq: u64) -> Fence {
        Fence {
            cluster_name: "c".into(),
            leader_id: leader.into(),
            epoch,
            lease_seq: seq,
        }
    }

    fn stop(epoch: u64, seq: u64) -> Request {
        Request::StopEtcd(fence("l", epoch, seq))
    }

    fn tls(id: &str) -> Caller {
        Caller::node("127.0.0.1:1".parse().unwrap(), id)
    }

    #[tokio::test]
    async fn a_former_leaders_requests_are_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 9, "l", 5).await;
        let n = node(dir.path(), &store);
        let l = tls("l");
        assert_eq!(n.handle(&l, stop(5, 9)).await, Response::Done);
        assert_eq!(n.highest_epoch().await, 5);
        assert_eq!(
            n.handle(&l, stop(4, 3)).await,
            Response::Fenced { highest_epoch: 5 }
        );
        lease(&store, 10, "l", 5).await;
        assert_eq!(
            n.handle(&l, stop(5, 10)).await,
            Response::Done,
            "the current leader keeps working (a later record of the same epoch)"
        );
        drop(n);
        // The highest epoch survives a restart of the manager.
        let n = node(dir.path(), &store);
        assert_eq!(
            n.handle(&l, stop(4, 3)).await,
            Response::Fenced { highest_epoch: 5 }
        );
        let wrong_cluster = Request::StopEtcd(Fence {
            cluster_name: "other".into(),
            ..fence("l", 9, 9)
        });
        assert!(matches!(
            n.handle(&l, wrong_cluster).await,
            Response::Failed(_)
        ));
        assert_eq!(
            n.highest_epoch().await,
            5,
            "a request for another cluster raises nothing"
        );
    }

    /// A fence naming lease record u64::MAX (never written) passed as the
    /// current record and then held every real request of its leader back
    /// as late until the epoch changed: a record beyond the newest is
    /// refused, and the leader's next real request goes through.
    #[tokio::test]
    async fn a_fence_naming_a_record_never_written_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 4, "l", 2).await;
        let n = node(dir.path(), &store);
        let l = tls("l");
        assert_eq!(n.handle(&l, stop(2, 4)).await, Response::Done);
        let forged = n.handle(&l, stop(2, u64::MAX)).await;
        assert!(
            matches!(&forged, Response::Failed(m) if m.contains("never written")),
            "{forged:?}"
        );
        lease(&store, 5, "l", 2).await;
        assert_eq!(n.handle(&l, stop(2, 5)).await, Response::Done);
        // A record garbage-collected since (behind the newest) still passes.
        assert_eq!(n.handle(&l, stop(2, 5)).await, Response::Done);
    }

    /// Any holder of an etcd-manager-ca certificate could stop every etcd and
    /// fence every node at u64::MAX: now the fence must name the caller, and an
    /// epoch the store does not hold is refused without raising anything.
    #[tokio::test]
    async fn a_certificate_is_not_a_leader() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 1, "l", 3).await;
        let n = node(dir.path(), &store);
        // A foreign node speaking for the leader.
        let resp = n.handle(&tls("mallory"), stop(3, 1)).await;
        assert!(
            matches!(&resp, Response::Failed(m) if m.contains("names node mallory")),
            "{resp:?}"
        );
        assert_eq!(n.highest_epoch().await, 0);
        // Its own name, at an epoch the store does not hold.
        for (epoch, seq) in [(u64::MAX, 1), (4, 1), (4, 2), (u64::MAX, u64::MAX)] {
            let req = Request::StopEtcd(fence("mallory", epoch, seq));
            let resp = n.handle(&tls("mallory"), req).await;
            assert!(
                matches!(&resp, Response::Failed(m) if m.contains("not confirmed") || m.contains("not mallory")),
                "{resp:?}"
            );
        }
        assert_eq!(n.highest_epoch().await, 0, "no forged epoch was recorded");
        // A GcTrashcan with keep 0 from a stranger deletes nothing.
        let trash = dir.path().join("data-trashcan/old-1");
        std::fs::create_dir_all(&trash).unwrap();
        let gc = Request::GcTrashcan {
            fence: fence("mallory", 3, 1),
            keep: 0,
        };
        assert!(matches!(
            n.handle(&tls("mallory"), gc).await,
            Response::Failed(_)
        ));
        assert!(trash.exists());
        // The real leader is accepted; and then nobody else at its epoch.
        assert_eq!(n.handle(&tls("l"), stop(3, 1)).await, Response::Done);
        let resp = n
            .handle(&tls("mallory"), Request::StopEtcd(fence("mallory", 3, 1)))
            .await;
        assert!(
            matches!(&resp, Response::Failed(m) if m.contains("names l at epoch 3, not mallory")),
            "{resp:?}"
        );
        assert_eq!(n.highest_epoch().await, 3);
        // Even the leader's own GcTrashcan keeps the newest old data dir.
        let gc = Request::GcTrashcan {
            fence: fence("l", 3, 1),
            keep: 0,
        };
        assert_eq!(n.handle(&tls("l"), gc).await, Response::Done);
        assert!(trash.exists(), "keep 0 still keeps one");
        // Leadership requests, too, only for oneself.
        let lead = Request::Leadership {
            cluster_name: "c".into(),
            candidate: "aaa".into(),
            store_id: "S".into(),
        };
        assert!(
            matches!(n.handle(&tls("mallory"), lead).await, Response::Failed(m) if m.contains("names node mallory"))
        );
    }

    /// A request of the current leader held up on its way (sent under an
    /// older lease record than one the node already admitted) is refused,
    /// across a restart too; one of the same record or newer goes through.
    #[tokio::test]
    async fn a_request_that_arrives_after_a_newer_one_of_its_leader_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 3, "l", 2).await;
        let n = node(dir.path(), &store);
        assert_eq!(n.handle(&tls("l"), stop(2, 3)).await, Response::Done);
        for seq in 4..=8 {
            lease(&store, seq, "l", 2).await;
        }
        assert_eq!(n.handle(&tls("l"), stop(2, 7)).await, Response::Done);
        assert_eq!(n.handle(&tls("l"), stop(2, 7)).await, Response::Done);
        let late = n.handle(&tls("l"), stop(2, 5)).await;
        assert!(
            matches!(&late, Response::Failed(m) if m.contains("held up on its way") && m.contains("record 7")),
            "{late:?}"
        );
        drop(n);
        let n = node(dir.path(), &store);
        let late = n.handle(&tls("l"), stop(2, 6)).await;
        assert!(matches!(&late, Response::Failed(_)), "{late:?}");
        assert_eq!(n.handle(&tls("l"), stop(2, 8)).await, Response::Done);
    }

    #[tokio::test]
    async fn a_store_that_cannot_confirm_refuses_new_epochs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 1, "l", 2).await;
        let n = node(dir.path(), &store);
        assert_eq!(n.handle(&tls("l"), stop(2, 1)).await, Response::Done);
        // The record is gone (garbage-collected): the current one decides.
        lease(&store, 40, "k", 3).await;
        assert_eq!(
            n.handle(&tls("k"), Request::StopEtcd(fence("k", 3, 20)))
                .await,
            Response::Done
        );
        assert_eq!(n.highest_epoch().await, 3);
        // With no record at all an epoch above ours is refused; ours still works.
        let other = tempfile::tempdir().unwrap();
        let empty = node(other.path(), &super::fencing_tests::store());
        let resp = empty.handle(&tls("l"), stop(1, 1)).await;
        assert!(
            matches!(&resp, Response::Failed(m) if m.contains("no lease record")),
            "{resp:?}"
        );
    }

    /// A restore job is answered at once and reports how it ended in
    /// GetInfo; a request this node cannot carry out fails at once.
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // a deadline in real time
    async fn a_restore_job_answers_at_once_and_reports_its_end() {
        use crate::core::model::{JobKind, JobPhase};
        let dir = tempfile::tempdir().unwrap();
        let bins = tempfile::tempdir().unwrap();
        let etcd = bins.path().join("etcd-v3.5.30/etcd");
        std::fs::create_dir_all(etcd.parent().unwrap()).unwrap();
        std::fs::write(&etcd, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&etcd, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let store = store();
        lease(&store, 1, "l", 2).await;
        let mut n = node(dir.path(), &store);
        n.settings.bin_dirs = vec![bins.path().to_path_buf()];
        let n = n.shared();
        let job = |token: &str, name: &str| {
            Request::RestoreJob(crate::peer::RestoreBackup {
                fence: fence("l", 2, 1),
                cluster_token: token.into(),
                backup: "2026-01-02T03:04:05Z-000001".into(),
                etcd_version: "3.5.30".into(),
                nodes: vec![EtcdNodeConfig {
                    name: name.into(),
                    ..Default::default()
                }],
            })
        };
        let resp = n.handle(&tls("l"), job("tok1", "someone-else")).await;
        assert!(
            matches!(&resp, Response::Failed(m) if m.contains("not in the cluster")),
            "{resp:?}"
        );
        let id = n.id().to_string();
        assert_eq!(n.handle(&tls("l"), job("tok1", &id)).await, Response::Done);
        // The backup is not in the store: the job fails, and says why.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let phase = loop {
            let info = n.info().await;
            let j = info
                .job(JobKind::Restore, "tok1")
                .cloned()
                .expect("the job is reported");
            if j.phase.ended() {
                break j.phase;
            }
            assert!(std::time::Instant::now() < deadline, "the job ends: {j:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            matches!(&phase, JobPhase::Failed(m) if m.contains("2026-01-02T03:04:05Z-000001")),
            "{phase:?}"
        );
        assert_eq!(n.info().await.etcd_state, None, "nothing was touched");
        // A failed job is started again when asked again.
        assert_eq!(n.handle(&tls("l"), job("tok1", &id)).await, Response::Done);
    }

    /// Upstream's volume: adopted with its member when the state names this
    /// node, refused with the names when it does not; upstream's file is
    /// kept in step with ours.
    #[tokio::test]
    async fn an_upstream_state_is_adopted_only_by_its_member() {
        let store = store();
        let local = LocalEtcd {
            cluster_token: "tok".into(),
            etcd_version: "3.5.30".into(),
            quarantined: true,
            nodes: vec![EtcdNodeConfig {
                name: "m-up".into(),
                ..EtcdNodeConfig::default()
            }],
            new_cluster: false,
        };
        let pb = crate::upstream_state::to_upstream(&local, false);
        // Another member's volume: refused, nothing written.
        let dir = tempfile::tempdir().unwrap();
        crate::upstream_state::write(dir.path(), &pb).unwrap();
        std::fs::write(dir.path().join("myid"), "someone-else").unwrap();
        let e = Node::open(NodeSettings {
            data_dir: dir.path().to_path_buf(),
            ..node(tempfile::tempdir().unwrap().path(), &store)
                .settings
                .clone()
        })
        .err()
        .expect("refused");
        assert!(
            e.to_string().contains("m-up") && e.to_string().contains("someone-else"),
            "{e}"
        );
        assert!(!dir.path().join(STATE_FILE).exists());
        // Its own volume: adopted.
        std::fs::write(dir.path().join("myid"), "m-up").unwrap();
        let n = node(dir.path(), &store);
        assert_eq!(n.id(), "m-up");
        assert_eq!(n.inner.lock().await.state.etcd, Some(local.clone()));
        // A change of ours reaches upstream's file.
        {
            let mut inner = n.inner.lock().await;
            inner.state.etcd.as_mut().unwrap().quarantined = false;
            n.persist(&inner).unwrap();
        }
        let back = crate::upstream_state::read(dir.path()).unwrap().unwrap();
        assert!(!back.quarantined);
        // Opened again, our own file is what counts.
        drop(n);
        assert_eq!(node(dir.path(), &store).id(), "m-up");
    }

    /// A setting the next version lacks: the check names it, and a move to
    /// that version is refused before etcd is touched.
    #[tokio::test]
    async fn settings_a_version_would_lose_are_named_and_refuse_the_move() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 1, "l", 1).await;
        let mut n = node(dir.path(), &store);
        n.settings.etcd_env_overrides = vec![(
            "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL".into(),
            "5s".into(),
        )];
        let l = tls("l");
        let check = |version: &str| Request::CheckSettings {
            version: version.into(),
        };
        assert_eq!(
            n.handle(&l, check("3.7.3")).await,
            Response::Failed("this node runs no etcd".into())
        );
        n.inner.lock().await.state.etcd = Some(LocalEtcd {
            cluster_token: "tok".into(),
            etcd_version: "3.6.16".into(),
            quarantined: false,
            nodes: vec![],
            new_cluster: false,
        });
        let Response::Settings { lost } = n.handle(&l, check("3.7.3")).await else {
            panic!("no settings answer");
        };
        assert_eq!(lost.len(), 1);
        assert!(
            lost[0].contains("use ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL instead"),
            "{lost:?}"
        );
        assert_eq!(
            n.handle(&l, check("3.6.16")).await,
            Response::Settings { lost: vec![] }
        );
        assert!(matches!(
            n.handle(&l, check("../3.7")).await,
            Response::Failed(m) if m.starts_with("bad request")
        ));
        let up = Request::Reconfigure(crate::peer::Reconfigure {
            fence: fence("l", 1, 1),
            quarantined: None,
            etcd_version: Some("3.7.3".into()),
        });
        match n.handle(&l, up).await {
            Response::Failed(m) => assert!(
                m.contains("refused to move etcd 3.6.16 -> 3.7.3")
                    && m.contains("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL"),
                "{m}"
            ),
            other => panic!("moved anyway: {other:?}"),
        }
        assert_eq!(
            n.inner
                .lock()
                .await
                .state
                .etcd
                .as_ref()
                .unwrap()
                .etcd_version,
            "3.6.16"
        );
    }

    #[tokio::test]
    async fn path_like_tokens_are_refused_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 1, "l", 1).await;
        let n = node(dir.path(), &store);
        let victim = dir.path().join("victim.db");
        std::fs::write(&victim, b"keep me").unwrap();
        for token in ["../x", "..", "a/b", "", ".hidden"] {
            let req = Request::RestoreBackup(crate::peer::RestoreBackup {
                fence: fence("l", 1, 1),
                cluster_token: token.into(),
                backup: "2026-01-02T03:04:05Z-000001".into(),
                etcd_version: "3.5.30".into(),
                nodes: vec![],
            });
            let resp = n.handle(&tls("l"), req).await;
            assert!(
                matches!(&resp, Response::Failed(m) if m.contains("invalid cluster token")),
                "{token}: {resp:?}"
            );
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(
            n.highest_epoch().await,
            0,
            "refused before the fence was recorded"
        );
    }
}
