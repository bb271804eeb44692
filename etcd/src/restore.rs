//! Restoring a snapshot into a fresh data dir.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::{Error, EtcdBinaries, EtcdNodeSpec};

/// Restores `snapshot` into `spec.data_dir` for one member of a new cluster (the spec's
/// name, initial cluster, token and peer urls). Uses `etcdutl snapshot restore` when the
/// binaries have etcdutl (3.5+), with `--bump-revision N --mark-compacted` when
/// `bump_revision` is given; else `ETCDCTL_API=3 etcdctl snapshot restore`, which cannot
/// bump revisions ([`Error::Restore`] if asked). Refuses if the data dir exists and is not
/// empty.
pub async fn restore_snapshot(
    binaries: &EtcdBinaries,
    snapshot: &Path,
    spec: &EtcdNodeSpec,
    bump_revision: Option<u64>,
) -> Result<(), Error> {
    let data_dir = &spec.data_dir;
    prepare_data_dir(data_dir)?;
    if !snapshot.is_file() {
        return Err(Error::Restore {
            detail: format!("snapshot file {} does not exist", snapshot.display()),
        });
    }
    let (tool, use_etcdutl) = restore_tool(binaries, bump_revision)?;
    let mut cmd = restore_command(&tool, use_etcdutl, snapshot, spec, bump_revision);
    tracing::info!(tool = %tool.display(), snapshot = %snapshot.display(), data_dir = %data_dir.display(),
        member = %spec.name, bump_revision, "restoring etcd snapshot");
    let out = run_tool(&mut cmd, &tool, tool_deadline(snapshot)).await?;
    if !out.status.success() {
        return Err(Error::Restore {
            detail: format!(
                "{} snapshot restore {} ended with {}: {}",
                tool.display(),
                snapshot.display(),
                out.status,
                stderr_tail(&out.stderr, 10)
            ),
        });
    }
    Ok(())
}

/// Make way for a restore into `data_dir`: refused if it holds anything
/// (restore never overwrites data); an empty one is removed (etcdutl and
/// etcdctl insist on creating the data dir themselves) and its parent
/// created.
fn prepare_data_dir(data_dir: &Path) -> Result<(), Error> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::Restore {
                    detail: format!(
                        "data dir {} is not empty; move it aside first (restore never overwrites data)",
                        data_dir.display()
                    ),
                });
            }
            std::fs::remove_dir(data_dir).map_err(io(data_dir))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io(data_dir)(source)),
    }
    if let Some(parent) = data_dir.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    Ok(())
}

/// The tool that restores: etcdutl when the release has it, else etcdctl
/// (true when etcdutl), which cannot bump revisions.
fn restore_tool(
    binaries: &EtcdBinaries,
    bump_revision: Option<u64>,
) -> Result<(PathBuf, bool), Error> {
    let (tool, use_etcdutl) = match (&binaries.etcdutl, &binaries.etcdctl) {
        (Some(u), _) => (u.clone(), true),
        (None, Some(c)) => (c.clone(), false),
        (None, None) => {
            return Err(Error::Restore {
                detail: format!(
                    "etcd {} has neither etcdutl nor etcdctl beside {}; install the full release",
                    binaries.version,
                    binaries.etcd.display()
                ),
            });
        }
    };
    if bump_revision.is_some() && !use_etcdutl {
        return Err(Error::Restore {
            detail: format!(
                "etcd {} cannot bump revisions on restore (needs etcdutl, 3.5+); restore with a 3.5+ binary",
                binaries.version
            ),
        });
    }
    Ok((tool, use_etcdutl))
}

