//! The images scripts/image.sh builds (podman, no registry), run as kops
//! runs etcd-manager: the slim image in three containers, each in the
//! network namespace of a test host of its own, privileged, the host's PID
//! namespace, the host's root at `/rootfs`, `/run`, the pki folder, `/opt`
//! filled as kops' init containers fill it (`/opt/etcd-v<version>/etcd` and
//! `etcdctl`), `/var/log/etcd.log`, started through `/go-runner` with kops'
//! metal arguments verbatim. And the full image running the README's quick
//! start. `scripts/test.sh` builds the images first (from the debug build)
//! and names them in `IMAGE_SLIM` and `IMAGE_FULL`; without them, or without
//! podman, these tests skip (under `CI=true` they fail).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::netns::{Net, run};
use tests::wait_for;

// etcd 3.5.30 with a client certificate, as in the metal test.
use crate::kops_metal::etcdctl;

const CLUSTER: &str = "image.k8s.local";
const VERSION: &str = "3.5.30";

/// The image named in `var`, with podman and runc at hand; None (after
/// tests::tool_missing) otherwise.
fn image(var: &str) -> Option<String> {
    if !tests::netns::root_or_skip("the image tests") {
        return None;
    }
    for tool in ["podman", "runc"] {
        if tests::which(tool).is_none() {
            tests::tool_missing(&format!(
                "{tool} is not installed (scripts/setup.sh installs it)"
            ));
            return None;
        }
    }
    match std::env::var(var) {
        Ok(i) if !i.is_empty() => Some(i),
        _ => {
            tests::tool_missing(&format!(
                "{var} names no image: scripts/test.sh builds them (scripts/image.sh --profile debug)"
            ));
            None
        }
    }
}

/// podman with runc and the containers.conf the image script writes.
fn podman(args: &[&str]) -> Result<String, String> {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image/containers.conf");
    run(Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .arg("--runtime")
        .arg("runc")
        .args(args))
}

/// Containers of this test, removed at the end whatever happens.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for c in &self.0 {
            if std::thread::panicking()
                && let Ok(logs) = podman(&["logs", c])
            {
                eprintln!("===== container {c} =====\n{logs}");
            }
            let _ = podman(&["rm", "-f", "-t", "0", c]);
        }
    }
}

/// Processes (pids) in network namespace `ns` whose command is `etcd`.
fn etcds_in(ns: &str) -> Vec<u32> {
    let Ok(target) = std::fs::metadata(format!("/run/netns/{ns}")).map(|m| m.ino()) else {
        return vec![];
    };
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != "etcd" {
            continue;
        }
        if std::fs::metadata(e.path().join("ns/net")).is_ok_and(|m| m.ino() == target) {
            out.push(pid);
        }
    }
    out
}

