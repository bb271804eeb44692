//! Which `ETCD_*` settings each etcd minor understands, so a version change
//! never starts a member on settings its new version would ignore or refuse.
//!
//! etcd reads `ETCD_FOO_BAR` as `--foo-bar`. A variable it does not know is
//! only a warning in its log, so a setting a user relies on
//! (`ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL`, gone in 3.7) would be
//! dropped without a word, and a feature gate the older minor lacks stops
//! etcd from starting at all. The tables are each minor's flags as its
//! sources define them and its `--help` lists them (3.3.25, 3.4.23, 3.5.30
//! and 3.5.35, 3.6.16, 3.7.3); a test checks them against the installed
//! binaries. Pure.

use std::fmt;

use crate::EtcdVersion;

/// A setting the version a member moves to would not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostSetting {
    /// The variable, `ETCD_ENABLE_V2` (or `ETCD_FEATURE_GATES` for a gate).
    pub key: String,
    /// What the target lacks: `--enable-v2`, or the feature gate `PriorityRequest`.
    pub what: String,
    /// The version the member would move to.
    pub to: EtcdVersion,
    /// What to write instead, when etcd has a replacement.
    pub instead: Option<String>,
}

impl fmt::Display for LostSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: etcd {} has no {}", self.key, self.to, self.what)?;
        match &self.instead {
            Some(i) => write!(f, "; use {i} instead"),
            None => write!(f, "; remove it"),
        }
    }
}

/// The flag an `ETCD_*` variable sets: `ETCD_ENABLE_V2` -> `enable-v2`.
/// None for anything else.
pub fn flag_of(key: &str) -> Option<String> {
    let rest = key.strip_prefix("ETCD_")?;
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    Some(rest.to_ascii_lowercase().replace('_', "-"))
}

/// The variable that sets `flag`: `enable-v2` -> `ETCD_ENABLE_V2`.
fn key_of(flag: &str) -> String {
    format!("ETCD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// The flags of `version`'s minor; None for a minor these tables do not know.
fn flags(version: EtcdVersion) -> Option<&'static [&'static str]> {
    match (version.major, version.minor) {
        (3, 3) => Some(FLAGS_3_3),
        (3, 4) => Some(FLAGS_3_4),
        (3, 5) => Some(FLAGS_3_5),
        (3, 6) => Some(FLAGS_3_6),
        (3, 7) => Some(FLAGS_3_7),
        _ => None,
    }
}

/// The feature gates of `version`'s minor (3.6+); None for a minor these
/// tables do not know, empty before 3.6.
fn gates(version: EtcdVersion) -> Option<&'static [&'static str]> {
    match (version.major, version.minor) {
        (3, 3..=5) => Some(&[]),
        (3, 6) => Some(GATES_3_6),
        (3, 7) => Some(GATES_3_7),
        _ => None,
    }
}

/// Whether etcd `version` understands the variable `key`; None when these
/// tables do not know the version's minor or `key` is no `ETCD_*` name.
pub fn understands(version: EtcdVersion, key: &str) -> Option<bool> {
    let flag = flag_of(key)?;
    Some(flags(version)?.contains(&flag.as_str()))
}

/// The settings among `env` (the `ETCD_*` variables a node gives etcd beyond
/// ours) that etcd `from` understands and `to` would not: flags `to` does not
/// have, and feature gates in `ETCD_FEATURE_GATES` it does not know. A
/// variable neither knows is not the change's doing and is not listed
/// ([`not_understood`] names those). Empty when a minor is not in the tables.
pub fn lost_settings(
    env: &[(String, String)],
    from: EtcdVersion,
    to: EtcdVersion,
) -> Vec<LostSetting> {
    let (Some(before), Some(after)) = (flags(from), flags(to)) else {
        return vec![];
    };
    let mut lost = Vec::new();
    for (key, value) in env {
        let Some(flag) = flag_of(key) else { continue };
        let flag = flag.as_str();
        if before.contains(&flag) && !after.contains(&flag) && !moot_on(flag, value, to) {
            lost.push(LostSetting {
                key: key.clone(),
                what: format!("--{flag}"),
                to,
                instead: instead_of(flag, to),
            });
        } else if flag == "feature-gates" && after.contains(&flag) {
            let (Some(had), Some(has)) = (gates(from), gates(to)) else {
                continue;
            };
            for gate in value
                .split(',')
                .filter_map(|g| g.split('=').next())
                .map(str::trim)
            {
                if had.contains(&gate) && !has.contains(&gate) {
                    lost.push(LostSetting {
                        key: key.clone(),
                        what: format!("feature gate {gate}"),
                        to,
                        instead: None,
                    });
                }
            }
        }
    }
    lost
}

