//! Where a member's data lives: `--data-dir`, or a volume found at start
//! (`--volume-provider`). Upstream's `external` provider (bare metal, kops'
//! metal manifests) and `aws` ([`aws`]: EBS volumes) are here; the other
//! cloud providers are refused at start with one line naming what works
//! instead.
//!
//! `external`: volumes are folders under `<root>/mnt/disks` (`<root>` is
//! `/rootfs` with `--containerized`) whose names start with the one
//! `--volume-tag`, each holding a `mnt/` folder. The first such folder by name
//! is this node's: the member is named after the folder, its data lives in
//! `mnt/`, and the node's address (unless `--address`) is the host's lowest
//! non-loopback address, IPv4 before IPv6, as upstream picks it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod aws;
pub mod ec2;
pub mod imds;

/// What the volume gave: the data dir, the address, and the member name
/// (None: the node keeps the id in its state file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub data_dir: PathBuf,
    pub address: IpAddr,
    pub node_id: Option<String>,
    /// On AWS: the region and the metadata endpoint, for EC2 discovery.
    pub aws: Option<AwsPlaced>,
}

/// Where an AWS volume was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsPlaced {
    pub region: String,
    pub metadata_endpoint: String,
    pub volume: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(
        "--volume-provider={0} is not supported by this etcd-manager yet; use --volume-provider=aws (EBS), --volume-provider=external (folders under /mnt/disks) or --data-dir with a volume you mount yourself"
    )]
    Unsupported(String),
    #[error("no address for this host: {0}; pass --address")]
    NoAddress(String),
    #[error("--volume-provider=aws: {0}")]
    Aws(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a cloud API's answer was not read (the caller names the API).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnswerError {
    #[error("{0}")]
    Body(#[source] reqwest::Error),
    /// Not what the API sends: a proxy or a service in its place.
    #[error("answer longer than {limit} bytes; is a proxy answering in the API's place?")]
    TooLong { limit: usize },
}

/// An HTTP answer's body, read up to `limit` bytes (more is an error):
/// the one way the cloud clients here read what a cloud API sends.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, AnswerError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(AnswerError::Body)? {
        out.extend_from_slice(&chunk);
        if out.len() > limit {
            return Err(AnswerError::TooLong { limit });
        }
    }
    Ok(out)
}

/// How often a node without its volume looks again.
pub const VOLUME_POLL: Duration = Duration::from_secs(10);

