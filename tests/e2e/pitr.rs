//! Continuous backups and restores to a point: every change after a full
//! backup reaches the store within seconds, and a restore brings back
//! exactly the keyspace of a chosen revision, or the latest one. The
//! cluster encrypts its backups and segments (age): the managers and the
//! ctl decrypt with the identity file, and without it a restore is refused
//! with the flag named.

use std::collections::BTreeMap;
use std::time::Duration;

use backup::BackupStore;
use etcd::{EtcdClient, KeyChange};
use object_store::ObjectStoreExt;
use tests::{wait_for, wait_put, wait_voters};

const LEASE: i64 = 0x5eed_0001;

/// Every key under /pitr/ and its value.
async fn keyspace(ep: &str) -> Option<BTreeMap<String, String>> {
    let c = EtcdClient::connect(&[ep.to_string()], Duration::from_secs(3))
        .await
        .ok()?;
    Some(
        c.all_kvs()
            .await
            .ok()?
            .into_iter()
            .filter(|(k, _)| k.starts_with(b"/pitr/"))
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect(),
    )
}

async fn write(c: &EtcdClient, oracle: &mut BTreeMap<String, String>, change: KeyChange) -> i64 {
    match &change {
        KeyChange::Put { key, value, .. } => {
            oracle.insert(
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
        }
        KeyChange::Delete { key } => {
            oracle.remove(&*String::from_utf8_lossy(key));
        }
    }
    c.apply_changes(&[change]).await.unwrap()
}

fn put(key: &str, value: &str) -> KeyChange {
    KeyChange::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease: 0,
    }
}

