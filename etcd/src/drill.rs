//! A restore drill: a snapshot restored into a scratch folder and served by
//! a throwaway etcd (one member, loopback, ports of its own, lowest CPU
//! priority), asked for its HashKV at a revision. Equal to the live
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
/// start a throwaway etcd on 127.0.0.1 with ports of its own, wait up to
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

/// A one-member etcd serving a restored snapshot on 127.0.0.1 with ports of
/// its own, at the lowest CPU priority, with none of the caller's `ETCD_*`
/// settings. Killed when dropped; [`Throwaway::stop`] also waits for it.
pub struct Throwaway {
    child: tokio::process::Child,
    /// A client of it.
    pub client: EtcdClient,
    /// The revision it served when it first answered.
    pub revision: i64,
    /// Whether it runs under `nice -n 19`.
    pub niced: bool,
    /// Its client URL.
    pub client_url: String,
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
        std::fs::create_dir_all(scratch).map_err(io(scratch))?;
        let (peer_port, client_port) = (free_port()?, free_port()?);
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let client_url = format!("http://127.0.0.1:{client_port}");
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
        let out = std::fs::File::create(&log).map_err(io(&log))?;
        let err = out.try_clone().map_err(io(&log))?;
        cmd.envs(crate::etcd_env(&spec, &[]))
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
                EtcdClient::connect(std::slice::from_ref(&client_url), Duration::from_secs(2)).await
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

    /// Stop it and wait for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's choice).
fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        path: PathBuf::from("127.0.0.1:0"),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            path: PathBuf::from("127.0.0.1:0"),
            source,
        })
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
