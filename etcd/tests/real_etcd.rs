//! The etcd crate against real etcd binaries from /opt/etcd-v<version>/.
//!
//! Every test uses its own temp dir and its own ports (asked from the kernel), so the
//! tests run in parallel.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd::{
    Error, EtcdBinaries, EtcdClient, EtcdNodeSpec, EtcdProcess, EtcdVersion, etcd_env,
    find_binaries, find_binaries_in, restore_snapshot,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const INSTALLED: [&str; 4] = ["3.3.25", "3.4.23", "3.5.16", "3.5.30"];
const TIMEOUT: Duration = Duration::from_secs(3);

fn version(v: &str) -> EtcdVersion {
    v.parse().unwrap()
}

fn binaries(v: &str) -> EtcdBinaries {
    find_binaries(&version(v), &[])
        .expect("etcd binaries installed under /opt (deploy/install-etcd.sh)")
}

/// A port nobody listens on right now, on `ip`.
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One member's urls and spec.
struct Node {
    spec: EtcdNodeSpec,
    log: PathBuf,
}

impl Node {
    fn new(name: &str, ver: &str, ip: &str, root: &Path, token: &str) -> Node {
        let peer = format!("http://{ip}:{}", free_port(ip));
        let client = format!("http://{ip}:{}", free_port(ip));
        let quarantine = format!("http://{ip}:{}", free_port(ip));
        let spec = EtcdNodeSpec {
            name: name.to_string(),
            version: ver.to_string(),
            data_dir: root.join(name).join("data").join(token),
            cluster_token: token.to_string(),
            initial_cluster: vec![(name.to_string(), vec![peer.clone()])],
            initial_cluster_state_new: true,
            peer_urls: vec![peer],
            client_urls: vec![client],
            quarantined_client_urls: vec![quarantine],
            quarantined: false,
            listen_address: None,
            tls: None,
            listen_metrics_urls: vec![],
        };
        Node {
            spec,
            log: root.join(format!("{name}.log")),
        }
    }

    fn start(&self) -> EtcdProcess {
        let bins = binaries(&self.spec.version);
        EtcdProcess::start(bins, self.spec.clone(), vec![], Some(self.log.clone())).unwrap()
    }

