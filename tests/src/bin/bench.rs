//! Benchmarks against the baselines a user would otherwise pick (driven by
//! `scripts/bench.sh`). Every figure is a median over repeated runs, and every
//! comparison is a ratio to a baseline measured in the same run.
//!
//! ```text
//! bench run [--quick] [--out DIR] [p1 p2 p4 p5 ...]   all scenarios when none given
//! bench backup-once <endpoint> <store-url>            one backup, in its own process
//! bench restore-once <store-url> <backup> <dir> <ip>  one restore, in its own process
//! ```
//!
//! `BENCH_BIN_DIR` names the folder of the `etcd-manager` binaries (the
//! release build by default).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const VERSION: &str = "3.5.30";
const MIB: u64 = 1 << 20;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("backup-once") if args.len() == 3 => {
            let out = rt.block_on(backup_once(&args[1], &args[2]))?;
            println!("{out}");
        }
        Some("restore-once") if args.len() == 5 => {
            let out = rt.block_on(restore_once(
                &args[1],
                &args[2],
                Path::new(&args[3]),
                &args[4],
            ))?;
            println!("{out}");
        }
        Some("run") => rt.block_on(run(&args[1..]))?,
        Some("gossip-node") => rt.block_on(gossip_node(&args[1..]))?,
        _ => anyhow::bail!(
            "usage: bench run [--quick] [--out DIR] [p1 p1-loss p2 p3 p4 p5 p6 p7 p7-trickle p8 p8-rpo]\n       bench gossip-node <id> <addr> <ours|new-lan> <size> [seed...]\n       bench backup-once <endpoint> <store-url>\n       bench restore-once <store-url> <backup> <dir> <ip>"
        ),
    }
    Ok(())
}

/// The loopback range of this run's own (a lease: bench runs and tests side
/// by side never share addresses): its etcds, stores and gossip nodes.
static NET: std::sync::OnceLock<(u8, std::sync::Arc<tests::lease::Lease>)> =
    std::sync::OnceLock::new();

/// `127.<this run's range>.<x>.1`.
fn bench_ip(x: u8) -> String {
    let (net, _) = NET.get_or_init(tests::fresh_net);
    format!("127.{net}.{x}.1")
}

/// Peak resident memory of this process (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn backup_once(endpoint: &str, store_url: &str) -> anyhow::Result<Value> {
    let start = Instant::now();
    let store = backup::BackupStore::open(store_url, &Default::default())?;
    let client =
        etcd::EtcdClient::connect(&[endpoint.to_string()], Duration::from_secs(30)).await?;
    let status = client.status().await?;
    let rss_before = peak_rss_kib();
    let stream = client.snapshot().await?;
    let info = backup::BackupInfo {
        etcd_version: status.version.clone(),
        timestamp: 0,
        cluster_spec: None,
    };
    let summary = store
        .write_backup(
            stream,
            &info,
            Some(status.revision),
            None,
            std::time::SystemTime::now(),
        )
        .await?;
    let extra = store.read_backup_extra(&summary.name).await?;
    Ok(json!({
        "secs": start.elapsed().as_secs_f64(),
        "peak_rss_kib": peak_rss_kib(),
        "rss_before_snapshot_kib": rss_before,
        "name": summary.name,
        "raw": summary.snapshot_size,
        "gz": summary.compressed_size,
        "members": extra.as_ref().map_or(0, |x| x.members.len()),
    }))
}

async fn restore_once(store_url: &str, name: &str, dir: &Path, ip: &str) -> anyhow::Result<Value> {
    let start = Instant::now();
    let store = backup::BackupStore::open(store_url, &Default::default())?;
    std::fs::create_dir_all(dir)?;
    let file = dir.join("snapshot.db");
    store.download_backup(name, &file).await?;
    let downloaded = start.elapsed().as_secs_f64();
    let bins = tests::etcd_binaries(VERSION);
    let spec = tests::single_member_spec("restored", VERSION, dir.join("data"), ip, 2479);
    etcd::restore_snapshot(&bins, &file, &spec, Some(1_000_000_000)).await?;
    let restored = start.elapsed().as_secs_f64();
    let process = etcd::EtcdProcess::start(bins, spec, quota_env(), Some(dir.join("etcd.log")))?;
    let ep = format!("http://{ip}:2479");
    loop {
        if let Ok(c) =
            etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(2)).await
            && c.get("/bench/first").await.is_ok()
        {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "the restored etcd never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    process.stop(Duration::from_secs(15)).await?;
    Ok(
        json!({"secs": secs, "download_secs": downloaded, "restore_secs": restored - downloaded, "start_secs": secs - restored, "peak_rss_kib": peak_rss_kib()}),
    )
}

fn quota_env() -> Vec<(String, String)> {
    vec![(
        "ETCD_QUOTA_BACKEND_BYTES".into(),
        (8 * 1024 * MIB).to_string(),
    )]
}

fn me() -> PathBuf {
    std::env::current_exe().expect("own path")
}

/// Run a child (ourselves) and parse its JSON line.
fn child(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(me()).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(text.lines().last().unwrap_or(""))?)
}

/// Time a shell-free command.
fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(start.elapsed().as_secs_f64())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

fn p95(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() as f64 * 0.95).ceil() as usize).clamp(1, s.len()) - 1]
}

/// One row of results.json.
fn row(
    id: &str,
    title: &str,
    runs: &[f64],
    baseline: Option<(&str, &[f64])>,
    goal: &str,
    met: Option<bool>,
    extra: Value,
) -> Value {
    let m = median(runs);
    let (bname, bmed) = match baseline {
        Some((n, b)) => (Some(n), Some(median(b))),
        None => (None, None),
    };
    json!({
        "id": id, "title": title, "status": "measured",
        "median": m, "p95": p95(runs), "runs": runs,
        "baseline": bname, "baseline_median": bmed,
        "ratio": bmed.map(|b| m / b),
        "goal": goal, "goal_met": met, "detail": extra,
    })
}

/// A one-member etcd for the backup and restore scenarios.
struct Db {
    _process: etcd::EtcdProcess,
    endpoint: String,
}

async fn start_db(dir: &Path, ip: &str) -> anyhow::Result<Db> {
    let bins = tests::etcd_binaries(VERSION);
    let spec = tests::single_member_spec("bench", VERSION, dir.join("data"), ip, 2379);
    let process = etcd::EtcdProcess::start(bins, spec, quota_env(), Some(dir.join("etcd.log")))?;
    let endpoint = format!("http://{ip}:2379");
    tests::wait_put(
        "bench etcd",
        &endpoint,
        "/bench/first",
        "x",
        Duration::from_secs(60),
    )
    .await;
    Ok(Db {
        _process: process,
        endpoint,
    })
}

/// Kubernetes-like JSON: a pod object of about `size` bytes.
fn pod_json(i: u64, size: usize, rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    let mut s = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web-{i}","namespace":"team-{}","uid":"{:032x}","labels":{{"app":"web","tier":"frontend","pod-template-hash":"{:08x}"}},"annotations":{{"#,
        i % 40,
        rng.random::<u128>(),
        rng.random::<u32>()
    );
    let mut k = 0;
    while s.len() < size - 200 {
        s += &format!(
            r#""checksum/config-{k}":"{:016x}","kubectl.kubernetes.io/restartedAt":"2026-11-{:02}T10:{:02}:00Z","#,
            rng.random::<u64>(),
            1 + k % 28,
            k % 60
        );
        k += 1;
    }
    s += r#""x":"y"}},"spec":{"containers":[{"name":"web","image":"registry.local/web:1.2.3","resources":{"requests":{"cpu":"100m","memory":"128Mi"}}}]},"status":{"phase":"Running"}}"#;
    s.into_bytes()
}

/// Fill the database with about `bytes` of values: random or JSON.
async fn load(db: &Db, bytes: u64, json_values: bool) -> anyhow::Result<u64> {
    let client =
        etcd::EtcdClient::connect(std::slice::from_ref(&db.endpoint), Duration::from_secs(30))
            .await?;
    let value_size: usize = if json_values { 6 * 1024 } else { 256 * 1024 };
    let count = bytes / value_size as u64;
    let results = futures::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(i);
                let (key, value) = if json_values {
                    (
                        format!("/registry/pods/team-{}/web-{i}", i % 40),
                        pod_json(i, value_size, &mut rng),
                    )
                } else {
                    let mut v = vec![0u8; value_size];
                    rng.fill(&mut v[..]);
                    (format!("/bench/random/{i:08}"), v)
                };
                client.put_bytes(&key, value).await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        r?;
    }
    Ok(client.status().await?.db_size as u64)
}

