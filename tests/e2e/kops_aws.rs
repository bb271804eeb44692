//! kops' AWS manifest, verbatim but for the store and the binary's path, on
//! three hosts: network namespaces on a bridge of their own whose root-side
//! address runs moto (EC2 and S3) and one instance-metadata responder per
//! instance; EBS volumes in moto, tagged as kops tags them, backed by loop
//! devices behind the Nitro by-id links production looks for. Each host runs
//! in a mount namespace whose folder is `/rootfs` (with the machine's `/dev`
//! in it), so the volumes are mounted where upstream mounts them and nowhere
//! else. Needs root; CI runs as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::ec2::Ec2Setup;
use tests::imds::Imds;
use tests::netns::{Net, run};
use tests::wait_for;

const PREFIX: &str = "ema";
/// The root namespace's address on the hosts' bridge: moto and the
/// metadata responders listen there.
const BRIDGE_HOST: u8 = 254;
const REGION: &str = "eu-west-1";
const ZONE: &str = "eu-west-1a";
const KOPS_CLUSTER: &str = "minimal-aws.example.com";
const BUCKET: &str = "kops-state";

/// kops' AWS arguments (tests/data/kops/aws-main.args) with the store in
/// moto's S3 and our binary.
fn aws_args(manager: &Path) -> Vec<String> {
    include_str!("../data/kops/aws-main.args")
        .lines()
        .map(|l| {
            if l.starts_with("--backup-store=") {
                format!("--backup-store=s3://{BUCKET}/{KOPS_CLUSTER}/backups/etcd/main")
            } else {
                l.replace("/ko-app/etcd-manager", &manager.display().to_string())
            }
        })
        .collect()
}

/// Loop devices for the volumes and the by-id links AWS's Nitro hosts have;
/// links removed and devices detached on drop.
struct Disks(Vec<(PathBuf, String)>);

