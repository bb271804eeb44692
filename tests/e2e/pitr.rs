//! Continuous backups and restores to a point: every change after a full
//! backup reaches the store within seconds, and a restore brings back
//! exactly the keyspace of a chosen revision, or the latest one.

use std::collections::BTreeMap;
use std::time::Duration;

use backup::BackupStore;
use etcd::{EtcdClient, KeyChange};
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
    let _ms: Vec<_> = (1..=3)
        .map(|h| env.start_with(h, &["--delta-interval=1s"]))
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
    let base = store.list_backups().await.unwrap().pop().unwrap();

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
                (etcd_manager::delta::chain_end(rev, &ranges) >= last).then_some(())
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

    // A restore to the revision of the leased key: exactly that keyspace.
    let out = env.ctl(&["restore-backup", &base, &format!("--to-revision={first}")]);
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
    // The key kept its lease, with the TTL it was granted.
    let c = EtcdClient::connect(std::slice::from_ref(&eps[0]), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(c.lease_granted_ttl(LEASE).await.unwrap(), Some(3600));
    // Revisions moved forward past the replayed history (watchers re-list).
    assert!(c.status().await.unwrap().revision > last);

    // A restore of the same backup without a point: the latest state.
    let out = env.ctl(&["restore-backup", &base]);
    assert!(out.success, "{out:?}");
    wait_for("the latest keyspace", Duration::from_secs(120), || {
        let ep = eps[0].clone();
        let want = oracle.clone();
        async move { (keyspace(&ep).await? == want).then_some(()) }
    })
    .await;

    // A revision outside the chain is refused, naming the range.
    let out = env.ctl(&[
        "restore-backup",
        &base,
        &format!("--to-revision={}", last + 1000),
    ]);
    assert!(
        !out.success && out.stderr.contains("not in backup"),
        "{out:?}"
    );
}
