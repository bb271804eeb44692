//! etcd left running by a manager that died on its own (`kill -9`, the OOM
//! killer): it is no child of the manager started next, which would start
//! a second etcd on the same ports and data dir and see it die on "address
//! already in use" until someone kills the first by hand. The manager finds
//! such an etcd at start by what it gives every etcd it runs: an `etcd`
//! binary whose environment's `ETCD_DATA_DIR` lies under the manager's own
//! data dirs; and stops it cleanly (SIGTERM, SIGKILL after a deadline)
//! before it starts its own on the same data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::Error;

/// Larger `environ` or `cmdline` files are not read (bounded input).
const MAX_PROC_FILE: u64 = 1 << 20;

/// An etcd whose data dir lies under the manager's data dirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub pid: u32,
    pub data_dir: PathBuf,
}

fn read_capped(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut out = Vec::new();
    f.take(MAX_PROC_FILE).read_to_end(&mut out).ok()?;
    Some(out)
}

/// The etcd processes in `proc_root` (`/proc`) whose `ETCD_DATA_DIR` lies
/// under `data_root` and whose parent is no running etcd-manager, but for
/// `except` (this process).
pub fn find_orphans(proc_root: &Path, data_root: &Path, except: u32) -> Vec<Orphan> {
    etcds_under(proc_root, data_root, except)
        .into_iter()
        .filter(|o| !parent_is_a_manager(proc_root, &proc_root.join(o.pid.to_string())))
        .collect()
}

/// Every etcd process in `proc_root` whose `ETCD_DATA_DIR` lies under
/// `data_root` (a manager's own child too), but for `except`.
pub fn etcds_under(proc_root: &Path, data_root: &Path, except: u32) -> Vec<Orphan> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return vec![];
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == except {
            continue;
        }
        let dir = e.path();
        let Some(cmdline) = read_capped(&dir.join("cmdline")) else {
            continue;
        };
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let program = Path::new(std::str::from_utf8(program).unwrap_or_default());
        if program.file_name().is_none_or(|n| n != "etcd") {
            continue;
        }
        let Some(environ) = read_capped(&dir.join("environ")) else {
            continue;
        };
        let data_dir = environ
            .split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("ETCD_DATA_DIR="))
            .map(PathBuf::from);
        if let Some(data_dir) = data_dir
            && data_dir.starts_with(data_root)
        {
            out.push(Orphan { pid, data_dir });
        }
    }
    out.sort_by_key(|o| o.pid);
    out
}

/// Whether the parent of the process in `dir` is a running etcd-manager
/// (its etcd is no orphan: another manager on the same data dir, which
/// the peer API's port normally keeps from starting at all).
fn parent_is_a_manager(proc_root: &Path, dir: &Path) -> bool {
    let stat = read_capped(&dir.join("stat")).unwrap_or_default();
    let Some(ppid) = stat
        .iter()
        .rposition(|b| *b == b')')
        .and_then(|i| stat.get(i + 2..))
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(|rest| rest.split_whitespace().nth(1))
    else {
        return false;
    };
    let cmdline = read_capped(&proc_root.join(ppid).join("cmdline")).unwrap_or_default();
    let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Path::new(std::str::from_utf8(program).unwrap_or_default())
        .file_name()
        .is_some_and(|n| n == "etcd-manager")
}

/// Running: signalable and not a zombie waiting for its parent.
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Only "no such process" is gone: one we may not signal still runs.
    if kill(Pid::from_raw(raw), None) == Err(nix::errno::Errno::ESRCH) {
        return false;
    }
    // `pid (comm) S ...`: the state follows the last ')'.
    let stat =
        read_capped(&Path::new("/proc").join(pid.to_string()).join("stat")).unwrap_or_default();
    let state = stat
        .iter()
        .rposition(|b| *b == b')')
        .and_then(|i| stat.get(i + 2))
        .copied();
    state != Some(b'Z')
}

