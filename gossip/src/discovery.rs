//! Seeds (`host:port`, resolved on every refresh) and the discovery folder
//! (`<dir>/<id>.json` per node, written atomically).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The content of `<dir>/<id>.json`: `{"id":"..","addr":"ip:port"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryRecord {
    /// The node id.
    pub id: String,
    /// Its gossip address.
    pub addr: SocketAddr,
}

/// Checks that `seed` has the form `host:port` (port 1-65535) and returns
/// its host and port. Resolution happens later, on every refresh.
pub fn parse_seed(seed: &str) -> Result<(String, u16), Error> {
    let invalid = |reason: &str| Error::InvalidSeed {
        seed: seed.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = seed
        .rsplit_once(':')
        .ok_or_else(|| invalid("no port (expected host:port)"))?;
    if host.is_empty() {
        return Err(invalid("empty host"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid("IPv6 addresses need brackets, e.g. [::1]:8000"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(invalid("port 0 cannot be reached"));
    }
    Ok((host.to_string(), port))
}

/// Resolves every seed; seeds that do not resolve are logged and skipped.
pub(crate) async fn resolve_seeds(seeds: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => out.extend(addrs),
            Err(error) => tracing::debug!(%seed, %error, "gossip seed does not resolve (yet)"),
        }
    }
    out
}

/// Upstream's seeds folder: every regular file whose name is an IP address
/// is a peer there, on `port`. Other names are skipped (logged at debug); a
/// missing folder is empty.
pub async fn read_seed_dir(dir: &Path, port: u16) -> Vec<SocketAddr> {
    let mut out = vec![];
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        tracing::debug!(dir = %dir.display(), "no seeds folder (yet)");
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let name = e.file_name().to_string_lossy().to_string();
        let is_file = e.file_type().await.is_ok_and(|t| t.is_file());
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) if is_file => out.push(SocketAddr::new(ip, port)),
            _ => {
                tracing::debug!(file = %name, "ignoring a seeds folder entry that is not an IP address")
            }
        }
    }
    out.sort();
    out
}

/// Why a discovery file was skipped. Only logged: a file that cannot be read
/// now is read again on the next refresh.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Opening or reading the file (the OS's reason).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A folder, a symbolic link (never followed) or a device.
    #[error("not a regular file")]
    NotAFile,
    /// More than [`MAX_RECORD_LEN`] bytes.
    #[error("larger than {MAX_RECORD_LEN} bytes")]
    TooLarge,
    /// Not a record's JSON (serde's reason).
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The id is not a valid member id (see [`crate::check_member_id`]).
    #[error("its id {0}")]
    BadId(&'static str),
    /// The record names another node than its file does.
    #[error("it names {id:?}, not the file's {stem:?}")]
    WrongId {
        /// The id in the record.
        id: String,
        /// The file's name without `.json`.
        stem: String,
    },
}

/// Most bytes a discovery record may have (a real one is under 200).
pub const MAX_RECORD_LEN: u64 = 4096;

/// Checks that `id` can name a file in the discovery folder (a valid member
/// id, see [`crate::check_member_id`]).
pub(crate) fn check_id_for_file(id: &str) -> Result<(), Error> {
    crate::ident::check_member_id(id).map_err(|reason| Error::InvalidConfig {
        reason: format!(
            "node id {id:?} {reason}; use 1 to 128 letters, digits, '-', '_' and '.' (not first)"
        ),
    })
}

/// Reads one discovery file: a regular file (a symbolic link is not
/// followed), at most [`MAX_RECORD_LEN`] bytes, a record whose id is valid
/// and names the file.
pub(crate) async fn read_record_file(
    path: &Path,
    stem: &str,
) -> Result<DiscoveryRecord, RecordError> {
    use tokio::io::AsyncReadExt;
    let mut options = tokio::fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let file = options.open(path).await?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Err(RecordError::NotAFile);
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_LEN + 1)
        .read_to_end(&mut bytes)
        .await?;
    parse_record(&bytes, stem)
}

/// A discovery file's bytes: at most [`MAX_RECORD_LEN`], a record whose id
/// is a valid member id and the file's name (`stem`). Pure.
pub fn parse_record(bytes: &[u8], stem: &str) -> Result<DiscoveryRecord, RecordError> {
    if bytes.len() as u64 > MAX_RECORD_LEN {
        return Err(RecordError::TooLarge);
    }
    let record: DiscoveryRecord = serde_json::from_slice(bytes)?;
    crate::ident::check_member_id(&record.id).map_err(RecordError::BadId)?;
    if record.id != stem {
        return Err(RecordError::WrongId {
            id: record.id,
            stem: stem.to_string(),
        });
    }
    Ok(record)
}

fn record_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// Writes our record atomically (a hidden temp file, then rename).
pub(crate) async fn write_record(dir: &Path, record: &DiscoveryRecord) -> Result<(), Error> {
    let path = record_path(dir, &record.id);
    let tmp = dir.join(format!(".{}.json.tmp", record.id));
    let body = serde_json::to_vec(record).map_err(|e| Error::Discovery {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    let fail = |source| Error::Discovery {
        path: path.clone(),
        source,
    };
    tokio::fs::create_dir_all(dir).await.map_err(fail)?;
    tokio::fs::write(&tmp, &body).await.map_err(fail)?;
    tokio::fs::rename(&tmp, &path).await.map_err(fail)?;
    Ok(())
}

/// Removes our record (on graceful leave); a missing file is fine.
pub(crate) async fn remove_record(dir: &Path, id: &str) {
    let path = record_path(dir, id);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot remove our gossip discovery file")
        }
    }
}

