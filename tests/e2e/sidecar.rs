//! Backup-only mode against an etcd that etcd-manager does not manage.

use std::time::Duration;

use tests::wait_for;

fn plain_member(
    env: &tests::ClusterEnv,
    dir: &std::path::Path,
    host: u8,
    cluster: &[u8],
) -> etcd::EtcdProcess {
    let ip = tests::host_ip(env.net, host);
    let spec = etcd::EtcdNodeSpec {
        name: format!("plain{host}"),
        version: "3.5.30".into(),
        data_dir: dir.join(format!("plain-etcd-{host}")),
        cluster_token: "plain".into(),
        initial_cluster: cluster
            .iter()
            .map(|h| {
                (
                    format!("plain{h}"),
                    vec![format!("http://{}:2380", tests::host_ip(env.net, *h))],
                )
            })
            .collect(),
        initial_cluster_state_new: true,
        peer_urls: vec![format!("http://{ip}:2380")],
        client_urls: vec![format!("http://{ip}:2379")],
        quarantined_client_urls: vec![format!("http://{ip}:8001")],
        quarantined: false,
        listen_address: None,
        tls: None,
        listen_metrics_urls: vec![],
    };
    etcd::EtcdProcess::start(
        tests::etcd_binaries("3.5.30"),
        spec,
        vec![],
        Some(dir.join(format!("plain-{host}.log"))),
    )
    .unwrap()
}

fn sidecar(env: &tests::ClusterEnv, dir: &std::path::Path, host: u8) -> tests::Manager {
    let ep = format!("http://{}:2379", tests::host_ip(env.net, host));
    env.start_raw(
        host,
        vec![
            "--backup-only".into(),
            "--etcd-insecure".into(),
            format!("--etcd-endpoint={ep}"),
            format!("--backup-store={}", env.store_url),
            format!(
                "--data-dir={}",
                dir.join(format!("sidecar-{host}")).display()
            ),
            "--backup-interval=2s".into(),
        ],
    )
}

/// One sidecar per member of a plain 3-member cluster: only the raft leader's backs up.
#[tokio::test(flavor = "multi_thread")]
async fn backup_only_mode_backs_up_a_plain_three_member_cluster_from_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let members: Vec<_> = (1..=3)
        .map(|h| plain_member(&env, dir.path(), h, &[1, 2, 3]))
        .collect();
    let eps: Vec<String> = (1..=3)
        .map(|h| format!("http://{}:2379", tests::host_ip(env.net, h)))
        .collect();
    let ep = eps[0].clone();
    tests::wait_put(
        "the plain cluster",
        &ep,
        "/plain",
        "yes",
        Duration::from_secs(30),
    )
    .await;
    let sidecars: Vec<_> = (1..=3).map(|h| sidecar(&env, dir.path(), h)).collect();
    let store = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
    wait_for("two backups", Duration::from_secs(30), || {
        let store = store.clone();
        async move { (store.list_backups().await.ok()?.len() >= 2).then_some(()) }
    })
    .await;
    // Which member leads raft (it does not change in a healthy local cluster)?
    let mut leader_host = None;
    for (i, e) in eps.iter().enumerate() {
        let s = etcd::EtcdClient::connect(std::slice::from_ref(e), Duration::from_secs(3))
            .await
            .unwrap()
            .status()
            .await
            .unwrap();
        if s.leader == s.member_id {
            leader_host = Some(i);
        }
    }
    let leader_host = leader_host.expect("a raft leader");
    for (i, s) in sidecars.iter().enumerate() {
        let took = s.log_text().contains("took backup");
        assert_eq!(
            took,
            i == leader_host,
            "sidecar {} (leader is {}):\n{}",
            i + 1,
            leader_host + 1,
            s.log_text()
        );
    }
    drop(sidecars);
    for m in members {
        m.stop(Duration::from_secs(10)).await.unwrap();
    }
}

/// Run as `etcd-backup` (upstream's sidecar binary, a name of ours), with
/// upstream's flags.
#[tokio::test(flavor = "multi_thread")]
async fn backup_only_mode_backs_up_an_unmanaged_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let ip = tests::host_ip(env.net, 1);
    let spec =
        tests::single_member_spec("plain", "3.5.30", dir.path().join("plain-etcd"), &ip, 2379);
    let plain = etcd::EtcdProcess::start(
        tests::etcd_binaries("3.5.30"),
        spec,
        vec![],
        Some(dir.path().join("plain.log")),
    )
    .unwrap();
    let ep = format!("http://{ip}:2379");
    tests::wait_put(
        "the unmanaged etcd",
        &ep,
        "/sidecar",
        "yes",
        Duration::from_secs(30),
    )
    .await;
    let revision = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
        .await
        .unwrap()
        .status()
        .await
        .unwrap()
        .revision;

    // Upstream's etcd-backup, with its own flags: the manager run under that name.
    let link = dir.path().join("bin/etcd-backup");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&env.manager_bin, &link).unwrap();
    let mut as_backup = env.clone();
    as_backup.manager_bin = link;
    let _sidecar = as_backup.start_raw(
        1,
        vec![
            "--cluster-name=test".into(),
            format!("--client-url={ep}"),
            format!("--backup-store={}", env.store_url),
            format!("--data-dir={}", dir.path().join("sidecar").display()),
            "--interval=2s".into(),
            "--v=2".into(),
        ],
    );
    let store = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
    let name = wait_for(
        "a backup of the unmanaged etcd",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move {
                for n in store.list_backups().await.ok()? {
                    if store.read_backup_extra(&n).await.ok()??.revision? >= revision {
                        return Some(n);
                    }
                }
                None
            }
        },
    )
    .await;
    let info = store.read_backup_info(&name).await.unwrap();
    assert_eq!(info.etcd_version, "3.5.30");
    let got = store
        .download_backup(&name, &dir.path().join("s.db"))
        .await
        .unwrap();
    assert!(got.verified_checksum);
    // Nothing of the managed mode happened: no lease, no created marker.
    assert!(!env.store_path().join("etcd-manager/lease").exists());
    assert!(
        !env.store_path()
            .join("control/etcd-cluster-created")
            .exists()
    );
    plain.stop(Duration::from_secs(10)).await.unwrap();
}