/// Wait up to `within` for `pid` to be gone.
async fn gone(pid: u32, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    while alive(pid) {
        if tokio::time::Instant::now() >= until {
            return false;
        }
        // Polling another process's life: real time by nature.
        #[allow(clippy::disallowed_methods)]
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// Stop every etcd [`find_orphans`] finds under `data_root` in `/proc`:
/// SIGTERM, SIGKILL after `timeout`; returns those stopped.
pub async fn stop_orphans(data_root: &Path, timeout: Duration) -> Result<Vec<Orphan>, Error> {
    let orphans = find_orphans(Path::new("/proc"), data_root, std::process::id());
    for o in &orphans {
        let pid = Pid::from_raw(i32::try_from(o.pid).unwrap_or(i32::MAX));
        tracing::warn!(pid = o.pid, data_dir = %o.data_dir.display(), "an etcd of this manager's data runs without it (the manager before died on its own); stopping it before starting ours");
        let _ = kill(pid, Signal::SIGTERM);
        if gone(o.pid, timeout).await {
            continue;
        }
        let _ = kill(pid, Signal::SIGKILL);
        if !gone(o.pid, Duration::from_secs(5)).await {
            return Err(Error::Io {
                path: o.data_dir.clone(),
                source: std::io::Error::other(format!(
                    "etcd pid {} of this data dir did not stop on SIGTERM or SIGKILL; stop it by hand before starting the manager",
                    o.pid
                )),
            });
        }
    }
    Ok(orphans)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::disallowed_methods)] // real processes, real time
    use super::*;

    fn fake(proc_root: &Path, pid: u32, argv0: &str, env: &[&str]) {
        fake_child(proc_root, pid, 1, argv0, env);
    }

    fn fake_child(proc_root: &Path, pid: u32, ppid: u32, argv0: &str, env: &[&str]) {
        let d = proc_root.join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cmdline"), format!("{argv0}\0--flag\0")).unwrap();
        std::fs::write(d.join("environ"), env.join("\0")).unwrap();
        std::fs::write(
            d.join("stat"),
            format!("{pid} ({argv0}) S {ppid} {pid} {pid}"),
        )
        .unwrap();
    }

    #[test]
    fn only_etcd_of_our_data_dirs_is_found() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        fake(
            p,
            10,
            "/opt/etcd-v3.5.30/etcd",
            &["PATH=/bin", "ETCD_DATA_DIR=/var/etcd/data/tok1"],
        );
        // Another manager's data, another program, this process.
        fake(
            p,
            11,
            "/opt/etcd-v3.5.30/etcd",
            &["ETCD_DATA_DIR=/var/other/data/tok"],
        );
        fake(
            p,
            12,
            "/usr/bin/etcdctl",
            &["ETCD_DATA_DIR=/var/etcd/data/tok1"],
        );
        fake(
            p,
            13,
            "/opt/etcd-v3.6.16/etcd",
            &["ETCD_DATA_DIR=/var/etcd/data/tok2"],
        );
        fake(p, 14, "etcd", &["ETCD_NAME=x"]);
        // A live manager's own etcd is no orphan.
        fake(p, 20, "/usr/local/bin/etcd-manager", &[]);
        fake_child(
            p,
            21,
            20,
            "/opt/etcd-v3.5.30/etcd",
            &["ETCD_DATA_DIR=/var/etcd/data/tok3"],
        );
        std::fs::create_dir_all(p.join("self")).unwrap();
        let found = find_orphans(p, Path::new("/var/etcd/data"), 13);
        assert_eq!(
            found,
            vec![Orphan {
                pid: 10,
                data_dir: "/var/etcd/data/tok1".into()
            }]
        );
    }

    /// A real process (`sleep` copied as `etcd`) whose environment names
    /// our data dir is stopped; a SIGTERM it ignores is followed by SIGKILL.
    #[tokio::test]
    async fn an_orphan_that_ignores_sigterm_is_killed() {
        let t = tempfile::tempdir().unwrap();
        let etcd = t.path().join("etcd");
        std::fs::copy("/bin/sleep", &etcd).unwrap();
        let data = t.path().join("data").join("tok");
        // The shell ignores TERM and execs: the ignored signal is inherited.
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("trap '' TERM; exec {} 30", etcd.display()))
            .env("ETCD_DATA_DIR", &data)
            .spawn()
            .unwrap();
        let pid = child.id();
        let exec_seen = std::time::Instant::now();
        while find_orphans(
            Path::new("/proc"),
            &t.path().join("data"),
            std::process::id(),
        )
        .is_empty()
        {
            assert!(
                exec_seen.elapsed() < Duration::from_secs(5),
                "the shell never exec'd"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let found = find_orphans(
            Path::new("/proc"),
            &t.path().join("data"),
            std::process::id(),
        );
        assert_eq!(found.iter().map(|o| o.pid).collect::<Vec<_>>(), vec![pid]);
        let reaper = std::thread::spawn(move || child.wait());
        let stopped = stop_orphans(&t.path().join("data"), Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(stopped.len(), 1);
        assert!(
            !reaper.join().unwrap().unwrap().success(),
            "killed, not exited"
        );
        assert!(
            find_orphans(
                Path::new("/proc"),
                &t.path().join("data"),
                std::process::id()
            )
            .is_empty()
        );
    }
}
