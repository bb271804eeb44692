//! Supervising one etcd process.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{Error, EtcdBinaries, EtcdNodeSpec, etcd_env};

/// First wait before restarting a crashed etcd.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest wait between restarts.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An etcd that ran this long is considered healthy again: the backoff starts over.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

/// What the supervisor knows about its etcd right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStatus {
    /// An etcd process is alive (spawned and not yet seen to exit).
    pub running: bool,
    /// Its pid while running.
    pub pid: Option<u32>,
    /// How many times the supervisor started etcd again after an exit.
    pub restarts: u32,
    /// How the last process ended (`exit status: 1`, `signal: 9 (SIGKILL)`), or why a restart failed.
    pub last_exit: Option<String>,
}

/// Supervises one etcd process.
///
/// [`EtcdProcess::start`] spawns etcd with its inherited `ETCD_*` variables removed and
/// the ones from [`etcd_env`] set; stdout and stderr are appended to the log file if one
/// is given, else inherited. When etcd exits unexpectedly the supervisor starts it again
/// after a backoff (1 s doubling to 30 s, reset once etcd ran for 60 s). A clean exit
/// (status 0) is not restarted: etcd exits 0 on its own only when it was removed from its
/// cluster, and starting it again would only repeat that; [`ProcessStatus::last_exit`]
/// then says `exit status: 0` and `running` is false.
/// [`EtcdProcess::stop`] sends SIGTERM and SIGKILL after a timeout. Dropping an
/// `EtcdProcess` without `stop` kills etcd (SIGKILL) as a safety net.
pub struct EtcdProcess {
    spec: EtcdNodeSpec,
    status: Arc<Mutex<ProcessStatus>>,
    stop_tx: Option<oneshot::Sender<Duration>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EtcdProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdProcess")
            .field("name", &self.spec.name)
            .field("status", &self.status())
            .finish()
    }
}

/// How to launch etcd: everything the supervisor needs to spawn it again.
struct Launch {
    binary: PathBuf,
    env: Vec<(String, String)>,
    log_file: Option<PathBuf>,
    name: String,
}

impl Launch {
    fn spawn(&self) -> Result<Child, Error> {
        let mut cmd = Command::new(&self.binary);
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("ETCD_")) {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null());
        match &self.log_file {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                let err = file.try_clone().map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                cmd.stdout(file).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            }
        }
        cmd.kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        tracing::info!(member = %self.name, pid = child.id(), binary = %self.binary.display(), "started etcd");
        Ok(child)
    }
}

fn lock(status: &Mutex<ProcessStatus>) -> std::sync::MutexGuard<'_, ProcessStatus> {
    status
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EtcdProcess {
    /// Spawns etcd for `spec` and a tokio task that supervises it. Must be called inside a
    /// tokio runtime. Fails at once if the first spawn fails (missing binary, unwritable log).
    pub fn start(
        binaries: EtcdBinaries,
        spec: EtcdNodeSpec,
        overrides: Vec<(String, String)>,
        log_file: Option<PathBuf>,
    ) -> Result<Self, Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            what: "EtcdProcess::start",
        })?;
        if let Some(data_parent) = spec.data_dir.parent()
            && !data_parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(data_parent).map_err(|source| Error::Io {
                path: data_parent.to_path_buf(),
                source,
            })?;
        }
        let launch = Launch {
            binary: binaries.etcd.clone(),
            env: etcd_env(&spec, &overrides),
            log_file,
            name: spec.name.clone(),
        };
        let child = launch.spawn()?;
        let status = Arc::new(Mutex::new(ProcessStatus {
            running: true,
            pid: child.id(),
            restarts: 0,
            last_exit: None,
        }));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = handle.spawn(supervise(launch, child, Arc::clone(&status), stop_rx));
        Ok(Self {
            spec,
            status,
            stop_tx: Some(stop_tx),
            task: Some(task),
        })
    }

    /// The spec this process was started with.
    pub fn spec(&self) -> &EtcdNodeSpec {
        &self.spec
    }

    /// The supervisor's view right now.
    pub fn status(&self) -> ProcessStatus {
        lock(&self.status).clone()
    }

    /// Stops etcd: SIGTERM, then SIGKILL if it has not exited after `timeout`; returns when
    /// the process is gone and the supervisor has ended.
    pub async fn stop(mut self, timeout: Duration) -> Result<(), Error> {
        if let Some(tx) = self.stop_tx.take() {
            // The task may have ended already (it never does on its own); nothing to tell then.
            let _ = tx.send(timeout);
        }
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        task.await.map_err(|e| Error::Supervisor {
            detail: e.to_string(),
        })
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Dropping the task's future drops the Child, whose kill_on_drop sends SIGKILL.
            task.abort();
        }
    }
}

fn describe(status: ExitStatus) -> String {
    status.to_string()
}

