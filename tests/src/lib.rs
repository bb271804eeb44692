//! End-to-end harness: real `etcd-manager` processes and real etcd in temp
//! dirs on 127.0.x.y, with waits on conditions and deadlines (never bare
//! sleeps), and cleanup that kills whole process groups even when a test fails.

pub mod azurite;
pub mod ec2;
pub mod imds;
pub mod lease;
pub mod moto;
pub mod netns;
pub mod tools;

pub use moto::Moto;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
pub use tools::{previous_release, tool_missing, which};

/// Folders with etcd binaries besides /opt (from ETCD_MANAGER_ETCD_BIN_DIR).
pub fn etcd_bin_dirs() -> Vec<PathBuf> {
    std::env::var("ETCD_MANAGER_ETCD_BIN_DIR")
        .ok()
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The etcd binaries of `version`, or a panic that says how to install them.
pub fn etcd_binaries(version: &str) -> etcd::EtcdBinaries {
    let v: etcd::EtcdVersion = version.parse().expect("version");
    etcd::find_binaries(&v, &etcd_bin_dirs()).unwrap_or_else(|e| {
        panic!("{e}\n(run scripts/test.sh, which installs every version the tests need)")
    })
}

/// Poll `check` until it returns Some or the deadline passes; the panic names `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A range of loopback addresses of its own for one test, `127.<n>.*.*`,
/// held machine-wide while the lease lives (see [`lease`]): tests side by
/// side, and two runs on one machine, never share one. 127.0.x.x stays free
/// for the demo; 127.1-19 for anything else.
pub fn fresh_net() -> (u8, std::sync::Arc<lease::Lease>) {
    let l = lease::lease("loopback-net", 230);
    ((20 + l.index) as u8, std::sync::Arc::new(l))
}

/// One host's addresses: 127.<net>.<host>.1.
pub fn host_ip(net: u8, host: u8) -> String {
    format!("127.{net}.{host}.1")
}

/// A running `etcd-manager` in its own process group (so etcd dies with it).
pub struct Manager {
    pub name: String,
    pub ip: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<std::process::Child>,
    args: Vec<String>,
    /// The manager's environment (a [`Manager::restart`] takes a change).
    pub env: Vec<(String, String)>,
    binary: PathBuf,
}

/// Settings shared by all managers of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterEnv {
    pub root: PathBuf,
    pub net: u8,
    pub store_url: String,
    pub discovery_dir: PathBuf,
    pub manager_bin: PathBuf,
    pub ctl_bin: PathBuf,
    pub backup_interval: &'static str,
    /// Store flags for managers and etcd-manager-ctl (an S3 endpoint).
    pub store_args: Vec<String>,
    /// Environment for managers and etcd-manager-ctl (kops' S3_* variables).
    pub store_env: Vec<(String, String)>,
    /// Holds `net` for this test alone while any copy of the env lives.
    _net_lease: std::sync::Arc<lease::Lease>,
}

impl ClusterEnv {
    pub fn new(root: &Path, manager_bin: &str, ctl_bin: &str) -> ClusterEnv {
        let store = root.join("store");
        std::fs::create_dir_all(&store).expect("store dir");
        let (net, net_lease) = fresh_net();
        ClusterEnv {
            root: root.to_path_buf(),
            net,
            _net_lease: net_lease,
            store_url: format!("file://{}", store.display()),
            discovery_dir: root.join("discovery"),
            manager_bin: PathBuf::from(manager_bin),
            ctl_bin: PathBuf::from(ctl_bin),
            backup_interval: "15m",
            store_args: vec![],
            store_env: vec![],
        }
    }

    /// Use bucket `bucket` of a [`Moto`] store instead of the local folder.
    pub fn use_s3(&mut self, moto: &Moto, bucket: &str) {
        self.store_url = format!("s3://{bucket}/cluster/main");
        self.store_args = vec![format!("--s3-endpoint={}", moto.endpoint())];
    }

    /// Use container `container` of an [`azurite::Azurite`] store, through
    /// the variables a user sets (account, key, endpoint).
    pub fn use_azure(&mut self, az: &azurite::Azurite, container: &str) {
        self.store_url = format!("azureblob://{container}/cluster/main");
        self.store_args = vec![];
        self.store_env = az.env();
    }

