//! Keeping etcd well: clearing a NOSPACE alarm, defragmenting members, and
//! quarantine on and off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::error::Missing;
use super::observe::{cluster_client, healthy_endpoints};
use super::{Driver, DriverError, ETCD_DEFRAG_TIMEOUT, SPACE_ALARM_AGAIN};
use crate::controller::Observation;
use crate::edges::EtcdApi;
use crate::metrics as m;
use crate::peer::{Fence, JOIN_TIMEOUT, Reconfigure, Request};

/// The members' etcd as this leader reaches it.
#[derive(Default)]
pub(super) struct EtcdLink {
    /// etcd clients of the last pass by client URL, kept while they answer (a
    /// new client per member per pass cost a TLS handshake each, most of an
    /// idle leader's CPU).
    pub(super) clients: BTreeMap<String, Arc<dyn EtcdApi>>,
    /// When this leader last cleared etcd's NOSPACE alarm.
    pub(super) last_space_clear: Option<Instant>,
}

impl Driver {
    /// etcd's NOSPACE alarm, as etcd's maintenance guide clears it: compact
    /// the history to the current revision, defragment every healthy member
    /// (the raft leader last), disarm. An alarm back within a minute means
    /// the data itself is at the quota: that is an error (and backs off).
    pub(super) async fn clear_space_alarm(&mut self, obs: &Observation) -> Result<(), DriverError> {
        let now = self.clock.now();
        if self
            .etcd_link
            .last_space_clear
            .is_some_and(|at| now.saturating_duration_since(at) < SPACE_ALARM_AGAIN)
        {
            return Err(DriverError::AtQuota);
        }
        let etcd = &*self.settings.etcd;
        let client = cluster_client(obs, etcd).await?;
        let alarmed: Vec<u64> = client
            .alarms()
            .await
            .map_err(DriverError::from)?
            .into_iter()
            .filter(|(_, kind)| kind == "NOSPACE")
            .map(|(m, _)| m)
            .collect();
        if alarmed.is_empty() {
            return Ok(());
        }
        let revision = client.status().await.map_err(DriverError::from)?.revision;
        client.compact(revision).await.map_err(DriverError::from)?;
        tracing::info!(revision, "space alarm: history compacted");
        let mut members: Vec<(u64, String, bool)> = obs
            .cluster
            .as_ref()
            .map(|c| {
                c.members
                    .iter()
                    .filter(|m| m.healthy)
                    .map(|m| (m.id, m.name.clone(), m.is_leader))
                    .collect()
            })
            .unwrap_or_default();
        members.sort_by_key(|(_, _, leader)| *leader);
        for (id, name, _) in members {
            self.defragment(obs, id, &name, false).await?;
            tracing::info!(member = %name, "space alarm: member defragmented");
        }
        for m in alarmed {
            client.disarm_nospace(m).await.map_err(DriverError::from)?;
        }
        metrics::counter!(m::SPACE_ALARMS_CLEARED).increment(1);
        tracing::info!("space alarm cleared: etcd takes writes again");
        self.etcd_link.last_space_clear = Some(now);
        Ok(())
    }

    /// Defragment member `name` (its own endpoint); when it is the raft
    /// leader, hand leadership to another healthy voter first, so the
    /// cluster keeps a leader that answers while this one is busy.
    pub(super) async fn defragment(
        &mut self,
        obs: &Observation,
        member_id: u64,
        name: &str,
        move_leader: bool,
    ) -> Result<(), DriverError> {
        let etcd = &*self.settings.etcd;
        let endpoints = healthy_endpoints(obs);
        let ep = endpoints
            .iter()
            .find(|(id, _)| *id == name)
            .map(|(_, ep)| ep.clone())
            .ok_or_else(|| Missing::MemberUnreachable(name.to_string()))?;
        let client = etcd
            .connect(std::slice::from_ref(&ep), ETCD_DEFRAG_TIMEOUT)
            .await
            .map_err(DriverError::from)?;
        if move_leader {
            let to = obs
                .cluster
                .as_ref()
                .and_then(|c| {
                    c.members
                        .iter()
                        .find(|m| m.id != member_id && m.healthy && !m.is_learner)
                })
                .map(|m| (m.id, m.name.clone()))
                .ok_or(Missing::NoOtherVoter)?;
            client.move_leader(to.0).await.map_err(DriverError::from)?;
            tracing::info!(from = %name, to = %to.1, "raft leadership moved before defragmenting");
        }
        let before = client.status().await.map_err(DriverError::from)?.db_size;
        let started = self.clock.now();
        client.defragment().await.map_err(DriverError::from)?;
        let seconds = self
            .clock
            .now()
            .saturating_duration_since(started)
            .as_secs_f64();
        let after = client.status().await.map_err(DriverError::from)?.db_size;
        let freed = (before - after).max(0);
        metrics::counter!(m::DEFRAGS).increment(1);
        metrics::counter!(m::DEFRAG_FREED).increment(freed as u64);
        metrics::gauge!(m::DEFRAG_DURATION).set(seconds);
        tracing::info!(member = %name, seconds, before, after, freed, "member defragmented");
        Ok(())
    }

    /// Move each peer's etcd onto (true) or off (false) its quarantine URLs.
    pub(super) async fn set_quarantine(
        &self,
        peers: &[String],
        quarantined: bool,
        fence: &Fence,
    ) -> Result<(), DriverError> {
        let pc = &self.settings.peers.clone();
        let req = Request::Reconfigure(Reconfigure {
            fence: fence.clone(),
            quarantined: Some(quarantined),
            etcd_version: None,
        });
        for p in peers {
            pc.call(self.addr_of(p)?, &req, JOIN_TIMEOUT)
                .await
                .map_err(DriverError::from)?;
        }
        Ok(())
    }

    /// [`Action::DefragmentNow`]: `etcd-manager-ctl defrag`, every chosen
    /// member in order (the raft leader last, handing its leadership on),
    /// then the request removed.
    pub(super) async fn defragment_now(
        &mut self,
        obs: &Observation,
        members: &[(u64, String)],
        move_leader: bool,
        request: &str,
    ) -> Result<(), DriverError> {
        if members.is_empty() {
            tracing::warn!(%request, "an operator asked to defragment a member the cluster does not have; request dropped");
        }
        let last = members.len().saturating_sub(1);
        for (i, (id, name)) in members.iter().enumerate() {
            self.defragment(obs, *id, name, move_leader && i == last)
                .await?;
        }
        self.store.delete_manager_file(request).await?;
        tracing::info!(
            members = members.len(),
            "defragmentation an operator asked for is done"
        );
        Ok(())
    }
}
