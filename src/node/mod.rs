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

//!
//! Its rooms: `state` (the state file), `fence` (who may ask what),
//! `requests` (the peer API's requests), `process` (the etcd process),
//! `restore` (restores, drills, the v2 check), `installed` (etcd
//! versions on this machine) and [`upstream_state`] (upstream's files on the
//! volume). It starts etcd and its tools through [`crate::edges`], reads
//! the store through the `backup` crate and its own files directly; the
//! leader reaches it only through the peer API.

mod fence;
mod installed;
pub mod jobs;
mod process;
mod requests;
mod restore;
mod state;
#[cfg(test)]
mod tests;
pub mod upstream_state;

pub use installed::installed_versions;
pub use process::ETCD_STOP_TIMEOUT;
pub use restore::{RESTORE_BUMP_REVISION, gc_trashcan};
pub use state::{LocalEtcd, NodeState};

use installed::InstallSignature;
use process::V2CHECK_DIR;
use restore::{DRILL_DIR, RESTORE_DIR, remove_restore_leftovers};
use state::{STATE_FILE, STATE_FORMAT, check_writable, new_node_id};

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::Mutex;

use backup::layout;

use crate::peer::{EtcdNodeConfig, EtcdState, NodeInfo, Refusal, Request, Response};

/// The retired cluster tokens among the manager files (see
/// `controller::Observation::retired_tokens` and [`Node::retire_if_replaced`]).
pub fn retired_tokens(
    files: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    tokens_named(files, layout::RETIRED_CLUSTER_FILE)
}

/// The cluster tokens recorded as served among the manager files.
pub fn served_tokens(
    files: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    tokens_named(files, layout::SERVED_CLUSTER_FILE)
}

