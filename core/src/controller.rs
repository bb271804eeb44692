//! The controller's decision step: a pure function from what the leader
//! observed, the desired spec and the time to a [`Plan`].
//!
//! No IO, no clock reads, no randomness here (clippy.toml enforces the
//! clock/sleep/random/spawn part). Everything that cannot happen now is a
//! named [`WaitReason`], which the driver logs and counts. The driver executes
//! a plan's actions in order and stops at the first failure; each plan holds at
//! most one membership change (safety rule 4), preceded by a backup when the
//! change is risky (rule 5).

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, Instant};

use crate::ClusterSpec;

use crate::model::NodeInfo;

/// One manager seen through gossip, with its answer to GetInfo (None: no answer).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    pub id: String,
    pub info: Option<NodeInfo>,
}

impl PeerView {
    fn running(&self) -> bool {
        self.info
            .as_ref()
            .and_then(|i| i.etcd_state.as_ref())
            .is_some_and(|s| s.running)
    }
    fn quarantined(&self) -> bool {
        self.info
            .as_ref()
            .and_then(|i| i.etcd_state.as_ref())
            .is_some_and(|s| s.quarantined)
    }
    /// The cluster token of the etcd this peer has assigned, if any.
    pub fn token(&self) -> Option<&str> {
        self.info
            .as_ref()
            .and_then(|i| i.etcd_state.as_ref())
            .map(|s| s.cluster_token.as_str())
    }
    fn idle(&self) -> bool {
        self.info.as_ref().is_some_and(|i| i.etcd_state.is_none())
    }
    /// The peer can run `v`: it has it, or a release of the same minor
    /// (which serves it, as upstream's version mappings).
    fn has_version(&self, v: &str) -> bool {
        let wanted = v.parse::<crate::EtcdVersion>().ok();
        self.info.as_ref().is_some_and(|i| {
            i.installed_versions.iter().any(|x| {
                x == v
                    || wanted.is_some_and(|w| {
                        x.parse::<crate::EtcdVersion>()
                            .is_ok_and(|x| x.major == w.major && x.minor == w.minor)
                    })
            })
        })
    }
    fn etcd_version(&self) -> Option<&str> {
        self.info
            .as_ref()
            .and_then(|i| i.etcd_state.as_ref())
            .map(|s| s.etcd_version.as_str())
    }
    fn peer_urls(&self) -> &[String] {
        self.info
            .as_ref()
            .map(|i| i.node_config.peer_urls.as_slice())
            .unwrap_or(&[])
    }
}

/// One etcd member as the leader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    /// Empty for a member that was added but has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
    pub healthy: bool,
    /// This member is the raft leader.
    pub is_leader: bool,
    /// The version of its data as it reports it (3.6+: `3.6.0`).
    pub storage_version: Option<String>,
    /// Its database file's size and the part in use (0: not reported).
    pub db_size: i64,
    pub db_in_use: i64,
    /// Its raft index and store revision as it reported them; None when its
    /// etcd did not answer (a member without quorum still answers).
    pub progress: Option<(u64, i64)>,
}

/// The running etcd cluster, if any member answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub members: Vec<MemberView>,
    /// Versions the members report (one per healthy member).
    pub versions: Vec<String>,
    /// The version an enabled downgrade goes to (3.6+: `3.5.0`), if any.
    pub downgrade_target: Option<String>,
    /// etcd raised its NOSPACE alarm: the database reached its quota and
    /// the cluster takes no writes.
    pub space_alarm: bool,
}

impl ClusterView {
    /// Whether a quorum of the voters is healthy (false without voters).
    pub fn has_quorum(&self) -> bool {
        let voters = self.members.iter().filter(|m| !m.is_learner).count();
        let healthy = self
            .members
            .iter()
            .filter(|m| !m.is_learner && m.healthy)
            .count();
        voters > 0 && healthy >= quorum(voters)
    }
}

/// A queued restore command, with what the leader knows about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandView {
    pub name: String,
    pub backup: String,
    pub spec: Option<ClusterSpec>,
    /// The token of the cluster a leader began restoring for this command.
    pub started_token: Option<String>,
    /// Why this leader refused it (missing or corrupt backup); it stays queued until deleted.
    pub refused: Option<String>,
}

/// Everything the decision needs. Times are values read by the driver.
#[derive(Debug, Clone)]
pub struct Observation {
    pub now: Instant,
    pub self_id: String,
    pub cluster_name: String,
    /// Some(epoch) while this node holds the lease.
    pub epoch: Option<u64>,
    pub spec: Option<ClusterSpec>,
    pub created_marker: bool,
    pub backups_exist: bool,
    pub peers: Vec<PeerView>,
    pub cluster: Option<ClusterView>,
    /// When this leader last finished a backup.
    pub last_backup: Option<Instant>,
    pub backup_interval: Duration,
    /// A fresh random token, used if a new cluster is seeded.
    pub new_cluster_token: String,
    /// Queued restore commands, oldest first.
    pub commands: Vec<CommandView>,
    /// When this leader last applied the retention policy.
    pub last_retention: Option<Instant>,
    /// An operator asked for a backup now.
    pub backup_requested: bool,
    /// The continuous backup lost history or has no full backup to start
    /// from: a full backup starts a new chain.
    pub delta_full_needed: bool,
    /// An operator asked for a defragmentation now (`etcd-manager-ctl defrag`).
    pub defrag_requested: Option<DefragRequest>,
    /// `--restore-clear-prefix`: key prefixes deleted from a restored
    /// cluster before its quarantine is lifted.
    pub restore_clear_prefixes: Vec<String>,
    /// The restored clusters (by token) whose prefixes this leader cleared.
    pub prefixes_cleared: std::collections::BTreeSet<String>,
    /// What recovering from a lost quorum may use.
    pub quorum_recovery: QuorumRecovery,
    /// An operator allowed a new empty cluster although backups exist.
    pub allow_new_cluster: bool,
    /// Since when each unhealthy member has been unhealthy, as this leader saw it.
    pub unhealthy_since: std::collections::BTreeMap<u64, Instant>,
    /// Since when each member has not answered at all (no status: its
    /// etcd is down or out of reach), as this leader saw it. A lost voter's
    /// grace counts from here, not from when it became unhealthy (all
    /// members are unhealthy once quorum is lost; one that stops answering
    /// later may still come back within the grace; found by the simulation).
    pub silent_since: std::collections::BTreeMap<u64, Instant>,
    /// Managers gossip no longer reaches whose last word was that their etcd
    /// serves a cluster not retired, and since when this leader knows it
    /// (their etcd may serve on: a host cut off does not stop it).
    pub out_of_reach_since: std::collections::BTreeMap<String, Instant>,
    /// How long a member may be unhealthy before it is replaced.
    pub replace_grace: Duration,
    /// When a member's database is defragmented.
    pub defrag: DefragPolicy,
    /// The v2 store checks this leader ran, by peer id (see
    /// [`Action::CheckV2Store`]).
    pub v2store: std::collections::BTreeMap<String, V2StoreCheck>,
    /// The settings checks this leader ran, by (peer id, version the peer
    /// would move to) (see [`Action::CheckSettings`]).
    pub settings: std::collections::BTreeMap<(String, String), SettingsCheck>,
    /// A backup this leader took that awaits its restore drill
    /// (`--backup-verify-every`).
    pub unverified_backup: Option<String>,
    /// `etcd-manager-ctl verify-backup --on-manager`: (request file, backup).
    pub verify_requested: Option<(String, String)>,
    /// Cluster tokens a quorum recovery replaced: a member of such a cluster
    /// that comes back (its host was down, not wiped) must not serve its
    /// old data; its etcd is stopped and it joins the current cluster.
    pub retired_tokens: std::collections::BTreeSet<String>,
    /// The safety rules (all on in production; the simulation switches one
    /// off to show its checks catch it).
    pub rules: super::rules::SafetyRules,
}

/// Recovering from a lost quorum (a majority of voters gone for good).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumRecovery {
    /// `etcd-manager-ctl recover-quorum` asked for it (the request file).
    pub requested: Option<String>,
    /// How old that request is (see `crate::recover_request::age`); one of
    /// [`RECOVER_REQUEST_TTL`] or more is void and removed.
    pub request_age: Duration,
    /// `--auto-recover-quorum-loss`: recover without an operator once every
    /// lost voter has been gone this long (None: only on request).
    pub auto_after: Option<Duration>,
    /// The newest backup and its revision (read while quorum is lost).
    pub latest_backup: Option<(String, Option<i64>)>,
}

/// A recover-quorum request this old is void (removed, never acted on).
pub const RECOVER_REQUEST_TTL: Duration = Duration::from_secs(3600);

impl QuorumRecovery {
    /// The request to act on: there, and not expired.
    pub fn live_request(&self) -> Option<&str> {
        self.requested
            .as_deref()
            .filter(|_| self.request_age < RECOVER_REQUEST_TTL)
    }
}

/// `etcd-manager-ctl defrag [member]`: the request file, and the member it
/// names (None: every voter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefragRequest {
    pub file: String,
    pub member: Option<String>,
}

/// When the leader defragments a member: at least `fragmentation` of its
/// database file free (0: never) and at least `min_free_bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DefragPolicy {
    pub fragmentation: f64,
    pub min_free_bytes: u64,
}

impl Default for DefragPolicy {
    fn default() -> Self {
        DefragPolicy {
            fragmentation: 0.0,
            min_free_bytes: 0,
        }
    }
}

impl DefragPolicy {
    /// Whether a database of `size` bytes with `in_use` of them used is due.
    pub fn due(&self, size: i64, in_use: i64) -> bool {
        if self.fragmentation <= 0.0 || size <= 0 || in_use <= 0 || in_use > size {
            return false;
        }
        let free = size - in_use;
        free as f64 / size as f64 >= self.fragmentation && free as u64 >= self.min_free_bytes
    }
}

/// One member's `etcdutl check v2store`, as this leader got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2StoreCheck {
    /// Nothing but etcd's own v2 entries.
    Clean,
    /// Custom v2 content (the tool's words): etcd 3.6 would drop it.
    Custom(String),
    /// The check could not run (the reason); retried after a while.
    Failed(String),
}

/// Whether a peer's own `ETCD_*` settings survive a move to a version, as
/// that peer answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsCheck {
    /// The version understands every setting the peer's etcd runs with now.
    Kept,
    /// Settings the version would drop or refuse, one line each (the
    /// variable, what the version lacks, what to write instead).
    Lost(Vec<String>),
    /// The peer could not answer (the reason); asked again after a while.
    Failed(String),
}