async fn p4_p5(
    quick: bool,
    root: &Path,
    want: &[String],
    out: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let size = env("BENCH_SIZE_MIB").unwrap_or(if quick { 48 } else { 1024 }) * MIB;
    let runs = env("BENCH_RUNS").unwrap_or(if quick { 1 } else { 3 }) as usize;
    let bins = tests::etcd_binaries(VERSION);
    let etcdctl = bins.etcdctl.clone().expect("etcdctl");
    let etcdutl = bins.etcdutl.clone().expect("etcdutl");
    for (variant, json_values, net) in [("random", false, 1u8), ("json", true, 2u8)] {
        let dir = root.join(format!("p4-{variant}"));
        std::fs::create_dir_all(&dir)?;
        let ip = bench_ip(net);
        let db = start_db(&dir, &ip).await?;
        let loaded = Instant::now();
        let db_size = load(&db, size, json_values).await?;
        eprintln!(
            "p4 {variant}: loaded {} MiB in {:.1?}",
            db_size / MIB,
            loaded.elapsed()
        );
        let store_dir = dir.join("store");
        std::fs::create_dir_all(&store_dir)?;
        let store_url = format!("file://{}", store_dir.display());
        let (mut save, mut gzip, mut ours, mut rss) = (vec![], vec![], vec![], vec![]);
        let mut base_rss = vec![];
        let mut last = Value::Null;
        for r in 0..runs {
            let snap = dir.join(format!("save-{r}.db"));
            save.push(timed(
                Command::new(&etcdctl)
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &db.endpoint, "snapshot", "save"])
                    .arg(&snap),
            )?);
            gzip.push(timed(Command::new("gzip").args(["-6", "-f"]).arg(&snap))?);
            let o = child(&["backup-once", &db.endpoint, &store_url])?;
            ours.push(o["secs"].as_f64().unwrap_or(f64::NAN));
            rss.push(o["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0);
            base_rss.push(o["rss_before_snapshot_kib"].as_f64().unwrap_or(0.0) / 1024.0);
            last = o;
        }
        let gz_baseline = std::fs::metadata(dir.join(format!("save-{}.db.gz", runs - 1)))?.len();
        let raw = last["raw"].as_f64().unwrap_or(1.0);
        let upstream: Vec<f64> = save.iter().zip(&gzip).map(|(a, b)| a + b).collect();
        let ratio_to_save = median(&ours) / median(&save);
        if want.iter().any(|w| w == "p4") {
            out.push(row(
                &format!("p4-{variant}"),
                &format!(
                    "P4 backup, {variant} values, {} MiB database (s)",
                    db_size / MIB
                ),
                &ours,
                Some((
                    "etcdctl snapshot save + gzip -6 (upstream's way)",
                    &upstream,
                )),
                "<= 2.5x snapshot save alone; peak RSS <= 64 MiB",
                Some(ratio_to_save <= 2.5 && rss.iter().all(|r| *r <= 64.0)),
                json!({
                    "snapshot_save_median_s": median(&save),
                    "gzip6_median_s": median(&gzip),
                    "ratio_to_snapshot_save": ratio_to_save,
                    "speedup_vs_upstream": median(&upstream) / median(&ours),
                    "peak_rss_mib": rss,
                    "rss_before_snapshot_mib": base_rss,
                    "compression_ratio": last["gz"].as_f64().unwrap_or(0.0) / raw,
                    "gzip6_compression_ratio": gz_baseline as f64 / raw,
                    "gzip_members": last["members"],
                }),
            ));
        }
        if json_values && want.iter().any(|w| w == "p5") {
            let name = last["name"].as_str().unwrap_or_default().to_string();
            let (mut restore, mut plain, mut parts) = (vec![], vec![], Value::Null);
            let mut upstream = vec![];
            for r in 0..runs {
                let rdir = dir.join(format!("restore-{r}"));
                let o = child(&[
                    "restore-once",
                    &store_url,
                    &name,
                    rdir.to_str().unwrap(),
                    &bench_ip(3),
                ])?;
                restore.push(o["secs"].as_f64().unwrap_or(f64::NAN));
                parts = o;
                // Baseline: gunzip, then etcdutl snapshot restore, in sequence.
                let gz = dir.join(format!("save-{}.db.gz", runs - 1));
                let raw_file = dir.join(format!("plain-{r}.db"));
                let start = Instant::now();
                timed(
                    Command::new("gzip")
                        .arg("-dc")
                        .arg(&gz)
                        .stdout(std::fs::File::create(&raw_file)?),
                )?;
                let plain_dir = dir.join(format!("plain-{r}.etcd"));
                timed(
                    Command::new(&etcdutl)
                        .args(["snapshot", "restore"])
                        .arg(&raw_file)
                        .arg("--data-dir")
                        .arg(&plain_dir),
                )?;
                plain.push(start.elapsed().as_secs_f64());
                // Upstream's path goes on: the restored data in a temporary
                // etcd, copied key by key into the new cluster (make-mirror).
                upstream.push(
                    start.elapsed().as_secs_f64()
                        + key_copy(&bins, &plain_dir, &dir.join(format!("copy-{r}"))).await?,
                );
                let _ = std::fs::remove_dir_all(&rdir);
                let _ = std::fs::remove_dir_all(dir.join(format!("plain-{r}.etcd")));
                let _ = std::fs::remove_file(&raw_file);
            }
            let per_gib = median(&restore) * 1024.0 / (raw / MIB as f64);
            out.push(row(
                "p5",
                &format!(
                    "P5 restore end to end, json values, {} MiB (s)",
                    db_size / MIB
                ),
                &restore,
                Some((
                    "gunzip then etcdutl snapshot restore (no etcd start)",
                    &plain,
                )),
                "<= 8 s per GiB; >= 3.5x faster than upstream's key-by-key path",
                Some(per_gib <= 8.0 && median(&upstream) / median(&restore) >= 3.5),
                json!({"seconds_per_gib": per_gib, "last_run": parts,
                       "upstream_path_s": upstream, "upstream_path_median_s": median(&upstream),
                       "speedup_vs_upstream_path": median(&upstream) / median(&restore)}),
            ));
        }
        drop(db);
    }
    Ok(())
}

/// Upstream's restore after the gunzip and snapshot restore: start the
/// restored data as a temporary etcd, copy every key into a new empty etcd
/// (`etcdctl make-mirror`), until the counts match. Returns the seconds.
async fn key_copy(bins: &etcd::EtcdBinaries, restored: &Path, work: &Path) -> anyhow::Result<f64> {
    std::fs::create_dir_all(work)?;
    let start = Instant::now();
    let mut src_spec = tests::single_member_spec(
        "default",
        VERSION,
        restored.to_path_buf(),
        &bench_ip(4),
        2379,
    );
    // etcdutl restored the member as "default" with its own peer URL.
    src_spec.initial_cluster = vec![("default".into(), vec!["http://localhost:2380".into()])];
    src_spec.peer_urls = vec!["http://localhost:2380".into()];
    src_spec.initial_cluster_state_new = false;
    let src = etcd::EtcdProcess::start(
        bins.clone(),
        src_spec,
        quota_env(),
        Some(work.join("src.log")),
    )?;
    let dst_spec = tests::single_member_spec("dst", VERSION, work.join("dst"), &bench_ip(5), 2379);
    let dst = etcd::EtcdProcess::start(
        bins.clone(),
        dst_spec,
        quota_env(),
        Some(work.join("dst.log")),
    )?;
    let src_ep = format!("http://{}:2379", bench_ip(4));
    let dst_ep = format!("http://{}:2379", bench_ip(5));
    let count = |ep: String| async move {
        let c = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(30))
            .await
            .ok()?;
        c.count_with_prefix("").await.ok()
    };
    let want = loop {
        if let Some(n) = count(src_ep.clone()).await {
            break n;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "the temporary etcd did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut mirror = tokio::process::Command::new(bins.etcdctl.clone().expect("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &src_ep, "make-mirror", &dst_ep])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    loop {
        if count(dst_ep.clone()).await.is_some_and(|n| n >= want) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "make-mirror did not finish"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = mirror.kill().await;
    src.stop(Duration::from_secs(15)).await?;
    dst.stop(Duration::from_secs(15)).await?;
    let _ = std::fs::remove_dir_all(work);
    Ok(secs)
}

/// Is this manager the leader, by its metrics?
async fn leader(metrics: &str) -> Option<bool> {
    let (_, body) = tests::http_get(metrics, "/metrics").await.ok()?;
    Some(tests::metric_value(&body, "etcd_manager_is_leader")? == 1.0)
}

async fn alive_seen(metrics: &str) -> Option<f64> {
    let (_, body) = tests::http_get(metrics, "/metrics").await.ok()?;
    tests::metric_value(&body, "etcd_manager_gossip_members{state=\"alive\"}")
}