    pub fn store_path(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn client_url(&self, host: u8) -> String {
        format!("http://{}:4001", host_ip(self.net, host))
    }

    /// The flags of upstream's walkthrough, for host `host` (1-based).
    pub fn manager_args(&self, host: u8) -> Vec<String> {
        let ip = host_ip(self.net, host);
        vec![
            "--insecure".into(),
            "--etcd-insecure".into(),
            format!("--address={ip}"),
            format!("--etcd-address={ip}"),
            "--cluster-name=test".into(),
            format!("--backup-store={}", self.store_url),
            format!(
                "--data-dir={}",
                self.root.join(format!("data/{host}")).display()
            ),
            format!("--client-urls=http://{ip}:4001"),
            format!("--quarantine-client-urls=http://{ip}:8001"),
            format!("--peer-urls=http://{ip}:2380"),
            format!("--discovery-dir={}", self.discovery_dir.display()),
            format!("--backup-interval={}", self.backup_interval),
            "--controller-interval=1s".into(),
        ]
        .into_iter()
        .chain(self.store_args.iter().cloned())
        .collect()
    }

    pub fn start(&self, host: u8) -> Manager {
        self.start_with(host, &[])
    }

    pub fn start_with(&self, host: u8, extra: &[&str]) -> Manager {
        let mut args = self.manager_args(host);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.start_raw(host, args)
    }

    /// Start a manager with exactly these arguments (logs and data dir as for `host`).
    pub fn start_raw(&self, host: u8, args: Vec<String>) -> Manager {
        self.start_program(host, "manager", &self.manager_bin, args)
    }

    /// Start `program` with `args` as host `host`'s manager (its data dir),
    /// logging to `<root>/<label>-<host>.log`: another build of a manager,
    /// or a wrapper that starts one.
    pub fn start_program(
        &self,
        host: u8,
        label: &str,
        program: &Path,
        args: Vec<String>,
    ) -> Manager {
        let mut m = Manager {
            name: format!("m{host}"),
            ip: host_ip(self.net, host),
            data_dir: self.root.join(format!("data/{host}")),
            log: self.root.join(format!("{label}-{host}.log")),
            child: None,
            args,
            env: self.store_env.clone(),
            binary: program.to_path_buf(),
        };
        m.spawn();
        m
    }

    /// `etcd-manager-ctl configure-cluster`: the spec the managers work towards.
    pub fn configure(&self, members: u32, version: &str) {
        let out = self.ctl(&[
            &format!("-member-count={members}"),
            &format!("-etcd-version={version}"),
            "configure-cluster",
        ]);
        assert!(out.success, "configure-cluster failed: {out:?}");
    }

    /// Run etcd-manager-ctl against this cluster's store.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let mut full = vec![format!("-backup-store={}", self.store_url)];
        full.extend(self.store_args.iter().cloned());
        full.extend(args.iter().map(|s| s.to_string()));
        run_ctl_env(&self.ctl_bin, &full, &self.store_env)
    }
}

#[derive(Debug)]
pub struct CtlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn run_ctl(bin: &Path, args: &[String]) -> CtlOutput {
    run_ctl_env(bin, args, &[])
}

/// [`run_ctl`] with extra environment variables.
pub fn run_ctl_env(bin: &Path, args: &[String], env: &[(String, String)]) -> CtlOutput {
    let out = std::process::Command::new(bin)
        .args(args)
        .env_remove("ETCD_MANAGER_BACKUP_STORE")
        .envs(etcd_bin_env())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run etcd-manager-ctl");
    CtlOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn etcd_bin_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::var("ETCD_MANAGER_ETCD_BIN_DIR")
        .map(|v| vec![("ETCD_MANAGER_ETCD_BIN_DIR".to_string(), v)])
        .unwrap_or_default();
    // Credentials for a local moto store ([`Moto`]); unused by other stores.
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        if std::env::var_os(k).is_none() {
            env.push((k.to_string(), "harness".to_string()));
        }
    }
    env
}

