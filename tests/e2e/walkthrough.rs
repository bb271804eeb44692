//! The upstream walkthrough, first half, on real etcd.

use std::time::Duration;

use tests::{get, members, put, wait_for};

async fn single_member(version: &str) {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let _m1 = env.start(1);
    let out = env.ctl(&[
        "-member-count=1",
        &format!("-etcd-version={version}"),
        "configure-cluster",
    ]);
    assert!(out.success, "configure-cluster failed: {}", out.stderr);
    let ep = env.client_url(1);
    wait_for(
        &format!("put/get on a 1-member etcd {version}"),
        Duration::from_secs(30),
        || {
            let ep = ep.clone();
            async move {
                put(&ep, "/hello", "world").await.ok()?;
                get(&ep, "/hello").await.ok()?.filter(|v| v == "world")
            }
        },
    )
    .await;
    let got = env.ctl(&["get"]);
    assert_eq!(
        got.stdout.trim(),
        format!("member_count:1 etcd_version:\"{version}\"")
    );

    // A backup on demand, executed by the leader within seconds.
    let out = env.ctl(&["backup-now", "--timeout=15s"]);
    assert!(out.success, "{}", out.stderr);
    let name = out.stdout.trim().to_string();
    assert!(backup::parse_backup_name(&name).is_some(), "{name}");
    let wide = env.ctl(&["-o", "wide", "list-backups"]).stdout;
    let line = wide
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} not in\n{wide}"));
    // An on-demand backup gets no drill (only periodic ones do).
    assert!(
        line.contains(version) && line.contains(" sha256 ") && line.ends_with(" -"),
        "{line}"
    );
    // The leader consumed the request (a periodic backup would not have).
    let request = env.store_path().join("etcd-manager").join("backup-now");
    wait_for(
        "the backup request consumed",
        Duration::from_secs(30),
        || {
            let gone = !request.exists();
            async move { gone.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn single_member_cluster_on_3_5_30() {
    single_member("3.5.30").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn single_member_cluster_on_3_4_23() {
    single_member("3.4.23").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn single_member_cluster_on_3_6_16() {
    single_member("3.6.16").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn single_member_cluster_on_3_7_3() {
    single_member("3.7.3").await;
}

/// Grow 1 -> 3, take a backup, restore it elsewhere, lose a member.
#[tokio::test(flavor = "multi_thread")]
async fn grow_to_three_back_up_and_survive_a_lost_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "3s";
    let metrics = |h: u8| format!("--metrics-address={}:9090", tests::host_ip(env.net, h));
    let mut m1 = env.start_with(1, &[&metrics(1)]);
    env.configure(1, "3.5.30");
    let ep1 = env.client_url(1);
    tests::wait_put(
        "first member serving",
        &ep1,
        "/k1",
        "v1",
        Duration::from_secs(30),
    )
    .await;

    let mut m2 = env.start_with(2, &[&metrics(2)]);
    let mut m3 = env.start_with(3, &[&metrics(3)]);
    let out = env.ctl(&["-member-count=3", "configure-cluster"]);
    assert!(out.success, "{}", out.stderr);
    let voters = wait_for("three voting members", Duration::from_secs(60), || {
        let ep = ep1.clone();
        async move {
            let ms = members(&ep).await.ok()?;
            let named_voters = ms
                .iter()
                .filter(|m| !m.is_learner && !m.name.is_empty())
                .count();
            (named_voters == 3).then_some(ms)
        }
    })
    .await;
    assert_eq!(voters.len(), 3);
    for host in 1..=3 {
        let ep = env.client_url(host);
        wait_for(
            &format!("member {host} serves reads"),
            Duration::from_secs(30),
            || {
                let ep = ep.clone();
                async move { get(&ep, "/k1").await.ok()?.filter(|v| v == "v1") }
            },
        )
        .await;
    }
    // No etcd was restarted by its supervisor while the cluster grew.
    for m in [&m1, &m2, &m3] {
        let addr = format!("{}:8000", m.ip).parse().unwrap();
        let resp = etcd_manager::peer::PeerClient::insecure()
            .call(
                addr,
                &etcd_manager::peer::Request::GetInfo,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let etcd_manager::peer::Response::Info(info) = resp else {
            panic!("unexpected {resp:?}")
        };
        let state = info.etcd_state.expect("every manager runs etcd");
        assert!(
            state.running && !state.quarantined,
            "{} : {state:?}",
            m.name
        );
        assert_eq!(
            state.restarts,
            0,
            "etcd of {} was restarted:\n{}",
            m.name,
            m.log_text()
        );
    }

    // Exactly one leader, seen through /metrics; every manager is live and ready.
    let leaders = wait_for("one leader in /metrics", Duration::from_secs(20), || {
        let addrs: Vec<String> = (1..=3)
            .map(|h| format!("{}:9090", tests::host_ip(env.net, h)))
            .collect();
        async move {
            let mut sum = 0.0;
            for a in &addrs {
                let (code, body) = tests::http_get(a, "/metrics").await.ok()?;
                assert_eq!(code, 200);
                assert!(
                    body.contains("etcd_manager_backups_total{result=\"failure\"} 0"),
                    "{body}"
                );
                sum += tests::metric_value(&body, "etcd_manager_is_leader")?;
                assert_eq!(tests::http_get(a, "/healthz").await.ok()?.0, 200);
                if tests::http_get(a, "/readyz").await.ok()?.0 != 200 {
                    return None;
                }
            }
            Some(sum)
        }
    })
    .await;
    assert_eq!(leaders, 1.0);

    // The status report names the leader and three healthy members.
    let report = wait_for(
        "a status report with three healthy members",
        Duration::from_secs(30),
        || {
            let out = env.ctl(&["-o", "json", "status"]);
            async move {
                let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
                let members = v["report"]["members"].as_array()?;
                (members.len() == 3 && members.iter().all(|m| m["healthy"] == true)).then_some(v)
            }
        },
    )
    .await;
    assert!(report["report"]["epoch"].as_u64().unwrap() >= 1);
    let text = env.ctl(&["status"]).stdout;
    assert!(
        text.contains("quarantined: no") && text.contains("last backup: 20"),
        "{text}"
    );

    // A backup appears and restores into a fresh etcd holding the keys.
    put(&ep1, "/k2", "v2").await.unwrap();
    let store = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
    let name = wait_for("a backup holding /k2", Duration::from_secs(30), || {
        let store = store.clone();
        let ctl = env.ctl(&["list-backups"]);
        async move {
            let names: Vec<String> = ctl.stdout.lines().map(str::to_string).collect();
            for n in names.iter().rev() {
                let extra = store.read_backup_extra(n).await.ok()??;
                if extra.revision.unwrap_or(0) >= 3 {
                    return Some(n.clone());
                }
            }
            None
        }
    })
    .await;
    let snap = dir.path().join("restore.db");
    let downloaded = store.download_backup(&name, &snap).await.unwrap();
    assert!(downloaded.verified_checksum, "our backups carry a checksum");
    let bytes = std::fs::read(&snap).unwrap();
    let extra = store.read_backup_extra(&name).await.unwrap().unwrap();
    assert_eq!(bytes.len() as u64, extra.snapshot_size);
    let binaries = tests::etcd_binaries("3.5.30");
    let rip = tests::host_ip(env.net, 9);
    let spec = tests::single_member_spec(
        "restored",
        "3.5.30",
        dir.path().join("restored"),
        &rip,
        4001,
    );
    etcd::restore_snapshot(&binaries, &snap, &spec, Some(1_000_000))
        .await
        .unwrap();
    let restored = etcd::EtcdProcess::start(
        binaries,
        spec,
        vec![],
        Some(dir.path().join("restored.log")),
    )
    .unwrap();
    let rep = format!("http://{rip}:4001");
    wait_for(
        "restored etcd has the keys",
        Duration::from_secs(30),
        || {
            let rep = rep.clone();
            async move {
                let a = get(&rep, "/k1").await.ok()??;
                let b = get(&rep, "/k2").await.ok()??;
                (a == "v1" && b == "v2").then_some(())
            }
        },
    )
    .await;
    restored.stop(Duration::from_secs(10)).await.unwrap();

    // Lose one manager and its etcd: the other two keep serving.
    m3.kill_all();
    for host in 1..=2u8 {
        let ep = env.client_url(host);
        wait_for(
            &format!("write and read through member {host} with one member lost"),
            Duration::from_secs(20),
            || {
                let ep = ep.clone();
                async move {
                    put(&ep, &format!("/after-loss-{host}"), "ok").await.ok()?;
                    get(&ep, &format!("/after-loss-{host}"))
                        .await
                        .ok()?
                        .filter(|v| v == "ok")
                }
            },
        )
        .await;
    }
    assert!(
        m1.terminate(Duration::from_secs(30)),
        "manager 1 exits cleanly on SIGTERM"
    );
    assert!(
        m2.terminate(Duration::from_secs(30)),
        "manager 2 exits cleanly on SIGTERM"
    );
}

/// Three managers whose store is Azure Blob Storage (Azurite), reached from
/// an `azureblob://` URL and the variables a user sets: the lease (its
/// conditional creates) elects one leader, the cluster forms, and a backup
/// lands in the container, listed by etcd-manager-ctl.
#[tokio::test(flavor = "multi_thread")]
async fn three_members_on_azure_blob_storage() {
    let Some(az) = tests::azurite::Azurite::start().await else {
        return;
    };
    az.create_container("etcd").await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.use_azure(&az, "etcd");
    let _ms: Vec<_> = (1..=3).map(|h| env.start(h)).collect();
    env.configure(3, "3.5.30");
    let eps: Vec<String> = (1..=3).map(|h| env.client_url(h)).collect();
    tests::wait_voters("three voters with an Azure store", &eps, 3, None).await;
    tests::wait_put("a write", &eps[0], "/azure", "yes", Duration::from_secs(30)).await;
    let out = env.ctl(&["backup-now", "--timeout=30s"]);
    assert!(out.success, "{}", out.stderr);
    let name = out.stdout.trim().to_string();
    let listed = env.ctl(&["list-backups"]);
    assert!(listed.success, "{}", listed.stderr);
    assert!(
        listed.stdout.lines().any(|l| l == name),
        "{name} not in\n{}",
        listed.stdout
    );
    // The objects are in the container, in upstream's layout.
    let store = az.store("etcd");
    let meta = object_store::path::Path::from(format!("cluster/main/{name}/_etcd_backup.meta"));
    object_store::ObjectStoreExt::head(&store, &meta)
        .await
        .unwrap_or_else(|e| panic!("{meta} in the container: {e}"));
}
