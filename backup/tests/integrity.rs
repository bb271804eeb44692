//! What the store writes byte for byte, what it refuses to restore, and that
//! concurrent writers never share a name. Runs on InMemory and on the local
//! file system.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use backup::{
    BACKUP_DATA_FILE, BACKUP_EXTRA_FILE, BACKUP_META_FILE, BackupStore, ClusterSpec, Command,
    Error, RestoreBackupCommand, StoreOptions,
};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

mod common;
use common::{chunks, info, snapshot, t0};
use serde_json::json;

/// Both local backends, each with a scratch folder for downloads (kept alive by the guards).
fn backends() -> Vec<(BackupStore, tempfile::TempDir, tempfile::TempDir)> {
    let mem_scratch = tempfile::tempdir().unwrap();
    let mem = BackupStore::new(
        Arc::new(object_store::memory::InMemory::new()),
        Path::from("cluster/backups/etcd/main"),
        "memory://test".into(),
    );
    let root = tempfile::tempdir().unwrap();
    let fs_scratch = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store/etcd/main", root.path().display());
    let fs = BackupStore::open(&url, &StoreOptions::default()).unwrap();
    vec![
        (mem, mem_scratch, tempfile::tempdir().unwrap()),
        (fs, fs_scratch, root),
    ]
}

fn key(store: &BackupStore, rel: &str) -> Path {
    let base = store.base().as_ref();
    if base.is_empty() {
        Path::from(rel)
    } else {
        Path::from(format!("{base}/{rel}"))
    }
}