/// Reads every other node's record; unreadable files are skipped.
pub(crate) async fn read_records(dir: &Path, own_id: &str) -> Vec<DiscoveryRecord> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(error) => {
            tracing::debug!(dir = %dir.display(), %error, "cannot list gossip discovery folder");
            return out;
        }
    };
    loop {
        let entry = match entries.next_entry().await {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(dir = %dir.display(), %error, "cannot list gossip discovery folder");
                break;
            }
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let record = read_record_file(&path, stem).await;
        match record {
            Ok(record) if record.id == own_id => {}
            Ok(record) => out.push(record),
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "skipped unreadable gossip discovery file")
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_record_is_refused_naming_what_is_wrong() {
        let ok = br#"{"id":"a","addr":"10.0.0.1:8000"}"#;
        assert_eq!(parse_record(ok, "a").unwrap().id, "a");
        let err = parse_record(ok, "b").unwrap_err();
        assert!(matches!(err, RecordError::WrongId { .. }), "{err:?}");
        assert_eq!(err.to_string(), r#"it names "a", not the file's "b""#);
        assert!(matches!(parse_record(b"{", "a"), Err(RecordError::Json(_))));
        assert!(matches!(
            parse_record(&[b' '; 5000], "a"),
            Err(RecordError::TooLarge)
        ));
        let no_id = br#"{"id":"","addr":"10.0.0.1:8000"}"#;
        let err = parse_record(no_id, "").unwrap_err();
        assert!(matches!(err, RecordError::BadId(_)), "{err:?}");
        assert!(err.to_string().starts_with("its id "), "{err}");
    }

    #[tokio::test]
    async fn upstreams_seed_folder_names_peers_by_file_name() {
        let dir = tempfile::tempdir().expect("tmp");
        for name in ["10.0.0.2", "10.0.0.1", "fd00::3", "README", "10.0.0.x"] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        std::fs::create_dir(dir.path().join("10.0.0.9")).expect("a folder is not a seed");
        let got = read_seed_dir(dir.path(), 3996).await;
        let want: Vec<SocketAddr> = ["10.0.0.1:3996", "10.0.0.2:3996", "[fd00::3]:3996"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect();
        assert_eq!(got, want);
        assert!(
            read_seed_dir(&dir.path().join("missing"), 1)
                .await
                .is_empty()
        );
    }

    #[test]
    fn seeds_parse() {
        assert_eq!(
            parse_seed("10.0.0.1:8000").unwrap(),
            ("10.0.0.1".into(), 8000)
        );
        assert_eq!(parse_seed("etcd-a.internal:8000").unwrap().1, 8000);
        assert_eq!(parse_seed("[::1]:8000").unwrap().0, "[::1]");
        for bad in [
            "",
            "host",
            ":8000",
            "host:",
            "host:0",
            "host:70000",
            "::1:8000",
            "h:x",
        ] {
            assert!(
                matches!(parse_seed(bad), Err(Error::InvalidSeed { .. })),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn ids_for_files() {
        assert!(check_id_for_file("etcd-a_1.example").is_ok());
        for bad in ["", ".hidden", "a/b", "a\\b", "a\nb"] {
            assert!(check_id_for_file(bad).is_err(), "{bad:?}");
        }
    }

    fn nix_mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn records_roundtrip_and_skip_junk() {
        let dir = tempfile::tempdir().unwrap();
        let a = DiscoveryRecord {
            id: "a".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
        };
        let b = DiscoveryRecord {
            id: "b".into(),
            addr: "127.0.0.1:2".parse().unwrap(),
        };
        write_record(dir.path(), &a).await.unwrap();
        write_record(dir.path(), &b).await.unwrap();
        std::fs::write(dir.path().join("junk.json"), b"{not json").unwrap();
        // A record under another name, a bad id, a huge file, a link and a
        // fifo (which would block a plain read) are all skipped.
        std::fs::write(
            dir.path().join("c.json"),
            br#"{"id":"b","addr":"127.0.0.1:3"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("x y.json"),
            br#"{"id":"x y","addr":"127.0.0.1:3"}"#,
        )
        .unwrap();
        let mut huge = br#"{"id":"h","addr":"127.0.0.1:3"}"#.to_vec();
        huge.resize(MAX_RECORD_LEN as usize + 1, b' ');
        std::fs::write(dir.path().join("h.json"), &huge).unwrap();
        std::os::unix::fs::symlink(dir.path().join("b.json"), dir.path().join("l.json")).unwrap();
        nix_mkfifo(&dir.path().join("f.json"));
        std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        let text = std::fs::read_to_string(dir.path().join("a.json")).unwrap();
        assert_eq!(text, r#"{"id":"a","addr":"127.0.0.1:1"}"#);
        assert_eq!(read_records(dir.path(), "a").await, vec![b.clone()]);
        remove_record(dir.path(), "b").await;
        remove_record(dir.path(), "b").await;
        assert!(read_records(dir.path(), "a").await.is_empty());
    }
}
