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
use std::net::IpAddr;
use std::path::Path;

fn begin_marker(cluster: &str) -> String {
    format!("# Begin host entries managed by etcd-manager[{cluster}] - do not edit")
}

fn end_marker(cluster: &str) -> String {
    format!("# End host entries managed by etcd-manager[{cluster}]")
}

/// Whether `name` is a host name the block may carry: 1 to 253 characters,
/// dot-separated labels of 1 to 63 letters, digits, '-' and '_' (member
/// names are ids in base64url, as upstream's: `1xM11g5MHMC3_lHpcLfKxn` or
/// `-dwVI8-aeZj3UYvqeWzZlf`; the resolver reads them from the hosts file
/// as they are). Nothing else (no space, tab, '#', newline) gets in.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Address → the names written for it.
pub type Records = BTreeMap<String, BTreeSet<String>>;

/// The records that may be written: addresses that parse as IP addresses
/// (written in their canonical form), names that are host names; the rest
/// is returned as refused (address, name) pairs.
pub fn checked(records: &Records) -> (Records, Vec<(String, String)>) {
    let mut ok = Records::new();
    let mut refused = vec![];
    for (addr, names) in records {
        let ip = addr.parse::<IpAddr>().ok();
        for name in names {
            match ip {
                Some(ip) if valid_host_name(name) => {
                    ok.entry(ip.to_string()).or_default().insert(name.clone());
                }
                _ => refused.push((addr.clone(), name.clone())),
            }
        }
    }
    (ok, refused)
}

/// A line as this module writes it (`<address><TAB><name>[ <name>...]`)
/// naming at least one host under `suffix`: ours, wherever it stands.
fn written_by_us(line: &str, suffix: &str) -> bool {
    let Some((addr, names)) = line.split_once('\t') else {
        return false;
    };
    let suffix = suffix.trim_start_matches('.');
    !suffix.is_empty()
        && addr.parse::<IpAddr>().is_ok()
        && !names.is_empty()
        && names.split(' ').any(|n| {
            n.strip_suffix(suffix)
                .is_some_and(|head| head.is_empty() || head.ends_with('.'))
        })
}

