//! Leadership: who is alive, whether a majority of the known managers
//! accepts this one as candidate, the lease claims gossip carries, and the
//! payload this manager publishes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::payload::PeerPayload;
use super::{Driver, DriverSettings};
use crate::clock::Clock;
use crate::core::memory::Fact;
use crate::driver::lease::SharedLease;
use crate::edges::PeerApi;
use crate::metrics as m;
use crate::peer;
use crate::peer::Request;

/// This manager's standing among the others.
pub(super) struct Standing {
    /// When this manager's driver started (gossip's settle time counts from here).
    pub(super) started: Instant,
    /// Whether gossip's settle time since start has passed (logged once).
    gossip_settled: bool,
    /// Whether a majority of the known managers accepted it last (logged on change).
    had_majority: bool,
    /// Whether it held the lease at the last look.
    was_leader: bool,
    /// Lease claims already counted: one is counted when first seen, not again.
    seen_claims: BTreeSet<(u64, String)>,
}

impl Standing {
    pub(super) fn new(started: Instant) -> Standing {
        Standing {
            started,
            gossip_settled: false,
            had_majority: false,
            was_leader: false,
            seen_claims: BTreeSet::new(),
        }
    }

    /// True the first time a claim is seen (at most 64 remembered).
    fn first_sight(&mut self, claim: &lock::LeaseClaim) -> bool {
        if self.seen_claims.len() >= 64 {
            self.seen_claims.clear();
        }
        self.seen_claims.insert((claim.seq, claim.nonce.clone()))
    }
}

impl Driver {
    /// Alive gossip members of our cluster, with their peer API address.
    pub(super) fn alive_peers(&self) -> BTreeMap<String, SocketAddr> {
        metrics::counter!(m::GOSSIP_BAD_PACKETS).absolute(self.gossip.bad_packets());
        metrics::gauge!(m::GOSSIP_PLAIN_PEERS).set(self.gossip.plain_peers() as f64);
        let (sent, received) = self.gossip.bytes();
        metrics::counter!(m::GOSSIP_BYTES, "direction" => "sent").absolute(sent);
        metrics::counter!(m::GOSSIP_BYTES, "direction" => "received").absolute(received);
        let (downs, rejoins) = self.gossip.downs();
        metrics::counter!(m::GOSSIP_DOWNS).absolute(downs);
        metrics::counter!(m::GOSSIP_REJOINS).absolute(rejoins);
        let members = self.gossip.members();
        let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for mv in &members {
            let state = match mv.state {
                gossip::MemberState::Alive => "alive",
                gossip::MemberState::Suspect => "suspect",
                gossip::MemberState::Down => "down",
            };
            *by_state.entry(state).or_default() += 1;
            if mv.state != gossip::MemberState::Alive {
                continue;
            }
            if let Some(p) = mv.payload.as_deref().and_then(PeerPayload::decode)
                && p.cluster_name == self.settings.cluster_name
            {
                out.insert(mv.id.clone(), p.peer_api);
            }
        }
        for s in ["alive", "suspect", "down"] {
            metrics::gauge!(m::GOSSIP_MEMBERS, "state" => s)
                .set(by_state.get(s).copied().unwrap_or(0) as f64);
        }
        out
    }

    /// Whether gossip has had its settle time since this manager started, so
    /// it has shown us the other managers (see
    /// [`crate::leadership::settle_time`]); before, we do not seek the lease.
    pub(super) fn settled(&mut self) -> bool {
        if self.standing.gossip_settled {
            return true;
        }
        let since = self
            .clock
            .now()
            .saturating_duration_since(self.standing.started);
        let settle = self.settings.gossip_settle;
        if !self.settings.rules.settle || crate::leadership::settled(since, settle) {
            self.standing.gossip_settled = true;
            tracing::info!(
                ?settle,
                known = self.gossip.members().len(),
                "gossip settled: this manager may seek the lease"
            );
            return true;
        }
        false
    }

