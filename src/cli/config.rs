//! Command-line flags of `etcd-manager` (upstream's names and meanings, each
//! also from an `ETCD_MANAGER_*` variable) and their validation into a
//! [`Config`] before anything starts.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::platform::hosts::expand_name;
pub use crate::platform::volumes::VolumeSource;

/// Runs one member of an etcd cluster managed together with its peers.
///
/// Every flag of upstream's etcd-manager is here with its name, default and
/// meaning (Go style `-flag=value` works too, and booleans take `--x`,
/// `--x=true` or `--x=false`); the flags upstream lacks are ours.
#[derive(Debug, Clone, Parser)]
#[command(name = "etcd-manager", version = crate::VERSION, about, args_override_self = true)]
pub struct Args {
    /// Turn off TLS for the peer API between managers (otherwise mutual TLS from etcd-manager-ca in --pki-dir).
    #[arg(long, env = "ETCD_MANAGER_INSECURE", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub insecure: bool,

    /// Turn off TLS between etcd members and for etcd clients (otherwise from etcd-peers-ca and etcd-clients-ca in --pki-dir); https:// in the URLs becomes http://, as upstream.
    #[arg(long, env = "ETCD_MANAGER_ETCD_INSECURE", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub etcd_insecure: bool,

    /// Running in a container with the host's root at /rootfs (kops' static pod): host paths (/mnt/disks, /etc/hosts) are read under /rootfs.
    #[arg(long, env = "ETCD_MANAGER_CONTAINERIZED", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub containerized: bool,

    /// Folder with the CAs: etcd-manager-ca, etcd-peers-ca, etcd-clients-ca (.crt and .key each).
    #[arg(
        long,
        env = "ETCD_MANAGER_PKI_DIR",
        default_value = "/etc/kubernetes/pki/etcd-manager"
    )]
    pub pki_dir: PathBuf,

    /// Address this manager listens on for gossip and the peer API, and advertises to its peers
    /// (__address__ in the URLs) [default: 127.0.0.1; with --volume-provider, the host's address].
    #[arg(long, env = "ETCD_MANAGER_ADDRESS")]
    pub address: Option<IpAddr>,

    /// Address etcd binds its listeners to (peer and client ports come from the URLs).
    #[arg(long, env = "ETCD_MANAGER_ETCD_ADDRESS", default_value = "0.0.0.0")]
    pub etcd_address: String,

    /// Name of the etcd cluster (e.g. etcd, etcd-events); managers only join peers with the same name.
    #[arg(long, env = "ETCD_MANAGER_CLUSTER_NAME", default_value = "etcd")]
    pub cluster_name: String,

    /// Where backups and the desired state live: file:///abs/path, s3://bucket/prefix, gs://bucket/prefix, memfs://name.
    #[arg(long, env = "ETCD_MANAGER_BACKUP_STORE")]
    pub backup_store: String,

    /// This node's persistent folder: identity, state and etcd data (with --volume-provider: the volume).
    #[arg(long, env = "ETCD_MANAGER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// etcd client URLs to advertise, comma separated; __address__ and __name__ are replaced by the address and the member's DNS name.
    #[arg(
        long,
        env = "ETCD_MANAGER_CLIENT_URLS",
        default_value = "https://__address__:4001"
    )]
    pub client_urls: String,

    /// etcd client URLs used while the cluster is quarantined (clients cannot reach them).
    #[arg(
        long,
        env = "ETCD_MANAGER_QUARANTINE_CLIENT_URLS",
        default_value = "https://__address__:8001"
    )]
    pub quarantine_client_urls: String,

    /// etcd peer URLs to advertise, comma separated.
    #[arg(
        long,
        env = "ETCD_MANAGER_PEER_URLS",
        default_value = "https://__address__:2380"
    )]
    pub peer_urls: String,

    /// etcd's dedicated metrics URLs (ETCD_LISTEN_METRICS_URLS), comma separated.
    #[arg(long, env = "ETCD_MANAGER_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,

    /// Suffix of member names in the URLs (__name__ becomes <name>.<suffix>); the names are kept in /etc/hosts.
    #[arg(long, env = "ETCD_MANAGER_DNS_SUFFIX", default_value = "")]
    pub dns_suffix: String,

    /// The hosts file that names the members with --dns-suffix (in kops' static pod, the container's own, as upstream writes it).
    #[arg(long, env = "ETCD_MANAGER_HOSTS_FILE", default_value = "/etc/hosts")]
    pub hosts_file: PathBuf,

    /// TCP port of the peer API (upstream: gRPC); gossip uses the same number on UDP unless --gossip-port.
    #[arg(long, env = "ETCD_MANAGER_GRPC_PORT", default_value_t = 8000)]
    pub grpc_port: u16,

    /// Where the volume with this member's data comes from: external (folders under /mnt/disks, bare metal)
    /// or aws (an EBS volume with every --volume-tag, attached, formatted when blank, mounted).
    /// gce, openstack, do, hetzner, linode, azure and scaleway are upstream's; they are refused at start.
    #[arg(long, env = "ETCD_MANAGER_VOLUME_PROVIDER")]
    pub volume_provider: Option<String>,

    /// A tag the volume must carry (repeatable; key or key=value). With external: the one folder name prefix.
    #[arg(long, env = "ETCD_MANAGER_VOLUME_TAG", action = clap::ArgAction::Append)]
    pub volume_tag: Vec<String>,

    /// The volume tag whose value names the member.
    #[arg(long, env = "ETCD_MANAGER_VOLUME_NAME_TAG", default_value = "")]
    pub volume_name_tag: String,

    /// Only addresses in this network (OpenStack only, as upstream).
    #[arg(long, env = "ETCD_MANAGER_NETWORK_CIDR", default_value = "")]
    pub network_cidr: String,

    /// A fixed cluster without etcd-manager-ctl: {"etcdVersion":"3.6.16","nodes":[{"id":"...","ip":["..."]}]}.
    #[arg(long, env = "ETCD_MANAGER_STATIC_CONFIG", default_value = "")]
    pub static_config: String,

    /// How often peers are looked for again (volume providers, seeds, discovery records).
    #[arg(long, env = "ETCD_MANAGER_DISCOVERY_POLL_INTERVAL", default_value = "60s", value_parser = backup::parse_retention)]
    pub discovery_poll_interval: Duration,

    /// KEY=VALUE lines read before anything else (upstream's --env-file); they count as environment variables.
    #[arg(long, env = "ETCD_MANAGER_ENV_FILE")]
    pub env_file: Option<PathBuf>,

    /// How often the leader takes a backup (a Go duration: 15m, 1h0m0s).
    #[arg(long, env = "ETCD_MANAGER_BACKUP_INTERVAL", default_value = "15m", value_parser = backup::parse_retention)]
    pub backup_interval: Duration,

    /// Keep hourly backups this long (Go duration, or Nd / Ny); upstream's variable name.
    #[arg(long, env = "ETCD_MANAGER_HOURLY_BACKUPS_RETENTION", default_value = "7d", value_parser = backup::parse_retention)]
    pub hourly_backups_retention: Duration,

    /// Keep daily backups this long (Go duration, or Nd / Ny); upstream's variable name and default (kops sets 90d).
    #[arg(long, env = "ETCD_MANAGER_DAILY_BACKUPS_RETENTION", default_value = "2y", value_parser = backup::parse_retention)]
    pub daily_backups_retention: Duration,

    /// Replace an etcd member that has been unhealthy this long (upstream: 1m).
    #[arg(long, env = "ETCD_MANAGER_MEMBER_REPLACE_GRACE", default_value = "1m", value_parser = humantime::parse_duration)]
    pub member_replace_grace: Duration,

    /// Rebuild a cluster that lost its quorum by itself once every lost
    /// voter has been gone this long (from the best survivor, or the newest
    /// backup when that is ahead); off by default: then only
    /// etcd-manager-ctl recover-quorum does it.
    #[arg(long, env = "ETCD_MANAGER_AUTO_RECOVER_QUORUM_LOSS", value_parser = humantime::parse_duration)]
    pub auto_recover_quorum_loss: Option<Duration>,

    /// Run a restore drill after every Nth periodic backup (0: never): a
    /// manager other than the leader, when one answers, downloads the
    /// backup, restores it into a scratch folder under its data dir, serves
    /// it with a throwaway etcd on loopback at the lowest CPU priority, and
    /// compares its HashKV with the cluster's at the backup's revision. The
    /// verdict is kept beside the backup (list-backups -o wide).
    #[arg(long, env = "ETCD_MANAGER_BACKUP_VERIFY_EVERY", default_value_t = 1)]
    pub backup_verify_every: u32,

    /// Continuous backup: while leading, upload every change made after
    /// the newest full backup in segments beside it, one per interval (or
    /// sooner when 8 MiB wait), so a restore can bring back the latest
    /// state or any revision since (restore-backup -to-revision/-to-time).
    /// 0 turns it off.
    #[arg(long, env = "ETCD_MANAGER_DELTA_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub delta_interval: Duration,

    /// Encrypt backups and continuous-backup segments with age to the
    /// public keys in this file (one age1… per line, as `age -R` reads).
    /// Upstream's tools cannot restore encrypted backups.
    #[arg(long, env = "ETCD_MANAGER_BACKUP_ENCRYPTION_RECIPIENTS_FILE")]
    pub backup_encryption_recipients_file: Option<PathBuf>,

    /// The age identity (AGE-SECRET-KEY-1…) that decrypts encrypted
    /// backups for restores and drills; read when needed, so it can be put
    /// in place for a restore without a restart.
    #[arg(long, env = "ETCD_MANAGER_BACKUP_ENCRYPTION_IDENTITY_FILE")]
    pub backup_encryption_identity_file: Option<PathBuf>,

    /// Defragment an etcd member once this fraction of its database file is
    /// free (fragmentation, from etcd's status; 0 turns it off). One member
    /// at a time, followers first, the raft leader last after moving raft
    /// leadership away, only while every member is healthy and nothing else
    /// is under way.
    #[arg(long, env = "ETCD_MANAGER_DEFRAG_FRAGMENTATION", default_value_t = 0.5, value_parser = parse_fraction)]
    pub defrag_fragmentation: f64,

    /// ... and at least this many bytes of it are free.
    #[arg(long, env = "ETCD_MANAGER_DEFRAG_MIN_FREE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub defrag_min_free_bytes: u64,

    /// Key prefixes deleted from a restored cluster before clients reach it
    /// (repeatable, or comma-separated in the variable), e.g.
    /// /registry/masterleases/ so kube-apiservers re-register. Off by default.
    #[arg(long = "restore-clear-prefix", env = "ETCD_MANAGER_RESTORE_CLEAR_PREFIXES", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub restore_clear_prefix: Vec<String>,

    /// UDP port for gossip, on --address [default: --grpc-port].
    #[arg(long, env = "ETCD_MANAGER_GOSSIP_PORT")]
    pub gossip_port: Option<u16>,

    /// TCP port for the peer API [default: --grpc-port].
    #[arg(long, env = "ETCD_MANAGER_PEER_API_PORT")]
    pub peer_api_port: Option<u16>,

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

    /// Send and accept gossip unauthenticated and in plain, although the etcd-manager CA's key is
    /// there to derive a gossip key from (the default without --gossip-key-file; --insecure also
    /// turns it off). Any host that reaches the gossip port can then join the membership.
    #[arg(long, env = "ETCD_MANAGER_INSECURE_GOSSIP", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub insecure_gossip: bool,

    /// Find peers through the backup store: publish our address there and read the others'
    /// (works across machines without DNS or a seed list).
    #[arg(long, env = "ETCD_MANAGER_STORE_DISCOVERY", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub store_discovery: bool,

    /// Extra folder(s) to look for etcd binaries in, before /opt/etcd-v<version>/.
    #[arg(long, env = "ETCD_MANAGER_ETCD_BIN_DIR", value_delimiter = ',')]
    pub etcd_bin_dir: Vec<PathBuf>,

    /// Address for /metrics, /healthz and /readyz (host:port); off when unset.
    #[arg(long, env = "ETCD_MANAGER_METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,

    /// Upstream's metrics port flag: the same as --metrics-address 0.0.0.0:<port>; 0 is off.
    #[arg(long, env = "ETCD_MANAGER_METRICS_PORT", default_value_t = 0)]
    pub etcd_manager_metrics_port: u16,

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
    #[arg(long, env = "ETCD_MANAGER_BACKUP_ONLY", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = go_bool)]
    pub backup_only: bool,

    /// With --backup-only: the client URL of the local etcd member.
    #[arg(long, env = "ETCD_MANAGER_ETCD_ENDPOINT")]
    pub etcd_endpoint: Option<String>,

    /// S3 endpoint (for S3-compatible stores and tests), e.g. http://127.0.0.1:5000 [env: S3_ENDPOINT, as kops sets it].
    #[arg(long, env = "ETCD_MANAGER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region [env: S3_REGION; else the bucket's own answer, then AWS_REGION, then us-east-1].
    #[arg(long, env = "ETCD_MANAGER_S3_REGION")]
    pub s3_region: Option<String>,

    /// S3 server-side encryption of every object written: AES256 (SSE-S3), aws:kms or aws:kms:dsse (SSE-KMS) [default: the bucket's default encryption].
    #[arg(long, env = "ETCD_MANAGER_S3_SERVER_SIDE_ENCRYPTION")]
    pub s3_server_side_encryption: Option<String>,

    /// The KMS key id, alias or ARN of SSE-KMS [default: the account's aws/s3 key].
    #[arg(long, env = "ETCD_MANAGER_S3_SSE_KMS_KEY_ID")]
    pub s3_sse_kms_key_id: Option<String>,

    #[command(flatten)]
    pub klog: KlogArgs,
}