/// The `external` volume for `prefix` under `disks`: the first folder by name
/// that starts with `prefix` and holds `mnt/`. None while there is none.
pub fn find_external(disks: &Path, prefix: &str) -> Result<Option<(String, PathBuf)>, VolumeError> {
    let entries = match std::fs::read_dir(disks) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(VolumeError::Read {
                path: disks.to_path_buf(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    for name in names {
        let mnt = disks.join(&name).join("mnt");
        if !mnt.is_dir() {
            tracing::debug!(volume = %name, "skipping a volume folder without mnt/");
            continue;
        }
        if let Err(e) = etcd::check_ident(etcd::IdentKind::NodeId, &name) {
            tracing::warn!(volume = %name, error = %e, "skipping a volume folder whose name cannot be a member name");
            continue;
        }
        return Ok(Some((name, mnt)));
    }
    Ok(None)
}

/// The host's address as upstream picks it: the lowest non-loopback,
/// non-link-local address, IPv4 before IPv6.
pub fn local_address() -> Result<IpAddr, VolumeError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| VolumeError::NoAddress(e.to_string()))?;
    let mut ips: Vec<IpAddr> = addrs
        .filter_map(|a| {
            let s = a.address?;
            if let Some(v4) = s.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        })
        .collect();
    ips.sort_by_key(|ip| match ip {
        IpAddr::V4(v4) => (0u8, v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => (1u8, v6.octets()),
    });
    ips.first()
        .copied()
        .ok_or_else(|| VolumeError::NoAddress("it has no non-loopback address".into()))
}

/// Where this member's data and identity come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// `--data-dir`: the identity lives in `<data-dir>/state.json`.
    DataDir(PathBuf),
    /// `--volume-provider=external`: the first folder under `<root>/mnt/disks`
    /// whose name starts with `prefix` and holds `mnt/`; the member is named
    /// after the folder and keeps its data in `mnt/`.
    External { disks: PathBuf, prefix: String },
    /// `--volume-provider=aws`: the EBS volume this instance claims (see
    /// [`aws`]); `root` is `/`, or `/rootfs` containerized.
    Aws {
        volumes: aws::AwsVolumes,
        root: PathBuf,
    },
    /// A provider upstream has and we do not (yet): refused at start.
    Unsupported(String),
}

/// Find this node's volume (waiting for it to appear, until `cancel`), its
/// address and its member name. None when cancelled while waiting.
pub async fn place(
    source: &VolumeSource,
    address: Option<IpAddr>,
    clock: &dyn crate::clock::Clock,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Option<Placement>, VolumeError> {
    match source {
        VolumeSource::DataDir(dir) => Ok(Some(Placement {
            data_dir: dir.clone(),
            address: address.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            node_id: None,
            aws: None,
        })),
        VolumeSource::Aws { volumes, root } => {
            place_aws(address, volumes, root, clock, cancel).await
        }
        VolumeSource::Unsupported(p) => Err(VolumeError::Unsupported(p.clone())),
        VolumeSource::External { disks, prefix } => {
            let address = match address {
                Some(a) => a,
                None => local_address()?,
            };
            let mut said = false;
            loop {
                if let Some((name, mnt)) = find_external(disks, prefix)? {
                    tracing::info!(volume = %name, data_dir = %mnt.display(), %address, "using the external volume");
                    return Ok(Some(Placement {
                        data_dir: mnt,
                        address,
                        node_id: Some(name),
                        aws: None,
                    }));
                }
                if !said {
                    tracing::warn!(disks = %disks.display(), prefix = %prefix,
                        "waiting for a volume: a folder under the disks folder whose name starts with the volume tag and that holds mnt/");
                    said = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = clock.sleep(VOLUME_POLL) => {}
                }
            }
        }
    }
}

/// The AWS volume of this instance: who we are (IMDSv2, asked until it
/// answers), the volume claimed and attached, its device, formatted when
/// blank and mounted. None when cancelled meanwhile.
async fn place_aws(
    address: Option<IpAddr>,
    volumes: &aws::AwsVolumes,
    root: &Path,
    clock: &dyn crate::clock::Clock,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Option<Placement>, VolumeError> {
    let imds = imds::Imds::from_env();
    let mut said = false;
    let instance = loop {
        match imds.instance().await {
            Ok(i) => break i,
            Err(e) if !said => {
                tracing::warn!(error = %e, "waiting for the instance metadata service");
                said = true;
            }
            Err(e) => tracing::debug!(error = %e, "instance metadata not answering yet"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = clock.sleep(Duration::from_secs(5)) => {}
        }
    };
    tracing::info!(instance = %instance.id, zone = %instance.zone, region = %instance.region, address = %instance.private_ip, "this instance");
    let aws_err = |e: &dyn std::fmt::Display| VolumeError::Aws(e.to_string());
    let ec2 =
        ec2::Ec2Client::from_env(&instance.region, imds.endpoint()).map_err(|e| aws_err(&e))?;
    // An EC2 error while claiming is retried: the API throttles, a
    // replaced master starts before its old volume is detached.
    let (volume, device) = loop {
        match aws::claim(
            &ec2,
            volumes,
            &instance.id,
            &instance.zone,
            VOLUME_POLL,
            clock,
            cancel,
        )
        .await
        {
            Ok(Some(c)) => break c,
            Ok(None) => return Ok(None),
            Err(aws::AwsVolumeError::Ec2(e)) => {
                tracing::warn!(error = %e, "EC2 refused a step of claiming a volume; trying again");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = clock.sleep(VOLUME_POLL) => {}
                }
            }
            Err(e) => return Err(aws_err(&e)),
        }
    };
    let Some(dev) = aws::wait_device(root, &volume.id, &instance.id, &device, clock, cancel)
        .await
        .map_err(|e| aws_err(&e))?
    else {
        return Ok(None);
    };
    let at = aws::mount_point(root, &volume.id);
    aws::format_and_mount(&dev, &volume.id, &at)
        .await
        .map_err(|e| aws_err(&e))?;
    let name = aws::member_name(&volumes.cluster_name, &volumes.name_tag, &volume);
    tracing::info!(volume = %volume.id, device = %dev.display(), mount = %at.display(), member = %name, "using the AWS volume");
    Ok(Some(Placement {
        data_dir: at,
        address: address.unwrap_or(instance.private_ip),
        node_id: Some(name),
        aws: Some(AwsPlaced {
            region: instance.region,
            metadata_endpoint: imds.endpoint().to_string(),
            volume: volume.id,
        }),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_first_matching_folder_with_mnt_is_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let disks = dir.path();
        assert_eq!(
            find_external(&disks.join("missing"), "c--main--").unwrap(),
            None
        );
        std::fs::create_dir_all(disks.join("c--main--1")).unwrap(); // no mnt/
        std::fs::create_dir_all(disks.join("c--events--0/mnt")).unwrap(); // other prefix
        std::fs::write(disks.join("c--main--file"), b"x").unwrap(); // not a folder
        assert_eq!(find_external(disks, "c--main--").unwrap(), None);
        std::fs::create_dir_all(disks.join("c--main--2/mnt")).unwrap();
        std::fs::create_dir_all(disks.join("c--main--1/mnt")).unwrap();
        let (name, mnt) = find_external(disks, "c--main--").unwrap().unwrap();
        assert_eq!(name, "c--main--1");
        assert_eq!(mnt, disks.join("c--main--1/mnt"));
    }

    #[test]
    fn the_hosts_address_is_not_loopback() {
        if let Ok(ip) = local_address() {
            assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
        }
    }
}
