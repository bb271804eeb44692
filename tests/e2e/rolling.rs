//! A rolling update from the previous release (`scripts/previous-release.sh`
//! builds it from this repository's history), with TLS on as kops runs it:
//! three managers of the previous release form the cluster, then each in
//! turn is stopped and the current release started on its data dir.
//!
//! The previous release gossips in plain (it has no key unless
//! `--gossip-key-file`); the current one keys gossip from the etcd-manager
//! CA by default. While both kinds run they stay one membership: a current
//! manager takes the plain packets of an older one once that one's peer API
//! certificate (signed by the CA, naming its id, at its address) confirms
//! it, and answers it in plain. Checked after every step: the same three
//! members, all healthy, every manager seeing all three alive; at the end
//! every acknowledged write is there, gossip is keyed everywhere and no
//! manager is taken in plain any more.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tests::{host_ip, metric_value, wait_for};

const VERSION: &str = "3.5.30";

fn args(env: &tests::ClusterEnv, host: u8, pki: &Path) -> Vec<String> {
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
        format!("--discovery-dir={}", env.discovery_dir.display()),
        "--controller-interval=1s".into(),
        format!("--metrics-address={}", env.metrics_addr(host)),
    ]
}

async fn client(
    env: &tests::ClusterEnv,
    tls: &etcd::ClientTls,
    host: u8,
) -> Option<etcd::EtcdClient> {
    let ep = format!("https://{}:4001", host_ip(env.net, host));
    etcd::EtcdClient::connect_with(&[ep], Duration::from_secs(3), Some(tls))
        .await
        .ok()
}

/// The three members by id when all are healthy voters serving on their
/// client URLs, and every manager sees three alive in gossip.
async fn whole(env: &tests::ClusterEnv, tls: &etcd::ClientTls) -> Option<BTreeSet<u64>> {
    let mut ids = None;
    for h in 1..=3u8 {
        let c = client(env, tls, h).await?;
        c.status().await.ok()?;
        let ms = c.member_list().await.ok()?;
        if ms.len() != 3 || ms.iter().any(|m| m.is_learner || m.name.is_empty()) {
            return None;
        }
        ids = Some(ms.iter().map(|m| m.id).collect::<BTreeSet<u64>>());
        let (_, text) = tests::http_get(&env.metrics_addr(h), "/metrics")
            .await
            .ok()?;
        let alive = text
            .lines()
            .find(|l| l.starts_with("etcd_manager_gossip_members{state=\"alive\"}"))?
            .rsplit(' ')
            .next()?
            .parse::<f64>()
            .ok()?;
        if alive != 3.0 {
            return None;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_from_the_previous_release_keeps_the_cluster_whole() {
    let Some(previous) = tests::previous_release() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let pki = dir.path().join("pki");
    let certs = dir.path().join("client");
    for args in [
        vec![format!("-pki-dir={}", pki.display()), "init-pki".into()],
        vec![
            format!("-pki-dir={}", pki.display()),
            "issue-client-cert".into(),
            certs.display().to_string(),
        ],
    ] {
        let out = tests::run_ctl(&env.ctl_bin, &args);
        assert!(out.success, "{args:?}: {out:?}");
    }
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let tls = etcd::ClientTls {
        ca_pem: read("ca.crt"),
        cert_pem: read("client.crt"),
        key_pem: read("client.key"),
    };
    let mut managers: Vec<tests::Manager> = (1..=3u8)
        .map(|h| env.start_program(h, "previous", &previous, args(&env, h, &pki)))
        .collect();
    env.configure(3, VERSION);
    let members = wait_for(
        "three voters under the previous release",
        Duration::from_secs(120),
        || whole(&env, &tls),
    )
    .await;

    // A writer throughout, through whichever member answers.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, count, env, tls) = (stop.clone(), count.clone(), env.clone(), tls.clone());
        tokio::spawn(async move {
            let mut acked = vec![];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                for h in 1..=3u8 {
                    if let Some(c) = client(&env, &tls, h).await
                        && c.put(&format!("/roll/{n}"), "v").await.is_ok()
                    {
                        acked.push(n);
                        count.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acked
        })
    };

    for h in 1..=3u8 {
        let i = usize::from(h - 1);
        let before = count.load(Ordering::Relaxed);
        assert!(managers[i].terminate(Duration::from_secs(30)), "m{h} stops");
        managers[i] = env.start_raw(h, args(&env, h, &pki));
        // The current managers take the older ones in plain, confirmed; every
        // manager sees all three alive; the members are the same three.
        let now_members = wait_for(
            &format!("the cluster whole with m{h} on the current release"),
            Duration::from_secs(120),
            || async {
                let ids = whole(&env, &tls).await?;
                for current in 1..=h {
                    let (_, text) = tests::http_get(&env.metrics_addr(current), "/metrics")
                        .await
                        .ok()?;
                    let plain = metric_value(&text, "etcd_manager_gossip_plain_peers")?;
                    (plain == f64::from(3 - h)).then_some(())?;
                }
                Some(ids)
            },
        )
        .await;
        assert_eq!(now_members, members, "no member replaced");
        wait_for("the writer writing on", Duration::from_secs(30), || async {
            (count.load(Ordering::Relaxed) > before).then_some(())
        })
        .await;
    }
    // All current: keyed everywhere, nobody in plain any more.
    for h in 1..=3u8 {
        let addr = env.metrics_addr(h);
        wait_for(
            "no manager taken in plain",
            Duration::from_secs(30),
            || async {
                let (_, text) = tests::http_get(&addr, "/metrics").await.ok()?;
                (metric_value(&text, "etcd_manager_gossip_plain_peers") == Some(0.0)
                    && text.contains("etcd_manager_gossip_authenticated{mode=\"ca_derived\"} 1"))
                .then_some(())
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty());
    let c = client(&env, &tls, 1).await.unwrap();
    for n in &acked {
        assert!(
            c.get(&format!("/roll/{n}")).await.unwrap().is_some(),
            "acknowledged write /roll/{n} lost"
        );
    }
    // The leader's report says how gossip runs (the previous release's
    // report had a warning instead).
    wait_for(
        "status: three managers, gossip keyed from the CA",
        Duration::from_secs(60),
        || async {
            let out = env.ctl(&["status"]).stdout;
            (out.contains("managers:    3 in gossip\n")
                && out.contains(
                    "gossip:      authenticated and encrypted (key derived from the etcd-manager CA)\n",
                )
                && !out.contains("WARNING"))
            .then_some(())
        },
    )
    .await;
}