/// The klog flags upstream registers (kops passes `--v`). `--v` sets our log
/// level; the others are accepted so command lines keep working, and have no
/// effect (we log to stderr, which go-runner or systemd collects).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KlogArgs {
    /// Log verbosity as klog's: 0-3 info, 4-7 debug, 8 and more trace (RUST_LOG overrides).
    #[arg(long = "v", default_value_t = 0)]
    pub v: u32,
    /// Accepted for klog compatibility (we always log to stderr).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub logtostderr: Option<bool>,
    /// Accepted for klog compatibility.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub alsologtostderr: Option<bool>,
    /// Accepted for klog compatibility (use go-runner's --log-file).
    #[arg(long = "log_file")]
    pub log_file: Option<String>,
    /// Accepted for klog compatibility.
    #[arg(long = "log_dir")]
    pub log_dir: Option<String>,
    /// Accepted for klog compatibility.
    #[arg(long = "log_file_max_size")]
    pub log_file_max_size: Option<u64>,
    /// Accepted for klog compatibility.
    #[arg(long)]
    pub vmodule: Option<String>,
    /// Accepted for klog compatibility.
    #[arg(long)]
    pub stderrthreshold: Option<String>,
    /// Accepted for klog compatibility.
    #[arg(long)]
    pub alsologtostderrthreshold: Option<String>,
    /// Accepted for klog compatibility.
    #[arg(long = "log_backtrace_at")]
    pub log_backtrace_at: Option<String>,
    /// Accepted for klog compatibility.
    #[arg(long = "add_dir_header", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub add_dir_header: Option<bool>,
    /// Accepted for klog compatibility.
    #[arg(long = "skip_headers", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub skip_headers: Option<bool>,
    /// Accepted for klog compatibility.
    #[arg(long = "skip_log_headers", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub skip_log_headers: Option<bool>,
    /// Accepted for klog compatibility.
    #[arg(long = "one_output", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub one_output: Option<bool>,
    /// Accepted for klog compatibility.
    #[arg(long = "legacy_stderr_threshold_behavior", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = go_bool)]
    pub legacy_stderr_threshold_behavior: Option<bool>,
}