/// What the leader does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a new quarantined cluster on these peers.
    SeedCluster {
        token: String,
        version: String,
        peers: Vec<String>,
    },
    /// Record in the store that a cluster exists here.
    WriteCreatedMarker,
    /// Let clients in: move these peers to their client URLs.
    LiftQuarantine {
        peers: Vec<String>,
    },
    TakeBackup {
        reason: BackupReason,
    },
    /// Register an idle peer as a member (a learner where supported), then start it.
    AddMember {
        peer: String,
        learner: bool,
        token: String,
        version: String,
    },
    /// A member that was registered but never started: start it on its peer.
    StartAddedMember {
        peer: String,
        member_id: u64,
        token: String,
        version: String,
    },
    PromoteMember {
        member_id: u64,
        name: String,
    },
    RemoveMember {
        member_id: u64,
        name: String,
    },
    /// A peer runs etcd of this cluster without being a member: stop it for good.
    StopEtcd {
        peer: String,
    },
    /// Verify the backup, stop every etcd (data to the trashcan), restore the
    /// backup on these peers as a new quarantined cluster.
    RestoreBackup {
        command: String,
        backup: String,
        token: String,
        version: String,
        peers: Vec<String>,
    },
    /// The restored cluster is healthy and backed up: remove the command.
    CompleteRestore {
        command: String,
    },
    /// Restart one member's etcd on its own data dir with another version.
    UpgradeMember {
        peer: String,
        version: String,
    },
    /// Keep clients out: move these peers to their quarantine URLs.
    Quarantine {
        peers: Vec<String>,
    },
    /// Queue a restore of the backup just taken, on this spec (a version change by dump and restore).
    QueueRestore {
        spec: ClusterSpec,
    },
    /// Delete backups the retention policy does not keep.
    ApplyRetention,
    /// Delete old data dirs from these peers' trashcans, keeping the newest few.
    GcTrashcan {
        peers: Vec<String>,
        keep: u32,
    },
    /// The on-demand backup is done: remove the request.
    ClearBackupRequest,
    /// A recover-quorum request nothing needs: it expired, or the cluster
    /// holds its quorum (it came back before the recovery). Removed so it
    /// cannot rebuild the next quorum loss without the grace.
    ClearRecoverQuorumRequest {
        file: String,
        expired: bool,
    },
    /// Check a copy of these peers' data for custom v2 content (before a
    /// 3.5 cluster moves to 3.6, which has no v2 store).
    CheckV2Store {
        peers: Vec<String>,
    },
    /// Ask these peers whether `version` understands every `ETCD_*` setting
    /// their etcd runs with (before any of them moves to it).
    CheckSettings {
        peers: Vec<String>,
        version: String,
    },
    /// etcd's downgrade protocol: validate, then enable a downgrade of the
    /// cluster to this minor (`3.6`).
    EnableDowngrade {
        minor: String,
    },
    /// Cancel the cluster's enabled downgrade (the spec no longer wants it).
    CancelDowngrade,
    /// etcd's NOSPACE alarm: compact the history to the current revision,
    /// defragment every member (the raft leader last), disarm the alarm.
    ClearSpaceAlarm,
    /// An operator's defragmentation: these members one at a time in this
    /// order (followers first; the raft leader last, leadership moved away
    /// first when `move_leader`), then the request file removed. No member
    /// (the one named is not in the cluster): the request is dropped.
    DefragmentNow {
        members: Vec<(u64, String)>,
        move_leader: bool,
        request: String,
    },
    /// Rebuild a cluster that lost its quorum for good: from the surviving
    /// member `from` (its snapshot stored as a backup), or from `backup` when
    /// that is newer than every survivor; queued as a restore on `spec`
    /// (one member: the cluster grows back to the stored spec afterwards);
    /// the request file, if any, removed.
    /// Have `peer` run a restore drill of `backup` (a job on that node;
    /// the verdict goes beside the backup in the store).
    VerifyBackup {
        backup: String,
        peer: String,
        /// The operator's request file, removed once handed over (None: a
        /// periodic backup's drill).
        request: Option<String>,
    },
    RecoverQuorum {
        from: Option<(u64, String)>,
        backup: Option<String>,
        spec: ClusterSpec,
        request: Option<String>,
    },
    /// Delete every key under these prefixes from the restored cluster
    /// `token`, still quarantined (no client reaches it yet).
    ClearPrefixes {
        token: String,
        prefixes: Vec<String>,
    },
    /// Defragment one member; the raft leader moves leadership away first.
    Defragment {
        member_id: u64,
        name: String,
        move_leader: bool,
    },
}

impl Action {
    /// Label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Action::SeedCluster { .. } => "seed_cluster",
            Action::WriteCreatedMarker => "write_created_marker",
            Action::LiftQuarantine { .. } => "lift_quarantine",
            Action::TakeBackup { .. } => "take_backup",
            Action::AddMember { .. } => "add_member",
            Action::StartAddedMember { .. } => "start_added_member",
            Action::PromoteMember { .. } => "promote_member",
            Action::RemoveMember { .. } => "remove_member",
            Action::StopEtcd { .. } => "stop_etcd",
            Action::RestoreBackup { .. } => "restore_backup",
            Action::CompleteRestore { .. } => "complete_restore",
            Action::ApplyRetention => "apply_retention",
            Action::GcTrashcan { .. } => "gc_trashcan",
            Action::Quarantine { .. } => "quarantine",
            Action::QueueRestore { .. } => "queue_restore",
            Action::UpgradeMember { .. } => "upgrade_member",
            Action::ClearBackupRequest => "clear_backup_request",
            Action::ClearRecoverQuorumRequest { .. } => "clear_recover_quorum_request",
            Action::CheckV2Store { .. } => "check_v2store",
            Action::CheckSettings { .. } => "check_settings",
            Action::EnableDowngrade { .. } => "enable_downgrade",
            Action::CancelDowngrade => "cancel_downgrade",
            Action::ClearSpaceAlarm => "clear_space_alarm",
            Action::Defragment { .. } => "defragment",
            Action::DefragmentNow { .. } => "defragment_now",
            Action::ClearPrefixes { .. } => "clear_prefixes",
            Action::RecoverQuorum { .. } => "recover_quorum",
            Action::VerifyBackup { .. } => "verify_backup",
        }
    }

    /// Changes raft membership.
    pub fn is_membership_change(&self) -> bool {
        matches!(
            self,
            Action::AddMember { .. }
                | Action::PromoteMember { .. }
                | Action::RemoveMember { .. }
                | Action::RestoreBackup { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupReason {
    Periodic,
    BeforeChange,
    AfterRestore,
    /// `etcd-manager-ctl backup-now`.
    OnDemand,
    /// The continuous backup needs a full backup to start a new chain from.
    DeltaChain,
}

/// Old etcd data dirs kept in each node's trashcan.
pub const TRASHCAN_KEEP: u32 = 3;

/// Backups are cleaned up at most this often.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Why the leader does not act (further) now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    NotLeader,
    NoSpec,
    InvalidSpec(SpecError),
    /// Cluster was created before but no etcd member is left.
    RestoreRequired,
    /// No created marker, but backups exist: someone deleted the marker.
    CreatedMarkerMissing,
    InsufficientPeers {
        have: usize,
        need: usize,
    },
    VersionNotInstalled {
        version: String,
    },
    /// Peers were told to run etcd, it is not answering yet.
    EtcdStarting,
    ClusterUnhealthy {
        healthy: usize,
        voters: usize,
    },
    LearnerCatchingUp {
        name: String,
    },
    NoIdlePeer {
        members: usize,
        want: usize,
    },
    /// Version changes come with the next release.
    VersionChangePending {
        from: String,
        to: String,
    },
    /// Two different clusters are running.
    ForeignCluster {
        peer: String,
    },
    /// A restore waits: these members of the current cluster still serve
    /// (their etcd answers) while their managers do not, so they could not
    /// be stopped and would keep a quorum of the old cluster serving beside
    /// the restored one.
    RestoreWaitsForMembers {
        members: Vec<String>,
    },
    /// A version change by dump and restore waits: these members' managers
    /// do not answer, so their etcd cannot be quarantined, and it would take
    /// client writes after the dump that the restore loses.
    DumpWaitsForManagers {
        members: Vec<String>,
    },
    /// A restore command that cannot be executed; the cluster is left as it is.
    RestoreRefused {
        backup: String,
        reason: String,
    },
    /// The version change cannot start: nothing is changed, the reason says why.
    UpgradePathBlocked {
        reason: String,
    },
    /// A downgrade is enabled; these members still migrate their data.
    DowngradeMigrating {
        target: String,
        members: Vec<String>,
    },
    /// A majority of voters is gone and the survivors cannot commit: the
    /// plan the leader would carry out, and how to let it.
    QuorumLost {
        survivors: Vec<String>,
        lost: Vec<String>,
        plan: String,
        auto_in_secs: Option<u64>,
    },
    /// The next action failed before and waits (see `crate::backoff`).
    BackingOff {
        action: String,
        failures: u32,
        retry_in_ms: u64,
        error: String,
    },
}

/// Every [`WaitReason::label`], so the metric exists for each from the start.
pub const WAIT_LABELS: &[&str] = &[
    "not_leader",
    "no_spec",
    "invalid_spec",
    "restore_required",
    "created_marker_missing",
    "insufficient_peers",
    "version_not_installed",
    "etcd_starting",
    "cluster_unhealthy",
    "learner_catching_up",
    "no_idle_peer",
    "version_change_pending",
    "foreign_cluster",
    "restore_waits_for_members",
    "dump_waits_for_managers",
    "restore_refused",
    "upgrade_path_blocked",
    "downgrade_migrating",
    "quorum_lost",
    "backing_off",
];

impl WaitReason {
    /// Label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            WaitReason::NotLeader => "not_leader",
            WaitReason::NoSpec => "no_spec",
            WaitReason::InvalidSpec(_) => "invalid_spec",
            WaitReason::RestoreRequired => "restore_required",
            WaitReason::CreatedMarkerMissing => "created_marker_missing",
            WaitReason::InsufficientPeers { .. } => "insufficient_peers",
            WaitReason::VersionNotInstalled { .. } => "version_not_installed",
            WaitReason::EtcdStarting => "etcd_starting",
            WaitReason::ClusterUnhealthy { .. } => "cluster_unhealthy",
            WaitReason::LearnerCatchingUp { .. } => "learner_catching_up",
            WaitReason::NoIdlePeer { .. } => "no_idle_peer",
            WaitReason::VersionChangePending { .. } => "version_change_pending",
            WaitReason::UpgradePathBlocked { .. } => "upgrade_path_blocked",
            WaitReason::DowngradeMigrating { .. } => "downgrade_migrating",
            WaitReason::QuorumLost { .. } => "quorum_lost",
            WaitReason::BackingOff { .. } => "backing_off",
            WaitReason::ForeignCluster { .. } => "foreign_cluster",
            WaitReason::RestoreRefused { .. } => "restore_refused",
            WaitReason::RestoreWaitsForMembers { .. } => "restore_waits_for_members",
            WaitReason::DumpWaitsForManagers { .. } => "dump_waits_for_managers",
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::NotLeader => write!(f, "not the leader"),
            WaitReason::NoSpec => write!(
                f,
                "no cluster spec in the backup store; run etcd-manager-ctl configure-cluster"
            ),
            WaitReason::InvalidSpec(why) => write!(f, "cluster spec is invalid: {why}"),
            WaitReason::RestoreRequired => write!(
                f,
                "etcd has 0 members registered; must issue restore-backup command to proceed"
            ),
            WaitReason::CreatedMarkerMissing => write!(
                f,
                "control/etcd-cluster-created is missing but backups exist; refusing to create an empty cluster: \
                 restore a backup with etcd-manager-ctl restore-backup, or start empty on purpose \
                 with etcd-manager-ctl seed-new-cluster"
            ),
            WaitReason::InsufficientPeers { have, need } => {
                write!(
                    f,
                    "insufficient peers to create a cluster: have {have}, need {need}"
                )
            }
            WaitReason::VersionNotInstalled { version } => write!(
                f,
                "the etcd {version} binaries (/opt/etcd-v{version}/etcd) are missing on the peers that \
                 need them; install them on every master with deploy/install-etcd.sh {version}"
            ),
            WaitReason::EtcdStarting => write!(f, "waiting for etcd to answer"),
            WaitReason::ClusterUnhealthy { healthy, voters } => {
                write!(
                    f,
                    "etcd cluster unhealthy: {healthy} of {voters} voting members healthy"
                )
            }
            WaitReason::LearnerCatchingUp { name } => write!(f, "learner {name} is catching up"),
            WaitReason::NoIdlePeer { members, want } => {
                write!(
                    f,
                    "cluster has {members} members, spec wants {want}; no idle peer to add"
                )
            }
            WaitReason::VersionChangePending { from, to } => {
                write!(
                    f,
                    "etcd version change {from} -> {to} goes by dump and restore (a downgrade or a jump of \
                     more than one minor version); waiting for the queued restore"
                )
            }
            WaitReason::ForeignCluster { peer } => {
                write!(
                    f,
                    "peer {peer} runs etcd of another cluster; leaving it alone"
                )
            }
            WaitReason::UpgradePathBlocked { reason } => {
                write!(f, "version change not started: {reason}")
            }
            WaitReason::BackingOff {
                action,
                failures,
                retry_in_ms,
                error,
            } => write!(
                f,
                "{action} failed {failures} time(s) in a row, last: {error}; next try in {:.1} s",
                *retry_in_ms as f64 / 1000.0
            ),
            WaitReason::QuorumLost {
                survivors,
                lost,
                plan,
                auto_in_secs,
            } => write_quorum_lost(f, survivors, lost, plan, *auto_in_secs),
            WaitReason::DowngradeMigrating { target, members } => write!(
                f,
                "downgrade to {target} enabled (etcd's downgrade protocol); waiting for {} to migrate \
                 their data before any restarts on the older binary",
                members.join(", ")
            ),
            WaitReason::RestoreWaitsForMembers { members } => write!(
                f,
                "restore waits: members {} of the current cluster still serve, or went out of reach less than the replace grace ago, \
                 and their managers do not answer; the old cluster could keep a quorum beside the restored one \
                 (bring their managers back, or stop their etcd)",
                members.join(", ")
            ),
            WaitReason::DumpWaitsForManagers { members } => write!(
                f,
                "version change by dump and restore waits: the managers of members {} do not answer, \
                 so their etcd cannot be quarantined before the dump and would take writes the dump \
                 lacks (bring their managers back)",
                members.join(", ")
            ),
            WaitReason::RestoreRefused { backup, reason } => write!(
                f,
                "refusing restore-backup {backup}: {reason}; the cluster is left as it is; \
                 delete the command with etcd-manager-ctl delete-command {backup}"
            ),
        }
    }
}

