//! The partition suite (driven by `scripts/partition-suite.sh`): 3 or 5
//! hosts, each a network namespace with one etcd-manager and its etcd on its
//! own address on a bridge, the S3 store (moto) on the root side, TLS on.
//! Each scenario injects one fault while a client oracle writes sequential
//! keys, heals it, and checks: every acknowledged write readable, at most one
//! node acting per epoch (from the managers' logs), the spec's membership back
//! with every member healthy; and measures the time to detect, to a new
//! leader, and back to full membership.
//!
//! ```text
//! partition-suite [--hosts 3|5] [--quick] [--out DIR] [scenario...]
//! partition-suite --cleanup        remove leftover namespaces, bridge, processes
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// This run's place among the runs on this machine (a lease, taken in
/// `main`): its namespaces `ems<k>-h<h>`, bridge, links and subnet
/// `10.241.<k>.0/24` are its own, so runs (and tests) side by side never meet.
static SLOT: std::sync::OnceLock<(u32, tests::lease::Lease)> = std::sync::OnceLock::new();
const LEASE_KIND: &str = "partition-suite";
const SLOTS: u32 = 40;

fn slot() -> u32 {
    SLOT.get_or_init(|| {
        let l = tests::lease::lease(LEASE_KIND, SLOTS);
        (l.index, l)
    })
    .0
}

fn prefix() -> String {
    format!("ems{}", slot())
}

fn bridge() -> String {
    format!("ems{}br", slot())
}
/// The root namespace's address on the bridge (the oracle's side).
fn root_ip() -> String {
    format!("10.241.{}.254", slot())
}
/// The store's own address on the bridge, so cutting the store leaves clients alone.
fn store_ip() -> String {
    format!("10.241.{}.253", slot())
}
const STORE_PORT: u16 = 5055;
const VERSION: &str = "3.5.30";

fn ip_of(h: usize) -> String {
    format!("10.241.{}.{h}", slot())
}
fn ns(h: usize) -> String {
    format!("{}-h{h}", prefix())
}

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    sh(Command::new("ip").args(args))
}

fn iptables(h: usize, rule: &[&str]) -> anyhow::Result<()> {
    sh(Command::new("ip")
        .args(["netns", "exec", &ns(h), "iptables", "-w"])
        .args(rule))
    .map(|_| ())
}

/// Remove everything a run may have left in this run's slot: processes in
/// its namespaces, the namespaces, the bridge.
fn cleanup() {
    cleanup_slot(slot());
}

/// [`cleanup`] of slot `k` (held by this process).
fn cleanup_slot(k: u32) {
    let (prefix, store_ip, bridge) = (
        format!("ems{k}"),
        format!("10.241.{k}.253"),
        format!("ems{k}br"),
    );
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{prefix}-h")))
        {
            if let Ok(pids) = ip(&["netns", "pids", name]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let p = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGCONT);
                    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
                }
            }
            let _ = ip(&["netns", "del", name]);
        }
    }
    // The store (moto on the bridge address), if a killed run left it.
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("moto_server") && cmd.contains(&format!("{store_ip} ")) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let _ = ip(&["link", "del", &bridge]);
}

/// The hosts' network; removed when dropped.
struct Net {
    hosts: usize,
}

