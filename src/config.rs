//! Command-line flags of `etcd-manager` (upstream's names and meanings, each
//! also from an `ETCD_MANAGER_*` variable) and their validation into a
//! [`Config`] before anything starts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Runs one member of an etcd cluster managed together with its peers.
#[derive(Debug, Clone, Parser)]
#[command(name = "etcd-manager", version, about, args_override_self = true)]
pub struct Args {
    /// Turn off TLS for the peer API between managers (otherwise mutual TLS from etcd-manager-ca in --pki-dir).
    #[arg(long, env = "ETCD_MANAGER_INSECURE")]
    pub insecure: bool,

    /// Turn off TLS between etcd members and for etcd clients (otherwise from etcd-peers-ca and etcd-clients-ca in --pki-dir).
    #[arg(long, env = "ETCD_MANAGER_ETCD_INSECURE")]
    pub etcd_insecure: bool,

    /// Folder with the CAs: etcd-manager-ca, etcd-peers-ca, etcd-clients-ca (.crt and .key each).
    #[arg(
        long,
        env = "ETCD_MANAGER_PKI_DIR",
        default_value = "/etc/kubernetes/pki/etcd-manager"
    )]
    pub pki_dir: PathBuf,

    /// Address this manager listens on for gossip and the peer API, and advertises to its peers.
    #[arg(long, env = "ETCD_MANAGER_ADDRESS", default_value = "127.0.0.1")]
    pub address: IpAddr,

    /// Address etcd binds its listeners to (peer and client ports come from the URLs).
    #[arg(long, env = "ETCD_MANAGER_ETCD_ADDRESS")]
    pub etcd_address: Option<String>,

    /// Name of the etcd cluster (e.g. main, events); managers only join peers with the same name.
    #[arg(long, env = "ETCD_MANAGER_CLUSTER_NAME", default_value = "etcd")]
    pub cluster_name: String,

    /// Where backups and the desired state live: file:///abs/path, s3://bucket/prefix, gs://bucket/prefix.
    #[arg(long, env = "ETCD_MANAGER_BACKUP_STORE")]
    pub backup_store: String,

    /// This node's persistent folder: identity, state and etcd data.
    #[arg(long, env = "ETCD_MANAGER_DATA_DIR")]
    pub data_dir: PathBuf,

    /// etcd client URLs to advertise, comma separated [default: https://127.0.0.1:4001, http:// with --etcd-insecure].
    #[arg(long, env = "ETCD_MANAGER_CLIENT_URLS")]
    pub client_urls: Option<String>,

    /// etcd client URLs used while the cluster is quarantined (clients cannot reach them) [default: https://127.0.0.1:8001, http:// with --etcd-insecure].
    #[arg(long, env = "ETCD_MANAGER_QUARANTINE_CLIENT_URLS")]
    pub quarantine_client_urls: Option<String>,

    /// etcd peer URLs to advertise, comma separated [default: https://127.0.0.1:2380, http:// with --etcd-insecure].
    #[arg(long, env = "ETCD_MANAGER_PEER_URLS")]
    pub peer_urls: Option<String>,

    /// How often the leader takes a backup.
    #[arg(long, env = "ETCD_MANAGER_BACKUP_INTERVAL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub backup_interval: Duration,

    /// Keep hourly backups this long (Go duration, or Nd / Ny); upstream's variable name.
    #[arg(long, env = "ETCD_MANAGER_HOURLY_BACKUPS_RETENTION", default_value = "7d", value_parser = backup::parse_retention)]
    pub hourly_backups_retention: Duration,

    /// Keep daily backups this long (Go duration, or Nd / Ny); upstream's variable name.
    #[arg(long, env = "ETCD_MANAGER_DAILY_BACKUPS_RETENTION", default_value = "90d", value_parser = backup::parse_retention)]
    pub daily_backups_retention: Duration,

    /// Replace an etcd member that has been unhealthy this long (upstream: 1m).
    #[arg(long, env = "ETCD_MANAGER_MEMBER_REPLACE_GRACE", default_value = "1m", value_parser = humantime::parse_duration)]
    pub member_replace_grace: Duration,

    /// UDP port for gossip, on --address.
    #[arg(long, env = "ETCD_MANAGER_GOSSIP_PORT", default_value_t = 8000)]
    pub gossip_port: u16,

    /// TCP port for the peer API, on --address.
    #[arg(long, env = "ETCD_MANAGER_PEER_API_PORT", default_value_t = 8000)]
    pub peer_api_port: u16,

    /// Gossip seeds, host:port, comma separated. Without seeds, --discovery-dir is used.
    #[arg(long, env = "ETCD_MANAGER_SEEDS", value_delimiter = ',')]
    pub seeds: Vec<String>,

    /// Shared folder in which managers on one machine find each other (upstream's walkthrough default).
    #[arg(
        long,
        env = "ETCD_MANAGER_DISCOVERY_DIR",
        default_value = "/tmp/discovery"
    )]
    pub discovery_dir: PathBuf,

    /// Authenticate and encrypt gossip with the keys in this file (one 32-byte key per line,
    /// base64 or hex; packets are sent with the first, accepted with any; reread on SIGHUP).
    #[arg(long, env = "ETCD_MANAGER_GOSSIP_KEY_FILE")]
    pub gossip_key_file: Option<PathBuf>,

    /// Find peers through the backup store: publish our address there and read the others'
    /// (works across machines without DNS or a seed list).
    #[arg(long, env = "ETCD_MANAGER_STORE_DISCOVERY")]
    pub store_discovery: bool,

    /// Extra folder(s) to look for etcd binaries in, before /opt/etcd-v<version>/.
    #[arg(long, env = "ETCD_MANAGER_ETCD_BIN_DIR", value_delimiter = ',')]
    pub etcd_bin_dir: Vec<PathBuf>,

    /// Address for /metrics, /healthz and /readyz (host:port); off when unset.
    #[arg(long, env = "ETCD_MANAGER_METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,

    /// Upstream's metrics port flag: the same as --metrics-address 0.0.0.0:<port>.
    #[arg(long, env = "ETCD_MANAGER_METRICS_PORT")]
    pub etcd_manager_metrics_port: Option<u16>,

    /// Time between controller passes while the cluster is steady (nothing
    /// to do or wait for). While waiting for something the passes come at
    /// least every 2s; after an action, or when a manager comes or goes, at once.
    #[arg(long, env = "ETCD_MANAGER_CONTROLLER_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub controller_interval: Duration,

    /// How long the leader lease lasts without renewal (at least 3s; the margin is 30 % of it).
    #[arg(long, env = "ETCD_MANAGER_LEASE_DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// Expected number of managers (sizes gossip failure detection).
    #[arg(long, env = "ETCD_MANAGER_CLUSTER_SIZE_HINT", default_value_t = 3)]
    pub cluster_size_hint: u32,

    /// Log format: text or json.
    #[arg(long, env = "ETCD_MANAGER_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Sidecar mode (upstream's etcd-backup): only take backups of an etcd cluster managed by
    /// something else, from the local member, and only while it is the raft leader.
    #[arg(long, env = "ETCD_MANAGER_BACKUP_ONLY")]
    pub backup_only: bool,

    /// With --backup-only: the client URL of the local etcd member.
    #[arg(long, env = "ETCD_MANAGER_ETCD_ENDPOINT")]
    pub etcd_endpoint: Option<String>,

    /// S3 endpoint (for S3-compatible stores and tests), e.g. http://127.0.0.1:5000.
    #[arg(long, env = "ETCD_MANAGER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region (default from AWS_REGION, else us-east-1).
    #[arg(long, env = "ETCD_MANAGER_S3_REGION")]
    pub s3_region: Option<String>,
}

