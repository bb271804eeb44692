//! The model the core decides on: what each node says about itself and the
//! fence a leader's orders carry. Plain data; the peer API carries it on
//! the wire (`crate::peer` re-exports it).

use serde::{Deserialize, Serialize};

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
    /// The long operations this node runs or ran last (see [`Job`]). None
    /// from a manager older than jobs: it restores within one request.
    /// Last, so that older managers still read this answer (they ignore
    /// trailing bytes) and their answers are still read (`crate::peer`).
    pub jobs: Option<Vec<Job>>,
}

/// A long operation a node runs in the background: the leader starts it
/// with one short request and then follows it through [`NodeInfo::jobs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub kind: JobKind,
    /// What the job makes: for a restore, the new cluster's token.
    pub key: String,
    /// The epoch of the leader that started it.
    pub epoch: u64,
    pub phase: JobPhase,
    /// Bytes of the backup downloaded so far (a restore; 0 for a check).
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Download a backup, check it, restore it as a new member, start it.
    Restore,
    /// Copy the member's data and have etcdutl check its v2 store (before
    /// a move to 3.6, which drops the v2 store). Key: the member's cluster
    /// token. Last, so that a manager that knows only restores reads every
    /// answer without such a job as before (and one with it as an older
    /// manager's answer: `crate::peer::decode_response`).
    CheckV2Store,
}

impl JobKind {
    /// The kind in words, for logs and the status report.
    pub fn words(self) -> &'static str {
        match self {
            JobKind::Restore => "restore",
            JobKind::CheckV2Store => "v2 store check",
        }
    }

    /// The phase a job of this kind starts in.
    pub fn first_phase(self) -> JobPhase {
        match self {
            JobKind::Restore => JobPhase::Downloading,
            JobKind::CheckV2Store => JobPhase::Checking,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPhase {
    Downloading,
    /// Checking the snapshot's integrity with etcd's own tool (a backup
    /// without a checksum in its side file).
    Verifying,
    /// Stopping the old member and writing the new data dir.
    Restoring,
    Done,
    Failed(String),
    /// A check runs (copying the data, then etcd's tool on the copy).
    Checking,
    /// The check ended and found what it names: for the v2 store, custom
    /// content (a clean store ends [`JobPhase::Done`]).
    Found(String),
}

impl JobPhase {
    /// Done, found or failed: the job will not change any more.
    pub fn ended(&self) -> bool {
        matches!(
            self,
            JobPhase::Done | JobPhase::Failed(_) | JobPhase::Found(_)
        )
    }
}

impl NodeInfo {
    /// The newest job of `kind` for `key`, if the node has it.
    pub fn job(&self, kind: JobKind, key: &str) -> Option<&Job> {
        self.jobs
            .as_deref()?
            .iter()
            .find(|j| j.kind == kind && j.key == key)
    }
}

/// Proof of who may mutate: the cluster, the leader, its lease epoch and the
/// sequence number of the lease record it held when it sent the request (a
/// receiver that has not seen the epoch yet reads that record to check it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub cluster_name: String,
    pub leader_id: String,
    pub epoch: u64,
    pub lease_seq: u64,
}
