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
pub(crate) fn etcdctl(net: &Net, h: usize, certs: &Path, args: &[&str]) -> Result<String, String> {
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

/// Three hosts as kops' metal e2e prepares them: a folder each (its
/// volume under `mnt/disks`, marked for a new cluster, its /etc/hosts and
/// /var/log), a shared backup folder, CAs from `init-pki` and a client
/// certificate, the hosts' network. Its hosts' processes die with it.
pub(crate) struct Metal {
    pub root: PathBuf,
    pub pki: PathBuf,
    pub certs: PathBuf,
    pub ctl_bin: PathBuf,
    pub n: usize,
    _consoles: tests::netns::Consoles,
    pub net: Net,
    _dir: tempfile::TempDir,
}

impl Metal {
    pub fn new(n: usize) -> Metal {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // The mount points the static pod has (created once on this machine).
        for p in ["/rootfs", "/mnt/disks/backups"] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::create_dir_all(root.join("backups")).unwrap();
        let ctl_bin = PathBuf::from(env!("CARGO_BIN_EXE_etcd-manager-ctl"));
        let pki = root.join("pki");
        let certs = root.join("client");
        let ctl = |args: &[&str]| {
            let out = tests::run_ctl(
                &ctl_bin,
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
            let hr = host_root(&root, h);
            let mnt = volume(&root, h);
            std::fs::create_dir_all(&mnt).unwrap();
            // As kops' metal e2e prepares a new cluster's volume.
            std::fs::write(mnt.join("please-create-new-cluster"), b"").unwrap();
            std::fs::create_dir_all(hr.join("etc")).unwrap();
            std::fs::create_dir_all(hr.join("var-log")).unwrap();
            std::fs::write(hr.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
        }
        let net = Net::up(PREFIX, n, None);
        Metal {
            _consoles: tests::netns::Consoles(root.clone(), (1..=n).collect()),
            root,
            pki,
            certs,
            ctl_bin,
            n,
            net,
            _dir: dir,
        }
    }

    /// Every host's manager (`manager`: ours or upstream's) through our
    /// `/go-runner` with kops' arguments and then `extra`.
    pub fn start_all(&self, manager: &Path, extra: &[String]) -> Vec<std::process::Child> {
        let mut args = metal_args(&self.net, self.n, manager);
        args.extend(extra.iter().cloned());
        (1..=self.n)
            .map(|h| start(&self.net, &self.root, h, &args, &self.pki))
            .collect()
    }

    /// `etcdctl` inside host `h` against https://127.0.0.1:4001.
    pub fn etcdctl(&self, h: usize, args: &[&str]) -> Result<String, String> {
        etcdctl(&self.net, h, &self.certs, args)
    }

    /// The members (name and id) once all `n` are voters, named, and every
    /// host's own etcd answers on https://127.0.0.1:4001 (members leave
    /// quarantine, client port 3994 -> 4001, one restart at a time).
    pub async fn wait_formed(&self) -> Vec<serde_json::Value> {
        let n = self.n;
        let members = wait_for(
            "three voters seen through https://127.0.0.1:4001",
            Duration::from_secs(120),
            || {
                let out = self.etcdctl(1, &["member", "list", "-w", "json"]);
                async move {
                    let v: serde_json::Value = serde_json::from_str(&out.ok()?).ok()?;
                    let ms = v["members"].as_array()?.clone();
                    (ms.len() == n
                        && ms.iter().all(|m| {
                            m["name"].as_str().is_some_and(|s| !s.is_empty())
                                && m["isLearner"].as_bool() != Some(true)
                        }))
                    .then_some(ms)
                }
            },
        )
        .await;
        wait_for(
            "every host's etcd serving on https://127.0.0.1:4001",
            Duration::from_secs(60),
            || {
                let ok = (1..=n).all(|h| self.etcdctl(h, &["endpoint", "health"]).is_ok());
                async move { ok.then_some(()) }
            },
        )
        .await;
        members
    }

    /// SIGTERM to every go-runner; each exits 0 (the manager stopped
    /// cleanly, its etcd with it).
    pub async fn stop_all(&self, children: &mut [std::process::Child]) {
        for c in children.iter() {
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
            let console = std::fs::read_to_string(self.root.join(format!("console-{}.log", h + 1)))
                .unwrap_or_default();
            assert!(status.success(), "host {}: {status}\n{console}", h + 1);
        }
    }

    /// Backups in the shared store: (upstream's, ours), oldest first.
    pub fn backups(&self) -> (Vec<String>, Vec<String>) {
        backups_in(&self.root.join("backups"))
    }
}

/// The complete backups (data and meta file) in a file store at `dir`:
/// (upstream's, ours), oldest first. Ours carry our side file; upstream's
/// only its two files.
pub(crate) fn backups_in(dir: &Path) -> (Vec<String>, Vec<String>) {
    let (mut up, mut ours) = (vec![], vec![]);
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if !p.join("etcd.backup.gz").exists() || !p.join("_etcd_backup.meta").exists() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if p.join("etcd-manager-backup.json").exists() {
            ours.push(name);
        } else {
            up.push(name);
        }
    }
    up.sort();
    ours.sort();
    (up, ours)
}

/// Host `h`'s volume, where kops' metal layout has it (`--volume-tag` is
/// `<cluster>--main--`, the folder name is the member's name).
pub(crate) fn volume(root: &Path, h: usize) -> PathBuf {
    host_root(root, h).join(format!("mnt/disks/{CLUSTER}--main--{h}/mnt"))
}

/// What upstream's manager reads to take a metal volume back
/// (`pkg/volumes/external`, `pkg/etcd/etcdserver.go` at v3.0.20260707): its
/// id is the volume folder's name (no `myid`), its `state` protobuf in the
/// volume names that id among the cluster's nodes, etcd's data is in
/// `data/<token>`, its keys (the member's certificates beside it, the CAs
/// in `pki`) RSA.
pub(crate) fn assert_upstream_reads_the_volumes(root: &Path, pki: &Path, n: usize) {
    for h in 1..=n {
        let mnt = volume(root, h);
        let pb = etcd_manager::node::upstream_state::read(&mnt)
            .unwrap()
            .unwrap_or_else(|| panic!("upstream's state in {}", mnt.display()));
        let local = etcd_manager::node::upstream_state::from_upstream(&pb)
            .unwrap()
            .expect("a cluster");
        assert_eq!(local.etcd_version, VERSION, "{local:?}");
        assert!(!local.quarantined, "{local:?}");
        assert_eq!(local.nodes.len(), n, "{local:?}");
        let name = format!("{CLUSTER}--main--{h}");
        assert!(
            local.nodes.iter().any(|m| m.name == name),
            "{name} among {local:?}"
        );
        let data = mnt.join("data").join(&local.cluster_token);
        assert!(data.join("member").is_dir(), "{}", data.display());
        // Upstream loads the member's key files where ours left them, and
        // the CAs; it reads RSA keys only.
        let certs = mnt.join("pki").join(&local.cluster_token);
        for key in [certs.join("peers/me.key"), certs.join("clients/server.key")]
            .into_iter()
            .chain(
                ["etcd-manager-ca", "etcd-peers-ca", "etcd-clients-ca"]
                    .map(|ca| pki.join(format!("{ca}.key"))),
            )
        {
            let pem = std::fs::read_to_string(&key).unwrap();
            assert!(
                etcd_manager::platform::pki::is_rsa_key_pem(&pem),
                "{}: upstream reads only RSA keys",
                key.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kops_metal_manifest_runs_unchanged_on_three_hosts() {
    if !tests::netns::root_or_skip("the kops metal test") {
        return;
    }
    let n = 3;
    let metal = Metal::new(n);
    let (root, net, certs) = (metal.root.as_path(), &metal.net, &metal.certs);
    let mut children = metal.start_all(Path::new(env!("CARGO_BIN_EXE_etcd-manager")), &[]);
    let members = metal.wait_formed().await;
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
    let status = metal
        .etcdctl(2, &["endpoint", "status", "-w", "json"])
        .unwrap();
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
    metal.etcdctl(2, &["put", "/kops/metal", "works"]).unwrap();
    assert!(
        metal
            .etcdctl(3, &["get", "/kops/metal"])
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
        &metal.ctl_bin,
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
    metal.stop_all(&mut children).await;
    // What upstream's manager needs to take the cluster back is on every
    // volume (tests/e2e/mixed.rs goes back with upstream's own binary).
    assert_upstream_reads_the_volumes(root, &metal.pki, n);
}
