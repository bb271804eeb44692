//! `--volume-provider=aws`, as upstream: this instance (IMDSv2) claims one
//! EBS volume in its zone carrying every `--volume-tag`, attaches it, waits
//! for its device, formats it when blank (ext4), mounts it at
//! `/mnt/master-<volume>` (under `/rootfs` with `--containerized`) and runs
//! the member named by the volume's `--volume-name-tag` value on it. When an
//! auto-scaling group replaces a master, the new instance attaches the old
//! volume and the member comes back with its data.
//!
//! Peers are the private addresses of the instances the other tagged
//! volumes are attached to, re-read every `--discovery-poll-interval` and
//! written as upstream's seeds folder (one file per address) for gossip.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ec2::{Ec2, Ec2Error, Volume};
use crate::clock::Clock;

/// The device names asked for at attach, in order (upstream's list, with
/// its duplicate `xvdx` replaced by the missing `xvdw`).
pub const DEVICES: [&str; 6] = [
    "/dev/xvdu",
    "/dev/xvdv",
    "/dev/xvdw",
    "/dev/xvdx",
    "/dev/xvdy",
    "/dev/xvdz",
];
/// A volume attached as one of these is a root volume, never ours.
const ROOT_DEVICES: [&str; 2] = ["/dev/sda1", "/dev/xvda"];
/// How often an attachment is looked at while it completes.
const ATTACH_POLL: Duration = Duration::from_secs(1);
/// How long an attachment may take before the claim starts over.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the device of an attached volume is looked for.
const DEVICE_POLL: Duration = Duration::from_secs(1);
const DEVICE_TIMEOUT: Duration = Duration::from_secs(300);
/// mkfs, fsck, mount, resize2fs: how long each may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(600);

/// What the flags say about the volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsVolumes {
    /// `--cluster-name`: the member name is `<cluster>-<name tag value>`.
    pub cluster_name: String,
    /// `--volume-tag`s: `key` (the tag exists) or `key=value`.
    pub tags: Vec<String>,
    /// `--volume-name-tag`: its value up to `/` names the member.
    pub name_tag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AwsVolumeError {
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(
        "volume {volume} was attached to {instance} but no device appeared within {after:?} (looked for {looked}); is the volume attached to this instance?"
    )]
    NoDevice {
        volume: String,
        instance: String,
        after: Duration,
        looked: String,
    },
    #[error("{tool} on {device} failed: {reason}")]
    Tool {
        tool: String,
        device: String,
        reason: String,
    },
    #[error(
        "device {device} of volume {volume} has a partition table and no file system: refusing to format it; check that the --volume-tag filters match only etcd volumes"
    )]
    Partitioned { device: String, volume: String },
}

/// The DescribeVolumes filters for the tags, and the zone when given.
pub fn tag_filters(tags: &[String], zone: Option<&str>) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    if let Some(z) = zone {
        out.push(("availability-zone".to_string(), vec![z.to_string()]));
    }
    for t in tags {
        match t.split_once('=') {
            Some((k, v)) => out.push((format!("tag:{k}"), vec![v.to_string()])),
            None => out.push(("tag-key".to_string(), vec![t.clone()])),
        }
    }
    out
}

/// The member a volume holds: `<cluster>-<name tag value up to '/'>` (kops
/// tags `k8s.io/etcd/main = a/a,b,c`, so `etcd-a`), else the volume id, as
/// upstream names it. A name that is no valid member name falls back to the
/// volume id.
pub fn member_name(cluster_name: &str, name_tag: &str, v: &Volume) -> String {
    let from_tag = v
        .tags
        .get(name_tag)
        .filter(|_| !name_tag.is_empty())
        .map(|val| val.split('/').next().unwrap_or_default())
        .filter(|n| !n.is_empty())
        .map(|n| format!("{cluster_name}-{n}"));
    match from_tag {
        Some(n) if etcd::check_ident(etcd::IdentKind::MemberName, &n).is_ok() => n,
        Some(n) => {
            tracing::warn!(volume = %v.id, name = %n, "the name tag gives no valid member name; using the volume id");
            v.id.clone()
        }
        None => v.id.clone(),
    }
}

