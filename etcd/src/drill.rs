//! A restore drill: a snapshot restored into a scratch folder and served by
//! a throwaway etcd (one member, unix sockets inside that private folder,
//! lowest CPU priority), asked for its HashKV at a revision. Equal to the live
//! cluster's HashKV at that revision when the snapshot holds what the
//! cluster held: the proof that a backup restores.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::client::HashKv;
use crate::{Error, EtcdBinaries, EtcdClient, EtcdNodeSpec, restore_snapshot};

/// What a drill found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillResult {
    /// The throwaway etcd's HashKV at the asked revision.
    pub hash: HashKv,
    /// The revision the restored data holds (at least the asked one).
    pub restored_revision: i64,
    /// Whether etcd ran at the lowest CPU priority (`nice` was found).
    pub niced: bool,
}

/// Restore `snapshot` into `scratch` (which must not exist or be empty),
/// start a throwaway etcd on unix sockets in it, wait up to
/// `deadline` for it to answer, and take its HashKV at `revision`. The
/// etcd is stopped and `scratch` removed whatever happens.
pub async fn drill(
    binaries: &EtcdBinaries,
    snapshot: &Path,
    scratch: &Path,
    revision: i64,
    deadline: Duration,
) -> Result<DrillResult, Error> {
    let result = run(binaries, snapshot, scratch, revision, deadline).await;
    if let Err(e) = std::fs::remove_dir_all(scratch)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(scratch = %scratch.display(), error = %e, "could not remove the drill's scratch folder");
    }
    result
}

async fn run(
    binaries: &EtcdBinaries,
    snapshot: &Path,
    scratch: &Path,
    revision: i64,
    deadline: Duration,
) -> Result<DrillResult, Error> {
    let etcd = Throwaway::start(binaries, snapshot, scratch, deadline).await?;
    let answer = async {
        if etcd.revision < revision {
            return Err(Error::Restore {
                detail: format!(
                    "the snapshot holds revision {}, older than the revision {revision} recorded with it",
                    etcd.revision
                ),
            });
        }
        let hash = etcd.client.hash_kv(revision).await?;
        Ok(DrillResult {
            hash,
            restored_revision: etcd.revision,
            niced: etcd.niced,
        })
    };
    let result = answer.await;
    etcd.stop().await;
    result
}

/// A one-member etcd serving a restored snapshot, at the lowest CPU
/// priority, with none of the caller's `ETCD_*` settings. It serves the
/// whole backup, decrypted and without authentication, so it listens on no
/// TCP port at all: its client and peer URLs are unix sockets inside its
/// scratch folder (mode 0700, its log 0600), which no other user can reach
/// and no other process can take before it binds. Killed when dropped;
/// [`Throwaway::stop`] also waits for it.
pub struct Throwaway {
    child: tokio::process::Child,
    /// A client of it.
    pub client: EtcdClient,
    /// The revision it served when it first answered.
    pub revision: i64,
    /// Whether it runs under `nice -n 19`.
    pub niced: bool,
    /// Its client URL (`unix://…`: a socket in its scratch folder).
    pub client_url: String,
}

/// The client socket's name in the scratch folder (etcd takes a unix URL's
/// `host:port` as a path relative to its working directory).
const CLIENT_SOCKET: &str = "etcd-client.sock:0";
/// The peer socket's name (a member always listens for peers).
const PEER_SOCKET: &str = "etcd-peer.sock:0";

/// Create `dir` (and its parents) and make it private (0700).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

impl std::fmt::Debug for Throwaway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throwaway")
            .field("client_url", &self.client_url)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Throwaway {
    /// Restore `snapshot` into `scratch/data` (`scratch` must not exist or be
    /// empty; the caller removes it) and serve it; waits up to `deadline`
    /// for the first answer.
    pub async fn start(
        binaries: &EtcdBinaries,
        snapshot: &Path,
        scratch: &Path,
        deadline: Duration,
    ) -> Result<Throwaway, Error> {
        let started = Instant::now();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        private_dir(scratch).map_err(io(scratch))?;
        // Absolute: etcd runs in it, and the data dir must not depend on that.
        let scratch = &std::fs::canonicalize(scratch).map_err(io(scratch))?;
        let peer_url = format!("unix://{PEER_SOCKET}");
        let client_url = format!("unix://{CLIENT_SOCKET}");
        let spec = EtcdNodeSpec {
            name: "restore-drill".into(),
            version: binaries.version.to_string(),
            data_dir: scratch.join("data"),
            cluster_token: "restore-drill".into(),
            initial_cluster: vec![("restore-drill".into(), vec![peer_url.clone()])],
            initial_cluster_state_new: true,
            peer_urls: vec![peer_url],
            client_urls: vec![client_url.clone()],
            quarantined_client_urls: vec![],
            quarantined: false,
            listen_address: None,
            tls: None,
            listen_metrics_urls: vec![],
        };
        restore_snapshot(binaries, snapshot, &spec, None).await?;
        let nice = nice_binary();
        let mut cmd = match &nice {
            Some(n) => {
                let mut c = tokio::process::Command::new(n);
                c.arg("-n").arg("19").arg(&binaries.etcd);
                c
            }
            None => tokio::process::Command::new(&binaries.etcd),
        };
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| k.starts_with("ETCD_")) {
                cmd.env_remove(&k);
            }
        }
        let log = scratch.join("etcd.log");
        let out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&log)
                .map_err(io(&log))?
        };
        let err = out.try_clone().map_err(io(&log))?;
        // The sockets' relative names resolve in the scratch folder.
        cmd.current_dir(scratch)
            .envs(crate::etcd_env(&spec, &[]))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: binaries.etcd.clone(),
            source,
        })?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Restore {
                    detail: format!(
                        "the throwaway etcd exited ({status}) before answering: {}",
                        last_line(&log)
                    ),
                });
            }
            if let Ok(c) =
                EtcdClient::connect_unix(&scratch.join(CLIENT_SOCKET), Duration::from_secs(2)).await
                && let Ok(status) = c.status().await
            {
                return Ok(Throwaway {
                    child,
                    client: c,
                    revision: status.revision,
                    niced: nice.is_some(),
                    client_url,
                });
            }
            if started.elapsed() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(Error::Restore {
                    detail: format!(
                        "the throwaway etcd did not answer within {deadline:?}: {}",
                        last_line(&log)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stop it and wait for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `nice` from coreutils, where the system has it.
fn nice_binary() -> Option<PathBuf> {
    ["/usr/bin/nice", "/bin/nice"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .last()
        .unwrap_or("no output")
        .chars()
        .take(400)
        .collect()
}