async fn supervise(
    launch: Launch,
    mut child: Child,
    status: Arc<Mutex<ProcessStatus>>,
    mut stop_rx: oneshot::Receiver<Duration>,
) {
    let mut backoff = BACKOFF_START;
    let mut started = Instant::now();
    let mut log_check = tokio::time::interval(LOG_CHECK_INTERVAL);
    log_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Phase 1: etcd is running; wait for it to exit or for a stop request,
        // keeping its log file under its size limit meanwhile.
        tokio::select! {
            _ = log_check.tick() => {
                if let Some(path) = &launch.log_file {
                    // Copying up to 64 MiB: off the async runtime.
                    let p = path.clone();
                    let rotated = tokio::task::spawn_blocking(move || rotate_log(&p, MAX_LOG_BYTES))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                    match rotated {
                        Ok(true) => tracing::info!(member = %launch.name, path = %path.display(), max_bytes = MAX_LOG_BYTES, "rotated etcd's log"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(member = %launch.name, path = %path.display(), error = %e, "cannot rotate etcd's log"),
                    }
                }
                continue;
            }
            exit = child.wait() => {
                let text = match &exit {
                    Ok(s) => describe(*s),
                    Err(e) => format!("wait failed: {e}"),
                };
                let clean = matches!(&exit, Ok(s) if s.success());
                {
                    let mut st = lock(&status);
                    st.running = false;
                    st.pid = None;
                    st.last_exit = Some(text.clone());
                }
                if clean {
                    tracing::warn!(member = %launch.name, exit = %text,
                        "etcd exited cleanly on its own (removed from its cluster?); not restarting");
                    // Wait for stop; there is no process left to signal.
                    let _ = (&mut stop_rx).await;
                    return;
                }
                if started.elapsed() >= BACKOFF_RESET_AFTER {
                    backoff = BACKOFF_START;
                }
                tracing::warn!(member = %launch.name, exit = %text, backoff_ms = backoff.as_millis() as u64,
                    "etcd exited unexpectedly; restarting after backoff");
            }
            req = &mut stop_rx => {
                // A dropped sender means the owner is gone: kill without grace.
                let timeout = req.unwrap_or(Duration::ZERO);
                terminate(&launch.name, &mut child, timeout).await;
                let mut st = lock(&status);
                st.running = false;
                st.pid = None;
                return;
            }
        }
        // Phase 2: etcd is down; wait out the backoff, then start it again.
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = &mut stop_rx => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match launch.spawn() {
                Ok(c) => {
                    child = c;
                    started = Instant::now();
                    let mut st = lock(&status);
                    st.running = true;
                    st.pid = child.id();
                    st.restarts += 1;
                    break;
                }
                Err(e) => {
                    tracing::error!(member = %launch.name, error = %e, "restarting etcd failed; will retry");
                    lock(&status).last_exit = Some(format!("restart failed: {e}"));
                }
            }
        }
    }
}

/// etcd's log file is rotated once it grows past this.
pub const MAX_LOG_BYTES: u64 = 64 << 20;
/// How often the supervisor looks at the log file's size.
const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// If `path` is larger than `max` bytes, copy it to `<path>.1` (replacing the
/// previous one) and truncate it; true when it did. etcd writes through an
/// append-only descriptor, so it goes on at the start of the emptied file;
/// what it writes between the copy and the truncation is lost.
pub fn rotate_log(path: &std::path::Path, max: u64) -> std::io::Result<bool> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max {
        return Ok(false);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// SIGTERM, wait up to `timeout`, then SIGKILL and reap.
async fn terminate(name: &str, child: &mut Child, timeout: Duration) {
    let pid = child.id();
    if let Some(raw) = pid.and_then(|p| i32::try_from(p).ok())
        && !timeout.is_zero()
    {
        if let Err(e) = kill(Pid::from_raw(raw), Signal::SIGTERM) {
            tracing::warn!(member = %name, pid = raw, error = %e, "SIGTERM to etcd failed");
        }
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(s)) => {
                tracing::info!(member = %name, pid = raw, exit = %s, "etcd stopped");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(member = %name, pid = raw, error = %e, "waiting for etcd failed")
            }
            Err(_) => {
                tracing::warn!(member = %name, pid = raw, timeout_ms = timeout.as_millis() as u64,
                "etcd did not exit after SIGTERM; sending SIGKILL")
            }
        }
    }
    if let Err(e) = child.kill().await {
        tracing::warn!(member = %name, error = %e, "killing etcd failed");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_log_is_rotated_by_size_and_writing_goes_on() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.log");
        // An append-only descriptor, as etcd has.
        let mut w = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        w.write_all(&[b'a'; 100]).unwrap();
        assert!(!rotate_log(&path, 100).unwrap(), "at the limit: kept");
        w.write_all(b"b").unwrap();
        assert!(rotate_log(&path, 100).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(
            std::fs::read(dir.path().join("etcd.log.1")).unwrap().len(),
            101
        );
        w.write_all(b"after").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"after");
        assert!(!rotate_log(&dir.path().join("missing.log"), 1).unwrap());
    }
}
