//! The store's control files as the leader reads them (spec, created
//! marker, commands, operator requests), what it writes back (status), and
//! the continuous backup and hosts file it keeps in step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use backup::layout::{
    ALLOW_NEW_CLUSTER_FILE, BACKUP_NOW_FILE, DEFRAG_NOW_FILE, RECOVER_QUORUM_FILE, VERIFY_NOW_FILE,
    request_suffix,
};

use super::observe::healthy_endpoints;
use super::payload::PeerPayload;
use super::{CONTROL_REFRESH, Control, Driver, DriverError, READ_CONTROL};
use crate::controller::{Observation, Plan};
use crate::metrics as m;
use crate::node::{retired_tokens, served_tokens};

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
        let target = (!endpoints.is_empty()).then(|| crate::backups::delta::DeltaTarget {
            epoch,
            endpoints,
            base: self.last_backup_name.clone(),
        });
        self.delta_target.send_if_modified(|t| {
            // Members coming and going alone do not restart the chain: the
            // streamer reads the endpoints when it (re)connects.
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

    /// The control files, read again when older than [`CONTROL_REFRESH`].
    pub(super) async fn control(&mut self) -> Result<&Control, DriverError> {
        let now = self.clock.now();
        let fresh = self.steady
            && self
                .control
                .as_ref()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) < CONTROL_REFRESH);
        if !fresh {
            // After a failed read, the store is asked again only after a
            // growing pause (1 s doubling to 60 s), not on every pass.
            if let Some((failures, left)) = self.backoff.waiting(READ_CONTROL, now) {
                return Err(format!(
                    "the backup store did not answer the last {failures} reads of the control files; next try in {:.1} s",
                    left.as_secs_f64()
                )
                .into());
            }
            let snap = match self.store.read_control(&mut self.control_cache).await {
                Ok(snap) => {
                    self.backoff.succeeded(READ_CONTROL);
                    snap
                }
                Err(e) => {
                    let e = DriverError::from(e);
                    self.backoff
                        .failed(READ_CONTROL, now, &e.to_string(), false);
                    return Err(e);
                }
            };
            if snap.malformed.len() != self.malformed_seen {
                for f in &snap.malformed {
                    tracing::warn!(path = %f.path, reason = %f.reason, "skipping a malformed control file");
                }
                self.malformed_seen = snap.malformed.len();
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
            self.control = Some((now, control));
        }
        match &self.control {
            Some((_, c)) => Ok(c),
            None => Err("the control files were not read".into()),
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
        if self.last_hosts.as_ref() == Some(&records) {
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
                self.last_hosts = Some(records);
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
            let d = self.delta.status();
            status.continuous_backup = Some(match (d.gap, d.base) {
                (Some(gap), _) => format!("GAP: {gap}; a full backup starts a new chain"),
                (None, Some(base)) => format!("on, chain from backup {base}"),
                (None, None) => "on, starting".into(),
            });
        }
        if let Some((_, c)) = &self.control {
            status.warnings.extend(
                c.malformed
                    .iter()
                    .map(|f| format!("skipping malformed {}: {}", f.path, f.reason)),
            );
        }
        let last_change = self
            .last_status
            .as_ref()
            .and_then(|(l, _)| l.version_change.clone());
        if let Some(v) = &status.version_change
            && last_change.as_ref() != Some(v)
        {
            tracing::info!(change = %v, "version change planned");
        }
        let now = self.clock.now();
        if let Some((last, at)) = &self.last_status
            && !self.following.take_stale()
            && last.same_content(&status)
            && now.saturating_duration_since(*at) < STATUS_REFRESH
        {
            return;
        }
        match self.store_status(&status).await {
            Ok(()) => self.last_status = Some((status, now)),
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
            self.recover_seen = None;
            return Duration::ZERO;
        };
        let first = match &self.recover_seen {
            Some((seen, at)) if *seen == body => *at,
            _ => {
                self.recover_seen = Some((body.clone(), now));
                now
            }
        };
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
        let read = self.recover_seen.as_ref().map(|(b, _)| b.clone());
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
        self.recover_seen = None;
        if expired {
            tracing::warn!("recover-quorum request removed: older than an hour, never acted on");
        } else {
            tracing::info!("recover-quorum request removed: the cluster holds its quorum");
        }
        self.control = None;
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
        if texts != self.last_waits {
            for (w, t) in plan.waits.iter().zip(&texts) {
                tracing::info!(reason = w.label(), "{t}");
            }
            self.last_waits = texts;
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

/// What identifies one queued restore command.
pub(super) fn command_key(c: &backup::StoredCommand) -> Option<(String, String)> {
    let r = c.command.restore_backup.as_ref()?;
    Some((c.name.clone(), r.backup.clone()))
}
