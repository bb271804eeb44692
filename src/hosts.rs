//! `/etc/hosts` kept in step with the members' names (with `--dns-suffix`):
//! one block marked as upstream marks it, every other line untouched.
//!
//! ```text
//! # Begin host entries managed by etcd-manager[etcd] - do not edit
//! 10.0.0.1 <TAB> etcd-a.internal.example.com
//! # End host entries managed by etcd-manager[etcd]
//! ```
//!
//! The block is replaced as a whole (one per cluster name, so main and events
//! keep their own), lines sorted, one blank line before it. The file is
//! written to a temporary file and renamed over the old one; where that is
//! impossible (a bind-mounted file, as kubelet mounts a pod's hosts file) it
//! is rewritten in place and read back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn begin_marker(cluster: &str) -> String {
    format!("# Begin host entries managed by etcd-manager[{cluster}] - do not edit")
}

fn end_marker(cluster: &str) -> String {
    format!("# End host entries managed by etcd-manager[{cluster}]")
}

/// `existing` with our block for `cluster` replaced by `records` (address →
/// names). Pure.
pub fn render(
    existing: &str,
    cluster: &str,
    records: &BTreeMap<String, BTreeSet<String>>,
) -> String {
    let (begin, end) = (begin_marker(cluster), end_marker(cluster));
    let mut out: Vec<&str> = vec![];
    let mut inside = false;
    let mut drop_blank = false;
    for line in existing.split('\n') {
        let t = line.trim();
        if t == begin {
            inside = true;
            continue;
        }
        if t == end {
            inside = false;
            drop_blank = true;
            continue;
        }
        if inside {
            continue;
        }
        if drop_blank && t.is_empty() {
            drop_blank = false;
            continue;
        }
        drop_blank = false;
        out.push(line);
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(&begin);
    text.push('\n');
    let mut lines: Vec<String> = records
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(addr, names)| {
            format!(
                "{addr}\t{}",
                names.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    lines.sort();
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    text.push_str(&end);
    text.push('\n');
    text
}

/// Put `records` into `path`'s block for `cluster`; true when the file
/// changed.
pub fn update(
    path: &Path,
    cluster: &str,
    records: &BTreeMap<String, BTreeSet<String>>,
) -> std::io::Result<bool> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let wanted = render(&existing, cluster, records);
    if wanted == existing {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(".hosts.etcd-manager-{cluster}.tmp"));
    let renamed = std::fs::write(&tmp, &wanted)
        .and_then(|()| {
            if let Ok(meta) = std::fs::metadata(path) {
                std::fs::set_permissions(&tmp, meta.permissions())?;
            }
            std::fs::rename(&tmp, path)
        })
        .is_ok();
    if !renamed {
        let _ = std::fs::remove_file(&tmp);
        // A bind-mounted file cannot be replaced: rewrite it in place and
        // check what landed (another writer may have raced us).
        for _ in 0..10 {
            std::fs::write(path, &wanted)?;
            if std::fs::read_to_string(path)? == wanted {
                return Ok(true);
            }
        }
        return Err(std::io::Error::other(format!(
            "{} kept changing under us while we wrote our entries",
            path.display()
        )));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn recs(pairs: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, n) in pairs {
            m.entry(a.to_string()).or_default().insert(n.to_string());
        }
        m
    }

    #[test]
    fn our_block_is_replaced_and_everything_else_kept() {
        let original = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";
        let one = render(
            original,
            "etcd",
            &recs(&[("10.0.0.2", "b.x"), ("10.0.0.1", "a.x")]),
        );
        assert_eq!(
            one,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n\n\
             # Begin host entries managed by etcd-manager[etcd] - do not edit\n\
             10.0.0.1\ta.x\n10.0.0.2\tb.x\n\
             # End host entries managed by etcd-manager[etcd]\n"
        );
        // Another cluster's block is its own; ours is replaced, not added twice.
        let two = render(&one, "etcd-events", &recs(&[("10.0.0.1", "a-events.x")]));
        let three = render(&two, "etcd", &recs(&[("10.0.0.3", "c.x")]));
        assert!(three.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"));
        assert_eq!(three.matches("etcd-manager[etcd] - do not edit").count(), 1);
        assert!(three.contains("10.0.0.3\tc.x") && !three.contains("a.x"));
        assert!(three.contains("10.0.0.1\ta-events.x"));
        // Rendering twice changes nothing.
        assert_eq!(render(&three, "etcd", &recs(&[("10.0.0.3", "c.x")])), three);
    }

    #[test]
    fn the_file_is_written_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        let r = recs(&[("10.0.0.1", "a.x")]);
        assert!(update(&path, "etcd", &r).unwrap());
        assert!(!update(&path, "etcd", &r).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("127.0.0.1 localhost\n\n# Begin"), "{text}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
