//! The store's control files as the leader reads them (spec, created
//! marker, commands, operator requests), what it writes back (status), and
//! the continuous backup and hosts file it keeps in step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup::layout::{
    ALLOW_NEW_CLUSTER_FILE, BACKUP_NOW_FILE, DEFRAG_NOW_FILE, RECOVER_QUORUM_FILE, VERIFY_NOW_FILE,
    request_suffix,
};

use super::error::Missing;
use super::observe::healthy_endpoints;
use super::payload::PeerPayload;
use super::{CONTROL_REFRESH, Control, Driver, DriverError, READ_CONTROL};
use crate::backups::delta::DeltaTarget;
use crate::controller::{Observation, Plan};
use crate::metrics as m;
use crate::node::{retired_tokens, served_tokens};

/// The store's control files as this leader last read them.
#[derive(Default)]
pub(super) struct ControlFiles {
    /// What they said, and when they were read.
    read: Option<(Instant, Control)>,
    /// What the store listed last (only changed files are read again).
    cache: backup::ControlCache,
    /// How many malformed control files the last read reported (logged on change).
    malformed_seen: usize,
    /// The recover-quorum request last read, and when this leader first
    /// read that body (a request without a stamp ages from then).
    recover_seen: Option<(bytes::Bytes, Instant)>,
}

impl ControlFiles {
    /// Read them again at the next look (what this leader did, or what
    /// changed while it did not lead, may have changed them).
    pub(super) fn forget(&mut self) {
        self.read = None;
    }

    /// What they said at the last read, if they were read.
    pub(super) fn last(&self) -> Option<&Control> {
        self.read.as_ref().map(|(_, c)| c)
    }

    /// Read at most `refresh` ago.
    fn fresh(&self, now: Instant, refresh: Duration) -> bool {
        self.read
            .as_ref()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < refresh)
    }

    /// This leader recorded `token` as served (no need to read the files again to know).
    pub(super) fn served(&mut self, token: &str) {
        if let Some((_, c)) = &mut self.read {
            c.served_tokens.insert(token.to_string());
        }
    }

    /// When this leader first read the recover-quorum request `body`.
    fn first_read(&mut self, body: &bytes::Bytes, now: Instant) -> Instant {
        match &self.recover_seen {
            Some((seen, at)) if seen == body => *at,
            _ => {
                self.recover_seen = Some((body.clone(), now));
                now
            }
        }
    }
}

/// What this manager last published, so it writes only changes.
#[derive(Default)]
pub(super) struct Published {
    /// Its gossip payload.
    pub(super) payload: Option<PeerPayload>,
    /// The status report, and when it was written.
    pub(super) status: Option<(crate::status::ClusterStatus, Instant)>,
    /// What the hosts file's block said.
    hosts: Option<BTreeMap<String, BTreeSet<String>>>,
}

/// The continuous backup, as the leader points it at the members: what it
/// should follow, where it stands, and the streamer until
/// [`Driver::run`](super::Driver::run) starts it.
pub(super) struct DeltaLink {
    pub(super) target: tokio::sync::watch::Sender<Option<DeltaTarget>>,
    pub(super) shared: Arc<crate::backups::delta::DeltaShared>,
    pub(super) streamer: Option<crate::backups::delta::DeltaStreamer>,
}

impl DeltaLink {
    /// No streamer with `--delta-interval=0`.
    pub(super) fn new(
        settings: &super::DriverSettings,
        store: &backup::BackupStore,
        clock: &Arc<dyn crate::clock::Clock>,
    ) -> DeltaLink {
        let (target, target_rx) = tokio::sync::watch::channel(None);
        let shared = Arc::new(crate::backups::delta::DeltaShared::default());
        let streamer =
            (!settings.delta_interval.is_zero()).then(|| crate::backups::delta::DeltaStreamer {
                store: store.clone(),
                clock: clock.clone(),
                interval: settings.delta_interval,
                tls: settings.etcd_tls.clone(),
                shared: shared.clone(),
                target: target_rx,
            });
        DeltaLink {
            target,
            shared,
            streamer,
        }
    }

    /// Follow `target` (None: nothing). Members coming and going alone do
    /// not restart the chain: the streamer reads the endpoints when it
    /// (re)connects.
    pub(super) fn follow(&self, target: Option<DeltaTarget>) {
        self.target.send_if_modified(|t| {
            let same = match (&*t, &target) {
                (Some(a), Some(b)) => a.epoch == b.epoch && a.base == b.base,
                (None, None) => true,
                _ => false,
            };
            if let (Some(a), Some(b)) = (t.as_mut(), &target) {
                a.endpoints = b.endpoints.clone();
            }
            if !same {
                *t = target;
            }
            !same
        });
    }
}

impl Driver {
    /// Point the continuous backup at the healthy members and the newest
    /// full backup this leader took (None before its first: the streamer
    /// resumes the store's newest chain).
    pub(super) fn follow_changes(&mut self, epoch: u64, obs: &Observation) {
        if self.settings.delta_interval.is_zero() {
            return;
        }
        let mut endpoints: Vec<String> =
            healthy_endpoints(obs).into_iter().map(|(_, e)| e).collect();
        endpoints.sort();
        let target = (!endpoints.is_empty()).then(|| DeltaTarget {
            epoch,
            endpoints,
            base: self.books.last_backup_name.clone(),
        });
        self.delta.follow(target);
    }