    async fn client(&self) -> EtcdClient {
        EtcdClient::connect(&self.spec.client_urls, TIMEOUT)
            .await
            .unwrap()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Polls `cond` every 100 ms until it holds; panics after `limit` naming `what`.
async fn wait_for(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_healthy(node: &Node, limit: Duration) {
    let client = node.client().await;
    let deadline = Instant::now() + limit;
    while !client.healthy().await {
        assert!(
            Instant::now() < deadline,
            "{} not healthy after {limit:?}; log:\n{}",
            node.spec.name,
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The process exists and is not a zombie.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                != Some('Z')
        }
        Err(_) => false,
    }
}

/// The ETCD_* variables a running process was started with.
fn etcd_vars_of(pid: u32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut vars: Vec<(String, String)> = raw
        .split(|b| *b == 0)
        .filter_map(|kv| {
            std::str::from_utf8(kv)
                .ok()?
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .filter(|(k, _)| k.starts_with("ETCD_"))
        .collect();
    vars.sort();
    vars
}

/// A stand-in for etcd: a shell script (for supervisor behaviour etcd cannot be made to show).
fn fake_binaries(dir: &Path, script: &str) -> EtcdBinaries {
    let path = dir.join("fake-etcd");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    EtcdBinaries {
        version: version("3.5.30"),
        etcd: path,
        etcdctl: None,
        etcdutl: None,
    }
}

// ---------------------------------------------------------------- binaries

#[test]
fn find_binaries_finds_every_installed_version() {
    for v in INSTALLED {
        let b = binaries(v);
        assert_eq!(b.version, version(v));
        assert_eq!(b.etcd, PathBuf::from(format!("/opt/etcd-v{v}/etcd")));
        assert!(b.etcdctl.is_some(), "{v}: etcdctl");
        assert_eq!(
            b.etcdutl.is_some(),
            version(v).has_etcdutl(),
            "{v}: etcdutl"
        );
    }
}

#[test]
fn missing_version_lists_searched_dirs() {
    let extra = PathBuf::from("/nonexistent/bin");
    let e = find_binaries(&version("9.9.9"), std::slice::from_ref(&extra)).unwrap_err();
    let Error::BinaryNotFound {
        version: v,
        searched,
    } = &e
    else {
        panic!("unexpected {e:?}")
    };
    assert_eq!(v, "9.9.9");
    let expect: Vec<PathBuf> = [
        "/nonexistent/bin",
        "/nonexistent/bin/etcd-v9.9.9",
        "/opt/etcd-v9.9.9",
        "/opt/etcd-v9.9.9/usr/local/bin",
        "/opt/etcd-v9.9.9/usr/bin",
        "/opt/etcd-v9.9.9-linux-amd64",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(searched, &expect);
    let msg = e.to_string();
    assert!(
        msg.contains("/opt/etcd-v9.9.9/usr/bin") && msg.contains("deploy/install-etcd.sh 9.9.9"),
        "{msg}"
    );
}

#[test]
fn versionless_bin_dir_is_checked_with_etcd_version() {
    let dir = tempfile::tempdir().unwrap();
    symlink("/opt/etcd-v3.4.23/etcd", dir.path().join("etcd")).unwrap();
    symlink("/opt/etcd-v3.4.23/etcdctl", dir.path().join("etcdctl")).unwrap();
    let extra = vec![dir.path().to_path_buf()];
    // The version it holds: taken from the folder.
    let b = find_binaries(&version("3.4.23"), &extra).unwrap();
    assert_eq!(b.etcd, dir.path().join("etcd"));
    assert_eq!(b.etcdctl, Some(dir.path().join("etcdctl")));
    assert_eq!(b.etcdutl, None);
    // Another version: `etcd --version` says 3.4.23, so the folder is skipped.
    let b = find_binaries(&version("3.5.30"), &extra).unwrap();
    assert_eq!(b.etcd, PathBuf::from("/opt/etcd-v3.5.30/etcd"));
}

#[test]
fn versioned_dirs_are_trusted_by_name_in_search_order() {
    let opt = tempfile::tempdir().unwrap();
    let extra = tempfile::tempdir().unwrap();
    let fake = |dir: &Path| {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("etcd");
        // Not a real etcd: a versioned folder is trusted without running it.
        std::fs::write(&p, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let v = version("3.5.30");
    fake(&opt.path().join("etcd-v3.5.30-linux-amd64"));
    let found = find_binaries_in(&v, &[], opt.path()).unwrap();
    assert_eq!(found.etcd, opt.path().join("etcd-v3.5.30-linux-amd64/etcd"));
    fake(&opt.path().join("etcd-v3.5.30/usr/bin"));
    let found = find_binaries_in(&v, &[], opt.path()).unwrap();
    assert_eq!(found.etcd, opt.path().join("etcd-v3.5.30/usr/bin/etcd"));
    fake(&extra.path().join("etcd-v3.5.30"));
    let found = find_binaries_in(&v, &[extra.path().to_path_buf()], opt.path()).unwrap();
    assert_eq!(found.etcd, extra.path().join("etcd-v3.5.30/etcd"));
    // A non-executable file does not count.
    let other = version("3.4.23");
    let d = opt.path().join("etcd-v3.4.23");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("etcd"), "").unwrap();
    assert!(matches!(
        find_binaries_in(&other, &[], opt.path()),
        Err(Error::BinaryNotFound { .. })
    ));
}

// ---------------------------------------------------------------- env

fn env_spec() -> EtcdNodeSpec {
    EtcdNodeSpec {
        name: "node-a".into(),
        version: "3.5.30".into(),
        data_dir: PathBuf::from("/var/etcd/data/tok"),
        cluster_token: "tok".into(),
        initial_cluster: vec![
            ("node-a".into(), vec!["http://10.0.0.1:2380".into()]),
            (
                "node-b".into(),
                vec![
                    "http://10.0.0.2:2380".into(),
                    "http://b.example:2380".into(),
                ],
            ),
        ],
        initial_cluster_state_new: true,
        peer_urls: vec!["http://10.0.0.1:2380".into()],
        client_urls: vec!["http://10.0.0.1:4001".into()],
        quarantined_client_urls: vec!["http://10.0.0.1:8001".into()],
        quarantined: false,
        listen_address: None,
        tls: None,
        listen_metrics_urls: vec![],
    }
}

fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Every version of each minor the flag tables know, as installed here.
const TABLED: [&str; 6] = ["3.3.25", "3.4.23", "3.5.30", "3.5.35", "3.6.16", "3.7.3"];

#[test]
fn every_variable_we_set_is_understood_by_its_version() {
    for ver in TABLED {
        let mut spec = env_spec();
        spec.version = ver.into();
        spec.listen_metrics_urls = vec!["http://10.0.0.1:8081".into()];
        spec.tls = Some(etcd::MemberTlsFiles {
            peer_ca: "/p/ca.crt".into(),
            peer_cert: "/p/me.crt".into(),
            peer_key: "/p/me.key".into(),
            client_ca: "/c/ca.crt".into(),
            server_cert: "/c/server.crt".into(),
            server_key: "/c/server.key".into(),
        });
        let env = etcd_env(&spec, &[]);
        assert!(
            etcd::not_understood(&env, version(ver)).is_empty(),
            "{ver}: {:?}",
            etcd::not_understood(&env, version(ver))
        );
    }
}

/// The flag tables hold every flag each installed binary's `--help` lists.
#[test]
fn flag_tables_cover_every_flag_the_binaries_list() {
    for ver in TABLED {
        let help = std::process::Command::new(&binaries(ver).etcd)
            .arg("--help")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&help.stdout),
            String::from_utf8_lossy(&help.stderr)
        );
        let mut flags: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == '=' || c == '\'' || c == ',')
            .filter_map(|w| w.strip_prefix("--"))
            .map(|f| f.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
            .filter(|f| f.len() > 1 && *f != "help")
            .collect();
        flags.sort();
        flags.dedup();
        assert!(flags.len() > 60, "{ver}: only {flags:?} in --help");
        for f in flags {
            let key = format!("ETCD_{}", f.to_ascii_uppercase().replace('-', "_"));
            assert_eq!(
                etcd::understands(version(ver), &key),
                Some(true),
                "{ver} lists --{f}"
            );
        }
    }
}

#[test]
fn etcd_env_sets_every_variable_sorted() {
    let env = etcd_env(&env_spec(), &[]);
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    let expect = [
        ("ETCD_ADVERTISE_CLIENT_URLS", "http://10.0.0.1:4001"),
        ("ETCD_DATA_DIR", "/var/etcd/data/tok"),
        // As upstream sets it on 3.5 only.
        ("ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", "true"),
        (
            "ETCD_INITIAL_CLUSTER",
            "node-a=http://10.0.0.1:2380,node-b=http://10.0.0.2:2380,node-b=http://b.example:2380",
        ),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://10.0.0.1:2380"),
        ("ETCD_INITIAL_CLUSTER_STATE", "new"),
        ("ETCD_INITIAL_CLUSTER_TOKEN", "tok"),
        ("ETCD_LISTEN_CLIENT_URLS", "http://10.0.0.1:4001"),
        ("ETCD_LISTEN_PEER_URLS", "http://10.0.0.1:2380"),
        ("ETCD_NAME", "node-a"),
        ("ETCD_STRICT_RECONFIG_CHECK", "true"),
    ];
    let mut expect: Vec<(String, String)> = expect
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    expect.sort();
    assert_eq!(env, expect);
    // Per version, as upstream: no v2 on 3.3, nothing extra on 3.4, and
    // etcd's dedicated metrics listeners when asked for.
    let v33 = etcd_env(
        &EtcdNodeSpec {
            version: "3.3.25".into(),
            ..env_spec()
        },
        &[],
    );
    assert_eq!(get(&v33, "ETCD_ENABLE_V2"), Some("false"));
    assert_eq!(get(&v33, "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK"), None);
    let v34 = etcd_env(
        &EtcdNodeSpec {
            version: "3.4.23".into(),
            listen_metrics_urls: vec!["http://0.0.0.0:8081".into()],
            ..env_spec()
        },
        &[],
    );
    assert_eq!(get(&v34, "ETCD_ENABLE_V2"), None);
    assert_eq!(get(&v34, "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK"), None);
    assert_eq!(
        get(&v34, "ETCD_LISTEN_METRICS_URLS"),
        Some("http://0.0.0.0:8081")
    );
    let existing = EtcdNodeSpec {
        initial_cluster_state_new: false,
        ..env_spec()
    };
    assert_eq!(
        get(&etcd_env(&existing, &[]), "ETCD_INITIAL_CLUSTER_STATE"),
        Some("existing")
    );
}

#[test]
fn etcd_env_overrides_replace_and_add_keys() {
    let overrides = vec![
        ("ETCD_NAME".to_string(), "forced".to_string()),
        ("ETCD_HEARTBEAT_INTERVAL".to_string(), "250".to_string()),
    ];
    let env = etcd_env(&env_spec(), &overrides);
    assert_eq!(get(&env, "ETCD_NAME"), Some("forced"));
    assert_eq!(get(&env, "ETCD_HEARTBEAT_INTERVAL"), Some("250"));
    assert_eq!(env.iter().filter(|(k, _)| k == "ETCD_NAME").count(), 1);
    assert_eq!(get(&env, "ETCD_DATA_DIR"), Some("/var/etcd/data/tok"));
}

#[test]
fn etcd_env_quarantined_uses_only_quarantine_urls() {
    let spec = EtcdNodeSpec {
        quarantined: true,
        ..env_spec()
    };
    let env = etcd_env(&spec, &[]);
    assert_eq!(
        get(&env, "ETCD_LISTEN_CLIENT_URLS"),
        Some("http://10.0.0.1:8001")
    );
    assert_eq!(
        get(&env, "ETCD_ADVERTISE_CLIENT_URLS"),
        Some("http://10.0.0.1:8001")
    );
    assert!(env.iter().all(|(_, v)| !v.contains(":4001")), "{env:?}");
}

#[test]
fn etcd_env_listen_address_replaces_hosts_of_listen_urls_only() {
    let spec = EtcdNodeSpec {
        listen_address: Some("0.0.0.0".into()),
        tls: None,
        listen_metrics_urls: vec![],
        ..env_spec()
    };
    let env = etcd_env(&spec, &[]);
    assert_eq!(
        get(&env, "ETCD_LISTEN_CLIENT_URLS"),
        Some("http://0.0.0.0:4001")
    );
    assert_eq!(
        get(&env, "ETCD_LISTEN_PEER_URLS"),
        Some("http://0.0.0.0:2380")
    );
    assert_eq!(
        get(&env, "ETCD_ADVERTISE_CLIENT_URLS"),
        Some("http://10.0.0.1:4001")
    );
    assert_eq!(
        get(&env, "ETCD_INITIAL_ADVERTISE_PEER_URLS"),
        Some("http://10.0.0.1:2380")
    );
    let q = EtcdNodeSpec {
        quarantined: true,
        ..spec
    };
    assert_eq!(
        get(&etcd_env(&q, &[]), "ETCD_LISTEN_CLIENT_URLS"),
        Some("http://0.0.0.0:8001")
    );
}

// ---------------------------------------------------------------- one member

async fn single_member_lifecycle(ver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("solo", ver, "127.0.0.1", dir.path(), "tok-single");
    let proc = node.start();
    assert_eq!(proc.spec(), &node.spec);
    let first = proc.status();
    assert!(
        first.running && first.pid.is_some() && first.restarts == 0,
        "{first:?}"
    );
    wait_healthy(&node, Duration::from_secs(20)).await;

    let client = node.client().await;
    client.put("/k", "v1").await.unwrap();
    assert_eq!(client.get("/k").await.unwrap().as_deref(), Some("v1"));
    assert_eq!(client.get("/missing").await.unwrap(), None);

    let st = client.status().await.unwrap();
    assert_eq!(st.endpoint, node.spec.client_urls[0]);
    assert_eq!(st.version, ver);
    assert_ne!(st.member_id, 0);
    assert_eq!(st.leader, st.member_id, "a single member leads itself");
    assert!(
        st.revision >= 2 && st.raft_index > 0 && st.db_size > 0,
        "{st:?}"
    );
    assert!(!st.is_learner);

    let members = client.member_list().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].id, st.member_id);
    assert_eq!(members[0].name, "solo");
    assert_eq!(members[0].peer_urls, node.spec.peer_urls);
    assert_eq!(members[0].client_urls, node.spec.client_urls);

    // A crash: the supervisor starts etcd again on the same data.
    let pid = first.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(
        "restart after SIGKILL",
        Duration::from_secs(15),
        async || {
            let s = proc.status();
            s.running && s.restarts == 1 && s.pid.is_some_and(|p| p != pid)
        },
    )
    .await;
    assert!(
        proc.status().last_exit.unwrap().contains("signal"),
        "{:?}",
        proc.status()
    );
    wait_healthy(&node, Duration::from_secs(20)).await;
    assert_eq!(client.get("/k").await.unwrap().as_deref(), Some("v1"));

    let pid = proc.status().pid.unwrap();
    tokio::time::timeout(Duration::from_secs(15), proc.stop(Duration::from_secs(10)))
        .await
        .expect("stop returns within its timeout")
        .unwrap();
    assert!(!pid_alive(pid), "etcd {pid} still alive after stop");
    assert!(!client.healthy().await);
}

#[tokio::test]
async fn single_member_3_5_30() {
    single_member_lifecycle("3.5.30").await;
}

#[tokio::test]
async fn single_member_3_4_23() {
    single_member_lifecycle("3.4.23").await;
}

#[tokio::test]
async fn single_member_3_3_25() {
    single_member_lifecycle("3.3.25").await;
}

/// Health is etcd's own `/readyz` where etcd has one, the read before: a
/// raised CORRUPT alarm is reported as the `/readyz` check that failed (3.5.30,
/// 3.6), while etcd 3.4, which has no `/readyz`, still serves the read.
async fn health_by_readyz(ver: &str, has_readyz: bool) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("h", ver, "127.0.0.1", dir.path(), "tok-h");
    let proc = node.start();
    wait_healthy(&node, Duration::from_secs(20)).await;
    let client = node.client().await;
    assert_eq!(client.health().await, etcd::Health::Ready);
    let id = client.status().await.unwrap().member_id;
    let mut raw = etcd_client::Client::connect(&node.spec.client_urls, None)
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
    let health = client.health().await;
    if has_readyz {
        let etcd::Health::NotReady(why) = health else {
            panic!("etcd {ver} with a CORRUPT alarm judged ready");
        };
        assert!(
            why.contains("/readyz") && why.contains("data_corruption"),
            "{ver}: {why}"
        );
    } else {
        assert_eq!(health, etcd::Health::Ready, "{ver}: the read decides");
    }
    proc.stop(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn health_is_readyz_on_3_6() {
    health_by_readyz("3.6.16", true).await;
}

#[tokio::test]
async fn health_is_readyz_on_3_5_30() {
    health_by_readyz("3.5.30", true).await;
}

#[tokio::test]
async fn health_is_a_read_on_3_4_without_readyz() {
    health_by_readyz("3.4.23", false).await;
}

#[tokio::test]
async fn quarantined_member_serves_only_on_quarantine_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::new("q", "3.5.30", "127.0.0.1", dir.path(), "tok-q");
    node.spec.quarantined = true;
    let overrides = vec![("ETCD_SNAPSHOT_COUNT".to_string(), "5000".to_string())];
    let proc = EtcdProcess::start(
        binaries("3.5.30"),
        node.spec.clone(),
        overrides.clone(),
        Some(node.log.clone()),
    )
    .unwrap();
    // The child's ETCD_* environment is exactly ours plus the overrides, nothing inherited.
    // Until the forked child has exec'd etcd, /proc shows the parent's environment: wait for the exec.
    // The kernel points /proc/<pid>/exe at the new binary a moment before it lays out the new
    // environment (environ reads empty in between), so wait for both.
    let pid = proc.status().pid.unwrap();
    let etcd_exe = std::fs::canonicalize(&binaries("3.5.30").etcd).unwrap();
    wait_for(
        "the child to exec etcd",
        Duration::from_secs(10),
        async || {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == etcd_exe)
                && !etcd_vars_of(pid).is_empty()
        },
    )
    .await;
    assert_eq!(etcd_vars_of(pid), etcd_env(&node.spec, &overrides));
    let q = EtcdClient::connect(&node.spec.quarantined_client_urls, TIMEOUT)
        .await
        .unwrap();
    wait_for(
        "quarantined etcd healthy",
        Duration::from_secs(20),
        async || q.healthy().await,
    )
    .await;
    let normal = EtcdClient::connect(&node.spec.client_urls, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        !normal.healthy().await,
        "the normal client url must not serve while quarantined"
    );
    assert_eq!(
        q.member_list().await.unwrap()[0].client_urls,
        node.spec.quarantined_client_urls
    );
    proc.stop(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn client_calls_time_out_against_a_silent_endpoint() {
    // A listener that accepts but never answers: etcd hung.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let timeout = Duration::from_millis(500);
    let client = EtcdClient::connect(std::slice::from_ref(&url), timeout)
        .await
        .unwrap();
    let started = Instant::now();
    let e = client.member_list().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(e.is_retryable(), "{e:?}");
    assert!(!client.healthy().await);
    hold.abort();
}

// ---------------------------------------------------------------- several members

#[tokio::test]
async fn three_members_form_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-three";
    let mut nodes: Vec<Node> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .enumerate()
        .map(|(i, ip)| Node::new(&format!("m{i}"), "3.5.30", ip, dir.path(), token))
        .collect();
    let initial: Vec<(String, Vec<String>)> = nodes
        .iter()
        .map(|n| (n.spec.name.clone(), n.spec.peer_urls.clone()))
        .collect();
    for n in &mut nodes {
        n.spec.initial_cluster = initial.clone();
    }
    let procs: Vec<EtcdProcess> = nodes.iter().map(Node::start).collect();
    for n in &nodes {
        wait_healthy(n, Duration::from_secs(30)).await;
    }
    let all: Vec<String> = nodes
        .iter()
        .map(|n| n.spec.client_urls[0].clone())
        .collect();
    let client = EtcdClient::connect(&all, TIMEOUT).await.unwrap();
    let members = client.member_list().await.unwrap();
    assert_eq!(members.len(), 3);
    let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"]);
    assert!(members.iter().all(|m| !m.is_learner));
    // Status asks the first endpoint only; every member agrees on the leader.
    let mut leaders = Vec::new();
    for n in &nodes {
        let st = client
            .for_endpoint(&n.spec.client_urls[0])
            .await
            .unwrap()
            .status()
            .await
            .unwrap();
        assert_eq!(st.endpoint, n.spec.client_urls[0]);
        leaders.push(st.leader);
    }
    let st = client.status().await.unwrap();
    assert_eq!(st.endpoint, all[0]);
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "{leaders:?}"
    );
    client.put("/three", "yes").await.unwrap();
    let last = nodes[2].client().await;
    assert_eq!(last.get("/three").await.unwrap().as_deref(), Some("yes"));
    for p in procs {
        p.stop(Duration::from_secs(10)).await.unwrap();
    }
}

#[tokio::test]
async fn grow_with_learner_then_remove_3_5_30() {
    grow_with_learner_then_remove("3.5.30").await;
}

#[tokio::test]
async fn grow_with_learner_then_remove_3_4_23() {
    grow_with_learner_then_remove("3.4.23").await;
}

async fn grow_with_learner_then_remove(ver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-grow";
    let first = Node::new("g0", ver, "127.0.0.1", dir.path(), token);
    let p0 = first.start();
    wait_healthy(&first, Duration::from_secs(20)).await;
    let client = first.client().await;
    client.put("/before-join", "1").await.unwrap();

    let mut second = Node::new("g1", ver, "127.0.0.2", dir.path(), token);
    let (added, list) = client
        .member_add_retrying(&second.spec.peer_urls, true, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(added.is_learner && added.name.is_empty(), "{added:?}");
    assert_eq!(added.peer_urls, second.spec.peer_urls);
    assert_eq!(list.len(), 2);
    assert!(list.contains(&added));

    second.spec.initial_cluster = vec![
        (first.spec.name.clone(), first.spec.peer_urls.clone()),
        (second.spec.name.clone(), second.spec.peer_urls.clone()),
    ];
    second.spec.initial_cluster_state_new = false;
    let p1 = second.start();
    client
        .member_promote_retrying(added.id, Duration::from_secs(30))
        .await
        .unwrap();
    let members = client.member_list().await.unwrap();
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| !m.is_learner), "{members:?}");
    wait_healthy(&second, Duration::from_secs(20)).await;
    assert_eq!(
        second
            .client()
            .await
            .get("/before-join")
            .await
            .unwrap()
            .as_deref(),
        Some("1")
    );

    // Remove it again: the removed etcd exits on its own and is not restarted.
    client
        .member_remove_retrying(added.id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(client.member_list().await.unwrap().len(), 1);
    wait_for(
        "removed member's etcd to exit",
        Duration::from_secs(20),
        async || !p1.status().running,
    )
    .await;
    let st = p1.status();
    assert_eq!(st.restarts, 0, "{st:?}\n{}", second.log_tail());
    assert_eq!(
        st.last_exit.as_deref(),
        Some("exit status: 0"),
        "{st:?}\n{}",
        second.log_tail()
    );
    let e = client.member_remove(added.id).await.unwrap_err();
    assert!(e.is_member_not_found() && !e.is_retryable(), "{e:?}");
    p1.stop(Duration::from_secs(5)).await.unwrap();
    assert!(client.healthy().await);
    p0.stop(Duration::from_secs(10)).await.unwrap();
}

// ---------------------------------------------------------------- snapshot and restore

#[tokio::test]
async fn snapshot_restore_with_bumped_revision() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("s0", "3.5.30", "127.0.0.1", dir.path(), "tok-snap");
    let proc = node.start();
    wait_healthy(&node, Duration::from_secs(20)).await;
    let client = node.client().await;
    for i in 0..50 {
        client
            .put(&format!("/snap/{i}"), &format!("value-{i}"))
            .await
            .unwrap();
    }
    let before = client.status().await.unwrap();

    let snap_path = dir.path().join("snapshot.db");
    let mut file = tokio::fs::File::create(&snap_path).await.unwrap();
    let mut stream = client.snapshot().await.unwrap();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len();
        file.write_all(&chunk).await.unwrap();
    }
    file.sync_all().await.unwrap();
    drop(file);
    // A bolt database plus etcd's appended checksum: at least a few pages.
    assert!(
        total >= 4096,
        "snapshot only {total} bytes (db {} bytes)",
        before.db_size
    );
    proc.stop(Duration::from_secs(10)).await.unwrap();