/// A setting whose loss changes nothing: the v2 API turned off, on a
/// version that has none.
fn moot_on(flag: &str, value: &str, to: EtcdVersion) -> bool {
    let off = matches!(value.trim(), "" | "false" | "0");
    matches!(flag, "enable-v2" | "experimental-enable-v2v3")
        && off
        && (to.major, to.minor) >= (3, 6)
}

/// The variables among `env` that etcd `version` does not understand (it
/// logs "unrecognized environment variable" and goes on without them).
/// Empty when the version's minor is not in the tables.
pub fn not_understood(env: &[(String, String)], version: EtcdVersion) -> Vec<String> {
    env.iter()
        .filter(|(k, _)| understands(version, k) == Some(false))
        .map(|(k, _)| k.clone())
        .collect()
}

/// What replaces `flag` on `to`: the flag's new name (3.4 and 3.5 renames,
/// 3.6's experimental flags without the prefix or as feature gates), or on
/// a downgrade the name it had before.
fn instead_of(flag: &str, to: EtcdVersion) -> Option<String> {
    let known = flags(to)?;
    if let Some((_, new)) = RENAMED.iter().find(|(old, _)| *old == flag) {
        return match new.strip_prefix("gate:") {
            Some(gate) => known
                .contains(&"feature-gates")
                .then(|| format!("ETCD_FEATURE_GATES={gate}=true")),
            None => known.contains(new).then(|| key_of(new)),
        };
    }
    if let Some((old, _)) = RENAMED.iter().find(|(_, new)| *new == flag) {
        return known
            .contains(old)
            .then(|| format!("{} (its name before 3.6)", key_of(old)));
    }
    if flag == "feature-gates" && known.contains(&"experimental-initial-corrupt-check") {
        // A minor without gates has each as an experimental flag.
        return Some(
            "each gate's ETCD_EXPERIMENTAL_* variable (ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK=true \
             for InitialCorruptCheck)"
                .into(),
        );
    }
    match flag {
        "ca-file" => Some("ETCD_TRUSTED_CA_FILE with ETCD_CLIENT_CERT_AUTH=true".into()),
        "peer-ca-file" => {
            Some("ETCD_PEER_TRUSTED_CA_FILE with ETCD_PEER_CLIENT_CERT_AUTH=true".into())
        }
        "debug" | "log-package-levels" => Some("ETCD_LOG_LEVEL (debug, info, warn, ...)".into()),
        _ => None,
    }
}

/// Flags etcd renamed, old -> new (`gate:Name`: became a feature gate).
const RENAMED: &[(&str, &str)] = &[
    // 3.4
    ("log-output", "log-outputs"),
    // 3.5
    (
        "experimental-backend-bbolt-freelist-type",
        "backend-bbolt-freelist-type",
    ),
    // 3.6 (the old names removed in 3.7)
    (
        "experimental-compact-hash-check-time",
        "compact-hash-check-time",
    ),
    ("experimental-corrupt-check-time", "corrupt-check-time"),
    (
        "experimental-compaction-batch-limit",
        "compaction-batch-limit",
    ),
    (
        "experimental-watch-progress-notify-interval",
        "watch-progress-notify-interval",
    ),
    (
        "experimental-warning-apply-duration",
        "warning-apply-duration",
    ),
    (
        "experimental-warning-unary-request-duration",
        "warning-unary-request-duration",
    ),
    (
        "experimental-bootstrap-defrag-threshold-megabytes",
        "bootstrap-defrag-threshold-megabytes",
    ),
    ("experimental-memory-mlock", "memory-mlock"),
    (
        "experimental-snapshot-catchup-entries",
        "snapshot-catchup-entries",
    ),
    (
        "experimental-compaction-sleep-interval",
        "compaction-sleep-interval",
    ),
    ("experimental-downgrade-check-time", "downgrade-check-time"),
    (
        "experimental-peer-skip-client-san-verification",
        "peer-skip-client-san-verification",
    ),
    (
        "experimental-enable-distributed-tracing",
        "enable-distributed-tracing",
    ),
    (
        "experimental-distributed-tracing-address",
        "distributed-tracing-address",
    ),
    (
        "experimental-distributed-tracing-service-name",
        "distributed-tracing-service-name",
    ),
    (
        "experimental-distributed-tracing-instance-id",
        "distributed-tracing-instance-id",
    ),
    (
        "experimental-distributed-tracing-sampling-rate",
        "distributed-tracing-sampling-rate",
    ),
    (
        "experimental-stop-grpc-service-on-defrag",
        "gate:StopGRPCServiceOnDefrag",
    ),
    (
        "experimental-initial-corrupt-check",
        "gate:InitialCorruptCheck",
    ),
    (
        "experimental-compact-hash-check-enabled",
        "gate:CompactHashCheck",
    ),
    (
        "experimental-txn-mode-write-with-shared-buffer",
        "gate:TxnModeWriteWithSharedBuffer",
    ),
    (
        "experimental-enable-lease-checkpoint",
        "gate:LeaseCheckpoint",
    ),
    (
        "experimental-enable-lease-checkpoint-persist",
        "gate:LeaseCheckpointPersist",
    ),
];

