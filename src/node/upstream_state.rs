//! Upstream etcd-manager's files on a member's volume, so a volume moves
//! between upstream and us in place: its `state` (the protobuf `EtcdState`
//! of upstream's `pkg/apis/etcd/etcdapi.proto`, written by its
//! `pkg/etcd/etcdserver.go`) and, without a volume provider, `myid` (the
//! peer id). The etcd data (`data/<token>`), the PKI (`pki/<token>`) and the
//! trashcan (`data-trashcan/`) have the same layout in both.
//!
//! A node whose data dir has upstream's `state` and not our `state.json`
//! adopts it (same member, same data, etcd restarted in place); every time
//! our state changes we write `state` beside it, so upstream's image reads
//! the volume back the same way.

use std::path::Path;

use prost::Message;

use super::LocalEtcd;
use crate::peer::EtcdNodeConfig;

/// Upstream's state file, beside our `state.json`.
pub const STATE_FILE: &str = "state";
/// Upstream's peer id file (no volume provider).
pub const MYID_FILE: &str = "myid";
/// The largest state file read (a few nodes' names and URLs).
const MAX_STATE_BYTES: u64 = 1 << 20;

/// `message EtcdNode`.
#[derive(Clone, PartialEq, Message)]
pub struct PbEtcdNode {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub peer_urls: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub client_urls: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub quarantined_client_urls: Vec<String>,
    #[prost(bool, tag = "5")]
    pub tls_enabled: bool,
}

/// `message EtcdCluster`.
#[derive(Clone, PartialEq, Message)]
pub struct PbEtcdCluster {
    #[prost(int32, tag = "1")]
    pub desired_cluster_size: i32,
    #[prost(string, tag = "5")]
    pub cluster_token: String,
    #[prost(message, repeated, tag = "7")]
    pub nodes: Vec<PbEtcdNode>,
}

/// `message EtcdState`.
#[derive(Clone, PartialEq, Message)]
pub struct PbEtcdState {
    #[prost(bool, tag = "1")]
    pub new_cluster: bool,
    #[prost(message, optional, tag = "2")]
    pub cluster: Option<PbEtcdCluster>,
    #[prost(string, tag = "3")]
    pub etcd_version: String,
    #[prost(bool, tag = "4")]
    pub quarantined: bool,
}

