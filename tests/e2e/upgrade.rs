//! etcd version changes on real binaries.

use std::time::Duration;

use tests::{get, members, put, wait_for};

async fn versions(env: &tests::ClusterEnv) -> Vec<String> {
    let mut out = vec![];
    for h in 1..=3 {
        let ep = env.client_url(h);
        let Ok(c) =
            etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(2)).await
        else {
            continue;
        };
        if let Ok(s) = c.status().await {
            out.push(s.version);
        }
    }
    out
}

/// Writes sequential keys through all three client URLs until stopped, and
/// returns the keys whose writes were acknowledged.
fn start_writer(
    env: &tests::ClusterEnv,
) -> (
    tokio::task::JoinHandle<Vec<String>>,
    tokio::sync::watch::Sender<bool>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let endpoints: Vec<String> = (1..=3).map(|h| env.client_url(h)).collect();
    let task = tokio::spawn(async move {
        let mut acked = vec![];
        let start = std::time::Instant::now();
        let mut n = 0u64;
        // Bounded: stops when told, or after five minutes whatever happens.
        while !*stop_rx.borrow() && start.elapsed() < Duration::from_secs(300) {
            let key = format!("/writer/{n:08}");
            let ep = &endpoints[(n % 3) as usize];
            if tokio::time::timeout(Duration::from_secs(2), put(ep, &key, "v"))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                acked.push(key);
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    });
    (task, stop_tx)
}

/// Counts failed reads through the normal client URL until stopped: during a
/// dump and restore the member is quarantined, so the URL must refuse.
fn watch_refusals(
    ep: String,
) -> (
    tokio::task::JoinHandle<u32>,
    tokio::sync::watch::Sender<bool>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut refused = 0;
        let start = std::time::Instant::now();
        while !*stop_rx.borrow() && start.elapsed() < Duration::from_secs(300) {
            if tokio::time::timeout(Duration::from_secs(1), get(&ep, "/probe"))
                .await
                .map_or(true, |r| r.is_err())
            {
                refused += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        refused
    });
    (task, stop_tx)
}

/// One manager running a one-member cluster of `version` holding /k = v.
async fn one_member_with_data(env: &tests::ClusterEnv, version: &str) -> (tests::Manager, String) {
    let m = env.start(1);
    env.configure(1, version);
    let ep = env.client_url(1);
    tests::wait_put(
        &format!("a member on {version}"),
        &ep,
        "/k",
        "v",
        Duration::from_secs(60),
    )
    .await;
    (m, ep)
}

/// Ask for `to` and wait until the one member runs it with /k still there.
async fn change_version_and_wait(env: &tests::ClusterEnv, ep: &str, to: &str) {
    assert!(
        env.ctl(&[&format!("-etcd-version={to}"), "configure-cluster"])
            .success
    );
    wait_for(
        &format!("the member on {to} with the data"),
        Duration::from_secs(120),
        || {
            let (env, ep) = (env.clone(), ep.to_string());
            async move {
                let v = versions(&env).await;
                let data = get(&ep, "/k").await.ok()??;
                (v == [to] && data == "v").then_some(())
            }
        },
    )
    .await;
}

/// A rolling change on three members with a client writing all along;
/// returns the managers' logs.
async fn rolling(from: &str, to: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let ms: Vec<_> = (1..=3).map(|h| env.start(h)).collect();
    assert!(
        env.ctl(&[
            "-member-count=3",
            &format!("-etcd-version={from}"),
            "configure-cluster"
        ])
        .success
    );
    let ep = env.client_url(1);
    // Three members join one at a time (each a learner first, promoted once
    // caught up, behind etcd's 5 s strict reconfiguration check).
    let formed = std::time::Instant::now();
    wait_for(
        &format!("three healthy voters on {from}"),
        Duration::from_secs(120),
        || {
            let ep = ep.clone();
            let env = env.clone();
            async move {
                put(&ep, "/before", "upgrade").await.ok()?;
                let ms = members(&ep).await.ok()?;
                let v = versions(&env).await;
                (ms.len() == 3
                    && ms.iter().all(|m| !m.is_learner)
                    && v.len() == 3
                    && v.iter().all(|v| v == from))
                .then_some(())
            }
        },
    )
    .await;
    println!(
        "three voters on {from} after {:.1} s",
        formed.elapsed().as_secs_f64()
    );
    let store = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
    let backups_before = store.list_backups().await.unwrap().len();
    let (writer, stop) = start_writer(&env);

    assert!(
        env.ctl(&[&format!("-etcd-version={to}"), "configure-cluster"])
            .success
    );
    wait_for(
        &format!("every member on {to}"),
        Duration::from_secs(240),
        || {
            let env = env.clone();
            async move {
                let v = versions(&env).await;
                (v.len() == 3 && v.iter().all(|v| v == to)).then_some(())
            }
        },
    )
    .await;
    stop.send(true).unwrap();
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 10,
        "the writer made progress: {} writes",
        acked.len()
    );
    // No acknowledged write lost.
    for key in &acked {
        let got = get(&ep, key).await.unwrap();
        assert_eq!(got.as_deref(), Some("v"), "acknowledged write {key} lost");
    }
    assert_eq!(
        get(&ep, "/before").await.unwrap().as_deref(),
        Some("upgrade")
    );
    assert_eq!(members(&ep).await.unwrap().len(), 3);
    let taken = store.list_backups().await.unwrap().len() - backups_before;
    assert!(
        taken >= 3,
        "a backup before each member's restart: {taken} new backups"
    );
    ms.iter().map(|m| m.log_text()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn minor_upgrade_rolls_in_place_3_4_to_3_5() {
    rolling("3.4.23", "3.5.30").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_upgrade_rolls_3_5_16_to_3_5_30() {
    rolling("3.5.16", "3.5.30").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_downgrade_rolls_3_5_30_to_3_5_16() {
    rolling("3.5.30", "3.5.16").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn minor_upgrade_rolls_3_3_to_3_4() {
    rolling("3.3.25", "3.4.23").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn minor_upgrade_rolls_3_6_to_3_7() {
    rolling("3.6.16", "3.7.3").await;
}

/// etcd's downgrade protocol: validate and enable, every member's data
/// migrated to 3.6, then the binaries one at a time; a writer all along.
#[tokio::test(flavor = "multi_thread")]
async fn downgrade_3_7_to_3_6_by_etcds_protocol() {
    let logs = rolling("3.7.3", "3.6.16").await;
    assert!(
        logs.contains("downgrade validated and enabled"),
        "the downgrade went by etcd's protocol:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn downgrade_3_6_to_3_5_by_etcds_protocol() {
    let logs = rolling("3.6.16", "3.5.35").await;
    assert!(
        logs.contains("downgrade validated and enabled"),
        "the downgrade went by etcd's protocol:\n{logs}"
    );
}

/// etcd's guide: every 3.5 member on 3.5.32+ before 3.6. The planner rolls
/// 3.5.30 to the newest installed 3.5.32+ (3.5.35) first, then to 3.6.
#[tokio::test(flavor = "multi_thread")]
async fn upgrade_3_5_30_to_3_6_goes_through_3_5_35() {
    let logs = rolling("3.5.30", "3.6.16").await;
    let stone = logs
        .lines()
        .filter(|l| l.contains("restarted etcd") && l.contains("3.5.35"))
        .count();
    assert!(
        stone >= 3,
        "every member restarted on 3.5.35 first:\n{logs}"
    );
}

/// 3.5.30 -> 3.7.3 in one request on three members, a writer throughout:
/// the whole path in place (3.5.35, the v2 store check, 3.6.16, a snapshot
/// on 3.6 before 3.7 opens the data, 3.7.3), no acknowledged write lost.
#[tokio::test(flavor = "multi_thread")]
async fn two_minors_up_in_place_3_5_30_to_3_7_3() {
    let logs = rolling("3.5.30", "3.7.3").await;
    assert!(
        logs.contains("3.5.30 -> 3.5.35 -> 3.6.16 -> 3.7.3 (in place"),
        "the path planned:\n{logs}"
    );
    assert!(
        logs.matches("etcd snapshotted its WAL").count() >= 3,
        "every member snapshotted on 3.6 first:\n{logs}"
    );
}

/// Two minors up in one request: the whole path rolls in place through the
/// newest installed version of the minor between (3.3.25 -> 3.4.23 ->
/// 3.5.30), a writer running all along, no acknowledged write lost.
#[tokio::test(flavor = "multi_thread")]
async fn two_minors_up_roll_through_the_minor_between_3_3_to_3_5() {
    let logs = rolling("3.3.25", "3.5.30").await;
    assert!(
        logs.contains("3.3.25 -> 3.4.23 -> 3.5.30 (in place"),
        "the path planned:\n{logs}"
    );
    let between = logs
        .lines()
        .filter(|l| l.contains("restarted etcd") && l.contains("3.4.23"))
        .count();
    assert!(between >= 3, "every member on 3.4.23 first:\n{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn minor_downgrade_goes_by_dump_and_restore_3_5_to_3_4() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let (_m, ep) = one_member_with_data(&env, "3.5.30").await;
    let (watcher, stop) = watch_refusals(ep.clone());
    change_version_and_wait(&env, &ep, "3.4.23").await;
    stop.send(true).unwrap();
    assert!(
        watcher.await.unwrap() > 0,
        "the client URL never refused: no quarantine was seen"
    );
    put(&ep, "/after", "downgrade").await.unwrap();
}

/// 3.5.30 -> 3.7.3 in one request goes in place by the whole path: 3.5.35
/// (etcd's floor for 3.6), the v2 store check, 3.6.16, a snapshot on 3.6,
/// 3.7.3; revisions untouched. Then 3.7.3 -> 3.5.35, two minors down, by
/// etcd's downgrade protocol twice (through 3.6.16).
#[tokio::test(flavor = "multi_thread")]
async fn the_whole_path_up_two_minors_and_down_again() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let (m, ep) = one_member_with_data(&env, "3.5.30").await;
    let c = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
        .await
        .unwrap();
    let before = c.status().await.unwrap().revision;
    change_version_and_wait(&env, &ep, "3.7.3").await;
    let log = m.log_text();
    assert!(
        log.contains("3.5.30 -> 3.5.35 -> 3.6.16 -> 3.7.3 (in place; next step: 3.5.35)"),
        "{log}"
    );
    assert!(log.contains("etcd snapshotted its WAL"), "{log}");
    let c = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
        .await
        .unwrap();
    let after = c.status().await.unwrap().revision;
    assert!(
        after >= before && after < 1_000_000_000,
        "in place, not restored: {before} -> {after}"
    );
    change_version_and_wait(&env, &ep, "3.5.35").await;
    let log = m.log_text();
    assert!(log.contains("3.7.3 -> 3.6.16 -> 3.5.35 (in place"), "{log}");
    assert_eq!(
        log.matches("downgrade validated and enabled").count(),
        2,
        "{log}"
    );
    put(&ep, "/after", "downgrades").await.unwrap();
}

/// Custom v2 data (written through the v2 API a user turned on with
/// ETCD_ENABLE_V2) blocks 3.5 -> 3.6 before anything moves: `status` names
/// the reason, the member stays on 3.5 with its v3 and v2 data, serving.
#[tokio::test(flavor = "multi_thread")]
async fn custom_v2_data_blocks_3_5_to_3_6_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.store_env
        .push(("ETCD_ENABLE_V2".to_string(), "true".to_string()));
    let (m, ep) = one_member_with_data(&env, "3.5.35").await;
    let addr = ep.trim_start_matches("http://").to_string();
    let (code, body) = tests::moto::request(
        &addr,
        "PUT",
        "/v2/keys/legacy",
        "application/x-www-form-urlencoded",
        "value=v2data",
    )
    .await
    .unwrap();
    assert_eq!(code, 201, "{body}");
    assert!(
        env.ctl(&["-etcd-version=3.6.16", "configure-cluster"])
            .success
    );
    wait_for(
        "the upgrade refused in status for custom v2 content",
        Duration::from_secs(60),
        || {
            let env = env.clone();
            async move {
                let s = env.ctl(&["status"]).stdout;
                (s.contains("custom v2 content") && s.contains("Nothing was changed")).then_some(())
            }
        },
    )
    .await;
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(log.contains("v2 store checked"), "{log}");
    assert!(log.contains("v2 store check job started"), "{log}");
    // Nothing moved: 3.5.35 still, both kinds of data there, writes work.
    assert_eq!(versions(&env).await, ["3.5.35"]);
    assert_eq!(get(&ep, "/k").await.unwrap().as_deref(), Some("v"));
    let (code, body) = tests::moto::request(&addr, "GET", "/v2/keys/legacy", "", "")
        .await
        .unwrap();
    assert!(code == 200 && body.contains("v2data"), "{body}");
    put(&ep, "/after", "refusal").await.unwrap();
    // No copy of the member's data is left behind.
    assert!(!m.data_dir.join("v2store-check").exists());
}

/// A setting the next minor would not understand (3.7 removed the
/// experimental names 3.6 deprecated) holds 3.6 -> 3.7 before anything
/// moves: `status` names the variable and what to write instead. With the
/// manager restarted on the new name the member moves, and etcd 3.7 warns
/// about no variable.
#[tokio::test(flavor = "multi_thread")]
async fn a_setting_3_7_lacks_holds_3_6_to_3_7_until_it_is_renamed() {
    const OLD: &str = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL";
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.store_env.push((OLD.to_string(), "5s".to_string()));
    let (mut m, ep) = one_member_with_data(&env, "3.6.16").await;
    assert!(
        env.ctl(&["-etcd-version=3.7.3", "configure-cluster"])
            .success
    );
    wait_for(
        "the upgrade refused in status, naming the setting",
        Duration::from_secs(60),
        || {
            let env = env.clone();
            async move {
                let s = env.ctl(&["status"]).stdout;
                (s.contains(OLD)
                    && s.contains("use ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL instead")
                    && s.contains("Nothing was changed"))
                .then_some(())
            }
        },
    )
    .await;
    assert_eq!(versions(&env).await, ["3.6.16"]);
    put(&ep, "/after", "refusal").await.unwrap();

    m.env.retain(|(k, _)| k != OLD);
    m.env
        .push(("ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL".into(), "5s".into()));
    m.restart();
    change_version_and_wait(&env, &ep, "3.7.3").await;
    assert_eq!(
        get(&ep, "/after").await.unwrap().as_deref(),
        Some("refusal")
    );
    // etcd's own log: 3.6 read the old name (and called it deprecated), and
    // no version ran with a variable it did not know.
    let etcd_log = std::fs::read_to_string(m.data_dir.join("etcd.log")).unwrap();
    assert!(
        etcd_log.contains("--experimental-watch-progress-notify-interval is deprecated"),
        "{etcd_log}"
    );
    assert!(
        etcd_log.contains("3.7.3") && !etcd_log.contains("unrecognized environment variable"),
        "{etcd_log}"
    );
}