/// `<tool> snapshot restore` of `snapshot` into the spec's data dir as its
/// member of a new cluster, without the `ETCD_*`/`ETCDCTL_*` environment
/// of this process (those would override the flags).
fn restore_command(
    tool: &Path,
    use_etcdutl: bool,
    snapshot: &Path,
    spec: &EtcdNodeSpec,
    bump_revision: Option<u64>,
) -> Command {
    let mut cmd = Command::new(tool);
    for (k, _) in std::env::vars_os() {
        if k.to_str()
            .is_some_and(|k| k.starts_with("ETCD_") || k.starts_with("ETCDCTL_"))
        {
            cmd.env_remove(&k);
        }
    }
    if !use_etcdutl {
        cmd.env("ETCDCTL_API", "3");
    }
    cmd.arg("snapshot")
        .arg("restore")
        .arg(snapshot)
        .arg("--name")
        .arg(&spec.name)
        .arg("--data-dir")
        .arg(&spec.data_dir)
        .arg("--initial-cluster")
        .arg(spec.initial_cluster_string())
        .arg("--initial-cluster-token")
        .arg(&spec.cluster_token)
        .arg("--initial-advertise-peer-urls")
        .arg(spec.peer_urls.join(","));
    if let Some(n) = bump_revision {
        cmd.arg("--bump-revision")
            .arg(n.to_string())
            .arg("--mark-compacted");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The last `lines` lines of a tool's stderr (where it says why it failed).
fn stderr_tail(stderr: &[u8], lines: usize) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let mut tail: Vec<&str> = stderr.lines().rev().take(lines).collect();
    tail.reverse();
    tail.join("\n")
}

/// How long etcdutl/etcdctl may take over `snapshot`: a minute, plus a
/// minute per GiB (a restore of 1 GiB takes about 4 s here).
fn tool_deadline(snapshot: &Path) -> std::time::Duration {
    let gib = std::fs::metadata(snapshot).map_or(0, |m| m.len() >> 30);
    std::time::Duration::from_secs(60 + 60 * gib)
}

/// Run a snapshot tool to completion within `deadline`; past it the tool is
/// killed (`kill_on_drop`) and the call fails naming it.
async fn run_tool(
    cmd: &mut Command,
    tool: &Path,
    deadline: std::time::Duration,
) -> Result<std::process::Output, Error> {
    match tokio::time::timeout(deadline, cmd.output()).await {
        Ok(out) => out.map_err(|source| Error::Spawn {
            binary: tool.to_path_buf(),
            source,
        }),
        Err(_) => Err(Error::Restore {
            detail: format!(
                "{} did not finish within {deadline:?} and was killed; check the disk and the snapshot",
                tool.display()
            ),
        }),
    }
}

/// What `snapshot status` reports about a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SnapshotInfo {
    pub hash: u64,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_keys: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Check a snapshot file with etcd's own tool (`etcdutl snapshot status`, or
/// `etcdctl snapshot status` before 3.5), which opens the database and hashes
/// it: used for backups that carry no checksum of ours.
pub async fn verify_snapshot(
    binaries: &EtcdBinaries,
    snapshot: &Path,
) -> Result<SnapshotInfo, Error> {
    let (tool, use_etcdutl) = match (&binaries.etcdutl, &binaries.etcdctl) {
        (Some(u), _) => (u.clone(), true),
        (None, Some(c)) => (c.clone(), false),
        (None, None) => {
            return Err(Error::Restore {
                detail: format!(
                    "etcd {} has neither etcdutl nor etcdctl to check snapshots",
                    binaries.version
                ),
            });
        }
    };
    let mut cmd = Command::new(&tool);
    if !use_etcdutl {
        cmd.env("ETCDCTL_API", "3");
    }
    cmd.arg("snapshot")
        .arg("status")
        .arg(snapshot)
        .arg("-w")
        .arg("json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = run_tool(&mut cmd, &tool, tool_deadline(snapshot)).await?;
    if !out.status.success() {
        return Err(Error::Restore {
            detail: format!(
                "{} is not a valid etcd snapshot: {}",
                snapshot.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::Restore {
        detail: format!("cannot read snapshot status of {}: {e}", snapshot.display()),
    })
}
