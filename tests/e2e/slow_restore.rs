//! A restore over a slow link: S3 (moto) behind a gate that paces what it
//! sends, so every download of the backup takes well over a minute and the
//! whole restore over two. It completes; the nodes restore as jobs, keep
//! answering GetInfo while they download and show the download's progress
//! there and in `status`; the restored keys are the written ones.

use std::time::{Duration, Instant};

use etcd_manager::core::model::{JobKind, JobPhase};
use etcd_manager::peer::{PeerClient, Request, Response};
use tests::wait_for;

/// The names `list-backups` prints, oldest first.
fn backup_names(env: &tests::ClusterEnv) -> Vec<String> {
    let out = env.ctl(&["list-backups"]);
    assert!(out.success, "list-backups: {out:?}");
    out.stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("20"))
        .map(|l| l.split_whitespace().next().unwrap_or(l).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_slower_than_two_minutes_completes() {
    let Some(moto) = tests::moto::Moto::for_test().await else {
        return;
    };
    moto.create_bucket("slow").await.unwrap();
    let gate = tests::TcpGate::in_front_of(&moto).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.use_s3(&moto, "slow");
    env.store_args = vec![format!("--s3-endpoint={}", gate.endpoint())];
    let mut ms: Vec<_> = (1..=3).map(|h| env.start(h)).collect();
    env.configure(3, "3.5.30");
    let eps: Vec<String> = (1..=3).map(|h| env.client_url(h)).collect();
    tests::wait_voters("three voters", &eps, 3, None).await;

    wait_for(
        "every member out of quarantine",
        Duration::from_secs(60),
        || {
            let eps = eps.clone();
            async move {
                for ep in &eps {
                    tests::put(ep, "/probe", "x").await.ok()?;
                }
                Some(())
            }
        },
    )
    .await;
    // 1.25 MiB that gzip cannot shrink, in 20 keys.
    let client = etcd::EtcdClient::connect(&eps, Duration::from_secs(3))
        .await
        .unwrap();
    let values: Vec<Vec<u8>> = (0..20)
        .map(|_| (0..64 * 1024).map(|_| rand::random::<u8>()).collect())
        .collect();
    for (i, v) in values.iter().enumerate() {
        client
            .put_bytes(&format!("/big/{i:02}"), v.clone())
            .await
            .unwrap();
    }
    let before = backup_names(&env).len();
    assert!(env.ctl(&["backup-now"]).success);
    let name = wait_for(
        "the backup of the written keys",
        Duration::from_secs(90),
        || {
            let names = backup_names(&env);
            async move {
                (names.len() > before)
                    .then(|| names.last().cloned())
                    .flatten()
            }
        },
    )
    .await;

    // Everything is lost; the managers come back on empty disks.
    for m in &mut ms {
        m.kill_all();
    }
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    let ms: Vec<_> = (1..=3).map(|h| env.start(h)).collect();
    wait_for(
        "the new managers asking for a restore",
        Duration::from_secs(90),
        || {
            let out = env.ctl(&["status"]);
            async move {
                out.stdout
                    .contains("must issue restore-backup")
                    .then_some(())
            }
        },
    )
    .await;

    // 40 KiB/s for everything S3 sends: the leader's check of the backup and
    // the three nodes' downloads (at once) take about two minutes together.
    gate.set_rate(40 * 1024);
    let started = Instant::now();
    let out = env.ctl(&["restore-backup", &name]);
    assert!(out.success, "{out:?}");

    // Each node restores as a job: GetInfo answers at once while it
    // downloads, and shows the bytes downloaded growing.
    let addrs: Vec<std::net::SocketAddr> = ms
        .iter()
        .map(|m| format!("{}:8000", m.ip).parse().unwrap())
        .collect();
    let job_of = |addr: std::net::SocketAddr| async move {
        let asked = Instant::now();
        let info = PeerClient::insecure()
            .call(addr, &Request::GetInfo, Duration::from_secs(5))
            .await
            .ok()?;
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "GetInfo answers while the node downloads"
        );
        let Response::Info(info) = info else {
            return None;
        };
        info.jobs?
            .into_iter()
            .find(|j| j.kind == JobKind::Restore && j.phase == JobPhase::Downloading)
    };
    let (addr, first) = wait_for(
        "a node downloading the backup as a job",
        Duration::from_secs(180),
        || {
            let addrs = addrs.clone();
            async move {
                for a in addrs {
                    if let Some(j) = job_of(a).await.filter(|j| j.bytes > 0) {
                        return Some((a, j));
                    }
                }
                None
            }
        },
    )
    .await;
    let later = wait_for(
        "the job's download moving on",
        Duration::from_secs(60),
        || {
            let first = first.bytes;
            async move { job_of(addr).await.filter(|j| j.bytes > first) }
        },
    )
    .await;
    println!(
        "restore job on {addr}: {} bytes, then {} bytes downloaded",
        first.bytes, later.bytes
    );
    assert_eq!(later.key, first.key, "the same job");
    // `status` shows the jobs as the leader follows them.
    let needle = format!("restore of cluster {}: downloading, ", first.key);
    wait_for(
        "status showing the restore jobs' downloads",
        Duration::from_secs(60),
        || {
            let (env, needle) = (env.clone(), needle.clone());
            async move {
                let s = env.ctl(&["status"]).stdout;
                s.lines()
                    .any(|l| l.starts_with("job:") && l.contains(&needle))
                    .then_some(())
            }
        },
    )
    .await;

    let ep = eps[0].clone();
    wait_for(
        "the restored keys through the client URL",
        Duration::from_secs(400),
        || {
            let ep = ep.clone();
            async move { tests::get(&ep, "/probe").await.ok().map(|_| ()) }
        },
    )
    .await;
    let took = started.elapsed();
    println!(
        "BENCH slow restore: {} s from restore-backup to a serving cluster at 40 KiB/s",
        took.as_secs()
    );
    assert!(
        took > Duration::from_secs(120),
        "the restore was slow enough to test what it should: {took:?}"
    );
    let mut raw = etcd_client::Client::connect([ep.clone()], None)
        .await
        .unwrap();
    let resp = raw
        .get("/big/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let got: Vec<&[u8]> = resp.kvs().iter().map(|kv| kv.value()).collect();
    assert_eq!(got.len(), 20);
    for (i, v) in values.iter().enumerate() {
        assert!(got[i] == v.as_slice(), "/big/{i:02} restored whole");
    }
}