async fn p1_p2(
    quick: bool,
    root: &Path,
    bin_dir: &Path,
    out: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let runs = if quick { 1 } else { 5 };
    let dir = root.join("p2");
    std::fs::create_dir_all(&dir)?;
    let env = tests::ClusterEnv::new(
        &dir,
        bin_dir.join("etcd-manager").to_str().unwrap(),
        bin_dir.join("etcd-manager-ctl").to_str().unwrap(),
    );
    let mut ms: Vec<tests::Manager> = (1..=3u8).map(|h| env.start_with_metrics(h)).collect();
    env.configure(3, VERSION);
    let metrics: Vec<String> = (1..=3u8).map(|h| env.metrics_addr(h)).collect();
    let eps: Vec<String> = (1..=3u8).map(|h| env.client_url(h)).collect();
    let (mut detect, mut failover, mut handover) = (vec![], vec![], vec![]);
    for r in 0..runs * 2 {
        tests::wait_voters("three voters", &eps, 3, None).await;
        // Exactly one manager leads, and still the same one 2 s later (a
        // restarted manager with a lower id may be taking over).
        let one_leader = || {
            let m = metrics.clone();
            async move {
                let mut found = None;
                for (i, a) in m.iter().enumerate() {
                    if leader(a).await? {
                        if found.is_some() {
                            return None;
                        }
                        found = Some(i);
                    }
                }
                found
            }
        };
        let l = loop {
            let a = tests::wait_for("one leader", Duration::from_secs(60), one_leader).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            if one_leader().await == Some(a) {
                break a;
            }
        };
        tests::wait_for("all three alive in gossip", Duration::from_secs(60), || {
            let m = metrics.clone();
            async move {
                for a in &m {
                    if alive_seen(a).await? < 3.0 {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
        let graceful = r % 2 == 1;
        let start = Instant::now();
        if graceful {
            // SIGTERM without waiting for the exit (which includes stopping
            // etcd): the clock runs from the signal to the new leader.
            if let Some(pid) = ms[l].pid() {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                )?;
            }
        } else {
            ms[l].kill_all();
        }
        let others: Vec<String> = (0..3)
            .filter(|i| *i != l)
            .map(|i| metrics[i].clone())
            .collect();
        // Poll every 50 ms: when every survivor stops counting it alive
        // (detection), and when one of them leads (failover).
        let mut detected = None;
        let took = loop {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "no new leader within 60 s"
            );
            if detected.is_none() {
                let mut all = true;
                for a in &others {
                    all &= alive_seen(a).await.is_some_and(|v| v < 3.0);
                }
                if all {
                    detected = Some(start.elapsed().as_secs_f64());
                }
            }
            let mut led = false;
            for a in &others {
                led |= leader(a).await == Some(true);
            }
            if led {
                break start.elapsed().as_secs_f64();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if graceful {
            handover.push(took);
        } else {
            failover.push(took);
            // Detection may finish after the new leader took over.
            let d = match detected {
                Some(d) => d,
                None => {
                    tests::wait_for("survivors mark it down", Duration::from_secs(60), || {
                        let o = others.clone();
                        async move {
                            for a in &o {
                                if alive_seen(a).await? >= 3.0 {
                                    return None;
                                }
                            }
                            Some(start.elapsed().as_secs_f64())
                        }
                    })
                    .await
                }
            };
            detect.push(d);
        }
        if graceful {
            ms[l].terminate(Duration::from_secs(30));
        }
        eprintln!(
            "p2 run {r}: {} {took:.2} s",
            if graceful {
                "SIGTERM handover"
            } else {
                "SIGKILL failover"
            }
        );
        ms[l].restart();
    }
    out.push(row(
        "p1",
        "P1 detection: SIGKILL one of 3 managers, until every survivor reports it not alive (s)",
        &detect,
        None,
        "median <= 3 s (the gossip metric is refreshed once per controller pass, 1 s here)",
        Some(median(&detect) <= 3.0),
        json!({"baseline": "see p1-gossip-3 and p1-gossip-5: the gossip layer alone against foca's new_lan(n) as shipped in the same harness, 3 and 5 nodes"}),
    ));
    out.push(row(
        "p2",
        "P2 failover: SIGKILL the leader manager, until another holds the lease (s)",
        &failover,
        None,
        "<= 8 s",
        Some(median(&failover) <= 8.0),
        json!({"lease": "5 s duration + 1.5 s margin, counted from the contender's last sighting of the record"}),
    ));
    out.push(row(
        "p2-sigterm",
        "P2 handover: SIGTERM the leader manager, until another holds the lease (s)",
        &handover,
        None,
        "<= 1 s",
        Some(median(&handover) <= 1.0),
        json!({"how": "the leader releases its lease record and leaves gossip; the next candidate starts a pass at once"}),
    ));
    for m in &mut ms {
        m.kill_all();
    }
    Ok(())
}

/// `bench gossip-node <id> <addr> <ours|new-lan> <size> [seed...]`: one node
/// of the manager's gossip (the `gossip` crate alone) that prints its view
/// and counters as a JSON line on every change and once a second, until it
/// is killed. `new-lan` runs foca's `Config::new_lan(size)` as shipped (no
/// lifeguard): the baseline of the P1 scenarios.
async fn gossip_node(args: &[String]) -> anyhow::Result<()> {
    let [id, addr, mode, size, seeds @ ..] = args else {
        anyhow::bail!("usage: bench gossip-node <id> <addr> <ours|new-lan> <size> [seed...]");
    };
    let mut config = gossip::GossipConfig::new(id.clone(), addr.parse()?);
    config.seeds = seeds.to_vec();
    config.cluster_size_hint = size.parse()?;
    config.lifeguard = match mode.as_str() {
        "ours" => true,
        "new-lan" => false,
        other => anyhow::bail!("unknown gossip mode {other}: ours or new-lan"),
    };
    config.incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let cancel = tokio_util::sync::CancellationToken::new();
    let (handle, _task) = gossip::start(config, vec![], cancel).await?;
    let mut members = handle.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let view: serde_json::Map<String, Value> = members
            .borrow_and_update()
            .iter()
            .filter(|m| !m.is_self)
            .map(|m| (m.id.clone(), json!(format!("{:?}", m.state))))
            .collect();
        let (downs, rejoins) = handle.downs();
        println!(
            "{}",
            json!({"members": view, "downs": downs, "rejoins": rejoins})
        );
        tokio::select! {
            changed = members.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
    }
    Ok(())
}

/// A `bench gossip-node` child and the lines it printed, each with the
/// moment it was read.
struct GossipProc {
    child: tokio::process::Child,
    lines: Lines,
}

type Lines = std::sync::Arc<std::sync::Mutex<Vec<(Instant, Value)>>>;

impl GossipProc {
    fn spawn(
        id: &str,
        addr: &str,
        lifeguard: bool,
        size: usize,
        seeds: &[String],
    ) -> anyhow::Result<Self> {
        let mode = if lifeguard { "ours" } else { "new-lan" };
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["gossip-node", id, addr, mode, &size.to_string()])
            .args(seeds)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("gossip-node {id}: no stdout"))?;
        let lines: Lines = Default::default();
        let sink = lines.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().expect("lines lock").push((Instant::now(), v));
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn latest(&self) -> Option<Value> {
        self.lines
            .lock()
            .expect("lines lock")
            .last()
            .map(|(_, v)| v.clone())
    }

    /// When this node first reported, at or after `after`, a view `pred` accepts.
    fn first(&self, after: Instant, pred: impl Fn(&Value) -> bool) -> Option<Instant> {
        self.lines
            .lock()
            .expect("lines lock")
            .iter()
            .find(|(t, v)| *t >= after && pred(v))
            .map(|(t, _)| *t)
    }

    /// (members it saw declared down, times it was declared down and rejoined).
    fn counts(&self) -> (f64, f64) {
        self.latest().map_or((0.0, 0.0), |v| {
            (
                v["downs"].as_f64().unwrap_or(0.0),
                v["rejoins"].as_f64().unwrap_or(0.0),
            )
        })
    }
}

/// Starts `n` gossip-node children at `addrs` (each seeded with the others)
/// and waits until each sees all others alive.
async fn gossip_cluster(
    ids: &[String],
    addrs: &[String],
    lifeguard: bool,
) -> anyhow::Result<Vec<GossipProc>> {
    let n = addrs.len();
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let seeds: Vec<String> = addrs.iter().filter(|a| *a != addr).cloned().collect();
        nodes.push(GossipProc::spawn(&ids[i], addr, lifeguard, n, &seeds)?);
    }
    tests::wait_for(
        "gossip nodes to see each other alive",
        Duration::from_secs(30),
        || {
            let converged = nodes.iter().all(|p| {
                p.latest().is_some_and(|v| {
                    v["members"]
                        .as_object()
                        .is_some_and(|m| m.values().filter(|s| *s == "Alive").count() == n - 1)
                })
            });
            std::future::ready(converged.then_some(()))
        },
    )
    .await;
    Ok(nodes)
}

/// One P1 run on the gossip layer alone: SIGKILL the last of `n` nodes;
/// seconds until every survivor reports it not alive, and until every
/// survivor reports it down.
async fn gossip_detection_run(n: usize, lifeguard: bool, port: u16) -> anyhow::Result<(f64, f64)> {
    let ids: Vec<String> = (1..=n).map(|i| format!("g{i}")).collect();
    let addrs: Vec<String> = (0..n)
        .map(|i| format!("{}:{}", bench_ip(9), port + i as u16))
        .collect();
    let mut nodes = gossip_cluster(&ids, &addrs, lifeguard).await?;
    // Kill at a random phase of the probe cycle: the nodes start together,
    // so their probes run in step with the moment they converged.
    let phase = Duration::from_millis(rand::rng().random_range(1000..3000));
    tokio::time::sleep(phase).await;
    let victim = ids[n - 1].clone();
    let t0 = Instant::now();
    nodes[n - 1].child.start_kill()?;
    let state_is = |want: &'static [&'static str]| {
        let victim = victim.clone();
        move |v: &Value| {
            let s = v["members"][&victim].as_str().unwrap_or("Down");
            want.contains(&s)
        }
    };
    // The moments come from when each line was read, not from this polling.
    let latest = |want: &'static [&'static str]| -> Option<f64> {
        let seen: Option<Vec<Instant>> = nodes[..n - 1]
            .iter()
            .map(|p| p.first(t0, state_is(want)))
            .collect();
        Some(seen?.into_iter().max()?.duration_since(t0).as_secs_f64())
    };
    let times = tests::wait_for(
        "every survivor to report the killed node down",
        Duration::from_secs(60),
        || std::future::ready(latest(&["Suspect", "Down"]).zip(latest(&["Down"]))),
    )
    .await;
    Ok(times)
}

/// P1 on the gossip layer alone, 3 and 5 nodes: ours against foca's
/// `new_lan(n)` as shipped, runs interleaved so both see the same machine.
async fn p1_gossip(quick: bool, out: &mut Vec<Value>) -> anyhow::Result<()> {
    let runs = if quick { 1 } else { 7 };
    for n in [3usize, 5] {
        let (mut ours, mut ours_down, mut lan, mut lan_down) = (vec![], vec![], vec![], vec![]);
        for r in 0..runs {
            for lifeguard in [true, false] {
                // Ports of their own per run: the previous run's children are
                // killed, not reaped, and may still hold theirs for a moment.
                let port =
                    47100 + n as u16 * 200 + (r as u16 % 10) * 20 + if lifeguard { 0 } else { 10 };
                let (a, d) = gossip_detection_run(n, lifeguard, port).await?;
                eprintln!(
                    "p1 gossip n={n} {} run {r}: not alive {a:.2} s, down {d:.2} s",
                    if lifeguard { "ours" } else { "new_lan" }
                );
                if lifeguard {
                    ours.push(a);
                    ours_down.push(d);
                } else {
                    lan.push(a);
                    lan_down.push(d);
                }
            }
        }
        out.push(row(
            &format!("p1-gossip-{n}"),
            &format!("P1 detection, gossip alone: SIGKILL one of {n} nodes, until every survivor reports it not alive (s)"),
            &ours,
            Some((&format!("foca Config::new_lan({n}) as shipped, same harness"), &lan)),
            "median <= 3 s",
            Some(median(&ours) <= 3.0),
            json!({"down_s": ours_down, "down_median_s": median(&ours_down),
                   "baseline_down_s": lan_down, "baseline_down_median_s": median(&lan_down),
                   "note": "not alive (Suspect) is what the managers act on; Down follows after foca's suspicion timeout, the same in both (lifeguard only stretches it while a node's own timers run late)"}),
        ));
    }
    Ok(())
}

/// Undoes what [`p1_false_downs`] set up, also when it fails half-way.
struct Starvation {
    rule: Vec<String>,
    cgroup: PathBuf,
    burner: Option<std::process::Child>,
}

impl Drop for Starvation {
    fn drop(&mut self) {
        if let Some(b) = &mut self.burner {
            let _ = b.kill();
            let _ = b.wait();
        }
        let mut del = self.rule.clone();
        if let Some(a) = del.iter_mut().find(|a| *a == "-A") {
            *a = "-D".into();
        }
        let _ = std::process::Command::new("iptables").args(&del).status();
        // Processes still inside go back to the root group first.
        if let Ok(procs) = std::fs::read_to_string(self.cgroup.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write("/sys/fs/cgroup/cpu/cgroup.procs", pid);
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// P1, second half: false downs. Three managers with their etcd run for
/// 10 minutes while every gossip packet is dropped with probability 10 %
/// (iptables on loopback) and one manager is CPU-starved: it shares a CPU
/// cgroup capped at 10 % of one core per second with a busy loop, so it
/// stalls for most of every second. Counts the members the managers declared
/// down (all are alive: every one is a false down) and the times a manager
/// was declared down and rejoined. Needs root.
async fn p1_false_downs(
    quick: bool,
    root: &Path,
    bin_dir: &Path,
    out: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let title = "P1 false downs: 3 managers, 10 % gossip packet loss, one CPU-starved (members declared down)";
    let cg_root = Path::new("/sys/fs/cgroup/cpu");
    let root_user = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    if !root_user || !cg_root.join("cgroup.procs").exists() {
        out.push(json!({"id": "p1-loss", "title": title,
            "status": "not run: needs root, iptables and the cgroup v1 cpu controller"}));
        return Ok(());
    }
    let secs = std::env::var("BENCH_LOSS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 30 } else { 600 });
    let dir = root.join("p1-loss");
    std::fs::create_dir_all(&dir)?;
    let env = tests::ClusterEnv::new(
        &dir,
        bin_dir.join("etcd-manager").to_str().unwrap(),
        bin_dir.join("etcd-manager-ctl").to_str().unwrap(),
    );
    let mut ms: Vec<tests::Manager> = (1..=3u8).map(|h| env.start_with_metrics(h)).collect();
    env.configure(3, VERSION);
    let eps: Vec<String> = (1..=3u8).map(|h| env.client_url(h)).collect();
    tests::wait_voters("three voters", &eps, 3, None).await;
    let metrics: Vec<String> = (1..=3u8).map(|h| env.metrics_addr(h)).collect();
    let counts = |m: Vec<String>| async move {
        let mut v = vec![];
        for a in &m {
            let (_, body) = tests::http_get(a, "/metrics").await.ok()?;
            v.push((
                metric_sum(&body, "etcd_manager_gossip_member_downs_total"),
                metric_sum(&body, "etcd_manager_gossip_rejoins_total"),
            ));
        }
        Some(v)
    };
    let before = counts(metrics.clone()).await.unwrap_or_default();
    // Beside the managers, under the same faults: two clusters of the gossip
    // layer alone, ours and foca's new_lan(3) as shipped (the baseline).
    let gossip_ids: Vec<String> = (1..=3).map(|i| format!("g{i}")).collect();
    let lan_addrs: Vec<String> = (31..=33u8)
        .map(|h| format!("{}:8000", tests::host_ip(env.net, h)))
        .collect();
    let ours_addrs: Vec<String> = (41..=43u8)
        .map(|h| format!("{}:8000", tests::host_ip(env.net, h)))
        .collect();
    let lan = gossip_cluster(&gossip_ids, &lan_addrs, false).await?;
    let ours = gossip_cluster(&gossip_ids, &ours_addrs, true).await?;
    // For a closer look: BENCH_LOSS (a probability, default 0.1) and
    // BENCH_STARVE=0 (no starved manager).
    let loss: f64 = std::env::var("BENCH_LOSS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.1);
    let starve = std::env::var("BENCH_STARVE").map_or(true, |v| v != "0");

    // The faults: loss on every gossip packet of this cluster's /16, and the
    // third manager (etcd already runs outside its group) starved.
    let rule: Vec<String> = [
        "-A",
        "INPUT",
        "-i",
        "lo",
        "-p",
        "udp",
        "-d",
        &format!("127.{}.0.0/16", env.net),
        "--dport",
        "8000",
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        &loss.to_string(),
        "-j",
        "DROP",
    ]
    .map(String::from)
    .to_vec();
    let cgroup = cg_root.join(format!("etcd-manager-bench-{}", std::process::id()));
    let mut guard = Starvation {
        rule: vec![],
        cgroup: cgroup.clone(),
        burner: None,
    };
    let ok = std::process::Command::new("iptables")
        .args(&rule)
        .status()?
        .success();
    anyhow::ensure!(ok, "iptables refused the loss rule");
    guard.rule = rule;
    std::fs::create_dir_all(&cgroup)?;
    std::fs::write(cgroup.join("cpu.cfs_period_us"), "1000000")?;
    std::fs::write(cgroup.join("cpu.cfs_quota_us"), "100000")?;
    let burner = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()?;
    std::fs::write(cgroup.join("cgroup.procs"), burner.id().to_string())?;
    guard.burner = Some(burner);
    let starved = ms[2]
        .pid()
        .ok_or_else(|| anyhow::anyhow!("manager 3 is not running"))?;
    if starve {
        std::fs::write(cgroup.join("cgroup.procs"), starved.to_string())?;
        for node in [&lan[2], &ours[2]] {
            let pid = node
                .child
                .id()
                .ok_or_else(|| anyhow::anyhow!("a gossip node exited"))?;
            std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())?;
        }
    }

    let start = Instant::now();
    let mut suspect_samples = 0u64;
    let mut samples = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        for a in &metrics {
            if let Ok((_, body)) = tests::http_get(a, "/metrics").await {
                samples += 1;
                if metric_sum(&body, "etcd_manager_gossip_members{state=\"suspect\"}") > 0.0 {
                    suspect_samples += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let throttled = std::fs::read_to_string(cgroup.join("cpu.stat")).unwrap_or_default();
    drop(guard);
    let after = counts(metrics.clone()).await.unwrap_or_default();
    let gossip_counts =
        |c: &[GossipProc]| -> (Vec<f64>, Vec<f64>) { c.iter().map(GossipProc::counts).unzip() };
    let (lan_downs, lan_rejoins) = gossip_counts(&lan);
    let (ours_downs, ours_rejoins) = gossip_counts(&ours);
    drop(lan);
    drop(ours);
    for m in &mut ms {
        m.kill_all();
    }
    let downs: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a.0 - b.0).collect();
    let rejoins: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).collect();
    let total = downs.iter().sum::<f64>();
    out.push(row(
        "p1-loss",
        title,
        &[total],
        Some((
            "foca Config::new_lan(3) as shipped (gossip layer alone, beside ours, same faults)",
            &[lan_downs.iter().sum::<f64>()],
        )),
        "0 false downs over 10 minutes",
        Some(total == 0.0),
        json!({"seconds": secs, "downs_seen_by_manager": downs, "rejoins_by_manager": rejoins,
               "starved_manager": 3,
               "share_of_samples_with_a_suspect": suspect_samples as f64 / samples.max(1) as f64,
               "starved_cgroup_cpu_stat": throttled.split_whitespace().collect::<Vec<_>>().join(" "),
               "gossip": "foca Config::new_lan(3) (probe every 1 s, probe timeout 500 ms, 3 indirect probes, suspicion 4 s) with every update sent 5 times instead of 2, queued packets read before timers fire, a local health score scaling our suspicion timeout, and suspects we still hear from kept alive",
               "baseline_downs_seen_by_node": lan_downs, "baseline_rejoins_by_node": lan_rejoins,
               "ours_gossip_alone_downs_seen_by_node": ours_downs, "ours_gossip_alone_rejoins_by_node": ours_rejoins,
               "baseline": "three processes running the gossip crate alone with foca Config::new_lan(3) as shipped (no extra sends, no local health, no reviving), beside the managers, under the same loss, the third in the same starved cgroup; a third cluster runs the gossip crate alone with our settings (ours_gossip_alone_*)"}),
    ));
    Ok(())
}

/// P3: a member's host dies for good; an idle fourth manager replaces it.
async fn p3(quick: bool, root: &Path, bin_dir: &Path, out: &mut Vec<Value>) -> anyhow::Result<()> {
    let runs = if quick { 1 } else { 3 };
    let grace = Duration::from_secs(10);
    let mut times = vec![];
    for r in 0..runs {
        let dir = root.join(format!("p3-{r}"));
        std::fs::create_dir_all(&dir)?;
        let env = tests::ClusterEnv::new(
            &dir,
            bin_dir.join("etcd-manager").to_str().unwrap(),
            bin_dir.join("etcd-manager-ctl").to_str().unwrap(),
        );
        let grace_flag = format!("--member-replace-grace={}s", grace.as_secs());
        let mut ms: Vec<tests::Manager> = (1..=3u8)
            .map(|h| {
                let m = format!("--metrics-address={}", env.metrics_addr(h));
                env.start_with(h, &[&grace_flag, &m])
            })
            .collect();
        env.configure(3, VERSION);
        let eps: Vec<String> = (1..=3u8).map(|h| env.client_url(h)).collect();
        let members = tests::wait_voters("three voters", &eps, 3, None).await;
        // The idle fourth manager joins only now, so it is not a member.
        let _idle = env.start_with(4, &[&grace_flag]);
        let metrics: Vec<String> = (1..=3u8).map(|h| env.metrics_addr(h)).collect();
        let leader = tests::wait_for("a leader", Duration::from_secs(60), || {
            let m = metrics.clone();
            async move {
                for (i, a) in m.iter().enumerate() {
                    if leader(a).await? {
                        return Some(i);
                    }
                }
                None
            }
        })
        .await;
        let victim = (leader + 1) % 3;
        let victim_ip = tests::host_ip(env.net, victim as u8 + 1);
        let victim_name = members
            .iter()
            .find(|m| {
                m.peer_urls
                    .iter()
                    .any(|u| u.contains(&format!("//{victim_ip}:")))
            })
            .map(|m| m.name.clone())
            .ok_or_else(|| anyhow::anyhow!("no member on {victim_ip}"))?;
        ms[victim].kill_all();
        let killed = Instant::now();
        let all_eps: Vec<String> = (1..=4u8)
            .filter(|h| usize::from(*h) != victim + 1)
            .map(|h| env.client_url(h))
            .collect();
        tests::wait_for("the dead member replaced", Duration::from_secs(180), || {
            let eps = all_eps.clone();
            let gone = victim_name.clone();
            async move {
                let ms = tests::healthy_members(&eps).await?;
                (ms.len() == 3
                    && ms
                        .iter()
                        .all(|m| !m.is_learner && !m.name.is_empty() && m.name != gone))
                .then_some(())
            }
        })
        .await;
        let after_grace = killed.elapsed().saturating_sub(grace).as_secs_f64();
        eprintln!("p3 run {r}: full membership {after_grace:.1} s after the grace period");
        times.push(after_grace);
        for m in &mut ms {
            m.kill_all();
        }
    }
    out.push(row(
        "p3",
        "P3 replacement: a member's host dies, an idle fourth manager replaces it; time after the grace period until 3 healthy voters (s)",
        &times,
        None,
        "<= 30 s",
        Some(median(&times) <= 30.0),
        json!({"grace_s": grace.as_secs(), "note": "grace 10 s here (default 1 m); the time counts from when the grace ran out"}),
    ));
    Ok(())
}

/// Writes through every client URL in turn every 20 ms and returns the
/// acknowledged writes' times (seconds from the start).
fn writer(
    eps: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut acks = vec![];
        let mut n = 0usize;
        while !*stop.borrow() && start.elapsed() < Duration::from_secs(900) {
            let ep = &eps[n % eps.len()];
            if tokio::time::timeout(
                Duration::from_secs(2),
                tests::put(ep, &format!("/bench/writer/{n:08}"), "v"),
            )
            .await
            .is_ok_and(|r| r.is_ok())
            {
                acks.push(start.elapsed().as_secs_f64());
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acks
    })
}

fn longest_gap(acks: &[f64]) -> f64 {
    acks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

async fn all_versions(eps: &[String], want: &str) -> Option<()> {
    for ep in eps {
        let c = etcd::EtcdClient::connect(std::slice::from_ref(ep), Duration::from_secs(2))
            .await
            .ok()?;
        let s = c.status().await.ok()?;
        if s.version != want || s.is_learner {
            return None;
        }
    }
    Some(())
}

/// Put `keys` keys into the cluster behind `eps` (32 at a time).
async fn load_keys(eps: &[String], keys: u64) -> anyhow::Result<()> {
    let client = etcd::EtcdClient::connect(eps, Duration::from_secs(10)).await?;
    let loaded: Vec<_> = futures::stream::iter(0..keys)
        .map(|i| {
            let c = client.clone();
            async move {
                // A member may still be opening its client port: try a few times.
                let key = format!("/bench/keys/{i:08}");
                let mut last = None;
                for _ in 0..20 {
                    match c.put(&key, "some value of a key").await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(last.expect("an error after failed attempts"))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    loaded.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

/// One version change on three managers with `keys` keys loaded and a
/// writer running throughout: the longest gap between acknowledged writes,
/// how long the change took, the writes acknowledged and the keys after.
struct Change {
    gap: f64,
    took: f64,
    acked: usize,
    keys_after: u64,
}

/// Three managers (release binaries in `bin_dir`, `flags` beside the
/// walkthrough's) under `root/name`, the spec three members of `version`,
/// waited for until three voters answer: the cluster, its managers, and
/// its client URLs.
async fn three_managers(
    root: &Path,
    bin_dir: &Path,
    name: &str,
    flags: &[&str],
    version: &str,
) -> anyhow::Result<(tests::ClusterEnv, Vec<tests::Manager>, Vec<String>)> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let env = tests::ClusterEnv::new(
        &dir,
        bin_dir.join("etcd-manager").to_str().unwrap(),
        bin_dir.join("etcd-manager-ctl").to_str().unwrap(),
    );
    let ms: Vec<tests::Manager> = (1..=3u8).map(|h| env.start_with(h, flags)).collect();
    env.configure(3, version);
    let eps: Vec<String> = (1..=3u8).map(|h| env.client_url(h)).collect();
    tests::wait_voters(&format!("three {version} voters"), &eps, 3, None).await;
    Ok((env, ms, eps))
}

async fn version_change(
    root: &Path,
    bin_dir: &Path,
    name: &str,
    from: &str,
    to: &str,
    keys: u64,
) -> anyhow::Result<Change> {
    let (env, mut ms, eps) = three_managers(root, bin_dir, name, &[], from).await?;
    load_keys(&eps, keys).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let w = writer(eps.clone(), stop_rx);
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.configure(3, to);
    let changed = Instant::now();
    tests::wait_for(
        &format!("every member on {to}"),
        Duration::from_secs(600),
        || {
            let eps = eps.clone();
            async move { all_versions(&eps, to).await }
        },
    )
    .await;
    let took = changed.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_tx.send(true);
    let acks = w.await?;
    let keys_after = etcd::EtcdClient::connect(&eps, Duration::from_secs(10))
        .await?
        .count_with_prefix("/bench/keys/")
        .await?;
    for m in &mut ms {
        m.kill_all();
    }
    Ok(Change {
        gap: longest_gap(&acks),
        took,
        acked: acks.len(),
        keys_after,
    })
}

/// P6: the longest gap between acknowledged writes during rolling upgrades
/// (3.4 -> 3.5, 3.5 -> 3.6, 3.6 -> 3.7) and a downgrade by etcd's protocol
/// (3.7 -> 3.6, with many keys), beside the client-visible downtime of a
/// dump and restore (3.5.30 -> 3.4.23) of the same number of keys.
async fn p6(quick: bool, root: &Path, bin_dir: &Path, out: &mut Vec<Value>) -> anyhow::Result<()> {
    let keys: u64 = if quick { 2_000 } else { 100_000 };
    for (id, from, to, what) in [
        (
            "p6-rolling",
            "3.4.23",
            VERSION,
            "rolling 3.4.23 -> 3.5.30 upgrade",
        ),
        (
            "p6-rolling-3.6",
            "3.5.35",
            "3.6.16",
            "rolling 3.5.35 -> 3.6.16 upgrade",
        ),
        (
            "p6-rolling-3.7",
            "3.6.16",
            "3.7.3",
            "rolling 3.6.16 -> 3.7.3 upgrade",
        ),
    ] {
        let c = version_change(root, bin_dir, id, from, to, 0).await?;
        out.push(row(
            id,
            &format!("P6 {what}: longest gap between acknowledged writes (s)"),
            &[c.gap],
            None,
            "<= 2 s",
            Some(c.gap <= 2.0),
            json!({"change_took_s": c.took, "acked_writes": c.acked}),
        ));
    }
    let c = version_change(root, bin_dir, "p6-downgrade", "3.7.3", "3.6.16", keys).await?;
    out.push(row(
        "p6-downgrade",
        &format!(
            "P6 downgrade 3.7.3 -> 3.6.16 by etcd's protocol with {keys} keys: longest gap between acknowledged writes (s)"
        ),
        &[c.gap],
        None,
        "<= 2 s",
        Some(c.gap <= 2.0 && c.keys_after == keys),
        json!({"change_took_s": c.took, "acked_writes": c.acked, "keys_after": c.keys_after, "keys_before": keys}),
    ));
    let c = version_change(root, bin_dir, "p6-dump", VERSION, "3.4.23", keys).await?;
    out.push(row(
        "p6-dump-restore",
        &format!(
            "P6 dump and restore 3.5.30 -> 3.4.23 with {keys} keys: client-visible downtime (s)"
        ),
        &[c.gap],
        None,
        "<= 15 s",
        Some(c.gap <= 15.0 && c.keys_after == keys),
        json!({"change_took_s": c.took, "keys_after": c.keys_after, "keys_before": keys}),
    ));
    Ok(())
}

/// One defragmentation run on three managers: churn (`rounds` keys of
/// 100 KiB written three times, then compacted) leaves two thirds of every
/// member's database free; a writer runs throughout. `ours`: the managers
/// defragment by themselves (thresholds 50 % and 1 MiB; the raft leader last,
/// after moving leadership away). Otherwise the raft leader alone is
/// defragmented directly, leadership left where it is (what a cron job
/// running `etcdctl defrag` against every endpoint does to the leader).
/// The longest time no client URL acknowledged a write (one writer each).
async fn defrag_run(
    root: &Path,
    bin_dir: &Path,
    name: &str,
    rounds: usize,
    ours: bool,
) -> anyhow::Result<(f64, u64)> {
    let flags: &[&str] = if ours {
        &[
            "--defrag-fragmentation=0.5",
            "--defrag-min-free-bytes=1048576",
        ]
    } else {
        &["--defrag-fragmentation=0"]
    };
    let (_env, mut ms, eps) = three_managers(root, bin_dir, name, flags, VERSION).await?;
    // Members leave quarantine one restart at a time: each serving first.
    for ep in &eps {
        tests::wait_put(
            "the member serving",
            ep,
            "/bench/ready",
            "1",
            Duration::from_secs(60),
        )
        .await;
    }
    let client = etcd::EtcdClient::connect(&eps, Duration::from_secs(30)).await?;
    // `rounds` keys of live data, each written three times: two thirds of
    // the file free after the compaction, and a defragmentation that has
    // the live third to copy (what makes it stall a member).
    let value = "x".repeat(100 * 1024);
    for _ in 0..3 {
        for k in 0..rounds {
            client.put(&format!("/bench/churn/{k:06}"), &value).await?;
        }
    }
    let rev = client.status().await?.revision;
    client.compact(rev).await?;
    // One writer per client URL: the figure is how long no URL took a
    // write (the cluster unavailable to clients that can use any member).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ws: Vec<_> = eps
        .iter()
        .map(|ep| writer(vec![ep.clone()], stop_rx.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut db_before = 0u64;
    if ours {
        // Until every member's file has shrunk.
        tests::wait_for(
            "every member defragmented",
            Duration::from_secs(600),
            || {
                let eps = eps.clone();
                async move {
                    for ep in &eps {
                        let c = etcd::EtcdClient::connect(
                            std::slice::from_ref(ep),
                            Duration::from_secs(2),
                        )
                        .await
                        .ok()?;
                        let st = c.status().await.ok()?;
                        if st.db_in_use * 2 < st.db_size {
                            return None;
                        }
                    }
                    Some(())
                }
            },
        )
        .await;
    } else {
        let mut leader = None;
        for ep in &eps {
            let c = etcd::EtcdClient::connect_with(
                std::slice::from_ref(ep),
                Duration::from_secs(600),
                None,
            )
            .await?;
            let st = c.status().await?;
            if st.leader == st.member_id {
                db_before = st.db_size as u64;
                leader = Some(c);
            }
        }
        leader
            .ok_or_else(|| anyhow::anyhow!("no raft leader"))?
            .defragment()
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    let mut acks = vec![];
    for w in ws {
        acks.extend(w.await?);
    }
    acks.sort_by(f64::total_cmp);
    for m in &mut ms {
        m.kill_all();
    }
    Ok((longest_gap(&acks), db_before))
}

/// P8: defragmenting with a writer running: ours (followers first, the raft
/// leader last after handing leadership away) against defragmenting the raft
/// leader in place.
async fn p8(quick: bool, root: &Path, bin_dir: &Path, out: &mut Vec<Value>) -> anyhow::Result<()> {
    let rounds = if quick { 30 } else { 1_500 };
    let (base, db) = defrag_run(root, bin_dir, "p8-leader-in-place", rounds, false).await?;
    let (ours, _) = defrag_run(root, bin_dir, "p8-ours", rounds, true).await?;
    out.push(row(
        "p8-defrag",
        &format!(
            "P8 defragmenting 3 members of {:.0} MiB, a writer on each client URL: longest time no URL acknowledged a write (s)",
            db as f64 / (1 << 20) as f64
        ),
        &[ours],
        Some((
            "the raft leader defragmented in place, leadership not moved",
            &[base],
        )),
        "<= 2 s and below the baseline",
        Some(ours <= 2.0 && ours <= base),
        json!({"live_keys": rounds, "writes_per_key": 3, "value_kib": 100, "db_bytes_before": db}),
    ));
    Ok(())
}

/// One total loss with a writer running: three managers (`flags`), a full
/// backup, writes for `write_for`, then every host killed and its disk
/// wiped; fresh hosts restore the newest backup (its continuous backup
/// replayed to the latest state when there is one). The seconds of
/// acknowledged writes lost: from the oldest acknowledged write missing
/// after the restore to the loss (0 when none is missing).
async fn rpo_run(
    root: &Path,
    bin_dir: &Path,
    name: &str,
    flags: &[&str],
    write_for: Duration,
) -> anyhow::Result<f64> {
    let (env, mut ms, eps) = three_managers(root, bin_dir, name, flags, VERSION).await?;
    tests::wait_put(
        "host 1 serving",
        &eps[0],
        "/probe",
        "x",
        Duration::from_secs(60),
    )
    .await;
    let out = env.ctl(&["backup-now", "--timeout=3m"]);
    anyhow::ensure!(out.success, "backup-now: {}", out.stderr);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let acks = acked_writer(eps.clone(), stop_rx);
    tokio::time::sleep(write_for).await;
    // The loss: every process at once, then every disk.
    for m in &mut ms {
        m.kill_all();
    }
    let lost_at = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let acks = acks.await?;
    std::fs::remove_dir_all(env.root.join("data"))?;
    let _fresh: Vec<tests::Manager> = (1..=3u8).map(|h| env.start_with(h, flags)).collect();
    let newest = env
        .ctl(&["list-backups"])
        .stdout
        .lines()
        .rev()
        .find(|l| backup::parse_backup_name(l.trim()).is_some())
        .map(|l| l.trim().to_string())
        .ok_or_else(|| anyhow::anyhow!("no backup to restore"))?;
    let out = env.ctl(&["restore-backup", &newest]);
    anyhow::ensure!(out.success, "restore-backup: {}", out.stderr);
    let restored = tests::wait_for("the restored cluster", Duration::from_secs(180), || {
        let eps = eps.clone();
        async move {
            let c = etcd::EtcdClient::connect(&eps, Duration::from_secs(3))
                .await
                .ok()?;
            c.get("/probe").await.ok()??;
            c.keys_with_prefix("/bench/writer/").await.ok()
        }
    })
    .await;
    let present: std::collections::BTreeSet<String> = restored.into_iter().collect();
    let oldest_missing = acks
        .iter()
        .filter(|(k, _)| !present.contains(k))
        .map(|(_, t)| *t)
        .fold(f64::INFINITY, f64::min);
    let lost = if oldest_missing.is_finite() {
        lost_at - oldest_missing
    } else {
        0.0
    };
    eprintln!(
        "{name}: {} writes acknowledged in {lost_at:.1} s, {} missing after the restore of {newest}: {lost:.1} s of writes lost",
        acks.len(),
        acks.iter().filter(|(k, _)| !present.contains(k)).count()
    );
    Ok(lost)
}

/// Writes every 50 ms through the client URLs in turn; the acknowledged
/// keys and when each was acknowledged (seconds from the start).
fn acked_writer(
    eps: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<(String, f64)>> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut acks = vec![];
        let mut n = 0usize;
        while !*stop.borrow() {
            let key = format!("/bench/writer/{n:08}");
            let ep = &eps[n % eps.len()];
            if tokio::time::timeout(Duration::from_secs(2), tests::put(ep, &key, "v"))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                acks.push((key, start.elapsed().as_secs_f64()));
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acks
    })
}

async fn p8_rpo(
    quick: bool,
    root: &Path,
    bin_dir: &Path,
    out: &mut Vec<Value>,
) -> anyhow::Result<()> {
    let runs = if quick { 1 } else { 5 };
    // The baseline's backup interval, shortened from upstream's 15 minutes
    // so a run takes a minute or two: its loss is bound by the interval
    // the same way, and scales with it.
    let interval = if quick { 10 } else { 60 };
    let mut rng = rand::rng();
    let (mut ours, mut base) = (vec![], vec![]);
    for r in 0..runs {
        let secs = rng.random_range(interval..2 * interval);
        let flags = ["--backup-interval=15m"];
        ours.push(
            rpo_run(
                root,
                bin_dir,
                &format!("p8-rpo-ours-{r}"),
                &flags,
                Duration::from_secs(secs),
            )
            .await?,
        );
        let every = format!("--backup-interval={interval}s");
        let flags = [every.as_str(), "--delta-interval=0"];
        base.push(
            rpo_run(
                root,
                bin_dir,
                &format!("p8-rpo-full-{r}"),
                &flags,
                Duration::from_secs(secs),
            )
            .await?,
        );
    }
    let worst = ours.iter().copied().fold(0.0, f64::max);
    out.push(row(
        "p8-rpo",
        "P8 RPO: a writer on three members, every host killed and wiped at a random moment, the latest state restored on fresh hosts: seconds of acknowledged writes lost",
        &ours,
        Some((
            &format!("full backups only, every {interval} s (upstream's way; its loss scales with the interval, 15 min by default)"),
            &base,
        )),
        "<= 30 s (median and worst)",
        Some(median(&ours) <= 30.0 && worst <= 30.0),
        json!({"worst": worst, "baseline_worst": base.iter().copied().fold(0.0, f64::max), "delta_interval_s": 10, "writes_every_ms": 50}),
    ));
    Ok(())
}

/// Sum of every series of a metric (all label sets).
fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (utime + stime in seconds, resident MiB) of a process.
fn proc_usage(pid: i32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, rss_kib / 1024.0))
}

/// P7: what an idle three-node cluster costs per manager, set up as in
/// production: TLS everywhere (CAs from `init-pki`), an S3 store (moto on
/// loopback; requests counted as S3 bills them, a bulk delete as one), the
/// managers finding each other through the store, the default controller
/// interval and lease, 15 min backups, continuous backup on (the default).
/// With `trickle`, a client also writes one key every 2 s, as a Kubernetes
/// control plane's lease renewals do, so the continuous backup has
/// something to upload every interval.
async fn p7(
    quick: bool,
    root: &Path,
    bin_dir: &Path,
    out: &mut Vec<Value>,
    trickle: bool,
) -> anyhow::Result<()> {
    let secs = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20 } else { 600 });
    let name = if trickle { "p7-trickle" } else { "p7" };
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let mut env = tests::ClusterEnv::new(
        &dir,
        bin_dir.join("etcd-manager").to_str().unwrap(),
        bin_dir.join("etcd-manager-ctl").to_str().unwrap(),
    );
    let moto = tests::Moto::start("127.0.0.1", Some(&dir.join("moto.log")))
        .await
        .map_err(anyhow::Error::msg)?;
    moto.create_bucket("bench")
        .await
        .map_err(anyhow::Error::msg)?;
    env.use_s3(&moto, "bench");
    let pki = dir.join("pki");
    let init = tests::run_ctl(
        &env.ctl_bin,
        &[format!("-pki-dir={}", pki.display()), "init-pki".into()],
    );
    anyhow::ensure!(init.success, "init-pki: {}", init.stderr);
    let mut ms: Vec<tests::Manager> = (1..=3u8)
        .map(|h| {
            let ip = tests::host_ip(env.net, h);
            let mut args: Vec<String> = env
                .manager_args(h)
                .into_iter()
                .filter(|a| {
                    ![
                        "--controller-interval",
                        "--insecure",
                        "--etcd-insecure",
                        "--discovery-dir",
                        "--client-urls",
                        "--quarantine-client-urls",
                        "--peer-urls",
                    ]
                    .iter()
                    .any(|f| a.starts_with(f))
                })
                .collect();
            args.extend([
                format!("--client-urls=https://{ip}:4001"),
                format!("--quarantine-client-urls=https://{ip}:8001"),
                format!("--peer-urls=https://{ip}:2380"),
                format!("--pki-dir={}", pki.display()),
                "--store-discovery".into(),
                format!("--metrics-address={}", env.metrics_addr(h)),
            ]);
            env.start_raw(h, args)
        })
        .collect();
    env.configure(3, VERSION);
    let metrics: Vec<String> = (1..=3u8).map(|h| env.metrics_addr(h)).collect();
    // Up: one leader reports three healthy members (etcd's client port needs a
    // client certificate; the leader's metrics say the same).
    tests::wait_for("three healthy members", Duration::from_secs(120), || {
        let metrics = metrics.clone();
        async move {
            for m in &metrics {
                let (_, body) = tests::http_get(m, "/metrics").await.ok()?;
                if metric_sum(&body, "etcd_manager_is_leader") == 1.0
                    && metric_sum(&body, "etcd_manager_etcd_members{kind=\"healthy\"}") == 3.0
                {
                    return Some(());
                }
            }
            None
        }
    })
    .await;
    // The trickle: one write every 2 s over TLS with a client certificate.
    let (stop_writer, stop_rx) = tokio::sync::watch::channel(false);
    let writer = if trickle {
        let certs = dir.join("client");
        let issued = tests::run_ctl(
            &env.ctl_bin,
            &[
                format!("-pki-dir={}", pki.display()),
                "issue-client-cert".into(),
                certs.display().to_string(),
            ],
        );
        anyhow::ensure!(issued.success, "issue-client-cert: {}", issued.stderr);
        let tls = etcd::ClientTls {
            ca_pem: std::fs::read_to_string(certs.join("ca.crt"))?,
            cert_pem: std::fs::read_to_string(certs.join("client.crt"))?,
            key_pem: std::fs::read_to_string(certs.join("client.key"))?,
        };
        let eps: Vec<String> = (1..=3u8)
            .map(|h| format!("https://{}:4001", tests::host_ip(env.net, h)))
            .collect();
        let client =
            etcd::EtcdClient::connect_with(&eps, Duration::from_secs(5), Some(&tls)).await?;
        Some(tokio::spawn(async move {
            let mut acked = 0u64;
            let mut n = 0u64;
            while !*stop_rx.borrow() {
                if client
                    .put("/bench/trickle/lease", &n.to_string())
                    .await
                    .is_ok()
                {
                    acked += 1;
                }
                n += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            acked
        }))
    } else {
        None
    };
    // Let the first backup and the start-up settle (store discovery reads
    // fast for its first 2 minutes; a full run outlasts that by far).
    tokio::time::sleep(Duration::from_secs(15)).await;
    let read = |m: &str| {
        let m = m.to_string();
        async move {
            let (_, body) = tests::http_get(&m, "/metrics").await.ok()?;
            Some((
                metric_sum(&body, "etcd_manager_store_requests_total"),
                metric_sum(&body, "etcd_manager_gossip_bytes_total{direction=\"sent\"}"),
                metric_sum(
                    &body,
                    "etcd_manager_backup_delta_segments_total{result=\"success\"}",
                ),
            ))
        }
    };
    let pids: Vec<i32> = ms.iter().filter_map(tests::Manager::pid).collect();
    let mut before = vec![];
    for (m, pid) in metrics.iter().zip(&pids) {
        before.push((
            read(m).await.unwrap_or_default(),
            proc_usage(*pid).unwrap_or_default(),
        ));
    }
    let start = Instant::now();
    let mut peak_rss = vec![0f64; 3];
    while start.elapsed() < Duration::from_secs(secs) {
        for (i, pid) in pids.iter().enumerate() {
            if let Some((_, rss)) = proc_usage(*pid) {
                peak_rss[i] = peak_rss[i].max(rss);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Where the store requests go, per manager and operation.
    let mut by_op = vec![];
    for m in &metrics {
        let mut ops: BTreeMap<String, f64> = BTreeMap::new();
        if let Ok((_, body)) = tests::http_get(m, "/metrics").await {
            for l in body
                .lines()
                .filter(|l| l.starts_with("etcd_manager_store_requests_total{"))
            {
                let op = l
                    .split("op=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("?");
                let v: f64 = l
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                if !l.contains("result=\"error\"") {
                    *ops.entry(op.to_string()).or_default() += v;
                }
            }
        }
        by_op.push(ops);
    }
    let (mut cpu, mut reqs, mut bytes, mut segments) = (vec![], vec![], vec![], vec![]);
    for (i, (m, pid)) in metrics.iter().zip(&pids).enumerate() {
        let ((r0, b0, s0), (c0, _)) = before[i];
        let (r1, b1, s1) = read(m).await.unwrap_or_default();
        let (c1, _) = proc_usage(*pid).unwrap_or_default();
        cpu.push((c1 - c0) / elapsed * 100.0);
        reqs.push((r1 - r0) / elapsed * 3600.0);
        bytes.push((b1 - b0) / elapsed);
        segments.push((s1 - s0) / elapsed * 3600.0);
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let _ = stop_writer.send(true);
    let acked = match writer {
        Some(w) => Some(w.await?),
        None => None,
    };
    for m in &mut ms {
        m.kill_all();
    }
    if let Some(acked) = acked {
        // The trickle must have run, and the continuous backup uploaded it.
        anyhow::ensure!(
            acked as f64 >= elapsed / 2.0 * 0.8,
            "the trickle writer got {acked} writes acknowledged in {elapsed:.0} s"
        );
        anyhow::ensure!(
            max(&segments) > 0.0,
            "no continuous-backup segment uploaded while a client wrote"
        );
    }
    // One row per figure; "runs" are the three managers, the goal holds
    // for the highest (the leader does the most).
    let detail = json!({"peak_rss_mib": peak_rss, "cpu_percent_of_a_core": cpu,
           "store_requests_per_hour": reqs, "gossip_bytes_sent_per_s": bytes,
           "store_requests_by_operation_since_start": by_op,
           "delta_segments_per_hour": segments,
           "setup": if trickle {
               "TLS everywhere, S3 store (moto), store discovery, default controller interval and lease, continuous backup every 10 s (default), a client writing one key every 2 s"
           } else {
               "TLS everywhere, S3 store (moto), store discovery, default controller interval and lease, continuous backup every 10 s (default), no client"
           },
           "note": "etcd itself is not counted; the manager process only; one value per manager"});
    let figures: [(&str, &str, &Vec<f64>, &str, f64); 4] = [
        (
            "p7",
            "peak RSS (MiB)",
            &peak_rss,
            "<= 20 MiB on every manager",
            20.0,
        ),
        (
            "p7-cpu",
            "CPU (% of a core)",
            &cpu,
            "<= 0.5 % on every manager",
            0.5,
        ),
        (
            "p7-requests",
            "store requests per hour",
            &reqs,
            "<= 2,000 on every manager",
            2000.0,
        ),
        (
            "p7-gossip",
            "gossip bytes sent per second",
            &bytes,
            "<= 2 KB/s on every manager",
            2000.0,
        ),
    ];
    for (id, what, values, goal, limit) in figures {
        let first = id == "p7";
        let (id, title) = if trickle {
            (
                id.replacen("p7", "p7-trickle", 1),
                format!(
                    "P7 with a write every 2 s (continuous backup uploading) over {secs} s, each of 3 managers: {what}"
                ),
            )
        } else {
            (
                id.to_string(),
                format!("P7 idle cost over {secs} s, each of 3 managers: {what}"),
            )
        };
        let id = id.as_str();
        out.push(row(
            id,
            &title,
            values,
            None,
            goal,
            Some(max(values) <= limit),
            if first {
                detail.clone()
            } else {
                json!({"see": name})
            },
        ));
    }
    Ok(())
}

async fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut out_dir = PathBuf::from("target/bench");
    let mut want: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--out" => out_dir = PathBuf::from(it.next().expect("--out DIR")),
            s if s.starts_with('p') => want.push(s.to_string()),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    if want.is_empty() {
        want = [
            "p1",
            "p1-loss",
            "p2",
            "p3",
            "p4",
            "p5",
            "p6",
            "p7",
            "p7-trickle",
            "p8",
        ]
        .map(String::from)
        .to_vec();
    }
    let bin_dir = std::env::var("BENCH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/release"));
    std::fs::create_dir_all(&out_dir)?;
    let work = tempfile::Builder::new()
        .prefix("etcd-manager-bench")
        .tempdir()?;
    // BENCH_KEEP=1 keeps the work folder (logs, data) for a closer look.
    let keep = std::env::var("BENCH_KEEP").is_ok();
    if keep {
        eprintln!("bench: keeping {}", work.path().display());
    }
    let mut rows = Vec::new();
    if want.iter().any(|w| w == "p1" || w == "p2") {
        p1_p2(quick, work.path(), &bin_dir, &mut rows).await?;
    }
    if want.iter().any(|w| w == "p1") {
        p1_gossip(quick, &mut rows).await?;
    }
    if want.iter().any(|w| w == "p1-loss") {
        p1_false_downs(quick, work.path(), &bin_dir, &mut rows).await?;
    }
    if want.iter().any(|w| w == "p3") {
        p3(quick, work.path(), &bin_dir, &mut rows).await?;
    }
    if want.iter().any(|w| w == "p4" || w == "p5") {
        p4_p5(quick, work.path(), &want, &mut rows).await?;
    }
    if want.iter().any(|w| w == "p6") {
        p6(quick, work.path(), &bin_dir, &mut rows).await?;
    }
    if want.iter().any(|w| w == "p7") {
        p7(quick, work.path(), &bin_dir, &mut rows, false).await?;
    }
    if want.iter().any(|w| w == "p7-trickle") {
        p7(quick, work.path(), &bin_dir, &mut rows, true).await?;
    }
    if want.iter().any(|w| w == "p8") {
        p8(quick, work.path(), &bin_dir, &mut rows).await?;
    }
    if want.iter().any(|w| w == "p8" || w == "p8-rpo") {
        p8_rpo(quick, work.path(), &bin_dir, &mut rows).await?;
    }
    let machine = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())),
        "quick": quick,
        "date": chrono_like_now(),
    });
    // A partial run replaces its scenarios in the last full results and keeps
    // the others (each row says when it was measured).
    for r in &mut rows {
        r["measured"] = machine["date"].clone();
    }
    let path = out_dir.join("results.json");
    if !quick
        && let Some(old) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        && old["machine"]["quick"] == false
    {
        let ids: Vec<Value> = rows.iter().map(|r| r["id"].clone()).collect();
        let kept: Vec<Value> = old["scenarios"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| !ids.contains(&r["id"]))
            .cloned()
            .collect();
        let mut all = kept;
        all.extend(rows);
        all.sort_by_key(|r| r["id"].as_str().unwrap_or("").to_string());
        rows = all;
    }
    if keep {
        let _ = work.keep();
    }
    let doc = json!({"machine": machine, "scenarios": rows});
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    let md = markdown(&doc);
    std::fs::write(out_dir.join("results.md"), &md)?;
    println!("{md}");
    Ok(())
}

fn chrono_like_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn markdown(doc: &Value) -> String {
    let mut s = String::new();
    let m = &doc["machine"];
    s += &format!(
        "Measured {} on {} cores ({}){}.\n\n",
        m["date"].as_str().unwrap_or(""),
        m["cores"],
        m["cpu"].as_str().unwrap_or("unknown CPU"),
        if m["quick"].as_bool() == Some(true) {
            ", quick mode (small sizes, one run: a smoke test, not a measurement)"
        } else {
            ""
        }
    );
    s += "| scenario | median | p95 | runs | baseline (median) | ratio | goal | met |\n|---|---|---|---|---|---|---|---|\n";
    for r in doc["scenarios"].as_array().into_iter().flatten() {
        if r["status"] != "measured" {
            s += &format!(
                "| {} | {} | | | | | | |\n",
                r["title"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or("")
            );
            continue;
        }
        let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
        s += &format!(
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} |\n",
            r["title"].as_str().unwrap_or(""),
            f(&r["median"]),
            f(&r["p95"]),
            r["runs"].as_array().map_or(0, Vec::len),
            r["baseline"].as_str().unwrap_or("-"),
            f(&r["baseline_median"]),
            f(&r["ratio"]),
            r["goal"].as_str().unwrap_or(""),
            match r["goal_met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
        );
    }
    s += "\nDetails per scenario (ratios to `snapshot save`, compression ratios, peak RSS, foca's Down times, per-manager counts) are in `target/bench/results.json`.\n";
    s
}
