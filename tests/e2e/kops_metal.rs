//! kops' bare-metal manifest, verbatim, on three hosts: network namespaces on
//! a bridge of their own, each with a mount namespace in which its folder is
//! `/rootfs` (so `--containerized=true` finds its volume under
//! `/rootfs/mnt/disks`), its own `/etc/hosts` and `/var/log`, and the shared
//! backup folder at `/mnt/disks/backups`. The managers start through our
//! `/go-runner`, with TLS from CAs made by `etcd-manager-ctl init-pki`.
//! Needs root (namespaces, mounts); CI runs as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::netns::{Net, run};
use tests::wait_for;

const PREFIX: &str = "emk";
const CLUSTER: &str = "metal.k8s.local";
const VERSION: &str = "3.5.30";

/// One host's files: its root (volume, hosts file) and its /var/log.
fn host_root(root: &Path, h: usize) -> PathBuf {
    root.join(format!("h{h}"))
}

/// kops' metal arguments (tests/data/kops/metal-main.args), with the cluster
/// name, the version and the nodes' addresses filled in.
fn metal_args(net: &Net, n: usize, manager: &Path) -> Vec<String> {
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
                .replace("/ko-app/etcd-manager", &manager.display().to_string())
        })
        .collect()
}

/// Start host `h`: a mount namespace with its folders in place, then
/// `go-runner <kops' arguments>`.
fn start(net: &Net, root: &Path, h: usize, args: &[String], pki: &Path) -> std::process::Child {
    let hr = host_root(root, h);
    let script = format!(
        "set -e; mount --bind {hr} /rootfs; mount --bind {backups} /mnt/disks/backups; \
         mount --bind {hr}/var-log /var/log; mount --bind {hr}/etc/hosts /etc/hosts; exec \"$@\"",
        hr = hr.display(),
        backups = root.join("backups").display(),
    );
    let pki = pki.display().to_string();
    tests::netns::spawn_in_host(
        &net.ns(h),
        &script,
        std::path::Path::new(env!("CARGO_BIN_EXE_go-runner")),
        args,
        &[
            ("ETCD_MANAGER_PKI_DIR", &pki),
            // Backups within the test's time; everything else as kops sets it.
            ("ETCD_MANAGER_BACKUP_INTERVAL", "10s"),
            ("ETCD_MANAGER_DAILY_BACKUPS_RETENTION", "90d"),
        ],
        &root.join(format!("console-{h}.log")),
    )
}

/// etcdctl inside host `h` against https://127.0.0.1:4001, with a client
/// certificate: the certificate's 127.0.0.1 SAN is verified.
fn etcdctl(net: &Net, h: usize, certs: &Path, args: &[&str]) -> Result<String, String> {
    let ctl = tests::etcd_binaries(VERSION).etcdctl.expect("etcdctl");
    let c = |f: &str| certs.join(f).display().to_string();
    run(Command::new("ip")
        .args(["netns", "exec", &net.ns(h)])
        .arg(ctl)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints=https://127.0.0.1:4001".to_string(),
            format!("--cacert={}", c("ca.crt")),
            format!("--cert={}", c("client.crt")),
            format!("--key={}", c("client.key")),
            "--command-timeout=5s".into(),
        ])
        .args(args))
}