    /// The control files, read again when older than [`CONTROL_REFRESH`].
    pub(super) async fn control(&mut self) -> Result<&Control, DriverError> {
        let now = self.clock.now();
        let fresh = self.pace.steady && self.control_files.fresh(now, CONTROL_REFRESH);
        if !fresh {
            // After a failed read, the store is asked again only after a
            // growing pause (1 s doubling to 60 s), not on every pass.
            if let Some((failures, left)) = self.pace.backoff.waiting(READ_CONTROL, now) {
                return Err(Missing::StoreBackingOff { failures, left }.into());
            }
            let snap = match self.store.read_control(&mut self.control_files.cache).await {
                Ok(snap) => {
                    self.pace.backoff.succeeded(READ_CONTROL);
                    snap
                }
                Err(e) => {
                    let e = DriverError::from(e);
                    self.pace
                        .backoff
                        .failed(READ_CONTROL, now, &e.to_string(), false);
                    return Err(e);
                }
            };
            if snap.malformed.len() != self.control_files.malformed_seen {
                for f in &snap.malformed {
                    tracing::warn!(path = %f.path, reason = %f.reason, "skipping a malformed control file");
                }
                self.control_files.malformed_seen = snap.malformed.len();
            }
            metrics::gauge!(m::STORE_MALFORMED_FILES).set(snap.malformed.len() as f64);
            let mut control = Control {
                malformed: snap.malformed,
                spec: snap.spec,
                backup_requested: snap.manager_files.contains(BACKUP_NOW_FILE),
                defrag_requested: defrag_request(&snap.manager_files),
                verify_requested: verify_request(&snap.manager_files),
                retired_tokens: retired_tokens(&snap.manager_files),
                served_tokens: served_tokens(&snap.manager_files),
                recover_quorum_request: None,
                allow_new_cluster: snap.manager_files.contains(ALLOW_NEW_CLUSTER_FILE),
                commands: snap.commands,
                created_marker: snap.created,
            };
            if snap.manager_files.contains(RECOVER_QUORUM_FILE) {
                control.recover_quorum_request =
                    match self.store.read_manager_file(RECOVER_QUORUM_FILE).await {
                        Ok(body) => body,
                        // Unreadable now: there all the same (without a stamp).
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the recover-quorum request");
                            Some(bytes::Bytes::new())
                        }
                    };
            }
            if let Some(sc) = &self.settings.static_config {
                // --static-config: the spec is fixed, and as upstream a new
                // cluster needs please-create-new-cluster in our data dir.
                // Operators' commands (restore-backup, backup-now) still work.
                let allow = self
                    .node
                    .data_dir()
                    .join(crate::platform::statics::PLEASE_CREATE_NEW_CLUSTER)
                    .exists();
                control.spec = Some(sc.spec());
                control.allow_new_cluster = allow;
                control.created_marker = !allow;
            }
            self.control_files.read = Some((now, control));
        }
        match self.control_files.last() {
            Some(c) => Ok(c),
            None => Err(Missing::ControlUnread.into()),
        }
    }

    /// With `--dns-suffix`, name every manager of our cluster that gossip
    /// knows (down ones too: their names must resolve when they return) in
    /// the hosts file; written only when the names change.
    pub(super) fn keep_hosts_file(&mut self) {
        let Some(path) = self.settings.hosts_file.clone() else {
            return;
        };
        let mut records: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for mv in self.gossip.members() {
            let Some(p) = mv.payload.as_deref().and_then(PeerPayload::decode) else {
                continue;
            };
            if p.cluster_name != self.settings.cluster_name {
                continue;
            }
            records
                .entry(p.peer_api.ip().to_string())
                .or_default()
                .insert(crate::platform::hosts::dns_name(
                    &mv.id,
                    &self.settings.dns_suffix,
                ));
        }
        records
            .entry(self.settings.peer_api.ip().to_string())
            .or_default()
            .insert(crate::platform::hosts::dns_name(
                self.node.id(),
                &self.settings.dns_suffix,
            ));
        if self.published.hosts.as_ref() == Some(&records) {
            return;
        }
        match crate::platform::hosts::update(
            &path,
            &self.settings.cluster_name,
            &self.settings.dns_suffix,
            &records,
        ) {
            Ok(changed) => {
                if changed {
                    tracing::info!(path = %path.display(), names = records.values().map(BTreeSet::len).sum::<usize>(), "hosts file updated");
                }
                self.published.hosts = Some(records);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot update the hosts file")
            }
        }
    }

    /// Write the status report when it changed or is getting old.
    pub(super) async fn write_status(&mut self, obs: &Observation, plan: &Plan) {
        use crate::status::{ClusterStatus, STATUS_REFRESH};
        let mut status = ClusterStatus::from_pass(obs, plan, self.wall_secs());
        status.warnings = self.settings.warnings.clone();
        status.gossip = Some(match self.gossip.plain_peers() {
            0 => self.settings.gossip_mode.clone(),
            n => format!(
                "{}; {n} manager(s) of an older release taken in plain (confirmed by their peer API certificates)",
                self.settings.gossip_mode
            ),
        });
        if !self.settings.delta_interval.is_zero() {
            let d = self.delta.shared.status();
            status.continuous_backup = Some(match (d.gap, d.base) {
                (Some(gap), _) => format!("GAP: {gap}; a full backup starts a new chain"),
                (None, Some(base)) => format!("on, chain from backup {base}"),
                (None, None) => "on, starting".into(),
            });
        }
        if let Some(c) = self.control_files.last() {
            status.warnings.extend(
                c.malformed
                    .iter()
                    .map(|f| format!("skipping malformed {}: {}", f.path, f.reason)),
            );
        }
        let last_change = self
            .published
            .status
            .as_ref()
            .and_then(|(l, _)| l.version_change.clone());
        if let Some(v) = &status.version_change
            && last_change.as_ref() != Some(v)
        {
            tracing::info!(change = %v, "version change planned");
        }
        let now = self.clock.now();
        if let Some((last, at)) = &self.published.status
            && !self.following.take_stale()
            && last.same_content(&status)
            && now.saturating_duration_since(*at) < STATUS_REFRESH
        {
            return;
        }
        match self.store_status(&status).await {
            Ok(()) => self.published.status = Some((status, now)),
            Err(e) => tracing::warn!(error = %e, "could not write the status report"),
        }
    }

    /// Write `status` as the report `etcd-manager-ctl status` reads.
    pub(super) async fn store_status(
        &self,
        status: &crate::status::ClusterStatus,
    ) -> Result<(), backup::Error> {
        let body = serde_json::to_vec_pretty(status).unwrap_or_default();
        self.store
            .write_manager_file(backup::layout::STATUS_FILE, body)
            .await
    }

    /// How old the recover-quorum request `body` is (see
    /// [`crate::recover_request::age`]), remembering when this leader first
    /// read that body.
    pub(super) fn recover_request_age(
        &mut self,
        body: Option<bytes::Bytes>,
        now: Instant,
    ) -> Duration {
        let Some(body) = body else {
            self.control_files.recover_seen = None;
            return Duration::ZERO;
        };
        let first = self.control_files.first_read(&body, now);
        let wall_ns = self
            .clock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        crate::recover_request::age(
            crate::recover_request::RecoverQuorumRequest::parse(&body),
            wall_ns,
            now.saturating_duration_since(first),
        )
    }

    /// [`Action::ClearRecoverQuorumRequest`]: remove the request if it still
    /// holds what was read (a newer one gets its own judgement).
    pub(super) async fn clear_recover_request(&mut self, expired: bool) -> Result<(), DriverError> {
        let read = self
            .control_files
            .recover_seen
            .as_ref()
            .map(|(b, _)| b.clone());
        let now = self
            .store
            .read_manager_file(RECOVER_QUORUM_FILE)
            .await
            .ok()
            .flatten();
        if now.is_some() && read.is_some() && now != read {
            return Ok(());
        }
        self.store
            .delete_manager_file(RECOVER_QUORUM_FILE)
            .await
            .map_err(DriverError::from)?;
        self.control_files.recover_seen = None;
        if expired {
            tracing::warn!("recover-quorum request removed: older than an hour, never acted on");
        } else {
            tracing::info!("recover-quorum request removed: the cluster holds its quorum");
        }
        self.control_files.forget();
        Ok(())
    }

    /// The wall clock in Unix seconds (0 before 1970).
    pub(super) fn wall_secs(&self) -> i64 {
        self.clock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    pub(super) fn report_waits(&mut self, plan: &Plan) {
        let texts: Vec<String> = plan.waits.iter().map(ToString::to_string).collect();
        for w in &plan.waits {
            metrics::counter!(m::RECONCILE_WAITS, "reason" => w.label()).increment(1);
        }
        if texts != self.pace.last_waits {
            for (w, t) in plan.waits.iter().zip(&texts) {
                tracing::info!(reason = w.label(), "{t}");
            }
            self.pace.last_waits = texts;
        }
    }
}

pub fn verify_request(files: &std::collections::BTreeSet<String>) -> Option<(String, String)> {
    files.iter().find_map(|f| {
        let backup = request_suffix(f, VERIFY_NOW_FILE)?;
        backup::check_backup_name(backup)
            .ok()
            .map(|()| (f.clone(), backup.to_string()))
    })
}

/// The on-demand defragmentation the manager files ask for, if any: Some(None)
/// every voter, Some(Some(name)) one member (an invalid name is ignored).
pub fn defrag_request(
    files: &std::collections::BTreeSet<String>,
) -> Option<(String, Option<String>)> {
    files.iter().find_map(|f| {
        if f == DEFRAG_NOW_FILE {
            return Some((f.clone(), None));
        }
        let member = request_suffix(f, DEFRAG_NOW_FILE)?;
        etcd::check_ident(etcd::IdentKind::MemberName, member)
            .ok()
            .map(|()| (f.clone(), Some(member.to_string())))
    })
}