impl KlogArgs {
    /// The tracing filter `--v` asks for (our crates only; libraries stay at info).
    pub fn filter(&self) -> String {
        let level = match self.v {
            0..=3 => return "info".to_string(),
            4..=7 => "debug",
            _ => "trace",
        };
        ["etcd_manager", "gossip", "lock", "backup", "etcd"]
            .iter()
            .fold("info".to_string(), |f, c| format!("{f},{c}={level}"))
    }
}

/// Upstream's `etcd-backup` (the binary kops' older manifests ran beside
/// etcd), when this binary runs under that name: backs up the etcd at
/// `--client-url` into `--backup-store` on a schedule.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "etcd-backup",
    version,
    about = "Backs up an etcd cluster managed by something else (upstream's etcd-backup)"
)]
pub struct EtcdBackupArgs {
    /// Name of the cluster.
    #[arg(long, default_value = "")]
    pub cluster_name: String,
    /// Backup store location.
    #[arg(long, default_value = "/backups")]
    pub backup_store: String,
    /// Directory for local state.
    #[arg(long, default_value = "/data")]
    pub data_dir: PathBuf,
    /// URL on which to connect to etcd.
    #[arg(long, default_value = "http://127.0.0.1:4001")]
    pub client_url: String,
    /// Backup frequency (a Go duration).
    #[arg(long, default_value = "15m", value_parser = backup::parse_retention)]
    pub interval: Duration,
    /// Path to the CA certificate.
    #[arg(long, default_value = "")]
    pub client_ca_file: String,
    /// Path to the client TLS certificate.
    #[arg(long, default_value = "")]
    pub client_cert_file: String,
    /// Path to the client TLS key.
    #[arg(long, default_value = "")]
    pub client_key_file: String,
    #[command(flatten)]
    pub klog: KlogArgs,
}

impl TryFrom<EtcdBackupArgs> for Config {
    type Error = ConfigError;

    /// etcd-backup's flags as our backup-only mode.
    fn try_from(b: EtcdBackupArgs) -> Result<Config, ConfigError> {
        if b.cluster_name.is_empty() {
            return Err(invalid("cluster-name", "is required"));
        }
        let tls_files = [&b.client_ca_file, &b.client_cert_file, &b.client_key_file];
        // As upstream: TLS only when all three files are given.
        let tls = tls_files
            .iter()
            .all(|f| !f.is_empty())
            .then(|| tls_files.map(PathBuf::from));
        let mut argv: Vec<String> = vec![
            "etcd-manager".into(),
            "--backup-only".into(),
            format!("--etcd-endpoint={}", b.client_url),
            format!("--cluster-name={}", b.cluster_name),
            format!("--backup-store={}", b.backup_store),
            format!("--data-dir={}", b.data_dir.display()),
            format!("--backup-interval={}s", b.interval.as_secs().max(1)),
            format!("--v={}", b.klog.v),
        ];
        if tls.is_none() {
            argv.push("--etcd-insecure".into());
        }
        let a = Args::try_parse_from(argv).map_err(|e| invalid("client-url", e.to_string()))?;
        let mut c = Config::try_from(a)?;
        c.backup_client_tls = tls;
        Ok(c)
    }
}

/// Go's `strconv.ParseBool`: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False.
pub fn go_bool(s: &str) -> Result<bool, ConfigError> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ConfigError::NotBool {
            text: s.to_string(),
        }),
    }
}

/// The volume providers upstream knows, and whether we support each.
pub const VOLUME_PROVIDERS: &[(&str, bool)] = &[
    ("external", true),
    ("aws", true),
    ("gce", false),
    ("openstack", false),
    ("do", false),
    ("hetzner", false),
    ("linode", false),
    ("azure", false),
    ("scaleway", false),
];

/// A validated configuration: everything below has been checked.
///
/// With a volume provider, the data dir and the address are only known once
/// the volume is found at start: [`Config::placed`] fills them in (and
/// expands `__address__` in the URLs). `__name__` is expanded by the node,
/// which knows its id.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster_name: String,
    pub backup_store: String,
    pub store_options: backup::StoreOptions,
    /// Where the data dir comes from.
    pub volume: VolumeSource,
    /// The data dir (empty until [`Config::placed`] with a volume provider).
    pub data_dir: PathBuf,
    /// `--address`, if given.
    pub address: Option<IpAddr>,
    pub gossip_addr: SocketAddr,
    pub peer_api_addr: SocketAddr,
    pub grpc_port: u16,
    gossip_port: Option<u16>,
    peer_api_port: Option<u16>,
    pub seeds: Vec<String>,
    pub discovery_dir: Option<PathBuf>,
    /// Mirror discovery records from the store into `discovery_dir`.
    pub store_discovery: bool,
    pub discovery_poll_interval: Duration,
    pub gossip_key_file: Option<PathBuf>,
    /// How gossip is keyed (see [`GossipAuth`]).
    pub gossip_auth: GossipAuth,
    /// The member's URLs; `__name__` still in them (see [`expand_name`]).
    pub node: crate::peer::EtcdNodeConfig,
    /// etcd's metrics URLs (`ETCD_LISTEN_METRICS_URLS`), `__name__` still in them.
    pub listen_metrics_urls: Vec<String>,
    /// `--dns-suffix` (without a leading dot).
    pub dns_suffix: String,
    /// `--hosts-file`: written only with a `--dns-suffix`.
    pub hosts_file: PathBuf,
    pub etcd_listen_address: Option<String>,
    pub etcd_bin_dirs: Vec<PathBuf>,
    pub backup_interval: Duration,
    pub retention: backup::RetentionPolicy,
    pub member_replace_grace: Duration,
    /// `--auto-recover-quorum-loss` (None: off).
    pub auto_recover_quorum_loss: Option<Duration>,
    /// `--backup-verify-every` (0: no restore drills).
    pub backup_verify_every: u32,
    /// `--delta-interval` (zero: no continuous backup).
    pub delta_interval: Duration,
    /// `--backup-encryption-recipients-file` (read) and `-identity-file`.
    pub encryption: backup::Encryption,
    pub defrag: crate::controller::DefragPolicy,
    /// `--restore-clear-prefix`: deleted from a restored cluster while it is
    /// still quarantined.
    pub restore_clear_prefixes: Vec<String>,
    pub controller_interval: Duration,
    pub lease: lock::LeaseConfig,
    pub metrics_address: Option<SocketAddr>,
    pub cluster_size_hint: u32,
    pub json_logs: bool,
    /// The tracing filter from `--v`.
    pub log_filter: String,
    /// Sidecar mode: back up this etcd (not managed by us) while it is the raft leader.
    pub backup_only: Option<String>,
    /// Sidecar mode's client TLS files (etcd-backup's --client-ca-file,
    /// --client-cert-file, --client-key-file), instead of certificates issued
    /// from --pki-dir.
    pub backup_client_tls: Option<[PathBuf; 3]>,
    /// Plain TCP for the peer API.
    pub insecure: bool,
    /// Plain http for etcd.
    pub etcd_insecure: bool,
    /// Where the CAs are.
    pub pki_dir: PathBuf,
    /// `/` or, with `--containerized`, `/rootfs`: where the host's files are.
    pub host_root: PathBuf,
    /// The fixed cluster of `--static-config`.
    pub static_config: Option<crate::platform::statics::StaticConfig>,
    /// `ETCD_*` settings from `--env-file` (they override ours for etcd, as
    /// the process environment's do).
    pub etcd_env_file: Vec<(String, String)>,
}

/// What is wrong with the flags, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    /// A boolean flag's value (clap names the flag).
    #[error("'{text}' is not a boolean; write true or false")]
    NotBool { text: String },
    /// A fraction flag's value (clap names the flag).
    #[error("'{text}' is not a number: {reason}; write a fraction such as 0.5")]
    NotNumber { text: String, reason: String },
    #[error("{value} is not between 0 and 1; write a fraction such as 0.5")]
    NotAFraction { value: f64 },
}

