//! Faults that used to stop a manager, or every manager: a store that is down
//! when a manager starts, malformed and oversized control files.

use std::time::Duration;

use tests::{put, wait_for, wait_put};

/// Ask for a one-member 3.5.30 cluster and wait until it takes writes
/// (/k = v); its client URL.
async fn one_member(env: &tests::ClusterEnv) -> String {
    env.configure(1, "3.5.30");
    let ep = env.client_url(1);
    wait_put(
        "a one-member cluster",
        &ep,
        "/k",
        "v",
        Duration::from_secs(60),
    )
    .await;
    ep
}

async fn status_json(env: &tests::ClusterEnv) -> Option<serde_json::Value> {
    serde_json::from_str(&env.ctl(&["-o", "json", "status"]).stdout).ok()
}

/// A manager restarted while the store is unreachable brings its etcd back
/// at once (it used to exit on the store probe, leaving its member down);
/// once the store answers it leads again. The store is reached with kops'
/// S3_* variables (managers and etcd-manager-ctl alike).
#[tokio::test(flavor = "multi_thread")]
async fn the_local_etcd_resumes_while_the_store_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    let moto = tests::Moto::start("127.0.0.1", Some(&dir.path().join("moto.log")))
        .await
        .unwrap();
    moto.create_bucket("outage").await.unwrap();
    let gate = tests::TcpGate::in_front_of(&moto).await;
    env.use_s3(&moto, "outage");
    // The store's settings as kops passes them: S3_* variables, no flags.
    env.store_args = vec![];
    env.store_env = [
        ("S3_ENDPOINT", gate.endpoint()),
        ("S3_REGION", "us-east-1".to_string()),
        ("S3_ACCESS_KEY_ID", "kops".to_string()),
        ("S3_SECRET_ACCESS_KEY", "kops".to_string()),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec();
    let mut m = env.start(1);
    env.configure(1, "3.5.30");
    let ep = env.client_url(1);
    wait_put(
        "a one-member cluster",
        &ep,
        "/before",
        "1",
        Duration::from_secs(60),
    )
    .await;

    // Down goes the store; the manager restarts (etcd stops with it).
    assert!(m.terminate(Duration::from_secs(30)), "clean stop");
    gate.set_open(false);
    assert!(
        put(&ep, "/x", "y").await.is_err(),
        "etcd stopped with its manager"
    );
    let m = env.start(1);
    wait_put(
        "etcd back while the store is down",
        &ep,
        "/during",
        "2",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        tests::get(&ep, "/before").await.unwrap().as_deref(),
        Some("1")
    );
    wait_for(
        "the manager says the store does not answer",
        Duration::from_secs(30),
        || {
            let log = m.log_text();
            async move {
                log.contains("the backup store does not answer yet")
                    .then_some(())
            }
        },
    )
    .await;

    // The store returns: the manager leads and reports again.
    gate.set_open(true);
    wait_for(
        "a leader report in the store",
        Duration::from_secs(60),
        || async {
            let s = status_json(&env).await?;
            (!s["report"]["leader"].as_str()?.is_empty()).then_some(())
        },
    )
    .await;
}

/// One malformed or oversized control file used to make every read of the
/// control files fail, so no manager led at all: no backups, no repairs. Now
/// it is named in `status` and skipped, and the leader goes on.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_control_files_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "1h";
    let _m = env.start_with_metrics(1);
    one_member(&env).await;

    let control = env.store_path().join("control");
    std::fs::create_dir_all(control.join("broken")).unwrap();
    std::fs::write(control.join("broken/_command.json"), b"{not json").unwrap();
    std::fs::create_dir_all(control.join("huge")).unwrap();
    let mut huge = b"{\"restoreBackup\":{\"backup\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 3 << 20));
    huge.extend_from_slice(b"\"}}");
    std::fs::write(control.join("huge/_command.json"), huge).unwrap();

    wait_for(
        "both files named in status",
        Duration::from_secs(90),
        || async {
            let s = status_json(&env).await?;
            let warnings = s["report"]["warnings"].as_array()?.clone();
            let text = serde_json::to_string(&warnings).ok()?;
            (text.contains("broken/_command.json")
                && text.contains("huge/_command.json")
                && text.contains("larger than"))
            .then_some(())
        },
    )
    .await;
    let metrics_addr = env.metrics_addr(1);
    wait_for("the malformed-files gauge", Duration::from_secs(30), || {
        let addr = metrics_addr.clone();
        async move {
            let (_, text) = tests::http_get(&addr, "/metrics").await.ok()?;
            (tests::metric_value(&text, "etcd_manager_store_malformed_files") == Some(2.0))
                .then_some(())
        }
    })
    .await;
    // The leader still acts: an operator's backup-now is served.
    let out = env.ctl(&["backup-now"]);
    assert!(
        out.success,
        "backup-now with malformed files queued: {out:?}"
    );
    let human = env.ctl(&["status"]).stdout;
    assert!(
        human.contains("WARNING:") && human.contains("broken/_command.json"),
        "{human}"
    );
}

