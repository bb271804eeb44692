//! Fencing: every mutating request names its leader's epoch and lease
//! record. One below the highest this node has seen is refused; with TLS it
//! must come from the node its fence names; a higher one is first checked
//! against the lease records in the store; an equal one must name the same
//! leader as before. What is admitted is persisted before it is acted on.

use std::time::Duration;

use crate::peer::{Fence, Refusal, Response};

use super::requests::refused;
use super::{Inner, Node};

/// How long a node waits for the store when it checks a new epoch.
pub(super) const EPOCH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl Node {
    /// Check and record the fence; Err is the response to send. `verified`:
    /// the store confirmed this fence's leader at its epoch (checked by the
    /// caller before taking the lock, see [`Node::handle`]).
    pub(super) fn admit(
        &self,
        inner: &mut Inner,
        fence: &Fence,
        verified: bool,
    ) -> Result<(), Response> {
        if fence.cluster_name != self.settings.cluster_name {
            return Err(Response::Failed(Refusal::OtherCluster {
                ours: self.settings.cluster_name.clone(),
                theirs: fence.cluster_name.clone(),
            }));
        }
        let highest = inner.state.highest_epoch;
        if !self.settings.rules.fence && fence.epoch < highest {
            // Only with the fence switched off (the simulation): admitted,
            // and the higher epoch stays recorded.
            return Ok(());
        }
        if !crate::leadership::admits(highest, fence.epoch) {
            tracing::warn!(leader = %fence.leader_id, epoch = fence.epoch, highest, "refused a stale leader");
            refused("fenced");
            return Err(Response::Fenced {
                highest_epoch: highest,
            });
        }
        let same_leader =
            inner.state.highest_epoch_leader.as_deref() == Some(fence.leader_id.as_str());
        if fence.epoch == highest && !same_leader && !verified {
            refused("unverified_epoch");
            return Err(Response::Failed(Refusal::EpochOfAnother {
                epoch: fence.epoch,
                holder: inner
                    .state
                    .highest_epoch_leader
                    .clone()
                    .unwrap_or_else(|| "an unrecorded leader".into()),
                leader: fence.leader_id.clone(),
            }));
        }
        if fence.epoch > highest && !verified {
            refused("unverified_epoch");
            return Err(Response::Failed(Refusal::EpochUnconfirmed {
                epoch: fence.epoch,
                leader: fence.leader_id.clone(),
            }));
        }
        if fence.epoch == highest
            && same_leader
            && fence.lease_seq < inner.state.highest_lease_seq
            && self.settings.rules.fence
        {
            tracing::warn!(leader = %fence.leader_id, epoch = fence.epoch, lease_seq = fence.lease_seq, newest = inner.state.highest_lease_seq, "refused a request that arrived after a newer one of its leader");
            refused("late");
            return Err(Response::Failed(Refusal::Late {
                seq: fence.lease_seq,
                epoch: fence.epoch,
                newest: inner.state.highest_lease_seq,
            }));
        }
        if fence.epoch > highest || !same_leader {
            inner.state.highest_epoch = fence.epoch;
            inner.state.highest_epoch_leader = Some(fence.leader_id.clone());
            inner.state.highest_lease_seq = fence.lease_seq;
            self.persist(inner)
                .map_err(|e| Response::Failed(Refusal::Failed(e.to_string())))?;
        } else if fence.lease_seq > inner.state.highest_lease_seq {
            inner.state.highest_lease_seq = fence.lease_seq;
            self.persist(inner)
                .map_err(|e| Response::Failed(Refusal::Failed(e.to_string())))?;
        }
        Ok(())
    }

    /// Whether `fence` needs the store's word before it can be admitted: its
    /// epoch is above the highest seen, or equal with a leader not recorded,
    /// or it names a lease record beyond the newest admitted (the record it
    /// names must exist: one never written would raise the newest admitted
    /// and refuse the leader's real requests as late).
    pub(super) async fn needs_check(&self, fence: &Fence) -> bool {
        let inner = self.inner.lock().await;
        let same_leader =
            inner.state.highest_epoch_leader.as_deref() == Some(fence.leader_id.as_str());
        let same_epoch = fence.epoch == inner.state.highest_epoch;
        fence.epoch > inner.state.highest_epoch
            || (same_epoch && (!same_leader || fence.lease_seq > inner.state.highest_lease_seq))
    }

    /// Ask the store whether a lease record names the fence's leader at its
    /// epoch; Err is the refusal to send.
    pub(super) async fn check_fence(&self, fence: &Fence) -> Result<(), Response> {
        let store = self.settings.store.object_store();
        let prefix = self.settings.store.lease_prefix();
        let check = lock::check_epoch(
            store.as_ref(),
            &prefix,
            fence.lease_seq,
            &fence.leader_id,
            fence.epoch,
        );
        match tokio::time::timeout(EPOCH_CHECK_TIMEOUT, check).await {
            Ok(Ok(lock::EpochCheck::Confirmed)) => Ok(()),
            Ok(Ok(lock::EpochCheck::Refuted(why))) => {
                tracing::warn!(leader = %fence.leader_id, epoch = fence.epoch, reason = %why, "refused a leader the store does not confirm");
                refused("unverified_epoch");
                Err(Response::Failed(Refusal::EpochRefuted(why.to_string())))
            }
            Ok(Err(e)) => {
                refused("unverified_epoch");
                Err(Response::Failed(Refusal::EpochUncheckable {
                    epoch: fence.epoch,
                    reason: e.to_string(),
                }))
            }
            Err(_) => {
                refused("unverified_epoch");
                Err(Response::Failed(Refusal::EpochUncheckable {
                    epoch: fence.epoch,
                    reason: format!("the store did not answer within {EPOCH_CHECK_TIMEOUT:?}"),
                }))
            }
        }
    }
}
