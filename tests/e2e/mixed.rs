//! A rolling move from upstream's etcd-manager to ours, one master at a
//! time, with upstream's own binary: three masters on upstream's manager
//! form the cluster; then each in turn is stopped and ours started on its
//! data dir. While both kinds run, the cluster stays whole: the same three
//! members, every acknowledged write kept, upstream's leader removes
//! nothing, ours takes no leader action while it is a minority of the spec
//! and, once a majority, leads beside upstream's last manager without
//! touching its member. At the end our leader holds the lease and takes
//! the backups, and each side's `etcd-manager-ctl` lists the other's
//! backups.
//!
//! Upstream's binary is built from its source by
//! `scripts/upstream-mixed.sh`, which then runs this test. The Go module
//! proxy does not serve upstream's module and these machines cannot
//! download from GitHub, so a CI run cannot build it: the test is ignored
//! there, and fails (never skips) when run without the binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tests::{ClusterEnv, Manager, wait_for};

const VERSION: &str = "3.5.30";

fn upstream_bin(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "{var} is not set: this test runs upstream's etcd-manager; \
             scripts/upstream-mixed.sh builds it from upstream's source and runs this test"
        ),
    }
}

/// Upstream's manager for `host`, as our walkthrough runs ours (no volume
/// provider, plain HTTP). Without a volume provider upstream finds its
/// peers in the fixed folder /tmp/discovery; each runs in a mount namespace
/// of its own where that folder is this test's `discovery`.
fn start_upstream(env: &ClusterEnv, host: u8, bin: &Path, discovery: &Path) -> Manager {
    let mut args: Vec<String> = [
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"mount --bind "$0" /tmp/discovery && exec "$@""#,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    args.push(discovery.display().to_string());
    args.push(bin.display().to_string());
    // Our managers' flags, but for the three upstream lacks or sets otherwise.
    args.extend(env.manager_args(host).into_iter().filter(|a| {
        ![
            "--discovery-dir=",
            "--controller-interval=",
            "--backup-interval=",
        ]
        .iter()
        .any(|f| a.starts_with(f))
    }));
    args.extend([
        "--backup-interval=20s".to_string(),
        "--discovery-poll-interval=1s".into(),
    ]);
    env.start_program(host, "upstream", Path::new("unshare"), args)
}

/// The complete backups in the store: (upstream's, ours).
fn backups(env: &ClusterEnv) -> (Vec<String>, Vec<String>) {
    crate::kops_metal::backups_in(&env.store_path())
}

/// Every endpoint takes a write and reports these members, by name and id.
async fn whole(eps: &[String]) -> Option<BTreeMap<String, u64>> {
    let mut seen = None;
    for ep in eps {
        tests::put(ep, "/probe", "x").await.ok()?;
        let ms: BTreeMap<String, u64> = tests::members(ep)
            .await
            .ok()?
            .into_iter()
            .map(|m| (m.name, m.id))
            .collect();
        if seen.as_ref().is_some_and(|s| *s != ms) {
            return None;
        }
        seen = Some(ms);
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs upstream's etcd-manager binary (UPSTREAM_ETCD_MANAGER); run by scripts/upstream-mixed.sh"]
async fn a_rolling_move_from_upstream_keeps_the_cluster_whole() {
    let up_bin = upstream_bin("UPSTREAM_ETCD_MANAGER");
    let up_ctl = upstream_bin("UPSTREAM_ETCD_MANAGER_CTL");
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "1m";
    env.configure(3, VERSION);
    std::fs::create_dir_all("/tmp/discovery").unwrap();
    let discovery = env.root.join("upstream-discovery");
    std::fs::create_dir_all(&discovery).unwrap();
    let eps: Vec<String> = (1..=3).map(|h| env.client_url(h)).collect();

    // Three masters on upstream's manager form the cluster.
    let mut upstream: BTreeMap<u8, Manager> = (1..=3u8)
        .map(|h| (h, start_upstream(&env, h, &up_bin, &discovery)))
        .collect();
    let formed = Instant::now();
    tests::wait_voters("upstream's three members", &eps, 3, None).await;
    let ids = wait_for("the cluster whole", Duration::from_secs(60), || {
        let eps = eps.clone();
        async move { whole(&eps).await }
    })
    .await;
    println!(
        "BENCH mixed: upstream formed the cluster in {:.1} s",
        formed.elapsed().as_secs_f64()
    );
    // Upstream names each member after its manager's persistent id (`myid`);
    // its leader is the manager with the lowest id.
    let myid = |h: u8| {
        std::fs::read_to_string(env.root.join(format!("data/{h}/myid")))
            .unwrap()
            .trim()
            .to_string()
    };
    for h in 1..=3 {
        assert!(ids.contains_key(&myid(h)), "{ids:?} names host {h}");
    }
    let up_leader = (1..=3u8).min_by_key(|h| myid(*h)).unwrap();
    let revision_before = crate::adopt::revision_of(&eps).await;

    // A client writes throughout; every acknowledged write must survive.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let client = etcd::EtcdClient::connect(&eps, Duration::from_secs(3))
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        let mut acked = vec![];
        let mut n = 0u64;
        while !*stop_rx.borrow() {
            let key = format!("/writer/{n:08}");
            if client.put(&key, "v").await.is_ok() {
                acked.push(key);
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    });

    // Upstream's followers first, its leader last: the middle of the move
    // has a leader on each side.
    let order: Vec<u8> = (1..=3u8)
        .filter(|h| *h != up_leader)
        .chain([up_leader])
        .collect();
    let mut ours: BTreeMap<u8, Manager> = BTreeMap::new();
    for (step, &host) in order.iter().enumerate() {
        upstream.remove(&host).unwrap().kill_all();
        let started = Instant::now();
        let m = env.start(host);
        wait_for(
            &format!("host {host}: our manager serving upstream's member"),
            Duration::from_secs(90),
            || {
                let (eps, log) = (eps.clone(), m.log_text());
                async move {
                    if !log.contains("adopted upstream etcd-manager's volume") {
                        return None;
                    }
                    whole(&eps).await
                }
            },
        )
        .await;
        println!(
            "BENCH mixed: host {host} moved to our manager, its member healthy again {:.1} s after the start",
            started.elapsed().as_secs_f64()
        );
        ours.insert(host, m);
        let (up_mark, our_mark) = {
            let (u, o) = backups(&env);
            (u.len(), o.len())
        };
        match step {
            0 => {
                // One of ours: a minority of the spec. Upstream's leader
                // makes two more passes (one backup each) with our member in
                // the cluster.
                wait_for(
                    "two backups by upstream's leader",
                    Duration::from_secs(120),
                    || {
                        let n = backups(&env).0.len();
                        async move { (n >= up_mark + 2).then_some(()) }
                    },
                )
                .await;
                let log = ours[&host].log_text();
                assert!(
                    !log.contains("became leader") && !log.contains("take_backup"),
                    "a minority of ours takes no leader action: {log}"
                );
            }
            1 => {
                // Two of ours: our leader leads (a backup of its own), while
                // upstream's leader, alone on its side, keeps making its own.
                wait_for(
                    "a backup by our leader and two by upstream's",
                    Duration::from_secs(180),
                    || {
                        let (u, o) = backups(&env);
                        async move { (u.len() >= up_mark + 2 && o.len() > our_mark).then_some(()) }
                    },
                )
                .await;
                assert!(
                    ours.values()
                        .any(|m| m.log_text().contains("became leader")),
                    "a majority of ours leads"
                );
            }
            _ => {
                // All ours: our leader takes the backups and holds the lease.
                wait_for(
                    "a backup by our leader after upstream's last manager stopped",
                    Duration::from_secs(150),
                    || {
                        let n = backups(&env).1.len();
                        async move { (n > our_mark).then_some(()) }
                    },
                )
                .await;
                assert!(env.store_path().join("etcd-manager/lease").exists());
            }
        }
        let now = whole(&eps).await.expect("the cluster whole");
        assert_eq!(
            now, ids,
            "after host {host} moved: the same three members, none removed or added"
        );
    }

    stop_tx.send(true).unwrap();
    let acked = writer.await.unwrap();
    let c = etcd::EtcdClient::connect(&eps, Duration::from_secs(3))
        .await
        .unwrap();
    let kept: std::collections::BTreeSet<String> = c
        .keys_with_prefix("/writer/")
        .await
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|k| !kept.contains(*k)).collect();
    println!(
        "BENCH mixed: {} acknowledged writes during the move, {} lost",
        acked.len(),
        lost.len()
    );
    assert!(acked.len() > 100, "the writer wrote: {}", acked.len());
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // No restore either: a restore makes new members (the ids above are
    // upstream's) and raises the revision by 10^9.
    let revision_after = crate::adopt::revision_of(&eps).await;
    assert!(
        revision_after > revision_before && revision_after < revision_before + 1_000_000,
        "revision kept, not bumped: {revision_before} -> {revision_after}"
    );

    // The store stays readable by both: each side's ctl lists the other's
    // backups.
    let (up_backups, our_backups) = backups(&env);
    let newest_ours = our_backups.last().unwrap();
    let newest_up = up_backups.last().unwrap();
    let out = tests::run_ctl(
        &up_ctl,
        &[
            format!("-backup-store={}", env.store_url),
            "list-backups".into(),
        ],
    );
    assert!(out.success, "upstream's list-backups: {out:?}");
    let listed = format!("{}{}", out.stdout, out.stderr);
    assert!(
        listed.contains(newest_ours.as_str()) && listed.contains(newest_up.as_str()),
        "upstream's ctl lists ours ({newest_ours}) and its own ({newest_up}): {listed}"
    );
    let out = env.ctl(&["list-backups"]);
    assert!(out.success, "our list-backups: {out:?}");
    assert!(
        out.stdout.contains(newest_up.as_str()) && out.stdout.contains(newest_ours.as_str()),
        "our ctl lists upstream's backup {newest_up}: {out:?}"
    );
}

/// Going back: a cluster our managers made without a volume provider (as
/// upstream's walkthrough runs it), stopped, then started under upstream's
/// own managers on the same data dirs: upstream finds itself by the `myid`
/// ours kept, reads the `state` ours kept, and runs the same members with
/// every key. (Without `myid` upstream gave itself a new identity and
/// refused the member: "self node was not included in cluster".)
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs upstream's etcd-manager binary (UPSTREAM_ETCD_MANAGER); run by scripts/upstream-mixed.sh"]
async fn a_cluster_we_made_goes_back_to_upstreams_manager() {
    let up_bin = upstream_bin("UPSTREAM_ETCD_MANAGER");
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let discovery = dir.path().join("discovery");
    std::fs::create_dir_all(&discovery).unwrap();
    std::fs::create_dir_all("/tmp/discovery").unwrap();
    let eps: Vec<String> = (1..=3u8).map(|h| env.client_url(h)).collect();
    let mut ours: Vec<Manager> = (1..=3u8).map(|h| env.start(h)).collect();
    env.configure(3, VERSION);
    let before = wait_for(
        "three members under our managers",
        Duration::from_secs(120),
        || whole(&eps),
    )
    .await;
    for i in 0..50 {
        tests::put(&eps[i % 3], &format!("/ours/{i}"), "v")
            .await
            .unwrap();
    }
    for m in &mut ours {
        assert!(m.terminate(Duration::from_secs(30)), "{} stops", m.name);
    }
    // Our managers took their etcds with them: what answers next is upstream's.
    for ep in &eps {
        assert!(
            tests::put(ep, "/probe", "x").await.is_err(),
            "{ep} still answers after our managers stopped"
        );
    }
    let up_mark = backups(&env).0.len();
    let started = Instant::now();
    let _up: Vec<Manager> = (1..=3u8)
        .map(|h| start_upstream(&env, h, &up_bin, &discovery))
        .collect();
    let after = wait_for(
        "the same three members under upstream's managers",
        Duration::from_secs(180),
        || whole(&eps),
    )
    .await;
    println!(
        "BENCH going back to upstream: the cluster whole {:.1} s after upstream's managers started",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(after, before, "the same member names and ids");
    for i in 0..50 {
        assert_eq!(
            tests::get(&eps[i % 3], &format!("/ours/{i}"))
                .await
                .unwrap()
                .as_deref(),
            Some("v")
        );
    }
    // Upstream's leader leads: it backs the cluster up into the same store.
    wait_for(
        "a backup by upstream's leader",
        Duration::from_secs(120),
        || {
            let n = backups(&env).0.len();
            async move { (n > up_mark).then_some(()) }
        },
    )
    .await;
}

/// Going back on bare metal: a cluster our managers made under kops' metal
/// manifest (external volumes, static config, TLS from `init-pki`), stopped,
/// then started under upstream's manager with the same arguments through
/// the same `/go-runner`: upstream names itself after the volume folder,
/// reads the `state` ours kept there, and runs the same members with every
/// key; its leader backs up into the same store.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs upstream's etcd-manager binary (UPSTREAM_ETCD_MANAGER); run by scripts/upstream-mixed.sh"]
async fn a_metal_cluster_we_made_goes_back_to_upstreams_manager() {
    let up_bin = upstream_bin("UPSTREAM_ETCD_MANAGER");
    let metal = crate::kops_metal::Metal::new(3);
    let mut ours = metal.start_all(Path::new(env!("CARGO_BIN_EXE_etcd-manager")), &[]);
    let by_name = |ms: Vec<serde_json::Value>| -> BTreeMap<String, String> {
        ms.iter()
            .map(|m| (m["name"].to_string(), m["ID"].to_string()))
            .collect()
    };
    let before = by_name(metal.wait_formed().await);
    for i in 0..30 {
        metal
            .etcdctl(1 + i % 3, &["put", &format!("/ours/{i}"), "v"])
            .unwrap();
    }
    metal.stop_all(&mut ours).await;
    for h in 1..=3 {
        assert!(
            metal.etcdctl(h, &["endpoint", "health"]).is_err(),
            "host {h}'s etcd still answers after our manager stopped"
        );
    }
    crate::kops_metal::assert_upstream_reads_the_volumes(&metal.root, &metal.pki, 3);
    let up_mark = metal.backups().0.len();
    let started = Instant::now();
    // kops' arguments verbatim; upstream reads no environment for these two.
    let _up = metal.start_all(
        &up_bin,
        &[
            format!("--pki-dir={}", metal.pki.display()),
            "--backup-interval=10s".into(),
        ],
    );
    let after = by_name(metal.wait_formed().await);
    println!(
        "BENCH going back to upstream on metal: the cluster whole {:.1} s after upstream's managers started",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(after, before, "the same member names and ids");
    for i in 0..30 {
        let out = metal
            .etcdctl(1 + (i + 1) % 3, &["get", &format!("/ours/{i}")])
            .unwrap();
        assert!(out.contains(&format!("/ours/{i}\nv")), "/ours/{i}: {out}");
    }
    wait_for(
        "a backup by upstream's leader",
        Duration::from_secs(120),
        || {
            let n = metal.backups().0.len();
            async move { (n > up_mark).then_some(()) }
        },
    )
    .await;
}