impl Disks {
    fn add(&mut self, dir: &Path, volume: &str) {
        let img = dir.join(format!("{volume}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&img))
            .unwrap()
            .trim()
            .to_string();
        std::fs::create_dir_all("/dev/disk/by-id").unwrap();
        let link = PathBuf::from(format!(
            "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
            volume.replace('-', "")
        ));
        let _ = std::fs::remove_file(&link);
        let target = format!("../../{}", dev.trim_start_matches("/dev/"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        self.0.push((link, dev));
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        for (link, dev) in &self.0 {
            let _ = std::fs::remove_file(link);
            let _ = Command::new("losetup").args(["-d", dev]).output();
        }
    }
}

/// Host `h`'s folder, mounted as its `/rootfs`.
fn host_root(root: &Path, h: usize) -> PathBuf {
    root.join(format!("h{h}"))
}

struct Cloud {
    moto: String,
    pki: PathBuf,
}

/// Start host `h` (instance metadata at `imds`): a mount namespace with its
/// folders in place, then `go-runner <kops' arguments>`.
fn start(net: &Net, root: &Path, h: usize, cloud: &Cloud, imds: &str) -> std::process::Child {
    let hr = host_root(root, h);
    for d in ["dev", "mnt", "etc", "var-log"] {
        std::fs::create_dir_all(hr.join(d)).unwrap();
    }
    std::fs::write(hr.join("etc/hosts"), "127.0.0.1\tlocalhost\n").unwrap();
    let script = format!(
        "set -e; mount --bind {hr} /rootfs; mount --rbind /dev /rootfs/dev; \
         mount --bind {hr}/var-log /var/log; mount --bind {hr}/etc/hosts /etc/hosts; exec \"$@\"",
        hr = hr.display(),
    );
    let args = aws_args(Path::new(env!("CARGO_BIN_EXE_etcd-manager")));
    let pki = cloud.pki.display().to_string();
    let path = format!(
        "/usr/sbin:/sbin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    tests::netns::spawn_in_host(
        &net.ns(h),
        &script,
        Path::new(env!("CARGO_BIN_EXE_go-runner")),
        &args,
        &[
            ("ETCD_MANAGER_PKI_DIR", &pki),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds),
            ("AWS_ENDPOINT_URL_EC2", &cloud.moto),
            ("S3_ENDPOINT", &cloud.moto),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            // kops sets the region of its test cluster; the manager must take
            // the instance's region from the metadata instead (as upstream).
            ("AWS_REGION", "us-test-1"),
            ("ETCD_MANAGER_BACKUP_INTERVAL", "10s"),
            ("ETCD_MANAGER_DAILY_BACKUPS_RETENTION", "90d"),
            ("PATH", &path),
        ],
        &root.join(format!("console-{h}.log")),
    )
}

/// A TLS client of host `h`'s etcd, from the root namespace.
async fn client(net: &Net, h: usize, tls: &etcd::ClientTls) -> Option<etcd::EtcdClient> {
    etcd::EtcdClient::connect_with(
        &[format!("https://{}:4001", net.ip_of(h))],
        Duration::from_secs(3),
        Some(tls),
    )
    .await
    .ok()
}

/// The members as host `h` sees them, when there are three named voters.
async fn three_voters(net: &Net, h: usize, tls: &etcd::ClientTls) -> Option<Vec<etcd::Member>> {
    let ms = client(net, h, tls).await?.member_list().await.ok()?;
    (ms.len() == 3 && ms.iter().all(|m| !m.is_learner && !m.name.is_empty())).then_some(ms)
}

/// etcd-manager-ctl against the cluster's store in moto's S3.
fn store_ctl(env: &tests::ClusterEnv, moto: &tests::Moto, args: &[&str]) -> tests::CtlOutput {
    let mut full = vec![format!(
        "-backup-store=s3://{BUCKET}/{KOPS_CLUSTER}/backups/etcd/main"
    )];
    full.extend(args.iter().map(|a| a.to_string()));
    tests::run_ctl_env(
        &env.ctl_bin,
        &full,
        &[
            ("S3_ENDPOINT".into(), moto.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kops_aws_manifest_claims_volumes_and_survives_a_replaced_master() {
    if !tests::netns::root_or_skip("the kops AWS test") {
        return;
    }
    if tests::which("moto_server").is_none() {
        tests::tool_missing("moto_server is not on PATH (scripts/setup.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all("/rootfs").unwrap();
    let mut net = Net::up(PREFIX, 3, Some(BRIDGE_HOST));
    let _consoles = tests::netns::Consoles(root.to_path_buf(), vec![1, 2, 3, 4]);
    let bridge_ip = net.ip_of(BRIDGE_HOST as usize);
    let moto = tests::Moto::start(&bridge_ip, Some(&root.join("moto.log")))
        .await
        .unwrap();
    moto.create_bucket(BUCKET).await.unwrap();
    let ec2 = Ec2Setup::new(&moto.endpoint(), REGION);
    ec2.ready().await;
    let subnet = ec2.subnet(&format!("{}.0/24", net.subnet()), ZONE).await;

    // The PKI kops makes, and a client certificate for the test.
    let env = crate::env(&tempfile::tempdir().unwrap());
    let pki = root.join("pki");
    let certs = root.join("client");
    for args in [
        vec![
            "init-pki".to_string(),
            format!("-pki-dir={}", pki.display()),
        ],
        vec![
            "issue-client-cert".to_string(),
            format!("-pki-dir={}", pki.display()),
            certs.display().to_string(),
        ],
    ] {
        let out = tests::run_ctl(&env.ctl_bin, &args);
        assert!(out.success, "{args:?}: {}", out.stderr);
    }
    let read = |f: &str| std::fs::read_to_string(certs.join(f)).unwrap();
    let tls = etcd::ClientTls {
        ca_pem: read("ca.crt"),
        cert_pem: read("client.crt"),
        key_pem: read("client.key"),
    };
    let cloud = Cloud {
        moto: moto.endpoint(),
        pki: pki.clone(),
    };

    // Three masters' volumes as kops tags them, on loop devices.
    let mut disks = Disks(vec![]);
    let mut volumes = vec![];
    for name in ["a", "b", "c"] {
        let v = ec2
            .create_volume(
                ZONE,
                &[
                    ("k8s.io/etcd/main", &format!("{name}/a,b,c")),
                    ("k8s.io/role/control-plane", "1"),
                    (&format!("kubernetes.io/cluster/{KOPS_CLUSTER}"), "owned"),
                    ("Name", &format!("{name}.etcd-main.{KOPS_CLUSTER}")),
                ],
            )
            .await;
        disks.add(root, &v);
        volumes.push(v);
    }
    // A volume of another cluster in the same zone is never claimed.
    let foreign = ec2
        .create_volume(
            ZONE,
            &[
                ("k8s.io/etcd/main", "a/a"),
                ("k8s.io/role/control-plane", "1"),
                ("kubernetes.io/cluster/other.example.com", "owned"),
            ],
        )
        .await;

    // The masters, started one after another (moto lets a second attach
    // take an attached volume, which EC2 refuses: see the unit tests for
    // the race).
    let mut instances = vec![String::new()];
    let mut responders = vec![];
    let mut children = vec![];
    for h in 1..=3 {
        let id = ec2.run_instance(&subnet, &net.ip_of(h)).await;
        let imds = Imds::start(&bridge_ip, &id, ZONE, &net.ip_of(h)).await;
        children.push(start(&net, root, h, &cloud, &imds.endpoint()));
        let claimed = wait_for(
            &format!("host {h} attaching a volume"),
            Duration::from_secs(60),
            || {
                let (ec2, volumes, id) = (&ec2, &volumes, id.clone());
                async move {
                    for v in volumes {
                        if ec2.attached_to(v).await.as_deref() == Some(id.as_str()) {
                            return Some(v.clone());
                        }
                    }
                    None
                }
            },
        )
        .await;
        println!("host {h} ({id}) claimed {claimed}");
        instances.push(id);
        responders.push(imds);
    }
    assert_eq!(ec2.attached_to(&foreign).await, None);
    // kops writes the cluster spec into the store.
    let configured = store_ctl(
        &env,
        &moto,
        &[
            "-member-count=3",
            "-etcd-version=3.6.16",
            "configure-cluster",
        ],
    );
    assert!(configured.success, "{configured:?}");

    let members = wait_for(
        "three voters named from the volumes' tags",
        Duration::from_secs(180),
        || {
            let (net, tls) = (&net, &tls);
            async move { three_voters(net, 1, tls).await }
        },
    )
    .await;
    let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["etcd-a", "etcd-b", "etcd-c"]);
    for m in &members {
        assert!(
            m.peer_urls
                .iter()
                .all(|u| u == &format!("https://{}.internal.{KOPS_CLUSTER}:2380", m.name)),
            "{m:?}"
        );
    }
    wait_for("every member healthy", Duration::from_secs(60), || {
        let (net, tls) = (&net, &tls);
        async move {
            for h in 1..=3 {
                if !client(net, h, tls).await?.healthy().await {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    // The data is on the volume: the mount point upstream uses, on host 1.
    let log1 = std::fs::read_to_string(root.join("console-1.log")).unwrap();
    assert!(log1.contains("using the AWS volume"), "{log1}");
    assert!(log1.contains("/rootfs/mnt/master-vol-"), "{log1}");

    // A writer through hosts 1 and 3 while host 2's master is replaced.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writers: Vec<etcd::EtcdClient> = vec![
        client(&net, 1, &tls).await.unwrap(),
        client(&net, 3, &tls).await.unwrap(),
    ];
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    let acks = move || count.load(std::sync::atomic::Ordering::SeqCst);
    let writer = tokio::spawn(async move {
        let mut acked = vec![];
        let mut n = 0u64;
        let start = Instant::now();
        while !*stop_rx.borrow() && start.elapsed() < Duration::from_secs(300) {
            let key = format!("/writer/{n:08}");
            if writers[(n % 2) as usize].put(&key, "v").await.is_ok() {
                acked.push(key);
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    });
    wait_for("a backup in S3", Duration::from_secs(60), || {
        let out = store_ctl(&env, &moto, &["list-backups"]);
        async move {
            (out.success && out.stdout.lines().any(|l| l.trim().starts_with("20"))).then_some(())
        }
    })
    .await;
    // kops passes no gossip key: gossip is keyed from the CA all the same.
    wait_for("status: gossip keyed from the CA", Duration::from_secs(60), || {
        let out = store_ctl(&env, &moto, &["status"]);
        async move {
            out.stdout
                .contains("gossip:      authenticated and encrypted (key derived from the etcd-manager CA)\n")
                .then_some(())
        }
    })
    .await;

    // Host 2 is terminated: its processes and network gone, its volume
    // detached as AWS detaches it, a new instance at a new address.
    let ids_before: Vec<u64> = {
        let mut v: Vec<u64> = members.iter().map(|m| m.id).collect();
        v.sort();
        v
    };
    let old = instances[2].clone();
    let volume = {
        let mut found = None;
        for v in &volumes {
            if ec2.attached_to(v).await.as_deref() == Some(old.as_str()) {
                found = Some(v.clone());
            }
        }
        found.expect("host 2's volume")
    };
    let before_loss = acks();
    wait_for("the writer acknowledged", Duration::from_secs(60), || {
        let n = acks();
        async move { (n >= before_loss.max(20)).then_some(()) }
    })
    .await;
    let mut host2 = children.remove(1);
    net.remove(2);
    let _ = host2.wait();
    ec2.detach(&volume, &old).await;
    ec2.terminate(&old).await;
    net.add(4);
    let id4 = ec2.run_instance(&subnet, &net.ip_of(4)).await;
    let imds4 = Imds::start(&bridge_ip, &id4, ZONE, &net.ip_of(4)).await;
    let started = Instant::now();
    children.push(start(&net, root, 4, &cloud, &imds4.endpoint()));
    wait_for(
        "the new master's member healthy on the old volume",
        Duration::from_secs(180),
        || {
            let (net, tls) = (&net, &tls);
            async move { client(net, 4, tls).await?.healthy().await.then_some(()) }
        },
    )
    .await;
    let took = started.elapsed();
    println!(
        "BENCH replaced master on AWS -> member healthy again: {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(
        ec2.attached_to(&volume).await.as_deref(),
        Some(id4.as_str())
    );
    let after = wait_for(
        "three voters again, the same ones",
        Duration::from_secs(60),
        || {
            let (net, tls) = (&net, &tls);
            async move { three_voters(net, 4, tls).await }
        },
    )
    .await;
    let mut ids_after: Vec<u64> = after.iter().map(|m| m.id).collect();
    ids_after.sort();
    assert_eq!(ids_before, ids_after, "no member removed or added");
    let log4 = std::fs::read_to_string(root.join("console-4.log")).unwrap();
    for l in log4
        .lines()
        .filter(|l| l.contains("volume") || l.contains("started etcd"))
    {
        println!("host 4: {l}");
    }
    assert!(
        log4.contains("the volume is attached to this instance already")
            || log4.contains("attaching the volume"),
        "{log4}"
    );
    assert!(
        !log4.contains("formatting it"),
        "the old volume is not formatted again: {log4}"
    );

    // Writes keep being acknowledged with the member back.
    let back = acks();
    wait_for(
        "writes after the replacement",
        Duration::from_secs(60),
        || {
            let n = acks();
            async move { (n >= back + 20).then_some(()) }
        },
    )
    .await;
    stop_tx.send(true).unwrap();
    let acked = writer.await.unwrap();
    let c4 = client(&net, 4, &tls).await.unwrap();
    let keys = c4.keys_with_prefix("/writer/").await.unwrap();
    let missing: Vec<&String> = acked.iter().filter(|k| !keys.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    println!("{} acknowledged writes, none lost", acked.len());
    for mut c in children {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = c.wait();
    }
    drop(responders);
}