/// `existing` with our block for `cluster` replaced by `records` (address →
/// names), which must have passed [`checked`]. Outside every managed block
/// (ours, another cluster's, another tool's `# Begin ...`/`# End ...`),
/// lines in our format that name a host under `dns_suffix` are removed too:
/// they were written by us (an older release could be made to write past
/// its block by a crafted member id). Pure.
pub fn render(
    existing: &str,
    cluster: &str,
    dns_suffix: &str,
    records: &BTreeMap<String, BTreeSet<String>>,
) -> String {
    let (begin, end) = (begin_marker(cluster), end_marker(cluster));
    let mut out: Vec<&str> = vec![];
    let mut inside = false;
    let mut other_block = false;
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
        if t.starts_with("# Begin ") {
            other_block = true;
        } else if t.starts_with("# End ") {
            other_block = false;
        } else if !other_block && written_by_us(line, dns_suffix) {
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

/// Put `records` into `path`'s block for `cluster` (records that are not
/// an address and host names are left out and logged); true when the file
/// changed.
pub fn update(
    path: &Path,
    cluster: &str,
    dns_suffix: &str,
    records: &BTreeMap<String, BTreeSet<String>>,
) -> std::io::Result<bool> {
    let (records, refused) = checked(records);
    for (addr, name) in refused {
        tracing::warn!(addr = %addr.escape_debug(), name = %name.escape_debug(), "not written to the hosts file: not an address and a host name");
    }
    let records = &records;
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let wanted = render(&existing, cluster, dns_suffix, records);
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

/// Replace `__name__` in each URL by the member's DNS name: `name` alone, or
/// `name.suffix` with `--dns-suffix` (as upstream: one dot between them).
pub fn expand_name(urls: &[String], name: &str, dns_suffix: &str) -> Vec<String> {
    let full = dns_name(name, dns_suffix);
    urls.iter().map(|u| u.replace("__name__", &full)).collect()
}

/// `name` with `--dns-suffix` appended (one dot between).
pub fn dns_name(name: &str, dns_suffix: &str) -> String {
    let suffix = dns_suffix.trim_start_matches('.');
    if suffix.is_empty() {
        name.to_string()
    } else if name.ends_with('.') {
        format!("{name}{suffix}")
    } else {
        format!("{name}.{suffix}")
    }
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
            "x",
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
        let two = render(
            &one,
            "etcd-events",
            "x",
            &recs(&[("10.0.0.1", "a-events.x")]),
        );
        let three = render(&two, "etcd", "x", &recs(&[("10.0.0.3", "c.x")]));
        assert!(three.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"));
        assert_eq!(three.matches("etcd-manager[etcd] - do not edit").count(), 1);
        assert!(three.contains("10.0.0.3\tc.x") && !three.contains("a.x"));
        assert!(three.contains("10.0.0.1\ta-events.x"));
        // Rendering twice changes nothing.
        assert_eq!(
            render(&three, "etcd", "x", &recs(&[("10.0.0.3", "c.x")])),
            three
        );
    }

    #[test]
    fn the_file_is_written_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        let r = recs(&[("10.0.0.1", "a.x")]);
        assert!(update(&path, "etcd", "x", &r).unwrap());
        assert!(!update(&path, "etcd", "x", &r).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("127.0.0.1 localhost\n\n# Begin"), "{text}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    /// What a crafted gossip id made the release before write: a line
    /// past the end marker, naming an address of the attacker's. The
    /// record is refused, and the line it left behind goes on the next
    /// write; other tools' blocks and the admin's own lines stay.
    #[test]
    fn crafted_names_are_refused_and_lines_left_outside_are_removed() {
        let suffix = "internal.example.com";
        let crafted = "a\n# End host entries managed by etcd-manager[etcd]\n10.6.6.6\tkubernetes.default.svc etcd-a.";
        let mut records = recs(&[("10.0.0.1", "etcd-a.internal.example.com")]);
        records
            .entry("10.0.0.9".into())
            .or_default()
            .insert(format!("{crafted}.internal.example.com"));
        records
            .entry("10.0.0.9 #".into())
            .or_default()
            .insert("b.internal.example.com".into());
        let (ok, refused) = checked(&records);
        assert_eq!(ok, recs(&[("10.0.0.1", "etcd-a.internal.example.com")]));
        assert_eq!(refused.len(), 2);
        let left_behind = "127.0.0.1\tlocalhost\n\
            # Begin host entries managed by kops - do not edit\n\
            10.0.0.7\tapi.internal.example.com\n\
            # End host entries managed by kops\n\
            10.9.9.9 my-own.internal.example.com\n\n\
            # Begin host entries managed by etcd-manager[etcd] - do not edit\n\
            10.0.0.9\ta\n\
            # End host entries managed by etcd-manager[etcd]\n\
            10.6.6.6\tkubernetes.default.svc etcd-a.internal.example.com\n";
        let fixed = render(left_behind, "etcd", suffix, &ok);
        assert_eq!(
            fixed,
            "127.0.0.1\tlocalhost\n\
             # Begin host entries managed by kops - do not edit\n\
             10.0.0.7\tapi.internal.example.com\n\
             # End host entries managed by kops\n\
             10.9.9.9 my-own.internal.example.com\n\n\
             # Begin host entries managed by etcd-manager[etcd] - do not edit\n\
             10.0.0.1\tetcd-a.internal.example.com\n\
             # End host entries managed by etcd-manager[etcd]\n"
        );
        // Through the file, the same.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, left_behind).unwrap();
        assert!(update(&path, "etcd", suffix, &records).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), fixed);
    }

    #[test]
    fn host_names() {
        for ok in [
            "a",
            "etcd-a.internal.example.com",
            "x1.y-2",
            &"a".repeat(63),
            "1xM11g5MHMC3_lHpcLfKxn.internal.test",
            "-dwVI8-aeZj3UYvqeWzZlf.internal",
        ] {
            assert!(valid_host_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "a/b",
            "a b",
            "a\tb",
            "a\nb",
            "a#b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(!valid_host_name(bad), "{bad:?}");
        }
    }
}
