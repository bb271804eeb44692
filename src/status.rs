//! What `etcd-manager-ctl status` shows: a report the leader writes to
//! `<base>/etcd-manager/status.json` when it changes (and at least every
//! [`STATUS_REFRESH`]), so an operator with access to the store sees the
//! cluster without reaching any manager.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::controller::{Observation, Plan};

/// Rewrite an unchanged report this often, so its age tells whether a leader is alive.
pub const STATUS_REFRESH: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub cluster_name: String,
    pub leader: String,
    pub epoch: u64,
    /// Unix seconds when the leader wrote this report.
    pub written_at: i64,
    pub spec_member_count: i32,
    pub spec_etcd_version: String,
    pub members: Vec<MemberStatus>,
    /// Managers seen through gossip, with their state.
    pub peers: Vec<PeerStatus>,
    pub quarantined: bool,
    /// What the leader is waiting for, in words (empty when idle).
    pub waits: Vec<String>,
    /// A version change under way, in words: the members' versions and the
    /// whole path (`3.5.30 -> 3.5.35 -> 3.6.16 -> 3.7.3`, next step), or
    /// how it goes otherwise (dump and restore, refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_change: Option<String>,
    /// Things an operator should fix that do not stop the leader: control
    /// files it skipped, gossip without a key while TLS is on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How the leader's gossip is keyed, in words, and how many managers it
    /// takes in plain (a release that cannot seal, during a rolling update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip: Option<String>,
    /// A pending `etcd-manager-ctl recover-quorum` request, in words: its
    /// age and when it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_quorum: Option<String>,
    /// The continuous backup, in words: the full backup its chain starts
    /// from, or the gap that stopped it (None: turned off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_backup: Option<String>,
    /// The long operations managers run for the leader (restores, v2
    /// store checks) that have not ended, in words: `n2: restore of
    /// cluster T: downloading, 52428800 bytes`. While the leader follows
    /// them it rewrites the report as they move.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub name: String,
    pub id: String,
    pub peer_urls: Vec<String>,
    pub healthy: bool,
    pub learner: bool,
    pub raft_leader: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub id: String,
    pub answered: bool,
    pub etcd_version: Option<String>,
    pub etcd_running: bool,
}

impl ClusterStatus {
    /// Build the report from one pass (pure; `written_at` is given).
    pub fn from_pass(obs: &Observation, plan: &Plan, written_at: i64) -> ClusterStatus {
        let members = obs
            .cluster
            .as_ref()
            .map(|c| {
                c.members
                    .iter()
                    .map(|m| MemberStatus {
                        name: m.name.clone(),
                        id: format!("{:x}", m.id),
                        peer_urls: m.peer_urls.clone(),
                        healthy: m.healthy,
                        learner: m.is_learner,
                        raft_leader: m.is_leader,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let peers = obs
            .peers
            .iter()
            .map(|p| {
                let state = p.info.as_ref().and_then(|i| i.etcd_state.as_ref());
                PeerStatus {
                    id: p.id.clone(),
                    answered: p.info.is_some(),
                    etcd_version: state.map(|s| s.etcd_version.clone()),
                    etcd_running: state.is_some_and(|s| s.running),
                }
            })
            .collect();
        let quarantined = obs
            .peers
            .iter()
            .filter_map(|p| p.info.as_ref()?.etcd_state.as_ref())
            .any(|s| s.quarantined);
        ClusterStatus {
            cluster_name: obs.cluster_name.clone(),
            leader: obs.self_id.clone(),
            epoch: obs.epoch.unwrap_or(0),
            written_at,
            spec_member_count: obs.spec.as_ref().map_or(0, |s| s.member_count),
            spec_etcd_version: obs
                .spec
                .as_ref()
                .map(|s| s.etcd_version.clone())
                .unwrap_or_default(),
            members,
            peers,
            quarantined,
            waits: plan.waits.iter().map(ToString::to_string).collect(),
            version_change: version_change_text(obs),
            warnings: vec![],
            gossip: None,
            recover_quorum: obs.quorum_recovery.requested.as_ref().map(|_| {
                let age = obs.quorum_recovery.request_age;
                match crate::controller::RECOVER_REQUEST_TTL.checked_sub(age) {
                    Some(left) if !left.is_zero() => format!(
                        "requested {} ago; acted on while the quorum is lost; expires in {}",
                        humantime::format_duration(Duration::from_secs(age.as_secs())),
                        humantime::format_duration(Duration::from_secs(left.as_secs()))
                    ),
                    _ => "expired (older than an hour); being removed".into(),
                }
            }),
            continuous_backup: None,
            jobs: obs
                .peers
                .iter()
                .filter_map(|p| Some((p, p.info.as_ref()?.jobs.as_ref()?)))
                .flat_map(|(p, jobs)| jobs.iter().map(move |j| (p.id.as_str(), j)))
                .filter(|(_, j)| !j.phase.ended())
                .map(|(id, j)| job_text(id, j))
                .collect(),
        }
    }

    /// Equal but for the time it was written.
    pub fn same_content(&self, other: &ClusterStatus) -> bool {
        ClusterStatus {
            written_at: 0,
            ..self.clone()
        } == ClusterStatus {
            written_at: 0,
            ..other.clone()
        }
    }
}

/// The version change the planner sees, in words (see
/// [`crate::controller::planned_path`]).
fn version_change_text(obs: &Observation) -> Option<String> {
    let (from, path) = crate::controller::planned_path(obs)?;
    let to = obs.spec.as_ref()?.etcd_version.clone();
    let from = from.join(",");
    Some(match path {
        Ok(Some(path)) if !path.is_empty() => format!(
            "{from} -> {} (in place; next step: {})",
            path.join(" -> "),
            path[0]
        ),
        Ok(_) => format!("{from} -> {to} by dump and restore (no in-place path)"),
        Err(reason) => format!("{from} -> {to} refused: {reason}"),
    })
}

/// Node `id`'s job in words, for the report.
pub fn job_text(id: &str, j: &crate::core::model::Job) -> String {
    use crate::core::model::JobPhase;
    let phase = match &j.phase {
        JobPhase::Downloading => format!("downloading, {} bytes", j.bytes),
        JobPhase::Verifying => "checking the snapshot".into(),
        JobPhase::Restoring => "writing the data dir".into(),
        JobPhase::Checking => "checking a copy of the data".into(),
        JobPhase::Done => "done".into(),
        JobPhase::Found(what) => format!("found: {what}"),
        JobPhase::Failed(why) => format!("failed: {why}"),
    };
    format!("{id}: {} of cluster {}: {phase}", j.kind.words(), j.key)
}

/// Seconds as "45s", "12m", "3h", "2d".
pub fn age(secs: i64) -> String {
    match secs {
        s if s < 0 => "in the future".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