/// The members (id, name) when all `n` are voters with names, by host `h`.
fn voters(net: &Net, h: usize, certs: &Path, n: usize) -> Option<Vec<(String, String)>> {
    let out = etcdctl(net, h, certs, &["member", "list", "-w", "json"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let ms = v["members"].as_array()?;
    let named: Vec<(String, String)> = ms
        .iter()
        .filter(|m| m["isLearner"].as_bool() != Some(true))
        .filter_map(|m| Some((m["ID"].to_string(), m["name"].as_str()?.to_string())))
        .filter(|(_, n)| !n.is_empty())
        .collect();
    (ms.len() == n && named.len() == n).then_some(named)
}

struct Host {
    root: PathBuf,
    name: String,
}

/// One host's container: kops' static pod for etcd-manager, verbatim, on
/// this machine.
fn start(net: &Net, h: usize, host: &Host, root: &Path, image: &str, args: &[String]) -> String {
    let hr = &host.root;
    let v = |from: &Path, to: &str| format!("{}:{to}", from.display());
    let mut cmd: Vec<String> = [
        "run",
        "-d",
        "--name",
        &host.name,
        "--privileged",
        "--pid",
        "host",
        "--network",
        &format!("ns:/run/netns/{}", net.ns(h)),
        "-v",
        &v(hr, "/rootfs"),
        "-v",
        "/run:/run",
        "-v",
        &v(&root.join("pki"), "/etc/kubernetes/pki/etcd-manager"),
        "-v",
        &v(&hr.join("opt"), "/opt"),
        "-v",
        &v(&hr.join("var/log/etcd.log"), "/var/log/etcd.log"),
        // The backup folder kops' metal arguments name, shared by the hosts.
        "-v",
        &v(&root.join("backups"), "/mnt/disks/backups"),
        // Backups within the test's time; everything else as kops sets it.
        "-e",
        "ETCD_MANAGER_BACKUP_INTERVAL=10s",
        "--entrypoint",
        "/go-runner",
        image,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.extend(args.iter().cloned());
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    podman(&refs).unwrap_or_else(|e| panic!("starting {}: {e}", host.name));
    host.name.clone()
}

/// kops' metal arguments, verbatim but for the cluster name, version and
/// the nodes' addresses.
fn metal_args(net: &Net, n: usize) -> Vec<String> {
    let nodes: Vec<String> = (1..=n)
        .map(|h| {
            format!(
                r#"{{"id":"{CLUSTER}--main--{h}","ip":["{}"]}}"#,
                net.ip_of(h)
            )
        })
        .collect();
    include_str!("../data/kops/metal-main.args")
        .lines()
        .map(|l| {
            l.replace("__CLUSTER__", CLUSTER)
                .replace("__VERSION__", VERSION)
                .replace("__NODES__", &nodes.join(","))
        })
        .collect()
}

fn ctl_status(root: &Path) -> String {
    let ctl = Path::new(env!("CARGO_BIN_EXE_etcd-manager-ctl"));
    tests::run_ctl(
        ctl,
        &[
            format!("-backup-store=file://{}", root.join("backups").display()),
            "status".into(),
        ],
    )
    .stdout
}

fn leader_of(status: &str) -> Option<(String, u64)> {
    let line = status.lines().find(|l| l.starts_with("leader:"))?;
    let mut words = line.split_whitespace().skip(1);
    let id = words.next()?.to_string();
    let epoch = words.nth(1)?.parse().ok()?;
    Some((id, epoch))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_slim_image_runs_as_kops_runs_it() {
    let Some(image) = image("IMAGE_SLIM") else {
        return;
    };
    let n = 3;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ctl = Path::new(env!("CARGO_BIN_EXE_etcd-manager-ctl"));
    let (pki, certs) = (root.join("pki"), root.join("client"));
    for args in [
        vec![
            "init-pki".to_string(),
            format!("-pki-dir={}", pki.display()),
        ],
        vec![
            "issue-client-cert".into(),
            format!("-pki-dir={}", pki.display()),
            certs.display().to_string(),
        ],
    ] {
        let out = tests::run_ctl(ctl, &args);
        assert!(out.success, "{args:?}: {out:?}");
    }
    std::fs::create_dir_all(root.join("backups")).unwrap();
    let net = &Net::up("emi", n, None);
    let lease = tests::lease::lease("image-test", 100);
    let bins = tests::etcd_binaries(VERSION);
    let hosts: Vec<Host> = (1..=n)
        .map(|h| {
            let hr = root.join(format!("h{h}"));
            let mnt = hr.join(format!("mnt/disks/{CLUSTER}--main--{h}/mnt"));
            std::fs::create_dir_all(&mnt).unwrap();
            std::fs::write(mnt.join("please-create-new-cluster"), b"").unwrap();
            // As kops' init containers leave /opt: etcd and etcdctl only.
            let opt = hr.join(format!("opt/etcd-v{VERSION}"));
            std::fs::create_dir_all(&opt).unwrap();
            std::fs::copy(&bins.etcd, opt.join("etcd")).unwrap();
            std::fs::copy(bins.etcdctl.as_ref().unwrap(), opt.join("etcdctl")).unwrap();
            std::fs::create_dir_all(hr.join("var/log")).unwrap();
            std::fs::write(hr.join("var/log/etcd.log"), b"").unwrap();
            Host {
                root: hr,
                name: format!("emi{}-h{h}", lease.index),
            }
        })
        .collect();
    let args = metal_args(net, n);
    let containers = Containers(hosts.iter().map(|h| h.name.clone()).collect());
    for (i, host) in hosts.iter().enumerate() {
        start(net, i + 1, host, root, &image, &args);
    }
    let members = wait_for(
        "three voters in the containers",
        Duration::from_secs(120),
        || async { voters(net, 1, &certs, n) },
    )
    .await;
    // Every container's /etc/hosts (where upstream writes them) names the members.
    for (i, host) in hosts.iter().enumerate() {
        let pid = podman(&["inspect", "-f", "{{.State.Pid}}", &host.name]).unwrap();
        let path = format!("/proc/{}/root/etc/hosts", pid.trim());
        wait_for(
            "the members in the container's /etc/hosts",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                async move {
                    (1..=n)
                        .all(|m| {
                            text.contains(&format!(
                                "{}\t{CLUSTER}--main--{m}.internal.{CLUSTER}",
                                net.ip_of(m)
                            ))
                        })
                        .then_some(())
                }
            },
        )
        .await;
        // go-runner tees the manager's output into /var/log/etcd.log.
        let log = std::fs::read_to_string(host.root.join("var/log/etcd.log")).unwrap();
        assert!(
            log.contains("etcd-manager started"),
            "host {}: {log}",
            i + 1
        );
    }
    wait_for(
        "a backup in the shared backup folder",
        Duration::from_secs(60),
        || async {
            std::fs::read_dir(root.join("backups"))
                .ok()?
                .flatten()
                .any(|e| e.path().join("etcd.backup.gz").exists())
                .then_some(())
        },
    )
    .await;
    etcdctl(net, 2, &certs, &["put", "/image/k", "v"]).unwrap();

    // `podman stop` of the leader's container: its etcd stops, leadership is
    // handed over.
    let (leader, epoch) = wait_for("a leader in status", Duration::from_secs(60), || async {
        leader_of(&ctl_status(root))
    })
    .await;
    let lh = (1..=n)
        .find(|h| leader == format!("{CLUSTER}--main--{h}"))
        .expect("the leader is a host");
    let stopped = Instant::now();
    podman(&["stop", "-t", "30", &hosts[lh - 1].name]).unwrap();
    let stop_secs = stopped.elapsed().as_secs_f64();
    assert!(
        etcds_in(&net.ns(lh)).is_empty(),
        "the stopped container's etcd is gone"
    );
    let (new_leader, new_epoch) = wait_for("a new leader", Duration::from_secs(60), || async {
        leader_of(&ctl_status(root)).filter(|(_, e)| *e > epoch)
    })
    .await;
    println!(
        "BENCH image: podman stop of the leader's container took {stop_secs:.2} s; new leader {new_leader} at epoch {new_epoch} {:.2} s after the stop began",
        stopped.elapsed().as_secs_f64()
    );
    assert_ne!(new_leader, leader);
    podman(&["start", &hosts[lh - 1].name]).unwrap();

    // `podman kill` of another container leaves no etcd behind; started
    // again, its member comes back on its data, no member replaced.
    let kh = if lh == 1 { 2 } else { 1 };
    wait_for(
        "the restarted leader's member back",
        Duration::from_secs(90),
        || async { voters(net, kh, &certs, n).filter(|v| v == &members) },
    )
    .await;
    podman(&["kill", &hosts[kh - 1].name]).unwrap();
    wait_for(
        "no etcd left of the killed container",
        Duration::from_secs(30),
        || async { etcds_in(&net.ns(kh)).is_empty().then_some(()) },
    )
    .await;
    podman(&["start", &hosts[kh - 1].name]).unwrap();
    let back = wait_for(
        "every member healthy again",
        Duration::from_secs(120),
        || async {
            let v = voters(net, kh, &certs, n)?;
            (1..=n)
                .all(|h| etcdctl(net, h, &certs, &["endpoint", "health"]).is_ok())
                .then_some(v)
        },
    )
    .await;
    assert_eq!(back, members, "the same members: none replaced");
    assert!(
        etcdctl(net, kh, &certs, &["get", "/image/k"])
            .unwrap()
            .contains('v')
    );
    drop(containers);
}

/// The full image carries etcd itself: the README's quick start (three
/// managers on their own addresses, a file store, `configure-cluster`), in
/// containers.
#[tokio::test(flavor = "multi_thread")]
async fn the_full_image_runs_the_quick_start() {
    let Some(image) = image("IMAGE_FULL") else {
        return;
    };
    let n = 3;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let net = &Net::up("emf", n, None);
    let lease = tests::lease::lease("image-test", 100);
    for d in ["store", "discovery"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let names: Vec<String> = (1..=n)
        .map(|h| format!("emf{}-h{h}", lease.index))
        .collect();
    let containers = Containers(names.clone());
    for h in 1..=n {
        let ip = net.ip_of(h);
        let data = root.join(format!("data/{h}"));
        std::fs::create_dir_all(&data).unwrap();
        let v = |from: &Path, to: &str| format!("{}:{to}", from.display());
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &names[h - 1],
            "--network",
            &format!("ns:/run/netns/{}", net.ns(h)),
            "-v",
            &v(&root.join("store"), "/store"),
            "-v",
            &v(&root.join("discovery"), "/tmp/discovery"),
            "-v",
            &v(&data, "/data"),
            &image,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--insecure".into(),
            "--etcd-insecure".into(),
            format!("--address={ip}"),
            format!("--etcd-address={ip}"),
            "--cluster-name=test".into(),
            "--backup-store=file:///store".into(),
            "--data-dir=/data".into(),
            format!("--client-urls=http://{ip}:4001"),
            format!("--quarantine-client-urls=http://{ip}:8001"),
            format!("--peer-urls=http://{ip}:2380"),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        podman(&refs).unwrap_or_else(|e| panic!("starting host {h}: {e}"));
    }
    let ctl = Path::new(env!("CARGO_BIN_EXE_etcd-manager-ctl"));
    let out = tests::run_ctl(
        ctl,
        &[
            "-member-count=3".into(),
            format!("--backup-store=file://{}", root.join("store").display()),
            format!("-etcd-version={VERSION}"),
            "configure-cluster".into(),
        ],
    );
    assert!(out.success, "{out:?}");
    let bins = tests::etcd_binaries(VERSION);
    wait_for(
        "three voters from the image's etcd",
        Duration::from_secs(120),
        || async {
            let out = run(Command::new("ip")
                .args(["netns", "exec", &net.ns(1)])
                .arg(bins.etcdctl.as_ref().unwrap())
                .env("ETCDCTL_API", "3")
                .args([
                    format!("--endpoints=http://{}:4001", net.ip_of(1)),
                    "member".into(),
                    "list".into(),
                ]))
            .ok()?;
            (out.lines().filter(|l| l.contains(", started, ")).count() == 3).then_some(())
        },
    )
    .await;
    // Its etcd is the image's: /opt/etcd-v<version>/etcd inside it.
    let pid = podman(&["inspect", "-f", "{{.State.Pid}}", &names[0]]).unwrap();
    assert!(
        Path::new(&format!(
            "/proc/{}/root/opt/etcd-v{VERSION}/etcd",
            pid.trim()
        ))
        .exists()
    );
    drop(containers);
}

/// The slim image holds exactly what deploy/image-rootfs.sh makes (the
/// script deploy/Dockerfile runs too), and deploy/Dockerfile builds its slim
/// image from that script's output.
#[test]
fn the_slim_image_is_what_the_rootfs_script_makes() {
    let Some(image) = image("IMAGE_SLIM") else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docker = std::fs::read_to_string(repo.join("deploy/Dockerfile")).unwrap();
    assert!(docker.contains("deploy/image-rootfs.sh target/release /rootfs"));
    assert!(docker.contains("FROM scratch AS slim\nCOPY --from=build /rootfs/ /"));
    let made = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_etcd-manager"))
        .parent()
        .unwrap();
    run(Command::new(repo.join("deploy/image-rootfs.sh"))
        .arg(bin)
        .arg(made.path().join("rootfs")))
    .unwrap();
    let mounted = podman(&["image", "mount", &image]).unwrap();
    let mounted = PathBuf::from(mounted.trim());
    let list = |root: &Path| {
        let mut out = vec![];
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let meta = std::fs::symlink_metadata(&p).unwrap();
                out.push(format!("{rel} {:o}", meta.mode() & 0o7777));
                if meta.is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    };
    let (image_files, script_files) = (list(&mounted), list(&made.path().join("rootfs")));
    let _ = podman(&["image", "unmount", &image]);
    assert_eq!(image_files, script_files);
    assert!(
        !image_files
            .iter()
            .any(|f| f.starts_with("bin/sh") || f.starts_with("usr/bin/sh")),
        "no shell"
    );
}