/// etcd 3.6's feature gates.
const GATES_3_6: &[&str] = &[
    "CompactHashCheck",
    "InitialCorruptCheck",
    "LeaseCheckpoint",
    "LeaseCheckpointPersist",
    "SetMemberLocalAddr",
    "StopGRPCServiceOnDefrag",
    "TxnModeWriteWithSharedBuffer",
];

/// etcd 3.7's feature gates.
const GATES_3_7: &[&str] = &[
    "CompactHashCheck",
    "FastLeaseKeepAlive",
    "InitialCorruptCheck",
    "LeaseCheckpoint",
    "LeaseCheckpointPersist",
    "PriorityRequest",
    "SetMemberLocalAddr",
    "StopGRPCServiceOnDefrag",
    "TxnModeWriteWithSharedBuffer",
];

/// etcd 3.3's flags.
const FLAGS_3_3: &[&str] = &[
    "advertise-client-urls",
    "auth-token",
    "auth-token-ttl",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "auto-tls",
    "ca-file",
    "cert-file",
    "cipher-suites",
    "client-cert-auth",
    "client-crl-file",
    "config-file",
    "cors",
    "data-dir",
    "debug",
    "discovery",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-srv",
    "election-timeout",
    "enable-pprof",
    "enable-v2",
    "experimental-corrupt-check-time",
    "experimental-enable-v2v3",
    "experimental-initial-corrupt-check",
    "experimental-peer-skip-client-san-verification",
    "force-new-cluster",
    "grpc-keepalive-interval",
    "grpc-keepalive-min-time",
    "grpc-keepalive-timeout",
    "heartbeat-interval",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "initial-election-tick-advance",
    "key-file",
    "listen-client-urls",
    "listen-metrics-urls",
    "listen-peer-urls",
    "log-output",
    "log-package-levels",
    "max-request-bytes",
    "max-snapshots",
    "max-txn-ops",
    "max-wals",
    "metrics",
    "name",
    "peer-auto-tls",
    "peer-ca-file",
    "peer-cert-allowed-cn",
    "peer-cert-file",
    "peer-client-cert-auth",
    "peer-crl-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "proxy",
    "proxy-dial-timeout",
    "proxy-failure-wait",
    "proxy-read-timeout",
    "proxy-refresh-interval",
    "proxy-write-timeout",
    "quota-backend-bytes",
    "snapshot-count",
    "strict-reconfig-check",
    "trusted-ca-file",
    "version",
    "wal-dir",
];