    /// Ask every other alive manager whether it accepts us; true with a
    /// majority of all known managers of our cluster, and of the spec's member
    /// count, so a manager alone in its gossip view (a wrong gossip key, a
    /// partition) cannot take the lease from the real cluster.
    pub(super) async fn majority_accepts(&mut self, peers: &BTreeMap<String, SocketAddr>) -> bool {
        let pc = &self.settings.peers.clone();
        let me = self.node.id().to_string();
        let spec_count = match self.control().await {
            Ok(c) => c
                .spec
                .as_ref()
                .map_or(0, |s| s.member_count.max(0) as usize),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the spec for majority acceptance");
                return false;
            }
        };
        let members = self.gossip.members();
        let known = crate::leadership::known_managers(
            members
                .iter()
                .filter(|mv| {
                    mv.payload
                        .as_deref()
                        .and_then(PeerPayload::decode)
                        .is_some_and(|p| p.cluster_name == self.settings.cluster_name)
                })
                .map(|mv| {
                    (
                        mv.id.as_str(),
                        mv.addr,
                        mv.state == gossip::MemberState::Down,
                    )
                }),
        )
        .max(1);
        let Some(store_id) = self.node.store_id() else {
            tracing::debug!("not leading: this node has not read the store id yet");
            return false;
        };
        let req = Request::Leadership {
            cluster_name: self.settings.cluster_name.clone(),
            candidate: me.clone(),
            store_id,
        };
        // One process per address: an old id whose address a new manager
        // took over must not count that manager's acceptance twice.
        let mut seen: BTreeSet<SocketAddr> = peers.get(&me).copied().into_iter().collect();
        let others: Vec<(String, SocketAddr)> = peers
            .iter()
            .filter(|(id, a)| **id != me && seen.insert(**a))
            .map(|(id, a)| (id.clone(), *a))
            .collect();
        let answers = futures::future::join_all(others.into_iter().map(|(id, addr)| {
            let req = req.clone();
            async move { (id, pc.call(addr, &req, Duration::from_secs(2)).await) }
        }))
        .await;
        let mut accepted = 1; // ourselves
        for (id, answer) in answers {
            match answer {
                Ok(_) => accepted += 1,
                // Typed, or in the words of a manager of the release before
                // typed refusals (it says so only in its text).
                Err(
                    e @ peer::PeerError::Refused {
                        refusal: peer::Refusal::OtherStore { .. },
                        ..
                    },
                ) => {
                    tracing::warn!(peer = %id, error = %e, "leadership not accepted: the managers do not share one backup store")
                }
                Err(e)
                    if matches!(&e, peer::PeerError::Refused {
                        refusal: peer::Refusal::Untyped(words),
                        ..
                    } if words.contains("another backup store")) =>
                {
                    tracing::warn!(peer = %id, error = %e, "leadership not accepted: the managers do not share one backup store")
                }
                Err(e) => tracing::debug!(peer = %id, error = %e, "leadership not accepted"),
            }
        }
        let majority = crate::leadership::has_majority(accepted, known, spec_count);
        if majority != self.standing.had_majority {
            if majority {
                tracing::info!(
                    accepted,
                    known,
                    spec = spec_count,
                    "a majority of the known managers accepts this node"
                );
            } else {
                tracing::info!(
                    accepted,
                    known,
                    spec = spec_count,
                    "not leading: no majority of the known managers accepts this node"
                );
            }
            self.standing.had_majority = majority;
        }
        majority
    }

    /// Count the lease records other managers claim in their payloads as seen
    /// now (see [`lock::LeaseClaim`]).
    pub(super) async fn note_claims(&mut self) {
        let now = self.clock.now();
        let me = self.node.id().to_string();
        // Gossip takes a payload only from the member it describes, so each
        // claim comes with the member that made it.
        let claims: Vec<(String, lock::LeaseClaim)> = self
            .gossip
            .members()
            .into_iter()
            .filter(|mv| mv.id != me && mv.state == gossip::MemberState::Alive)
            .filter_map(|mv| {
                let p = PeerPayload::decode(mv.payload.as_deref()?)?;
                (p.cluster_name == self.settings.cluster_name).then_some((mv.id, p.lease?))
            })
            .collect();
        for (claimant, claim) in claims {
            if self.standing.first_sight(&claim) {
                self.lease.note_claim(&claim, &claimant, now).await;
            }
        }
    }

    /// Keep our gossip payload in step with the node's state.
    pub(super) async fn publish_payload(&mut self) {
        let info = self.node.info().await;
        let state = info.etcd_state.as_ref();
        metrics::gauge!(m::QUARANTINED).set(if state.is_some_and(|s| s.quarantined) {
            1.0
        } else {
            0.0
        });
        self.health.set_etcd_down(state.is_some_and(|s| !s.running));
        let claim = self.lease.claims().borrow().clone();
        let payload = PeerPayload::from_info(&info, self.settings.peer_api, claim);
        if self.published.payload.as_ref() != Some(&payload) {
            self.gossip.set_payload(payload.encode());
            self.published.payload = Some(payload);
        }
    }

    pub(super) fn note_leadership(&mut self, epoch: Option<u64>) {
        let leader = epoch.is_some();
        if leader != self.standing.was_leader {
            metrics::counter!(m::LEADER_CHANGES).increment(1);
            // Whatever changed while we were not leading, read it afresh.
            self.control_files.forget();
            self.pace.steady = false;
            self.etcd_link.clients.clear();
            if leader {
                tracing::info!(epoch, "became leader");
                self.books.last_backup = None;
                // A new leader gives every member a full grace period.
                self.remember(Fact::BecameLeader);
            } else {
                tracing::info!("no longer leader");
            }
            self.standing.was_leader = leader;
        }
        metrics::gauge!(m::IS_LEADER).set(if leader { 1.0 } else { 0.0 });
        metrics::gauge!(m::LEASE_EPOCH)
            .set(epoch.unwrap_or(self.lease.highest_epoch_seen()) as f64);
    }
}