/// The encryption flags, read and checked (shared with etcd-manager-ctl).
pub fn encryption_flags(
    recipients_file: Option<&Path>,
    identity_file: Option<&Path>,
) -> Result<backup::Encryption, ConfigError> {
    let recipients = recipients_file
        .map(backup::Recipients::read)
        .transpose()
        .map_err(|e| invalid("backup-encryption-recipients-file", e.to_string()))?;
    if let Some(p) = identity_file {
        backup::Encryption::check_identity_file(p)
            .map_err(|e| invalid("backup-encryption-identity-file", e.to_string()))?;
    }
    let enc = backup::Encryption {
        recipients,
        identity_file: identity_file.map(Path::to_path_buf),
    };
    if let Some(r) = &enc.recipients
        && enc.decrypts_for(r) == Some(false)
    {
        tracing::warn!(
            "the backup identity file holds none of the recipients' keys: this process cannot read back what it encrypts"
        );
    }
    Ok(enc)
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

/// How gossip packets are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipAuth {
    /// Keys from `--gossip-key-file` (it wins over everything else).
    KeyFile(PathBuf),
    /// A key derived from the etcd-manager CA's private key and the cluster
    /// name (the default: every master of a kops cluster holds that key).
    DerivedFromCa,
    /// Plain, unauthenticated gossip; the flag that asked for it.
    Off(&'static str),
}

impl GossipAuth {
    /// The mode in a word, for `status`, logs and the metric's label.
    pub fn label(&self) -> &'static str {
        match self {
            GossipAuth::KeyFile(_) => "key_file",
            GossipAuth::DerivedFromCa => "ca_derived",
            GossipAuth::Off(_) => "off",
        }
    }

    /// The mode in words, for `status`.
    pub fn describe(&self) -> String {
        match self {
            GossipAuth::KeyFile(p) => {
                format!("authenticated and encrypted (keys from {})", p.display())
            }
            GossipAuth::DerivedFromCa => {
                "authenticated and encrypted (key derived from the etcd-manager CA)".into()
            }
            GossipAuth::Off(flag) => format!("UNAUTHENTICATED, in plain ({flag})"),
        }
    }
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

/// Replace `__address__` in each template.
fn expand_address(templates: &[String], address: &str) -> Vec<String> {
    templates
        .iter()
        .map(|t| t.replace("__address__", address))
        .collect()
}

/// Check URL templates by expanding them with sample values.
fn check_templates(
    flag: &'static str,
    text: &str,
    etcd_insecure: bool,
    may_be_empty: bool,
) -> Result<Vec<String>, ConfigError> {
    let mut templates: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if etcd_insecure {
        // Upstream: --etcd-insecure turns every https:// into http://.
        for t in &mut templates {
            if let Some(rest) = t.strip_prefix("https://") {
                *t = format!("http://{rest}");
            }
        }
    }
    if templates.is_empty() && may_be_empty {
        return Ok(templates);
    }
    let sample = expand_name(
        &expand_address(&templates, "127.0.0.1"),
        "member",
        "example.internal",
    );
    let urls = parse_urls(flag, &sample.join(","))?;
    check_scheme(flag, &urls, etcd_insecure)?;
    Ok(templates
        .into_iter()
        .map(|t| t.trim_end_matches('/').to_string())
        .collect())
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    /// Each flag group checked in turn (the first wrong flag is the error),
    /// then the configuration built from what they gave.
    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let backup_only = backup_only_endpoint(&a)?;
        check_cluster_name(&a.cluster_name)?;
        if a.backup_store.is_empty() {
            return Err(invalid(
                "backup-store",
                "is required, e.g. s3://bucket/cluster/backups/etcd/main or file:///var/backups/etcd",
            ));
        }
        let store_options = store_options(&a);
        let host_root = PathBuf::from(if a.containerized { "/rootfs" } else { "/" });
        let volume = volume_source(&a, &host_root, backup_only.is_some())?;
        check_network_cidr(&a)?;
        let static_config = if a.static_config.is_empty() {
            None
        } else {
            Some(
                crate::platform::statics::StaticConfig::parse(&a.static_config)
                    .map_err(|e| invalid("static-config", e.to_string()))?,
            )
        };
        let urls = MemberUrls::check(&a, backup_only.as_deref())?;
        check_timing(&a)?;
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
        let restore_clear_prefixes = restore_clear_prefixes(&a.restore_clear_prefix)?;
        let encryption = encryption_flags(
            a.backup_encryption_recipients_file.as_deref(),
            a.backup_encryption_identity_file.as_deref(),
        )?;
        let checked = Checked {
            backup_only,
            store_options,
            host_root,
            volume,
            static_config,
            urls,
            lease,
            restore_clear_prefixes,
            encryption,
        };
        Ok(checked.into_config(a))
    }
}

/// `--backup-only` and `--etcd-endpoint`, which go together: the local
/// etcd's client URL in backup-only mode.
fn backup_only_endpoint(a: &Args) -> Result<Option<String>, ConfigError> {
    match (&a.backup_only, &a.etcd_endpoint) {
        (false, None) => Ok(None),
        (true, Some(ep)) => Ok(Some(parse_urls("etcd-endpoint", ep)?.remove(0))),
        (true, None) => Err(invalid(
            "etcd-endpoint",
            "--backup-only needs the client URL of the local etcd, e.g. --etcd-endpoint=http://127.0.0.1:2379",
        )),
        (false, Some(_)) => Err(invalid("etcd-endpoint", "only used with --backup-only")),
    }
}