    // Restore as a new cluster with new ports and token.
    let restored = Node::new("r0", "3.5.30", "127.0.0.1", dir.path(), "tok-restored");
    let bins = binaries("3.5.30");
    let bump = 1_000_000u64;
    restore_snapshot(&bins, &snap_path, &restored.spec, Some(bump))
        .await
        .unwrap();
    // Never over existing data.
    let e = restore_snapshot(&bins, &snap_path, &restored.spec, Some(bump))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Restore { ref detail } if detail.contains("not empty")),
        "{e:?}"
    );
    // 3.4 cannot bump.
    let other = Node::new("r1", "3.4.23", "127.0.0.1", dir.path(), "tok-34");
    let e = restore_snapshot(&binaries("3.4.23"), &snap_path, &other.spec, Some(bump))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Restore { ref detail } if detail.contains("bump")),
        "{e:?}"
    );

    let proc = restored.start();
    wait_healthy(&restored, Duration::from_secs(20)).await;
    let client = restored.client().await;
    assert_eq!(
        client.get("/snap/7").await.unwrap().as_deref(),
        Some("value-7")
    );
    let st = client.status().await.unwrap();
    assert!(
        st.revision > bump as i64,
        "revision {} not above the bump {bump}",
        st.revision
    );
    let members = client.member_list().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].name, "r0");
    assert_eq!(members[0].peer_urls, restored.spec.peer_urls);
    proc.stop(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn restore_with_etcdctl_on_3_4() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("o0", "3.4.23", "127.0.0.1", dir.path(), "tok-o");
    let proc = node.start();
    wait_healthy(&node, Duration::from_secs(20)).await;
    let client = node.client().await;
    client.put("/old", "kept").await.unwrap();
    let snap_path = dir.path().join("snap34.db");
    let mut out = Vec::new();
    let mut stream = client.snapshot().await.unwrap();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    std::fs::write(&snap_path, &out).unwrap();
    proc.stop(Duration::from_secs(10)).await.unwrap();

    let restored = Node::new("o1", "3.4.23", "127.0.0.1", dir.path(), "tok-o1");
    std::fs::create_dir_all(&restored.spec.data_dir).unwrap(); // empty is fine
    restore_snapshot(&binaries("3.4.23"), &snap_path, &restored.spec, None)
        .await
        .unwrap();
    let proc = restored.start();
    wait_healthy(&restored, Duration::from_secs(20)).await;
    assert_eq!(
        restored
            .client()
            .await
            .get("/old")
            .await
            .unwrap()
            .as_deref(),
        Some("kept")
    );
    proc.stop(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn start_with_missing_binary_fails_with_spawn_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("x", "3.5.30", "127.0.0.1", dir.path(), "tok-x");
    let mut bins = binaries("3.5.30");
    bins.etcd = dir.path().join("no-such-etcd");
    let e = EtcdProcess::start(bins, node.spec.clone(), vec![], None).unwrap_err();
    assert!(
        matches!(e, Error::Spawn { ref binary, .. } if binary.ends_with("no-such-etcd")),
        "{e:?}"
    );
}

// ---------------------------------------------------------------- supervisor with stand-ins

#[tokio::test]
async fn crashing_process_is_restarted_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("c", "3.5.30", "127.0.0.1", dir.path(), "tok-c");
    let bins = fake_binaries(dir.path(), "sleep 0.2; exit 3");
    let proc = EtcdProcess::start(bins, node.spec.clone(), vec![], Some(node.log.clone())).unwrap();
    // Exits after 0.2 s, restarted after 1 s, exits again, restarted after 2 s.
    wait_for("second restart", Duration::from_secs(10), async || {
        proc.status().restarts >= 2
    })
    .await;
    let st = proc.status();
    assert_eq!(
        st.restarts, 2,
        "backoff doubles: no third restart yet {st:?}"
    );
    assert!(
        st.last_exit.is_some_and(|e| e.contains("exit status: 3")),
        "{:?}",
        proc.status()
    );
    proc.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn clean_exit_is_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("z", "3.5.30", "127.0.0.1", dir.path(), "tok-z");
    let bins = fake_binaries(dir.path(), "exit 0");
    let proc = EtcdProcess::start(bins, node.spec.clone(), vec![], None).unwrap();
    wait_for("clean exit seen", Duration::from_secs(5), async || {
        !proc.status().running
    })
    .await;
    let st = proc.status();
    assert_eq!(
        (st.restarts, st.pid, st.last_exit.as_deref()),
        (0, None, Some("exit status: 0"))
    );
    proc.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("t", "3.5.30", "127.0.0.1", dir.path(), "tok-t");
    let ready = dir.path().join("ready");
    let script = format!(
        "trap '' TERM; touch {}; while true; do sleep 0.1; done",
        ready.display()
    );
    let bins = fake_binaries(dir.path(), &script);
    let proc = EtcdProcess::start(bins, node.spec.clone(), vec![], None).unwrap();
    let pid = proc.status().pid.unwrap();
    wait_for(
        "stand-in to ignore SIGTERM",
        Duration::from_secs(5),
        async || ready.exists(),
    )
    .await;
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        proc.stop(Duration::from_millis(500)),
    )
    .await
    .expect("stop returns soon after its timeout")
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "SIGTERM was ignored, so stop waited"
    );
    assert!(!pid_alive(pid), "{pid} survived SIGKILL");
}

