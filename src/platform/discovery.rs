//! Discovery through the backup store: every manager already has the bucket,
//! so each publishes its gossip address there (`<store>/etcd-manager/
//! discovery-<id>.json`) and mirrors everyone else's into a local folder that
//! gossip reads as its discovery folder. Works across machines, zones and
//! clouds without DNS or a seed list.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

const PREFIX: &str = "discovery-";
/// How often records are read while a manager is starting (the first
/// [`FAST_FOR`]): a new cluster finds itself quickly.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How long after start [`REFRESH`] applies; afterwards gossip spreads
/// membership itself and the store is read every [`SLOW_REFRESH`].
pub const FAST_FOR: Duration = Duration::from_secs(120);
pub const SLOW_REFRESH: Duration = Duration::from_secs(60);

/// The same format gossip reads from its discovery folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub addr: SocketAddr,
}

fn file_name(id: &str) -> String {
    format!("{PREFIX}{id}.json")
}

/// Publish our record and mirror the others' until cancelled; remove our
/// record on the way out. Each round is one listing; a record is read only
/// when its version changed, and ours is written again only when it is gone
/// or not what we wrote.
pub async fn run(
    store: backup::BackupStore,
    me: Record,
    local_dir: PathBuf,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    let started = clock.now();
    let mut mirror = Mirror::new(&me);
    loop {
        match mirror.sync(&store, &local_dir).await {
            Ok(n) => tracing::debug!(peers = n, "discovery records mirrored from the store"),
            Err(e) => tracing::warn!(error = %e, "could not sync discovery records with the store"),
        }
        let pause = if clock.now().saturating_duration_since(started) < FAST_FOR {
            REFRESH
        } else {
            SLOW_REFRESH
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = clock.sleep(pause) => {}
        }
    }
    if let Err(e) = store.delete_manager_file(&file_name(&me.id)).await {
        tracing::warn!(error = %e, "could not remove our discovery record");
    }
}

/// Why a round of discovery did not finish; the next round tries again.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The local mirror folder (gossip's discovery folder).
    #[error("{}: {source}; the discovery folder must be writable by etcd-manager", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Listing or reading the records in the store.
    #[error(transparent)]
    Store(backup::Error),
    /// Writing our own record to the store.
    #[error("publishing our record: {0}")]
    Publish(#[source] backup::Error),
}

