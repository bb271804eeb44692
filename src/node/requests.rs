//! The peer API's requests as this node answers them: fenced, then
//! dispatched to the process, restore or state code that carries them out.

use tokio::sync::MutexGuard;

use crate::core::model::JobKind;
use crate::peer::{Caller, Fence, Refusal, Request, Response};

use super::restore::gc_trashcan;
use super::restore::job_end;
use super::{Inner, Node, NodeError};

/// Count a refused peer request by reason.
pub(super) fn refused(reason: &'static str) {
    metrics::counter!(crate::metrics::PEER_API_REFUSED, "reason" => reason).increment(1);
}

/// Done, or the refusal a leader reads.
fn done(result: Result<(), NodeError>) -> Response {
    match result {
        Ok(()) => Response::Done,
        Err(e) => Response::Failed(e.into()),
    }
}

impl Node {
    /// Answer one peer-API request from `caller`: the unfenced ones at
    /// once, the fenced ones once their fence is checked and admitted.
    pub async fn handle(&self, caller: &Caller, req: Request) -> Response {
        if let Request::GetInfo = req {
            return Response::Info(Box::new(self.info().await));
        }
        if let Err(e) = req.validate() {
            return Response::Failed(Refusal::BadRequest(e.to_string()));
        }
        match &req {
            Request::Leadership {
                cluster_name,
                candidate,
                store_id,
            } => {
                if let Err(r) = caller.may_act_as(candidate) {
                    refused("not_the_caller");
                    return Response::Failed(r);
                }
                return self.judge_leadership(cluster_name, candidate, store_id);
            }
            Request::CheckSettings { version } => return self.answer_settings(version).await,
            _ => {}
        }
        let Some(fence) = req.fence() else {
            return Response::Failed(Refusal::BadRequest(format!(
                "{} carries no fence",
                req.kind()
            )));
        };
        let mut inner = match self.fenced(caller, fence).await {
            Ok(inner) => inner,
            Err(resp) => return resp,
        };
        match req {
            Request::VerifyBackup { backup, .. } => {
                drop(inner);
                self.start_drill(&backup);
                Response::Done
            }
            Request::RestoreJob(r) => {
                drop(inner);
                self.start_restore_job(r)
            }
            Request::RestoreBackup(r) => {
                drop(inner);
                self.restore_while_asked(r).await
            }
            Request::V2StoreJob(f) => self.v2store_job(inner, f.epoch),
            Request::CheckV2Store(_) => self.v2store_while_asked(inner).await,
            Request::JoinCluster(j) => done(self.join(&mut inner, j).await),
            Request::Reconfigure(r) => done(
                self.reconfigure(&mut inner, r.quarantined, r.etcd_version)
                    .await,
            ),
            Request::StopEtcd(_) => done(self.stop_for_good(&mut inner).await),
            Request::GcTrashcan { keep, .. } => done(self.empty_trashcan(keep)),
            Request::GetInfo | Request::Leadership { .. } | Request::CheckSettings { .. } => {
                Response::Failed(Refusal::BadRequest(format!(
                    "{} is answered before fencing",
                    req.kind()
                )))
            }
        }
    }

    /// Whether this node's etcd settings survive `version`.
    async fn answer_settings(&self, version: &str) -> Response {
        let current = self.inner.lock().await.state.etcd.clone();
        match current {
            None => Response::Failed(Refusal::NoEtcd),
            Some(local) => Response::Settings {
                lost: self.lost_settings(&local.etcd_version, version),
            },
        }
    }

    /// The node's state, locked, once `fence` is admitted: from the node it
    /// names (with TLS), confirmed by the store when it is new (asked
    /// without the lock: GetInfo keeps answering); else the refusal.
    async fn fenced(
        &self,
        caller: &Caller,
        fence: &Fence,
    ) -> Result<MutexGuard<'_, Inner>, Response> {
        if let Err(r) = caller.may_act_as(&fence.leader_id) {
            tracing::warn!(caller = ?caller.node_id, leader = %fence.leader_id, from = %caller.addr, "refused a request sent for another node");
            refused("not_the_caller");
            return Err(Response::Failed(r));
        }
        let mut verified = false;
        if self.needs_check(fence).await {
            self.check_fence(fence).await?;
            verified = true;
        }
        let mut inner = self.inner.lock().await;
        self.admit(&mut inner, fence, verified)?;
        Ok(inner)
    }

    /// An older leader's restore, answered when it ends. The download runs
    /// without the lock: GetInfo keeps answering.
    async fn restore_while_asked(&self, r: crate::peer::RestoreBackup) -> Response {
        let (cancel, bytes) =
            match self
                .jobs
                .begin(JobKind::Restore, &r.cluster_token, r.fence.epoch)
            {
                crate::node::jobs::Begin::Start { cancel, bytes } => (cancel, bytes),
                // Repeated, or behind another: it waits for the one running.
                _ => Default::default(),
            };
        let key = r.cluster_token.clone();
        let result = self.restore(r, &cancel, &bytes).await;
        self.jobs.set_phase(&key, job_end(&result));
        match result {
            Ok(()) => Response::Done,
            Err(resp) => resp,
        }
    }

    /// The v2 store check of this member's data as a job of `epoch`'s leader.
    fn v2store_job(&self, inner: MutexGuard<'_, Inner>, epoch: u64) -> Response {
        let data = inner.state.etcd.as_ref().map(|l| {
            (
                l.cluster_token.clone(),
                self.etcd_data_dir(&l.cluster_token),
            )
        });
        drop(inner);
        match data {
            None => Response::Failed(Refusal::NoEtcd),
            Some((token, data)) => self.start_v2store_job(token, data, epoch),
        }
    }

    /// An older leader's v2 store check, answered when it ends. The copy
    /// and the check run without the lock: GetInfo answers.
    async fn v2store_while_asked(&self, inner: MutexGuard<'_, Inner>) -> Response {
        let data = inner
            .state
            .etcd
            .as_ref()
            .map(|l| self.etcd_data_dir(&l.cluster_token));
        drop(inner);
        let Some(data) = data else {
            return Response::Failed(Refusal::NoEtcd);
        };
        match self.check_v2store(&data).await {
            Ok(etcd::V2StoreVerdict::Clean) => Response::V2Store { custom: None },
            Ok(etcd::V2StoreVerdict::Custom(what)) => Response::V2Store { custom: Some(what) },
            Err(e) => Response::Failed(e.into()),
        }
    }

    /// Old etcd data in the trashcan beyond the newest `keep` (never fewer
    /// than one: the newest old data dir stays whatever is asked).
    fn empty_trashcan(&self, keep: u32) -> Result<(), NodeError> {
        let dir = self.settings.data_dir.join("data-trashcan");
        let gone = gc_trashcan(&dir, keep.max(1) as usize).map_err(|source| NodeError::Io {
            what: "cleaning",
            path: dir.clone(),
            source,
        })?;
        for p in &gone {
            tracing::info!(path = %p.display(), "old etcd data deleted from the trashcan");
        }
        Ok(())
    }
}