#[tokio::test]
async fn dropping_the_supervisor_kills_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("d", "3.5.30", "127.0.0.1", dir.path(), "tok-d");
    let proc = node.start();
    let pid = proc.status().pid.unwrap();
    assert!(pid_alive(pid));
    drop(proc);
    wait_for(
        "etcd killed after drop",
        Duration::from_secs(5),
        async || !pid_alive(pid),
    )
    .await;
}

/// A restore drill of a good snapshot gives the live member's HashKV at the
/// recorded revision (writes after it included in the snapshot); a
/// snapshot with one byte changed fails etcd's own integrity check. The
/// scratch folder is gone either way.
async fn restore_drill(ver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new("d0", ver, "127.0.0.1", dir.path(), "tok-drill");
    let proc = node.start();
    wait_healthy(&node, Duration::from_secs(20)).await;
    let client = node.client().await;
    for i in 0..100 {
        client
            .put(&format!("/drill/{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    client.compact(50).await.unwrap();
    let revision = client.status().await.unwrap().revision;
    let live = client.hash_kv(revision).await.unwrap();
    for i in 0..20 {
        client.put(&format!("/after/{i}"), "x").await.unwrap();
    }
    let snap = dir.path().join("snapshot.db");
    let mut bytes = Vec::new();
    let mut stream = client.snapshot().await.unwrap();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    std::fs::write(&snap, &bytes).unwrap();
    proc.stop(Duration::from_secs(10)).await.unwrap();

    let bins = binaries(ver);
    let scratch = dir.path().join("scratch");
    let got = etcd::drill(&bins, &snap, &scratch, revision, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.hash, live, "{got:?}");
    assert_eq!(got.hash.compact_revision, 50);
    assert!(got.restored_revision >= revision + 20, "{got:?}");
    assert!(!scratch.exists());

    // The throwaway etcd serves the whole backup without authentication: it
    // listens on no TCP port (a unix socket in its private folder instead),
    // and its files are its owner's alone.
    let scratch = dir.path().join("throwaway");
    let etcd = etcd::Throwaway::start(&bins, &snap, &scratch, Duration::from_secs(30))
        .await
        .unwrap();
    let pid = etcd.pid().unwrap();
    assert_eq!(
        tcp_listeners_of(pid),
        Vec::<u16>::new(),
        "it listens on TCP"
    );
    assert!(
        etcd.client_url.starts_with("unix://"),
        "{}",
        etcd.client_url
    );
    assert_eq!(
        etcd.client.get("/drill/7").await.unwrap().as_deref(),
        Some("v7")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&scratch), 0o700);
    assert_eq!(mode(&scratch.join("etcd.log")), 0o600);
    etcd.stop().await;
    std::fs::remove_dir_all(&scratch).unwrap();

    let bad = dir.path().join("bad.db");
    let mut flipped = bytes.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x55;
    std::fs::write(&bad, &flipped).unwrap();
    let e = etcd::drill(&bins, &bad, &scratch, revision, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("snapshot") || e.to_string().contains("restore"),
        "{e}"
    );
    assert!(!scratch.exists());
}

/// The TCP ports process `pid` listens on (its sockets' inodes, found in
/// /proc/net/tcp and tcp6 in state LISTEN).
fn tcp_listeners_of(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_string_lossy()
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(String::from)
        })
        .collect();
    let mut ports = vec![];
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[tokio::test]
async fn restore_drill_3_5_30() {
    restore_drill("3.5.30").await;
}

#[tokio::test]
async fn restore_drill_3_7_3() {
    restore_drill("3.7.3").await;
}