/// The peer API as the leader uses it: a fenced request is sent only while
/// the lease of its epoch is held, judged by this manager's clock right
/// before it leaves (see [`SafetyRules::recheck_lease`]).
pub(super) struct LeaseGuard {
    pub(super) inner: Arc<dyn PeerApi>,
    pub(super) lease: Arc<SharedLease>,
    pub(super) clock: Arc<dyn Clock>,
}

impl LeaseGuard {
    /// The settings' peer API behind the guard (as it is with the lease
    /// re-check switched off, for the simulation only).
    pub(super) fn around(
        settings: &DriverSettings,
        lease: &Arc<SharedLease>,
        clock: &Arc<dyn Clock>,
    ) -> Arc<dyn PeerApi> {
        if !settings.rules.recheck_lease {
            return settings.peers.clone();
        }
        // Rule 1 at the last moment: no fenced request leaves once the
        // lease of its epoch is gone (a leader paused between two of a
        // plan's requests sends none after it wakes up).
        Arc::new(LeaseGuard {
            inner: settings.peers.clone(),
            lease: lease.clone(),
            clock: clock.clone(),
        })
    }
}

#[async_trait::async_trait]
impl PeerApi for LeaseGuard {
    async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        timeout: Duration,
    ) -> Result<peer::Response, peer::PeerError> {
        if let Some(fence) = req.fence()
            && self.lease.held(self.clock.now()) != Some(fence.epoch)
        {
            tracing::warn!(request = req.kind(), epoch = fence.epoch, %addr, "not sent: the lease of its epoch is no longer held");
            return Err(peer::PeerError::NotSent {
                addr,
                epoch: fence.epoch,
            });
        }
        self.inner.call(addr, req, timeout).await
    }
}