/// [`WaitReason::QuorumLost`] in words: who answers, who is gone, the plan,
/// and how it is carried out (by itself after `auto_in_secs`, or by the
/// operator).
fn write_quorum_lost(
    f: &mut fmt::Formatter<'_>,
    survivors: &[String],
    lost: &[String],
    plan: &str,
    auto_in_secs: Option<u64>,
) -> fmt::Result {
    write!(
        f,
        "quorum lost: {} of {} voters answer ({}), {} gone ({}); {plan}; ",
        survivors.len(),
        survivors.len() + lost.len(),
        survivors.join(", "),
        lost.len(),
        lost.join(", ")
    )?;
    match auto_in_secs {
        Some(s) => write!(
            f,
            "done by itself in {s} s (--auto-recover-quorum-loss), or now with etcd-manager-ctl recover-quorum"
        ),
        None => write!(
            f,
            "run etcd-manager-ctl recover-quorum to do it (or bring the lost members back)"
        ),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub waits: Vec<WaitReason>,
}

impl Plan {
    fn wait(reason: WaitReason) -> Plan {
        Plan {
            actions: vec![],
            waits: vec![reason],
        }
    }
    fn act(actions: Vec<Action>) -> Plan {
        Plan {
            actions,
            waits: vec![],
        }
    }
}

/// Majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Why a cluster spec cannot be acted on ([`validate_spec`]); the operator
/// writes another (etcd-manager-ctl configure-cluster).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("member_count {count} must be at least 1")]
    NoMembers { count: i32 },
    #[error(
        "member_count {count} is even; use an odd number (1, 3, 5) so a majority survives a failure"
    )]
    EvenMembers { count: i32 },
    #[error("etcd_version '{}' is not a version like 3.5.30", .0.version)]
    Version(#[source] crate::InvalidVersion),
}

/// Check a spec before acting on it.
pub fn validate_spec(spec: &ClusterSpec) -> Result<(), SpecError> {
    let count = spec.member_count;
    if count < 1 {
        return Err(SpecError::NoMembers { count });
    }
    if count % 2 == 0 {
        return Err(SpecError::EvenMembers { count });
    }
    spec.etcd_version
        .parse::<crate::EtcdVersion>()
        .map_err(SpecError::Version)?;
    Ok(())
}

/// The decision step.
pub fn reconcile(obs: &Observation) -> Plan {
    if obs.epoch.is_none() {
        return Plan::wait(WaitReason::NotLeader);
    }
    let refused: Vec<WaitReason> = obs
        .commands
        .iter()
        .filter_map(|c| {
            let reason = c.refused.clone()?;
            Some(WaitReason::RestoreRefused {
                backup: c.backup.clone(),
                reason,
            })
        })
        .collect();
    // A restore whose new cluster was retired since (a quorum recovery
    // rebuilt from it, found by the simulation) is over once a later restore
    // waits: that one runs next, not behind it forever.
    let open: Vec<&CommandView> = obs
        .commands
        .iter()
        .filter(|c| c.refused.is_none())
        .collect();
    if let [first, .., later] = open.as_slice()
        && first
            .started_token
            .as_ref()
            .is_some_and(|t| obs.retired_tokens.contains(t))
        && later.started_token.is_none()
    {
        return Plan::act(vec![Action::CompleteRestore {
            command: first.name.clone(),
        }]);
    }
    let mut plan = match open.first().and_then(|c| restore(obs, c)) {
        Some(p) => p,
        None => desired_state(obs),
    };
    plan.waits.extend(refused);
    if let Some(clear) = void_recover_request(obs, &plan) {
        plan.actions.push(clear);
    }
    plan
}

/// A recover-quorum request to remove: expired, or read while the cluster
/// seen holds its quorum (and this plan does not recover). Pure.
fn void_recover_request(obs: &Observation, plan: &Plan) -> Option<Action> {
    let qr = &obs.quorum_recovery;
    let file = qr.requested.clone()?;
    if plan
        .actions
        .iter()
        .any(|a| matches!(a, Action::RecoverQuorum { .. }))
    {
        return None;
    }
    let expired = qr.live_request().is_none();
    let holds_quorum = obs.cluster.as_ref().is_some_and(ClusterView::has_quorum);
    (expired || holds_quorum).then_some(Action::ClearRecoverQuorumRequest { file, expired })
}

/// A restore that reached only some of its nodes (the others' downloads
/// failed, or they were down): while the new cluster still serves no
/// client (every member quarantined), the nodes not on it get the same
/// restore again, with the same token, so they form the cluster with the
/// ones that restored (a node already on it answers at once). Without
/// this the new cluster stays short of a quorum for good.
fn restore_again(
    obs: &Observation,
    cmd: &CommandView,
    token: &str,
    on_new: &[&PeerView],
) -> Option<Plan> {
    let state = on_new.first()?.info.as_ref()?.etcd_state.as_ref()?;
    if obs.retired_tokens.contains(token) || !on_new.iter().all(|p| p.quarantined()) {
        return None;
    }
    let members: Vec<String> = state.nodes.iter().map(|n| n.name.clone()).collect();
    let behind: Vec<&PeerView> = obs
        .peers
        .iter()
        .filter(|p| members.contains(&p.id) && p.token() != Some(token))
        .collect();
    // Every member must answer: one that does not may be on its way.
    if behind.is_empty() || behind.iter().any(|p| p.info.is_none()) {
        return None;
    }
    Some(Plan::act(vec![Action::RestoreBackup {
        command: cmd.name.clone(),
        backup: cmd.backup.clone(),
        token: token.to_string(),
        version: state.etcd_version.clone(),
        peers: members,
    }]))
}

