//! `etcd-manager-ctl backup-now`: the request file, and how the answer is
//! told apart from any other new backup.
//!
//! The ctl writes `<store>/etcd-manager/backup-now` holding a stamp (ns
//! since the epoch). The leader reads it before it opens the snapshot,
//! records the stamp in the backup's side file (`requestedAt`), and then
//! deletes the request only if it still holds the bytes it read (a newer
//! request that arrived during the backup gets a backup of its own). The
//! ctl answers with the first new backup carrying its stamp or a later
//! one: a periodic backup that was already under way when the operator
//! asked may lack the writes just before the request, so it is no answer.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// The request file's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupNowRequest {
    /// ns since the epoch, on the ctl's clock (only compared with itself).
    pub requested_at: u64,
}

impl BackupNowRequest {
    pub fn body(&self) -> Vec<u8> {
        let mut body = serde_json::to_vec(self).unwrap_or_default();
        body.push(b'\n');
        body
    }

    /// The stamp in a request file; None for a body that is not one (an
    /// older ctl's, a hand-made file): the leader takes the backup all the
    /// same, without a stamp.
    pub fn parse(body: &[u8]) -> Option<u64> {
        serde_json::from_slice::<BackupNowRequest>(body)
            .ok()
            .map(|r| r.requested_at)
    }
}

/// One look for the answer to the request stamped `stamp`: the newest
/// backup not in `before` whose side file carries `stamp` or a later one.
/// When none does but the request file is gone, a leader of an older
/// version (which records no stamp) answered it: the newest new backup
/// without a stamp is the answer then. The request file is read before the
/// listing: a leader of this version writes the stamped backup before it
/// deletes the request, so a listing made after the file is gone holds it.
pub async fn find_answer(
    store: &backup::BackupStore,
    before: &BTreeSet<String>,
    stamp: u64,
) -> backup::Result<Option<String>> {
    let pending = store
        .read_manager_file(backup::layout::BACKUP_NOW_FILE)
        .await?
        .is_some();
    let new: Vec<String> = store
        .list_backups()
        .await?
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    let mut unstamped = None;
    for name in new.iter().rev() {
        // Upstream's backups have no side file; one being written holds a
        // placeholder; neither is the answer.
        let extra = match store.read_backup_extra(name).await {
            Ok(Some(extra)) => extra,
            Ok(None) | Err(backup::Error::Malformed { .. }) => continue,
            Err(e) => return Err(e),
        };
        match extra.requested_at {
            Some(at) if at >= stamp => return Ok(Some(name.clone())),
            Some(_) => {}
            None => {
                unstamped.get_or_insert_with(|| name.clone());
            }
        }
    }
    Ok(if pending { None } else { unstamped })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn backup(store: &backup::BackupStore, requested_at: Option<u64>) -> String {
        let body = futures::stream::iter([Ok(bytes::Bytes::from_static(b"snapshot"))]);
        let info = backup::BackupInfo {
            etcd_version: "3.5.30".into(),
            timestamp: 1_796_000_000,
            cluster_spec: None,
        };
        let facts = backup::BackupFacts {
            requested_at,
            ..Default::default()
        };
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000);
        store
            .write_backup_hashed(body, &info, Some(7), Some(1), facts, now)
            .await
            .unwrap()
            .name
    }

    fn file_store(dir: &tempfile::TempDir) -> backup::BackupStore {
        let url = format!("file://{}", dir.path().display());
        backup::BackupStore::open(&url, &Default::default()).unwrap()
    }

    /// As the ctl asks.
    async fn request(store: &backup::BackupStore, stamp: u64) {
        let body = BackupNowRequest {
            requested_at: stamp,
        }
        .body();
        store
            .write_manager_file(backup::layout::BACKUP_NOW_FILE, body)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_answer_is_the_backup_taken_for_the_request_not_any_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        let old = backup(&store, None).await;
        let before: BTreeSet<String> = [old].into();
        let stamp = 1_796_000_000_000_000_000;
        request(&store, stamp).await;
        // A periodic backup (already under way when the request came) and
        // one for an earlier request: neither answers this one.
        backup(&store, None).await;
        backup(&store, Some(stamp - 1)).await;
        assert_eq!(find_answer(&store, &before, stamp).await.unwrap(), None);
        let answer = backup(&store, Some(stamp)).await;
        assert_eq!(
            find_answer(&store, &before, stamp).await.unwrap(),
            Some(answer.clone())
        );
        // A later request's backup answers this one too (it began later).
        let later = backup(&store, Some(stamp + 5)).await;
        assert_eq!(
            find_answer(&store, &before, stamp).await.unwrap(),
            Some(later)
        );
    }

    #[tokio::test]
    async fn an_older_leader_that_records_no_stamp_answers_once_the_request_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        let stamp = 1_796_000_000_000_000_000;
        request(&store, stamp).await;
        let unstamped = backup(&store, None).await;
        let before = BTreeSet::new();
        assert_eq!(find_answer(&store, &before, stamp).await.unwrap(), None);
        store
            .delete_manager_file(backup::layout::BACKUP_NOW_FILE)
            .await
            .unwrap();
        assert_eq!(
            find_answer(&store, &before, stamp).await.unwrap(),
            Some(unstamped)
        );
    }

    #[test]
    fn a_request_round_trips_and_a_foreign_body_has_no_stamp() {
        let r = BackupNowRequest {
            requested_at: 1_796_000_000_123_456_789,
        };
        assert_eq!(BackupNowRequest::parse(&r.body()), Some(r.requested_at));
        assert_eq!(BackupNowRequest::parse(b"{}\n"), None);
        assert_eq!(BackupNowRequest::parse(b"not json"), None);
        assert_eq!(BackupNowRequest::parse(b"{\"requestedAt\":-1}"), None);
    }
}
