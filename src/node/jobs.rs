//! Long node operations as jobs. A restore downloads a backup of up to
//! gigabytes, checks it and has etcd's tool write a new data dir: minutes,
//! maybe an hour over a slow link. The leader starts it with one short
//! request ([`crate::peer::Request::RestoreJob`]) and follows it in every
//! `GetInfo` answer ([`crate::core::model::NodeInfo::jobs`]); no request
//! waits on it, and no lock is held while it downloads. The check of a
//! member's v2 store before a move to 3.6 (a copy of its data, then
//! etcdutl on the copy) runs the same way
//! ([`crate::peer::Request::V2StoreJob`]).
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
    /// started again, and so is a check that ended (the data may have
    /// changed since).
    pub fn begin(&self, kind: JobKind, key: &str, epoch: u64) -> Begin {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slot.as_ref() {
            let same = e.job.kind == kind && e.job.key == key;
            let again = match e.job.phase {
                JobPhase::Failed(_) => true,
                JobPhase::Done | JobPhase::Found(_) => kind == JobKind::CheckV2Store,
                _ => false,
            };
            if same && !again {
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
                phase: kind.first_phase(),
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
            JobPhase::Failed(m) => JobPhase::Failed(cut_message(m)),
            JobPhase::Found(m) => JobPhase::Found(cut_message(m)),
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

/// `m`, cut to [`MAX_JOB_MESSAGE`] bytes.
fn cut_message(mut m: String) -> String {
    if m.len() > MAX_JOB_MESSAGE {
        let mut cut = MAX_JOB_MESSAGE;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push_str("...");
    }
    m
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
    fn a_check_starts_checking_and_ends_with_what_it_found() {
        let board = JobBoard::default();
        started(board.begin(JobKind::CheckV2Store, "t1", 4));
        assert_eq!(board.list()[0].phase, JobPhase::Checking);
        // A restore of another cluster for the same leader waits for it.
        assert!(
            matches!(board.begin(JobKind::Restore, "t2", 4), Begin::Busy(j) if j.kind == JobKind::CheckV2Store)
        );
        board.set_phase("t1", JobPhase::Found("é".repeat(MAX_JOB_MESSAGE)));
        let JobPhase::Found(m) = &board.list()[0].phase else {
            panic!("found")
        };
        assert!(m.len() <= MAX_JOB_MESSAGE + 3, "the finding is cut");
        // Ended: a restore may start; a check asked again runs again.
        started(board.begin(JobKind::Restore, "t2", 4));
        assert_eq!(board.list()[0].phase, JobPhase::Downloading);
        board.set_phase("t2", JobPhase::Done);
        started(board.begin(JobKind::CheckV2Store, "t2", 5));
        assert!(matches!(
            board.begin(JobKind::CheckV2Store, "t2", 5),
            Begin::Known(JobPhase::Checking)
        ));
        board.set_phase("t2", JobPhase::Done);
        started(board.begin(JobKind::CheckV2Store, "t2", 5));
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