/// A queued restore: start it, or finish it once the new cluster is healthy.
/// None: nothing restore-specific to do (the ordinary loop lifts the quarantine).
fn restore(obs: &Observation, cmd: &CommandView) -> Option<Plan> {
    let Some(spec) = cmd.spec.as_ref().or(obs.spec.as_ref()) else {
        return Some(Plan::wait(WaitReason::NoSpec));
    };
    if let Err(why) = validate_spec(spec) {
        return Some(Plan::wait(WaitReason::InvalidSpec(why)));
    }
    if let Some(token) = &cmd.started_token {
        let on_new: Vec<&PeerView> = obs
            .peers
            .iter()
            .filter(|p| p.token() == Some(token.as_str()))
            .collect();
        if let Some(again) = restore_again(obs, cmd, token, &on_new) {
            return Some(again);
        }
        if !on_new.is_empty() {
            return finish_restore(obs, cmd, token, &on_new);
        }
    }
    if let Some(wait) = old_cluster_may_serve(obs) {
        return Some(wait);
    }
    Some(start_restore(obs, cmd, spec))
}

/// A started restore whose new cluster runs on `on_new`: clear the
/// operator's prefixes, then (every member healthy, none quarantined) take
/// a backup and complete the command. None: the ordinary loop goes on
/// (it lifts the quarantine).
fn finish_restore(
    obs: &Observation,
    cmd: &CommandView,
    token: &str,
    on_new: &[&PeerView],
) -> Option<Plan> {
    // The operator's prefixes go while clients cannot reach the
    // restored cluster yet: once a majority of it is healthy, before
    // the quarantine is lifted.
    let majority_healthy = obs.cluster.as_ref().is_some_and(|c| {
        let voters: Vec<&MemberView> = c.members.iter().filter(|m| !m.is_learner).collect();
        !voters.is_empty() && voters.iter().filter(|m| m.healthy).count() >= quorum(voters.len())
    });
    if !obs.restore_clear_prefixes.is_empty()
        && !obs.prefixes_cleared.contains(token)
        && majority_healthy
        && on_new.iter().any(|p| p.quarantined())
    {
        return Some(Plan::act(vec![Action::ClearPrefixes {
            token: token.to_string(),
            prefixes: obs.restore_clear_prefixes.clone(),
        }]));
    }
    let done = obs
        .cluster
        .as_ref()
        .is_some_and(|c| !c.members.is_empty() && c.members.iter().all(|m| m.healthy))
        && on_new.iter().all(|p| p.running() && !p.quarantined());
    if done {
        return Some(Plan::act(vec![
            Action::TakeBackup {
                reason: BackupReason::AfterRestore,
            },
            Action::CompleteRestore {
                command: cmd.name.clone(),
            },
        ]));
    }
    None
}

/// The restore stops every etcd it can reach first. A quorum of the
/// current cluster serving from hosts whose managers do not answer would
/// go on serving (and acknowledging writes) beside the restored cluster:
/// the restore waits for them. None: nothing of the old cluster can serve
/// on.
fn old_cluster_may_serve(obs: &Observation) -> Option<Plan> {
    // No member answers at all: a manager out of reach for less than the
    // replace grace that said last its etcd serves may be cut off, not
    // gone, and its etcd serve on beside the restored cluster (seed 2641:
    // the only voter of a shrunk cluster, isolated for 6 s).
    let Some(c) = &obs.cluster else {
        let lately: Vec<String> = obs
            .out_of_reach_since
            .iter()
            .filter(|(_, t)| obs.now.saturating_duration_since(**t) < obs.replace_grace)
            .map(|(id, _)| id.clone())
            .collect();
        return (!lately.is_empty())
            .then(|| Plan::wait(WaitReason::RestoreWaitsForMembers { members: lately }));
    };
    // Members answer: the healthy ones, and those out of reach for less
    // than the replace grace (cut off for a moment, not gone).
    let voters = c.members.iter().filter(|m| !m.is_learner).count();
    let lately_silent = |m: &&MemberView| {
        obs.silent_since
            .get(&m.id)
            .is_some_and(|t| obs.now.saturating_duration_since(*t) < obs.replace_grace)
    };
    let unstoppable: Vec<String> = c
        .members
        .iter()
        .filter(|m| !m.is_learner && (m.healthy || lately_silent(m)))
        .filter(|m| !obs.peers.iter().any(|p| p.id == m.name && p.info.is_some()))
        .map(|m| m.name.clone())
        .collect();
    (voters > 0 && unstoppable.len() >= quorum(voters)).then(|| {
        Plan::wait(WaitReason::RestoreWaitsForMembers {
            members: unstoppable,
        })
    })
}

/// Start the restore on the managers that answer and have the spec's etcd
/// version (the spec's member count of them, by id), once a quorum of the
/// new cluster has.
fn start_restore(obs: &Observation, cmd: &CommandView, spec: &ClusterSpec) -> Plan {
    let want = spec.member_count as usize;
    let need = quorum(want);
    let answered: Vec<&PeerView> = obs.peers.iter().filter(|p| p.info.is_some()).collect();
    let mut ready: Vec<String> = answered
        .iter()
        .filter(|p| p.has_version(&spec.etcd_version))
        .map(|p| p.id.clone())
        .collect();
    if ready.len() < need {
        if answered.len() >= need {
            return Plan::wait(WaitReason::VersionNotInstalled {
                version: spec.etcd_version.clone(),
            });
        }
        return Plan::wait(WaitReason::InsufficientPeers {
            have: answered.len(),
            need,
        });
    }
    ready.sort();
    ready.truncate(want);
    Plan::act(vec![Action::RestoreBackup {
        command: cmd.name.clone(),
        backup: cmd.backup.clone(),
        token: obs.new_cluster_token.clone(),
        version: spec.etcd_version.clone(),
        peers: ready,
    }])
}

/// Bring the cluster towards the spec.
fn desired_state(obs: &Observation) -> Plan {
    let Some(spec) = &obs.spec else {
        return Plan::wait(WaitReason::NoSpec);
    };
    if let Err(why) = validate_spec(spec) {
        return Plan::wait(WaitReason::InvalidSpec(why));
    }
    match &obs.cluster {
        None => no_cluster(obs, spec),
        Some(cluster) => running_cluster(obs, spec, cluster),
    }
}

fn no_cluster(obs: &Observation, spec: &ClusterSpec) -> Plan {
    // A member of a retired cluster (replaced by a restore or a quorum
    // recovery) runs while no current cluster answers: it is stopped (its
    // data to the trashcan), as beside a current cluster; it must not pass
    // for an etcd that is starting, for ever (found by the simulation, seed
    // 1306: the restored cluster's only member was wiped, and the retired
    // one it replaced served on, quarantined). What is left is a total
    // loss, which the operator restores.
    if let Some(p) = obs
        .peers
        .iter()
        .find(|p| p.running() && p.token().is_some_and(|t| obs.retired_tokens.contains(t)))
    {
        return Plan::act(vec![Action::StopEtcd { peer: p.id.clone() }]);
    }
    if obs.peers.iter().any(|p| p.running()) {
        return Plan::wait(WaitReason::EtcdStarting);
    }
    if obs.created_marker {
        return Plan::wait(WaitReason::RestoreRequired);
    }
    if obs.backups_exist && !obs.allow_new_cluster {
        return Plan::wait(WaitReason::CreatedMarkerMissing);
    }
    let want = spec.member_count as usize;
    let need = quorum(want);
    let idle: Vec<&PeerView> = obs.peers.iter().filter(|p| p.idle()).collect();
    let ready: Vec<&PeerView> = idle
        .iter()
        .copied()
        .filter(|p| p.has_version(&spec.etcd_version))
        .collect();
    if ready.len() < need {
        if idle.len() >= need {
            return Plan::wait(WaitReason::VersionNotInstalled {
                version: spec.etcd_version.clone(),
            });
        }
        return Plan::wait(WaitReason::InsufficientPeers {
            have: idle.len(),
            need,
        });
    }
    let mut ids: Vec<String> = ready.iter().map(|p| p.id.clone()).collect();
    ids.sort();
    ids.truncate(want);
    Plan::act(vec![Action::SeedCluster {
        token: obs.new_cluster_token.clone(),
        version: spec.etcd_version.clone(),
        peers: ids,
    }])
}

/// Whether every member can move from its version to `to` in place, one at a
/// time: any patch change within a minor (both ways), or one minor up.
pub fn rolling_compatible(from: &[&str], to: &str) -> bool {
    let Ok(to) = to.parse::<crate::EtcdVersion>() else {
        return false;
    };
    from.iter().all(|f| {
        f.parse::<crate::EtcdVersion>()
            .is_ok_and(|f| f.major == to.major && (f.minor == to.minor || f.minor + 1 == to.minor))
    })
}

/// The oldest 3.5 that may move to 3.6 (etcd's "Upgrade etcd from v3.5 to
/// v3.6" guide).
pub const MIN_3_5_FOR_3_6: crate::EtcdVersion = crate::EtcdVersion::new(3, 5, 32);

/// The oldest 3.6 that may move to 3.7 (etcd's "Upgrade etcd from v3.6 to
/// v3.7" guide).
pub const MIN_3_6_FOR_3_7: crate::EtcdVersion = crate::EtcdVersion::new(3, 6, 11);

/// The oldest patch of `minor` that may move to the next minor, if etcd's
/// guides name one.
fn floor_before_next(major: u32, minor: u32) -> Option<crate::EtcdVersion> {
    [MIN_3_5_FOR_3_6, MIN_3_6_FOR_3_7]
        .into_iter()
        .find(|v| v.major == major && v.minor == minor)
}

/// Why a version change must not start ([`version_path`]): nothing is
/// changed until the operator installs the versions named or sets the
/// spec's version back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathBlocked {
    /// One minor up, and no version at or above etcd's floor for the
    /// upgrade (`floor`) of minor `major.minor` is installed everywhere.
    #[error(
        "{from} -> {target} needs every member on {floor} or later first (etcd's upgrade \
         guide), and no such {major}.{minor} is installed on every member; install one \
         (deploy/install-etcd.sh) on every master"
    )]
    FloorNotInstalled {
        from: String,
        target: String,
        floor: String,
        major: u32,
        minor: u32,
    },
    /// Down from 3.6+ to below 3.5.
    #[error(
        "{from} -> {target}: etcd's downgrade protocol goes down to 3.5 at the lowest, and an \
         older minor cannot open 3.6+ data; ask for the newest installed 3.5 first, then \
         {target} (by dump and restore), or set the version back to {from}"
    )]
    BelowLowestDowngrade {
        from: crate::EtcdVersion,
        target: String,
    },
    /// Down from 3.6+ over minor `major.minor`, installed on not every member.
    #[error(
        "{from} -> {target}: etcd's downgrade protocol goes one minor at a time, and no \
         {major}.{minor} is installed on every member; install one (deploy/install-etcd.sh) on \
         every master, or set the version back to {from}"
    )]
    MinorNotInstalled {
        from: crate::EtcdVersion,
        target: String,
        major: u32,
        minor: u32,
    },
}

