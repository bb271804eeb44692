//! Which etcd versions this machine has (`/opt/etcd-v<version>` and the
//! extra folders), scanned again only when the folders change.

use std::path::{Path, PathBuf};

use super::Node;

/// Every folder etcd binaries are looked for in, and every `etcd` binary
/// there, with their modification times: a new, removed or replaced
/// version changes it (a folder's time changes when entries come or go).
pub(super) type InstallSignature = Vec<(PathBuf, Option<std::time::SystemTime>)>;

pub(super) fn install_signature(bin_dirs: &[PathBuf]) -> InstallSignature {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut sig = Vec::new();
    let mut roots: Vec<PathBuf> = bin_dirs.to_vec();
    roots.push(PathBuf::from("/opt"));
    for root in &roots {
        sig.push((root.clone(), mtime(root)));
        let bin = root.join("etcd");
        sig.push((bin.clone(), mtime(&bin)));
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("etcd-v"))
            .map(|e| e.path())
            .collect();
        names.sort();
        for dir in names {
            for sub in ["", "usr/local/bin", "usr/bin"] {
                let bin = dir.join(sub).join("etcd");
                sig.push((bin.clone(), mtime(&bin)));
            }
        }
    }
    sig
}

/// Versions with binaries in /opt or the extra folders (`etcd-v<version>[-linux-amd64]`).
pub fn installed_versions(bin_dirs: &[PathBuf]) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut roots: Vec<PathBuf> = bin_dirs.to_vec();
    roots.push(PathBuf::from("/opt"));
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(v) = name.strip_prefix("etcd-v") else {
                continue;
            };
            let v = v.trim_end_matches("-linux-amd64");
            if let Ok(version) = v.parse::<etcd::EtcdVersion>()
                && etcd::find_binaries(&version, bin_dirs).is_ok()
            {
                found.insert(version.to_string());
            }
        }
    }
    found.into_iter().collect()
}

impl Node {
    /// The installed etcd versions, scanned again only when the folders
    /// that hold them change (a scan may run `etcd --version`).
    pub fn installed(&self) -> Vec<String> {
        let sig = install_signature(&self.settings.bin_dirs);
        let mut cache = self
            .installed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached, versions)) = cache.as_ref()
            && *cached == sig
        {
            return versions.clone();
        }
        let versions = installed_versions(&self.settings.bin_dirs);
        self.installed_scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if cache.as_ref().is_none_or(|(_, v)| *v != versions) {
            tracing::info!(versions = ?versions, "installed etcd versions");
        }
        *cache = Some((sig, versions.clone()));
        versions
    }
}