/// The names after `<prefix>--` that are cluster tokens.
fn tokens_named(
    files: &std::collections::BTreeSet<String>,
    prefix: &str,
) -> std::collections::BTreeSet<String> {
    layout::request_suffixes(files, prefix)
        .filter(|t| etcd::check_ident(etcd::IdentKind::ClusterToken, t).is_ok())
        .map(str::to_string)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data dir {path}: {reason}")]
    DataDir { path: PathBuf, reason: String },
    #[error(transparent)]
    Etcd(#[from] etcd::Error),
    #[error("etcd certificates: {0}")]
    Pki(#[from] crate::platform::pki::PkiError),
    #[error(
        "data dir {path} belongs to cluster '{found}', not '{want}'; use another --data-dir or the right --cluster-name"
    )]
    WrongCluster {
        path: PathBuf,
        found: String,
        want: String,
    },
    /// A leader asked this node to join or restore a cluster it is not in,
    /// or one other than the cluster it is a member of.
    #[error("already a member of cluster {0}")]
    AlreadyMember(String),
    #[error("not prepared for cluster {0}; send Prepare first")]
    NotPrepared(String),
    #[error("this node is not in the cluster it was asked to join")]
    NotInCluster,
    #[error("{} exists already; refusing to reuse old data", .0.display())]
    DataExists(PathBuf),
    #[error("this node runs no etcd")]
    NoEtcd,
    /// The node's own settings would not survive the version change.
    #[error("refused to move etcd {from} -> {to}: {}; nothing was changed", .lost.join("; "))]
    SettingsLost {
        from: String,
        to: String,
        lost: Vec<String>,
    },
    /// The snapshot before a minor change failed; the old version runs again.
    #[error("{from} -> {to}: {source}; etcd {from} runs again")]
    SnapshotBefore {
        from: String,
        to: String,
        source: Box<NodeError>,
    },
    #[error("etcd {version} wrote no snapshot within {after:?} with --snapshot-count=1")]
    NoSnapshot {
        version: String,
        after: std::time::Duration,
    },
    #[error(
        "no installed etcd 3.5 has `etcdutl check v2store` (3.5.30 and later do); install one (deploy/install-etcd.sh 3.5.35) on every master"
    )]
    NoV2StoreChecker,
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<NodeError> for crate::peer::Refusal {
    /// The refusal a leader gets: typed where it decides by it, else the words.
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NoEtcd => crate::peer::Refusal::NoEtcd,
            other => crate::peer::Refusal::Failed(other.to_string()),
        }
    }
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
    pub etcd_pki: Option<std::sync::Arc<crate::platform::pki::EtcdPki>>,
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
    /// The restore job running or run last (see [`crate::node::jobs`]).
    jobs: crate::node::jobs::JobBoard,
    /// This node as shared with the peer server (see [`Node::shared`]):
    /// what a job holds while it runs in the background.
    me: std::sync::OnceLock<std::sync::Weak<Node>>,
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
                let bad = |e: upstream_state::UpstreamStateError| NodeError::DataDir {
                    path: settings.data_dir.clone(),
                    reason: e.to_string(),
                };
                // A volume upstream etcd-manager wrote: its member, its data.
                let adopted = match upstream_state::read(&settings.data_dir).map_err(bad)? {
                    Some(pb) => upstream_state::from_upstream(&pb).map_err(bad)?,
                    None => None,
                };
                let myid = upstream_state::read_myid(&settings.data_dir).map_err(bad)?;
                let id = settings
                    .fixed_id
                    .clone()
                    .or(myid)
                    .unwrap_or_else(new_node_id);
                if let Some(l) = &adopted
                    && !l.nodes.iter().any(|n| n.name == id)
                {
                    return Err(NodeError::DataDir {
                        path: settings.data_dir.clone(),
                        reason: format!(
                            "upstream's state file names the members {:?}, not this node ({id}); the volume belongs to another member",
                            l.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>()
                        ),
                    });
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
            && let Err(e) = upstream_state::ensure_myid(&settings.data_dir, &state.id)
        {
            tracing::warn!(error = %e, "cannot write upstream's myid beside our state; going back to upstream's image would not find this member");
        }
        remove_restore_leftovers(&settings.data_dir.join(RESTORE_DIR));
        let _ = std::fs::remove_dir_all(settings.data_dir.join(V2CHECK_DIR));
        let _ = std::fs::remove_dir_all(settings.data_dir.join(DRILL_DIR));
        let id = state.id.clone();
        let mut settings = settings;
        let (n, suffix) = (&mut settings.node_config, settings.dns_suffix.as_str());
        n.peer_urls = crate::platform::hosts::expand_name(&n.peer_urls, &id, suffix);
        n.client_urls = crate::platform::hosts::expand_name(&n.client_urls, &id, suffix);
        n.quarantined_client_urls =
            crate::platform::hosts::expand_name(&n.quarantined_client_urls, &id, suffix);
        settings.listen_metrics_urls =
            crate::platform::hosts::expand_name(&settings.listen_metrics_urls, &id, suffix);
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
            return Response::Failed(Refusal::OtherCluster {
                ours: self.settings.cluster_name.clone(),
                theirs: cluster_name.to_string(),
            });
        }
        match self.store_id() {
            None => {
                return Response::Failed(Refusal::StoreIdUnknown);
            }
            Some(ours) if ours != store_id => {
                tracing::warn!(candidate, ours = %ours, theirs = %store_id,
                    "a candidate uses another backup store: every manager's --backup-store must be one shared store; nobody leads until they are");
                return Response::Failed(Refusal::OtherStore {
                    candidate: candidate.to_string(),
                    theirs: store_id.to_string(),
                    ours,
                });
            }
            Some(_) => {}
        }
        let view = self
            .alive_view
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        match crate::leadership::judge(view.iter().map(String::as_str), candidate) {
            Err(crate::leadership::LowerIdAlive { lower, candidate }) => {
                Response::Failed(Refusal::NotCandidate { lower, candidate })
            }
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
        let file = layout::retired_cluster_file(&token);
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
        // An etcd the manager before ran (it died on its own: kill -9, the
        // OOM killer) still holds the ports and the data: stopped first.
        let stopped = self
            .settings
            .runtime
            .stop_orphans(&self.settings.data_dir.join("data"))
            .await?;
        if stopped > 0 {
            tracing::warn!(
                stopped,
                "stopped the etcd the manager before left running; starting this manager's own"
            );
        }
        if let Some(local) = inner.state.etcd.clone() {
            tracing::info!(token = %local.cluster_token, version = %local.etcd_version, "resuming etcd");
            let p = self.spawn_etcd(&local)?;
            inner.process = Some(p);
        }
        Ok(())
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

    /// Write our state, and upstream's `state` beside it (so upstream's
    /// image reads the volume back in place).
    fn persist(&self, inner: &Inner) -> Result<(), NodeError> {
        etcd::write_json_atomic(&self.state_path(), &inner.state)?;
        let dir = &self.settings.data_dir;
        let pb = match &inner.state.etcd {
            Some(l) => Some(upstream_state::to_upstream(
                l,
                self.settings.etcd_pki.is_some(),
            )),
            // No etcd here any more: upstream's file must not say otherwise.
            None => dir
                .join(upstream_state::STATE_FILE)
                .exists()
                .then(upstream_state::PbEtcdState::default),
        };
        if let Some(pb) = pb
            && let Err(e) = upstream_state::write(dir, &pb)
        {
            tracing::warn!(error = %e, "cannot write upstream's state file beside ours; going back to upstream's image would need a restore");
        }
        Ok(())
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

impl crate::peer::Handler for Node {
    async fn handle(&self, caller: &crate::peer::Caller, req: Request) -> Response {
        Node::handle(self, caller, req).await
    }
}
