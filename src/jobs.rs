//! Long node operations as jobs. A restore downloads a backup of up to
//! gigabytes, checks it and has etcd's tool write a new data dir: minutes,
//! maybe an hour over a slow link. The leader starts it with one short
//! request ([`crate::peer::Request::RestoreJob`]) and follows it in every
//! `GetInfo` answer ([`crate::core::model::NodeInfo::jobs`]); no request
//! waits on it, and no lock is held while it downloads.
//!
//! A node keeps one job (the one running, or the last one). A newer
//! leader's job takes over from an older leader's that has not touched any
//! data yet: the older one is cancelled while it downloads or checks.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::core::model::{Job, JobKind, JobPhase};

/// A failure message longer than this is cut: it goes into every `GetInfo`
/// answer until the next job.
pub const MAX_JOB_MESSAGE: usize = 1024;

/// The node's job: the one running, or the last one and how it ended.
#[derive(Default)]
pub struct JobBoard {
    slot: Mutex<Option<Entry>>,
    /// Cancelled when the node stops: every job ends at its next await.
    halt: CancellationToken,
}

struct Entry {
    job: Job,
    /// Bytes of the backup downloaded so far (kept by the download).
    bytes: Arc<AtomicU64>,
    cancel: CancellationToken,
}

/// What [`JobBoard::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// A new job: run it. The token is cancelled when a newer leader's job
    /// takes over or the node stops; `bytes` is where its download counts.
    Start {
        cancel: CancellationToken,
        bytes: Arc<AtomicU64>,
    },
    /// This job runs already, or has ended well: nothing to start.
    Known(JobPhase),
    /// Another job runs, started by a leader of this epoch or a newer one.
    Busy(Job),
}

impl JobBoard {
    /// Start job `kind` for `key` on behalf of the leader of `epoch`,
    /// unless it runs or has succeeded already (a repeated request), or
    /// another leader's job that is not older runs. A job that failed is
    /// started again.
    pub fn begin(&self, kind: JobKind, key: &str, epoch: u64) -> Begin {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slot.as_ref() {
            let same = e.job.kind == kind && e.job.key == key;
            if same && !matches!(e.job.phase, JobPhase::Failed(_)) {
                return Begin::Known(e.job.phase.clone());
            }
            if !e.job.phase.ended() {
                if e.job.epoch >= epoch {
                    return Begin::Busy(e.job.clone());
                }
                tracing::info!(key = %e.job.key, epoch = e.job.epoch, newer = epoch, "a newer leader's job takes over: the older one is cancelled");
                e.cancel.cancel();
            }
        }
        let cancel = self.halt.child_token();
        let bytes = Arc::new(AtomicU64::new(0));
        *slot = Some(Entry {
            job: Job {
                kind,
                key: key.to_string(),
                epoch,
                phase: JobPhase::Downloading,
                bytes: 0,
            },
            bytes: bytes.clone(),
            cancel: cancel.clone(),
        });
        Begin::Start { cancel, bytes }
    }

    /// Job `key` moved on to `phase` (ignored when another job replaced it).
    pub fn set_phase(&self, key: &str, phase: JobPhase) {
        let phase = match phase {
            JobPhase::Failed(mut m) => {
                if m.len() > MAX_JOB_MESSAGE {
                    let mut cut = MAX_JOB_MESSAGE;
                    while !m.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    m.truncate(cut);
                    m.push_str("...");
                }
                JobPhase::Failed(m)
            }
            other => other,
        };
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slot.as_mut().filter(|e| e.job.key == key) {
            e.job.phase = phase;
        }
    }

    /// The jobs to report, with their download progress.
    pub fn list(&self) -> Vec<Job> {
        let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        slot.iter()
            .map(|e| Job {
                bytes: e.bytes.load(Ordering::Relaxed),
                ..e.job.clone()
            })
            .collect()
    }

    /// The node stops: every job ends at its next await point, as it would
    /// if the process ended there.
    pub fn halt(&self) {
        self.halt.cancel();
    }

    /// Cancelled when the node stops.
    pub fn halted(&self) -> CancellationToken {
        self.halt.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn started(b: Begin) -> (CancellationToken, Arc<AtomicU64>) {
        match b {
            Begin::Start { cancel, bytes } => (cancel, bytes),
            other => panic!("expected a start, got {other:?}"),
        }
    }

    #[test]
    fn a_repeated_request_finds_its_job() {
        let board = JobBoard::default();
        let (_, bytes) = started(board.begin(JobKind::Restore, "t1", 4));
        bytes.store(1000, Ordering::Relaxed);
        assert!(matches!(
            board.begin(JobKind::Restore, "t1", 4),
            Begin::Known(JobPhase::Downloading)
        ));
        assert_eq!(board.list()[0].bytes, 1000);
        board.set_phase("t1", JobPhase::Done);
        assert!(matches!(
            board.begin(JobKind::Restore, "t1", 4),
            Begin::Known(JobPhase::Done)
        ));
    }

    #[test]
    fn a_failed_job_starts_again() {
        let board = JobBoard::default();
        started(board.begin(JobKind::Restore, "t1", 4));
        board.set_phase("t1", JobPhase::Failed("x".repeat(5000)));
        let JobPhase::Failed(m) = &board.list()[0].phase else {
            panic!("failed")
        };
        assert!(m.len() <= MAX_JOB_MESSAGE + 3, "the message is cut");
        let (_, bytes) = started(board.begin(JobKind::Restore, "t1", 4));
        assert_eq!(bytes.load(Ordering::Relaxed), 0);
        assert_eq!(board.list()[0].phase, JobPhase::Downloading);
    }

    #[test]
    fn a_newer_leader_takes_over_and_an_older_one_waits() {
        let board = JobBoard::default();
        let (old, _) = started(board.begin(JobKind::Restore, "t1", 4));
        // The same leader, another token: busy.
        assert!(matches!(board.begin(JobKind::Restore, "t2", 4), Begin::Busy(j) if j.key == "t1"));
        assert!(!old.is_cancelled());
        // A newer leader: the older job is cancelled, the new one reported.
        let (new, _) = started(board.begin(JobKind::Restore, "t3", 5));
        assert!(old.is_cancelled());
        assert!(!new.is_cancelled());
        // The old job's end does not touch the new job's record.
        board.set_phase("t1", JobPhase::Failed("cancelled".into()));
        assert_eq!(board.list().len(), 1);
        assert_eq!(board.list()[0].key, "t3");
        assert_eq!(board.list()[0].phase, JobPhase::Downloading);
        // A halt cancels the running job.
        board.halt();
        assert!(new.is_cancelled());
    }
}