/// A store outage costs few store calls: while the store does not answer,
/// the leader's lease, backups and control reads back off instead of
/// trying on every pass. Counted at a gate in front of moto: every attempt
/// is a connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_costs_few_store_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "5s";
    let moto = tests::Moto::start("127.0.0.1", Some(&dir.path().join("moto.log")))
        .await
        .unwrap();
    moto.create_bucket("calls").await.unwrap();
    let gate = tests::TcpGate::in_front_of(&moto).await;
    env.use_s3(&moto, "calls");
    env.store_args = vec![
        format!("--s3-endpoint={}", gate.endpoint()),
        "--s3-region=us-east-1".into(),
    ];
    let m = env.start(1);
    one_member(&env).await;
    wait_for("a backup", Duration::from_secs(60), || {
        let log = m.log_text();
        async move { log.contains("took backup").then_some(()) }
    })
    .await;
    gate.set_open(false);
    let before = gate.connections();
    // The outage, held for a set time (the scenario, not a wait for a result).
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = gate.connections() - before;
    gate.set_open(true);
    println!("store connections during a 60 s outage: {during}");
    assert!(
        during <= 60,
        "{during} store connections in 60 s\n{}",
        m.log_text()
    );
    // Back: the manager leads and backs up again.
    let mark = m.log_text().matches("took backup").count();
    wait_for(
        "a backup after the outage",
        Duration::from_secs(120),
        || {
            let log = m.log_text();
            async move { (log.matches("took backup").count() > mark).then_some(()) }
        },
    )
    .await;
}

/// A database at its quota (a 4 MiB ETCD_QUOTA_BACKEND_BYTES, filled by
/// overwriting one key) raises etcd's NOSPACE alarm and the cluster takes
/// no writes; the leader compacts, defragments and disarms, and writes
/// resume without an operator, the data intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_database_is_cleared_and_takes_writes_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.store_env
        .push(("ETCD_QUOTA_BACKEND_BYTES".into(), "4194304".into()));
    let m = env.start_with_metrics(1);
    let ep = one_member(&env).await;
    let value = "x".repeat(100_000);
    let mut full = None;
    for _ in 0..500 {
        if let Err(e) = put(&ep, "/big", &value).await {
            full = Some(e);
            break;
        }
    }
    let full = full.expect("the quota was never reached");
    assert!(full.contains("space exceeded"), "{full}");
    wait_put(
        "writes again after the alarm",
        &ep,
        "/after",
        "1",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(tests::get(&ep, "/k").await.unwrap().as_deref(), Some("v"));
    let log = m.log_text();
    for step in [
        "space alarm: history compacted",
        "space alarm: member defragmented",
        "space alarm cleared",
    ] {
        assert!(log.contains(step), "{step}:\n{log}");
    }
    // The leader exports the database size against the quota it was given.
    let (_, text) = tests::http_get(&env.metrics_addr(1), "/metrics")
        .await
        .unwrap();
    let value = |name: &str| tests::metric_value(&text, name);
    assert_eq!(
        value("etcd_manager_etcd_db_quota_bytes"),
        Some(4_194_304.0),
        "{text}"
    );
    let db_size = text
        .lines()
        .filter(|l| l.starts_with("etcd_manager_etcd_db_size_bytes{member="))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(db_size.is_some_and(|v| v > 0.0), "{text}");
    assert!(
        value("etcd_manager_space_alarms_cleared_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
}

/// Churn (a few MiB of overwrites, then compacted) leaves a member's
/// database mostly free; past the thresholds (here 50 % and 1 MiB) the
/// leader defragments it by itself, with a writer running, and the file
/// shrinks; no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_fragmented_member_is_defragmented_by_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let m = env.start_with(
        1,
        &[
            "--defrag-fragmentation=0.5",
            "--defrag-min-free-bytes=1048576",
        ],
    );
    let ep = one_member(&env).await;
    let c = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(10))
        .await
        .unwrap();
    let value = "x".repeat(20_000);
    // One key overwritten 300 times: after the compaction only the last
    // value is in use.
    for _ in 0..300 {
        c.put("/churn", &value).await.unwrap();
    }
    let rev = c.status().await.unwrap().revision;
    c.compact(rev).await.unwrap();
    let before = c.status().await.unwrap();
    assert!(
        before.db_size > 4 << 20 && before.db_in_use * 2 < before.db_size,
        "fragmented: {before:?}"
    );
    // A writer throughout; every acknowledged write must be there after.
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let wep = ep.clone();
    let writer = tokio::spawn(async move {
        let mut acked = vec![];
        let mut n = 0u32;
        while !*stop_rx.borrow_and_update() && n < 20_000 {
            let key = format!("/writer/{n:06}");
            if put(&wep, &key, "v").await.is_ok() {
                acked.push(key);
            }
            n += 1;
        }
        acked
    });
    wait_for("the member defragmented", Duration::from_secs(60), || {
        let log = m.log_text();
        async move { log.contains("member defragmented").then_some(()) }
    })
    .await;
    stop_tx.send(true).unwrap();
    let acked = writer.await.unwrap();
    let after = c.status().await.unwrap();
    assert!(
        after.db_size * 2 < before.db_size,
        "the file shrank: {} -> {}",
        before.db_size,
        after.db_size
    );
    for key in &acked {
        assert_eq!(
            tests::get(&ep, key).await.unwrap().as_deref(),
            Some("v"),
            "{key}"
        );
    }
    // On demand: `etcd-manager-ctl defrag` waits until the leader did it
    // (seen within the leader's minute between reads of a steady store).
    let out = env.ctl(&["defrag", "--timeout=2m"]);
    assert!(out.success, "{out:?}");
    assert!(out.stdout.contains("defragmented every voter"), "{out:?}");
    let log = m.log_text();
    assert_eq!(log.matches("member defragmented").count(), 2, "{log}");
    assert!(
        log.contains("defragmentation an operator asked for is done"),
        "{log}"
    );
    assert!(!env.ctl(&["defrag", "../x"]).success);
}