/// A validated configuration: everything below has been checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster_name: String,
    pub backup_store: String,
    pub store_options: backup::StoreOptions,
    pub data_dir: PathBuf,
    pub gossip_addr: SocketAddr,
    pub peer_api_addr: SocketAddr,
    pub seeds: Vec<String>,
    pub discovery_dir: Option<PathBuf>,
    /// Mirror discovery records from the store into `discovery_dir`.
    pub store_discovery: bool,
    pub gossip_key_file: Option<PathBuf>,
    pub node: crate::peer::EtcdNodeConfig,
    pub etcd_listen_address: Option<String>,
    pub etcd_bin_dirs: Vec<PathBuf>,
    pub backup_interval: Duration,
    pub retention: backup::RetentionPolicy,
    pub member_replace_grace: Duration,
    pub controller_interval: Duration,
    pub lease: lock::LeaseConfig,
    pub metrics_address: Option<SocketAddr>,
    pub cluster_size_hint: u32,
    pub json_logs: bool,
    /// Sidecar mode: back up this etcd (not managed by us) while it is the raft leader.
    pub backup_only: Option<String>,
    /// Plain TCP for the peer API.
    pub insecure: bool,
    /// Plain http for etcd.
    pub etcd_insecure: bool,
    /// Where the CAs are.
    pub pki_dir: PathBuf,
}

/// What is wrong with the flags, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// Split a comma-separated URL list and check each is an http(s) URL with a port.
pub fn parse_urls(flag: &'static str, s: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = url::Url::parse(part).map_err(|e| {
            invalid(
                flag,
                format!("'{part}' is not a URL ({e}); write it like http://10.0.0.1:2380"),
            )
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(invalid(
                flag,
                format!("'{part}' must start with http:// or https://"),
            ));
        }
        if url.host_str().is_none() || url.port_or_known_default().is_none() {
            return Err(invalid(flag, format!("'{part}' needs a host and a port")));
        }
        out.push(part.trim_end_matches('/').to_string());
    }
    if out.is_empty() {
        return Err(invalid(flag, "at least one URL is needed"));
    }
    Ok(out)
}