/// The volume attached to `me` already (as a non-root device), if any, and
/// its device name.
pub fn attached_to_me<'a>(vols: &'a [Volume], me: &str) -> Option<(&'a Volume, String)> {
    vols.iter().find_map(|v| {
        v.attachments
            .iter()
            .find(|a| {
                a.instance_id == me
                    && matches!(a.state.as_str(), "attaching" | "attached")
                    && !ROOT_DEVICES.contains(&a.device.as_str())
            })
            .map(|a| (v, a.device.clone()))
    })
}

/// The free volumes in the order `me` tries them: by id, starting at a place
/// that depends on `me`, so masters racing at once mostly try different ones.
pub fn free_in_order<'a>(vols: &'a [Volume], me: &str) -> Vec<&'a Volume> {
    let mut free: Vec<&Volume> = vols
        .iter()
        .filter(|v| v.state == "available" && v.attachments.is_empty())
        .collect();
    free.sort_by(|a, b| a.id.cmp(&b.id));
    if !free.is_empty() {
        let start = me
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
            % free.len();
        free.rotate_left(start);
    }
    free
}

/// The volume this instance holds: the one attached to it already, else one
/// it attaches now. Waits (every `poll`) while there is none; None when
/// cancelled meanwhile.
pub async fn claim(
    ec2: &dyn Ec2,
    spec: &AwsVolumes,
    instance: &str,
    zone: &str,
    poll: Duration,
    clock: &dyn Clock,
    cancel: &CancellationToken,
) -> Result<Option<(Volume, String)>, AwsVolumeError> {
    let filters = tag_filters(&spec.tags, Some(zone));
    let mut said = false;
    loop {
        let vols = ec2.describe_volumes(&filters).await?;
        if let Some((v, device)) = attached_to_me(&vols, instance) {
            tracing::info!(volume = %v.id, %device, "the volume is attached to this instance already");
            let v = v.clone();
            return Ok(wait_attached(ec2, &v.id, instance, clock, cancel)
                .await?
                .map(|d| (v, d)));
        }
        let used: BTreeSet<&str> = vols
            .iter()
            .flat_map(|v| v.attachments.iter())
            .filter(|a| a.instance_id == instance)
            .map(|a| a.device.as_str())
            .collect();
        'volumes: for v in free_in_order(&vols, instance) {
            for device in DEVICES.iter().filter(|d| !used.contains(**d)) {
                match ec2.attach_volume(&v.id, instance, device).await {
                    Ok(()) => {}
                    Err(e) if e.is("InvalidParameterValue") => {
                        tracing::info!(volume = %v.id, %device, error = %e, "device name taken; trying the next");
                        continue;
                    }
                    Err(e) if e.is("VolumeInUse") || e.is("IncorrectState") => {
                        tracing::info!(volume = %v.id, error = %e, "another master took this volume first; trying another");
                        continue 'volumes;
                    }
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(volume = %v.id, %device, "attaching the volume");
                match wait_attached(ec2, &v.id, instance, clock, cancel).await {
                    Ok(Some(dev)) => return Ok(Some((v.clone(), dev))),
                    Ok(None) => return Ok(None),
                    Err(Lost::To(other)) => {
                        tracing::warn!(volume = %v.id, winner = %other, "lost the race for this volume to another instance; trying another");
                        continue 'volumes;
                    }
                    Err(Lost::Ec2(e)) => return Err(e.into()),
                    Err(Lost::Timeout) => {
                        tracing::warn!(volume = %v.id, "the attachment did not complete in time; looking again");
                        break 'volumes;
                    }
                }
            }
        }
        if !said {
            tracing::warn!(%zone, tags = ?spec.tags, "waiting for a volume: none in this zone with every --volume-tag is free");
            said = true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = clock.sleep(poll) => {}
        }
    }
}

