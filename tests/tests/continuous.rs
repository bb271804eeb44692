//! The continuous backup on a real etcd: the streamer records every change
//! after a full backup, a replay rebuilds exactly the keyspace of the
//! latest revision, a chosen revision or a time, and history that cannot be
//! had is a gap that asks for a full backup, never a silent hole.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use backup::{BackupFacts, BackupInfo, BackupStore, ClusterSpec};
use etcd::{EtcdClient, EtcdNodeSpec, EtcdProcess, KeyChange};
use etcd_manager::backups::delta::{DeltaShared, DeltaStreamer, DeltaTarget, chain_end};
use etcd_manager::backups::pitr::{self, ReplayTo};
use etcd_manager::clock::SystemClock;
use tests::{etcd_binaries, wait_for};
use tokio_util::sync::CancellationToken;

const VERSION: &str = "3.5.30";
const LEASE: i64 = 0x7e57_0001;

fn port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A one-member etcd of [`VERSION`] under `root`, and a client of it.
async fn etcd(root: &std::path::Path) -> (EtcdProcess, EtcdClient) {
    let peer = format!("http://127.0.0.1:{}", port());
    let client_url = format!("http://127.0.0.1:{}", port());
    let spec = EtcdNodeSpec {
        name: "one".into(),
        version: VERSION.into(),
        data_dir: root.join("data"),
        cluster_token: "continuous".into(),
        initial_cluster: vec![("one".into(), vec![peer.clone()])],
        initial_cluster_state_new: true,
        peer_urls: vec![peer],
        client_urls: vec![client_url.clone()],
        quarantined_client_urls: vec![],
        quarantined: false,
        listen_address: None,
        tls: None,
        listen_metrics_urls: vec![],
    };
    let p = EtcdProcess::start(
        etcd_binaries(VERSION),
        spec,
        vec![],
        Some(root.join("etcd.log")),
    )
    .unwrap();
    let c = EtcdClient::connect(&[client_url], Duration::from_secs(5))
        .await
        .unwrap();
    wait_for("etcd answers", Duration::from_secs(30), || {
        let c = c.clone();
        async move { c.healthy().await.then_some(()) }
    })
    .await;
    (p, c)
}

fn memory_store() -> BackupStore {
    BackupStore::new(
        Arc::new(object_store::memory::InMemory::new()),
        object_store::path::Path::from("cluster/main"),
        "memory://cluster/main".into(),
    )
}

/// A full backup of `c` as the leader takes it; `cluster_id` overrides the
/// one etcd reports.
async fn full_backup(
    store: &BackupStore,
    c: &EtcdClient,
    cluster_id: Option<u64>,
) -> (String, i64) {
    let status = c.status().await.unwrap();
    let hash = c.hash_kv(status.revision).await.unwrap();
    let stream = c.snapshot().await.unwrap();
    let info = BackupInfo {
        etcd_version: VERSION.into(),
        timestamp: 1,
        cluster_spec: Some(ClusterSpec {
            member_count: 1,
            etcd_version: VERSION.into(),
        }),
    };
    let summary = store
        .write_backup_hashed(
            stream,
            &info,
            Some(status.revision),
            Some(1),
            BackupFacts {
                kv_hash: Some(backup::KvHash {
                    revision: hash.revision,
                    hash: hash.hash,
                    compact_revision: hash.compact_revision,
                }),
                cluster_id: Some(cluster_id.unwrap_or(status.cluster_id)),
                replayed_from: None,
                requested_at: None,
            },
            std::time::SystemTime::now(),
        )
        .await
        .unwrap();
    (summary.name, status.revision)
}

fn streamer(
    store: &BackupStore,
    c: &EtcdClient,
    base: Option<String>,
) -> (
    Arc<DeltaShared>,
    CancellationToken,
    tokio::sync::watch::Sender<Option<DeltaTarget>>,
) {
    let shared = Arc::new(DeltaShared::default());
    let (tx, rx) = tokio::sync::watch::channel(Some(DeltaTarget {
        epoch: 1,
        endpoints: c.endpoints().to_vec(),
        base,
    }));
    let s = DeltaStreamer {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        interval: Duration::from_millis(200),
        tls: None,
        shared: shared.clone(),
        target: rx,
    };
    let cancel = CancellationToken::new();
    tokio::spawn(s.run(cancel.clone()));
    (shared, cancel, tx)
}