/// The whole in-place path of a version change: the versions the members
/// move through, each step rolling (or one minor down by etcd's downgrade
/// protocol), ending with `target`. Pure.
///
/// - Up: through every minor in between, each at the newest version
///   `installed` on every member that may move on (3.5.32+ before 3.6,
///   3.6.11+ before 3.7); members of the first minor below its floor roll
///   to such a version first.
/// - Down from 3.6+: one minor at a time through the newest installed
///   version of each minor in between, to 3.5 at the lowest.
///
/// `Ok(Some(path))`: empty when every member runs `target`. `Ok(None)`: no
/// in-place path (down below 3.6, or up over a minor with nothing suitable
/// installed): dump and restore. `Err(reason)`: the change must not start
/// (one minor up without its floor installed; down from 3.6+ over a minor
/// not installed, or below 3.5).
pub fn version_path(
    from: &[&str],
    target: &str,
    installed: &[&str],
) -> Result<Option<Vec<String>>, PathBlocked> {
    let Ok(to) = target.parse::<crate::EtcdVersion>() else {
        return Ok(None);
    };
    let from_v: Vec<crate::EtcdVersion> = from.iter().filter_map(|v| v.parse().ok()).collect();
    let (Some(lo), Some(hi)) = (from_v.iter().min().copied(), from_v.iter().max().copied()) else {
        return Ok(None);
    };
    if from_v.iter().all(|v| *v == to) {
        return Ok(Some(vec![]));
    }
    if lo.major != to.major || hi.major != to.major {
        return Ok(None);
    }
    let inst: Vec<(crate::EtcdVersion, &str)> = installed
        .iter()
        .filter_map(|s| Some((s.parse().ok()?, *s)))
        .collect();
    let newest = |minor: u32, floor: Option<crate::EtcdVersion>| {
        inst.iter()
            .filter(|(v, _)| v.major == to.major && v.minor == minor)
            .filter(|(v, _)| floor.is_none_or(|f| *v >= f))
            .max_by_key(|(v, _)| *v)
            .map(|(_, s)| s.to_string())
    };
    let mut path = Vec::new();
    if to.minor >= hi.minor {
        for m in lo.minor..to.minor {
            let floor = floor_before_next(to.major, m);
            let needed = from_v
                .iter()
                .any(|v| v.minor < m || (v.minor == m && floor.is_some_and(|f| *v < f)));
            if !needed {
                continue;
            }
            match newest(m, floor) {
                Some(v) => path.push(v),
                None if to.minor == lo.minor + 1 => {
                    return Err(PathBlocked::FloorNotInstalled {
                        from: from.join(","),
                        target: target.to_string(),
                        floor: floor.map_or_else(String::new, |f| f.to_string()),
                        major: to.major,
                        minor: m,
                    });
                }
                None => return Ok(None),
            }
        }
        path.push(target.to_string());
        return Ok(Some(path));
    }
    // Down across minors.
    if hi.minor < 6 {
        return Ok(None);
    }
    if to.minor < 5 {
        return Err(PathBlocked::BelowLowestDowngrade {
            from: hi,
            target: target.to_string(),
        });
    }
    for m in ((to.minor + 1)..hi.minor).rev() {
        if !from_v.iter().any(|v| v.minor > m) {
            continue;
        }
        match newest(m, None) {
            Some(v) => path.push(v),
            None => {
                return Err(PathBlocked::MinorNotInstalled {
                    from: hi,
                    target: target.to_string(),
                    major: to.major,
                    minor: m,
                });
            }
        }
    }
    path.push(target.to_string());
    Ok(Some(path))
}

/// The versions installed on every member's manager (the path may use only
/// those).
fn common_installed<'a>(obs: &'a Observation, members: &[MemberView]) -> Vec<&'a str> {
    let mut common: Option<Vec<&str>> = None;
    for p in members.iter().filter_map(|m| peer_of(obs, m)) {
        let Some(info) = p.info.as_ref() else {
            continue;
        };
        let mine: Vec<&str> = info.installed_versions.iter().map(String::as_str).collect();
        common = Some(match common {
            None => mine,
            Some(c) => c.into_iter().filter(|v| mine.contains(v)).collect(),
        });
    }
    common.unwrap_or_default()
}

/// The members' versions and the path to the spec's version (see
/// [`version_path`]).
pub type PlannedPath = (Vec<String>, Result<Option<Vec<String>>, PathBlocked>);

/// The version change as the planner sees it (for `status`). None when
/// there is no cluster, no spec, or nothing to change. Pure.
pub fn planned_path(obs: &Observation) -> Option<PlannedPath> {
    let (spec, cluster) = (obs.spec.as_ref()?, obs.cluster.as_ref()?);
    let mut from: BTreeSet<&str> = cluster
        .members
        .iter()
        .filter_map(|m| peer_of(obs, m)?.etcd_version())
        .collect();
    from.extend(cluster.versions.iter().map(String::as_str));
    let from: Vec<&str> = from.into_iter().collect();
    if from.is_empty() || from.iter().all(|v| *v == spec.etcd_version) {
        return None;
    }
    let path = version_path(
        &from,
        &spec.etcd_version,
        &common_installed(obs, &cluster.members),
    );
    Some((from.iter().map(|s| s.to_string()).collect(), path))
}

/// Before any member below 3.6 moves to 3.6 or later: every such member's
/// data checked for custom v2 content (etcd's 3.5 -> 3.6 guide). Checks not
/// run yet are asked for; a member with custom content, or one whose check
/// failed, blocks the change with the reason. None: nothing to check or
/// every check is clean. Pure.
pub fn v2store_gate(obs: &Observation, target: &str, peers: &[&PeerView]) -> Option<Plan> {
    let to = target.parse::<crate::EtcdVersion>().ok()?;
    if !(to.major == 3 && to.minor >= 6) {
        return None;
    }
    let before_3_6: Vec<&PeerView> = peers
        .iter()
        .copied()
        .filter(|p| {
            p.etcd_version()
                .and_then(|v| v.parse::<crate::EtcdVersion>().ok())
                .is_some_and(|v| v.major == 3 && v.minor < 6)
        })
        .collect();
    let mut missing = Vec::new();
    for p in &before_3_6 {
        match obs.v2store.get(&p.id) {
            Some(V2StoreCheck::Clean) => {}
            Some(V2StoreCheck::Custom(what)) => {
                let from = p.etcd_version().unwrap_or("?");
                return Some(Plan::wait(WaitReason::UpgradePathBlocked {
                    reason: format!(
                        "{from} -> {target}: the data of peer {} holds custom v2 content ({what}); \
                         etcd 3.6 has no v2 store and would drop it. Nothing was changed. Move that \
                         data to the v3 API or delete it (etcd 3.5 with --enable-v2, then \
                         `etcdctl --api=v2 rm`), or set the version back to {from}",
                        p.id
                    ),
                }));
            }
            Some(V2StoreCheck::Failed(e)) => {
                return Some(Plan::wait(WaitReason::UpgradePathBlocked {
                    reason: format!(
                        "-> {target}: cannot check the v2 store of peer {} before the move to 3.6: {e}",
                        p.id
                    ),
                }));
            }
            None => missing.push(p.id.clone()),
        }
    }
    (!missing.is_empty()).then(|| Plan::act(vec![Action::CheckV2Store { peers: missing }]))
}

/// Before any member moves to `target`: every mover's own `ETCD_*` settings
/// checked against it (a setting the version lacks would be dropped with a
/// warning in etcd's log, a feature gate it lacks stops etcd). Checks not run
/// yet are asked for; a lost setting, or a check that failed, blocks the
/// change with the reason and nothing moves. None: every mover's settings
/// are kept. Pure.
pub fn settings_gate(obs: &Observation, target: &str, peers: &[&PeerView]) -> Option<Plan> {
    let mut missing = Vec::new();
    for p in peers {
        let Some(from) = p.etcd_version().filter(|v| *v != target) else {
            continue;
        };
        match obs.settings.get(&(p.id.clone(), target.to_string())) {
            Some(SettingsCheck::Kept) => {}
            Some(SettingsCheck::Lost(lost)) => {
                return Some(Plan::wait(WaitReason::UpgradePathBlocked {
                    reason: format!(
                        "{from} -> {target}: peer {} gives etcd settings {target} would not \
                         understand: {}. Nothing was changed. Change that manager's ETCD_* \
                         environment (or its --etcd-env-file) and restart it, or set the \
                         version back to {from}",
                        p.id,
                        lost.join("; ")
                    ),
                }));
            }
            Some(SettingsCheck::Failed(e)) => {
                return Some(Plan::wait(WaitReason::UpgradePathBlocked {
                    reason: format!(
                        "{from} -> {target}: cannot check the etcd settings of peer {}: {e}",
                        p.id
                    ),
                }));
            }
            None => missing.push(p.id.clone()),
        }
    }
    (!missing.is_empty()).then(|| {
        Plan::act(vec![Action::CheckSettings {
            peers: missing,
            version: target.to_string(),
        }])
    })
}

/// The minor a one-minor downgrade by etcd's own protocol goes to: every
/// member on `target`'s minor or the one above it, at least one above, and
/// that one 3.6 or later (3.6 -> 3.5, 3.7 -> 3.6). None otherwise. Pure.
pub fn native_downgrade(from: &[&str], target: &str) -> Option<crate::EtcdVersion> {
    let to = target.parse::<crate::EtcdVersion>().ok()?;
    let from: Vec<crate::EtcdVersion> = from.iter().filter_map(|v| v.parse().ok()).collect();
    let newest = from.iter().max()?;
    let ok = to.major == 3
        && to.minor >= 5
        && newest.minor == to.minor + 1
        && from
            .iter()
            .all(|f| f.major == to.major && (f.minor == to.minor || f.minor == to.minor + 1));
    ok.then_some(to)
}

/// `3.6.0` -> (3, 6); None for anything else.
fn minor_of(v: &str) -> Option<(u32, u32)> {
    let v = v.parse::<crate::EtcdVersion>().ok()?;
    Some((v.major, v.minor))
}