async fn raw(store: &BackupStore, rel: &str) -> Vec<u8> {
    store
        .object_store()
        .get(&key(store, rel))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn all_objects(store: &BackupStore) -> Vec<String> {
    let base = store.base().clone();
    let prefix = (!base.as_ref().is_empty()).then_some(&base);
    let mut v: Vec<String> = store
        .object_store()
        .list(prefix)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    v.sort();
    v
}

#[tokio::test]
async fn stored_files_use_upstream_key_names() {
    for (store, _scratch, _root) in backends() {
        // An empty store lists nothing and has nothing to read.
        assert!(store.list_backups().await.unwrap().is_empty());
        assert!(store.list_commands().await.unwrap().is_empty());

        store
            .write_spec(&ClusterSpec {
                member_count: 3,
                etcd_version: String::new(),
            })
            .await
            .unwrap();
        let spec: serde_json::Value =
            serde_json::from_slice(&raw(&store, "control/etcd-cluster-spec").await).unwrap();
        assert_eq!(spec, json!({"memberCount": 3}), "empty version omitted");
        let text = String::from_utf8(raw(&store, "control/etcd-cluster-spec").await).unwrap();
        assert!(
            text.contains("\n  \"memberCount\": 3"),
            "two-space indent: {text}"
        );

        store.write_created(t0()).await.unwrap();
        assert_eq!(
            raw(&store, "control/etcd-cluster-created").await,
            br#"{"timestamp":1704067200000000000}"#
        );

        let cmd = Command {
            timestamp: 1_547_480_961_703_914_946,
            restore_backup: Some(RestoreBackupCommand {
                cluster_spec: Some(ClusterSpec {
                    member_count: 3,
                    etcd_version: "3.4.13".into(),
                }),
                backup: "2019-01-14T15:29:48Z-000003".into(),
            }),
        };
        let name = store.add_command(&cmd, t0()).await.unwrap();
        assert_eq!(name, "2024-01-01T00:00:00Z-000000");
        let stored: serde_json::Value =
            serde_json::from_slice(&raw(&store, &format!("control/{name}/_command.json")).await)
                .unwrap();
        assert_eq!(
            stored,
            json!({
                "timestamp": "1547480961703914946",
                "restoreBackup": {
                    "clusterSpec": {"memberCount": 3, "etcdVersion": "3.4.13"},
                    "backup": "2019-01-14T15:29:48Z-000003"
                }
            })
        );

        let summary = store
            .write_backup(chunks(&snapshot(1000)), &info(), Some(7), Some(2), t0())
            .await
            .unwrap();
        let meta: serde_json::Value = serde_json::from_slice(
            &raw(&store, &format!("{}/{BACKUP_META_FILE}", summary.name)).await,
        )
        .unwrap();
        assert_eq!(
            meta,
            json!({
                "etcdVersion": "3.5.30",
                "timestamp": "1704067200",
                "clusterSpec": {"memberCount": 3, "etcdVersion": "3.5.30"}
            })
        );
        let extra: serde_json::Value = serde_json::from_slice(
            &raw(&store, &format!("{}/{BACKUP_EXTRA_FILE}", summary.name)).await,
        )
        .unwrap();
        assert_eq!(extra["format"], json!(1));
        assert_eq!(extra["snapshotSha256"], json!(summary.snapshot_sha256));
        assert_eq!(extra["snapshotSize"], json!(1000));
        assert_eq!(extra["revision"], json!(7));
        assert_eq!(extra["leaderEpoch"], json!(2));

        // The data file is a plain gzip of the snapshot, readable by any gunzip.
        let gz = raw(&store, &format!("{}/{BACKUP_DATA_FILE}", summary.name)).await;
        let mut out = vec![];
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
        assert_eq!(out, snapshot(1000));
        assert_eq!(gz.len() as u64, summary.compressed_size);
    }
}

#[tokio::test]
async fn a_wrong_checksum_in_the_extra_file_refuses_the_restore() {
    for (store, scratch, _root) in backends() {
        let data = snapshot(200_000);
        let s = store
            .write_backup(chunks(&data), &info(), None, None, t0())
            .await
            .unwrap();
        let rel = format!("{}/{BACKUP_EXTRA_FILE}", s.name);
        let original = raw(&store, &rel).await;
        let mut extra: serde_json::Value = serde_json::from_slice(&original).unwrap();
        extra["snapshotSha256"] = json!("00".repeat(32));
        store
            .object_store()
            .put(
                &key(&store, &rel),
                serde_json::to_vec(&extra).unwrap().into(),
            )
            .await
            .unwrap();

        let dest = scratch.path().join("snapshot.db");
        let err = store.download_backup(&s.name, &dest).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(!err.is_retryable());
        let msg = err.to_string();
        assert!(msg.contains(&s.name) && msg.contains("snapshot"), "{msg}");
        assert!(!dest.exists());
        assert_eq!(
            std::fs::read_dir(scratch.path()).unwrap().count(),
            0,
            "no partial files left in the scratch folder"
        );

        // The compressed checksum is checked too.
        extra["snapshotSha256"] = json!(s.snapshot_sha256);
        extra["compressedSha256"] = json!("ff".repeat(32));
        store
            .object_store()
            .put(
                &key(&store, &rel),
                serde_json::to_vec(&extra).unwrap().into(),
            )
            .await
            .unwrap();
        let err = store.download_backup(&s.name, &dest).await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { reason, .. } if reason.contains(BACKUP_DATA_FILE)),
            "{err}"
        );
        assert!(!dest.exists());

        // Put right again, the same backup restores.
        store
            .object_store()
            .put(&key(&store, &rel), original.into())
            .await
            .unwrap();
        let got = store.download_backup(&s.name, &dest).await.unwrap();
        assert!(got.verified_checksum);
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }
}