/// What is wrong with upstream's files in a data dir; each says to move
/// the file aside (ours is written from what the leader says next).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamStateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{size} bytes, more than upstream ever writes ({MAX_STATE_BYTES}); move it aside")]
    TooLarge { size: u64 },
    #[error("not upstream's EtcdState: {0}; move it aside")]
    NotState(#[from] prost::DecodeError),
    #[error("too long for a peer id")]
    IdTooLong,
    #[error(transparent)]
    Ident(#[from] etcd::InvalidIdent),
    #[error(transparent)]
    Version(#[from] etcd::InvalidVersion),
    #[error("{}: {source}", path.display())]
    In {
        path: std::path::PathBuf,
        source: Box<UpstreamStateError>,
    },
}

impl UpstreamStateError {
    fn at(path: &Path) -> impl FnOnce(UpstreamStateError) -> UpstreamStateError + '_ {
        move |e| UpstreamStateError::In {
            path: path.to_path_buf(),
            source: Box::new(e),
        }
    }
}

/// Upstream's state as ours: None when the file says no etcd runs here.
/// Every identifier is checked (they become paths and member names).
pub fn from_upstream(pb: &PbEtcdState) -> Result<Option<LocalEtcd>, UpstreamStateError> {
    let Some(cluster) = &pb.cluster else {
        return Ok(None);
    };
    if cluster.cluster_token.is_empty() {
        return Ok(None);
    }
    etcd::check_ident(etcd::IdentKind::ClusterToken, &cluster.cluster_token)?;
    pb.etcd_version.parse::<etcd::EtcdVersion>()?;
    let mut nodes = Vec::new();
    for n in &cluster.nodes {
        etcd::check_ident(etcd::IdentKind::MemberName, &n.name)?;
        nodes.push(EtcdNodeConfig {
            name: n.name.clone(),
            peer_urls: n.peer_urls.clone(),
            client_urls: n.client_urls.clone(),
            quarantined_client_urls: n.quarantined_client_urls.clone(),
        });
    }
    Ok(Some(LocalEtcd {
        cluster_token: cluster.cluster_token.clone(),
        etcd_version: pb.etcd_version.trim_start_matches('v').to_string(),
        quarantined: pb.quarantined,
        nodes,
        new_cluster: pb.new_cluster,
    }))
}

/// Ours as upstream's.
pub fn to_upstream(local: &LocalEtcd, tls: bool) -> PbEtcdState {
    PbEtcdState {
        new_cluster: local.new_cluster,
        cluster: Some(PbEtcdCluster {
            desired_cluster_size: i32::try_from(local.nodes.len()).unwrap_or(i32::MAX),
            cluster_token: local.cluster_token.clone(),
            nodes: local
                .nodes
                .iter()
                .map(|n| PbEtcdNode {
                    name: n.name.clone(),
                    peer_urls: n.peer_urls.clone(),
                    client_urls: n.client_urls.clone(),
                    quarantined_client_urls: n.quarantined_client_urls.clone(),
                    tls_enabled: tls,
                })
                .collect(),
        }),
        etcd_version: local.etcd_version.clone(),
        quarantined: local.quarantined,
    }
}

/// Upstream's state file in `dir`, if there is one.
pub fn read(dir: &Path) -> Result<Option<PbEtcdState>, UpstreamStateError> {
    let path = dir.join(STATE_FILE);
    let io = |source| UpstreamStateError::Io {
        path: path.clone(),
        source,
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if meta.len() > MAX_STATE_BYTES {
        return Err(UpstreamStateError::at(&path)(
            UpstreamStateError::TooLarge { size: meta.len() },
        ));
    }
    let bytes = std::fs::read(&path).map_err(io)?;
    decode_state(&bytes)
        .map(Some)
        .map_err(UpstreamStateError::at(&path))
}

/// Upstream's state file's bytes: at most [`MAX_STATE_BYTES`], decoded as
/// its `EtcdState`. Pure.
pub fn decode_state(bytes: &[u8]) -> Result<PbEtcdState, UpstreamStateError> {
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(UpstreamStateError::TooLarge {
            size: bytes.len() as u64,
        });
    }
    Ok(PbEtcdState::decode(bytes)?)
}

/// Upstream's `myid` file's bytes: at most 256, a valid node id once
/// trimmed. Pure.
pub fn parse_myid(bytes: &[u8]) -> Result<String, UpstreamStateError> {
    if bytes.len() > 256 {
        return Err(UpstreamStateError::IdTooLong);
    }
    let id = String::from_utf8_lossy(bytes).trim().to_string();
    etcd::check_ident(etcd::IdentKind::NodeId, &id)?;
    Ok(id)
}

/// Upstream's peer id in `dir` (`myid`), checked, if there is one.
pub fn read_myid(dir: &Path) -> Result<Option<String>, UpstreamStateError> {
    let path = dir.join(MYID_FILE);
    match std::fs::read(&path) {
        Ok(b) => parse_myid(&b)
            .map(Some)
            .map_err(UpstreamStateError::at(&path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(UpstreamStateError::Io { path, source }),
    }
}

/// Write upstream's `myid` in `dir` as upstream writes it (the id, no
/// newline, mode 0644) unless it is there: without a volume provider,
/// upstream's manager finds itself by this file, and one that finds none
/// gives itself a new identity and refuses the member ("self node was not
/// included in cluster"). A `myid` naming another id is left as it is, and
/// said.
pub fn ensure_myid(dir: &Path, id: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(MYID_FILE);
    match std::fs::read(&path) {
        Ok(b) => {
            if parse_myid(&b).ok().as_deref() != Some(id) {
                tracing::warn!(path = %path.display(), id, "upstream's myid names another id; left as it is (going back to upstream's image would not find this member)");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join(format!(".{MYID_FILE}.tmp"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            f.write_all(id.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        }
        Err(e) => Err(e),
    }
}

/// Write upstream's state file in `dir` (atomically, mode 0600 as upstream).
pub fn write(dir: &Path, state: &PbEtcdState) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&state.encode_to_vec())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(STATE_FILE))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn local() -> LocalEtcd {
        LocalEtcd {
            cluster_token: "tok-1".into(),
            etcd_version: "3.5.30".into(),
            quarantined: false,
            nodes: vec![EtcdNodeConfig {
                name: "etcd-a".into(),
                peer_urls: vec!["https://etcd-a.internal.example.com:2380".into()],
                client_urls: vec!["https://etcd-a.internal.example.com:4001".into()],
                quarantined_client_urls: vec!["https://etcd-a.internal.example.com:3994".into()],
            }],
            new_cluster: false,
        }
    }

    #[test]
    fn the_state_goes_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), &to_upstream(&local(), true)).unwrap();
        let back = read(dir.path()).unwrap().unwrap();
        assert!(back.cluster.as_ref().unwrap().nodes[0].tls_enabled);
        assert_eq!(from_upstream(&back).unwrap(), Some(local()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_files_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), [0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(
            matches!(&e, UpstreamStateError::In { path, source }
                if path.ends_with(STATE_FILE) && matches!(**source, UpstreamStateError::NotState(_)))
                && e.to_string().contains("not upstream's EtcdState"),
            "{e}"
        );
        let mut pb = to_upstream(&local(), false);
        pb.cluster.as_mut().unwrap().cluster_token = "../../etc".into();
        assert!(from_upstream(&pb).is_err());
        let mut pb = to_upstream(&local(), false);
        pb.etcd_version = "latest".into();
        assert!(from_upstream(&pb).is_err());
        // No cluster: no etcd here yet.
        assert_eq!(from_upstream(&PbEtcdState::default()).unwrap(), None);
        std::fs::write(dir.path().join(MYID_FILE), "abc/../x").unwrap();
        assert!(read_myid(dir.path()).is_err());
        std::fs::write(dir.path().join(MYID_FILE), "cA0Hk1bd2PcHJ6HMwQ3F5Q\n").unwrap();
        assert_eq!(
            read_myid(dir.path()).unwrap().as_deref(),
            Some("cA0Hk1bd2PcHJ6HMwQ3F5Q")
        );
    }
}
