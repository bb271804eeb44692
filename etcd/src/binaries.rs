//! Finding the etcd binaries of one version.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, EtcdVersion};

/// The binaries of one etcd version.
#[derive(Debug, Clone)]
pub struct EtcdBinaries {
    /// The version these binaries are.
    pub version: EtcdVersion,
    /// The server.
    pub etcd: PathBuf,
    /// The v3 command-line client, if present beside `etcd`.
    pub etcdctl: Option<PathBuf>,
    /// The offline tool (3.5+), if present beside `etcd`.
    pub etcdutl: Option<PathBuf>,
}

/// Finds the binaries of `version`.
///
/// Search order: each of `extra_dirs` as given (accepted only when its `etcd --version`
/// reports `version`, since such a folder does not name its version), then
/// `<extra dir>/etcd-v<ver>` for each extra dir, then `/opt/etcd-v<ver>/`, `/opt/etcd-v<ver>/usr/local/bin/`,
/// `/opt/etcd-v<ver>/usr/bin/` and upstream's `/opt/etcd-v<ver>-linux-amd64/`. The
/// versioned folders are trusted by name. A folder counts when it holds an executable
/// `etcd`.
pub fn find_binaries(version: &EtcdVersion, extra_dirs: &[PathBuf]) -> Result<EtcdBinaries, Error> {
    find_binaries_in(version, extra_dirs, Path::new("/opt"))
}

/// [`find_binaries`] with another folder in place of `/opt` (for tests and unusual installs).
pub fn find_binaries_in(
    version: &EtcdVersion,
    extra_dirs: &[PathBuf],
    opt_root: &Path,
) -> Result<EtcdBinaries, Error> {
    let mut searched = Vec::new();
    for dir in extra_dirs {
        searched.push(dir.clone());
        let etcd = dir.join("etcd");
        if !is_executable(&etcd) {
            continue;
        }
        match reported_version(&etcd) {
            Some(found) if found == *version => return Ok(binaries_in(dir, *version)),
            found => {
                tracing::debug!(dir = %dir.display(), wanted = %version, found = ?found.map(|v| v.to_string()),
                    "etcd in bin dir is another version; skipping");
            }
        }
    }
    let name = format!("etcd-v{version}");
    let mut versioned: Vec<PathBuf> = extra_dirs.iter().map(|d| d.join(&name)).collect();
    let opt = opt_root.join(&name);
    versioned.push(opt.clone());
    versioned.push(opt.join("usr/local/bin"));
    versioned.push(opt.join("usr/bin"));
    versioned.push(opt_root.join(format!("{name}-linux-amd64")));
    for dir in versioned {
        if is_executable(&dir.join("etcd")) {
            return Ok(binaries_in(&dir, *version));
        }
        searched.push(dir);
    }
    // As upstream's version mappings: any installed release of the same minor
    // serves (kops mounts one image per minor), the newest first.
    if let Some(found) = same_minor(version, extra_dirs, opt_root) {
        tracing::info!(wanted = %version, using = %found.version, etcd = %found.etcd.display(),
            "etcd of the wanted version is not installed; using the newest installed release of the same minor");
        return Ok(found);
    }
    Err(Error::BinaryNotFound {
        version: version.to_string(),
        searched,
    })
}

/// The newest installed release of `version`'s minor, by the versioned folder names.
fn same_minor(
    version: &EtcdVersion,
    extra_dirs: &[PathBuf],
    opt_root: &Path,
) -> Option<EtcdBinaries> {
    let mut candidates: Vec<(EtcdVersion, PathBuf)> = vec![];
    for root in extra_dirs.iter().map(PathBuf::as_path).chain([opt_root]) {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(v) = name.strip_prefix("etcd-v") else {
                continue;
            };
            let Ok(v) = v.trim_end_matches("-linux-amd64").parse::<EtcdVersion>() else {
                continue;
            };
            if v.major == version.major && v.minor == version.minor && v != *version {
                candidates.push((v, e.path()));
            }
        }
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    candidates.into_iter().find_map(|(v, dir)| {
        [dir.clone(), dir.join("usr/local/bin"), dir.join("usr/bin")]
            .into_iter()
            .find(|d| is_executable(&d.join("etcd")))
            .map(|d| binaries_in(&d, v))
    })
}

fn binaries_in(dir: &Path, version: EtcdVersion) -> EtcdBinaries {
    let optional = |name: &str| Some(dir.join(name)).filter(|p| is_executable(p));
    let found = EtcdBinaries {
        version,
        etcd: dir.join("etcd"),
        etcdctl: optional("etcdctl"),
        etcdutl: optional("etcdutl"),
    };
    tracing::debug!(dir = %dir.display(), version = %version, etcdctl = found.etcdctl.is_some(),
        etcdutl = found.etcdutl.is_some(), "found etcd binaries");
    found
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `etcd --version` and reads the "etcd Version: X.Y.Z" line.
fn reported_version(etcd: &Path) -> Option<EtcdVersion> {
    let out = std::process::Command::new(etcd)
        .arg("--version")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version_output(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version_output(text: &str) -> Option<EtcdVersion> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("etcd Version:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_of_the_same_minor_serves_as_kops_mounts_them() {
        use std::os::unix::fs::PermissionsExt;
        let opt = tempfile::tempdir().expect("tmp");
        for (dir, sub) in [
            ("etcd-v3.6.12", "usr/local/bin"),
            ("etcd-v3.6.9", ""),
            ("etcd-v3.5.31", "usr/local/bin"),
        ] {
            let bin = opt.path().join(dir).join(sub);
            std::fs::create_dir_all(&bin).expect("dir");
            let etcd = bin.join("etcd");
            std::fs::write(&etcd, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&etcd, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let found = find_binaries_in(&EtcdVersion::new(3, 6, 11), &[], opt.path()).expect("3.6.x");
        assert_eq!(
            found.version,
            EtcdVersion::new(3, 6, 12),
            "the newest of the minor"
        );
        assert!(found.etcd.ends_with("etcd-v3.6.12/usr/local/bin/etcd"));
        let exact = find_binaries_in(&EtcdVersion::new(3, 6, 9), &[], opt.path()).expect("exact");
        assert_eq!(exact.version, EtcdVersion::new(3, 6, 9));
        assert!(find_binaries_in(&EtcdVersion::new(3, 7, 0), &[], opt.path()).is_err());
        assert!(find_binaries_in(&EtcdVersion::new(3, 4, 23), &[], opt.path()).is_err());
    }

    #[test]
    fn parses_version_output() {
        let text = "etcd Version: 3.5.30\nGit SHA: Not provided\nGo Version: go1.26.4\n";
        assert_eq!(parse_version_output(text), Some(EtcdVersion::new(3, 5, 30)));
        assert_eq!(parse_version_output("garbage"), None);
    }
}