/// A one-minor downgrade from 3.6+ by etcd's protocol. A member may restart
/// on the older binary once its data is at the older version: always so in
/// a half-done upgrade (the cluster version, and so every member's storage
/// version, is still the older minor), after `downgrade enable` otherwise.
/// So: members whose storage version is above the target → enable the
/// downgrade (a backup first) and wait for them; then roll binaries one by
/// one, followers first. etcd ends the downgrade once all run the target.
fn downgrade_plan(
    obs: &Observation,
    cluster: &ClusterView,
    to: crate::EtcdVersion,
    target: &str,
    behind: &[(&MemberView, &PeerView)],
    all_healthy: bool,
) -> Plan {
    let members = &cluster.members;
    if !all_healthy {
        return Plan::wait(WaitReason::ClusterUnhealthy {
            healthy: members.iter().filter(|m| m.healthy).count(),
            voters: members.iter().filter(|m| !m.is_learner).count(),
        });
    }
    let minor = format!("{}.{}", to.major, to.minor);
    // Members whose data is still above the target (or not known: a 3.6+
    // binary that reported no storage version).
    let above: Vec<String> = members
        .iter()
        .filter(|m| {
            let binary = peer_of(obs, m)
                .and_then(|p| p.etcd_version())
                .and_then(minor_of);
            match m.storage_version.as_deref().and_then(minor_of) {
                Some(sv) => sv > (to.major, to.minor),
                None => binary.is_some_and(|b| b > (to.major, to.minor)),
            }
        })
        .map(|m| m.name.clone())
        .collect();
    if !above.is_empty() {
        return match &cluster.downgrade_target {
            None => Plan::act(vec![
                Action::TakeBackup {
                    reason: BackupReason::BeforeChange,
                },
                Action::EnableDowngrade { minor },
            ]),
            Some(_) => Plan::wait(WaitReason::DowngradeMigrating {
                target: minor,
                members: above,
            }),
        };
    }
    let movers: Vec<&(&MemberView, &PeerView)> = behind
        .iter()
        .filter(|(_, p)| p.etcd_version().and_then(minor_of) > Some((to.major, to.minor)))
        .collect();
    let Some((_, peer)) = movers
        .iter()
        .find(|(m, _)| !m.is_leader)
        .or(movers.first())
        .map(|x| **x)
    else {
        return Plan::default();
    };
    if !peer.has_version(target) {
        return Plan::wait(WaitReason::VersionNotInstalled {
            version: target.to_string(),
        });
    }
    Plan::act(vec![
        Action::TakeBackup {
            reason: BackupReason::BeforeChange,
        },
        Action::UpgradeMember {
            peer: peer.id.clone(),
            version: target.to_string(),
        },
    ])
}

/// Versions the members run (from their peers) and the cluster reports.
fn member_versions<'a>(
    obs: &'a Observation,
    members: &[MemberView],
    running: &BTreeSet<&'a str>,
) -> Vec<&'a str> {
    let mut from: BTreeSet<&str> = members
        .iter()
        .filter_map(|m| peer_of(obs, m)?.etcd_version())
        .collect();
    from.extend(running.iter().copied());
    from.into_iter().collect()
}

/// A version change that cannot roll (a downgrade, or a jump of two minors):
/// quarantine every member, back up, and queue a restore of that backup on
/// the target version; the restore path does the rest and lifts the quarantine.
fn dump_and_restore(
    obs: &Observation,
    spec: &ClusterSpec,
    members: &[MemberView],
    running: &BTreeSet<&str>,
) -> Option<Plan> {
    let target = spec.etcd_version.as_str();
    let from = member_versions(obs, members, running);
    if from.is_empty() || from.iter().all(|v| *v == target) {
        return None;
    }
    // An in-place path exists (the rolling change does it), or the change
    // must not start at all.
    match version_path(&from, target, &common_installed(obs, members)) {
        Ok(Some(_)) => return None,
        Err(blocked) => {
            return Some(Plan::wait(WaitReason::UpgradePathBlocked {
                reason: blocked.to_string(),
            }));
        }
        Ok(None) => {}
    }
    if obs.commands.iter().any(|c| c.refused.is_none()) {
        return None; // a restore is queued already
    }
    // It begins on a healthy cluster only. Until then the ordinary repairs
    // below (a dead member replaced, a half-done add finished) go first, and
    // the version change waits its turn further down: a wait here held them
    // back for good (found by the simulation: a host wiped while a minor
    // downgrade was pending left the cluster at 2 of 3 healthy voters).
    if !members.iter().all(|m| m.healthy) {
        return None;
    }
    // Every member is quarantined before the dump, so no client write lands
    // after it. One whose manager does not answer cannot be: its etcd would
    // go on taking writes the dump lacks (found by the simulation, seed
    // 1613: a leader that took over from a paused one quarantined the two
    // members it reached, dumped, and lost a write the third took).
    // (Every member is healthy here, so started, so named.)
    let unanswered: Vec<String> = members
        .iter()
        .filter(|m| peer_of(obs, m).is_none_or(|p| p.info.is_none()))
        .map(|m| m.name.clone())
        .collect();
    if !unanswered.is_empty() && obs.rules.dump_quarantine {
        return Some(Plan::wait(WaitReason::DumpWaitsForManagers {
            members: unanswered,
        }));
    }
    let movers: Vec<&PeerView> = members.iter().filter_map(|m| peer_of(obs, m)).collect();
    if let Some(plan) = v2store_gate(obs, target, &movers) {
        return Some(plan);
    }
    if let Some(plan) = settings_gate(obs, target, &movers) {
        return Some(plan);
    }
    let ready = obs.peers.iter().filter(|p| p.has_version(target)).count();
    if ready < quorum(spec.member_count as usize) {
        return Some(Plan::wait(WaitReason::VersionNotInstalled {
            version: target.to_string(),
        }));
    }
    let open: Vec<String> = members
        .iter()
        .filter_map(|m| peer_of(obs, m))
        .filter(|p| !p.quarantined())
        .map(|p| p.id.clone())
        .collect();
    if !open.is_empty() && obs.rules.dump_quarantine {
        return Some(Plan::act(vec![Action::Quarantine { peers: open }]));
    }
    Some(Plan::act(vec![
        Action::TakeBackup {
            reason: BackupReason::BeforeChange,
        },
        Action::QueueRestore { spec: spec.clone() },
    ]))
}

/// A rolling version change: one member at a time, followers before the raft
/// leader, a backup first. None when every member runs the spec's version.
fn version_change(
    obs: &Observation,
    spec: &ClusterSpec,
    cluster: &ClusterView,
    running: &BTreeSet<&str>,
    all_healthy: bool,
) -> Option<Plan> {
    let members = &cluster.members;
    let target = spec.etcd_version.as_str();
    // A downgrade enabled to another minor than the one the members go to
    // now: cancelled (the spec was set back, or the step is done).
    let stale_downgrade = |step: &str| {
        let enabled = cluster.downgrade_target.as_deref().and_then(minor_of)?;
        (minor_of(step) != Some(enabled)).then(|| Plan::act(vec![Action::CancelDowngrade]))
    };
    let behind: Vec<(&MemberView, &PeerView)> = members
        .iter()
        .filter_map(|m| Some((m, peer_of(obs, m)?)))
        .filter(|(_, p)| p.etcd_version().is_some_and(|v| v != target))
        .collect();
    if behind.is_empty() {
        return stale_downgrade(target);
    }
    let mut from: BTreeSet<&str> = behind
        .iter()
        .filter_map(|(_, p)| p.etcd_version())
        .collect();
    from.extend(running.iter().copied());
    let from: Vec<&str> = from.into_iter().collect();
    // The next step of the whole path (3.5.30 -> 3.5.35 -> 3.6.16 -> ...).
    let step = match version_path(&from, target, &common_installed(obs, members)) {
        Ok(Some(path)) => path.first().cloned()?,
        Ok(None) => target.to_string(),
        Err(blocked) => {
            return Some(Plan::wait(WaitReason::UpgradePathBlocked {
                reason: blocked.to_string(),
            }));
        }
    };
    let target = step.as_str();
    if let Some(plan) = stale_downgrade(target) {
        return Some(plan);
    }
    let behind: Vec<(&MemberView, &PeerView)> = behind
        .into_iter()
        .filter(|(_, p)| p.etcd_version().is_some_and(|v| v != target))
        .collect();
    if behind.is_empty() {
        return None;
    }
    let movers: Vec<&PeerView> = behind.iter().map(|(_, p)| *p).collect();
    if let Some(to) = native_downgrade(&from, target) {
        if let Some(plan) = settings_gate(obs, target, &movers) {
            return Some(plan);
        }
        return Some(downgrade_plan(
            obs,
            cluster,
            to,
            target,
            &behind,
            all_healthy,
        ));
    }
    if !rolling_compatible(&from, target) {
        return Some(Plan::wait(WaitReason::VersionChangePending {
            from: from.join(","),
            to: target.to_string(),
        }));
    }
    if !all_healthy {
        return Some(Plan::wait(WaitReason::ClusterUnhealthy {
            healthy: members.iter().filter(|m| m.healthy).count(),
            voters: members.iter().filter(|m| !m.is_learner).count(),
        }));
    }
    if let Some(plan) = v2store_gate(obs, target, &movers) {
        return Some(plan);
    }
    if let Some(plan) = settings_gate(obs, target, &movers) {
        return Some(plan);
    }
    let (_, peer) = behind
        .iter()
        .find(|(m, _)| !m.is_leader)
        .or(behind.first())?;
    if !peer.has_version(target) {
        return Some(Plan::wait(WaitReason::VersionNotInstalled {
            version: target.to_string(),
        }));
    }
    Some(Plan::act(vec![
        Action::TakeBackup {
            reason: BackupReason::BeforeChange,
        },
        Action::UpgradeMember {
            peer: peer.id.clone(),
            version: target.to_string(),
        },
    ]))
}