impl Net {
    fn up(hosts: usize) -> anyhow::Result<Net> {
        cleanup();
        let br = bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", root_ip()), "dev", &br])?;
        ip(&["addr", "add", &format!("{}/32", store_ip()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for h in 1..=hosts {
            let n = ns(h);
            let veth = format!("{}v{h}", prefix());
            ip(&["netns", "add", &n])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &n,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge(), "up"])?;
            ip(&[
                "-n",
                &n,
                "addr",
                "add",
                &format!("{}/24", ip_of(h)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &n, "link", "set", "eth0", "up"])?;
            ip(&["-n", &n, "link", "set", "lo", "up"])?;
        }
        Ok(Net { hosts })
    }

    /// Drop traffic between hosts a and b, both ways.
    fn cut(&self, a: usize, b: usize) -> anyhow::Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            iptables(x, &["-A", "INPUT", "-s", &ip_of(y), "-j", "DROP"])?;
            iptables(x, &["-A", "OUTPUT", "-d", &ip_of(y), "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Host h reaches nothing and nothing reaches it (store and clients included).
    fn isolate(&self, h: usize) -> anyhow::Result<()> {
        iptables(h, &["-A", "INPUT", "-i", "eth0", "-j", "DROP"])?;
        iptables(h, &["-A", "OUTPUT", "-o", "eth0", "-j", "DROP"])
    }

    fn loss(&self, percent: u32) -> anyhow::Result<()> {
        let p = format!("{}", f64::from(percent) / 100.0);
        for h in 1..=self.hosts {
            for chain in ["INPUT", "OUTPUT"] {
                let dir = if chain == "INPUT" { "-i" } else { "-o" };
                iptables(
                    h,
                    &[
                        "-A",
                        chain,
                        dir,
                        "eth0",
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    fn store_down(&self) -> anyhow::Result<()> {
        for h in 1..=self.hosts {
            iptables(h, &["-A", "OUTPUT", "-d", &store_ip(), "-j", "DROP"])?;
        }
        Ok(())
    }

    fn heal(&self) -> anyhow::Result<()> {
        for h in 1..=self.hosts {
            iptables(h, &["-F"])?;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        cleanup();
    }
}

/// moto on the bridge address, in the root namespace.
struct Store {
    child: std::process::Child,
}

impl Store {
    async fn start(log: &Path) -> anyhow::Result<Store> {
        let child = Command::new("moto_server")
            .args(["-H", &store_ip(), "-p", &STORE_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("moto_server (run scripts/setup.sh): {e}"))?;
        let start = Instant::now();
        while tokio::net::TcpStream::connect((store_ip(), STORE_PORT))
            .await
            .is_err()
        {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "moto did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (code, _) = http(&format!("{}:{STORE_PORT}", store_ip()), "PUT", "/suite").await?;
        anyhow::ensure!(code == 200, "bucket creation answered {code}");
        Ok(Store { child })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http(addr: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut resp)).await??;
    let code = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// One host's manager (and, as its child, etcd), in the host's namespace.
struct Host {
    h: usize,
    data: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    bin: PathBuf,
    child: Option<std::process::Child>,
}

impl Host {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns(self.h)])
            .arg(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("AWS_ACCESS_KEY_ID", "suite")
            .env("AWS_SECRET_ACCESS_KEY", "suite")
            .envs(
                std::env::var("ETCD_MANAGER_ETCD_BIN_DIR")
                    .map(|v| ("ETCD_MANAGER_ETCD_BIN_DIR", v)),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn signal_group(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGKILL the manager and everything it started (as systemd would).
    fn kill(&mut self) {
        self.signal_group(nix::sys::signal::Signal::SIGCONT);
        self.signal_group(nix::sys::signal::Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// The pid of this host's etcd.
    fn etcd_pid(&self) -> Option<i32> {
        let pids = ip(&["netns", "pids", &ns(self.h)]).ok()?;
        pids.split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "etcd")
            })
    }

    /// The manager's log without terminal colour codes.
    fn log_text(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // ESC [ ... m
                for d in chars.by_ref() {
                    if d == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fields drop in order: managers first, then the store, then the network.
struct Cluster {
    hosts: Vec<Host>,
    _store: Store,
    net: Net,
    tls: etcd::ClientTls,
    ctl: PathBuf,
    store_url: String,
}

fn metrics_addr(h: usize) -> String {
    format!("{}:9090", ip_of(h))
}

fn client_url(h: usize) -> String {
    format!("https://{}:4001", ip_of(h))
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// What one host's metrics say now.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    leader: bool,
    epoch: u64,
    alive: u64,
}

async fn sample(h: usize) -> Option<Sample> {
    let (code, body) = http(&metrics_addr(h), "GET", "/metrics").await.ok()?;
    (code == 200).then(|| Sample {
        leader: metric(&body, "etcd_manager_is_leader") == Some(1.0),
        epoch: metric(&body, "etcd_manager_lease_epoch").unwrap_or(0.0) as u64,
        alive: metric(&body, "etcd_manager_gossip_members{state=\"alive\"}").unwrap_or(0.0) as u64,
    })
}

impl Cluster {
    async fn start(n: usize, root: &Path, bin_dir: &Path) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(root)?;
        let net = Net::up(n)?;
        // moto listens on the bridge's address, so the bridge comes first.
        let store = Store::start(&root.join("moto.log")).await?;
        let pki = root.join("pki");
        let ctl = bin_dir.join("etcd-manager-ctl");
        sh(Command::new(&ctl)
            .arg(format!("-pki-dir={}", pki.display()))
            .arg("init-pki"))?;
        let certs = root.join("client");
        sh(Command::new(&ctl)
            .arg(format!("-pki-dir={}", pki.display()))
            .arg("issue-client-cert")
            .arg(&certs))?;
        let read = |f: &str| std::fs::read_to_string(certs.join(f));
        let tls = etcd::ClientTls {
            ca_pem: read("ca.crt")?,
            cert_pem: read("client.crt")?,
            key_pem: read("client.key")?,
        };
        let seeds: Vec<String> = (1..=n).map(|h| format!("{}:8000", ip_of(h))).collect();
        let store_url = "s3://suite/cluster/main".to_string();
        let mut hosts = Vec::new();
        for h in 1..=n {
            let ipa = ip_of(h);
            let data = root.join(format!("h{h}"));
            let args = vec![
                format!("--address={ipa}"),
                format!("--etcd-address={ipa}"),
                "--cluster-name=main".into(),
                format!("--backup-store={store_url}"),
                format!("--s3-endpoint=http://{}:{STORE_PORT}", store_ip()),
                "--s3-region=us-east-1".into(),
                format!("--data-dir={}", data.display()),
                format!("--client-urls=https://{ipa}:4001"),
                format!("--quarantine-client-urls=https://{ipa}:8001"),
                format!("--peer-urls=https://{ipa}:2380"),
                format!("--seeds={}", seeds.join(",")),
                format!("--cluster-size-hint={n}"),
                format!("--pki-dir={}", pki.display()),
                format!("--metrics-address={}", metrics_addr(h)),
                "--controller-interval=1s".into(),
                "--backup-interval=10m".into(),
            ];
            let mut host = Host {
                h,
                data,
                log: root.join(format!("manager-{h}.log")),
                args,
                bin: bin_dir.join("etcd-manager"),
                child: None,
            };
            host.spawn()?;
            hosts.push(host);
        }
        let c = Cluster {
            hosts,
            _store: store,
            net,
            tls,
            ctl,
            store_url,
        };
        sh(Command::new(&c.ctl)
            .env("AWS_ACCESS_KEY_ID", "suite")
            .env("AWS_SECRET_ACCESS_KEY", "suite")
            .arg(format!("-backup-store={}", c.store_url))
            .arg(format!("-s3-endpoint=http://{}:{STORE_PORT}", store_ip()))
            .args([
                &format!("-member-count={n}"),
                &format!("-etcd-version={VERSION}"),
                "configure-cluster",
            ]))?;
        c.wait_whole(Duration::from_secs(180)).await?;
        Ok(c)
    }

    fn n(&self) -> usize {
        self.hosts.len()
    }

    async fn client(&self, h: usize, timeout: Duration) -> Option<etcd::EtcdClient> {
        etcd::EtcdClient::connect_with(&[client_url(h)], timeout, Some(&self.tls))
            .await
            .ok()
    }

    /// Every spec member a healthy voter, every endpoint answering, every
    /// manager seeing all managers alive.
    async fn whole(&self) -> bool {
        let n = self.n();
        let mut names = BTreeSet::new();
        for h in 1..=n {
            let Some(c) = self.client(h, Duration::from_secs(2)).await else {
                return false;
            };
            let Ok(st) = c.status().await else {
                return false;
            };
            if st.is_learner || st.leader == 0 {
                return false;
            }
            if h == 1 {
                let Ok(ms) = c.member_list().await else {
                    return false;
                };
                if ms.len() != n || ms.iter().any(|m| m.is_learner || m.name.is_empty()) {
                    return false;
                }
                names = ms.iter().map(|m| m.name.clone()).collect();
            }
        }
        if names.len() != n {
            return false;
        }
        for h in 1..=n {
            match sample(h).await {
                Some(s) if s.alive as usize == n => {}
                _ => return false,
            }
        }
        true
    }

    async fn wait_whole(&self, deadline: Duration) -> anyhow::Result<f64> {
        let start = Instant::now();
        loop {
            if self.whole().await {
                return Ok(start.elapsed().as_secs_f64());
            }
            anyhow::ensure!(
                start.elapsed() < deadline,
                "the cluster was not whole within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The leading host and its epoch, waiting up to a minute for one that is
    /// the only leader and stays so for 2 s (a leadership change still
    /// settling would otherwise be taken for the state before a fault).
    async fn leader(&self) -> Option<(usize, u64)> {
        let start = Instant::now();
        let mut seen: Option<((usize, u64), Instant)> = None;
        while start.elapsed() < Duration::from_secs(60) {
            let mut leaders = vec![];
            for h in 1..=self.n() {
                if let Some(s) = sample(h).await
                    && s.leader
                {
                    leaders.push((h, s.epoch));
                }
            }
            seen = match (leaders.as_slice(), seen) {
                ([one], Some((prev, since))) if *one == prev => {
                    if since.elapsed() >= Duration::from_secs(2) {
                        return Some(prev);
                    }
                    Some((prev, since))
                }
                ([one], _) => Some((*one, Instant::now())),
                _ => None,
            };
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    }

    /// (host, epoch) of every leader action in the managers' logs.
    fn actions_by_epoch(&self) -> BTreeMap<u64, BTreeSet<usize>> {
        let mut out: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
        for host in &self.hosts {
            for line in host.log_text().lines().filter(|l| l.contains("executing")) {
                if let Some(e) = line
                    .split("epoch=")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|d| d.parse().ok())
                {
                    out.entry(e).or_default().insert(host.h);
                }
            }
        }
        out
    }
}

/// Writes sequential keys through the client URLs and records every acknowledged one.
async fn oracle(tls: etcd::ClientTls, n: usize, prefix: String, stop: stop::Stop) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut seq = 0u64;
    let mut h = 1;
    while !stop.is_set() {
        seq += 1;
        let key = format!("{prefix}{seq:08}");
        let mut done = false;
        for _ in 0..n {
            if let Ok(c) =
                etcd::EtcdClient::connect_with(&[client_url(h)], Duration::from_secs(1), Some(&tls))
                    .await
                && c.put(&key, "x").await.is_ok()
            {
                done = true;
                break;
            }
            h = h % n + 1;
        }
        if done {
            acked.push(seq);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

/// A stop flag shared with the oracle.
mod stop {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    #[derive(Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);
    impl Stop {
        pub fn set(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
        pub fn is_set(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    KillLeaderManager,
    KillEtcd,
    StopHost,
    CutMinority,
    CutLeaderWithFollower,
    Bridge,
    Loss,
    StoreDown,
    WipeDisk,
}

const ALL: [Scenario; 9] = [
    Scenario::KillLeaderManager,
    Scenario::KillEtcd,
    Scenario::StopHost,
    Scenario::CutMinority,
    Scenario::CutLeaderWithFollower,
    Scenario::Bridge,
    Scenario::Loss,
    Scenario::StoreDown,
    Scenario::WipeDisk,
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::KillLeaderManager => "kill-leader-manager",
            Scenario::KillEtcd => "kill-etcd",
            Scenario::StopHost => "sigstop-host",
            Scenario::CutMinority => "cut-minority",
            Scenario::CutLeaderWithFollower => "cut-leader-with-follower",
            Scenario::Bridge => "bridge-partition",
            Scenario::Loss => "loss-10pct",
            Scenario::StoreDown => "store-unreachable",
            Scenario::WipeDisk => "wipe-disk",
        }
    }
}

/// What the managers' metrics showed during a scenario.
struct Watch {
    start: Instant,
    old_epoch: u64,
    /// Hosts the fault is on (not asked while it lasts).
    affected: Vec<usize>,
    /// Every other manager stopped counting an affected host alive.
    detect: Option<f64>,
    /// A manager leads with an epoch above the one before the fault.
    new_leader: Option<f64>,
    /// Who reported leading, by epoch.
    leading: BTreeMap<u64, BTreeSet<usize>>,
}

impl Watch {
    async fn observe(&mut self, n: usize) {
        let now = self.start.elapsed().as_secs_f64();
        let mut all_down = !self.affected.is_empty();
        for h in (1..=n).filter(|h| !self.affected.contains(h)) {
            match sample(h).await {
                Some(sm) => {
                    if sm.leader {
                        self.leading.entry(sm.epoch).or_default().insert(h);
                        if sm.epoch > self.old_epoch && self.new_leader.is_none() {
                            self.new_leader = Some(now);
                        }
                    }
                    if (sm.alive as usize) >= n {
                        all_down = false;
                    }
                }
                None => all_down = false,
            }
        }
        if all_down && self.detect.is_none() {
            self.detect = Some(now);
        }
    }
}

/// Run one scenario on a whole cluster; returns its summary row.
async fn run_scenario(c: &mut Cluster, s: Scenario, quick: bool) -> anyhow::Result<Value> {
    let n = c.n();
    let long = if quick {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(120)
    };
    let mid = if quick {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(30)
    };
    if s == Scenario::CutLeaderWithFollower && n < 5 {
        return Ok(
            json!({"scenario": s.name(), "hosts": n, "result": "n/a: needs 5 hosts (with 3, leader and follower are the majority)"}),
        );
    }
    let (before, old_epoch) = c
        .leader()
        .await
        .ok_or_else(|| anyhow::anyhow!("no leader within 60 s before the fault"))?;
    let other = before % n + 1;
    let third = other % n + 1;
    let epochs_before = c.actions_by_epoch();
    let stop = stop::Stop::default();
    let prefix = format!("/oracle/{}/", s.name());
    let writer = tokio::spawn(oracle(c.tls.clone(), n, prefix.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let start = Instant::now();
    let mut affected: Vec<usize> = vec![];
    match s {
        Scenario::KillLeaderManager => {
            affected.push(before);
            c.hosts[before - 1].kill();
        }
        Scenario::KillEtcd => {
            let pid = c.hosts[before - 1]
                .etcd_pid()
                .ok_or_else(|| anyhow::anyhow!("no etcd on host {before}"))?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )?;
        }
        Scenario::StopHost => {
            affected.push(before);
            c.hosts[before - 1].signal_group(nix::sys::signal::Signal::SIGSTOP);
        }
        Scenario::CutMinority => {
            affected.push(before);
            c.net.isolate(before)?;
        }
        Scenario::CutLeaderWithFollower => {
            affected.extend([before, other]);
            for h in 1..=n {
                if h != before && h != other {
                    c.net.cut(before, h)?;
                    c.net.cut(other, h)?;
                }
            }
        }
        Scenario::Bridge => c.net.cut(before, third)?,
        Scenario::Loss => c.net.loss(10)?,
        Scenario::StoreDown => c.net.store_down()?,
        Scenario::WipeDisk => {
            affected.push(other);
            c.hosts[other - 1].kill();
            std::fs::remove_dir_all(&c.hosts[other - 1].data)?;
        }
    }
    // Watch while the fault lasts.
    let hold = match s {
        Scenario::KillLeaderManager | Scenario::WipeDisk => Duration::from_secs(10),
        Scenario::KillEtcd => Duration::from_secs(2),
        Scenario::StopHost
        | Scenario::CutMinority
        | Scenario::CutLeaderWithFollower
        | Scenario::Bridge => mid,
        Scenario::Loss | Scenario::StoreDown => long,
    };
    let mut w = Watch {
        start,
        old_epoch,
        affected: affected.clone(),
        detect: None,
        new_leader: None,
        leading: BTreeMap::new(),
    };
    while start.elapsed() < hold {
        w.observe(n).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Heal, and keep watching until the cluster is whole again.
    match s {
        Scenario::KillLeaderManager | Scenario::WipeDisk => c.hosts[affected[0] - 1].spawn()?,
        Scenario::StopHost => c.hosts[before - 1].signal_group(nix::sys::signal::Signal::SIGCONT),
        _ => c.net.heal()?,
    }
    // The restarted or resumed host is watched too from now on.
    w.affected.clear();
    let healed = Instant::now();
    let deadline = Duration::from_secs(if quick { 180 } else { 300 });
    let full = loop {
        w.observe(n).await;
        if c.whole().await {
            break Ok(());
        }
        if healed.elapsed() > deadline {
            break Err(anyhow::anyhow!(
                "the cluster was not whole within {deadline:?} of healing"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let back = healed.elapsed().as_secs_f64();
    // A leader change may show only once the cluster is whole.
    if w.new_leader.is_none() {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) && w.new_leader.is_none() {
            w.observe(n).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let Watch {
        detect,
        new_leader,
        leading,
        ..
    } = w;
    stop.set();
    let acked = writer.await?;
    // Every acknowledged write is there.
    let mut present = BTreeSet::new();
    for h in 1..=n {
        if let Some(cl) = c.client(h, Duration::from_secs(5)).await
            && let Ok(keys) = cl.keys_with_prefix(&prefix).await
        {
            present = keys
                .iter()
                .filter_map(|k| k.strip_prefix(&prefix)?.parse::<u64>().ok())
                .collect();
            break;
        }
    }
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|s| !present.contains(s))
        .collect();
    // At most one node acting per epoch (new epochs only).
    let mut dual: BTreeSet<u64> = c
        .actions_by_epoch()
        .into_iter()
        .filter(|(e, hs)| hs.len() > 1 && epochs_before.get(e).is_none_or(|b| b.len() <= 1))
        .map(|(e, _)| e)
        .collect();
    dual.extend(
        leading
            .iter()
            .filter(|(_, hs)| hs.len() > 1)
            .map(|(e, _)| *e),
    );
    let ok = full.is_ok() && lost.is_empty() && dual.is_empty();
    Ok(json!({
        "scenario": s.name(), "hosts": n, "result": if ok { "pass" } else { "FAIL" },
        "acked_writes": acked.len(), "lost_writes": lost.len(), "lost_sample": lost.iter().take(5).collect::<Vec<_>>(),
        "dual_leader_epochs": dual,
        "time_to_detect_s": detect, "time_to_new_leader_s": new_leader,
        "time_back_to_full_membership_s": full.as_ref().ok().map(|_| back),
        "fault_held_s": hold.as_secs_f64(),
        "error": full.err().map(|e| e.to_string()),
    }))
}

fn table(rows: &[Value]) -> String {
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    let mut s = String::from(
        "| scenario | hosts | result | acked writes | lost | dual-leader epochs | detect s | new leader s | back to full s |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["scenario"].as_str().unwrap_or(""),
            r["hosts"],
            r["result"].as_str().unwrap_or(""),
            r["acked_writes"]
                .as_u64()
                .map_or("-".into(), |v| v.to_string()),
            r["lost_writes"]
                .as_u64()
                .map_or("-".into(), |v| v.to_string()),
            r["dual_leader_epochs"]
                .as_array()
                .map_or("-".into(), |v| v.len().to_string()),
            f(&r["time_to_detect_s"]),
            f(&r["time_to_new_leader_s"]),
            f(&r["time_back_to_full_membership_s"]),
        );
    }
    s
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--cleanup") {
        // Every slot no running suite holds.
        for k in 0..SLOTS {
            if let Some(_held) = tests::lease::try_lease(LEASE_KIND, k) {
                cleanup_slot(k);
            }
        }
        return Ok(());
    }
    let mut hosts = 3usize;
    let mut quick = false;
    let mut out = PathBuf::from("target/partition-suite");
    let mut chosen: Vec<Scenario> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hosts" => {
                hosts = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|h| *h == 3 || *h == 5)
                    .ok_or_else(|| anyhow::anyhow!("--hosts takes 3 or 5"))?
            }
            "--quick" => quick = true,
            "--out" => {
                out = PathBuf::from(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--out takes a folder"))?,
                )
            }
            name => chosen.push(ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown scenario {name}; one of: {}",
                    ALL.map(Scenario::name).join(", ")
                )
            })?),
        }
    }
    if chosen.is_empty() {
        chosen = ALL.to_vec();
    }
    let bin_dir = std::env::var("SUITE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/debug"));
    std::fs::create_dir_all(&out)?;
    let work = tempfile::Builder::new()
        .prefix("etcd-manager-partition")
        .tempdir()?;
    let root = work.path().to_path_buf();

    // Cleanup also on Ctrl-C / SIGTERM.
    tokio::spawn(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
        cleanup();
        std::process::exit(130);
    });

    let begun = Instant::now();
    let mut rows = Vec::new();
    let mut c = Cluster::start(hosts, &root.join("run-0"), &bin_dir).await?;
    for s in chosen {
        eprintln!("== {} on {hosts} hosts", s.name());
        let row = match run_scenario(&mut c, s, quick).await {
            Ok(r) => r,
            Err(e) => {
                json!({"scenario": s.name(), "hosts": hosts, "result": "FAIL", "error": format!("{e:#}")})
            }
        };
        eprintln!("{row}");
        let failed = row["result"] == "FAIL";
        rows.push(row);
        if failed {
            for h in &c.hosts {
                let _ = std::fs::copy(
                    &h.log,
                    out.join(format!("{}-manager-{}.log", s.name(), h.h)),
                );
            }
            // Start again from a clean cluster for the next scenario.
            drop(c);
            c = Cluster::start(hosts, &root.join(format!("run-{}", rows.len())), &bin_dir).await?;
        }
    }
    drop(c);
    let summary = json!({"hosts": hosts, "quick": quick, "seconds": begun.elapsed().as_secs_f64(), "scenarios": rows});
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let t = table(summary["scenarios"].as_array().unwrap());
    std::fs::write(out.join("summary.md"), &t)?;
    println!("{t}");
    let failed = rows.iter().filter(|r| r["result"] == "FAIL").count();
    anyhow::ensure!(
        failed == 0,
        "{failed} scenario(s) failed; logs in {}",
        out.display()
    );
    Ok(())
}
