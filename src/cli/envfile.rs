//! `--env-file`: `KEY=VALUE` lines read before anything else, as upstream
//! reads them. They count as environment variables without changing the
//! process environment: a variable that names one of our flags
//! (`ETCD_MANAGER_DAILY_BACKUPS_RETENTION`, ...) sets that flag unless the
//! command line does; `ETCD_*` variables go to etcd like the process's own;
//! `S3_*` and `AWS_*` settings reach the store.
//!
//! Format (upstream's): each line is trimmed; blank lines and lines starting
//! with `#` are skipped; the key is what comes before the first `=`
//! (trimmed, `[A-Za-z_][A-Za-z0-9_]*`), the value is the rest, as is. No
//! quotes, no `export`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Largest env file read.
const MAX_LEN: u64 = 1 << 20;

/// What is wrong with an env file, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("opening env file {}: {source}; fix --env-file or the file's permissions", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("env file {} is larger than {MAX_LEN} bytes; keep only KEY=VALUE settings in it", path.display())]
    TooLarge { path: PathBuf },
    #[error("env file {} line {line}: {problem}; write KEY=VALUE (no quotes, no export)", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: LineProblem,
    },
}

/// What is wrong with one line of an env file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("missing '='")]
    MissingEquals,
    #[error("empty key")]
    EmptyKey,
    #[error("invalid key {0:?}")]
    InvalidKey(String),
}

/// Parse an env file's text; the error names the line.
pub fn parse(path: &Path, text: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out = vec![];
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let pair = parse_line(line).map_err(|problem| EnvFileError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            problem,
        })?;
        out.push(pair);
    }
    Ok(out)
}

/// One trimmed, non-blank, non-comment line: its key and value.
fn parse_line(line: &str) -> Result<(String, String), LineProblem> {
    let (key, value) = line.split_once('=').ok_or(LineProblem::MissingEquals)?;
    let key = key.trim();
    if key.is_empty() {
        return Err(LineProblem::EmptyKey);
    }
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(LineProblem::InvalidKey(key.to_string()));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Read and parse `path`.
pub fn load(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let open = |source| EnvFileError::Open {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(open)?;
    if meta.len() > MAX_LEN {
        return Err(EnvFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(open)?;
    parse(path, &text)
}

/// The `--env-file` named in `argv` (after Go-style flags were normalized).
pub fn named_in(argv: &[OsString]) -> Option<std::path::PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_str()?;
        if s == "--" {
            return None;
        }
        if let Some(v) = s.strip_prefix("--env-file=") {
            return Some(v.into());
        }
        if s == "--env-file" {
            return it.next().map(Into::into);
        }
    }
    None
}

/// `argv` with `--flag=value` appended for each variable of `vars` that is
/// the environment name of one of `cmd`'s flags not given on the command
/// line (the command line wins over the environment, as clap's own `env`).
pub fn apply_to_argv(
    mut argv: Vec<OsString>,
    vars: &[(String, String)],
    cmd: &clap::Command,
) -> Vec<OsString> {
    let given = |long: &str| {
        argv.iter().skip(1).any(|a| {
            a.to_str()
                .is_some_and(|s| s == format!("--{long}") || s.starts_with(&format!("--{long}=")))
        })
    };
    let mut extra = vec![];
    for arg in cmd.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let Some((_, value)) = vars.iter().rev().find(|(k, _)| env == k.as_str()) else {
            continue;
        };
        // As a flag it also wins over the process environment, as upstream's
        // os.Setenv does.
        if !given(long) {
            extra.push(OsString::from(format!("--{long}={value}")));
        }
    }
    // Before a `--` (none of our binaries take positionals after it).
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    argv.splice(end..end, extra);
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_format() {
        let p = Path::new("/etc/etcd-manager.env");
        let v = parse(
            p,
            "# comment\n\n  ETCD_QUOTA_BACKEND_BYTES=8589934592  \nA_B= spaced value\nX=a=b\n",
        )
        .expect("valid");
        assert_eq!(
            v,
            [
                ("ETCD_QUOTA_BACKEND_BYTES".into(), "8589934592".into()),
                ("A_B".into(), " spaced value".into()),
                ("X".into(), "a=b".into()),
            ]
        );
        for (bad, why) in [
            ("NOEQUALS", "missing '='"),
            ("=x", "empty key"),
            ("1A=x", "invalid key"),
            ("export A=x", "invalid key"),
        ] {
            let e = parse(p, bad).expect_err(bad).to_string();
            assert!(e.contains(why) && e.contains("line 1"), "{e}");
        }
    }
}