fn delete(key: &str) -> KeyChange {
    KeyChange::Delete {
        key: key.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_returns_the_keyspace_of_a_chosen_revision_and_of_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    // A key pair from the ctl: the private key in a new file, the public
    // key printed for the recipients file.
    let recipients_file = dir.path().join("backup.pub");
    let identity_file = dir.path().join("backup.key");
    let out = env.ctl(&["generate-backup-key", &identity_file.to_string_lossy()]);
    assert!(out.success, "{out:?}");
    let public = out.stdout.trim().to_string();
    std::fs::write(&recipients_file, &out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&identity_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = env.ctl(&["generate-backup-key", &identity_file.to_string_lossy()]);
    assert!(
        !again.success,
        "an existing key file is never replaced: {again:?}"
    );
    let recipients_flag = format!(
        "--backup-encryption-recipients-file={}",
        recipients_file.display()
    );
    let identity_flag = format!(
        "--backup-encryption-identity-file={}",
        identity_file.display()
    );
    let _ms: Vec<_> = (1..=3)
        .map(|h| {
            env.start_with(
                h,
                &["--delta-interval=1s", &recipients_flag, &identity_flag],
            )
        })
        .collect();
    env.configure(3, "3.5.30");
    let eps: Vec<String> = (1..=3).map(|h| env.client_url(h)).collect();
    wait_voters("three voters", &eps, 3, None).await;
    wait_put(
        "host 1 serving",
        &eps[0],
        "/probe",
        "x",
        Duration::from_secs(60),
    )
    .await;
    let c = EtcdClient::connect(std::slice::from_ref(&eps[0]), Duration::from_secs(5))
        .await
        .unwrap();
    let mut oracle = BTreeMap::new();
    for i in 0..10 {
        write(&c, &mut oracle, put(&format!("/pitr/base/{i}"), "full")).await;
    }
    let out = env.ctl(&["backup-now", "--timeout=3m"]);
    assert!(out.success, "{out:?}");
    let store = BackupStore::open(&env.store_url, &Default::default()).unwrap();
    // The backup taken for this request: it holds the ten writes above
    // (a periodic backup may have begun before them).
    let base = out.stdout.trim().to_string();
    let extra = store.read_backup_extra(&base).await.unwrap().unwrap();
    assert!(extra.requested_at.is_some(), "{extra:?}");
    // Stored encrypted, to our key; a drill on another manager (which has
    // the identity) restores it all the same.
    let stored = store
        .object_store()
        .get(&object_store::path::Path::from_iter(
            store
                .base()
                .parts()
                .map(|p| p.as_ref().to_string())
                .chain([base.clone(), backup::BACKUP_DATA_FILE.to_string()]),
        ))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    let extra = store.read_backup_extra(&base).await.unwrap().unwrap();
    assert_eq!(extra.encryption.unwrap().recipients, vec![public.clone()]);
    // A drill needs the key too (the managers' restores below show they
    // have it): without it, no verdict and the flag named; with it, verified.
    let out = env.ctl(&["verify-backup", &base]);
    assert!(
        !out.success && out.stderr.contains("--backup-encryption-identity-file"),
        "{out:?}"
    );
    assert!(store.read_drill(&base).await.unwrap().is_none());
    let out = env.ctl(&[&identity_flag, "verify-backup", &base]);
    assert!(out.success, "{out:?}");
    let drill = store.read_drill(&base).await.unwrap().unwrap();
    assert_eq!(drill.verdict, backup::DrillVerdict::Verified, "{drill:?}");

    // After the full backup: puts, overwrites, deletes, a key on a lease.
    c.lease_grant_id(LEASE, 3600).await.unwrap();
    for i in 0..30 {
        write(
            &c,
            &mut oracle,
            put(&format!("/pitr/a/{i}"), &format!("one-{i}")),
        )
        .await;
    }
    for i in 0..5 {
        write(&c, &mut oracle, delete(&format!("/pitr/base/{i}"))).await;
    }
    let leased = KeyChange::Put {
        key: b"/pitr/leased".to_vec(),
        value: b"on a lease".to_vec(),
        lease: LEASE,
    };
    let first = write(&c, &mut oracle, leased).await;
    let at_first = oracle.clone();
    // Then more: what a restore to `first` must not have.
    for i in 0..30 {
        write(
            &c,
            &mut oracle,
            put(&format!("/pitr/a/{i}"), &format!("two-{i}")),
        )
        .await;
    }
    write(&c, &mut oracle, delete("/pitr/leased")).await;
    write(&c, &mut oracle, delete("/pitr/base/9")).await;
    let last = write(&c, &mut oracle, put("/pitr/b", "last")).await;
    assert_eq!(keyspace(&eps[0]).await.unwrap(), oracle);

    // The continuous backup reaches the last write within seconds.
    let started = std::time::Instant::now();
    wait_for(
        "segments up to the last write",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            let base = base.clone();
            async move {
                let ranges = store.list_segments(&base).await.ok()?;
                let rev = store.read_backup_extra(&base).await.ok()??.revision?;
                (etcd_manager::backups::delta::chain_end(rev, &ranges) >= last).then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "segments reached revision {last} {:?} after the write",
        started.elapsed()
    );
    // list-backups -o wide shows the revisions a restore can reach.
    let wide = env.ctl(&["-o", "wide", "list-backups"]);
    let line = wide.stdout.lines().find(|l| l.starts_with(&base)).unwrap();
    assert!(line.contains(&format!("..{last} ")), "{}", wide.stdout);
    assert!(line.contains(" age "), "{}", wide.stdout);

    // Without the key the replay cannot read the segments: refused, the
    // flag named, nothing queued.
    let out = env.ctl(&["restore-backup", &base, &format!("--to-revision={first}")]);
    assert!(
        !out.success && out.stderr.contains("--backup-encryption-identity-file"),
        "{out:?}"
    );
    assert!(store.list_commands().await.unwrap().is_empty());

    // Someone with write access to the store adds a key of theirs to the
    // base's side file: the replay must not encrypt to it (issue 30).
    let side = object_store::path::Path::from_iter(
        store
            .base()
            .parts()
            .map(|p| p.as_ref().to_string())
            .chain([base.clone(), backup::BACKUP_EXTRA_FILE.to_string()]),
    );
    let mut json: serde_json::Value = serde_json::from_slice(
        &store
            .object_store()
            .get(&side)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let (stranger, _) = backup::crypt::generate_identity("2026-12-07T00:00:00Z");
    json["encryption"]["recipients"]
        .as_array_mut()
        .unwrap()
        .push(stranger.clone().into());
    store
        .object_store()
        .put(&side, serde_json::to_vec(&json).unwrap().into())
        .await
        .unwrap();

    // A restore to the revision of the leased key: exactly that keyspace.
    let out = env.ctl(&[
        &identity_flag,
        "restore-backup",
        &base,
        &format!("--to-revision={first}"),
    ]);
    assert!(out.success, "{out:?}");
    assert!(out.stdout.contains("replayed"), "{out:?}");
    let restored = wait_for(
        "the keyspace of the chosen revision",
        Duration::from_secs(120),
        || {
            let ep = eps[0].clone();
            let want = at_first.clone();
            async move {
                let got = keyspace(&ep).await?;
                (got == want).then_some(got)
            }
        },
    )
    .await;
    assert!(restored.contains_key("/pitr/leased"));
    // The replay's backup is encrypted to the key configured where it ran
    // (the public key of the identity file), not to the side file's list.
    let replayed = store.list_backups().await.unwrap().pop().unwrap();
    let extra = store.read_backup_extra(&replayed).await.unwrap().unwrap();
    assert_eq!(extra.replayed_from.as_deref(), Some(base.as_str()));
    assert_eq!(
        extra.encryption.as_ref().unwrap().recipients,
        vec![public.clone()]
    );
    assert!(!format!("{extra:?}").contains(&stranger));
    // The key kept its lease, with the TTL it was granted.
    let c = EtcdClient::connect(std::slice::from_ref(&eps[0]), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(c.lease_granted_ttl(LEASE).await.unwrap(), Some(3600));
    // Revisions moved forward past the replayed history (watchers re-list).
    assert!(c.status().await.unwrap().revision > last);

    // A restore of the same backup without a point: the latest state.
    let out = env.ctl(&[&identity_flag, "restore-backup", &base]);
    assert!(out.success, "{out:?}");
    wait_for("the latest keyspace", Duration::from_secs(120), || {
        let ep = eps[0].clone();
        let want = oracle.clone();
        async move { (keyspace(&ep).await? == want).then_some(()) }
    })
    .await;

    // A revision outside the chain is refused, naming the range.
    let out = env.ctl(&[
        &identity_flag,
        "restore-backup",
        &base,
        &format!("--to-revision={}", last + 1000),
    ]);
    assert!(
        !out.success && out.stderr.contains("not in backup"),
        "{out:?}"
    );
}
