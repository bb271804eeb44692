//! `<data-dir>/state.json`: the node's identity, the highest epoch it has
//! seen and the etcd it was told to run, written atomically before a
//! request is acted on; and the checks made when it is read back.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::peer::EtcdNodeConfig;

use super::NodeError;

pub(super) const STATE_FILE: &str = "state.json";

pub(super) const STATE_FORMAT: u32 = 1;

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
    pub(super) fn validate(&self) -> Result<(), etcd::InvalidIdent> {
        use etcd::{IdentKind, check_ident};
        check_ident(IdentKind::NodeId, &self.id)?;
        if let Some(l) = &self.etcd {
            check_ident(IdentKind::ClusterToken, &l.cluster_token)?;
            for n in &l.nodes {
                check_ident(IdentKind::MemberName, &n.name)?;
            }
        }
        Ok(())
    }
}

/// A new random node id: 16 bytes, base64url without padding (as upstream's ids look).
#[allow(clippy::disallowed_methods)] // the one place a node id is drawn
pub(super) fn new_node_id() -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..64)] as char)
        .collect()
}

pub(super) fn check_writable(dir: &Path) -> Result<(), NodeError> {
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