#[tokio::test(flavor = "multi_thread")]
async fn kops_metal_manifest_runs_unchanged_on_three_hosts() {
    if !tests::netns::root_or_skip("the kops metal test") {
        return;
    }
    let n = 3;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The mount points the static pod has (created once on this machine).
    for p in ["/rootfs", "/mnt/disks/backups"] {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::create_dir_all(root.join("backups")).unwrap();
    let env = crate::env(&tempfile::tempdir().unwrap());
    let pki = root.join("pki");
    let certs = root.join("client");
    let ctl = |args: &[&str]| {
        let out = tests::run_ctl(
            &env.ctl_bin,
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        assert!(out.success, "{args:?}: {}", out.stderr);
    };
    ctl(&["init-pki", &format!("-pki-dir={}", pki.display())]);
    ctl(&[
        "issue-client-cert",
        &format!("-pki-dir={}", pki.display()),
        &certs.display().to_string(),
    ]);
    for h in 1..=n {
        let hr = host_root(root, h);
        let mnt = hr.join(format!("mnt/disks/{CLUSTER}--main--{h}/mnt"));
        std::fs::create_dir_all(&mnt).unwrap();
        // As kops' metal e2e prepares a new cluster's volume.
        std::fs::write(mnt.join("please-create-new-cluster"), b"").unwrap();
        std::fs::create_dir_all(hr.join("etc")).unwrap();
        std::fs::create_dir_all(hr.join("var-log")).unwrap();
        std::fs::write(hr.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    }
    let net = &Net::up(PREFIX, n, None);
    let _consoles = tests::netns::Consoles(root.to_path_buf(), (1..=n).collect());
    let args = metal_args(net, n, Path::new(env!("CARGO_BIN_EXE_etcd-manager")));
    let mut children: Vec<_> = (1..=n).map(|h| start(net, root, h, &args, &pki)).collect();

    let members = wait_for(
        "three voters seen through https://127.0.0.1:4001",
        Duration::from_secs(120),
        || {
            let certs = certs.clone();
            async move {
                let out = etcdctl(net, 1, &certs, &["member", "list", "-w", "json"]).ok()?;
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                let ms = v["members"].as_array()?.clone();
                (ms.len() == 3
                    && ms.iter().all(|m| {
                        m["name"].as_str().is_some_and(|s| !s.is_empty())
                            && m["isLearner"].as_bool() != Some(true)
                    }))
                .then_some(ms)
            }
        },
    )
    .await;
    // Members leave quarantine (client port 3994 -> 4001) one restart at a
    // time: every host's own etcd must answer on 4001 before it is asked.
    wait_for(
        "every host's etcd serving on https://127.0.0.1:4001",
        Duration::from_secs(60),
        || {
            let certs = certs.clone();
            async move {
                (1..=n)
                    .all(|h| etcdctl(net, h, &certs, &["endpoint", "health"]).is_ok())
                    .then_some(())
            }
        },
    )
    .await;
    for h in 1..=n {
        let name = format!("{CLUSTER}--main--{h}");
        let dns = format!("{name}.internal.{CLUSTER}");
        assert!(
            members.iter().any(|m| m["name"] == name.as_str()
                && m["peerURLs"]
                    .to_string()
                    .contains(&format!("https://{dns}:2380"))),
            "member {name} with its DNS name: {members:?}"
        );
    }
    // The static config's version, the names in every host's /etc/hosts.
    let status = etcdctl(net, 2, &certs, &["endpoint", "status", "-w", "json"]).unwrap();
    assert!(
        status.contains(&format!("\"version\":\"{VERSION}\"")),
        "{status}"
    );
    for h in 1..=n {
        let hosts = host_root(root, h).join("etc/hosts");
        wait_for(
            "every member named in the host's /etc/hosts",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&hosts).unwrap_or_default();
                async move {
                    (text.starts_with("127.0.0.1\tlocalhost\n")
                        && text.contains(
                            "# Begin host entries managed by etcd-manager[etcd] - do not edit",
                        )
                        && (1..=n).all(|m| {
                            text.contains(&format!(
                                "{}\t{CLUSTER}--main--{m}.internal.{CLUSTER}",
                                net.ip_of(m)
                            ))
                        }))
                    .then_some(())
                }
            },
        )
        .await;
    }
    etcdctl(net, 2, &certs, &["put", "/kops/metal", "works"]).unwrap();
    assert!(
        etcdctl(net, 3, &certs, &["get", "/kops/metal"])
            .unwrap()
            .contains("works")
    );
    // Without a client certificate, nothing.
    let ctl_bin = tests::etcd_binaries(VERSION).etcdctl.expect("etcdctl");
    assert!(
        run(Command::new("ip")
            .args(["netns", "exec", &net.ns(1)])
            .arg(&ctl_bin)
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints=https://127.0.0.1:4001".to_string(),
                format!("--cacert={}", certs.join("ca.crt").display()),
                "--dial-timeout=3s".into(),
                "get".into(),
                "/kops/metal".into(),
            ]))
        .is_err()
    );
    // Backups land in the (shared) file store, in upstream's layout.
    wait_for(
        "a backup in file:///mnt/disks/backups",
        Duration::from_secs(60),
        || {
            let backups = root.join("backups");
            async move {
                std::fs::read_dir(&backups)
                    .ok()?
                    .flatten()
                    .any(|e| {
                        e.path().join("etcd.backup.gz").exists()
                            && e.path().join("_etcd_backup.meta").exists()
                    })
                    .then_some(())
            }
        },
    )
    .await;
    // kops passes no gossip key: gossip is keyed from the CA all the same,
    // and status says so.
    let status = tests::run_ctl(
        &env.ctl_bin,
        &[
            format!("-backup-store=file://{}", root.join("backups").display()),
            "status".into(),
        ],
    );
    assert!(
        status.stdout.contains(
            "gossip:      authenticated and encrypted (key derived from the etcd-manager CA)"
        ),
        "{status:?}"
    );
    // go-runner tees the manager's output into /var/log/etcd.log.
    let log = std::fs::read_to_string(host_root(root, 1).join("var-log/etcd.log")).unwrap();
    assert!(log.contains("etcd-manager started"), "{log}");
    // The new-cluster file is gone where the cluster was created.
    assert!(
        (1..=n).any(|h| !host_root(root, h)
            .join(format!(
                "mnt/disks/{CLUSTER}--main--{h}/mnt/please-create-new-cluster"
            ))
            .exists()),
        "the leader removes the file that allowed the new cluster"
    );
    // SIGTERM to go-runner reaches the manager, which stops cleanly: exit 0.
    for c in &children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    for (h, c) in children.iter_mut().enumerate() {
        let status = wait_for(
            "go-runner to exit after SIGTERM",
            Duration::from_secs(60),
            || {
                let s = c.try_wait().ok().flatten();
                async move { s }
            },
        )
        .await;
        let console = std::fs::read_to_string(root.join(format!("console-{}.log", h + 1)))
            .unwrap_or_default();
        assert!(status.success(), "host {}: {status}\n{console}", h + 1);
    }
}
