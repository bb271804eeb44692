//! Metric names (all `etcd_manager_*`, units in the name) and their recording.

use std::net::SocketAddr;

pub const IS_LEADER: &str = "etcd_manager_is_leader";
pub const LEASE_EPOCH: &str = "etcd_manager_lease_epoch";
pub const LEADER_CHANGES: &str = "etcd_manager_leader_changes_total";
pub const BACKUP_LAST_SUCCESS: &str = "etcd_manager_backup_last_success_timestamp_seconds";
pub const BACKUP_DURATION: &str = "etcd_manager_backup_duration_seconds";
pub const BACKUP_SIZE: &str = "etcd_manager_backup_size_bytes";
pub const BACKUPS: &str = "etcd_manager_backups_total";
pub const GOSSIP_MEMBERS: &str = "etcd_manager_gossip_members";
pub const ETCD_MEMBERS: &str = "etcd_manager_etcd_members";
pub const RECONCILE_ACTIONS: &str = "etcd_manager_reconcile_actions_total";
pub const RECONCILE_WAITS: &str = "etcd_manager_reconcile_waits_total";

/// Describe every metric once, so /metrics carries HELP lines.
pub fn describe() {
    metrics::describe_gauge!(
        IS_LEADER,
        "1 while this manager holds the lease and acts as leader"
    );
    metrics::describe_gauge!(
        LEASE_EPOCH,
        "epoch of the lease this manager holds or last saw"
    );
    metrics::describe_counter!(
        LEADER_CHANGES,
        "times this manager gained or lost leadership"
    );
    metrics::describe_gauge!(
        BACKUP_LAST_SUCCESS,
        "unix time of the last successful backup by this manager"
    );
    metrics::describe_gauge!(BACKUP_DURATION, "duration of the last backup");
    metrics::describe_gauge!(BACKUP_SIZE, "compressed size of the last backup");
    metrics::describe_counter!(BACKUPS, "backups attempted, by result");
    metrics::describe_gauge!(GOSSIP_MEMBERS, "gossip members by state");
    metrics::describe_gauge!(ETCD_MEMBERS, "etcd members: desired, actual, healthy");
    metrics::describe_counter!(
        RECONCILE_ACTIONS,
        "actions the leader executed, by action and result"
    );
    metrics::describe_counter!(RECONCILE_WAITS, "controller passes that waited, by reason");
}

/// Serve Prometheus text on `addr` (every path answers with the metrics).
pub fn install(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| {
            format!("cannot serve metrics on {addr}: {e}; choose another --metrics-address")
        })?;
    describe();
    Ok(())
}