/// Why an attachment did not become ours.
#[derive(Debug)]
enum Lost {
    /// Attached to that instance instead.
    To(String),
    Timeout,
    Ec2(Ec2Error),
}

impl From<Lost> for AwsVolumeError {
    fn from(l: Lost) -> AwsVolumeError {
        match l {
            Lost::Ec2(e) => e.into(),
            Lost::To(other) => AwsVolumeError::Ec2(Ec2Error {
                action: "AttachVolume",
                code: None,
                message: format!("attached to {other} instead"),
            }),
            Lost::Timeout => AwsVolumeError::Ec2(Ec2Error {
                action: "AttachVolume",
                code: None,
                message: format!("not attached within {ATTACH_TIMEOUT:?}"),
            }),
        }
    }
}

/// Wait until `volume` is attached to `me`: its device name. None when
/// cancelled.
async fn wait_attached(
    ec2: &dyn Ec2,
    volume: &str,
    me: &str,
    clock: &dyn Clock,
    cancel: &CancellationToken,
) -> Result<Option<String>, Lost> {
    let filters = [("volume-id".to_string(), vec![volume.to_string()])];
    let deadline = clock.now() + ATTACH_TIMEOUT;
    loop {
        let vols = ec2.describe_volumes(&filters).await.map_err(Lost::Ec2)?;
        let Some(v) = vols.iter().find(|v| v.id == volume) else {
            return Err(Lost::Ec2(Ec2Error {
                action: "DescribeVolumes",
                code: None,
                message: format!("volume {volume} disappeared while it was attached"),
            }));
        };
        if let Some(other) = v.attachments.iter().find(|a| a.instance_id != me) {
            return Err(Lost::To(other.instance_id.clone()));
        }
        if let Some(a) = v
            .attachments
            .iter()
            .find(|a| a.instance_id == me && a.state == "attached")
        {
            return Ok(Some(a.device.clone()));
        }
        if clock.now() >= deadline {
            return Err(Lost::Timeout);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = clock.sleep(ATTACH_POLL) => {}
        }
    }
}

/// `path` under `root` (`/` or `/rootfs`).
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The local device of `volume` attached as `device`: the device name when
/// it exists (Xen), else the Nitro NVMe link
/// `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_<volume without '-'>`,
/// which must point into `/dev`. None while neither is there.
pub fn find_device(root: &Path, volume: &str, device: &str) -> Option<PathBuf> {
    let named = under(root, device);
    if super::ec2::valid_device_name(device)
        && named.exists()
        && std::fs::canonicalize(&named).is_ok_and(|t| t.starts_with(under(root, "/dev")))
    {
        return Some(named);
    }
    let link = under(
        root,
        &format!(
            "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
            volume.replace('-', "")
        ),
    );
    let meta = std::fs::symlink_metadata(&link).ok()?;
    if !meta.file_type().is_symlink() {
        tracing::warn!(link = %link.display(), "the NVMe by-id entry is not a link; ignoring it");
        return None;
    }
    let target = std::fs::canonicalize(&link).ok()?;
    target.starts_with(under(root, "/dev")).then_some(target)
}

/// Wait for [`find_device`].
pub async fn wait_device(
    root: &Path,
    volume: &str,
    instance: &str,
    device: &str,
    clock: &dyn Clock,
    cancel: &CancellationToken,
) -> Result<Option<PathBuf>, AwsVolumeError> {
    let deadline = clock.now() + DEVICE_TIMEOUT;
    loop {
        if let Some(d) = find_device(root, volume, device) {
            return Ok(Some(d));
        }
        if clock.now() >= deadline {
            return Err(AwsVolumeError::NoDevice {
                volume: volume.to_string(),
                instance: instance.to_string(),
                after: DEVICE_TIMEOUT,
                looked: format!(
                    "{} and {}",
                    under(root, device).display(),
                    under(
                        root,
                        &format!(
                            "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
                            volume.replace('-', "")
                        )
                    )
                    .display()
                ),
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = clock.sleep(DEVICE_POLL) => {}
        }
    }
}

/// Where upstream mounts `volume`: `/mnt/master-<volume>`, or under
/// `/mnt/disks` where that folder exists (Container-Optimized OS); under
/// `root`.
pub fn mount_point(root: &Path, volume: &str) -> PathBuf {
    if under(root, "/mnt/disks").is_dir() {
        under(root, &format!("/mnt/disks/master-{volume}"))
    } else {
        under(root, &format!("/mnt/master-{volume}"))
    }
}

/// Whether something is mounted at `path` (per /proc/self/mountinfo).
fn is_mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == want)
}