/// etcd 3.4's flags.
const FLAGS_3_4: &[&str] = &[
    "advertise-client-urls",
    "auth-token",
    "auth-token-ttl",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "auto-tls",
    "backend-batch-interval",
    "backend-batch-limit",
    "bcrypt-cost",
    "cert-file",
    "cipher-suites",
    "client-cert-allowed-hostname",
    "client-cert-auth",
    "client-crl-file",
    "config-file",
    "cors",
    "data-dir",
    "debug",
    "discovery",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-srv",
    "discovery-srv-name",
    "election-timeout",
    "enable-pprof",
    "enable-v2",
    "experimental-backend-bbolt-freelist-type",
    "experimental-compaction-batch-limit",
    "experimental-corrupt-check-time",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-v2v3",
    "experimental-initial-corrupt-check",
    "experimental-peer-skip-client-san-verification",
    "experimental-warning-apply-duration",
    "experimental-watch-progress-notify-interval",
    "force-new-cluster",
    "grpc-keepalive-interval",
    "grpc-keepalive-min-time",
    "grpc-keepalive-timeout",
    "heartbeat-interval",
    "host-whitelist",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "initial-election-tick-advance",
    "key-file",
    "listen-client-urls",
    "listen-metrics-urls",
    "listen-peer-urls",
    "log-level",
    "log-outputs",
    "log-package-levels",
    "logger",
    "max-concurrent-streams",
    "max-request-bytes",
    "max-snapshots",
    "max-txn-ops",
    "max-wals",
    "metrics",
    "name",
    "peer-auto-tls",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "peer-cert-file",
    "peer-client-cert-auth",
    "peer-crl-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "pre-vote",
    "proxy",
    "proxy-dial-timeout",
    "proxy-failure-wait",
    "proxy-read-timeout",
    "proxy-refresh-interval",
    "proxy-write-timeout",
    "quota-backend-bytes",
    "snapshot-count",
    "strict-reconfig-check",
    "trusted-ca-file",
    "version",
    "wal-dir",
];

/// etcd 3.5's flags.
const FLAGS_3_5: &[&str] = &[
    "advertise-client-urls",
    "auth-token",
    "auth-token-ttl",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "auto-tls",
    "backend-batch-interval",
    "backend-batch-limit",
    "backend-bbolt-freelist-type",
    "bcrypt-cost",
    "cert-file",
    "cipher-suites",
    "client-cert-allowed-hostname",
    "client-cert-auth",
    "client-cert-file",
    "client-crl-file",
    "client-key-file",
    "config-file",
    "cors",
    "data-dir",
    "discovery",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-srv",
    "discovery-srv-name",
    "election-timeout",
    "enable-grpc-gateway",
    "enable-log-rotation",
    "enable-pprof",
    "enable-v2",
    "experimental-bootstrap-defrag-threshold-megabytes",
    "experimental-compact-hash-check-enabled",
    "experimental-compact-hash-check-time",
    "experimental-compaction-batch-limit",
    "experimental-compaction-sleep-interval",
    "experimental-corrupt-check-time",
    "experimental-distributed-tracing-address",
    "experimental-distributed-tracing-instance-id",
    "experimental-distributed-tracing-sampling-rate",
    "experimental-distributed-tracing-service-name",
    "experimental-downgrade-check-time",
    "experimental-enable-distributed-tracing",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "experimental-enable-v2v3",
    "experimental-initial-corrupt-check",
    "experimental-memory-mlock",
    "experimental-peer-skip-client-san-verification",
    "experimental-snapshot-catchup-entries",
    "experimental-stop-grpc-service-on-defrag",
    "experimental-txn-mode-write-with-shared-buffer",
    "experimental-warning-apply-duration",
    "experimental-watch-progress-notify-interval",
    "force-new-cluster",
    "grpc-keepalive-interval",
    "grpc-keepalive-min-time",
    "grpc-keepalive-timeout",
    "heartbeat-interval",
    "host-whitelist",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "initial-election-tick-advance",
    "key-file",
    "listen-client-http-urls",
    "listen-client-urls",
    "listen-metrics-urls",
    "listen-peer-urls",
    "log-level",
    "log-outputs",
    "log-rotation-config-json",
    "logger",
    "max-concurrent-streams",
    "max-request-bytes",
    "max-snapshots",
    "max-txn-ops",
    "max-wals",
    "metrics",
    "name",
    "peer-auto-tls",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "peer-cert-file",
    "peer-client-cert-auth",
    "peer-client-cert-file",
    "peer-client-key-file",
    "peer-crl-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "pre-vote",
    "proxy",
    "proxy-dial-timeout",
    "proxy-failure-wait",
    "proxy-read-timeout",
    "proxy-refresh-interval",
    "proxy-write-timeout",
    "quota-backend-bytes",
    "raft-read-timeout",
    "raft-write-timeout",
    "self-signed-cert-validity",
    "snapshot-count",
    "socket-reuse-address",
    "socket-reuse-port",
    "strict-reconfig-check",
    "tls-max-version",
    "tls-min-version",
    "trusted-ca-file",
    "unsafe-no-fsync",
    "v2-deprecation",
    "version",
    "wal-dir",
];