fn check_cluster_name(name: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if name.is_empty() || !name.chars().all(allowed) {
        return Err(invalid(
            "cluster-name",
            "use letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

fn store_options(a: &Args) -> backup::StoreOptions {
    s3_store_options(
        a.s3_endpoint.clone(),
        a.s3_region.clone(),
        a.s3_server_side_encryption.clone(),
        a.s3_sse_kms_key_id.clone(),
    )
}

/// The store's settings (the manager's and the ctl's): the flags, else (as
/// kops passes S3-compatible stores' settings) the `S3_*` variables.
pub fn s3_store_options(
    endpoint: Option<String>,
    region: Option<String>,
    server_side_encryption: Option<String>,
    sse_kms_key_id: Option<String>,
) -> backup::StoreOptions {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    backup::StoreOptions {
        s3_endpoint: endpoint.or_else(|| env("S3_ENDPOINT")),
        s3_region: region.or_else(|| env("S3_REGION")),
        s3_access_key_id: env("S3_ACCESS_KEY_ID"),
        s3_secret_access_key: env("S3_SECRET_ACCESS_KEY"),
        s3_server_side_encryption: server_side_encryption,
        s3_sse_kms_key_id: sse_kms_key_id,
    }
}

/// `--volume-provider`, `--volume-tag` and `--data-dir`: where the data dir
/// comes from.
fn volume_source(
    a: &Args,
    host_root: &Path,
    backup_only: bool,
) -> Result<VolumeSource, ConfigError> {
    match (a.volume_provider.as_deref(), &a.data_dir) {
        (None | Some(""), Some(dir)) => {
            if !dir.is_absolute() {
                return Err(invalid(
                    "data-dir",
                    format!("'{}' must be an absolute path", dir.display()),
                ));
            }
            Ok(VolumeSource::DataDir(dir.clone()))
        }
        (None | Some(""), None) if backup_only => Ok(VolumeSource::DataDir(PathBuf::from(
            "/tmp/etcd-manager-backup-only",
        ))),
        (None | Some(""), None) => Err(invalid(
            "data-dir",
            "is required without --volume-provider: the folder that keeps this member's identity and data",
        )),
        (Some("external"), _) => external_volume(&a.volume_tag, host_root),
        (Some("aws"), _) => aws_volume(a, host_root),
        (Some(p), _) if VOLUME_PROVIDERS.iter().any(|(n, _)| *n == p) => {
            Ok(VolumeSource::Unsupported(p.to_string()))
        }
        (Some(p), _) => Err(invalid(
            "volume-provider",
            format!(
                "unknown volume provider '{p}'; upstream's are {}",
                VOLUME_PROVIDERS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// `--volume-provider=external`: one tag, the folder name prefix under
/// `/mnt/disks`.
fn external_volume(tags: &[String], host_root: &Path) -> Result<VolumeSource, ConfigError> {
    let [prefix] = tags else {
        return Err(invalid(
            "volume-tag",
            format!(
                "--volume-provider=external takes exactly one --volume-tag (the folder name prefix under /mnt/disks), got {tags:?}"
            ),
        ));
    };
    if prefix.is_empty() || prefix.contains('/') {
        return Err(invalid(
            "volume-tag",
            format!("'{prefix}' must be a folder name prefix (no '/')"),
        ));
    }
    Ok(VolumeSource::External {
        disks: host_root.join("mnt/disks"),
        prefix: prefix.clone(),
    })
}

/// `--volume-provider=aws`: at least one tag, each `key` or `key=value`.
fn aws_volume(a: &Args, host_root: &Path) -> Result<VolumeSource, ConfigError> {
    if a.volume_tag.is_empty() {
        return Err(invalid(
            "volume-tag",
            "--volume-provider=aws needs at least one --volume-tag (key or key=value) that only this cluster's etcd volumes carry",
        ));
    }
    if let Some(t) = a
        .volume_tag
        .iter()
        .find(|t| t.is_empty() || t.starts_with('=') || t.len() > 256)
    {
        return Err(invalid(
            "volume-tag",
            format!("'{t}' is no tag: write key or key=value"),
        ));
    }
    Ok(VolumeSource::Aws {
        volumes: crate::platform::volumes::aws::AwsVolumes {
            cluster_name: a.cluster_name.clone(),
            tags: a.volume_tag.clone(),
            name_tag: a.volume_name_tag.clone(),
        },
        root: host_root.to_path_buf(),
    })
}

/// `--network-cidr`: only with openstack, as upstream, and a CIDR.
fn check_network_cidr(a: &Args) -> Result<(), ConfigError> {
    if a.network_cidr.is_empty() {
        return Ok(());
    }
    if a.volume_provider.as_deref() != Some("openstack") {
        return Err(invalid(
            "network-cidr",
            "is only supported with --volume-provider=openstack (as upstream)",
        ));
    }
    crate::platform::statics::parse_cidr(&a.network_cidr)
        .map_err(|e| invalid("network-cidr", e.to_string()))?;
    Ok(())
}

/// The member's URL templates, checked against the TLS setting.
struct MemberUrls {
    client: Vec<String>,
    quarantined_client: Vec<String>,
    peer: Vec<String>,
    listen_metrics: Vec<String>,
}

impl MemberUrls {
    /// `--client-urls`, `--quarantine-client-urls`, `--peer-urls`,
    /// `--listen-metrics-urls` and the sidecar's `--etcd-endpoint`: well
    /// formed, with the scheme TLS asks for, and quarantine apart.
    fn check(a: &Args, backup_only: Option<&str>) -> Result<MemberUrls, ConfigError> {
        let insecure = a.etcd_insecure;
        let client = check_templates("client-urls", &a.client_urls, insecure, false)?;
        let quarantined_client = check_templates(
            "quarantine-client-urls",
            &a.quarantine_client_urls,
            insecure,
            false,
        )?;
        let peer = check_templates("peer-urls", &a.peer_urls, insecure, false)?;
        let listen_metrics =
            check_templates("listen-metrics-urls", &a.listen_metrics_urls, false, true).or_else(
                |_| {
                    // Metrics URLs may be plain http with TLS on (etcd serves them apart).
                    check_templates("listen-metrics-urls", &a.listen_metrics_urls, true, true)
                },
            )?;
        if let Some(ep) = backup_only {
            check_scheme("etcd-endpoint", &[ep.to_string()], insecure)?;
        }
        let urls = MemberUrls {
            client,
            quarantined_client,
            peer,
            listen_metrics,
        };
        urls.check_quarantine_apart(a.address)?;
        Ok(urls)
    }

    /// Clients must not reach a quarantined etcd on its usual URLs.
    fn check_quarantine_apart(&self, address: Option<IpAddr>) -> Result<(), ConfigError> {
        let sample = address.unwrap_or(IpAddr::from([127, 0, 0, 1])).to_string();
        let quarantined_sample = expand_address(&self.quarantined_client, &sample);
        if expand_address(&self.client, &sample)
            .iter()
            .any(|u| quarantined_sample.contains(u))
        {
            return Err(invalid(
                "quarantine-client-urls",
                "must differ from --client-urls, or clients could write during a quarantine",
            ));
        }
        Ok(())
    }
}

/// The intervals and the retention horizons.
fn check_timing(a: &Args) -> Result<(), ConfigError> {
    if a.backup_interval < Duration::from_secs(1) {
        return Err(invalid("backup-interval", "must be at least 1s"));
    }
    if a.discovery_poll_interval < Duration::from_secs(1) {
        return Err(invalid("discovery-poll-interval", "must be at least 1s"));
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
    Ok(())
}

/// `--restore-clear-prefix`: trimmed, blanks dropped, each a key prefix
/// (never all of `/`).
fn restore_clear_prefixes(given: &[String]) -> Result<Vec<String>, ConfigError> {
    let prefixes: Vec<String> = given
        .iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    if let Some(p) = prefixes
        .iter()
        .find(|p| !p.starts_with('/') || p.len() < 2 || p.len() > 1024)
    {
        return Err(invalid(
            "restore-clear-prefix",
            format!(
                "'{p}' is no key prefix to clear: write a prefix of etcd keys such as /registry/masterleases/ (never all of /)"
            ),
        ));
    }
    Ok(prefixes)
}

/// What the checks made of the flags that needed more than a copy.
struct Checked {
    backup_only: Option<String>,
    store_options: backup::StoreOptions,
    host_root: PathBuf,
    volume: VolumeSource,
    static_config: Option<crate::platform::statics::StaticConfig>,
    urls: MemberUrls,
    lease: lock::LeaseConfig,
    restore_clear_prefixes: Vec<String>,
    encryption: backup::Encryption,
}

impl Checked {
    /// The configuration: the checked values and the flags as given; with
    /// `--data-dir`, already placed.
    fn into_config(self, a: Args) -> Config {
        let data_dir = match &self.volume {
            VolumeSource::DataDir(d) => d.clone(),
            _ => PathBuf::new(),
        };
        let discovery_dir = discovery_dir(&a, &data_dir, &self);
        let address = a.address.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let cfg = Config {
            cluster_name: a.cluster_name,
            backup_store: a.backup_store,
            store_options: self.store_options,
            volume: self.volume,
            data_dir,
            address: a.address,
            gossip_addr: SocketAddr::new(address, a.gossip_port.unwrap_or(a.grpc_port)),
            peer_api_addr: SocketAddr::new(address, a.peer_api_port.unwrap_or(a.grpc_port)),
            grpc_port: a.grpc_port,
            gossip_port: a.gossip_port,
            peer_api_port: a.peer_api_port,
            seeds: a.seeds,
            discovery_dir,
            store_discovery: a.store_discovery,
            discovery_poll_interval: a.discovery_poll_interval,
            gossip_auth: gossip_auth(a.gossip_key_file.as_ref(), a.insecure, a.insecure_gossip),
            gossip_key_file: a.gossip_key_file,
            node: crate::peer::EtcdNodeConfig {
                name: String::new(),
                peer_urls: self.urls.peer,
                client_urls: self.urls.client,
                quarantined_client_urls: self.urls.quarantined_client,
            },
            listen_metrics_urls: self.urls.listen_metrics,
            dns_suffix: a.dns_suffix.trim_start_matches('.').to_string(),
            hosts_file: a.hosts_file,
            etcd_listen_address: Some(a.etcd_address).filter(|s| !s.is_empty()),
            etcd_bin_dirs: a.etcd_bin_dir,
            backup_interval: a.backup_interval,
            retention: backup::RetentionPolicy {
                hourly: a.hourly_backups_retention,
                daily: a.daily_backups_retention,
            },
            member_replace_grace: a.member_replace_grace,
            auto_recover_quorum_loss: a.auto_recover_quorum_loss.filter(|d| !d.is_zero()),
            backup_verify_every: a.backup_verify_every,
            delta_interval: a.delta_interval,
            encryption: self.encryption,
            defrag: crate::controller::DefragPolicy {
                fragmentation: a.defrag_fragmentation,
                min_free_bytes: a.defrag_min_free_bytes,
            },
            restore_clear_prefixes: self.restore_clear_prefixes,
            controller_interval: a.controller_interval,
            lease: self.lease,
            metrics_address: metrics_address(a.metrics_address, a.etcd_manager_metrics_port),
            cluster_size_hint: a.cluster_size_hint,
            json_logs: a.log_format == "json",
            log_filter: a.klog.filter(),
            backup_only: self.backup_only,
            backup_client_tls: None,
            insecure: a.insecure,
            etcd_insecure: a.etcd_insecure,
            pki_dir: a.pki_dir,
            host_root: self.host_root,
            static_config: self.static_config,
            etcd_env_file: vec![],
        };
        match &cfg.volume {
            VolumeSource::DataDir(dir) => {
                let dir = dir.clone();
                cfg.placed(dir, address)
            }
            _ => cfg,
        }
    }
}

/// The local discovery folder: the store's mirror with `--store-discovery`,
/// else `--discovery-dir` unless seeds, a static config or a volume find
/// the peers.
fn discovery_dir(a: &Args, data_dir: &Path, checked: &Checked) -> Option<PathBuf> {
    if a.store_discovery {
        Some(data_dir.join("discovery"))
    } else if a.seeds.is_empty()
        && checked.static_config.is_none()
        && matches!(checked.volume, VolumeSource::DataDir(_))
    {
        Some(a.discovery_dir.clone())
    } else {
        None
    }
}

/// How gossip is keyed: a key file wins, then the flags that turn it off.
fn gossip_auth(key_file: Option<&PathBuf>, insecure: bool, insecure_gossip: bool) -> GossipAuth {
    match (key_file, insecure, insecure_gossip) {
        (Some(path), _, _) => GossipAuth::KeyFile(path.clone()),
        (None, true, _) => GossipAuth::Off("--insecure"),
        (None, false, true) => GossipAuth::Off("--insecure-gossip"),
        (None, false, false) => GossipAuth::DerivedFromCa,
    }
}

/// `--metrics-address`, else upstream's `--etcd-manager-metrics-port` (0: none).
fn metrics_address(address: Option<SocketAddr>, port: u16) -> Option<SocketAddr> {
    match (address, port) {
        (Some(addr), _) => Some(addr),
        (None, 0) => None,
        (None, port) => Some(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port)),
    }
}

impl Config {
    /// Take `--env-file`'s variables into account: `ETCD_*` for etcd, and the
    /// store's `S3_*` / `AWS_*` settings where neither a flag nor the process
    /// environment gave them.
    pub fn with_env_file(mut self, vars: &[(String, String)]) -> Config {
        let get = |k: &str| {
            vars.iter()
                .rev()
                .find(|(key, v)| key == k && !v.is_empty())
                .map(|(_, v)| v.clone())
        };
        self.etcd_env_file = vars
            .iter()
            .filter(|(k, _)| etcd::is_etcd_override(k))
            .cloned()
            .collect();
        let o = &mut self.store_options;
        o.s3_endpoint = o.s3_endpoint.take().or_else(|| get("S3_ENDPOINT"));
        o.s3_region = o
            .s3_region
            .take()
            .or_else(|| get("S3_REGION"))
            .or_else(|| get("AWS_REGION"));
        o.s3_access_key_id = o
            .s3_access_key_id
            .take()
            .or_else(|| get("S3_ACCESS_KEY_ID"))
            .or_else(|| get("AWS_ACCESS_KEY_ID"));
        o.s3_secret_access_key = o
            .s3_secret_access_key
            .take()
            .or_else(|| get("S3_SECRET_ACCESS_KEY"))
            .or_else(|| get("AWS_SECRET_ACCESS_KEY"));
        self
    }

    /// The data dir and address are known (from the flags, or from the
    /// volume found at start): set them and expand `__address__`.
    pub fn placed(mut self, data_dir: PathBuf, address: IpAddr) -> Config {
        let text = address.to_string();
        self.node.client_urls = expand_address(&self.node.client_urls, &text);
        self.node.quarantined_client_urls =
            expand_address(&self.node.quarantined_client_urls, &text);
        self.node.peer_urls = expand_address(&self.node.peer_urls, &text);
        self.listen_metrics_urls = expand_address(&self.listen_metrics_urls, &text);
        self.gossip_addr = SocketAddr::new(address, self.gossip_port.unwrap_or(self.grpc_port));
        self.peer_api_addr = SocketAddr::new(address, self.peer_api_port.unwrap_or(self.grpc_port));
        if self.store_discovery {
            self.discovery_dir = Some(data_dir.join("discovery"));
        }
        self.address = Some(address);
        self.data_dir = data_dir;
        self
    }

    /// The gossip seeds: `--seeds`, or the static config's nodes on the
    /// gRPC port (as upstream dials them).
    pub fn all_seeds(&self) -> Vec<String> {
        let mut seeds = self.seeds.clone();
        if let Some(sc) = &self.static_config {
            for n in &sc.nodes {
                for ip in &n.ip {
                    seeds.push(crate::platform::statics::host_port(
                        ip,
                        self.gossip_port.unwrap_or(self.grpc_port),
                    ));
                }
            }
        }
        seeds
    }
}

/// A fraction from 0 to 1 (`0.5`).
fn parse_fraction(s: &str) -> Result<f64, ConfigError> {
    let v: f64 =
        s.trim()
            .parse()
            .map_err(|e: std::num::ParseFloatError| ConfigError::NotNumber {
                text: s.to_string(),
                reason: e.to_string(),
            })?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::NotAFraction { value: v })
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
    fn backup_encryption_flags_are_read_and_checked_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (public, identity) = backup::crypt::generate_identity("now");
        let pub_file = dir.path().join("r.txt");
        let key_file = dir.path().join("k.txt");
        std::fs::write(&pub_file, format!("# ops team\n{public}\n")).expect("write");
        std::fs::write(&key_file, identity).expect("write");
        let flag = |name: &str, p: &std::path::Path| {
            format!("--backup-encryption-{name}-file={}", p.display())
        };
        let c = args(&[]).expect("defaults");
        assert!(c.encryption.recipients.is_none() && c.encryption.identity_file.is_none());
        let c =
            args(&[&flag("recipients", &pub_file), &flag("identity", &key_file)]).expect("flags");
        assert_eq!(
            c.encryption.recipients.expect("recipients").keys(),
            vec![public.clone()]
        );
        assert_eq!(
            c.encryption.identity_file.as_deref(),
            Some(key_file.as_path())
        );
        // An identity file that is not there yet is read when needed.
        let later = dir.path().join("later.txt");
        assert!(args(&[&flag("identity", &later)]).is_ok());
        // Wrong files are refused at start, naming the flag.
        let err = args(&[&flag("recipients", &key_file)]).expect_err("a private key as recipients");
        assert!(
            err.contains("backup-encryption-recipients-file") && err.contains("private key"),
            "{err}"
        );
        let err = args(&[&flag("recipients", &later)]).expect_err("a missing recipients file");
        assert!(err.contains("backup-encryption-recipients-file"), "{err}");
        let err = args(&[&flag("identity", &pub_file)]).expect_err("a public key as identity");
        assert!(
            err.contains("backup-encryption-identity-file") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn continuous_backup_and_s3_encryption_flags_reach_their_settings() {
        let c = args(&[]).expect("defaults");
        assert_eq!(c.delta_interval, Duration::from_secs(10));
        assert_eq!(c.store_options.s3_server_side_encryption, None);
        let c = args(&[
            "--delta-interval=0",
            "--s3-server-side-encryption=aws:kms",
            "--s3-sse-kms-key-id=alias/etcd",
        ])
        .expect("flags");
        assert!(c.delta_interval.is_zero());
        assert_eq!(
            c.store_options.s3_server_side_encryption.as_deref(),
            Some("aws:kms")
        );
        assert_eq!(
            c.store_options.s3_sse_kms_key_id.as_deref(),
            Some("alias/etcd")
        );
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
    fn value_parsers_say_what_to_write() {
        assert!(go_bool("True").expect("Go's spelling"));
        assert!(matches!(go_bool("yes"), Err(ConfigError::NotBool { .. })));
        assert_eq!(parse_fraction(" 0.25 ").expect("a fraction"), 0.25);
        assert!(matches!(
            parse_fraction("1.5"),
            Err(ConfigError::NotAFraction { value }) if value == 1.5
        ));
        let e = parse_fraction("half").expect_err("no number").to_string();
        assert!(
            e.contains("'half' is not a number") && e.contains("0.5"),
            "{e}"
        );
        let e = args(&["--defrag-fragmentation=2"]).expect_err("above 1");
        assert!(
            e.contains("defrag-fragmentation") && e.contains("between 0 and 1"),
            "{e}"
        );
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
        // As upstream: --etcd-insecure turns https:// into http://.
        let c = args(&["--client-urls=https://10.0.0.1:4001"]).expect("rewritten");
        assert_eq!(c.node.client_urls, ["http://10.0.0.1:4001"]);
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

    /// A kops manifest's arguments after `/go-runner`'s own: the manager's.
    fn kops_args(text: &str) -> Vec<String> {
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let at = lines
            .iter()
            .position(|l| l == "/ko-app/etcd-manager")
            .expect("the manager in the manifest");
        std::iter::once("etcd-manager".to_string())
            .chain(lines[at + 1..].iter().cloned())
            .collect()
    }

    fn parse_verbatim(argv: Vec<String>) -> Result<Config, String> {
        let cmd = <Args as clap::CommandFactory>::command();
        let argv = crate::cli::goflags::normalize(
            argv.into_iter().map(Into::into),
            &crate::cli::goflags::long_names(&cmd),
        );
        let a = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        Config::try_from(a).map_err(|e| e.to_string())
    }

    /// kops' AWS manifests, verbatim: every value lands where upstream puts it.
    #[test]
    fn kops_aws_manifests_parse_verbatim() {
        for (file, name, client, peer, quarantine, grpc, tag) in [
            (
                include_str!("../../tests/data/kops/aws-main.args"),
                "etcd",
                4001,
                2380,
                3994,
                3996,
                "k8s.io/etcd/main",
            ),
            (
                include_str!("../../tests/data/kops/aws-events.args"),
                "etcd-events",
                4002,
                2381,
                3995,
                3997,
                "k8s.io/etcd/events",
            ),
        ] {
            let argv = kops_args(file);
            let c = parse_verbatim(argv.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.cluster_name, name);
            assert!(c.backup_store.starts_with("memfs://clusters.example.com/"));
            assert_eq!(
                c.host_root,
                PathBuf::from("/rootfs"),
                "--containerized=true"
            );
            assert_eq!(c.dns_suffix, "internal.minimal-aws.example.com");
            assert_eq!(
                (c.grpc_port, c.peer_api_addr.port(), c.gossip_addr.port()),
                (grpc, grpc, grpc)
            );
            assert_eq!(
                c.volume,
                VolumeSource::Aws {
                    volumes: crate::platform::volumes::aws::AwsVolumes {
                        cluster_name: name.into(),
                        tags: vec![
                            tag.to_string(),
                            "k8s.io/role/control-plane=1".into(),
                            "kubernetes.io/cluster/minimal-aws.example.com=owned".into(),
                        ],
                        name_tag: tag.into(),
                    },
                    root: PathBuf::from("/rootfs"),
                }
            );
            assert!(!c.insecure && !c.etcd_insecure, "TLS on, as kops runs it");
            assert_eq!(c.etcd_listen_address.as_deref(), Some("0.0.0.0"));
            assert_eq!(
                c.log_filter,
                KlogArgs {
                    v: 6,
                    ..Default::default()
                }
                .filter()
            );
            assert!(c.log_filter.contains("etcd_manager=debug"));
            assert_eq!(
                c.retention.daily,
                Duration::from_secs(730 * 86_400),
                "upstream's 2 years"
            );
            // __name__ becomes the member's name with the DNS suffix.
            let n = &c.node;
            assert_eq!(
                expand_name(&n.client_urls, "etcd-a", &c.dns_suffix),
                [format!(
                    "https://etcd-a.internal.minimal-aws.example.com:{client}"
                )]
            );
            assert_eq!(
                expand_name(&n.peer_urls, "etcd-a", &c.dns_suffix),
                [format!(
                    "https://etcd-a.internal.minimal-aws.example.com:{peer}"
                )]
            );
            assert_eq!(
                expand_name(&n.quarantined_client_urls, "etcd-a", &c.dns_suffix),
                [format!(
                    "https://etcd-a.internal.minimal-aws.example.com:{quarantine}"
                )]
            );
            let a = Args::try_parse_from(crate::cli::goflags::normalize(
                argv.into_iter().map(Into::into),
                &crate::cli::goflags::long_names(&<Args as clap::CommandFactory>::command()),
            ))
            .expect("args");
            assert_eq!(a.volume_name_tag, tag);
            assert_eq!(
                a.volume_tag,
                [
                    tag,
                    "k8s.io/role/control-plane=1",
                    "kubernetes.io/cluster/minimal-aws.example.com=owned"
                ]
            );
        }
    }

    /// Go's forms of booleans and single-dash flags, and the klog flags.
    #[test]
    fn go_flag_forms_are_accepted() {
        let c = parse_verbatim(
            [
                "etcd-manager",
                "-backup-store=file:///tmp/x",
                "-data-dir=/tmp/d",
                "--insecure",
                "-etcd-insecure=true",
                "--containerized=false",
                "-v=2",
                "--logtostderr",
                "--alsologtostderr=false",
                "--log_file=/var/log/x",
                "--vmodule=x=2",
                "--etcd-manager-metrics-port=0",
                "--discovery-poll-interval=1m15s",
                "--backup-interval=1h0m0s",
            ]
            .map(String::from)
            .to_vec(),
        )
        .expect("valid");
        assert!(c.insecure && c.etcd_insecure);
        assert_eq!(c.host_root, PathBuf::from("/"));
        assert_eq!(c.metrics_address, None, "port 0 is off, as upstream");
        assert_eq!(c.discovery_poll_interval, Duration::from_secs(75));
        assert_eq!(c.backup_interval, Duration::from_secs(3600));
        assert_eq!(
            c.node.client_urls,
            ["http://127.0.0.1:4001"],
            "upstream's default, rewritten to http"
        );
        let e = parse_verbatim(
            [
                "etcd-manager",
                "--backup-store=file:///x",
                "--data-dir=/d",
                "--insecure=maybe",
            ]
            .map(String::from)
            .to_vec(),
        )
        .expect_err("not a boolean");
        assert!(e.contains("insecure"), "{e}");
        let e = parse_verbatim(
            ["etcd-manager", "--backup-store=file:///x"]
                .map(String::from)
                .to_vec(),
        )
        .expect_err("no data dir");
        assert!(
            e.contains("--data-dir") && e.contains("--volume-provider"),
            "{e}"
        );
        for (p, ok) in VOLUME_PROVIDERS {
            let r = parse_verbatim(
                [
                    "etcd-manager",
                    "--backup-store=file:///x",
                    &format!("--volume-provider={p}"),
                    "--volume-tag=c--main--",
                ]
                .map(String::from)
                .to_vec(),
            )
            .expect("every upstream provider parses");
            assert_eq!(matches!(r.volume, VolumeSource::Unsupported(_)), !ok, "{p}");
        }
        let e = parse_verbatim(
            [
                "etcd-manager",
                "--backup-store=file:///x",
                "--volume-provider=vsphere",
            ]
            .map(String::from)
            .to_vec(),
        )
        .expect_err("unknown");
        assert!(e.contains("unknown volume provider 'vsphere'"), "{e}");
        let e = parse_verbatim(
            [
                "etcd-manager",
                "--backup-store=file:///x",
                "--data-dir=/d",
                "--network-cidr=10.0.0.0/8",
            ]
            .map(String::from)
            .to_vec(),
        )
        .expect_err("openstack only");
        assert!(e.contains("openstack"), "{e}");
    }

    #[test]
    fn etcd_backup_keeps_its_flags() {
        let b = EtcdBackupArgs::try_parse_from([
            "etcd-backup",
            "--cluster-name=etcd",
            "--backup-store=s3://b/c/backups/etcd/main",
            "--client-url=https://127.0.0.1:4001",
            "--interval=1h0m0s",
            "--client-ca-file=/p/ca.crt",
            "--client-cert-file=/p/c.crt",
            "--client-key-file=/p/c.key",
            "--v=2",
        ])
        .expect("etcd-backup's flags");
        let c = Config::try_from(b).expect("valid");
        assert_eq!(c.backup_only.as_deref(), Some("https://127.0.0.1:4001"));
        assert_eq!(c.backup_interval, Duration::from_secs(3600));
        assert_eq!(c.cluster_name, "etcd");
        assert_eq!(c.data_dir, PathBuf::from("/data"), "upstream's default");
        assert_eq!(
            c.backup_client_tls,
            Some([
                PathBuf::from("/p/ca.crt"),
                PathBuf::from("/p/c.crt"),
                PathBuf::from("/p/c.key")
            ])
        );
        // Defaults as upstream's; no TLS without all three files.
        let d = Config::try_from(
            EtcdBackupArgs::try_parse_from(["etcd-backup", "--cluster-name=etcd"])
                .expect("defaults"),
        )
        .expect("valid");
        assert_eq!(d.backup_store, "/backups");
        assert_eq!(d.backup_only.as_deref(), Some("http://127.0.0.1:4001"));
        assert_eq!(d.backup_client_tls, None);
        assert!(d.etcd_insecure);
        assert!(
            Config::try_from(EtcdBackupArgs::try_parse_from(["etcd-backup"]).expect("parses"))
                .is_err()
        );
    }

    /// Every flag of upstream's etcd-manager and etcd-backup (the table in
    /// tests/data, from upstream's source) is ours with the same default,
    /// except where the reason is written here. A new upstream flag fails
    /// this test until it is handled.
    #[test]
    fn no_flag_drift_from_upstream() {
        use clap::CommandFactory;
        let table = include_str!("../../tests/data/upstream-flags.txt");
        // Defaults we keep different on purpose, and why.
        let differ: &[(&str, &str)] = &[
            (
                "address",
                "'' upstream means 127.0.0.1 without a volume provider: ours says so",
            ),
            (
                "backup-store",
                "required either way; ours has no default to print",
            ),
            (
                "cluster-name",
                "upstream requires it; ours defaults to kops' 'etcd'",
            ),
            (
                "data-dir",
                "'' upstream fails without a volume provider: ours is optional the same way",
            ),
            ("static-config", "the same empty string"),
            ("env-file", "no default either way"),
            ("volume-provider", "no default either way"),
            ("volume-tag", "an empty list either way"),
            (
                "logtostderr",
                "accepted and ignored: we always log to stderr",
            ),
            ("legacy_stderr_threshold_behavior", "accepted and ignored"),
            ("log_file_max_size", "accepted and ignored"),
            ("stderrthreshold", "accepted and ignored"),
            ("alsologtostderrthreshold", "accepted and ignored"),
            ("log_backtrace_at", "accepted and ignored"),
            (
                "backup-store@etcd-backup",
                "the same /backups, shown by clap without quotes",
            ),
        ];
        let mut section = "etcd-manager";
        let managers = Args::command();
        let backup = EtcdBackupArgs::command();
        let mut checked = 0;
        for line in table.lines() {
            if line.starts_with("# klog") {
                section = "klog";
                continue;
            }
            if line.starts_with("# etcd-backup") {
                section = "etcd-backup";
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            let (name, default) = (cols[0], cols.get(2).copied().unwrap_or(""));
            let cmd = if section == "etcd-backup" {
                &backup
            } else {
                &managers
            };
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(name))
                .unwrap_or_else(|| panic!("upstream's {section} flag --{name} is missing here"));
            let ours: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().to_string())
                .collect();
            let ours = ours.join(",");
            let theirs = default.trim_matches('"');
            let key = if section == "etcd-backup" {
                format!("{name}@etcd-backup")
            } else {
                name.to_string()
            };
            let excused = differ.iter().any(|(n, _)| *n == key || *n == name);
            let same = ours == theirs
                || (theirs == "false" && ours.is_empty())
                || (theirs == "[]" && ours.is_empty())
                || (theirs.is_empty() && ours.is_empty());
            assert!(
                same || excused,
                "--{name} ({section}): upstream's default is {default:?}, ours {ours:?}; match it or say why in `differ`"
            );
            checked += 1;
        }
        assert!(checked > 40, "only {checked} flags read from the table");
    }

    /// `--env-file` as upstream reads it: its variables set our flags unless
    /// the command line does, ETCD_* go to etcd, S3_*/AWS_* reach the store.
    #[test]
    fn env_file_variables_count_as_environment() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("env");
        std::fs::write(
            &file,
            "# kops-style settings\nETCD_MANAGER_DAILY_BACKUPS_RETENTION=90d\nETCD_MANAGER_BACKUP_INTERVAL=1h\n\
             ETCD_QUOTA_BACKEND_BYTES=8589934592\nS3_ENDPOINT=http://127.0.0.1:5000\nS3_ACCESS_KEY_ID=k\n\
             S3_SECRET_ACCESS_KEY=s\nAWS_REGION=eu-west-1\n",
        )
        .expect("write");
        let cmd = <Args as clap::CommandFactory>::command();
        let argv: Vec<std::ffi::OsString> = [
            "etcd-manager",
            "--backup-store=s3://b/p",
            "--data-dir=/d",
            "--insecure",
            "--etcd-insecure",
            "--backup-interval=30m",
            &format!("--env-file={}", file.display()),
        ]
        .iter()
        .map(Into::into)
        .collect();
        let vars = crate::cli::envfile::load(
            crate::cli::envfile::named_in(&argv)
                .as_deref()
                .expect("named"),
        )
        .expect("load");
        let argv = crate::cli::envfile::apply_to_argv(argv, &vars, &cmd);
        let a = Args::try_parse_from(argv).expect("parse");
        let c = Config::try_from(a).expect("valid").with_env_file(&vars);
        assert_eq!(
            c.retention.daily,
            Duration::from_secs(90 * 86_400),
            "from the file"
        );
        assert_eq!(
            c.backup_interval,
            Duration::from_secs(1800),
            "the command line wins"
        );
        assert_eq!(
            c.etcd_env_file,
            [(
                "ETCD_QUOTA_BACKEND_BYTES".to_string(),
                "8589934592".to_string()
            )]
        );
        let o = &c.store_options;
        assert_eq!(o.s3_endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(
            (
                o.s3_access_key_id.as_deref(),
                o.s3_secret_access_key.as_deref()
            ),
            (Some("k"), Some("s"))
        );
        assert_eq!(o.s3_region.as_deref(), Some("eu-west-1"));
        let e = crate::cli::envfile::load(&dir.path().join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("opening env file"), "{e}");
    }
}
