//! Discovery through the backup store: every manager already has the bucket,
//! so each publishes its gossip address there (`<store>/etcd-manager/
//! discovery-<id>.json`) and mirrors everyone else's into a local folder that
//! gossip reads as its discovery folder. Works across machines, zones and
//! clouds without DNS or a seed list.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

const PREFIX: &str = "discovery-";
/// How often records are published and read.
pub const REFRESH: Duration = Duration::from_secs(5);

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
/// record on the way out.
pub async fn run(
    store: backup::BackupStore,
    me: Record,
    local_dir: PathBuf,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    let body = serde_json::to_vec(&me).unwrap_or_default();
    loop {
        if let Err(e) = store
            .write_manager_file(&file_name(&me.id), body.clone())
            .await
        {
            tracing::warn!(error = %e, "could not publish our discovery record to the store");
        }
        match sync(&store, &me.id, &local_dir).await {
            Ok(n) => tracing::debug!(peers = n, "discovery records mirrored from the store"),
            Err(e) => tracing::warn!(error = %e, "could not read discovery records from the store"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = clock.sleep(REFRESH) => {}
        }
    }
    if let Err(e) = store.delete_manager_file(&file_name(&me.id)).await {
        tracing::warn!(error = %e, "could not remove our discovery record");
    }
}

/// Mirror every other manager's record into `local_dir/<id>.json`; drop local
/// files whose record is gone. Returns how many peers were mirrored.
async fn sync(store: &backup::BackupStore, me: &str, local_dir: &Path) -> Result<usize, String> {
    std::fs::create_dir_all(local_dir).map_err(|e| format!("{}: {e}", local_dir.display()))?;
    let mut wanted = vec![];
    for name in store
        .list_manager_files(PREFIX)
        .await
        .map_err(|e| e.to_string())?
    {
        let Some(bytes) = store
            .read_manager_file(&name)
            .await
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
            tracing::debug!(file = %name, "skipping an unreadable discovery record");
            continue;
        };
        if rec.id == me || rec.id.contains('/') || rec.id.starts_with('.') {
            continue;
        }
        let path = local_dir.join(format!("{}.json", rec.id));
        let body = serde_json::to_vec(&rec).unwrap_or_default();
        if std::fs::read(&path).ok().as_deref() != Some(body.as_slice()) {
            let tmp = local_dir.join(format!(".{}.tmp", rec.id));
            std::fs::write(&tmp, &body).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        wanted.push(format!("{}.json", rec.id));
    }
    // Records that vanished from the store (a manager that left) go locally too.
    if let Ok(entries) = std::fs::read_dir(local_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".json") && name != format!("{me}.json") && !wanted.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(wanted.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
        assert_eq!(sync(&store, "a", dir.path()).await.unwrap(), 2);
        let got: Record =
            serde_json::from_slice(&std::fs::read(dir.path().join("b.json")).unwrap()).unwrap();
        assert_eq!(got.addr.port(), 2);
        assert!(
            !dir.path().join("a.json").exists(),
            "our own record is not mirrored"
        );
        store.delete_manager_file(&file_name("c")).await.unwrap();
        assert_eq!(sync(&store, "a", dir.path()).await.unwrap(), 1);
        assert!(
            !dir.path().join("c.json").exists(),
            "a vanished record is pruned"
        );
    }
}
