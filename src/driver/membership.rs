//! The actions on etcd's membership and on the members' managers: add,
//! start, promote, remove, upgrade and stop a member, and etcd's downgrade
//! switch. One function each, each returning what went wrong typed.

use std::sync::Arc;

use super::error::Missing;
use super::observe::cluster_client;
use super::{Driver, DriverError, info_of};
use crate::controller::Observation;
use crate::edges::EtcdApi;
use crate::peer::{Fence, JOIN_TIMEOUT, NodeInfo, Reconfigure, Request};

impl Driver {
    /// [`Action::AddMember`]: register the peer in etcd (as a learner where
    /// etcd has them; retried within the lease), then start it.
    pub(super) async fn add_member(
        &self,
        obs: &Observation,
        id: &str,
        learner: bool,
        token: &str,
        version: &str,
        fence: &Fence,
    ) -> Result<(), DriverError> {
        let (info, client) = self.joiner(obs, id).await?;
        let deadline = self.membership_deadline()?;
        let (added, all) = client
            .member_add_retrying(&info.node_config.peer_urls, learner, deadline)
            .await?;
        tracing::info!(peer = %id, member_id = added.id, learner, "member added");
        self.start_member(id, &info, &all, token, version, fence)
            .await
    }

    /// [`Action::StartAddedMember`]: start a member etcd has but that never
    /// started (a leader change cut its add short).
    pub(super) async fn start_added_member(
        &self,
        obs: &Observation,
        id: &str,
        token: &str,
        version: &str,
        fence: &Fence,
    ) -> Result<(), DriverError> {
        let (info, client) = self.joiner(obs, id).await?;
        let all = client.member_list().await?;
        self.start_member(id, &info, &all, token, version, fence)
            .await
    }

    /// What a member about to start needs: its manager's answer and a
    /// client of the cluster it joins.
    async fn joiner(
        &self,
        obs: &Observation,
        id: &str,
    ) -> Result<(NodeInfo, Arc<dyn EtcdApi>), DriverError> {
        let info = info_of(obs, id).ok_or_else(|| Missing::PeerSilent(id.to_string()))?;
        let client = cluster_client(obs, &*self.settings.etcd).await?;
        Ok((info, client))
    }

    /// [`Action::PromoteMember`]: a learner not caught up yet is no failure;
    /// the next pass asks again.
    pub(super) async fn promote_member(
        &self,
        obs: &Observation,
        member_id: u64,
        name: &str,
    ) -> Result<(), DriverError> {
        let client = cluster_client(obs, &*self.settings.etcd).await?;
        match client.member_promote(member_id).await {
            Ok(()) => tracing::info!(member = %name, "learner promoted to voter"),
            Err(e) => {
                tracing::info!(member = %name, error = %e, "learner not ready for promotion yet")
            }
        }
        Ok(())
    }

    /// [`Action::RemoveMember`]: remove it from etcd (retried within the
    /// lease), then stop its etcd if its manager answers.
    pub(super) async fn remove_member(
        &self,
        obs: &Observation,
        member_id: u64,
        name: &str,
        fence: &Fence,
    ) -> Result<(), DriverError> {
        let client = cluster_client(obs, &*self.settings.etcd).await?;
        let deadline = self.membership_deadline()?;
        client.member_remove_retrying(member_id, deadline).await?;
        tracing::info!(member = %name, "member removed");
        if let Ok(addr) = self.addr_of(name) {
            self.settings
                .peers
                .call(addr, &Request::StopEtcd(fence.clone()), JOIN_TIMEOUT)
                .await?;
        }
        Ok(())
    }

    /// [`Action::UpgradeMember`]: the member's manager restarts it on `version`.
    pub(super) async fn upgrade_member(
        &self,
        id: &str,
        version: &str,
        fence: &Fence,
    ) -> Result<(), DriverError> {
        let req = Request::Reconfigure(Reconfigure {
            fence: fence.clone(),
            quarantined: None,
            etcd_version: Some(version.to_string()),
        });
        self.settings
            .peers
            .call(self.addr_of(id)?, &req, JOIN_TIMEOUT)
            .await?;
        tracing::info!(peer = %id, %version, "member restarted on the new version");
        Ok(())
    }

    /// [`Action::StopEtcd`]: the peer's manager stops its etcd.
    pub(super) async fn stop_etcd(&self, id: &str, fence: &Fence) -> Result<(), DriverError> {
        self.settings
            .peers
            .call(
                self.addr_of(id)?,
                &Request::StopEtcd(fence.clone()),
                JOIN_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// [`Action::EnableDowngrade`]: etcd's own downgrade protocol, validated
    /// and enabled by etcd.
    pub(super) async fn enable_downgrade(
        &self,
        obs: &Observation,
        minor: &str,
    ) -> Result<(), DriverError> {
        let client = cluster_client(obs, &*self.settings.etcd).await?;
        client.enable_downgrade(minor).await?;
        tracing::info!(%minor, "downgrade validated and enabled (etcd's downgrade protocol)");
        Ok(())
    }

    /// [`Action::CancelDowngrade`]: the spec no longer asks for it.
    pub(super) async fn cancel_downgrade(&self, obs: &Observation) -> Result<(), DriverError> {
        let client = cluster_client(obs, &*self.settings.etcd).await?;
        client.cancel_downgrade().await?;
        tracing::info!("downgrade cancelled: the spec no longer asks for it");
        Ok(())
    }
}