async fn tool(
    program: &str,
    args: &[&str],
    device: &Path,
) -> Result<std::process::Output, AwsVolumeError> {
    let err = |reason: String| AwsVolumeError::Tool {
        tool: program.to_string(),
        device: device.display().to_string(),
        reason,
    };
    // The one place the volume provider runs host tools (blkid, mkfs.ext4,
    // fsck, mount, resize2fs), each bounded by TOOL_TIMEOUT.
    #[allow(clippy::disallowed_methods)]
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    match tokio::time::timeout(TOOL_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(err(format!("cannot run it: {e}"))),
        Err(_) => Err(err(format!("still running after {TOOL_TIMEOUT:?}"))),
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )
    .chars()
    .take(500)
    .collect()
}

/// Format `device` when it is blank (ext4, as upstream: `mkfs.ext4 -F -m0`),
/// check it when it is not (`fsck -a`), mount it at `at` and grow the file
/// system to the volume. Mounted already: nothing to do.
pub async fn format_and_mount(
    device: &Path,
    volume: &str,
    at: &Path,
) -> Result<(), AwsVolumeError> {
    if is_mounted(at) {
        tracing::info!(mount = %at.display(), "the volume is mounted already");
        return Ok(());
    }
    let dev = device.display().to_string();
    let tool_err = |tool: &str, reason: String| AwsVolumeError::Tool {
        tool: tool.to_string(),
        device: dev.clone(),
        reason,
    };
    let probe = tool(
        "blkid",
        &["-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", &dev],
        device,
    )
    .await?;
    match probe.status.code() {
        // blkid: nothing found.
        Some(2) => {
            tracing::info!(device = %dev, %volume, "the volume is blank; formatting it (ext4)");
            let out = tool("mkfs.ext4", &["-F", "-m0", &dev], device).await?;
            if !out.status.success() {
                return Err(tool_err("mkfs.ext4", text(&out)));
            }
        }
        Some(0) => {
            let found = String::from_utf8_lossy(&probe.stdout).into_owned();
            let fs_type = found.lines().find_map(|l| l.strip_prefix("TYPE="));
            match fs_type {
                Some(t) => {
                    tracing::info!(device = %dev, fs = %t, "checking the volume's file system");
                    let out = tool("fsck", &["-a", &dev], device).await?;
                    // fsck: 0 clean, 1 corrected, 2 reboot advised; 4+ errors left.
                    if out.status.code().is_none_or(|c| c >= 4) {
                        return Err(tool_err("fsck -a", text(&out)));
                    }
                }
                None => {
                    return Err(AwsVolumeError::Partitioned {
                        device: dev.clone(),
                        volume: volume.to_string(),
                    });
                }
            }
        }
        _ => return Err(tool_err("blkid", text(&probe))),
    }
    std::fs::create_dir_all(at).map_err(|e| tool_err("mkdir", format!("{}: {e}", at.display())))?;
    let at_text = at.display().to_string();
    let out = tool(
        "mount",
        &["-t", "ext4", "-o", "defaults", &dev, &at_text],
        device,
    )
    .await?;
    if !out.status.success() {
        return Err(tool_err("mount", text(&out)));
    }
    tracing::info!(device = %dev, mount = %at_text, %volume, "mounted the volume");
    match tool("resize2fs", &[&dev], device).await {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            tracing::warn!(device = %dev, output = %text(&out), "resize2fs failed; the file system keeps its size")
        }
        Err(e) => {
            tracing::warn!(error = %e, "resize2fs did not run; the file system keeps its size")
        }
    }
    Ok(())
}