/// etcd serves TLS unless `--etcd-insecure`: the URLs must say so.
fn check_scheme(
    flag: &'static str,
    urls: &[String],
    etcd_insecure: bool,
) -> Result<(), ConfigError> {
    let want = if etcd_insecure { "http://" } else { "https://" };
    match urls.iter().find(|u| !u.starts_with(want)) {
        None => Ok(()),
        Some(u) if etcd_insecure => Err(invalid(
            flag,
            format!(
                "'{u}' is https but --etcd-insecure turns etcd's TLS off; write http:// or drop --etcd-insecure"
            ),
        )),
        Some(u) => Err(invalid(
            flag,
            format!(
                "'{u}' is plain http but etcd serves TLS (certificates from --pki-dir); write https:// or pass --etcd-insecure"
            ),
        )),
    }
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let backup_only = match (&a.backup_only, &a.etcd_endpoint) {
            (false, None) => None,
            (true, Some(ep)) => Some(parse_urls("etcd-endpoint", ep)?.remove(0)),
            (true, None) => {
                return Err(invalid(
                    "etcd-endpoint",
                    "--backup-only needs the client URL of the local etcd, e.g. --etcd-endpoint=http://127.0.0.1:2379",
                ));
            }
            (false, Some(_)) => {
                return Err(invalid("etcd-endpoint", "only used with --backup-only"));
            }
        };
        if a.cluster_name.is_empty()
            || !a
                .cluster_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(invalid(
                "cluster-name",
                "use letters, digits, '-', '_' or '.'",
            ));
        }
        // Opening the store validates the URL without any IO.
        let store_options = backup::StoreOptions {
            s3_endpoint: a.s3_endpoint.clone(),
            s3_region: a.s3_region.clone(),
            ..Default::default()
        };
        if !a.data_dir.is_absolute() {
            return Err(invalid(
                "data-dir",
                format!("'{}' must be an absolute path", a.data_dir.display()),
            ));
        }
        let scheme = if a.etcd_insecure { "http" } else { "https" };
        let urls = |flag: &'static str, given: &Option<String>, port: u16| {
            let text = given
                .clone()
                .unwrap_or_else(|| format!("{scheme}://127.0.0.1:{port}"));
            let urls = parse_urls(flag, &text)?;
            check_scheme(flag, &urls, a.etcd_insecure)?;
            Ok::<_, ConfigError>(urls)
        };
        let client_urls = urls("client-urls", &a.client_urls, 4001)?;
        let quarantined_client_urls =
            urls("quarantine-client-urls", &a.quarantine_client_urls, 8001)?;
        let peer_urls = urls("peer-urls", &a.peer_urls, 2380)?;
        if let Some(ep) = &backup_only {
            check_scheme("etcd-endpoint", std::slice::from_ref(ep), a.etcd_insecure)?;
        }
        if client_urls
            .iter()
            .any(|u| quarantined_client_urls.contains(u))
        {
            return Err(invalid(
                "quarantine-client-urls",
                "must differ from --client-urls, or clients could write during a quarantine",
            ));
        }
        if a.backup_interval < Duration::from_secs(1) {
            return Err(invalid("backup-interval", "must be at least 1s"));
        }
        if a.daily_backups_retention < a.hourly_backups_retention {
            return Err(invalid(
                "daily-backups-retention",
                "must be at least --hourly-backups-retention",
            ));
        }
        if a.controller_interval < Duration::from_millis(100) {
            return Err(invalid("controller-interval", "must be at least 100ms"));
        }
        let lease = lock::LeaseConfig::with_duration(a.lease_duration);
        lease
            .validate()
            .map_err(|e| invalid("lease-duration", e.to_string()))?;
        if !matches!(a.log_format.as_str(), "text" | "json") {
            return Err(invalid("log-format", "use text or json"));
        }
        if a.cluster_size_hint == 0 {
            return Err(invalid("cluster-size-hint", "must be at least 1"));
        }
        let metrics_address = match (a.metrics_address, a.etcd_manager_metrics_port) {
            (Some(addr), _) => Some(addr),
            (None, Some(port)) => Some(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port)),
            (None, None) => None,
        };
        let discovery_dir = if a.store_discovery {
            Some(a.data_dir.join("discovery"))
        } else if a.seeds.is_empty() {
            Some(a.discovery_dir.clone())
        } else {
            None
        };
        Ok(Config {
            cluster_name: a.cluster_name,
            backup_store: a.backup_store,
            store_options,
            data_dir: a.data_dir,
            gossip_addr: SocketAddr::new(a.address, a.gossip_port),
            peer_api_addr: SocketAddr::new(a.address, a.peer_api_port),
            seeds: a.seeds,
            discovery_dir,
            store_discovery: a.store_discovery,
            gossip_key_file: a.gossip_key_file,
            node: crate::peer::EtcdNodeConfig {
                name: String::new(),
                peer_urls,
                client_urls,
                quarantined_client_urls,
            },
            etcd_listen_address: a.etcd_address,
            etcd_bin_dirs: a.etcd_bin_dir,
            backup_interval: a.backup_interval,
            retention: backup::RetentionPolicy {
                hourly: a.hourly_backups_retention,
                daily: a.daily_backups_retention,
            },
            member_replace_grace: a.member_replace_grace,
            controller_interval: a.controller_interval,
            lease,
            metrics_address,
            cluster_size_hint: a.cluster_size_hint,
            json_logs: a.log_format == "json",
            backup_only,
            insecure: a.insecure,
            etcd_insecure: a.etcd_insecure,
            pki_dir: a.pki_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags with TLS off (as upstream's walkthrough), plus `extra`.
    fn args(extra: &[&str]) -> Result<Config, String> {
        secure(&[&["--insecure", "--etcd-insecure"], extra].concat())
    }

    #[test]
    fn upstream_walkthrough_flags_parse() {
        let c = args(&[
            "--address",
            "127.0.0.2",
            "--etcd-address",
            "127.0.0.2",
            "--cluster-name=test",
            "--client-urls=http://127.0.0.2:4001",
            "--quarantine-client-urls=http://127.0.0.2:8001",
            "--peer-urls=http://127.0.0.2:2380",
        ])
        .expect("valid");
        assert_eq!(c.gossip_addr.to_string(), "127.0.0.2:8000");
        assert_eq!(c.node.peer_urls, ["http://127.0.0.2:2380"]);
        assert_eq!(c.discovery_dir, Some(PathBuf::from("/tmp/discovery")));
        assert_eq!(c.backup_interval, Duration::from_secs(15 * 60));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = args(&["--peer-urls=127.0.0.1:2380"]).expect_err("no scheme");
        assert!(e.contains("--peer-urls"), "{e}");
        let e = args(&["--data-dir=rel/dir"]).expect_err("relative");
        assert!(e.contains("--data-dir") && e.contains("absolute"), "{e}");
        let e = args(&["--quarantine-client-urls=http://127.0.0.1:4001"]).expect_err("same");
        assert!(e.contains("quarantine"), "{e}");
        let e = args(&["--backup-interval=soon"]).expect_err("duration");
        assert!(e.contains("backup-interval"), "{e}");
    }

    /// The required flags (TLS on by default), plus `extra`.
    fn secure(extra: &[&str]) -> Result<Config, String> {
        let mut v = vec![
            "etcd-manager",
            "--backup-store=file:///tmp/x",
            "--data-dir=/tmp/d",
        ];
        v.extend_from_slice(extra);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        Config::try_from(a).map_err(|e| e.to_string())
    }

    #[test]
    fn tls_is_the_default_and_url_schemes_must_agree_with_it() {
        let c = secure(&[]).expect("secure defaults");
        assert!(!c.insecure && !c.etcd_insecure);
        assert_eq!(c.pki_dir, PathBuf::from("/etc/kubernetes/pki/etcd-manager"));
        assert_eq!(c.node.client_urls, ["https://127.0.0.1:4001"]);
        assert_eq!(c.node.peer_urls, ["https://127.0.0.1:2380"]);
        assert_eq!(c.node.quarantined_client_urls, ["https://127.0.0.1:8001"]);
        let c = args(&[]).expect("insecure defaults");
        assert_eq!(c.node.client_urls, ["http://127.0.0.1:4001"]);

        let e = secure(&["--peer-urls=http://10.0.0.1:2380"]).expect_err("http with TLS");
        assert!(e.contains("--peer-urls") && e.contains("https://"), "{e}");
        assert!(e.contains("--etcd-insecure"), "{e}");
        let e = args(&["--client-urls=https://10.0.0.1:4001"]).expect_err("https without TLS");
        assert!(e.contains("--client-urls") && e.contains("http://"), "{e}");
        let e = secure(&["--backup-only", "--etcd-endpoint=http://127.0.0.1:2379"])
            .expect_err("sidecar scheme");
        assert!(e.contains("--etcd-endpoint"), "{e}");
    }

    #[test]
    fn seeds_turn_off_the_discovery_folder() {
        let c = args(&["--seeds=10.0.0.1:8000,10.0.0.2:8000"]).expect("valid");
        assert_eq!(c.seeds.len(), 2);
        assert_eq!(c.discovery_dir, None);
    }
}
