//! Executing a plan: the actions in order, the first failure stops the plan
//! and backs that action kind off.

use std::time::Duration;

use super::error::Missing;
use super::{Driver, DriverError, ETCD_MEMBERSHIP_RETRY, PEER_TIMEOUT};
use crate::controller::{Action, Observation, Plan};
use crate::metrics as m;
use crate::peer::{EtcdNodeConfig, Fence, JOIN_TIMEOUT, JoinCluster, JoinPhase, NodeInfo, Request};

impl Driver {
    pub(super) async fn execute(&mut self, plan: Plan, epoch: u64, obs: &Observation) -> bool {
        let mut acted = false;
        for action in plan.actions {
            // Rule 1: act only while the lease is valid, judged again before every action.
            if self.settings.rules.recheck_lease && self.lease.held(self.clock.now()) != Some(epoch)
            {
                tracing::warn!(action = action.label(), "lease no longer held; stopping");
                break;
            }
            tracing::info!(action = action.label(), details = ?action, "executing");
            let result = self.execute_one(&action, epoch, obs).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!(m::RECONCILE_ACTIONS, "action" => action.label(), "result" => label)
                .increment(1);
            acted = true;
            match result {
                Ok(()) => {
                    self.pace.backoff.succeeded(action.label());
                    metrics::gauge!(m::ACTION_BACKOFF, "action" => action.label()).set(0.0);
                }
                Err(e) => {
                    let permanent = e.is_permanent();
                    let wait = self.pace.backoff.failed(
                        action.label(),
                        self.clock.now(),
                        &e.to_string(),
                        permanent,
                    );
                    metrics::gauge!(m::ACTION_BACKOFF, "action" => action.label())
                        .set(wait.as_secs_f64());
                    tracing::warn!(action = action.label(), error = %e, permanent, retry_in = ?wait, "action failed");
                    break;
                }
            }
        }
        acted
    }

    /// How long a membership change may keep retrying: `ETCD_MEMBERSHIP_RETRY`, cut to
    /// what is left of the lease.
    pub(super) fn membership_deadline(&self) -> Result<Duration, DriverError> {
        let rules = self.settings.rules;
        match self.lease.remaining(self.clock.now()) {
            None if rules.recheck_lease => Err(Missing::LeaseLost.into()),
            Some(left) if rules.bound_retries => Ok(crate::leadership::retry_deadline(
                ETCD_MEMBERSHIP_RETRY,
                left,
            )),
            // Only with a safety rule switched off (the simulation).
            _ => Ok(ETCD_MEMBERSHIP_RETRY),
        }
    }

    /// One action of a plan: the dispatch to the function that carries it
    /// out (in `actions.rs`, `backups.rs`, `maintenance.rs`, `membership.rs`).
    pub(super) async fn execute_one(
        &mut self,
        action: &Action,
        epoch: u64,
        obs: &Observation,
    ) -> Result<(), DriverError> {
        let fence = self.fence(epoch);
        match action {
            Action::SeedCluster {
                token,
                version,
                peers,
            } => self.seed_cluster(token, version, peers, epoch, obs).await,
            Action::WriteCreatedMarker => self.write_created_marker().await,
            Action::LiftQuarantine { peers } => self.quarantine(peers, false, &fence).await,
            Action::Quarantine { peers } => self.quarantine(peers, true, &fence).await,
            Action::TakeBackup { reason } => self.take_backup(epoch, obs, *reason).await,
            Action::AddMember {
                peer,
                learner,
                token,
                version,
            } => {
                self.add_member(obs, peer, *learner, token, version, &fence)
                    .await
            }
            Action::StartAddedMember {
                peer,
                member_id: _,
                token,
                version,
            } => {
                self.start_added_member(obs, peer, token, version, &fence)
                    .await
            }
            Action::PromoteMember { member_id, name } => {
                self.promote_member(obs, *member_id, name).await
            }
            Action::RemoveMember { member_id, name } => {
                self.remove_member(obs, *member_id, name, &fence).await
            }
            Action::UpgradeMember { peer, version } => {
                self.upgrade_member(peer, version, &fence).await
            }
            Action::StopEtcd { peer } => self.stop_etcd(peer, &fence).await,
            Action::EnableDowngrade { minor } => self.enable_downgrade(obs, minor).await,
            Action::CancelDowngrade => self.cancel_downgrade(obs).await,
            Action::ClearSpaceAlarm => self.clear_space_alarm(obs).await,
            Action::Defragment {
                member_id,
                name,
                move_leader,
            } => self.defragment(obs, *member_id, name, *move_leader).await,
            Action::DefragmentNow {
                members,
                move_leader,
                request,
            } => {
                self.defragment_now(obs, members, *move_leader, request)
                    .await
            }
            Action::RestoreBackup {
                command,
                backup,
                token,
                version,
                peers,
            } => {
                self.restore_backup(command, backup, token, version, peers, obs, &fence)
                    .await
            }
            Action::QueueRestore { spec } => self.queue_version_restore(spec).await,
            Action::CompleteRestore { command } => self.complete_restore(command).await,
            Action::VerifyBackup {
                backup,
                peer,
                request,
            } => {
                self.hand_over_drill(backup, peer, request.as_deref(), &fence)
                    .await
            }
            Action::GcTrashcan { peers, keep } => self.gc_trashcans(peers, *keep, &fence).await,
            Action::ApplyRetention => self.apply_retention().await,
            Action::CheckV2Store { peers } => self.check_v2store(peers, epoch, obs).await,
            Action::CheckSettings { peers, version } => self.check_settings(peers, version).await,
            Action::RecoverQuorum {
                from,
                backup,
                spec,
                request,
            } => {
                self.recover_quorum(
                    from.as_ref(),
                    backup.as_deref(),
                    spec,
                    request.as_deref(),
                    epoch,
                    obs,
                )
                .await
            }
            Action::ClearPrefixes { token, prefixes } => {
                self.clear_prefixes(obs, token, prefixes).await
            }
            Action::ClearBackupRequest => self.clear_backup_request().await,
            Action::ClearRecoverQuorumRequest { expired, .. } => {
                self.clear_recover_request(*expired).await
            }
        }
    }