/// etcd 3.6's flags.
const FLAGS_3_6: &[&str] = &[
    "advertise-client-urls",
    "auth-token",
    "auth-token-ttl",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "auto-tls",
    "backend-batch-interval",
    "backend-batch-limit",
    "backend-bbolt-freelist-type",
    "bcrypt-cost",
    "bootstrap-defrag-threshold-megabytes",
    "cert-file",
    "cipher-suites",
    "client-cert-allowed-hostname",
    "client-cert-auth",
    "client-cert-file",
    "client-crl-file",
    "client-key-file",
    "compact-hash-check-time",
    "compaction-batch-limit",
    "compaction-sleep-interval",
    "config-file",
    "corrupt-check-time",
    "cors",
    "data-dir",
    "discovery",
    "discovery-cacert",
    "discovery-cert",
    "discovery-dial-timeout",
    "discovery-endpoints",
    "discovery-fallback",
    "discovery-insecure-skip-tls-verify",
    "discovery-insecure-transport",
    "discovery-keepalive-time",
    "discovery-keepalive-timeout",
    "discovery-key",
    "discovery-password",
    "discovery-proxy",
    "discovery-request-timeout",
    "discovery-srv",
    "discovery-srv-name",
    "discovery-token",
    "discovery-user",
    "distributed-tracing-address",
    "distributed-tracing-instance-id",
    "distributed-tracing-sampling-rate",
    "distributed-tracing-service-name",
    "downgrade-check-time",
    "election-timeout",
    "enable-distributed-tracing",
    "enable-grpc-gateway",
    "enable-log-rotation",
    "enable-pprof",
    "experimental-bootstrap-defrag-threshold-megabytes",
    "experimental-compact-hash-check-enabled",
    "experimental-compact-hash-check-time",
    "experimental-compaction-batch-limit",
    "experimental-compaction-sleep-interval",
    "experimental-corrupt-check-time",
    "experimental-distributed-tracing-address",
    "experimental-distributed-tracing-instance-id",
    "experimental-distributed-tracing-sampling-rate",
    "experimental-distributed-tracing-service-name",
    "experimental-downgrade-check-time",
    "experimental-enable-distributed-tracing",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "experimental-initial-corrupt-check",
    "experimental-memory-mlock",
    "experimental-peer-skip-client-san-verification",
    "experimental-snapshot-catchup-entries",
    "experimental-stop-grpc-service-on-defrag",
    "experimental-txn-mode-write-with-shared-buffer",
    "experimental-warning-apply-duration",
    "experimental-warning-unary-request-duration",
    "experimental-watch-progress-notify-interval",
    "feature-gates",
    "force-new-cluster",
    "grpc-keepalive-interval",
    "grpc-keepalive-min-time",
    "grpc-keepalive-timeout",
    "heartbeat-interval",
    "host-whitelist",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "initial-election-tick-advance",
    "key-file",
    "listen-client-http-urls",
    "listen-client-urls",
    "listen-metrics-urls",
    "listen-peer-urls",
    "log-format",
    "log-level",
    "log-outputs",
    "log-rotation-config-json",
    "logger",
    "max-concurrent-streams",
    "max-learners",
    "max-request-bytes",
    "max-snapshots",
    "max-txn-ops",
    "max-wals",
    "memory-mlock",
    "metrics",
    "name",
    "peer-auto-tls",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "peer-cert-file",
    "peer-client-cert-auth",
    "peer-client-cert-file",
    "peer-client-key-file",
    "peer-crl-file",
    "peer-key-file",
    "peer-skip-client-san-verification",
    "peer-trusted-ca-file",
    "pre-vote",
    "quota-backend-bytes",
    "raft-read-timeout",
    "raft-write-timeout",
    "self-signed-cert-validity",
    "snapshot-catchup-entries",
    "snapshot-count",
    "socket-reuse-address",
    "socket-reuse-port",
    "strict-reconfig-check",
    "tls-max-version",
    "tls-min-version",
    "trusted-ca-file",
    "unsafe-no-fsync",
    "user",
    "v2-deprecation",
    "version",
    "wal-dir",
    "warning-apply-duration",
    "warning-unary-request-duration",
    "watch-progress-notify-interval",
];