/// The private addresses of the instances the tagged volumes (every zone)
/// are attached to, this one's included.
pub async fn peer_addresses(
    ec2: &dyn Ec2,
    tags: &[String],
) -> Result<BTreeSet<std::net::IpAddr>, Ec2Error> {
    let vols = ec2.describe_volumes(&tag_filters(tags, None)).await?;
    let ids: Vec<String> = vols
        .iter()
        .flat_map(|v| v.attachments.iter())
        .filter(|a| matches!(a.state.as_str(), "attaching" | "attached"))
        .map(|a| a.instance_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let instances = ec2.describe_instances(&ids).await?;
    Ok(instances
        .into_iter()
        .filter_map(|i| i.addresses.first().copied())
        .collect())
}

/// Write `addrs` as upstream's seeds folder: one empty file per address,
/// others removed. Returns whether anything changed.
pub fn write_seeds(dir: &Path, addrs: &BTreeSet<std::net::IpAddr>) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let mut changed = false;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| addrs.contains(&ip))
        {
            std::fs::remove_file(e.path())?;
            changed = true;
        }
    }
    for ip in addrs {
        let p = dir.join(ip.to_string());
        if !p.exists() {
            std::fs::write(&p, b"")?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Keep the seeds folder in step with EC2 until cancelled: every 5 s for the
/// first two minutes (a new cluster finds itself quickly), then every
/// `interval`.
pub async fn run_discovery(
    ec2: std::sync::Arc<dyn Ec2>,
    tags: Vec<String>,
    dir: PathBuf,
    interval: Duration,
    clock: std::sync::Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    let started = clock.now();
    loop {
        match peer_addresses(ec2.as_ref(), &tags).await {
            Ok(addrs) => match write_seeds(&dir, &addrs) {
                Ok(true) => tracing::info!(peers = ?addrs, "peers from EC2"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot write the seeds folder")
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the peers' volumes and instances in EC2")
            }
        }
        let pause = if clock.now().saturating_duration_since(started) < Duration::from_secs(120) {
            Duration::from_secs(5).min(interval)
        } else {
            interval
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = clock.sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::ec2::{Attachment, Instance};
    use super::*;
    use std::sync::Mutex;

    fn vol(id: &str, attached: Option<(&str, &str)>, name: Option<&str>) -> Volume {
        Volume {
            id: id.into(),
            zone: "eu-west-1a".into(),
            state: if attached.is_some() {
                "in-use"
            } else {
                "available"
            }
            .into(),
            attachments: attached
                .map(|(i, d)| Attachment {
                    instance_id: i.into(),
                    device: d.into(),
                    state: "attached".into(),
                })
                .into_iter()
                .collect(),
            tags: name
                .map(|n| ("k8s.io/etcd/main".to_string(), n.to_string()))
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn tags_become_filters_as_upstream_makes_them() {
        let f = tag_filters(
            &[
                "k8s.io/etcd/main".into(),
                "k8s.io/role/control-plane=1".into(),
            ],
            Some("eu-west-1a"),
        );
        assert_eq!(
            f,
            vec![
                (
                    "availability-zone".to_string(),
                    vec!["eu-west-1a".to_string()]
                ),
                ("tag-key".into(), vec!["k8s.io/etcd/main".into()]),
                ("tag:k8s.io/role/control-plane".into(), vec!["1".into()]),
            ]
        );
    }

    #[test]
    fn the_member_is_named_by_the_tag_as_upstream_names_it() {
        let v = vol("vol-0123abcd", None, Some("a/a,b,c"));
        assert_eq!(member_name("etcd", "k8s.io/etcd/main", &v), "etcd-a");
        assert_eq!(member_name("etcd", "other", &v), "vol-0123abcd");
        let bad = vol("vol-0123abcd", None, Some("a b;c/a"));
        assert_eq!(
            member_name("etcd", "k8s.io/etcd/main", &bad),
            "vol-0123abcd"
        );
    }

    #[test]
    fn mine_first_then_free_ones_from_a_place_of_my_own() {
        let vols = vec![
            vol("vol-0000000a", Some(("i-other", "/dev/xvdu")), None),
            vol("vol-0000000b", None, None),
            vol("vol-0000000c", None, None),
            vol("vol-0000000d", Some(("i-me", "/dev/xvda")), None),
        ];
        assert!(
            attached_to_me(&vols, "i-me").is_none(),
            "a root volume is never ours"
        );
        let free: Vec<&str> = free_in_order(&vols, "i-me")
            .iter()
            .map(|v| v.id.as_str())
            .collect();
        assert_eq!(free.len(), 2);
        assert!(free.contains(&"vol-0000000b") && free.contains(&"vol-0000000c"));
        let mut vols = vols;
        vols.push(vol("vol-0000000e", Some(("i-me", "/dev/xvdv")), None));
        let (v, d) = attached_to_me(&vols, "i-me").unwrap();
        assert_eq!((v.id.as_str(), d.as_str()), ("vol-0000000e", "/dev/xvdv"));
    }

    /// EC2 as a script: volumes, and who wins each attach.
    struct Script {
        vols: Mutex<Vec<Volume>>,
        /// volume id -> the instance that takes it when we try.
        stolen: Vec<(String, String)>,
    }

    #[async_trait::async_trait]
    impl Ec2 for Script {
        async fn describe_volumes(
            &self,
            filters: &[(String, Vec<String>)],
        ) -> Result<Vec<Volume>, Ec2Error> {
            let vols = self.vols.lock().unwrap().clone();
            Ok(match filters.iter().find(|(n, _)| n == "volume-id") {
                Some((_, ids)) => vols.into_iter().filter(|v| ids.contains(&v.id)).collect(),
                None => vols,
            })
        }
        async fn attach_volume(
            &self,
            volume: &str,
            instance: &str,
            device: &str,
        ) -> Result<(), Ec2Error> {
            let mut vols = self.vols.lock().unwrap();
            let v = vols.iter_mut().find(|v| v.id == volume).unwrap();
            if !v.attachments.is_empty() {
                return Err(Ec2Error {
                    action: "AttachVolume",
                    code: Some("VolumeInUse".into()),
                    message: "in use".into(),
                });
            }
            let winner = self
                .stolen
                .iter()
                .find(|(vid, _)| vid == volume)
                .map_or(instance.to_string(), |(_, w)| w.clone());
            v.state = "in-use".into();
            v.attachments.push(Attachment {
                instance_id: winner,
                device: device.into(),
                state: "attached".into(),
            });
            Ok(())
        }
        async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Instance>, Ec2Error> {
            Ok(ids
                .iter()
                .enumerate()
                .map(|(n, id)| Instance {
                    id: id.clone(),
                    addresses: vec![format!("10.0.0.{}", n + 1).parse().unwrap()],
                })
                .collect())
        }
    }

    fn spec() -> AwsVolumes {
        AwsVolumes {
            cluster_name: "etcd".into(),
            tags: vec!["k8s.io/etcd/main".into()],
            name_tag: "k8s.io/etcd/main".into(),
        }
    }

    #[tokio::test]
    async fn a_lost_race_moves_on_to_another_volume() {
        let ec2 = Script {
            vols: Mutex::new(vec![
                vol("vol-0000000b", None, Some("b/a,b")),
                vol("vol-0000000c", None, Some("c/a,b")),
            ]),
            // Whichever we try first, the other master gets it.
            stolen: vec![],
        };
        let cancel = CancellationToken::new();
        let first = free_in_order(&ec2.vols.lock().unwrap(), "i-me")[0]
            .id
            .clone();
        let ec2 = Script {
            stolen: vec![(first.clone(), "i-other".into())],
            ..ec2
        };
        let (v, device) = claim(
            &ec2,
            &spec(),
            "i-me",
            "eu-west-1a",
            Duration::from_millis(10),
            &crate::clock::SystemClock,
            &cancel,
        )
        .await
        .unwrap()
        .unwrap();
        assert_ne!(v.id, first, "the volume the other master won is not ours");
        assert_eq!(device, "/dev/xvdu");
        // Both volumes attached, each to one instance only.
        assert!(
            ec2.vols
                .lock()
                .unwrap()
                .iter()
                .all(|v| v.attachments.len() == 1)
        );
        // Asked again (a restart), the same volume comes back.
        let (again, _) = claim(
            &ec2,
            &spec(),
            "i-me",
            "eu-west-1a",
            Duration::from_millis(10),
            &crate::clock::SystemClock,
            &cancel,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(again.id, v.id);
        let peers = peer_addresses(&ec2, &spec().tags).await.unwrap();
        assert_eq!(peers.len(), 2);
    }

    #[tokio::test]
    async fn no_free_volume_waits_until_cancelled() {
        let ec2 = Script {
            vols: Mutex::new(vec![vol(
                "vol-0000000a",
                Some(("i-other", "/dev/xvdu")),
                None,
            )]),
            stolen: vec![],
        };
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            crate::clock::SystemClock
                .sleep(Duration::from_millis(50))
                .await;
            c.cancel();
        });
        let got = claim(
            &ec2,
            &spec(),
            "i-me",
            "eu-west-1a",
            Duration::from_millis(10),
            &crate::clock::SystemClock,
            &cancel,
        )
        .await
        .unwrap();
        assert!(got.is_none());
    }

    #[test]
    fn devices_by_name_or_by_nvme_link_inside_dev_only() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("dev/disk/by-id")).unwrap();
        assert_eq!(find_device(r, "vol-0abc", "/dev/xvdu"), None);
        std::fs::write(r.join("dev/nvme1n1"), b"").unwrap();
        std::os::unix::fs::symlink(
            "../../nvme1n1",
            r.join("dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0abc"),
        )
        .unwrap();
        assert_eq!(
            find_device(r, "vol-0abc", "/dev/xvdu"),
            Some(std::fs::canonicalize(r.join("dev/nvme1n1")).unwrap())
        );
        std::fs::write(r.join("dev/xvdu"), b"").unwrap();
        assert_eq!(
            find_device(r, "vol-0abc", "/dev/xvdu"),
            Some(r.join("dev/xvdu"))
        );
        // A link out of /dev is no device.
        std::os::unix::fs::symlink(
            "/etc/passwd",
            r.join("dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0bad"),
        )
        .unwrap();
        assert_eq!(find_device(r, "vol-0bad", "/dev/xvdz"), None);
        // Where upstream mounts it.
        assert_eq!(mount_point(r, "vol-0abc"), r.join("mnt/master-vol-0abc"));
        std::fs::create_dir_all(r.join("mnt/disks")).unwrap();
        assert_eq!(
            mount_point(r, "vol-0abc"),
            r.join("mnt/disks/master-vol-0abc")
        );
    }

    #[test]
    fn the_seeds_folder_follows_the_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let seeds = dir.path().join("seeds");
        let a: BTreeSet<std::net::IpAddr> =
            ["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()].into();
        assert!(write_seeds(&seeds, &a).unwrap());
        assert!(!write_seeds(&seeds, &a).unwrap());
        let b: BTreeSet<std::net::IpAddr> = ["10.0.0.2".parse().unwrap()].into();
        assert!(write_seeds(&seeds, &b).unwrap());
        let names: Vec<String> = std::fs::read_dir(&seeds)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, ["10.0.0.2"]);
    }
}