    /// [`Action::WriteCreatedMarker`]: the store's marker, or with
    /// `--static-config` the removal of `please-create-new-cluster`.
    async fn write_created_marker(&self) -> Result<(), DriverError> {
        if self.settings.static_config.is_some() {
            return self.remove_create_file();
        }
        Ok(self.store.write_created(self.clock.wall()).await?)
    }

    /// [`Action::Quarantine`] and [`Action::LiftQuarantine`].
    async fn quarantine(
        &self,
        peers: &[String],
        on: bool,
        fence: &crate::peer::Fence,
    ) -> Result<(), DriverError> {
        self.set_quarantine(peers, on, fence).await?;
        if on {
            tracing::info!(peers = ?peers, "quarantined: clients are kept out");
        } else {
            tracing::info!(peers = ?peers, "quarantine lifted");
        }
        Ok(())
    }

    pub(super) async fn start_member(
        &self,
        id: &str,
        info: &NodeInfo,
        members: &[etcd::Member],
        token: &str,
        version: &str,
        fence: &Fence,
    ) -> Result<(), DriverError> {
        let pc = &self.settings.peers.clone();
        let nodes: Vec<EtcdNodeConfig> = members
            .iter()
            .map(|mb| {
                let is_new = mb
                    .peer_urls
                    .iter()
                    .any(|u| info.node_config.peer_urls.contains(u));
                EtcdNodeConfig {
                    name: if is_new {
                        id.to_string()
                    } else {
                        mb.name.clone()
                    },
                    peer_urls: mb.peer_urls.clone(),
                    client_urls: mb.client_urls.clone(),
                    quarantined_client_urls: vec![],
                }
            })
            .collect();
        let addr = self.addr_of(id)?;
        let join = JoinTemplate {
            fence: fence.clone(),
            token: token.to_string(),
            version: version.to_string(),
            quarantined: false,
            nodes,
        };
        pc.call(addr, &join.request(JoinPhase::Prepare), PEER_TIMEOUT)
            .await
            .map_err(DriverError::from)?;
        pc.call(addr, &join.request(JoinPhase::JoinExisting), JOIN_TIMEOUT)
            .await
            .map_err(DriverError::from)?;
        tracing::info!(peer = %id, "new member started");
        Ok(())
    }
}

/// The parts of a JoinCluster request that stay the same across its phases.
pub(super) struct JoinTemplate {
    pub(super) fence: Fence,
    pub(super) token: String,
    pub(super) version: String,
    pub(super) quarantined: bool,
    pub(super) nodes: Vec<EtcdNodeConfig>,
}

impl JoinTemplate {
    pub(super) fn request(&self, phase: JoinPhase) -> Request {
        Request::JoinCluster(JoinCluster {
            fence: self.fence.clone(),
            phase,
            cluster_token: self.token.clone(),
            etcd_version: self.version.clone(),
            quarantined: self.quarantined,
            nodes: self.nodes.clone(),
        })
    }
}
