//! Executing a plan: the actions in order, the first failure stops the plan
//! and backs that action kind off.

use super::*;

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
                    self.backoff.succeeded(action.label());
                    metrics::gauge!(m::ACTION_BACKOFF, "action" => action.label()).set(0.0);
                }
                Err(e) => {
                    let permanent = e.is_permanent();
                    let wait = self.backoff.failed(
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
    pub(super) fn membership_deadline(&self) -> Result<Duration, String> {
        let rules = self.settings.rules;
        match self.lease.remaining(self.clock.now()) {
            None if rules.recheck_lease => Err("lease no longer held".into()),
            Some(left) if rules.bound_retries => Ok(crate::leadership::retry_deadline(
                ETCD_MEMBERSHIP_RETRY,
                left,
            )),
            // Only with a safety rule switched off (the simulation).
            _ => Ok(ETCD_MEMBERSHIP_RETRY),
        }
    }

    pub(super) async fn execute_one(
        &mut self,
        action: &Action,
        epoch: u64,
        obs: &Observation,
    ) -> Result<(), DriverError> {
        let pc = &self.settings.peers.clone();
        let fence = self.fence(epoch);
        match action {
            Action::SeedCluster {
                token,
                version,
                peers,
            } => self
                .seed_cluster(token, version, peers, epoch, obs)
                .await
                .map_err(Into::into),
            Action::WriteCreatedMarker if self.settings.static_config.is_some() => {
                // Upstream's static store: the cluster exists once this file is gone.
                let file = self
                    .node
                    .data_dir()
                    .join(crate::platform::statics::PLEASE_CREATE_NEW_CLUSTER);
                match std::fs::remove_file(&file) {
                    Ok(()) => {
                        tracing::info!(file = %file.display(), "cluster created; removed the file that allowed it");
                        Ok(())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(format!("removing {}: {e}", file.display()).into()),
                }
            }
            Action::WriteCreatedMarker => self
                .store
                .write_created(self.clock.wall())
                .await
                .map_err(DriverError::from),
            Action::LiftQuarantine { peers } => {
                self.set_quarantine(peers, false, &fence).await?;
                tracing::info!(peers = ?peers, "quarantine lifted");
                Ok(())
            }
            Action::TakeBackup { reason } => self
                .take_backup(epoch, obs, *reason)
                .await
                .map_err(Into::into),
            Action::AddMember {
                peer: id,
                learner,
                token,
                version,
            } => {
                let info = info_of(obs, id).ok_or_else(|| format!("peer {id} did not answer"))?;
                let client = cluster_client(obs, &*self.settings.etcd).await?;
                let deadline = self.membership_deadline()?;
                let (added, all) = client
                    .member_add_retrying(&info.node_config.peer_urls, *learner, deadline)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(peer = %id, member_id = added.id, learner, "member added");
                self.start_member(id, &info, &all, token, version, &fence)
                    .await
                    .map_err(Into::into)
            }
            Action::StartAddedMember {
                peer: id,
                member_id: _,
                token,
                version,
            } => {
                let info = info_of(obs, id).ok_or_else(|| format!("peer {id} did not answer"))?;
                let client = cluster_client(obs, &*self.settings.etcd).await?;
                let all = client.member_list().await.map_err(executing_error)?;
                self.start_member(id, &info, &all, token, version, &fence)
                    .await
                    .map_err(Into::into)
            }
            Action::EnableDowngrade { minor } => {
                let client = cluster_client(obs, &*self.settings.etcd).await?;
                client
                    .enable_downgrade(minor)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(%minor, "downgrade validated and enabled (etcd's downgrade protocol)");
                Ok(())
            }
            Action::ClearSpaceAlarm => self.clear_space_alarm(obs).await,
            Action::Defragment {
                member_id,
                name,
                move_leader,
            } => self
                .defragment(obs, *member_id, name, *move_leader)
                .await
                .map_err(Into::into),
            Action::CancelDowngrade => {
                let client = cluster_client(obs, &*self.settings.etcd).await?;
                client.cancel_downgrade().await.map_err(executing_error)?;
                tracing::info!("downgrade cancelled: the spec no longer asks for it");
                Ok(())
            }
            Action::PromoteMember { member_id, name } => {
                let client = cluster_client(obs, &*self.settings.etcd).await?;
                match client.member_promote(*member_id).await {
                    Ok(()) => {
                        tracing::info!(member = %name, "learner promoted to voter");
                        Ok(())
                    }
                    Err(e) => {
                        tracing::info!(member = %name, error = %e, "learner not ready for promotion yet");
                        Ok(())
                    }
                }
            }
            Action::RemoveMember { member_id, name } => {
                let client = cluster_client(obs, &*self.settings.etcd).await?;
                let deadline = self.membership_deadline()?;
                client
                    .member_remove_retrying(*member_id, deadline)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(member = %name, "member removed");
                if let Ok(addr) = self.addr_of(name) {
                    pc.call(addr, &Request::StopEtcd(fence.clone()), JOIN_TIMEOUT)
                        .await
                        .map_err(executing_error)?;
                }
                Ok(())
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
            Action::UpgradeMember { peer: id, version } => {
                let req = Request::Reconfigure(Reconfigure {
                    fence: fence.clone(),
                    quarantined: None,
                    etcd_version: Some(version.clone()),
                });
                pc.call(self.addr_of(id)?, &req, JOIN_TIMEOUT)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(peer = %id, %version, "member restarted on the new version");
                Ok(())
            }
            Action::Quarantine { peers } => {
                self.set_quarantine(peers, true, &fence).await?;
                tracing::info!(peers = ?peers, "quarantined: clients are kept out");
                Ok(())
            }
            Action::QueueRestore { spec } => {
                let name = self
                    .last_backup_name
                    .clone()
                    .ok_or("no backup taken by this leader to restore")?;
                let queued = self.queue_restore(&name, spec).await?;
                tracing::info!(backup = %name, version = %spec.etcd_version, command = %queued, "queued a restore for the version change");
                Ok(())
            }
            Action::VerifyBackup {
                backup,
                peer,
                request,
            } => {
                let req = Request::VerifyBackup {
                    fence: fence.clone(),
                    backup: backup.clone(),
                };
                pc.call(self.addr_of(peer)?, &req, PEER_TIMEOUT)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(%backup, %peer, "restore drill handed to a manager");
                match request {
                    Some(r) => self
                        .store
                        .delete_manager_file(r)
                        .await
                        .map_err(executing_error)?,
                    None => self.unverified_backup = None,
                }
                Ok(())
            }
            Action::GcTrashcan { peers, keep } => {
                // Best effort: a peer that cannot clean up now will on the next round.
                for p in peers.clone() {
                    let req = Request::GcTrashcan {
                        fence: fence.clone(),
                        keep: *keep,
                    };
                    match self.addr_of(&p) {
                        Ok(addr) => {
                            if let Err(e) = pc.call(addr, &req, JOIN_TIMEOUT).await {
                                tracing::warn!(peer = %p, error = %e, "trashcan clean-up failed");
                            }
                        }
                        Err(e) => {
                            tracing::debug!(peer = %p, error = %e, "trashcan clean-up skipped")
                        }
                    }
                }
                Ok(())
            }
            Action::ApplyRetention => {
                let deleted = self
                    .store
                    .apply_retention(self.clock.wall(), &self.settings.retention)
                    .await
                    .map_err(executing_error)?;
                self.last_retention = Some(self.clock.now());
                tracing::info!(deleted = deleted.len(), "retention applied");
                Ok(())
            }
            Action::CheckV2Store { peers } => self
                .check_v2store(peers, epoch, obs)
                .await
                .map_err(Into::into),
            Action::CheckSettings { peers, version } => self
                .check_settings(peers, version)
                .await
                .map_err(Into::into),
            Action::DefragmentNow {
                members,
                move_leader,
                request,
            } => {
                if members.is_empty() {
                    tracing::warn!(%request, "an operator asked to defragment a member the cluster does not have; request dropped");
                }
                let last = members.len().saturating_sub(1);
                for (i, (id, name)) in members.iter().enumerate() {
                    self.defragment(obs, *id, name, *move_leader && i == last)
                        .await?;
                }
                self.store
                    .delete_manager_file(request)
                    .await
                    .map_err(executing_error)?;
                tracing::info!(
                    members = members.len(),
                    "defragmentation an operator asked for is done"
                );
                Ok(())
            }
            Action::RecoverQuorum {
                from,
                backup,
                spec,
                request,
            } => self
                .recover_quorum(
                    from.as_ref(),
                    backup.as_deref(),
                    spec,
                    request.as_deref(),
                    epoch,
                    obs,
                )
                .await
                .map_err(Into::into),
            Action::ClearPrefixes { token, prefixes } => {
                let client = cluster_client(obs, &*self.settings.etcd).await?;
                for prefix in prefixes {
                    let n = client
                        .delete_prefix(prefix)
                        .await
                        .map_err(executing_error)?;
                    tracing::info!(%prefix, deleted = n, %token, "cleared keys from the restored cluster before clients reach it");
                }
                self.prefixes_cleared.insert(token.clone());
                Ok(())
            }
            Action::ClearBackupRequest => self.clear_backup_request().await,
            Action::ClearRecoverQuorumRequest { expired, .. } => {
                self.clear_recover_request(*expired).await
            }
            Action::CompleteRestore { command } => {
                self.store
                    .delete_command(command)
                    .await
                    .map_err(executing_error)?;

                tracing::info!(%command, "restore complete; command removed");
                Ok(())
            }
            Action::StopEtcd { peer: id } => pc
                .call(
                    self.addr_of(id)?,
                    &Request::StopEtcd(fence.clone()),
                    JOIN_TIMEOUT,
                )
                .await
                .map(|_| ())
                .map_err(|e| DriverError::from(executing_error(e))),
        }
    }

    pub(super) async fn start_member(
        &self,
        id: &str,
        info: &NodeInfo,
        members: &[etcd::Member],
        token: &str,
        version: &str,
        fence: &Fence,
    ) -> Result<(), String> {
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
            .map_err(executing_error)?;
        pc.call(addr, &join.request(JoinPhase::JoinExisting), JOIN_TIMEOUT)
            .await
            .map_err(executing_error)?;
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