/// A backup whose side file was rewritten to match a gzip bomb (10 MiB of
/// zeros declared as 1000 bytes) stops inflating at the declared size; a side
/// file whose sizes cannot be is refused before anything is allocated.
#[tokio::test]
async fn gzip_bombs_and_impossible_sizes_are_refused() {
    use sha2::Digest;
    use std::io::Write;
    for (store, scratch, _root) in backends() {
        let s = store
            .write_backup(chunks(&snapshot(5_000)), &info(), None, None, t0())
            .await
            .unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 10 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        store
            .object_store()
            .put(
                &key(&store, &format!("{}/{BACKUP_DATA_FILE}", s.name)),
                bomb.clone().into(),
            )
            .await
            .unwrap();
        let rel = format!("{}/{BACKUP_EXTRA_FILE}", s.name);
        let mut extra: serde_json::Value =
            serde_json::from_slice(&raw(&store, &rel).await).unwrap();
        extra["compressedSha256"] = json!(hex::encode(sha2::Sha256::digest(&bomb)));
        extra["compressedSize"] = json!(bomb.len());
        extra["snapshotSize"] = json!(1000);
        extra["members"] = json!([]);
        let put = |v: serde_json::Value| {
            let store = store.clone();
            let k = key(&store, &rel);
            async move {
                store
                    .object_store()
                    .put(&k, serde_json::to_vec(&v).unwrap().into())
                    .await
                    .unwrap();
            }
        };
        put(extra.clone()).await;
        let dest = scratch.path().join("snapshot.db");
        let err = store.download_backup(&s.name, &dest).await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { reason, .. } if reason.contains("more than the 1000 bytes")),
            "{err}"
        );
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);

        // One member claiming 2^60 bytes: refused when the side file is read.
        extra["members"] = json!([[bomb.len(), 1u64 << 60]]);
        extra["snapshotSize"] = json!(1u64 << 60);
        put(extra.clone()).await;
        let err = store.download_backup(&s.name, &dest).await.unwrap_err();
        assert!(
            matches!(&err, Error::Malformed { reason, .. } if reason.contains("cannot be") || reason.contains("more than")),
            "{err}"
        );
        // Members that do not add up to the declared sizes.
        extra["members"] = json!([[bomb.len(), 1 << 20]]);
        extra["snapshotSize"] = json!(1000);
        put(extra).await;
        let err = store.download_backup(&s.name, &dest).await.unwrap_err();
        assert!(
            matches!(&err, Error::Malformed { reason, .. } if reason.contains("add up")),
            "{err}"
        );
        // And inflating one member never goes past what it declares.
        assert!(backup::gzip::inflate_member(&bomb, 1000).is_err());
        assert!(backup::gzip::inflate_member(&bomb, 1 << 40).is_err());
    }
}

#[tokio::test]
async fn a_failing_snapshot_stream_leaves_nothing_listed() {
    for (store, _scratch, _root) in backends() {
        let mut items: Vec<std::io::Result<Bytes>> = (0..40)
            .map(|i| Ok(Bytes::from(snapshot(64 * 1024 + i))))
            .collect();
        items.push(Err(std::io::Error::other("etcd went away")));
        let err = store
            .write_backup(futures::stream::iter(items), &info(), None, None, t0())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Snapshot(_)), "{err}");
        assert!(err.to_string().contains("etcd went away"), "{err}");
        assert!(store.list_backups().await.unwrap().is_empty());
        assert!(
            all_objects(&store).await.is_empty(),
            "the claimed name and the partial upload are removed"
        );
        // The store still works afterwards, and the name is free again.
        let s = store
            .write_backup(chunks(&snapshot(10)), &info(), None, None, t0())
            .await
            .unwrap();
        assert_eq!(store.list_backups().await.unwrap(), vec![s.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_in_one_second_get_distinct_names() {
    for (store, _scratch, _root) in backends() {
        let writers: Vec<_> = (0..4u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .write_backup(chunks(&vec![i; 50_000]), &info(), None, None, t0())
                        .await
                })
            })
            .collect();
        let mut names = vec![];
        for w in writers {
            names.push(w.await.unwrap().unwrap().name);
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 4, "{names:?}");
        assert_eq!(store.list_backups().await.unwrap(), names);
        // Every backup holds its own writer's data.
        for name in &names {
            let extra = store.read_backup_extra(name).await.unwrap().unwrap();
            assert_eq!(extra.snapshot_size, 50_000);
        }

        let cmd = Command {
            timestamp: 1,
            restore_backup: None,
        };
        let adders: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                let cmd = cmd.clone();
                tokio::spawn(async move { store.add_command(&cmd, t0()).await })
            })
            .collect();
        let mut cmds = vec![];
        for a in adders {
            cmds.push(a.await.unwrap().unwrap());
        }
        cmds.sort();
        cmds.dedup();
        assert_eq!(cmds.len(), 4, "{cmds:?}");
        let listed: Vec<String> = store
            .list_commands()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(listed, cmds);
    }
}

#[tokio::test]
async fn reading_a_missing_backup_says_not_found() {
    for (store, scratch, _root) in backends() {
        let name = "2024-01-01T00:00:00Z-000009";
        assert!(matches!(
            store.read_backup_info(name).await,
            Err(Error::NotFound { .. })
        ));
        assert_eq!(store.read_backup_extra(name).await.unwrap(), None);
        let err = store
            .download_backup(name, &scratch.path().join("x"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(err.to_string().contains(name), "{err}");
        for bad in ["", "..", "a/b"] {
            assert!(store.read_backup_info(bad).await.is_err(), "{bad:?}");
        }
    }
}
