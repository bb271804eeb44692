//! Small JSON state files, written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `value` as pretty JSON to `path` atomically: a temp file in the same folder,
/// fsync, rename over `path`, fsync the folder. A crash leaves either the old or the new
/// file, never a mix; a failed write leaves no temp file behind.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| Error::InvalidArgument {
        detail: format!("state file path {} has no file name", path.display()),
    })?;
    let mut body = serde_json::to_vec_pretty(value).map_err(|e| Error::State {
        path: path.to_path_buf(),
        reason: format!("cannot encode as JSON: {e}"),
    })?;
    body.push(b'\n');
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    // NamedTempFile deletes itself when dropped before `persist`, so errors leave nothing behind.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(io(&dir))?;
    tmp.write_all(&body).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    tracing::debug!(path = %path.display(), bytes = body.len(), "wrote state file");
    Ok(())
}

/// Reads a JSON state file: `Ok(None)` if it does not exist, [`Error::State`] naming the
/// file if it cannot be parsed, [`Error::Io`] if it cannot be read.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::State {
            path: path.to_path_buf(),
            reason: format!("not valid JSON for this state ({e})"),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        a: u32,
        b: String,
    }

    #[test]
    fn round_trip_and_no_temp_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read_json::<S>(&path).unwrap(), None);
        write_json_atomic(
            &path,
            &S {
                a: 1,
                b: "x".into(),
            },
        )
        .unwrap();
        write_json_atomic(
            &path,
            &S {
                a: 2,
                b: "y".into(),
            },
        )
        .unwrap();
        assert_eq!(
            read_json::<S>(&path).unwrap(),
            Some(S {
                a: 2,
                b: "y".into()
            })
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn malformed_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.json");
        std::fs::write(&path, b"{\"a\": 1, \"b\": ").unwrap();
        let e = read_json::<S>(&path).unwrap_err();
        assert!(
            matches!(e, Error::State { path: ref p, .. } if *p == path),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("move the file aside"), "{msg}");
        // Wrong shape is also named.
        std::fs::write(&path, b"[1,2]").unwrap();
        assert!(matches!(read_json::<S>(&path), Err(Error::State { .. })));
    }

    #[test]
    fn write_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("state.json");
        let e = write_json_atomic(
            &path,
            &S {
                a: 1,
                b: String::new(),
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
