//! `etcdutl check v2store`: whether a member's data holds v2 content that
//! etcd 3.6 would drop (its v2 store is gone), checked before any member of
//! a 3.5 cluster moves to 3.6 (etcd's "Upgrade etcd from v3.5 to v3.6"
//! guide). The tool wants a data dir no etcd uses, so the member's
//! snapshots and WAL (all the check reads; not the database) are copied to
//! a scratch folder first: the member keeps running.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::{Error, EtcdBinaries};

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2StoreVerdict {
    /// Only etcd's own v2 entries (membership): safe to move to 3.6.
    Clean,
    /// Custom v2 content, in the tool's words.
    Custom(String),
}

/// Whether these binaries' etcdutl has `check v2store` (3.5.2x and later
/// 3.5 releases; 3.6 and 3.7 removed it with the v2 store).
pub async fn can_check_v2store(binaries: &EtcdBinaries) -> bool {
    let Some(tool) = &binaries.etcdutl else {
        return false;
    };
    let out = Command::new(tool)
        .args(["check", "v2store", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(10), out).await,
        Ok(Ok(s)) if s.success()
    )
}

/// Copy `data_dir`'s `member/snap` and `member/wal` into `scratch` (emptied
/// first, removed after) and run `etcdutl check v2store` on the copy within
/// `deadline`. Errors are failures to check, never a verdict.
pub async fn check_v2store(
    binaries: &EtcdBinaries,
    data_dir: &Path,
    scratch: &Path,
    deadline: Duration,
) -> Result<V2StoreVerdict, Error> {
    let tool = binaries
        .etcdutl
        .clone()
        .ok_or_else(|| Error::InvalidArgument {
            detail: format!(
                "etcd {} has no etcdutl to check the v2 store",
                binaries.version
            ),
        })?;
    let (src, dst) = (data_dir.join("member"), scratch.join("member"));
    let copy = {
        let (src, dst, scratch) = (src.clone(), dst.clone(), scratch.to_path_buf());
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            remove_all(&scratch)?;
            for sub in ["snap", "wal"] {
                copy_dir(&src.join(sub), &dst.join(sub))?;
            }
            Ok(())
        })
    };
    let copied = copy.await.map_err(|e| Error::Supervisor {
        detail: format!("copying {} for the v2 store check: {e}", src.display()),
    });
    let result = match copied.and_then(|r| r) {
        Ok(()) => run_check(&tool, scratch, deadline).await,
        Err(e) => Err(e),
    };
    let _ = remove_all(scratch);
    result
}

async fn run_check(tool: &Path, dir: &Path, deadline: Duration) -> Result<V2StoreVerdict, Error> {
    let mut cmd = Command::new(tool);
    cmd.args(["check", "v2store", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(deadline, cmd.output()).await {
        Ok(out) => out.map_err(|source| Error::Spawn {
            binary: tool.to_path_buf(),
            source,
        })?,
        Err(_) => {
            return Err(Error::InvalidArgument {
                detail: format!(
                    "{} check v2store did not finish within {deadline:?} and was killed",
                    tool.display()
                ),
            });
        }
    };
    // The tool's last line says it: "No custom content found ..." or
    // "Error: detected custom v2 content in ...". At most 200 characters kept.
    let text = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>()
    };
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if out.status.success() {
        return Ok(V2StoreVerdict::Clean);
    }
    if stderr.contains("custom") {
        return Ok(V2StoreVerdict::Custom(
            stderr.trim_start_matches("Error: ").to_string(),
        ));
    }
    Err(Error::InvalidArgument {
        detail: format!(
            "{} check v2store failed ({}): {}",
            tool.display(),
            out.status,
            if stderr.is_empty() { stdout } else { stderr }
        ),
    })
}

fn remove_all(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Copy the regular files of `src` into `dst` (one level: etcd's snap and
/// wal folders are flat), but not the backend database (`snap/db`, received
/// `*.snap.db`): the check reads snapshots and WAL only. A missing `src` is
/// an error: no member data.
fn copy_dir(src: &Path, dst: &Path) -> Result<(), Error> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    std::fs::create_dir_all(dst).map_err(io(dst.to_path_buf()))?;
    for e in std::fs::read_dir(src).map_err(io(src.to_path_buf()))? {
        let e = e.map_err(io(src.to_path_buf()))?;
        let name = e.file_name();
        let db = name == "db" || name.to_string_lossy().ends_with(".db");
        if !db && e.file_type().map_err(io(e.path()))?.is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).map_err(io(e.path()))?;
        }
    }
    Ok(())
}