async fn apply(c: &EtcdClient, oracle: &mut BTreeMap<Vec<u8>, Vec<u8>>, ch: KeyChange) -> i64 {
    match &ch {
        KeyChange::Put { key, value, .. } => {
            oracle.insert(key.clone(), value.clone());
        }
        KeyChange::Delete { key } => {
            oracle.remove(key);
        }
    }
    c.apply_changes(&[ch]).await.unwrap()
}

fn put(k: &str, v: &str, lease: i64) -> KeyChange {
    KeyChange::Put {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        lease,
    }
}

async fn uploaded_to(store: &BackupStore, base: &str, rev: i64, at_least: i64) {
    wait_for(
        &format!("segments through revision {at_least}"),
        Duration::from_secs(30),
        || {
            let (store, base) = (store.clone(), base.to_string());
            async move {
                let ranges = store.list_segments(&base).await.ok()?;
                (chain_end(rev, &ranges) >= at_least).then_some(())
            }
        },
    )
    .await;
}

/// The keyspace and HashKV a replay of `base` to `to` restores.
async fn replayed(
    store: &BackupStore,
    base: &str,
    to: ReplayTo,
    scratch: &std::path::Path,
) -> (i64, BTreeMap<Vec<u8>, Vec<u8>>, u32) {
    let plan = pitr::plan(store, base, to).await.unwrap().unwrap();
    let settings = pitr::ReplaySettings {
        bin_dirs: tests::etcd_bin_dirs(),
        scratch: scratch.join("replay"),
        clock: Arc::new(SystemClock),
    };
    let done = pitr::replay(store, &plan, &settings).await.unwrap();
    assert!(
        !settings.scratch.exists(),
        "the replay's scratch folder is left behind"
    );
    // Serve the new backup and read it back.
    let snap = scratch.join("check.db");
    store.download_backup(&done.name, &snap).await.unwrap();
    let check = etcd::Throwaway::start(
        &etcd_binaries(VERSION),
        &snap,
        &scratch.join("check"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let kvs: BTreeMap<_, _> = check.client.all_kvs().await.unwrap().into_iter().collect();
    let hash = check.client.hash_kv(done.revision).await.unwrap().hash;
    let rev = check.revision;
    check.stop().await;
    std::fs::remove_dir_all(scratch.join("check")).unwrap();
    assert_eq!(rev, done.revision);
    (done.revision, kvs, hash)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_change_is_recorded_and_a_replay_rebuilds_any_point_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, c) = etcd(dir.path()).await;
    let store = memory_store();
    let mut oracle = BTreeMap::new();
    for i in 0..10 {
        apply(&c, &mut oracle, put(&format!("/k/{i}"), "before", 0)).await;
    }
    let (base, base_rev) = full_backup(&store, &c, None).await;
    let (shared, cancel, _tx) = streamer(&store, &c, Some(base.clone()));

    // Phase one: puts, deletes, a key on a lease, a transaction of several keys.
    c.lease_grant_id(LEASE, 900).await.unwrap();
    for i in 0..20 {
        apply(
            &c,
            &mut oracle,
            put(&format!("/k/{i}"), &format!("one-{i}"), 0),
        )
        .await;
    }
    apply(
        &c,
        &mut oracle,
        KeyChange::Delete {
            key: b"/k/3".to_vec(),
        },
    )
    .await;
    apply(&c, &mut oracle, put("/leased", "yes", LEASE)).await;
    let several = vec![
        put("/t/a", "1", 0),
        put("/t/b", "2", 0),
        KeyChange::Delete {
            key: b"/k/4".to_vec(),
        },
    ];
    for ch in &several {
        match ch {
            KeyChange::Put { key, value, .. } => oracle.insert(key.clone(), value.clone()),
            KeyChange::Delete { key } => oracle.remove(key),
        };
    }
    let one = c.apply_changes(&several).await.unwrap();
    let at_one = oracle.clone();
    let hash_one = c.hash_kv(one).await.unwrap().hash;
    uploaded_to(&store, &base, base_rev, one).await;
    let time_one = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Phase two: overwrites and deletes after a known time.
    for i in 0..20 {
        apply(
            &c,
            &mut oracle,
            put(&format!("/k/{i}"), &format!("two-{i}"), 0),
        )
        .await;
    }
    apply(
        &c,
        &mut oracle,
        KeyChange::Delete {
            key: b"/leased".to_vec(),
        },
    )
    .await;
    let two = apply(&c, &mut oracle, put("/last", "z", 0)).await;
    let hash_two = c.hash_kv(two).await.unwrap().hash;
    uploaded_to(&store, &base, base_rev, two).await;
    let status = shared.status();
    assert_eq!(status.base.as_deref(), Some(base.as_str()));
    assert_eq!(status.uploaded_to, Some(two));
    assert_eq!(status.gap, None);
    assert!(!shared.full_needed());
    cancel.cancel();

    let to_kvs = |m: &BTreeMap<Vec<u8>, Vec<u8>>| m.clone();
    // The latest state: the same keys, and the same HashKV as the live
    // member at that revision (same revisions, versions and leases).
    let (rev, kvs, hash) = replayed(&store, &base, ReplayTo::Latest, dir.path()).await;
    assert_eq!(rev, two);
    assert_eq!(kvs, to_kvs(&oracle));
    assert_eq!(
        hash, hash_two,
        "the replayed keyspace hashes differently from the live one"
    );
    // A chosen revision: exactly the keyspace then, the lease key included.
    let (rev, kvs, hash) = replayed(&store, &base, ReplayTo::Revision(one), dir.path()).await;
    assert_eq!((rev, &kvs), (one, &at_one));
    assert_eq!(hash, hash_one);
    // A time: every change seen by then, none after.
    let (rev, kvs, _) = replayed(&store, &base, ReplayTo::Time(time_one), dir.path()).await;
    assert_eq!((rev, &kvs), (one, &at_one));
    // Outside the chain: refused before anything runs.
    let err = pitr::plan(&store, &base, ReplayTo::Revision(two + 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in backup"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn compacted_history_is_a_gap_that_asks_for_a_full_backup() {
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, c) = etcd(dir.path()).await;
    let store = memory_store();
    let (base, _) = full_backup(&store, &c, None).await;
    let mut oracle = BTreeMap::new();
    let mut last = 0;
    for i in 0..10 {
        last = apply(&c, &mut oracle, put(&format!("/g/{i}"), "x", 0)).await;
    }
    // The history after the full backup is gone before a leader followed it.
    c.compact(last).await.unwrap();
    let (shared, cancel, tx) = streamer(&store, &c, Some(base.clone()));
    wait_for("the gap", Duration::from_secs(30), || {
        let shared = shared.clone();
        async move { shared.full_needed().then_some(()) }
    })
    .await;
    let gap = shared.status().gap.unwrap();
    assert!(gap.contains("compacted"), "{gap}");
    assert!(store.list_segments(&base).await.unwrap().is_empty());

    // The full backup the leader then takes starts a new chain.
    let (fresh, fresh_rev) = full_backup(&store, &c, None).await;
    shared.full_taken();
    tx.send_replace(Some(DeltaTarget {
        epoch: 1,
        endpoints: c.endpoints().to_vec(),
        base: Some(fresh.clone()),
    }));
    let next = apply(&c, &mut oracle, put("/g/after", "y", 0)).await;
    uploaded_to(&store, &fresh, fresh_rev, next).await;
    assert_eq!(shared.status().gap, None);
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chain_is_resumed_only_on_the_cluster_it_began_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, c) = etcd(dir.path()).await;
    let store = memory_store();
    // The newest backup is of another cluster (a restore since, or a replay).
    let (base, _) = full_backup(&store, &c, Some(0x1234)).await;
    let (shared, cancel, _tx) = streamer(&store, &c, None);
    wait_for("a refusal", Duration::from_secs(30), || {
        let shared = shared.clone();
        async move { shared.full_needed().then_some(()) }
    })
    .await;
    let why = shared.status().gap.unwrap();
    assert!(
        why.contains(&base) && why.contains("not of the running cluster"),
        "{why}"
    );
    c.put("/x", "y").await.unwrap();
    // Nothing was written beside it.
    assert!(store.list_segments(&base).await.unwrap().is_empty());

    // With its own newest backup, a new leader (no base of its own) resumes
    // that backup's chain where the store has it.
    let (own, own_rev) = full_backup(&store, &c, None).await;
    cancel.cancel();
    let (shared, cancel, _tx) = streamer(&store, &c, None);
    let rev = c.apply_changes(&[put("/y", "1", 0)]).await.unwrap();
    uploaded_to(&store, &own, own_rev, rev).await;
    cancel.cancel();
    let (shared2, cancel2, _tx2) = streamer(&store, &c, None);
    let rev2 = c.apply_changes(&[put("/y", "2", 0)]).await.unwrap();
    uploaded_to(&store, &own, own_rev, rev2).await;
    let ranges = store.list_segments(&own).await.unwrap();
    assert_eq!(chain_end(own_rev, &ranges), rev2, "{ranges:?}");
    backup::check_chain(Some(own_rev), &ranges).unwrap();
    assert!(!shared.full_needed() && !shared2.full_needed());
    cancel2.cancel();
}
