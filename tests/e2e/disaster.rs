//! Disaster recovery: total loss, restore-backup, refused restores.

use std::time::Duration;

use tests::{get, members, put, wait_for};

async fn status_json(env: &tests::ClusterEnv) -> Option<serde_json::Value> {
    serde_json::from_str(&env.ctl(&["-o", "json", "status"]).stdout).ok()
}

async fn waits(env: &tests::ClusterEnv) -> Vec<String> {
    status_json(env)
        .await
        .and_then(|v| v["report"]["waits"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|w| w.as_str().map(str::to_string))
        .collect()
}

/// Wait until one of the leader's wait reasons in `status` satisfies `pred`.
async fn wait_for_status(
    env: &tests::ClusterEnv,
    what: &str,
    deadline: Duration,
    pred: impl Fn(&str) -> bool,
) {
    let pred = &pred;
    wait_for(what, deadline, || async move {
        waits(env).await.iter().any(|w| pred(w)).then_some(())
    })
    .await;
}

/// Three named voters seen through `ep`, which takes writes.
async fn three_voters(ep: &str, deadline: Duration) -> Vec<etcd::Member> {
    wait_for("three healthy voters", deadline, || async move {
        put(ep, "/probe", "x").await.ok()?;
        let ms = members(ep).await.ok()?;
        (ms.len() == 3 && ms.iter().all(|m| !m.is_learner && !m.name.is_empty())).then_some(ms)
    })
    .await
}

/// The newest backup whose recorded revision covers `revision`.
async fn backup_covering(env: &tests::ClusterEnv, revision: i64) -> String {
    let store = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
    wait_for(
        "a backup covering the written keys",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move {
                for n in store.list_backups().await.ok()?.iter().rev() {
                    if store.read_backup_extra(n).await.ok()??.revision? >= revision {
                        return Some(n.clone());
                    }
                }
                None
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn total_loss_then_restore_backup() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "3s";
    let mut ms: Vec<_> = (1..=3).map(|h| env.start(h)).collect();
    env.configure(3, "3.5.30");
    let ep = env.client_url(1);
    three_voters(&ep, Duration::from_secs(60)).await;
    for i in 0..20 {
        put(&ep, &format!("/keys/{i}"), &format!("value-{i}"))
            .await
            .unwrap();
    }
    // kube-apiserver's leases of masters that existed at backup time.
    for k in [
        "/registry/masterleases/10.0.0.1",
        "/registry/masterleases/10.0.0.2",
        "/registry/masterleases-not-this",
    ] {
        put(&ep, k, "lease").await.unwrap();
    }
    let client = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
        .await
        .unwrap();
    let revision = client.status().await.unwrap().revision;
    let name = backup_covering(&env, revision).await;

    // Everything is lost: managers, etcd processes, data dirs.
    for m in &mut ms {
        m.kill_all();
    }
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    let before = env.ctl(&["list-backups"]).stdout.lines().count();
    // The managers now clear the masters' leases from a restored cluster.
    let ms: Vec<_> = (1..=3)
        .map(|h| env.start_with(h, &["--restore-clear-prefix=/registry/masterleases/"]))
        .collect();

    // The leader creates nothing and says why.
    wait_for_status(
        &env,
        "the leader asks for restore-backup",
        Duration::from_secs(60),
        |w| {
            w.contains(
                "etcd has 0 members registered; must issue restore-backup command to proceed",
            )
        },
    )
    .await;
    assert!(
        get(&ep, "/keys/1").await.is_err(),
        "no cluster may exist before the restore"
    );

    let out = env.ctl(&["restore-backup", &name]);
    assert!(out.success, "{}", out.stderr);
    wait_for(
        "the restored keys through the client URL",
        Duration::from_secs(60),
        || {
            let ep = ep.clone();
            async move { get(&ep, "/keys/19").await.ok()?.filter(|v| v == "value-19") }
        },
    )
    .await;
    // Three members again, the command gone, a fresh backup taken: the
    // restore is over (the members' restarts out of quarantine, and the
    // raft elections they bring, come before), and the data is read.
    wait_for(
        "three members, the command removed and a new backup",
        Duration::from_secs(60),
        || {
            let (env, ep) = (env.clone(), ep.clone());
            async move {
                let ms = members(&ep).await.ok()?;
                let cmds = env.ctl(&["list-commands"]).stdout;
                let backups = env.ctl(&["list-backups"]).stdout.lines().count();
                (ms.len() == 3 && cmds.is_empty() && backups > before).then_some(())
            }
        },
    )
    .await;
    for i in 0..20 {
        assert_eq!(
            get(&ep, &format!("/keys/{i}")).await.unwrap().as_deref(),
            Some(format!("value-{i}").as_str())
        );
    }
    // The old masters' leases are gone, and were gone before any client
    // could read them (cleared while quarantined); the rest is kept.
    assert_eq!(
        get(&ep, "/registry/masterleases/10.0.0.1").await.unwrap(),
        None
    );
    assert_eq!(
        get(&ep, "/registry/masterleases/10.0.0.2").await.unwrap(),
        None
    );
    assert_eq!(
        get(&ep, "/registry/masterleases-not-this")
            .await
            .unwrap()
            .as_deref(),
        Some("lease")
    );
    let logs: String = ms.iter().map(|m| m.log_text()).collect();
    let line = logs
        .lines()
        .find(|l| l.contains("cleared keys from the restored cluster before clients reach it"))
        .unwrap_or_else(|| panic!("no clearing logged:\n{logs}"));
    // Two keys, as the log says (without its colours).
    let mut plain = String::new();
    let mut in_escape = false;
    for c in line.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, c) => plain.push(c),
            _ => {}
        }
    }
    assert!(plain.contains("deleted=2"), "{plain}");
    // Revisions moved forward, so watchers re-list instead of missing events.
    let client = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
        .await
        .unwrap();
    let after = client.status().await.unwrap().revision;
    assert!(after > 1_000_000_000, "revision {after} was not bumped");
    assert!(
        after > revision,
        "revision {after} not above {revision} from before the loss"
    );
    drop(ms);
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_or_missing_backups_are_refused_and_the_cluster_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "2s";
    let m1 = env.start(1);
    env.configure(1, "3.5.30");
    let ep = env.client_url(1);
    tests::wait_put("a serving member", &ep, "/k", "v", Duration::from_secs(30)).await;
    let name = backup_covering(&env, 2).await;
    // Flip one byte of the backup's data.
    let data = env.store_path().join(&name).join("etcd.backup.gz");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    assert!(env.ctl(&["restore-backup", &name]).success);

    wait_for_status(
        &env,
        "the corrupt backup refused",
        Duration::from_secs(30),
        |w| w.contains("refusing restore-backup") && w.contains("corrupt"),
    )
    .await;
    // The cluster keeps serving, the command stays queued, the manager did not crash,
    // and no data dir was touched.
    let data_dirs = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.path().join("data/1/data"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before_dirs = data_dirs();
    assert_eq!(before_dirs.len(), 1, "{before_dirs:?}");
    assert!(!dir.path().join("data/1/data-trashcan").exists());
    put(&ep, "/still", "here").await.unwrap();
    assert_eq!(get(&ep, "/k").await.unwrap().as_deref(), Some("v"));
    assert_eq!(env.ctl(&["list-commands"]).stdout.lines().count(), 1);
    let mut m1 = m1;
    assert!(
        m1.try_exit().is_none(),
        "manager exited:\n{}",
        m1.log_text()
    );

    // A truncated backup is refused the same way.
    assert!(env.ctl(&["delete-command", &name]).success);
    put(&ep, "/k2", "v2").await.unwrap();
    let second = backup_covering(&env, 4).await;
    let data = env.store_path().join(&second).join("etcd.backup.gz");
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    assert!(env.ctl(&["restore-backup", &second]).success);
    wait_for(
        "the truncated backup refused",
        Duration::from_secs(30),
        || {
            let (env, second) = (env.clone(), second.clone());
            async move {
                waits(&env)
                    .await
                    .iter()
                    .any(|w| w.contains(&format!("refusing restore-backup {second}")))
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(data_dirs(), before_dirs);
    assert!(!dir.path().join("data/1/data-trashcan").exists());
    assert_eq!(get(&ep, "/k2").await.unwrap().as_deref(), Some("v2"));

    // A command naming a backup that does not exist (written by another tool).
    assert!(env.ctl(&["delete-command", &second]).success);
    let store = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
    let cmd = backup::Command {
        timestamp: 1,
        restore_backup: Some(backup::RestoreBackupCommand {
            cluster_spec: None,
            backup: "2001-01-01T00:00:00Z-000001".into(),
        }),
    };
    store
        .add_command(&cmd, std::time::SystemTime::now())
        .await
        .unwrap();
    wait_for_status(
        &env,
        "the missing backup refused",
        Duration::from_secs(30),
        |w| {
            w.contains("refusing restore-backup 2001-01-01T00:00:00Z-000001")
                && w.contains("does not exist")
        },
    )
    .await;
    put(&ep, "/still", "serving").await.unwrap();
    assert!(
        m1.try_exit().is_none(),
        "manager exited:\n{}",
        m1.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_in_upstreams_layout_restores() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    // A real snapshot from a plain etcd, stored exactly as upstream stores it:
    // etcd.backup.gz and _etcd_backup.meta, none of our files.
    let ip = tests::host_ip(env.net, 9);
    let spec = tests::single_member_spec("old", "3.4.23", dir.path().join("old-etcd"), &ip, 4001);
    let old = etcd::EtcdProcess::start(tests::etcd_binaries("3.4.23"), spec, vec![], None).unwrap();
    let oep = format!("http://{ip}:4001");
    tests::wait_put(
        "the old etcd",
        &oep,
        "/kops/key",
        "from-upstream",
        Duration::from_secs(30),
    )
    .await;
    let client = etcd::EtcdClient::connect(std::slice::from_ref(&oep), Duration::from_secs(3))
        .await
        .unwrap();
    let store = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
    let info = backup::BackupInfo {
        etcd_version: "3.4.23".into(),
        timestamp: 1_704_067_200,
        cluster_spec: None,
    };
    let written = store
        .write_backup(
            client.snapshot().await.unwrap(),
            &info,
            None,
            None,
            std::time::SystemTime::now(),
        )
        .await
        .unwrap();
    old.stop(Duration::from_secs(10)).await.unwrap();
    let folder = env.store_path().join(&written.name);
    std::fs::remove_file(folder.join("etcd-manager-backup.json")).unwrap();
    std::fs::write(
        folder.join("_etcd_backup.meta"),
        "{\n  \"etcdVersion\": \"3.4.23\",\n  \"timestamp\": \"1704067200\",\n  \"clusterSpec\": {\n    \"memberCount\": 1,\n    \"etcdVersion\": \"3.4.23\"\n  }\n}\n",
    )
    .unwrap();
    std::fs::create_dir_all(env.store_path().join("control")).unwrap();
    std::fs::write(
        env.store_path().join("control/etcd-cluster-spec"),
        r#"{"memberCount":1,"etcdVersion":"3.5.30"}"#,
    )
    .unwrap();
    std::fs::write(
        env.store_path().join("control/etcd-cluster-created"),
        r#"{"timestamp":1638935701000000000}"#,
    )
    .unwrap();

    let _m = env.start(1);
    wait_for_status(
        &env,
        "the leader asks for restore-backup",
        Duration::from_secs(30),
        |w| w.contains("must issue restore-backup"),
    )
    .await;
    assert!(env.ctl(&["restore-backup", &written.name]).success);
    let ep = env.client_url(1);
    wait_for("the upstream backup's key", Duration::from_secs(60), || {
        let ep = ep.clone();
        async move {
            get(&ep, "/kops/key")
                .await
                .ok()?
                .filter(|v| v == "from-upstream")
        }
    })
    .await;
}

/// The created marker was deleted (a lifecycle rule did this to users) but
/// backups exist: never seed silently; an operator may override.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_created_marker_blocks_seeding_until_an_operator_decides() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let store = env.store_path();
    std::fs::create_dir_all(store.join("control")).unwrap();
    std::fs::create_dir_all(store.join("2024-01-01T00:00:00Z-000001")).unwrap();
    std::fs::write(
        store.join("2024-01-01T00:00:00Z-000001/_etcd_backup.meta"),
        r#"{"etcdVersion":"3.5.30"}"#,
    )
    .unwrap();
    std::fs::write(
        store.join("control/etcd-cluster-spec"),
        r#"{"memberCount":1,"etcdVersion":"3.5.30"}"#,
    )
    .unwrap();
    let _m = env.start(1);
    wait_for_status(
        &env,
        "the leader refuses to seed",
        Duration::from_secs(30),
        |w| {
            w.contains("etcd-cluster-created is missing but backups exist")
                && w.contains("seed-new-cluster")
        },
    )
    .await;
    let ep = env.client_url(1);
    assert!(get(&ep, "/x").await.is_err(), "no cluster may be created");
    let out = env.ctl(&["seed-new-cluster"]);
    assert!(out.success, "{}", out.stderr);
    tests::wait_put(
        "a new empty cluster",
        &ep,
        "/fresh",
        "start",
        Duration::from_secs(30),
    )
    .await;
    wait_for(
        "the marker written and the override consumed",
        Duration::from_secs(30),
        || {
            let (created, allow) = (
                store.join("control/etcd-cluster-created"),
                store.join("etcd-manager/allow-new-cluster"),
            );
            async move { (created.exists() && !allow.exists()).then_some(()) }
        },
    )
    .await;
    // Refused again once a cluster exists.
    assert!(!env.ctl(&["seed-new-cluster"]).success);
}

/// Two of three hosts wiped at once (managers, etcd and data gone; the
/// managers come back empty): the survivor cannot commit. `status` says what
/// a recovery would do; `etcd-manager-ctl recover-quorum` rebuilds the
/// cluster from the survivor (its snapshot stored as a backup, restored as a
/// one-member cluster with revisions bumped) and it grows back to three.
/// Acknowledged writes lost are counted, beside what a restore of the last
/// periodic backup would have lost on the same run.
#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_wiped_recover_quorum_from_the_survivor() {
    recover_after_two_hosts_wiped(false).await;
}

/// The same without an operator: `--auto-recover-quorum-loss=5s`.
#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_wiped_recover_quorum_by_itself() {
    recover_after_two_hosts_wiped(true).await;
}

async fn recover_after_two_hosts_wiped(auto: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "5s";
    let flags: &[&str] = if auto {
        &["--auto-recover-quorum-loss=5s"]
    } else {
        &[]
    };
    let mut ms: Vec<_> = (1..=3).map(|h| env.start_with(h, flags)).collect();
    env.configure(3, "3.5.30");
    let ep = env.client_url(1);
    three_voters(&ep, Duration::from_secs(60)).await;
    let backup_rev = {
        let client = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
            .await
            .unwrap();
        let r = client.status().await.unwrap().revision;
        let name = backup_covering(&env, r).await;
        let store = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
        store
            .read_backup_extra(&name)
            .await
            .unwrap()
            .unwrap()
            .revision
            .unwrap()
    };
    // Writes through the survivor's member until the loss.
    let mut acked = vec![];
    for n in 0..200 {
        let key = format!("/writer/{n:04}");
        if put(&ep, &key, "v").await.is_ok() {
            acked.push(key);
        }
    }
    // Hosts 2 and 3 wiped at once; their managers come back empty.
    for h in [1usize, 2] {
        ms[h].kill_all();
        std::fs::remove_dir_all(dir.path().join(format!("data/{}", h + 1))).unwrap();
    }
    assert!(
        put(&ep, "/after-loss", "x").await.is_err(),
        "no quorum, no writes"
    );
    let lost_at = std::time::Instant::now();
    ms[1] = env.start_with(2, flags);
    ms[2] = env.start_with(3, flags);
    if !auto {
        wait_for_status(
            &env,
            "status saying the quorum is lost and what recovery would do",
            Duration::from_secs(90),
            |w| {
                w.contains("quorum lost: 1 of 3 voters answer")
                    && w.contains("would rebuild the cluster from")
            },
        )
        .await;
        let out = env.ctl(&["recover-quorum"]);
        assert!(out.success, "{out:?}");
        assert!(
            out.stdout.contains("reports: quorum lost") && out.stdout.contains("recovery queued"),
            "{out:?}"
        );
    }
    let members_after = three_voters(&ep, Duration::from_secs(180)).await;
    assert_eq!(members_after.len(), 3);
    println!(
        "BENCH quorum recovery ({}): three healthy voters {:.1} s after the loss",
        if auto {
            "automatic, 5 s grace"
        } else {
            "recover-quorum"
        },
        lost_at.elapsed().as_secs_f64()
    );
    // What the survivor kept, against what the last periodic backup had.
    let mut raw = etcd_client::Client::connect([ep.clone()], None)
        .await
        .unwrap();
    let resp = raw
        .get(
            "/writer/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    let kept: std::collections::BTreeMap<String, i64> = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect();
    let lost = acked.iter().filter(|k| !kept.contains_key(*k)).count();
    let after_backup = kept.values().filter(|r| **r > backup_rev).count();
    println!(
        "BENCH quorum recovery from the survivor: {} acknowledged writes, {lost} lost; a restore of the last backup (revision {backup_rev}) would have lost {after_backup}",
        acked.len()
    );
    assert_eq!(lost, 0, "the survivor had every acknowledged write");
    // Revisions bumped (a restore), the recovery logged with its plan.
    let st = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
        .await
        .unwrap()
        .status()
        .await
        .unwrap();
    assert!(st.revision > 1_000_000_000, "{st:?}");
    let logs: String = ms.iter().map(|m| m.log_text()).collect();
    assert!(
        logs.contains("quorum recovery: the survivor's data stored as a backup"),
        "{logs}"
    );
}

/// A quorum recovery while one lost host is only down, not wiped: host 2 is
/// wiped (its manager comes back empty), host 3 is off with its data. The
/// cluster is rebuilt from host 1 by itself and grows to two voters; when
/// host 3 returns, its member of the replaced cluster is not started again
/// (the recovery retired that cluster in the store): its data goes to the
/// trashcan and it joins the new cluster, which reaches three voters.
/// Before, the leader waited for ever beside a "foreign cluster".
#[tokio::test(flavor = "multi_thread")]
async fn a_host_down_through_a_quorum_recovery_joins_the_new_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "5s";
    let flags: &[&str] = &["--auto-recover-quorum-loss=5s"];
    let mut ms: Vec<_> = (1..=3).map(|h| env.start_with(h, flags)).collect();
    env.configure(3, "3.5.30");
    let ep = env.client_url(1);
    three_voters(&ep, Duration::from_secs(60)).await;
    for n in 0..50 {
        put(&ep, &format!("/before/{n:02}"), "v").await.unwrap();
    }
    ms[1].kill_all();
    std::fs::remove_dir_all(dir.path().join("data/2")).unwrap();
    ms[2].kill_all();
    ms[1] = env.start_with(2, flags);
    wait_for(
        "a new cluster of two voters (host 3 away)",
        Duration::from_secs(180),
        || {
            let ep = ep.clone();
            async move {
                put(&ep, "/probe", "x").await.ok()?;
                let ms = members(&ep).await.ok()?;
                let st =
                    etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(2))
                        .await
                        .ok()?
                        .status()
                        .await
                        .ok()?;
                (ms.len() == 2
                    && ms.iter().all(|m| !m.is_learner && !m.name.is_empty())
                    && st.revision > 1_000_000_000)
                    .then_some(())
            }
        },
    )
    .await;
    // Host 3 comes back with the replaced cluster's data.
    ms[2] = env.start_with(3, flags);
    three_voters(&ep, Duration::from_secs(120)).await;
    let ep3 = env.client_url(3);
    let v = wait_for(
        "host 3 serving the new cluster",
        Duration::from_secs(60),
        || {
            let ep3 = ep3.clone();
            async move { get(&ep3, "/before/49").await.ok().flatten() }
        },
    )
    .await;
    assert_eq!(v, "v");
    let log3 = ms[2].log_text();
    assert!(
        log3.contains("was replaced (a restore or a quorum recovery) while it was away"),
        "{log3}"
    );
    assert!(
        dir.path()
            .join("data/3/data-trashcan")
            .read_dir()
            .unwrap()
            .count()
            >= 1,
        "the old data kept in the trashcan"
    );
}

/// A restore while the manager of the only member is paused (SIGSTOP: its
/// etcd serves on), and the leader's too. The leader that takes over never
/// observed that etcd; it learns of it from gossip's last word of the paused
/// manager, finds it serving, and holds the restore back: going ahead would
/// leave the old cluster taking writes beside the restored one. Once the
/// managers run again the restore goes through, the old etcd stopped first.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_waits_for_an_etcd_whose_manager_is_paused() {
    use nix::sys::signal::{Signal, kill};
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "3s";
    // Five managers: with two paused, three are a majority that can lead.
    let ms: Vec<_> = (1..=5).map(|h| env.start(h)).collect();
    env.configure(1, "3.5.30");
    let eps: Vec<String> = (1..=5).map(|h| env.client_url(h)).collect();
    let member = tests::wait_voters("one voter", &eps, 1, None).await;
    let host = (1..=5u8)
        .find(|h| {
            let ip = tests::host_ip(env.net, *h);
            member[0].peer_urls.iter().any(|u| u.contains(&ip))
        })
        .expect("the member's host");
    let ep = env.client_url(host);
    put(&ep, "/before", "backed-up").await.unwrap();
    let client = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
        .await
        .unwrap();
    let revision = client.status().await.unwrap().revision;
    let name = backup_covering(&env, revision).await;
    // The lowest id leads once every manager is up: wait until it says so.
    let ids: Vec<String> = (1..=5u8)
        .map(|h| {
            let state = dir.path().join(format!("data/{h}/state.json"));
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    let leader = ids.iter().min().unwrap().clone();
    let leader_host = ids.iter().position(|i| *i == leader).unwrap() as u8 + 1;
    wait_for("the lowest id leads", Duration::from_secs(30), || async {
        let s = status_json(&env).await?;
        (s["report"]["leader"] == leader.as_str()).then_some(())
    })
    .await;
    // Pause the member's manager and the leader's (the same one, or two):
    // the next leader has never observed the member's etcd.
    let member_pid = ms[usize::from(host - 1)].pid().unwrap();
    let mut paused = vec![nix::unistd::Pid::from_raw(member_pid)];
    if leader_host != host {
        paused.push(nix::unistd::Pid::from_raw(
            ms[usize::from(leader_host - 1)].pid().unwrap(),
        ));
    }
    for pid in &paused {
        kill(*pid, Signal::SIGSTOP).unwrap();
    }
    let (old, mname) = (leader.clone(), member[0].name.clone());
    wait_for("another leader", Duration::from_secs(90), || async {
        let s = status_json(&env).await?;
        let l = s["report"]["leader"].as_str()?;
        (!l.is_empty() && l != old && l != mname).then_some(())
    })
    .await;
    let out = env.ctl(&["restore-backup", &name]);
    assert!(out.success, "{}", out.stderr);
    wait_for_status(
        &env,
        "the restore waits for the paused manager's etcd",
        Duration::from_secs(60),
        |w| w.contains("and their managers do not answer") && w.contains(&mname),
    )
    .await;
    // The old cluster still serves, alone: nothing was restored beside it.
    put(&ep, "/after", "lost-by-the-restore").await.unwrap();
    for (h, other) in eps.iter().enumerate() {
        if h + 1 != usize::from(host) {
            assert!(
                get(other, "/before").await.is_err(),
                "host {} serves a cluster while the restore waits",
                h + 1
            );
        }
    }

    for pid in &paused {
        kill(*pid, Signal::SIGCONT).unwrap();
    }
    let restored = wait_for(
        "the backup restored, the old etcd stopped",
        Duration::from_secs(120),
        || {
            let eps = eps.clone();
            async move {
                let mut serving = None;
                for ep in &eps {
                    if let Ok(Some(v)) = get(ep, "/before").await {
                        // A host still on the old cluster would also have /after.
                        if get(ep, "/after").await.ok()?.is_some() {
                            return None;
                        }
                        serving = Some((ep.clone(), v));
                    }
                }
                serving
            }
        },
    )
    .await;
    assert_eq!(restored.1, "backed-up");
    drop(ms);
}
