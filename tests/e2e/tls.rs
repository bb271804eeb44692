//! TLS everywhere: the peer API with mutual TLS from etcd-manager-ca, etcd's
//! peer and client TLS from etcd-peers-ca and etcd-clients-ca, with CAs made by
//! `etcd-manager-ctl init-pki` and managers that find each other only through
//! the store.

use std::path::Path;
use std::time::Duration;

use tests::{host_ip, metric_value, wait_for};

fn tls_args(env: &tests::ClusterEnv, host: u8, pki: &Path) -> Vec<String> {
    let ip = host_ip(env.net, host);
    vec![
        format!("--address={ip}"),
        format!("--etcd-address={ip}"),
        "--cluster-name=test".into(),
        format!("--backup-store={}", env.store_url),
        format!(
            "--data-dir={}",
            env.root.join(format!("data/{host}")).display()
        ),
        format!("--client-urls=https://{ip}:4001"),
        format!("--quarantine-client-urls=https://{ip}:8001"),
        format!("--peer-urls=https://{ip}:2380"),
        format!("--pki-dir={}", pki.display()),
        "--store-discovery".into(),
        "--controller-interval=1s".into(),
        format!("--metrics-address={}", env.metrics_addr(host)),
    ]
}

fn etcdctl(args: &[String]) -> std::process::Output {
    let bins = tests::etcd_binaries("3.5.30");
    std::process::Command::new(bins.etcdctl.expect("etcdctl beside etcd 3.5.30"))
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("run etcdctl")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_with_tls_everywhere_found_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let pki = dir.path().join("pki");
    let init = tests::run_ctl(
        &env.ctl_bin,
        &[format!("-pki-dir={}", pki.display()), "init-pki".into()],
    );
    assert!(init.success, "init-pki: {init:?}");
    for ca in ["etcd-manager-ca", "etcd-peers-ca", "etcd-clients-ca"] {
        assert!(pki.join(format!("{ca}.crt")).exists() && pki.join(format!("{ca}.key")).exists());
    }
    // A second run keeps them.
    let again = tests::run_ctl(
        &env.ctl_bin,
        &[format!("-pki-dir={}", pki.display()), "init-pki".into()],
    );
    assert!(
        again.success && again.stdout.matches("kept").count() == 3,
        "{again:?}"
    );

    let _ms: Vec<_> = (1..=3u8)
        .map(|h| env.start_raw(h, tls_args(&env, h, &pki)))
        .collect();
    env.configure(3, "3.5.30");

    // A client certificate for us, as an operator would make one.
    let certs = dir.path().join("client");
    let issued = tests::run_ctl(
        &env.ctl_bin,
        &[
            format!("-pki-dir={}", pki.display()),
            "issue-client-cert".into(),
            certs.display().to_string(),
        ],
    );
    assert!(issued.success, "issue-client-cert: {issued:?}");
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let tls = etcd::ClientTls {
        ca_pem: read("ca.crt"),
        cert_pem: read("client.crt"),
        key_pem: read("client.key"),
    };
    let endpoints: Vec<String> = (1..=3u8)
        .map(|h| format!("https://{}:4001", host_ip(env.net, h)))
        .collect();
    let members = wait_for(
        "three TLS voters found through the store",
        Duration::from_secs(120),
        || {
            let (eps, tls) = (endpoints.clone(), tls.clone());
            async move {
                let c =
                    etcd::EtcdClient::connect_with(&eps[..1], Duration::from_secs(3), Some(&tls))
                        .await
                        .ok()?;
                c.put("/probe", "x").await.ok()?;
                let ms = c.member_list().await.ok()?;
                if ms.len() != 3 || ms.iter().any(|m| m.is_learner || m.name.is_empty()) {
                    return None;
                }
                // The quarantine is lifted one member at a time: every
                // member serves on its client URL before the checks below.
                for ep in &eps[1..] {
                    let c = etcd::EtcdClient::connect_with(
                        std::slice::from_ref(ep),
                        Duration::from_secs(3),
                        Some(&tls),
                    )
                    .await
                    .ok()?;
                    c.status().await.ok()?;
                }
                Some(ms)
            }
        },
    )
    .await;
    for m in &members {
        assert!(
            m.peer_urls.iter().all(|u| u.starts_with("https://")),
            "raft between members must be TLS: {m:?}"
        );
        assert!(
            m.client_urls.iter().all(|u| u.starts_with("https://")),
            "{m:?}"
        );
    }
    assert!(
        !env.discovery_dir.exists(),
        "the shared discovery folder was used"
    );

    // etcdctl with the client certificate works on every member...
    let p = |f: &str| certs.join(f).display().to_string();
    for ep in &endpoints {
        let ok = etcdctl(&[
            format!("--endpoints={ep}"),
            format!("--cacert={}", p("ca.crt")),
            format!("--cert={}", p("client.crt")),
            format!("--key={}", p("client.key")),
            "--command-timeout=5s".into(),
            "put".into(),
            "/tls".into(),
            ep.clone(),
        ]);
        assert!(ok.status.success(), "etcdctl with certs on {ep}: {ok:?}");
    }
    // Health is etcd's /readyz over TLS with our client certificate: a
    // CORRUPT alarm shows as its failed check, which a read would not name.
    let probe = etcd::EtcdClient::connect_with(&endpoints[..1], Duration::from_secs(3), Some(&tls))
        .await
        .unwrap();
    assert_eq!(probe.health().await, etcd::Health::Ready);
    // ...without a client certificate it is refused, and plain http gets nothing.
    let no_cert = etcdctl(&[
        format!("--endpoints={}", endpoints[0]),
        format!("--cacert={}", p("ca.crt")),
        "--dial-timeout=3s".into(),
        "--command-timeout=5s".into(),
        "get".into(),
        "/tls".into(),
    ]);
    assert!(
        !no_cert.status.success(),
        "etcdctl without a client certificate succeeded: {no_cert:?}"
    );
    let plain = etcdctl(&[
        format!("--endpoints=http://{}:4001", host_ip(env.net, 1)),
        "--dial-timeout=3s".into(),
        "--command-timeout=5s".into(),
        "get".into(),
        "/tls".into(),
    ]);
    assert!(
        !plain.status.success(),
        "plain http to a TLS member succeeded: {plain:?}"
    );

    // The peer API refuses a caller without a certificate, and counts it.
    let peer_api = format!("{}:8000", host_ip(env.net, 1)).parse().unwrap();
    let err = etcd_manager::peer::PeerClient::insecure()
        .call(
            peer_api,
            &etcd_manager::peer::Request::GetInfo,
            Duration::from_secs(5),
        )
        .await
        .expect_err("a plain TCP caller must get no answer");
    assert!(
        matches!(err, etcd_manager::peer::PeerError::Io { .. }),
        "{err}"
    );
    // TLS on and no gossip key given: gossip is keyed from the CA, and
    // status says so (no warning).
    wait_for(
        "status naming keyed gossip",
        Duration::from_secs(60),
        || {
            let env = env.clone();
            async move {
                let s = env.ctl(&["status"]).stdout;
                (s.contains(
                    "gossip:      authenticated and encrypted (key derived from the etcd-manager CA)",
                ) && !s.contains("WARNING:"))
                .then_some(())
            }
        },
    )
    .await;
    let metrics = env.metrics_addr(1);
    wait_for(
        "the refused handshake counted",
        Duration::from_secs(30),
        || {
            let m = metrics.clone();
            async move {
                let (_, body) = tests::http_get(&m, "/metrics").await.ok()?;
                (metric_value(
                    &body,
                    "etcd_manager_peer_api_rejected_total{reason=\"handshake\"}",
                )? >= 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    // Last, as it stops the cluster serving: /readyz over TLS names the alarm.
    let id = probe.status().await.unwrap().member_id;
    let mut raw = etcd_client::Client::connect(
        &endpoints[..1],
        Some(
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem))
                    .identity(etcd_client::Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
            ),
        ),
    )
    .await
    .unwrap();
    let mut options = etcd_client::AlarmOptions::new();
    options.with_member(id);
    raw.alarm(
        etcd_client::AlarmAction::Activate,
        etcd_client::AlarmType::Corrupt,
        Some(options),
    )
    .await
    .unwrap();
    match probe.health().await {
        etcd::Health::NotReady(why) => assert!(
            why.contains("/readyz") && why.contains("data_corruption"),
            "{why}"
        ),
        etcd::Health::Ready => panic!("a member with a CORRUPT alarm judged ready"),
    }
}