/// A lost quorum: fewer voters answer etcd at all than a quorum (so it is
/// not an election in progress), at least one does, and no lost voter's
/// manager says its etcd still runs. The best survivor is
/// the one with the highest raft index (then revision): never one behind
/// another that answers. The newest backup is used instead when its
/// revision is above the survivor's. Acts on an operator's request, or by
/// itself once every lost voter has been unhealthy for the configured
/// time; else waits and says what it would do. None: not a lost quorum.
/// Pure.
pub fn quorum_loss(obs: &Observation, spec: &ClusterSpec, members: &[MemberView]) -> Option<Plan> {
    let voters: Vec<&MemberView> = members.iter().filter(|m| !m.is_learner).collect();
    let survivors: Vec<&MemberView> = voters
        .iter()
        .copied()
        .filter(|m| m.progress.is_some())
        .collect();
    let lost: Vec<&MemberView> = voters
        .iter()
        .copied()
        .filter(|m| m.progress.is_none())
        .collect();
    if survivors.is_empty() || survivors.len() >= quorum(voters.len()) {
        return None;
    }
    // Gone for good means its manager says so too: unreachable, or idle,
    // or running another cluster. A manager that answers that this
    // member's etcd runs is a member this leader cannot see (a partition
    // of etcd's ports), not a lost one: rebuilding then would fork the
    // cluster.
    let token = survivors
        .iter()
        .find_map(|m| peer_of(obs, m)?.token())
        .map(str::to_string);
    if lost.iter().any(|m| {
        peer_of(obs, m).is_some_and(|p| p.running() && p.token().map(str::to_string) == token)
    }) {
        return None;
    }
    let best = survivors.iter().copied().max_by(|a, b| {
        a.progress
            .cmp(&b.progress)
            .then_with(|| b.name.cmp(&a.name))
    })?;
    let (index, revision) = best.progress?;
    let qr = &obs.quorum_recovery;
    let newer_backup = qr
        .latest_backup
        .as_ref()
        .filter(|(_, r)| r.is_some_and(|r| r > revision))
        .map(|(n, _)| n.clone());
    let behind = qr
        .latest_backup
        .as_ref()
        .and_then(|(n, r)| Some((n, (*r)?)))
        .map(|(n, r)| format!("the newest backup {n} is at revision {r}"))
        .unwrap_or_else(|| "no backup revision is known".into());
    let plan = match &newer_backup {
        Some(b) => format!(
            "would restore the newest backup {b}, which is ahead of every survivor (best: {} at revision {revision})",
            best.name
        ),
        None => format!(
            "would rebuild the cluster from {} (raft index {index}, revision {revision}; {behind}); writes only the lost members had are lost",
            best.name
        ),
    };
    let gone_for = |m: &MemberView| {
        obs.silent_since
            .get(&m.id)
            .map(|t| obs.now.saturating_duration_since(*t))
            .unwrap_or_default()
    };
    let shortest = lost.iter().map(|m| gone_for(m)).min().unwrap_or_default();
    let auto_due = qr
        .auto_after
        .is_some_and(|g| shortest >= g || !obs.rules.recovery_grace);
    // A recovery queues a restore: while one waits to run, recovering again
    // would only queue more (a backup and a command on every pass).
    let queued = obs
        .commands
        .iter()
        .any(|c| c.refused.is_none() && c.started_token.is_none());
    if queued || (qr.live_request().is_none() && !auto_due) {
        return Some(Plan::wait(WaitReason::QuorumLost {
            survivors: survivors.iter().map(|m| m.name.clone()).collect(),
            lost: lost.iter().map(|m| m.name.clone()).collect(),
            plan,
            auto_in_secs: qr.auto_after.map(|g| g.saturating_sub(shortest).as_secs()),
        }));
    }
    Some(Plan::act(vec![Action::RecoverQuorum {
        from: newer_backup.is_none().then(|| (best.id, best.name.clone())),
        backup: newer_backup,
        spec: ClusterSpec {
            member_count: 1,
            etcd_version: spec.etcd_version.clone(),
        },
        request: qr.requested.clone(),
    }]))
}

/// A member given up on: unhealthy past the grace period, or replaced by an
/// idle manager (another id) that now owns its peer URL.
fn dead(obs: &Observation, m: &MemberView) -> bool {
    let claimed = obs.peers.iter().any(|p| {
        p.idle() && p.id != m.name && p.peer_urls().iter().any(|u| m.peer_urls.contains(u))
    });
    let expired = obs
        .unhealthy_since
        .get(&m.id)
        .is_some_and(|t| obs.now.saturating_duration_since(*t) >= obs.replace_grace);
    claimed || expired
}

/// The peer that runs a member: by name, else by peer URL.
fn peer_of<'a>(obs: &'a Observation, m: &MemberView) -> Option<&'a PeerView> {
    obs.peers.iter().find(|p| {
        (!m.name.is_empty() && p.id == m.name)
            || p.peer_urls().iter().any(|u| m.peer_urls.contains(u))
    })
}

/// What every rule of a running cluster reads: the observation, the spec,
/// the cluster, and the facts derived from them once per pass.
struct Running<'a> {
    obs: &'a Observation,
    spec: &'a ClusterSpec,
    cluster: &'a ClusterView,
    members: &'a [MemberView],
    voters: usize,
    healthy_voters: usize,
    has_quorum: bool,
    /// The managers whose etcd is a member.
    member_peers: BTreeSet<&'a str>,
    /// The cluster tokens those managers run.
    cluster_tokens: BTreeSet<&'a str>,
    /// The versions the members run.
    current: BTreeSet<&'a str>,
    /// The version a new member starts with, and the token it joins.
    version: String,
    token: String,
    all_healthy: bool,
    backup_due: bool,
}

impl<'a> Running<'a> {
    fn new(obs: &'a Observation, spec: &'a ClusterSpec, cluster: &'a ClusterView) -> Self {
        let members = cluster.members.as_slice();
        let voters = members.iter().filter(|m| !m.is_learner).count();
        let healthy_voters = members
            .iter()
            .filter(|m| !m.is_learner && m.healthy)
            .count();
        let member_peers: BTreeSet<&str> = members
            .iter()
            .filter_map(|m| peer_of(obs, m))
            .map(|p| p.id.as_str())
            .collect();
        let cluster_tokens: BTreeSet<&str> = obs
            .peers
            .iter()
            .filter(|p| member_peers.contains(p.id.as_str()))
            .filter_map(|p| p.token())
            .collect();
        let current: BTreeSet<&str> = cluster.versions.iter().map(String::as_str).collect();
        let version = current
            .iter()
            .next()
            .copied()
            .unwrap_or(spec.etcd_version.as_str())
            .to_string();
        let token = cluster_tokens
            .iter()
            .next()
            .copied()
            .unwrap_or_default()
            .to_string();
        Running {
            obs,
            spec,
            cluster,
            members,
            voters,
            healthy_voters,
            has_quorum: healthy_voters >= quorum(voters),
            member_peers,
            cluster_tokens,
            current,
            version,
            token,
            all_healthy: members.iter().all(|m| m.healthy),
            backup_due: obs
                .last_backup
                .is_none_or(|t| obs.now.saturating_duration_since(t) >= obs.backup_interval),
        }
    }

    fn is_member(&self, p: &PeerView) -> bool {
        self.member_peers.contains(p.id.as_str())
    }

    /// Nothing waited for, every member healthy, no command queued, nobody
    /// quarantined: only then does optional upkeep run.
    fn quiet(&self) -> bool {
        self.all_healthy
            && self.obs.commands.is_empty()
            && !self.obs.peers.iter().any(|p| p.quarantined())
    }
}