impl DiscoveryError {
    fn local(path: &Path) -> impl FnOnce(std::io::Error) -> DiscoveryError + '_ {
        move |source| DiscoveryError::Local {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What we know of our own record in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Own {
    /// Not written by this process yet (a record left by an earlier run may
    /// hold an old address).
    Unwritten,
    /// Written; the next listing tells its version.
    Written,
    /// Listed with this version after we wrote it.
    Known(String),
}

/// Our record and what we know of everyone else's.
struct Mirror {
    me: String,
    body: Vec<u8>,
    ours: Own,
    /// Per record file: the version last read and the record it held.
    seen: BTreeMap<String, (String, Option<Record>)>,
}

impl Mirror {
    fn new(me: &Record) -> Mirror {
        Mirror {
            me: me.id.clone(),
            body: serde_json::to_vec(me).unwrap_or_default(),
            ours: Own::Unwritten,
            seen: BTreeMap::new(),
        }
    }

    /// One round: publish ours if needed, mirror every other manager's record
    /// into `local_dir/<id>.json`, drop local files whose record is gone.
    /// Returns how many peers are mirrored.
    async fn sync(
        &mut self,
        store: &backup::BackupStore,
        local_dir: &Path,
    ) -> Result<usize, DiscoveryError> {
        std::fs::create_dir_all(local_dir).map_err(DiscoveryError::local(local_dir))?;
        let listed = store
            .list_manager_files_versioned(PREFIX)
            .await
            .map_err(DiscoveryError::Store)?;
        let own = file_name(&self.me);
        let listed_own = listed
            .iter()
            .find(|(n, _)| *n == own)
            .map(|(_, v)| v.clone());
        let write = match (&self.ours, listed_own) {
            (Own::Written, Some(v)) => {
                self.ours = Own::Known(v);
                false
            }
            (Own::Known(known), Some(v)) => *known != v,
            // Not written yet, or gone (deleted, a new store).
            _ => true,
        };
        if write {
            store
                .write_manager_file(&own, self.body.clone())
                .await
                .map_err(DiscoveryError::Publish)?;
            self.ours = Own::Written;
        }
        let mut wanted = vec![];
        let mut seen = BTreeMap::new();
        for (name, version) in listed.into_iter().filter(|(n, _)| *n != own) {
            let rec = match self.seen.remove(&name) {
                Some((v, rec)) if v == version => rec,
                _ => match store
                    .read_manager_file(&name)
                    .await
                    .map_err(DiscoveryError::Store)?
                {
                    Some(bytes) => serde_json::from_slice::<Record>(&bytes).ok(),
                    None => None,
                },
            };
            seen.insert(name.clone(), (version, rec.clone()));
            let Some(rec) = rec else {
                tracing::debug!(file = %name, "skipping an unreadable discovery record");
                continue;
            };
            // The id names a file here and a member in gossip: a valid
            // member id, and the one the record's file name gives.
            if let Err(reason) = gossip::check_member_id(&rec.id) {
                tracing::warn!(file = %name, id = %rec.id.escape_debug(), reason, "skipping a discovery record with an invalid id");
                continue;
            }
            if name != file_name(&rec.id) {
                tracing::warn!(file = %name, id = %rec.id, "skipping a discovery record under another member's name");
                continue;
            }
            if rec.id == self.me {
                continue;
            }
            let path = local_dir.join(format!("{}.json", rec.id));
            let body = serde_json::to_vec(&rec).unwrap_or_default();
            if std::fs::read(&path).ok().as_deref() != Some(body.as_slice()) {
                let tmp = local_dir.join(format!(".{}.tmp", rec.id));
                std::fs::write(&tmp, &body).map_err(DiscoveryError::local(&tmp))?;
                std::fs::rename(&tmp, &path).map_err(DiscoveryError::local(&path))?;
            }
            wanted.push(format!("{}.json", rec.id));
        }
        self.seen = seen;
        // Records that vanished from the store (a manager that left) go locally too.
        if let Ok(entries) = std::fs::read_dir(local_dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".json")
                    && name != format!("{}.json", self.me)
                    && !wanted.contains(&name)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(wanted.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    proptest::proptest! {
        /// Gossip checks member ids with its own copy of the rule (it does
        /// not depend on the etcd crate): both give the same answer.
        #[test]
        fn gossip_and_etcd_agree_on_identifiers(id in "[-_.a-zA-Z0-9/ \n#é]{0,130}") {
            proptest::prop_assert_eq!(
                gossip::check_member_id(&id).is_ok(),
                etcd::check_ident(etcd::IdentKind::NodeId, &id).is_ok()
            );
        }
    }

    #[tokio::test]
    async fn records_are_mirrored_and_pruned() {
        let store = backup::BackupStore::open("memory://d", &Default::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (id, port) in [("a", 1), ("b", 2), ("c", 3)] {
            let rec = Record {
                id: id.into(),
                addr: format!("10.0.0.1:{port}").parse().unwrap(),
            };
            store
                .write_manager_file(&file_name(id), serde_json::to_vec(&rec).unwrap())
                .await
                .unwrap();
        }
        store
            .write_manager_file("discovery-junk.json", b"{not json".to_vec())
            .await
            .unwrap();
        // Ids that are no member ids, or not the file's, are skipped.
        for (file, id) in [
            ("discovery-x.json", "../../etc/passwd"),
            ("discovery-y.json", "a\n# End host entries"),
            ("discovery-z.json", "b"),
        ] {
            let rec = serde_json::json!({"id": id, "addr": "10.0.0.1:9"});
            store
                .write_manager_file(file, serde_json::to_vec(&rec).unwrap())
                .await
                .unwrap();
        }
        let me = Record {
            id: "a".into(),
            addr: "10.0.0.1:11".parse().unwrap(),
        };
        let mut mirror = Mirror::new(&me);
        assert_eq!(mirror.sync(&store, dir.path()).await.unwrap(), 2);
        let got: Record =
            serde_json::from_slice(&std::fs::read(dir.path().join("b.json")).unwrap()).unwrap();
        assert_eq!(got.addr.port(), 2);
        assert!(
            !dir.path().join("a.json").exists(),
            "our own record is not mirrored"
        );
        store.delete_manager_file(&file_name("c")).await.unwrap();
        assert_eq!(mirror.sync(&store, dir.path()).await.unwrap(), 1);
        assert!(
            !dir.path().join("c.json").exists(),
            "a vanished record is pruned"
        );
        // Our own record: the stale one (port 1 was written above by "a") was
        // replaced on the first round, and one deleted is published again.
        let read_own = || async {
            let b = store.read_manager_file(&file_name("a")).await.unwrap();
            b.map(|b| serde_json::from_slice::<Record>(&b).unwrap())
        };
        assert_eq!(read_own().await, Some(me.clone()));
        store.delete_manager_file(&file_name("a")).await.unwrap();
        mirror.sync(&store, dir.path()).await.unwrap();
        assert_eq!(read_own().await, Some(me.clone()));
        // A record that changed is read again.
        let moved = Record {
            id: "b".into(),
            addr: "10.0.0.9:7".parse().unwrap(),
        };
        store
            .write_manager_file(&file_name("b"), serde_json::to_vec(&moved).unwrap())
            .await
            .unwrap();
        mirror.sync(&store, dir.path()).await.unwrap();
        let got: Record =
            serde_json::from_slice(&std::fs::read(dir.path().join("b.json")).unwrap()).unwrap();
        assert_eq!(got, moved);
    }
}