/// etcd 3.7's flags.
const FLAGS_3_7: &[&str] = &[
    "advertise-client-urls",
    "auth-token",
    "auth-token-ttl",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "auto-tls",
    "backend-batch-interval",
    "backend-batch-limit",
    "backend-bbolt-freelist-type",
    "bcrypt-cost",
    "bootstrap-defrag-threshold-megabytes",
    "cert-file",
    "cipher-suites",
    "client-cert-allowed-hostname",
    "client-cert-auth",
    "client-cert-file",
    "client-crl-file",
    "client-key-file",
    "compact-hash-check-time",
    "compaction-batch-limit",
    "compaction-sleep-interval",
    "config-file",
    "corrupt-check-time",
    "cors",
    "data-dir",
    "discovery",
    "discovery-cacert",
    "discovery-cert",
    "discovery-dial-timeout",
    "discovery-endpoints",
    "discovery-fallback",
    "discovery-insecure-skip-tls-verify",
    "discovery-insecure-transport",
    "discovery-keepalive-time",
    "discovery-keepalive-timeout",
    "discovery-key",
    "discovery-password",
    "discovery-proxy",
    "discovery-request-timeout",
    "discovery-srv",
    "discovery-srv-name",
    "discovery-token",
    "discovery-user",
    "distributed-tracing-address",
    "distributed-tracing-instance-id",
    "distributed-tracing-sampling-rate",
    "distributed-tracing-service-name",
    "downgrade-check-time",
    "election-timeout",
    "enable-distributed-tracing",
    "enable-grpc-gateway",
    "enable-log-rotation",
    "enable-pprof",
    "feature-gates",
    "force-new-cluster",
    "grpc-keepalive-interval",
    "grpc-keepalive-min-time",
    "grpc-keepalive-timeout",
    "heartbeat-interval",
    "host-whitelist",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "initial-election-tick-advance",
    "key-file",
    "listen-client-http-urls",
    "listen-client-urls",
    "listen-metrics-urls",
    "listen-peer-urls",
    "log-format",
    "log-level",
    "log-outputs",
    "log-rotation-config-json",
    "logger",
    "max-concurrent-streams",
    "max-learners",
    "max-request-bytes",
    "max-snapshots",
    "max-txn-ops",
    "max-wals",
    "memory-mlock",
    "metrics",
    "name",
    "peer-auto-tls",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "peer-cert-file",
    "peer-client-cert-auth",
    "peer-client-cert-file",
    "peer-client-key-file",
    "peer-crl-file",
    "peer-key-file",
    "peer-skip-client-san-verification",
    "peer-trusted-ca-file",
    "pre-vote",
    "quota-backend-bytes",
    "raft-read-timeout",
    "raft-write-timeout",
    "self-signed-cert-validity",
    "snapshot-catchup-entries",
    "snapshot-count",
    "socket-reuse-address",
    "socket-reuse-port",
    "strict-reconfig-check",
    "tls-max-version",
    "tls-min-version",
    "trusted-ca-file",
    "unsafe-no-fsync",
    "user",
    "v2-deprecation",
    "version",
    "wal-dir",
    "warning-apply-duration",
    "warning-unary-request-duration",
    "watch-progress-notify-interval",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> EtcdVersion {
        s.parse().expect("a version")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn lost(pairs: &[(&str, &str)], from: &str, to: &str) -> Vec<String> {
        lost_settings(&env(pairs), v(from), v(to))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn variables_map_to_flags() {
        assert_eq!(flag_of("ETCD_ENABLE_V2").as_deref(), Some("enable-v2"));
        assert_eq!(flag_of("ETCD_"), None);
        assert_eq!(flag_of("ETCD_lower"), None);
        assert_eq!(flag_of("PATH"), None);
        assert_eq!(key_of("quota-backend-bytes"), "ETCD_QUOTA_BACKEND_BYTES");
    }

    #[test]
    fn the_v2_api_is_lost_on_3_6() {
        assert_eq!(
            lost(&[("ETCD_ENABLE_V2", "true")], "3.5.35", "3.6.16"),
            ["ETCD_ENABLE_V2: etcd 3.6.16 has no --enable-v2; remove it"]
        );
        // Turned off, it is off on 3.6 too: nothing lost.
        assert!(lost(&[("ETCD_ENABLE_V2", "false")], "3.5.35", "3.6.16").is_empty());
    }

    #[test]
    fn experimental_names_are_lost_on_3_7_with_their_new_names() {
        let pairs = [
            ("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", "5s"),
            ("ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", "true"),
        ];
        assert!(lost(&pairs, "3.5.35", "3.6.16").is_empty());
        assert_eq!(
            lost(&pairs, "3.6.16", "3.7.3"),
            [
                "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL: etcd 3.7.3 has no \
                 --experimental-watch-progress-notify-interval; use \
                 ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL instead",
                "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK: etcd 3.7.3 has no \
                 --experimental-initial-corrupt-check; use \
                 ETCD_FEATURE_GATES=InitialCorruptCheck=true instead",
            ]
        );
    }

    #[test]
    fn a_downgrade_names_the_old_name() {
        assert_eq!(
            lost(
                &[("ETCD_SNAPSHOT_CATCHUP_ENTRIES", "5000")],
                "3.6.16",
                "3.5.35"
            ),
            [
                "ETCD_SNAPSHOT_CATCHUP_ENTRIES: etcd 3.5.35 has no --snapshot-catchup-entries; \
              use ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES (its name before 3.6) instead"
            ]
        );
        let gates = lost(
            &[("ETCD_FEATURE_GATES", "InitialCorruptCheck=true")],
            "3.6.16",
            "3.5.35",
        );
        assert_eq!(gates.len(), 1);
        assert!(
            gates[0].contains("ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK=true"),
            "{gates:?}"
        );
    }

    #[test]
    fn a_feature_gate_the_older_minor_lacks_is_lost() {
        let pairs = [(
            "ETCD_FEATURE_GATES",
            "InitialCorruptCheck=true, PriorityRequest=true",
        )];
        assert_eq!(
            lost(&pairs, "3.7.3", "3.6.16"),
            ["ETCD_FEATURE_GATES: etcd 3.6.16 has no feature gate PriorityRequest; remove it"]
        );
        assert!(lost(&pairs, "3.6.16", "3.7.3").is_empty());
    }

    #[test]
    fn common_settings_and_patch_changes_lose_nothing() {
        let pairs = [
            ("ETCD_QUOTA_BACKEND_BYTES", "8589934592"),
            ("ETCD_SNAPSHOT_COUNT", "10000"),
            ("ETCD_HEARTBEAT_INTERVAL", "250"),
            ("ETCD_ELECTION_TIMEOUT", "2500"),
        ];
        let all = ["3.3.25", "3.4.23", "3.5.30", "3.5.35", "3.6.16", "3.7.3"];
        for from in all {
            for to in all {
                assert!(lost(&pairs, from, to).is_empty(), "{from} -> {to}");
            }
        }
        assert!(lost(&[("ETCD_ENABLE_V2", "true")], "3.5.30", "3.5.35").is_empty());
    }

    #[test]
    fn unknown_variables_are_named_but_not_blamed_on_the_change() {
        let pairs = [("ETCD_SNAPHOT_COUNT", "5"), ("ETCD_ENABLE_V2", "true")];
        assert!(lost(&pairs, "3.6.16", "3.7.3").is_empty());
        assert_eq!(
            not_understood(&env(&pairs), v("3.7.3")),
            ["ETCD_SNAPHOT_COUNT", "ETCD_ENABLE_V2"]
        );
        assert_eq!(
            not_understood(&env(&pairs), v("3.5.30")),
            ["ETCD_SNAPHOT_COUNT"]
        );
        // A minor the tables do not know: nothing is claimed.
        assert!(not_understood(&env(&pairs), v("3.8.0")).is_empty());
        assert!(lost(&[("ETCD_ENABLE_V2", "true")], "3.5.30", "3.8.0").is_empty());
    }

    #[test]
    fn removed_flags_of_3_4_and_3_5_have_their_replacements() {
        assert_eq!(
            lost(
                &[("ETCD_LOG_OUTPUT", "stderr"), ("ETCD_CA_FILE", "/ca")],
                "3.3.25",
                "3.4.23"
            ),
            [
                "ETCD_LOG_OUTPUT: etcd 3.4.23 has no --log-output; use ETCD_LOG_OUTPUTS instead",
                "ETCD_CA_FILE: etcd 3.4.23 has no --ca-file; use ETCD_TRUSTED_CA_FILE with \
                 ETCD_CLIENT_CERT_AUTH=true instead",
            ]
        );
        assert_eq!(
            lost(&[("ETCD_DEBUG", "true")], "3.4.23", "3.5.30"),
            [
                "ETCD_DEBUG: etcd 3.5.30 has no --debug; use ETCD_LOG_LEVEL (debug, info, warn, ...) instead"
            ]
        );
    }
}