/// One rule for a running cluster: a plan that ends the pass, or None to
/// go on to the next rule (after adding to the waits the pass reports).
type RunningRule = fn(&Running<'_>, &mut Vec<WaitReason>) -> Option<Plan>;

/// The rules for a running cluster, in the order they are asked: the first
/// that makes a plan wins. Safety first (members of retired or foreign
/// clusters, a half-done add, a lost quorum, a database at its quota), then
/// the cluster's shape (quarantine, removed and dead members, learners,
/// size, version), then operator requests and upkeep (backups,
/// defragmentation, drills).
const RUNNING_RULES: &[RunningRule] = &[
    stop_retired_member,
    leave_foreign_cluster,
    start_added_member,
    handle_lost_quorum,
    clear_space_alarm,
    dump_and_restore_rule,
    lift_quarantine,
    stop_removed_member,
    replace_dead_member,
    promote_learner,
    resize,
    change_version,
    verify_on_request,
    backup_on_request,
    start_delta_chain,
    periodic_backup,
    defragment_on_request,
    defragment_when_due,
    verify_unverified_backup,
];

fn running_cluster(obs: &Observation, spec: &ClusterSpec, cluster: &ClusterView) -> Plan {
    let r = Running::new(obs, spec, cluster);
    let mut waits = vec![];
    for rule in RUNNING_RULES {
        if let Some(plan) = rule(&r, &mut waits) {
            waits.extend(plan.waits);
            return Plan {
                actions: plan.actions,
                waits,
            };
        }
    }
    Plan {
        actions: vec![],
        waits,
    }
}

/// A member of a cluster that a quorum recovery replaced is back (its host
/// was down, not wiped): with others of its kind it may still have its old
/// quorum and serve old data to its clients. Stop it first (its data goes
/// to the trashcan); it is then added to the current cluster.
fn stop_retired_member(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    let p =
        r.obs.peers.iter().find(|p| {
            !r.is_member(p) && p.token().is_some_and(|t| r.obs.retired_tokens.contains(t))
        })?;
    Some(Plan::act(vec![Action::StopEtcd { peer: p.id.clone() }]))
}

/// Another cluster running beside ours: never touch it automatically.
fn leave_foreign_cluster(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    let p = r.obs.peers.iter().find(|p| {
        p.running() && !r.is_member(p) && p.token().is_some_and(|t| !r.cluster_tokens.contains(t))
    })?;
    Some(Plan::wait(WaitReason::ForeignCluster {
        peer: p.id.clone(),
    }))
}

/// Finish a half-done add: registered, never started. This comes before the
/// health check: a voter added without learners counts towards quorum, and
/// starting it is what restores quorum; it changes no membership. A learner
/// restores no quorum: while the quorum is lost it waits, and the quorum
/// loss is handled next (found by the simulation: a learner whose host was
/// cut off held a quorum recovery back for good).
fn start_added_member(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    let m = r
        .members
        .iter()
        .find(|m| m.name.is_empty() && !m.healthy && (r.has_quorum || !m.is_learner))?;
    if let Some(p) = peer_of(r.obs, m).filter(|p| p.idle()) {
        return Some(Plan::act(vec![Action::StartAddedMember {
            peer: p.id.clone(),
            member_id: m.id,
            token: r.token.clone(),
            version: r.version.clone(),
        }]));
    }
    Some(Plan::wait(WaitReason::EtcdStarting))
}

/// Without a quorum nothing else can change: recover it (see
/// [`quorum_loss`]) or wait.
fn handle_lost_quorum(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    if r.has_quorum {
        return None;
    }
    Some(quorum_loss(r.obs, r.spec, r.members).unwrap_or(Plan::wait(
        WaitReason::ClusterUnhealthy {
            healthy: r.healthy_voters,
            voters: r.voters,
        },
    )))
}

/// A cluster that takes no writes (its database at the quota) comes first:
/// every other change needs writes.
fn clear_space_alarm(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    r.cluster
        .space_alarm
        .then(|| Plan::act(vec![Action::ClearSpaceAlarm]))
}

/// A version change that etcd cannot make in place (see [`dump_and_restore`]).
fn dump_and_restore_rule(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    dump_and_restore(r.obs, r.spec, r.members, &r.current)
}

/// A fresh (seeded or restored) cluster is quarantined until a majority of
/// it is healthy (checked above). Not waiting for every member: a member
/// that died meanwhile, or a lift cut short by a leader change, must not
/// keep the cluster closed. A cluster runs, so one was created here: the
/// created marker is written with the lift, or alone.
fn lift_quarantine(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    let quarantined: Vec<String> = r
        .obs
        .peers
        .iter()
        .filter(|p| r.is_member(p) && p.quarantined())
        .map(|p| p.id.clone())
        .collect();
    let mut actions = vec![];
    if !r.obs.created_marker {
        actions.push(Action::WriteCreatedMarker);
    }
    if !quarantined.is_empty() {
        actions.push(Action::LiftQuarantine { peers: quarantined });
    }
    (!actions.is_empty()).then(|| Plan::act(actions))
}

/// Removed members that still have our cluster's etcd assigned, running or
/// not: a removed member's etcd exits by itself, and if the StopEtcd after
/// the removal did not reach it, the node would never be idle again.
fn stop_removed_member(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    let p = r
        .obs
        .peers
        .iter()
        .find(|p| !r.is_member(p) && p.token().is_some_and(|t| r.cluster_tokens.contains(t)))?;
    Some(Plan::act(vec![Action::StopEtcd { peer: p.id.clone() }]))
}

/// Replace a dead member: unhealthy for longer than the grace period, or its
/// peer URL now served by an idle manager with another id (the host came
/// back with an empty disk). Removing an unhealthy member never costs quorum
/// as long as the healthy voters are a majority of those left; the raft
/// leader is never the one removed. The ordinary add path then brings in an
/// idle manager.
fn replace_dead_member(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    let m = r
        .members
        .iter()
        .find(|m| !m.healthy && !m.name.is_empty() && dead(r.obs, m))?;
    let voters_after = r.voters - usize::from(!m.is_learner);
    let keeps_quorum = r.healthy_voters >= quorum(voters_after) || !r.obs.rules.quorum_guard;
    (!m.is_leader && voters_after >= 1 && keeps_quorum).then(|| {
        Plan::act(vec![
            Action::TakeBackup {
                reason: BackupReason::BeforeChange,
            },
            Action::RemoveMember {
                member_id: m.id,
                name: m.name.clone(),
            },
        ])
    })
}

/// Promote a learner once it runs (etcd refuses until it caught up).
fn promote_learner(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    let m = r.members.iter().find(|m| m.is_learner)?;
    if m.healthy {
        return Some(Plan::act(vec![Action::PromoteMember {
            member_id: m.id,
            name: m.name.clone(),
        }]));
    }
    Some(Plan::wait(WaitReason::LearnerCatchingUp {
        name: m.name.clone(),
    }))
}

/// Grow to the spec's size with the lowest idle manager that has the
/// version (as a learner where etcd has learners), or shrink by the highest
/// name that is not the raft leader; only while every member is healthy.
fn resize(r: &Running<'_>, waits: &mut Vec<WaitReason>) -> Option<Plan> {
    let want = r.spec.member_count as usize;
    if !r.all_healthy {
        return None;
    }
    if r.members.len() < want {
        let candidate = r
            .obs
            .peers
            .iter()
            .filter(|p| p.idle() && p.has_version(&r.version) && !r.is_member(p))
            .min_by(|a, b| a.id.cmp(&b.id));
        let Some(p) = candidate else {
            waits.push(WaitReason::NoIdlePeer {
                members: r.members.len(),
                want,
            });
            return None;
        };
        let learner = r
            .version
            .parse::<crate::EtcdVersion>()
            .is_ok_and(|v| v.supports_learners());
        return Some(Plan::act(vec![
            Action::TakeBackup {
                reason: BackupReason::BeforeChange,
            },
            Action::AddMember {
                peer: p.id.clone(),
                learner,
                token: r.token.clone(),
                version: r.version.clone(),
            },
        ]));
    }
    if r.members.len() > want {
        // Never remove the raft leader when another member can go; prefer the highest name.
        let m = r
            .members
            .iter()
            .filter(|m| !m.is_leader)
            .max_by(|a, b| a.name.cmp(&b.name))?;
        return Some(Plan::act(vec![
            Action::TakeBackup {
                reason: BackupReason::BeforeChange,
            },
            Action::RemoveMember {
                member_id: m.id,
                name: m.name.clone(),
            },
        ]));
    }
    None
}

/// An in-place version change (see [`version_change`]); what it waits for
/// is reported, and the rules after it still run.
fn change_version(r: &Running<'_>, waits: &mut Vec<WaitReason>) -> Option<Plan> {
    let plan = version_change(r.obs, r.spec, r.cluster, &r.current, r.all_healthy)?;
    if plan.actions.is_empty() {
        waits.extend(plan.waits);
        return None;
    }
    Some(Plan::act(plan.actions))
}

/// `etcd-manager-ctl verify-backup --on-manager`: a drill of that backup.
fn verify_on_request(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    let (file, backup) = r.obs.verify_requested.as_ref()?;
    Some(Plan::act(vec![Action::VerifyBackup {
        backup: backup.clone(),
        peer: drill_runner(r.obs, &r.version),
        request: Some(file.clone()),
    }]))
}

/// `etcd-manager-ctl backup-now`, once every member is healthy.
fn backup_on_request(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    (r.obs.backup_requested && r.all_healthy).then(|| {
        Plan::act(vec![
            Action::TakeBackup {
                reason: BackupReason::OnDemand,
            },
            Action::ClearBackupRequest,
        ])
    })
}

/// The continuous backup lost its chain: a full backup starts a new one
/// (unless a periodic one is due anyway).
fn start_delta_chain(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    (r.obs.delta_full_needed && r.all_healthy && !r.backup_due).then(|| {
        Plan::act(vec![Action::TakeBackup {
            reason: BackupReason::DeltaChain,
        }])
    })
}

/// The periodic backup; retention at most hourly after it, and old data
/// dirs only once the cluster is healthy and backed up.
fn periodic_backup(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    if !r.backup_due {
        return None;
    }
    let obs = r.obs;
    let mut actions = vec![Action::TakeBackup {
        reason: BackupReason::Periodic,
    }];
    if obs
        .last_retention
        .is_none_or(|t| obs.now.saturating_duration_since(t) >= RETENTION_INTERVAL)
    {
        actions.push(Action::ApplyRetention);
        if r.all_healthy {
            let peers = obs
                .peers
                .iter()
                .filter(|p| p.info.is_some())
                .map(|p| p.id.clone())
                .collect();
            actions.push(Action::GcTrashcan {
                peers,
                keep: TRASHCAN_KEEP,
            });
        }
    }
    Some(Plan::act(actions))
}

/// `etcd-manager-ctl defrag`: every voter or the one named, followers
/// first, the raft leader last (after handing its leadership on).
fn defragment_on_request(r: &Running<'_>, _: &mut Vec<WaitReason>) -> Option<Plan> {
    let req = r.obs.defrag_requested.as_ref()?;
    if !r.quiet() {
        return None;
    }
    let voters: Vec<&MemberView> = r.members.iter().filter(|m| !m.is_learner).collect();
    let mut chosen: Vec<&MemberView> = voters
        .iter()
        .copied()
        .filter(|m| req.member.as_ref().is_none_or(|n| *n == m.name))
        .collect();
    chosen.sort_by_key(|m| (m.is_leader, m.name.clone()));
    let move_leader = chosen.last().is_some_and(|m| m.is_leader) && voters.len() > 1;
    Some(Plan::act(vec![Action::DefragmentNow {
        members: chosen.iter().map(|m| (m.id, m.name.clone())).collect(),
        move_leader,
        request: req.file.clone(),
    }]))
}

/// Defragmentation by policy: only a settled cluster (nothing waited for,
/// see [`Running::quiet`]), one member at a time, followers first, the one
/// that frees the most first.
#[allow(clippy::ptr_arg)] // every rule has the one signature of RunningRule
fn defragment_when_due(r: &Running<'_>, waits: &mut Vec<WaitReason>) -> Option<Plan> {
    if !waits.is_empty() || !r.quiet() {
        return None;
    }
    let m = r
        .members
        .iter()
        .filter(|m| !m.is_learner && r.obs.defrag.due(m.db_size, m.db_in_use))
        .min_by_key(|m| (m.is_leader, std::cmp::Reverse(m.db_size - m.db_in_use)))?;
    Some(Plan::act(vec![Action::Defragment {
        member_id: m.id,
        name: m.name.clone(),
        move_leader: m.is_leader && r.voters > 1,
    }]))
}

/// A restore drill of the backup the leader picked for one, once settled.
#[allow(clippy::ptr_arg)] // every rule has the one signature of RunningRule
fn verify_unverified_backup(r: &Running<'_>, waits: &mut Vec<WaitReason>) -> Option<Plan> {
    let backup = r.obs.unverified_backup.as_ref()?;
    (waits.is_empty() && r.quiet()).then(|| {
        Plan::act(vec![Action::VerifyBackup {
            backup: backup.clone(),
            peer: drill_runner(r.obs, &r.version),
            request: None,
        }])
    })
}

/// Who runs a restore drill: the lowest id of the other managers that
/// answer and have etcd `version` installed (the drill's load stays off the
/// leader), else the leader itself.
pub fn drill_runner(obs: &Observation, version: &str) -> String {
    obs.peers
        .iter()
        .filter(|p| p.id != obs.self_id && p.info.is_some() && p.has_version(version))
        .map(|p| p.id.clone())
        .min()
        .unwrap_or_else(|| obs.self_id.clone())
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
