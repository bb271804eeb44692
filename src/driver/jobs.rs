//! Following the long operations the leader starts on nodes as jobs
//! (`crate::node::jobs`): a restore, a check of a member's v2 store. The leader
//! asks the node every [`JOB_POLL`] and reads the job in its `GetInfo`
//! answer until the job ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::error::JobError;
use super::{Driver, DriverError, PEER_TIMEOUT};
use crate::core::model::{Job, JobKind, JobPhase};
use crate::peer::{Request, Response};

/// How often the leader asks a node about its job.
const JOB_POLL: Duration = Duration::from_secs(1);
/// A job that has not moved (no byte downloaded, no phase passed) for this
/// long is given up: etcd's tools check and write a data dir of gigabytes
/// in minutes, and a download that stalls fails by itself sooner (no byte
/// for 30 s).
const JOB_STALL: Duration = Duration::from_secs(15 * 60);
/// While the leader follows jobs, it rewrites the status report with their
/// progress this often.
const JOB_STATUS_EVERY: Duration = Duration::from_secs(10);

/// The jobs the leader follows now (node id -> job as last seen), for the
/// status report it writes while it waits on them.
#[derive(Default)]
pub(super) struct Following(std::sync::Mutex<FollowingState>);

#[derive(Default)]
struct FollowingState {
    jobs: BTreeMap<String, Job>,
    /// When a report with jobs was last written (or the jobs began).
    written: Option<Instant>,
    /// A report with jobs was written: the next pass writes its own even if
    /// it did not change.
    stale: bool,
}

impl Following {
    /// A report with jobs was written since the last call.
    pub(super) fn take_stale(&self) -> bool {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()).stale)
    }
}

impl Driver {
    /// Poll node `id`'s job `kind` for `key` until it ends, and return how
    /// it ended well ([`JobPhase::Done`], or [`JobPhase::Found`] for a
    /// check). It fails when the job does, when the node no longer has it
    /// (restarted before it ended, or another leader's job replaced it;
    /// a restore whose cluster the node runs counts as done), or when
    /// nothing moved for [`JOB_STALL`] (an unreachable node moves
    /// nothing). A job of hours that moves is followed to its end.
    pub(super) async fn follow_job(
        &self,
        id: &str,
        addr: SocketAddr,
        kind: JobKind,
        key: &str,
    ) -> Result<JobPhase, DriverError> {
        let what = format!("the {} of cluster {key}", kind.words());
        let mut seen: Option<(JobPhase, u64)> = None;
        let mut moved = self.clock.now();
        loop {
            self.clock.sleep(JOB_POLL).await;
            let now = self.clock.now();
            if let Ok(Response::Info(info)) = self
                .settings
                .peers
                .call(addr, &Request::GetInfo, PEER_TIMEOUT)
                .await
            {
                let ran = kind == JobKind::Restore
                    && info
                        .etcd_state
                        .as_ref()
                        .is_some_and(|s| s.cluster_token == key);
                let job = info.job(kind, key);
                self.job_seen(id, job).await;
                match job.map(|j| (j.phase.clone(), j.bytes)) {
                    Some((JobPhase::Failed(why), _)) => {
                        return Err(JobError::Failed {
                            what: what.to_string(),
                            id: id.to_string(),
                            why,
                        }
                        .into());
                    }
                    Some((phase, _)) if phase.ended() => return Ok(phase),
                    None if ran => return Ok(JobPhase::Done),
                    None => {
                        return Err(JobError::Gone {
                            what: what.to_string(),
                            id: id.to_string(),
                        }
                        .into());
                    }
                    Some(now_seen) => {
                        if seen.as_ref() != Some(&now_seen) {
                            tracing::debug!(node = %id, ?kind, phase = ?now_seen.0, bytes = now_seen.1, "job moves");
                            seen = Some(now_seen);
                            moved = now;
                        }
                    }
                }
            }
            if now.saturating_duration_since(moved) >= JOB_STALL {
                self.job_seen(id, None).await;
                return Err(JobError::Stalled {
                    what: what.to_string(),
                    id: id.to_string(),
                    after: JOB_STALL,
                    seen: format!("{seen:?}"),
                }
                .into());
            }
        }
    }

    /// Note node `id`'s job as last seen (None: ended, or no longer
    /// followed), and rewrite the status report with the jobs that run when
    /// it is [`JOB_STATUS_EVERY`] old.
    async fn job_seen(&self, id: &str, job: Option<&Job>) {
        let now = self.clock.now();
        let texts = {
            let mut f = self.following.0.lock().unwrap_or_else(|p| p.into_inner());
            match job.filter(|j| !j.phase.ended()) {
                Some(j) => f.jobs.insert(id.to_string(), j.clone()),
                None => f.jobs.remove(id),
            };
            if f.jobs.is_empty() {
                f.written = None;
                return;
            }
            // The first report comes once jobs have run for a while: one
            // that ends within seconds is not worth a write.
            let since = *f.written.get_or_insert(now);
            if now.saturating_duration_since(since) < JOB_STATUS_EVERY {
                return;
            }
            f.written = Some(now);
            f.stale = true;
            f.jobs
                .iter()
                .map(|(id, j)| crate::status::job_text(id, j))
                .collect::<Vec<_>>()
        };
        let Some((mut status, _)) = self.published.status.clone() else {
            return;
        };
        status.jobs = texts;
        status.written_at = self.wall_secs();
        if let Err(e) = self.store_status(&status).await {
            tracing::debug!(error = %e, "could not write the status report with the jobs");
        }
    }
}