impl Manager {
    fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = std::process::Command::new(&self.binary)
            .args(&self.args)
            .envs(etcd_bin_env())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("HARNESS_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start etcd-manager");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL the manager and everything it started (etcd included).
    pub fn kill_all(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGKILL the manager alone, as the OOM killer does: what it started
    /// (its etcd) runs on, orphaned. Returns its pid (its process group's id).
    pub fn kill_alone(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = c.id() as i32;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = c.wait();
        Some(pid)
    }

    /// Start the manager again after [`Manager::kill_alone`] (nothing else is killed).
    pub fn spawn_again(&mut self) {
        self.spawn();
    }

    /// SIGTERM and wait for a clean exit (etcd stopped by the manager); returns the exit status success.
    pub fn terminate(&mut self, deadline: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if start.elapsed() > deadline {
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running (it may have exited on bad input).
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn restart(&mut self) {
        self.kill_all();
        self.spawn();
    }
}

/// Lines of a manager's log shown when its test fails.
const LOG_TAIL_LINES: usize = 150;

impl Drop for Manager {
    fn drop(&mut self) {
        self.kill_all();
        // A failing test shows what each manager did last (the logs live in a
        // temp dir that goes with the test).
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "===== last {} lines of {} =====\n{}",
                tail.len(),
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// Put a key through one client URL.
pub async fn put(endpoint: &str, key: &str, value: &str) -> Result<(), String> {
    let c = etcd::EtcdClient::connect(&[endpoint.to_string()], Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())?;
    c.put(key, value).await.map_err(|e| e.to_string())
}

/// Get a key through one client URL.
pub async fn get(endpoint: &str, key: &str) -> Result<Option<String>, String> {
    let c = etcd::EtcdClient::connect(&[endpoint.to_string()], Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())?;
    c.get(key).await.map_err(|e| e.to_string())
}

/// The members as one endpoint reports them.
pub async fn members(endpoint: &str) -> Result<Vec<etcd::Member>, String> {
    let c = etcd::EtcdClient::connect(&[endpoint.to_string()], Duration::from_secs(3))
        .await
        .map_err(|e| e.to_string())?;
    c.member_list().await.map_err(|e| e.to_string())
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let (code, resp) = moto::request(addr, "GET", path, "", "").await?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp.as_str(), ""));
    // Go's servers (Prometheus) send larger answers chunked.
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// The body of a `Transfer-Encoding: chunked` answer.
fn dechunk(mut rest: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or("a chunk without its size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("a bad chunk size {size:?}: {e}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).ok_or("a chunk shorter than its size")?;
        out.push_str(chunk);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .ok_or("a chunk without its end")?;
    }
}

/// The value of an unlabelled metric in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Wait until a write through `endpoint` succeeds (the cluster serves).
pub async fn wait_put(what: &str, endpoint: &str, key: &str, value: &str, deadline: Duration) {
    wait_for(what, deadline, || async move {
        put(endpoint, key, value).await.ok()
    })
    .await;
}

impl ClusterEnv {
    /// The metrics address of host `host`.
    pub fn metrics_addr(&self, host: u8) -> String {
        format!("{}:9090", host_ip(self.net, host))
    }

    /// Start host `host` with metrics on [`ClusterEnv::metrics_addr`].
    pub fn start_with_metrics(&self, host: u8) -> Manager {
        self.start_with(
            host,
            &[&format!("--metrics-address={}", self.metrics_addr(host))],
        )
    }
}

/// The members, through the first of `endpoints` that takes a write.
pub async fn healthy_members(endpoints: &[String]) -> Option<Vec<etcd::Member>> {
    for ep in endpoints {
        if put(ep, "/probe", "x").await.is_ok()
            && let Ok(ms) = members(ep).await
        {
            return Some(ms);
        }
    }
    None
}

/// Wait for `n` started voters (no learners), none named `not_named`, seen
/// through any of `endpoints` that takes writes.
pub async fn wait_voters(
    what: &str,
    endpoints: &[String],
    n: usize,
    not_named: Option<&str>,
) -> Vec<etcd::Member> {
    wait_for(what, Duration::from_secs(90), || async move {
        let ms = healthy_members(endpoints).await?;
        let ok = ms.len() == n
            && ms.iter().all(|m| !m.is_learner && !m.name.is_empty())
            && not_named.is_none_or(|x| ms.iter().all(|m| m.name != x));
        ok.then_some(ms)
    })
    .await
}

/// A one-member etcd of its own (not managed by etcd-manager): peer port 2380
/// and the given client port on `ip`.
pub fn single_member_spec(
    name: &str,
    version: &str,
    data_dir: PathBuf,
    ip: &str,
    client_port: u16,
) -> etcd::EtcdNodeSpec {
    etcd::EtcdNodeSpec {
        name: name.into(),
        version: version.into(),
        data_dir,
        cluster_token: name.into(),
        initial_cluster: vec![(name.into(), vec![format!("http://{ip}:2380")])],
        initial_cluster_state_new: true,
        peer_urls: vec![format!("http://{ip}:2380")],
        client_urls: vec![format!("http://{ip}:{client_port}")],
        quarantined_client_urls: vec![format!("http://{ip}:8001")],
        quarantined: false,
        listen_address: None,
        tls: None,
        listen_metrics_urls: vec![],
    }
}

/// A TCP forwarder in front of a server that a test can close and open:
/// closed, it accepts and drops every connection at once (a store that is
/// down); open, it forwards to `target`. Lives as long as its runtime.
pub struct TcpGate {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bytes per second from the target to the client, over all
    /// connections (0: as fast as it goes).
    rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl TcpGate {
    /// Listen on `ip` (a free port), forwarding to `target` while open.
    pub async fn start(ip: &str, target: &str) -> Result<TcpGate, String> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .map_err(|e| format!("gate on {ip}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let rate = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (flag, count, limit) = (open.clone(), connections.clone(), rate.clone());
        // One budget for all connections: the next instant a byte may go.
        let next_send = std::sync::Arc::new(tokio::sync::Mutex::new(tokio::time::Instant::now()));
        let target = target.to_string();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let flag = flag.clone();
                let (limit, next_send) = (limit.clone(), next_send.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    // Cut established connections too once the gate closes.
                    let copy = throttled_copy(&mut inbound, outbound, &limit, &next_send);
                    let closed = async {
                        while flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = closed => {}
                    }
                });
            }
        });
        Ok(TcpGate {
            addr,
            open,
            connections,
            rate,
        })
    }

    /// A gate on loopback in front of `moto`'s S3 (give
    /// [`TcpGate::endpoint`] as the store's endpoint).
    pub async fn in_front_of(moto: &moto::Moto) -> TcpGate {
        TcpGate::start("127.0.0.1", moto.endpoint().trim_start_matches("http://"))
            .await
            .expect("a gate in front of moto")
    }

    /// Connections accepted so far, open or closed (each refused store
    /// call's attempt is one).
    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `http://<addr>`, to give as an S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_open(&self, open: bool) {
        self.open.store(open, std::sync::atomic::Ordering::SeqCst);
    }

    /// Limit what flows from the target to the clients, all connections
    /// together, to `bytes_per_second` (0: no limit).
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate
            .store(bytes_per_second, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copy both ways between `inbound` and `outbound`; the target's answers
/// are paced by `rate` (bytes per second, shared through `next_send`).
async fn throttled_copy(
    inbound: &mut tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    rate: &std::sync::atomic::AtomicU64,
    next_send: &tokio::sync::Mutex<tokio::time::Instant>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut in_read, mut in_write) = inbound.split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
        let _ = out_write.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match out_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let r = rate.load(std::sync::atomic::Ordering::SeqCst);
            if r > 0 {
                let at = {
                    let mut next = next_send.lock().await;
                    let now = tokio::time::Instant::now();
                    let at = (*next).max(now);
                    *next = at + Duration::from_secs_f64(n as f64 / r as f64);
                    at
                };
                tokio::time::sleep_until(at).await;
            }
            if in_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            super::dechunk("4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").as_deref(),
            Ok("Wikipedia")
        );
        assert!(super::dechunk("zz\r\nab\r\n").is_err());
        assert!(super::dechunk("9\r\nshort\r\n").is_err());
    }
}
