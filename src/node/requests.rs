//! The peer API's requests as this node answers them: fenced, then
//! dispatched to the process, restore or state code that carries them out.

use crate::core::model::JobKind;
use crate::peer::{Request, Response};

use super::Node;
use super::restore::gc_trashcan;
use super::restore::job_end;

pub(super) fn unreachable_info() -> Result<(), String> {
    Err("GetInfo is answered before fencing".into())
}

/// Count a refused peer request by reason.
pub(super) fn refused(reason: &'static str) {
    metrics::counter!(crate::metrics::PEER_API_REFUSED, "reason" => reason).increment(1);
}

impl Node {
    /// Answer one peer-API request from `caller`.
    pub async fn handle(&self, caller: &crate::peer::Caller, req: Request) -> Response {
        if let Request::GetInfo = req {
            return Response::Info(Box::new(self.info().await));
        }
        if let Err(msg) = req.validate() {
            return Response::Failed(format!("bad request: {msg}"));
        }
        if let Request::Leadership {
            cluster_name,
            candidate,
            store_id,
        } = &req
        {
            if let Err(msg) = caller.may_act_as(candidate) {
                refused("not_the_caller");
                return Response::Failed(msg);
            }
            return self.judge_leadership(cluster_name, candidate, store_id);
        }
        if let Request::CheckSettings { version } = &req {
            let current = self.inner.lock().await.state.etcd.clone();
            return match current {
                None => Response::Failed("this node runs no etcd".into()),
                Some(local) => Response::Settings {
                    lost: self.lost_settings(&local.etcd_version, version),
                },
            };
        }
        let mut verified = false;
        if let Some(fence) = req.fence() {
            if let Err(msg) = caller.may_act_as(&fence.leader_id) {
                tracing::warn!(caller = ?caller.node_id, leader = %fence.leader_id, from = %caller.addr, "refused a request sent for another node");
                refused("not_the_caller");
                return Response::Failed(msg);
            }
            // The store is asked without holding the lock (GetInfo keeps answering).
            if self.needs_check(fence).await {
                if let Err(resp) = self.check_fence(fence).await {
                    return resp;
                }
                verified = true;
            }
        }
        let mut inner = self.inner.lock().await;
        if let Some(fence) = req.fence()
            && let Err(resp) = self.admit(&mut inner, fence, verified)
        {
            return resp;
        }
        if let Request::VerifyBackup { backup, .. } = &req {
            drop(inner);
            self.start_drill(backup);
            return Response::Done;
        }
        if let Request::RestoreJob(r) = req {
            drop(inner);
            return self.start_restore_job(r);
        }
        if let Request::RestoreBackup(r) = req {
            // An older leader's restore, answered when it ends. The
            // download runs without the lock: GetInfo keeps answering.
            drop(inner);
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
            return match result {
                Ok(()) => Response::Done,
                Err(resp) => resp,
            };
        }
        if let Request::V2StoreJob(f) = req {
            let data = inner.state.etcd.as_ref().map(|l| {
                (
                    l.cluster_token.clone(),
                    self.etcd_data_dir(&l.cluster_token),
                )
            });
            drop(inner);
            return match data {
                None => Response::Failed("this node runs no etcd".into()),
                Some((token, data)) => self.start_v2store_job(token, data, f.epoch),
            };
        }
        if let Request::CheckV2Store(_) = req {
            let data = inner
                .state
                .etcd
                .as_ref()
                .map(|l| self.etcd_data_dir(&l.cluster_token));
            // An older leader's check, answered when it ends. The copy and
            // the check run without the lock: GetInfo answers.
            drop(inner);
            return match data {
                None => Response::Failed("this node runs no etcd".into()),
                Some(data) => match self.check_v2store(&data).await {
                    Ok(etcd::V2StoreVerdict::Clean) => Response::V2Store { custom: None },
                    Ok(etcd::V2StoreVerdict::Custom(what)) => {
                        Response::V2Store { custom: Some(what) }
                    }
                    Err(e) => Response::Failed(e),
                },
            };
        }
        let result = match req {
            Request::GetInfo
            | Request::Leadership { .. }
            | Request::CheckV2Store(_)
            | Request::VerifyBackup { .. }
            | Request::RestoreBackup(_)
            | Request::RestoreJob(_)
            | Request::V2StoreJob(_)
            | Request::CheckSettings { .. } => unreachable_info(),
            Request::JoinCluster(j) => self.join(&mut inner, j).await,
            Request::Reconfigure(r) => {
                self.reconfigure(&mut inner, r.quarantined, r.etcd_version)
                    .await
            }
            Request::StopEtcd(_) => self.stop_for_good(&mut inner).await,
            Request::GcTrashcan { keep, .. } => {
                let dir = self.settings.data_dir.join("data-trashcan");
                // Never empty it: the newest old data dir stays whatever is asked.
                match gc_trashcan(&dir, keep.max(1) as usize) {
                    Ok(gone) => {
                        for p in &gone {
                            tracing::info!(path = %p.display(), "old etcd data deleted from the trashcan");
                        }
                        Ok(())
                    }
                    Err(e) => Err(format!("cleaning {}: {e}", dir.display())),
                }
            }
        };
        match result {
            Ok(()) => Response::Done,
            Err(msg) => Response::Failed(msg),
        }
    }
}
