use std::io::Write;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::RESTORE_MARKER_FILE;
use crate::delta::{
    DeltaSegment, MAX_SEGMENT_INFLATED, MAX_SEGMENT_SIZE, parse_segment_file_name,
    segment_file_name,
};
use crate::error::{Error, RegionError, Result, SseError};
use crate::layout::{DELTA_DIR, LEASE_DIR, MANAGER_DIR, STORE_ID_FILE};
use crate::model::{
    BackupExtra, BackupFacts, BackupInfo, ClusterSpec, Command, CreatedMarker, DrillRecord,
};
use crate::{
    BACKUP_DATA_FILE, BACKUP_DRILL_FILE, BACKUP_EXTRA_FILE, BACKUP_META_FILE, COMMAND_FILE,
    CONTROL_DIR, CREATED_FILE, GZIP_LEVEL, SPEC_FILE,
};

/// How to reach S3 (everything else comes from the usual AWS_* environment).
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// e.g. http://127.0.0.1:5000 (an S3-compatible server); implies path-style requests.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// S3 server-side encryption of every object written: `AES256`
    /// (SSE-S3), `aws:kms` or `aws:kms:dsse` (SSE-KMS); None: the bucket's
    /// default (or `AWS_SERVER_SIDE_ENCRYPTION`).
    pub s3_server_side_encryption: Option<String>,
    /// The KMS key of SSE-KMS (None: the account's `aws/s3` key, or
    /// `AWS_SSE_KMS_KEY_ID`).
    pub s3_sse_kms_key_id: Option<String>,
}

/// The server-side encryption settings in `opts`, checked: the object_store
/// config pairs to set.
fn s3_encryption(
    opts: &StoreOptions,
) -> std::result::Result<Vec<(&'static str, String)>, SseError> {
    let mut out = vec![];
    let kms = match opts.s3_server_side_encryption.as_deref().map(str::trim) {
        None | Some("") => false,
        Some(v @ ("AES256" | "aws:kms" | "aws:kms:dsse")) => {
            out.push(("aws_server_side_encryption", v.to_string()));
            v != "AES256"
        }
        Some(other) => return Err(SseError::UnknownMode(other.to_string())),
    };
    if let Some(key) = opts
        .s3_sse_kms_key_id
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        if !kms {
            return Err(SseError::KeyWithoutKms);
        }
        if key.len() > 2048 || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(SseError::BadKeyId);
        }
        out.push(("aws_sse_kms_key_id", key.to_string()));
    }
    Ok(out)
}

/// A queued command and its folder name under `control/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCommand {
    pub name: String,
    pub command: Command,
    /// Set once a leader began executing this restore (our own file in the command's folder).
    pub restore_started: Option<RestoreProgress>,
}

/// Retries of a failed store request: two, within 30 s (object_store's
/// default is 10 within 3 minutes). A store that stays away then fails the
/// call, so the leader's pass, its health and its metrics move on instead of
/// hanging; the caller tries again after its own growing pause (the lease
/// step, the control read and each action back off from 1 s to 60 s), so a
/// store outage costs a few calls a minute, not several a second.
fn store_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    }
}

/// Client settings of the store client that downloads whole backups: a
/// backup of gigabytes over a slow link takes minutes, longer than
/// object_store's 30 s for a whole request (and its retries of the rest,
/// within the 30 s of [`store_retry`]), so that limit is lifted to hours;
/// a read that brings no byte for 30 s still fails (and is retried from
/// where it stopped).
fn bulk_client() -> [(object_store::ClientConfigKey, &'static str); 2] {
    [
        (object_store::ClientConfigKey::Timeout, "6h"),
        (object_store::ClientConfigKey::ReadTimeout, "30s"),
    ]
}

/// What [`BackupStore::read_control`] found: the files a leader acts on.
#[derive(Debug, Clone, Default)]
pub struct ControlSnapshot {
    pub spec: Option<ClusterSpec>,
    /// `control/etcd-cluster-created` exists (and parses).
    pub created: bool,
    /// Queued commands, sorted by name.
    pub commands: Vec<StoredCommand>,
    /// Names of our own files directly under `<base>/etcd-manager/`
    /// (`backup-now`, `allow-new-cluster`, `status.json`, ...).
    pub manager_files: std::collections::BTreeSet<String>,
    /// Control files that could not be used (too large, not the JSON they
    /// should be), each named with the reason and the fix. They are skipped:
    /// a malformed spec reads as no spec, a malformed created marker as a
    /// marker (a cluster may exist), a malformed command or restore marker
    /// as no such command.
    pub malformed: Vec<MalformedFile>,
}

/// A control file [`BackupStore::read_control`] skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedFile {
    /// The file, as a URL under the store.
    pub path: String,
    /// What is wrong with it and what to do.
    pub reason: String,
}

/// The bodies [`BackupStore::read_control`] read, by path and version, so
/// the next call reads only what changed.
#[derive(Debug, Clone, Default)]
pub struct ControlCache {
    files: std::collections::BTreeMap<String, (String, Bytes)>,
}

/// `control/<name>/etcd-manager-restore.json`: which new cluster a restore created, and by which leader.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreProgress {
    pub cluster_token: String,
    pub leader_epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub name: String,
    pub snapshot_size: u64,
    pub compressed_size: u64,
    pub snapshot_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedBackup {
    pub name: String,
    pub snapshot_size: u64,
    /// False for backups without our checksum file (written by upstream): only gzip's CRC was checked.
    pub verified_checksum: bool,
}

/// The store behind a `--backup-store` URL.
#[derive(Clone, Debug)]
pub struct BackupStore {
    store: Arc<dyn ObjectStore>,
    /// The client that moves whole backups (see [`bulk_client`]); the same
    /// as `store` for stores without HTTP requests.
    bulk: Arc<dyn ObjectStore>,
    base: Path,
    url: String,
    /// Client-side encryption: what this process encrypts to and decrypts with.
    crypt: crate::Encryption,
    /// Run compression and decompression on the calling task instead of
    /// tokio's blocking pool (see [`BackupStore::with_inline_cpu`]).
    inline_cpu: bool,
    /// Compare every download with the checksums in its side file (always,
    /// but for the simulation's knob test, see [`BackupStore::without_checksums`]).
    check_sums: bool,
}

/// CPU work (compression, decompression, decryption): on tokio's blocking
/// pool, or on the calling task with `inline`. A blocking task that
/// panicked or was cancelled fails as [`Error::Snapshot`].
async fn cpu<T: Send + 'static>(inline: bool, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    if inline {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Snapshot(std::io::Error::other(e)))
    }
}

const ACCEPTED: &str = "use file:///absolute/path, s3://bucket/prefix, gs://bucket/prefix, azureblob://container/prefix or memory://name (memfs://name)";

/// Parse `2019-05-07T18:28:01Z-000977` into its time and sequence.
pub fn parse_backup_name(name: &str) -> Option<(DateTime<Utc>, u32)> {
    let (time, seq) = name.rsplit_once('-')?;
    if seq.len() != 6 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc);
    Some((t, seq.parse().ok()?))
}

/// `<RFC3339 UTC second>-<6-digit seq>`.
pub fn format_backup_name(t: SystemTime, seq: u32) -> String {
    let t: DateTime<Utc> = t.into();
    format!("{}-{seq:06}", t.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// A backup name from outside (a peer request, a command, the command line)
/// must be exactly upstream's `<RFC 3339 UTC second>-<6 digits>`.
pub fn check_backup_name(name: &str) -> Result<()> {
    if name.len() > 64 || parse_backup_name(name).is_none() {
        return Err(Error::InvalidName {
            name: name.chars().take(80).collect(),
            reason: "a backup name looks like 2026-01-02T03:04:05Z-000001 (see list-backups)"
                .into(),
        });
    }
    Ok(())
}

/// Most bytes read of a control file, a backup's meta file or one of our
/// own small files before giving up on it.
pub const MAX_SMALL_FILE: u64 = 1 << 20;
/// Most bytes read of a backup's side file (its gzip member index grows
/// with the snapshot: about 40 bytes per MiB).
pub const MAX_SIDE_FILE: u64 = 16 << 20;

/// A malformed file becomes a report and None; other errors pass.
fn reported<T>(r: Result<Option<T>>, malformed: &mut Vec<MalformedFile>) -> Result<Option<T>> {
    match r {
        Err(Error::Malformed { path, reason }) => {
            malformed.push(MalformedFile { path, reason });
            Ok(None)
        }
        other => other,
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::InvalidName {
            name: name.into(),
            reason: "must be a single folder name".into(),
        });
    }
    Ok(())
}

/// `<base>/etcd-manager-deltas/<start>-<end>.seg`, relative to the store's base.
fn segment_rel(base: &str, start: i64, end: i64) -> String {
    format!("{base}/{DELTA_DIR}/{}", segment_file_name(start, end))
}

fn hex(d: impl AsRef<[u8]>) -> String {
    hex::encode(d)
}

/// An `s3://` store with no region from the flags or `S3_REGION`: ask S3
/// where the bucket lives (`x-amz-bucket-region` on its HeadBucket answer,
/// sent even with 301 or 403), as kops' tooling does, and fill it in. On AWS
/// the question goes to the bucket's own host; with an S3 endpoint, to
/// `<endpoint>/<bucket>`. A failure leaves the options as they were
/// (`AWS_REGION`, `AWS_DEFAULT_REGION`, then us-east-1) and says so once.
pub async fn resolve_s3_region(url: &str, opts: &mut StoreOptions) {
    let Ok(parsed) = url::Url::parse(url) else {
        return;
    };
    if parsed.scheme() != "s3" || opts.s3_region.is_some() {
        return;
    }
    let Some(bucket) = parsed.host_str().filter(|b| !b.is_empty()) else {
        return;
    };
    match bucket_region(opts.s3_endpoint.as_deref(), bucket).await {
        Ok(region) => {
            tracing::info!(bucket, region = %region, "found the bucket's region");
            opts.s3_region = Some(region);
        }
        Err(e) => {
            tracing::warn!(bucket, error = %e, "cannot find the bucket's region; set S3_REGION (or AWS_REGION) if requests fail")
        }
    }
}

/// The region S3 names for `bucket` (HeadBucket's `x-amz-bucket-region`),
/// asked of `endpoint` (path style) or of AWS. Ten seconds at most; the
/// answer must look like a region name.
pub async fn bucket_region(
    endpoint: Option<&str>,
    bucket: &str,
) -> std::result::Result<String, RegionError> {
    let target = match endpoint {
        Some(ep) => format!("{}/{bucket}", ep.trim_end_matches('/')),
        // S3's wildcard certificate covers one label: dotted names go path style.
        None if bucket.contains('.') => format!("https://s3.amazonaws.com/{bucket}"),
        None => format!("https://{bucket}.s3.amazonaws.com"),
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(RegionError::Client)?;
    let resp = match client.head(&target).send().await {
        Ok(resp) => resp,
        Err(source) => return Err(RegionError::Request { target, source }),
    };
    let status = resp.status();
    match resp.headers().get("x-amz-bucket-region") {
        Some(v) => {
            let region = v
                .to_str()
                .ok()
                .filter(|r| is_region_name(r))
                .ok_or_else(|| RegionError::NotARegion {
                    target: target.clone(),
                })?;
            Ok(region.to_string())
        }
        None if status == reqwest::StatusCode::NOT_FOUND => {
            Err(RegionError::NoSuchBucket { target })
        }
        None => Err(RegionError::NoRegion { target, status }),
    }
}

/// [`Error::InvalidUrl`] of `url`, for a reason.
fn bad_url(url: &str) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::InvalidUrl {
        url: url.to_string(),
        reason,
    }
}

/// The store's base path: the URL's path without its slashes.
fn url_prefix(parsed: &url::Url) -> Path {
    Path::from(parsed.path().trim_matches('/').to_string())
}

/// `eu-west-2`, `us-gov-west-1`, `cn-north-1`: lowercase letters, digits and
/// dashes, at most 32 characters.
fn is_region_name(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 32
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !r.starts_with('-')
}

impl BackupStore {
    /// Open a store URL. No IO except creating a missing local folder.
    pub fn open(url: &str, opts: &StoreOptions) -> Result<Self> {
        let bad = bad_url(url);
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("{e}; {ACCEPTED}")))?;
        match parsed.scheme() {
            "file" => Self::open_file(url, &parsed),
            "s3" => Self::open_s3(url, &parsed, opts),
            "gs" => Self::open_gcs(url, &parsed),
            "azureblob" => Self::open_azure(url, &parsed),
            "az" | "abfs" | "abfss" => Err(bad(
                "write Azure Blob Storage as kops does: azureblob://container/prefix".into(),
            )),
            "swift" => Err(bad(
                "OpenStack Swift is not supported; use s3:// (Swift's S3 API) or file://".into(),
            )),
            // kops' in-memory store of its tests, as memory://.
            "memory" | "memfs" => Ok(Self::new(
                Arc::new(object_store::memory::InMemory::new()),
                Path::default(),
                url.to_string(),
            )),
            other => Err(bad(format!("unknown scheme '{other}'; {ACCEPTED}"))),
        }
    }

    /// `file:///abs/path`: the folder, created if missing.
    fn open_file(url: &str, parsed: &url::Url) -> Result<Self> {
        let bad = bad_url(url);
        if parsed.host_str().is_some_and(|h| !h.is_empty()) {
            return Err(bad(format!(
                "'{}' is not an absolute path (write file:///abs/path, three slashes)",
                parsed.host_str().unwrap_or_default()
            )));
        }
        let dir = std::path::PathBuf::from(parsed.path());
        std::fs::create_dir_all(&dir)
            .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(|e| bad(format!("{e}")))?;
        Ok(Self::new(Arc::new(fs), Path::default(), url.to_string()))
    }

    /// `s3://bucket/prefix`: the region from the options, `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, else us-east-1; an S3-compatible endpoint, keys
    /// and server-side encryption from the options.
    fn open_s3(url: &str, parsed: &url::Url, opts: &StoreOptions) -> Result<Self> {
        let bad = bad_url(url);
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("no bucket".into()))?;
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        let region = opts
            .s3_region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        b = b.with_region(region);
        if let Some(ep) = &opts.s3_endpoint {
            b = b
                .with_endpoint(ep)
                .with_allow_http(ep.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(k) = &opts.s3_access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &opts.s3_secret_access_key {
            b = b.with_secret_access_key(k);
        }
        for (key, value) in s3_encryption(opts).map_err(|e| bad(e.to_string()))? {
            let key: object_store::aws::AmazonS3ConfigKey =
                key.parse().map_err(|e| bad(format!("{e}")))?;
            b = b.with_config(key, value);
        }
        let b = b.with_retry(store_retry());
        let s3 = b.clone().build().map_err(|e| bad(format!("{e}")))?;
        let bulk = bulk_client()
            .into_iter()
            .fold(b, |b, (k, v)| {
                b.with_config(object_store::aws::AmazonS3ConfigKey::Client(k), v)
            })
            .build()
            .map_err(|e| bad(format!("{e}")))?;
        Ok(Self::new(Arc::new(s3), url_prefix(parsed), url.to_string()).with_bulk(Arc::new(bulk)))
    }

    /// `gs://bucket/prefix`, credentials from the environment.
    fn open_gcs(url: &str, parsed: &url::Url) -> Result<Self> {
        let bad = bad_url(url);
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("no bucket".into()))?;
        let b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(bucket)
            .with_retry(store_retry());
        let no_credentials = |e: object_store::Error| {
            bad(format!(
                "{e} (set GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT)"
            ))
        };
        let gcs = b.clone().build().map_err(no_credentials)?;
        let bulk = bulk_client()
            .into_iter()
            .fold(b, |b, (k, v)| {
                b.with_config(object_store::gcp::GoogleConfigKey::Client(k), v)
            })
            .build()
            .map_err(no_credentials)?;
        Ok(Self::new(Arc::new(gcs), url_prefix(parsed), url.to_string()).with_bulk(Arc::new(bulk)))
    }

    /// kops' Azure store: azureblob://<container>/<prefix>, the account in
    /// AZURE_STORAGE_ACCOUNT (kops) or AZURE_STORAGE_ACCOUNT_NAME,
    /// credentials as object_store reads them (account key, service
    /// principal, managed identity), an endpoint in AZURE_STORAGE_ENDPOINT
    /// for Azure-compatible stores.
    fn open_azure(url: &str, parsed: &url::Url) -> Result<Self> {
        let bad = bad_url(url);
        let container = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("no container (write azureblob://container/prefix)".into()))?;
        let mut b =
            object_store::azure::MicrosoftAzureBuilder::from_env().with_container_name(container);
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if env("AZURE_STORAGE_ACCOUNT_NAME").is_none() {
            let account = env("AZURE_STORAGE_ACCOUNT").ok_or_else(|| {
                bad("no storage account: set AZURE_STORAGE_ACCOUNT (as kops does)".into())
            })?;
            b = b.with_account(account);
        }
        if ["AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"]
            .iter()
            .filter_map(|k| env(k))
            .any(|e| e.starts_with("http://"))
        {
            b = b.with_allow_http(true);
        }
        let b = b.with_retry(store_retry());
        let az = b.clone().build().map_err(|e| bad(format!("{e}")))?;
        let bulk = bulk_client()
            .into_iter()
            .fold(b, |b, (k, v)| {
                b.with_config(object_store::azure::AzureConfigKey::Client(k), v)
            })
            .build()
            .map_err(|e| bad(format!("{e}")))?;
        Ok(Self::new(Arc::new(az), url_prefix(parsed), url.to_string()).with_bulk(Arc::new(bulk)))
    }

    pub fn new(store: Arc<dyn ObjectStore>, base: Path, url: String) -> Self {
        BackupStore {
            bulk: store.clone(),
            store,
            base,
            url,
            crypt: crate::Encryption::default(),
            inline_cpu: false,
            check_sums: true,
        }
    }

    /// Do not compare downloads with the checksums in their side files.
    /// Nothing in production calls this: the simulation switches the check
    /// off to show that its invariants catch a restore of other data than
    /// the backup that was written (`tests/tests/sim.rs`).
    pub fn without_checksums(mut self) -> Self {
        self.check_sums = false;
        self
    }

    /// Compress and decompress on the calling task, not on tokio's blocking
    /// pool: slower for large backups, but a run on paused time (the
    /// simulation) then does the same thing in the same order every time
    /// (a blocking-pool task finishes at a moment real threads decide).
    pub fn with_inline_cpu(mut self) -> Self {
        self.inline_cpu = true;
        self
    }

    /// Download whole backups through `bulk` (a client of the same store
    /// with other timeouts, see [`bulk_client`]).
    pub fn with_bulk(mut self, bulk: Arc<dyn ObjectStore>) -> Self {
        self.bulk = bulk;
        self
    }

    /// Encrypt backups and segments written from now on to
    /// `crypt.recipients`, and decrypt with `crypt.identity_file`.
    pub fn with_encryption(mut self, crypt: crate::Encryption) -> Self {
        self.crypt = crypt;
        self
    }

    pub fn encryption(&self) -> &crate::Encryption {
        &self.crypt
    }

    /// The client whole backups are downloaded through (see [`Self::with_bulk`]).
    pub fn bulk_object_store(&self) -> Arc<dyn ObjectStore> {
        self.bulk.clone()
    }

    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> Path {
        let base = self.base.as_ref();
        if base.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{base}/{rel}"))
        }
    }

    /// Relative to the base.
    fn relative<'a>(&self, p: &'a Path) -> Option<&'a str> {
        let base = self.base.as_ref();
        let s = p.as_ref();
        if base.is_empty() {
            Some(s)
        } else {
            s.strip_prefix(base)?.strip_prefix('/')
        }
    }

    /// Where the lock crate keeps lease records: `<base>/etcd-manager/lease`.
    ///
    /// Upstream's ListBackups (pkg/backup/vfs.go) reads the whole tree under
    /// the base recursively and, for every file whose base name is
    /// `_etcd_backup.meta` at any depth (even under `control/`), lists the
    /// name of its parent folder; every other file is skipped. Its
    /// ListCommands (pkg/commands/vfs.go) reads the tree under `control/`
    /// recursively and parses every file named `_command.json` at any depth
    /// (a parse error fails the whole listing), sorting by the command's
    /// timestamp. So a folder outside `control/` holding no file named
    /// `_etcd_backup.meta` is invisible to upstream readers: our lease
    /// records live here, and must never use either of those two file names.
    /// Upstream's listing still pays for each object here (one recursive
    /// listing of the whole base), so keep the number of records bounded.
    pub fn lease_prefix(&self) -> Path {
        self.path(&format!("{MANAGER_DIR}/{LEASE_DIR}"))
    }

    /// Write one of our own files under `<base>/etcd-manager/` (status, discovery), replacing it.
    pub async fn write_manager_file(&self, name: &str, body: Vec<u8>) -> Result<()> {
        check_name(name)?;
        self.put(&format!("{MANAGER_DIR}/{name}"), body, PutMode::Overwrite)
            .await
    }

    /// The store's identity: `<base>/etcd-manager/store-id`, created once
    /// (create-only) with `fresh` by the first manager that asks and read by
    /// every other. Managers that read different ids do not share a store.
    pub async fn store_id(&self, fresh: String) -> Result<String> {
        let rel = &format!("{MANAGER_DIR}/{STORE_ID_FILE}");
        let read = |b: Bytes| {
            let id = String::from_utf8_lossy(&b).trim().to_string();
            if id.is_empty() || id.len() > 128 {
                return Err(Error::Malformed {
                    path: format!("{}/{rel}", self.url.trim_end_matches('/')),
                    reason: "not a store id; delete it (every manager writes or reads it again)"
                        .into(),
                });
            }
            Ok(id)
        };
        if let Some((_, b)) = self.read(rel).await? {
            return read(b);
        }
        match self
            .put(rel, fresh.clone().into_bytes(), PutMode::Create)
            .await
        {
            Ok(()) => Ok(fresh),
            Err(Error::Store {
                source:
                    object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
                ..
            }) => match self.read(rel).await? {
                Some((_, b)) => read(b),
                None => Err(Error::NotFound { path: rel.into() }),
            },
            Err(e) => Err(e),
        }
    }

    /// Delete one of our own files under `<base>/etcd-manager/` (absent is fine).
    pub async fn delete_manager_file(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let p = self.path(&format!("{MANAGER_DIR}/{name}"));
        match self.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store("delete", &p, e)),
        }
    }

    /// Names of our own files under `<base>/etcd-manager/` that start with
    /// `prefix` (one listing).
    pub async fn list_manager_files(&self, prefix: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list_under(Some(MANAGER_DIR))
            .await?
            .into_iter()
            .filter_map(|rel| {
                let name = rel.strip_prefix(MANAGER_DIR)?.strip_prefix('/')?;
                (!name.contains('/') && name.starts_with(prefix)).then(|| name.to_string())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Like [`BackupStore::list_manager_files`], with a version for each file
    /// (its e-tag, or its modification time and size where the store has no
    /// e-tags): a caller that keeps what it read reads again only files whose
    /// version changed. One listing.
    pub async fn list_manager_files_versioned(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String)>> {
        Ok(self
            .list_versions(MANAGER_DIR)
            .await?
            .into_iter()
            .filter_map(|(rel, version)| {
                let name = rel.strip_prefix(MANAGER_DIR)?.strip_prefix('/')?;
                (!name.contains('/') && name.starts_with(prefix))
                    .then(|| (name.to_string(), version))
            })
            .collect())
    }

    /// Read one of our own files under `<base>/etcd-manager/`; None when absent.
    pub async fn read_manager_file(&self, name: &str) -> Result<Option<Bytes>> {
        check_name(name)?;
        Ok(self
            .read(&format!("{MANAGER_DIR}/{name}"))
            .await?
            .map(|(_, b)| b))
    }

    /// Read a small object whole, at most [`MAX_SMALL_FILE`] bytes.
    async fn read(&self, rel: &str) -> Result<Option<(Path, Bytes)>> {
        self.read_capped(rel, MAX_SMALL_FILE).await
    }

    /// Read an object whole if it has at most `max` bytes; a larger one is
    /// [`Error::Malformed`] (named, with its size), and never read past `max`.
    async fn read_capped(&self, rel: &str, max: u64) -> Result<Option<(Path, Bytes)>> {
        let p = self.path(rel);
        let r = match self.store.get(&p).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store("read", &p, e)),
        };
        let too_large = |size: u64| Error::Malformed {
            path: self.display(&p),
            reason: format!(
                "{size} bytes or more, larger than the {max} this file may have; delete or rewrite it"
            ),
        };
        if r.meta.size > max {
            return Err(too_large(r.meta.size));
        }
        let mut stream = r.into_stream();
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::store("read", &p, e))?;
            if (body.len() + chunk.len()) as u64 > max {
                return Err(too_large((body.len() + chunk.len()) as u64));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some((p, body.freeze())))
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
        fix: &str,
    ) -> Result<Option<T>> {
        self.read_json_capped(rel, fix, MAX_SMALL_FILE).await
    }

    async fn read_json_capped<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
        fix: &str,
        max: u64,
    ) -> Result<Option<T>> {
        let Some((p, bytes)) = self.read_capped(rel, max).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Malformed {
                path: self.display(&p),
                reason: format!("{e}; {fix}"),
            })
    }

    fn display(&self, p: &Path) -> String {
        format!(
            "{}/{}",
            self.url.trim_end_matches('/'),
            self.relative(p).unwrap_or(p.as_ref())
        )
    }

    async fn put(&self, rel: &str, body: Vec<u8>, mode: PutMode) -> Result<()> {
        let p = self.path(rel);
        self.store
            .put_opts(&p, PutPayload::from(body), PutOptions::from(mode))
            .await
            .map(|_| ())
            .map_err(|e| Error::store("write", &p, e))
    }

    fn pretty<T: serde::Serialize>(v: &T) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(v).unwrap_or_default();
        b.push(b'\n');
        b
    }

    pub async fn read_spec(&self) -> Result<Option<ClusterSpec>> {
        self.read_json(
            &format!("{CONTROL_DIR}/{SPEC_FILE}"),
            "fix it with etcd-manager-ctl configure-cluster",
        )
        .await
    }

    pub async fn write_spec(&self, spec: &ClusterSpec) -> Result<()> {
        self.put(
            &format!("{CONTROL_DIR}/{SPEC_FILE}"),
            Self::pretty(spec),
            PutMode::Overwrite,
        )
        .await
    }

    pub async fn read_created(&self) -> Result<Option<CreatedMarker>> {
        self.read_json(
            &format!("{CONTROL_DIR}/{CREATED_FILE}"),
            "it should read {\"timestamp\":<unix nanos>}; rewrite it that way (do not delete it while a cluster exists)",
        )
        .await
    }

    /// Create-if-absent; an existing marker is kept.
    pub async fn write_created(&self, now: SystemTime) -> Result<()> {
        let nanos = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let body = serde_json::to_vec(&CreatedMarker { timestamp: nanos }).unwrap_or_default();
        match self
            .put(
                &format!("{CONTROL_DIR}/{CREATED_FILE}"),
                body,
                PutMode::Create,
            )
            .await
        {
            Err(Error::Store {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => Ok(()),
            other => other,
        }
    }

    pub async fn delete_created(&self) -> Result<()> {
        let p = self.path(&format!("{CONTROL_DIR}/{CREATED_FILE}"));
        match self.store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store("delete", &p, e)),
        }
    }

    /// Every object under `rel` (one listing call), as paths relative to the base.
    async fn list_under(&self, rel: Option<&str>) -> Result<Vec<String>> {
        let prefix = rel
            .map(|r| self.path(r))
            .unwrap_or_else(|| self.base.clone());
        let prefix_opt = if prefix.as_ref().is_empty() {
            None
        } else {
            Some(&prefix)
        };
        let metas: Vec<_> = self
            .store
            .list(prefix_opt)
            .try_collect()
            .await
            .map_err(|e| Error::store("list", &prefix, e))?;
        Ok(metas
            .iter()
            .filter_map(|m| self.relative(&m.location).map(str::to_string))
            .collect())
    }

    /// Everything a leader reads from the store before it plans: the spec,
    /// the created marker, the queued commands and the names of our own files.
    /// Two listings (`control/` and `etcd-manager/`); a file is read only when
    /// its version (e-tag, or modification time and size) differs from the one
    /// in `cache`, which this call updates. Errors name the file and the fix,
    /// as the single reads do.
    pub async fn read_control(&self, cache: &mut ControlCache) -> Result<ControlSnapshot> {
        let listed = self.list_versions(CONTROL_DIR).await?;
        let wanted = |rel: &str| {
            rel == format!("{CONTROL_DIR}/{SPEC_FILE}")
                || rel == format!("{CONTROL_DIR}/{CREATED_FILE}")
                || rel
                    .strip_prefix(&format!("{CONTROL_DIR}/"))
                    .and_then(|r| r.split_once('/'))
                    .is_some_and(|(_, f)| f == COMMAND_FILE || f == RESTORE_MARKER_FILE)
        };
        let created_rel = format!("{CONTROL_DIR}/{CREATED_FILE}");
        // A marker that exists, even one too large or not parsing, still says
        // a cluster was created here: never treat it as absent.
        let created_present = listed.iter().any(|(rel, _)| *rel == created_rel);
        let mut files = std::collections::BTreeMap::new();
        let mut malformed = vec![];
        for (rel, version) in listed.into_iter().filter(|(r, _)| wanted(r)) {
            let body = match cache.files.remove(&rel) {
                Some((v, body)) if v == version => Some(body),
                _ => match self.read(&rel).await {
                    Ok(found) => found.map(|(_, b)| b),
                    Err(Error::Malformed { path, reason }) => {
                        malformed.push(MalformedFile { path, reason });
                        None
                    }
                    Err(e) => return Err(e),
                },
            };
            if let Some(body) = body {
                files.insert(rel, (version, body));
            }
        }
        cache.files = files;
        let spec_rel = format!("{CONTROL_DIR}/{SPEC_FILE}");
        let spec_fix = "fix it with etcd-manager-ctl configure-cluster";
        let spec: Option<ClusterSpec> =
            reported(self.cached_json(cache, &spec_rel, spec_fix), &mut malformed)?;
        let created_fix = "it should read {\"timestamp\":<unix nanos>}; rewrite it that way (do not delete it while a cluster exists)";
        let _: Option<CreatedMarker> = reported(
            self.cached_json(cache, &created_rel, created_fix),
            &mut malformed,
        )?;
        let mut commands = vec![];
        let names: std::collections::BTreeSet<String> = cache
            .files
            .keys()
            .filter_map(|rel| {
                let (name, file) = rel
                    .strip_prefix(&format!("{CONTROL_DIR}/"))?
                    .split_once('/')?;
                (file == COMMAND_FILE).then(|| name.to_string())
            })
            .collect();
        for name in names {
            let rel = format!("{CONTROL_DIR}/{name}/{COMMAND_FILE}");
            let fix = "delete it with etcd-manager-ctl delete-command";
            let command: Option<Command> =
                reported(self.cached_json(cache, &rel, fix), &mut malformed)?;
            let Some(command) = command else {
                continue;
            };
            let marker = format!("{CONTROL_DIR}/{name}/{RESTORE_MARKER_FILE}");
            let fix = "delete this file to start the restore over";
            let restore_started = match self.cached_json(cache, &marker, fix) {
                Ok(m) => m,
                Err(Error::Malformed { path, reason }) => {
                    // The restore's progress is unknown: skip the command
                    // rather than restore again over a half-done restore.
                    malformed.push(MalformedFile { path, reason });
                    continue;
                }
                Err(e) => return Err(e),
            };
            commands.push(StoredCommand {
                name,
                command,
                restore_started,
            });
        }
        let manager_files = self
            .list_versions(MANAGER_DIR)
            .await?
            .into_iter()
            .filter_map(|(rel, _)| {
                let name = rel.strip_prefix(MANAGER_DIR)?.strip_prefix('/')?;
                (!name.contains('/')).then(|| name.to_string())
            })
            .collect();
        Ok(ControlSnapshot {
            spec,
            created: created_present,
            commands,
            manager_files,
            malformed,
        })
    }

    /// A body [`BackupStore::read_control`] keeps in `cache`, parsed.
    fn cached_json<T: serde::de::DeserializeOwned>(
        &self,
        cache: &ControlCache,
        rel: &str,
        fix: &str,
    ) -> Result<Option<T>> {
        let Some((_, body)) = cache.files.get(rel) else {
            return Ok(None);
        };
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| Error::Malformed {
                path: self.display(&self.path(rel)),
                reason: format!("{e}; {fix}"),
            })
    }

    /// Every object under `rel` (one listing), relative to the base, with its version.
    async fn list_versions(&self, rel: &str) -> Result<Vec<(String, String)>> {
        let prefix = self.path(rel);
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Error::store("list", &prefix, e))?;
        let mut out: Vec<(String, String)> = metas
            .into_iter()
            .filter_map(|m| {
                let rel = self.relative(&m.location)?.to_string();
                let version = m.e_tag.clone().unwrap_or_else(|| {
                    format!(
                        "{}-{}",
                        m.last_modified.timestamp_nanos_opt().unwrap_or(0),
                        m.size
                    )
                });
                Some((rel, version))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Queued commands, sorted by name (one listing, then one read per command).
    /// The queued commands, sorted by name; malformed ones are skipped (see
    /// [`BackupStore::list_commands_reporting`]).
    pub async fn list_commands(&self) -> Result<Vec<StoredCommand>> {
        Ok(self.list_commands_reporting().await?.0)
    }

    /// The queued commands, and the command files that could not be used
    /// (each named with the reason).
    pub async fn list_commands_reporting(
        &self,
    ) -> Result<(Vec<StoredCommand>, Vec<MalformedFile>)> {
        let files = self.list_under(Some(CONTROL_DIR)).await?;
        let in_folder = |name: &str, file: &str| {
            files
                .iter()
                .any(|f| *f == format!("{CONTROL_DIR}/{name}/{file}"))
        };
        let mut names: Vec<String> = files
            .iter()
            .filter_map(|rel| {
                let rest = rel.strip_prefix(&format!("{CONTROL_DIR}/"))?;
                let (name, file) = rest.split_once('/')?;
                (file == COMMAND_FILE).then(|| name.to_string())
            })
            .collect();
        names.sort();
        let mut out = vec![];
        let mut malformed = vec![];
        for name in names {
            let rel = format!("{CONTROL_DIR}/{name}/{COMMAND_FILE}");
            let read = self
                .read_json::<Command>(&rel, "delete it with etcd-manager-ctl delete-command")
                .await;
            let Some(command) = reported(read, &mut malformed)? else {
                continue;
            };
            let restore_started = if in_folder(&name, RESTORE_MARKER_FILE) {
                let read = self
                    .read_json(
                        &format!("{CONTROL_DIR}/{name}/{RESTORE_MARKER_FILE}"),
                        "delete this file to start the restore over",
                    )
                    .await;
                let before = malformed.len();
                let marker = reported(read, &mut malformed)?;
                if malformed.len() > before {
                    continue;
                }
                marker
            } else {
                None
            };
            out.push(StoredCommand {
                name,
                command,
                restore_started,
            });
        }
        Ok((out, malformed))
    }

    /// Record that a leader began executing restore command `name`.
    pub async fn mark_restore_started(&self, name: &str, progress: &RestoreProgress) -> Result<()> {
        check_name(name)?;
        self.put(
            &format!("{CONTROL_DIR}/{name}/{RESTORE_MARKER_FILE}"),
            Self::pretty(progress),
            PutMode::Overwrite,
        )
        .await
    }

    /// Queue a command under a fresh name (create-if-absent, next sequence on conflict).
    pub async fn add_command(&self, cmd: &Command, now: SystemTime) -> Result<String> {
        self.create_at_free_name(now, 0, Self::pretty(cmd), |name| {
            format!("{CONTROL_DIR}/{name}/{COMMAND_FILE}")
        })
        .await
    }

    /// Create `body` at `path(name)` for the first name of `now` (sequence
    /// from `first`) that is free: create-if-absent, the next on conflict;
    /// never overwrites another writer's object.
    async fn create_at_free_name(
        &self,
        now: SystemTime,
        first: u32,
        body: Vec<u8>,
        path: impl Fn(&str) -> String,
    ) -> Result<String> {
        for seq in first..1_000_000u32 {
            let name = format_backup_name(now, seq);
            match self.put(&path(&name), body.clone(), PutMode::Create).await {
                Ok(()) => return Ok(name),
                Err(Error::Store {
                    source: object_store::Error::AlreadyExists { .. },
                    ..
                }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::InvalidName {
            name: format_backup_name(now, 0),
            reason: "no free sequence number".into(),
        })
    }

    pub async fn delete_command(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let files = self
            .list_under(Some(&format!("{CONTROL_DIR}/{name}")))
            .await?;
        if files.is_empty() {
            return Err(Error::NotFound {
                path: format!("{CONTROL_DIR}/{name}"),
            });
        }
        for rel in files {
            let p = self.path(&rel);
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store("delete", &p, e)),
            }
        }
        Ok(())
    }

    /// Names of the folders under the base that hold a meta file, sorted; one listing call.
    pub async fn list_backups(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list_under(None)
            .await?
            .into_iter()
            .filter_map(|rel| {
                let (name, file) = rel.split_once('/')?;
                (file == BACKUP_META_FILE && name != CONTROL_DIR).then(|| name.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    pub async fn read_backup_info(&self, name: &str) -> Result<BackupInfo> {
        check_name(name)?;
        let rel = format!("{name}/{BACKUP_META_FILE}");
        self.read_json(&rel, "this backup cannot be used; choose another")
            .await?
            .ok_or(Error::NotFound { path: rel })
    }

    /// The last restore drill's record of backup `name`, if one ran.
    pub async fn read_drill(&self, name: &str) -> Result<Option<DrillRecord>> {
        check_name(name)?;
        self.read_json_capped(
            &format!("{name}/{BACKUP_DRILL_FILE}"),
            "run `etcd-manager-ctl verify-backup` to write it again",
            MAX_SMALL_FILE,
        )
        .await
    }

    /// Keep `record` beside backup `name` (replacing an older drill's).
    pub async fn write_drill(&self, name: &str, record: &DrillRecord) -> Result<()> {
        check_name(name)?;
        self.put(
            &format!("{name}/{BACKUP_DRILL_FILE}"),
            Self::pretty(record),
            PutMode::Overwrite,
        )
        .await
    }

    /// Upload `seg` to `<base>/etcd-manager-deltas/<start>-<end>.seg`
    /// (create-only: a segment is never replaced), returning its stored
    /// size. If the object is already there and holds the same segment, that
    /// is success (a retried upload); if it holds another, an error.
    pub async fn write_segment(&self, seg: &DeltaSegment) -> Result<u64> {
        self.write_segment_capped(seg, MAX_SEGMENT_SIZE, MAX_SEGMENT_INFLATED)
            .await
    }

    /// [`Self::write_segment`], refusing segments of more than `max` bytes
    /// stored or `max_inflated` inflated (which no reader would take).
    async fn write_segment_capped(
        &self,
        seg: &DeltaSegment,
        max: u64,
        max_inflated: u64,
    ) -> Result<u64> {
        check_name(&seg.base)?;
        let (start, end) = (seg.start_revision, seg.end_revision);
        let rel = segment_rel(&seg.base, start, end);
        let refused = |reason: String| Error::Malformed {
            path: self.display(&self.path(&rel)),
            reason,
        };
        seg.validate().map_err(|r| {
            refused(format!(
                "{r}; not uploaded (the segment writer built an invalid segment)"
            ))
        })?;
        let (body, inflated) = crate::delta::encode(seg, self.crypt.recipients.as_ref());
        let size = body.len() as u64;
        if size > max || inflated > max_inflated {
            return Err(refused(format!(
                "{size} bytes ({inflated} inflated), more than the {max} ({max_inflated} inflated) \
                 a segment may have; not uploaded: cut the range into smaller segments"
            )));
        }
        match self.put(&rel, body, PutMode::Create).await {
            Ok(()) => Ok(size),
            Err(Error::Store {
                source:
                    object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
                ..
            }) => {
                let (stored, stored_size) = self.read_segment_sized(&seg.base, start, end).await?;
                if stored != *seg {
                    return Err(refused(format!(
                        "another writer uploaded a different segment for revisions {start}..={end}; \
                         this one was not stored (segments are never replaced): \
                         more than one leader recorded this backup's changes"
                    )));
                }
                Ok(stored_size)
            }
            Err(e) => Err(e),
        }
    }

    /// The revision ranges of backup `base`'s segments, sorted by start
    /// (one listing). Other objects in the folder are skipped.
    pub async fn list_segments(&self, base: &str) -> Result<Vec<(i64, i64)>> {
        check_name(base)?;
        let dir = format!("{base}/{DELTA_DIR}");
        let mut ranges: Vec<(i64, i64)> = self
            .list_under(Some(&dir))
            .await?
            .iter()
            .filter_map(|rel| {
                let range = rel
                    .strip_prefix(&dir)
                    .and_then(|r| r.strip_prefix('/'))
                    .and_then(parse_segment_file_name);
                if range.is_none() {
                    tracing::trace!(object = %rel, "not a delta segment; skipped");
                }
                range
            })
            .collect();
        ranges.sort_unstable();
        Ok(ranges)
    }

    /// Read and check backup `base`'s segment of revisions `start..=end`.
    pub async fn read_segment(&self, base: &str, start: i64, end: i64) -> Result<DeltaSegment> {
        Ok(self.read_segment_sized(base, start, end).await?.0)
    }

    /// [`Self::read_segment`], with the stored size.
    async fn read_segment_sized(
        &self,
        base: &str,
        start: i64,
        end: i64,
    ) -> Result<(DeltaSegment, u64)> {
        check_name(base)?;
        let file = segment_file_name(start, end);
        if parse_segment_file_name(&file).is_none() {
            return Err(Error::InvalidName {
                name: format!("{start}..={end}"),
                reason: "a segment holds revisions start..=end with 1 <= start <= end".into(),
            });
        }
        let rel = segment_rel(base, start, end);
        let (_, bytes) = self
            .read_capped(&rel, MAX_SEGMENT_SIZE)
            .await?
            .ok_or_else(|| Error::NotFound {
                path: self.display(&self.path(&rel)),
            })?;
        let corrupt = |reason: String| Error::Corrupt {
            backup: base.into(),
            reason: format!("delta segment {DELTA_DIR}/{file}: {reason}"),
        };
        let body = crate::delta::check_segment(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let plain;
        let body = if crate::crypt::is_age(body) {
            // The plaintext is shorter than the ciphertext.
            plain = self.crypt.decrypt(
                &format!("backup {base}'s delta segment {DELTA_DIR}/{file}"),
                body,
                body.len() as u64,
            )?;
            &plain[..]
        } else {
            body
        };
        let seg = crate::delta::decode_body(body, MAX_SEGMENT_INFLATED)
            .map_err(|e| corrupt(e.to_string()))?;
        if (seg.base.as_str(), seg.start_revision, seg.end_revision) != (base, start, end) {
            return Err(corrupt(format!(
                "it holds revisions {}..={} of backup {}, not what its name says \
                 (it was renamed or copied); delete it",
                seg.start_revision,
                seg.end_revision,
                seg.base.chars().take(80).collect::<String>()
            )));
        }
        Ok((seg, bytes.len() as u64))
    }

    pub async fn read_backup_extra(&self, name: &str) -> Result<Option<BackupExtra>> {
        check_name(name)?;
        let rel = format!("{name}/{BACKUP_EXTRA_FILE}");
        let extra: Option<BackupExtra> = self
            .read_json_capped(&rel, "the backup may be incomplete", MAX_SIDE_FILE)
            .await?;
        if let Some(x) = &extra {
            x.validate().map_err(|reason| Error::Malformed {
                path: self.display(&self.path(&rel)),
                reason: format!("{reason}; this backup cannot be trusted, choose another"),
            })?;
        }
        Ok(extra)
    }

    /// Stream a snapshot into a new backup; the meta file is written last.
    pub async fn write_backup<S>(
        &self,
        snapshot: S,
        info: &BackupInfo,
        revision: Option<i64>,
        leader_epoch: Option<u64>,
        now: SystemTime,
    ) -> Result<BackupSummary>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        self.write_backup_hashed(
            snapshot,
            info,
            revision,
            leader_epoch,
            BackupFacts::default(),
            now,
        )
        .await
    }

    /// [`Self::write_backup`], with what else the writer knows of it
    /// (HashKV for restore drills, the cluster id) in the side file.
    pub async fn write_backup_hashed<S>(
        &self,
        mut snapshot: S,
        info: &BackupInfo,
        revision: Option<i64>,
        leader_epoch: Option<u64>,
        facts: BackupFacts,
        now: SystemTime,
    ) -> Result<BackupSummary>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let name = self.claim_backup_name(now).await?;
        let data_path = self.path(&format!("{name}/{BACKUP_DATA_FILE}"));
        let upload = self
            .store
            .put_multipart(&data_path)
            .await
            .map_err(|e| Error::store("write", &data_path, e))?;
        let mut sink = MemberSink {
            writer: WriteMultipart::new(upload),
            path: data_path.clone(),
            file_hash: Sha256::new(),
            file_size: 0,
            members: Vec::new(),
            stored: 0,
            encrypt: self.crypt.recipients.as_ref().map(|r| r.encrypting()),
        };
        let result = self.compress_into(&mut snapshot, &mut sink).await;
        let MemberSink {
            writer,
            file_hash,
            file_size,
            members,
            stored,
            ..
        } = sink;
        let (raw_hash, raw_size) = match result {
            Ok(raw) => raw,
            Err(e) => {
                let _ = writer.abort().await;
                let _ = self
                    .store
                    .delete(&self.path(&format!("{name}/{BACKUP_EXTRA_FILE}")))
                    .await;
                return Err(e);
            }
        };
        writer
            .finish()
            .await
            .map_err(|e| Error::store("write", &data_path, e))?;

        let extra = BackupExtra {
            format: 1,
            snapshot_sha256: hex(raw_hash.finalize()),
            snapshot_size: raw_size,
            compressed_sha256: hex(file_hash.finalize()),
            compressed_size: file_size,
            revision,
            leader_epoch,
            writer: concat!("etcd-manager-rs/", env!("CARGO_PKG_VERSION")).to_string(),
            members,
            kv_hash: facts.kv_hash,
            cluster_id: facts.cluster_id.map(|id| format!("{id:016x}")),
            replayed_from: facts.replayed_from,
            requested_at: facts.requested_at,
            encryption: self
                .crypt
                .recipients
                .as_ref()
                .map(|r| crate::BackupEncryption {
                    scheme: crate::crypt::SCHEME_AGE.into(),
                    recipients: r.keys(),
                }),
        };
        self.put(
            &format!("{name}/{BACKUP_EXTRA_FILE}"),
            Self::pretty(&extra),
            PutMode::Overwrite,
        )
        .await?;
        self.put(
            &format!("{name}/{BACKUP_META_FILE}"),
            Self::pretty(info),
            PutMode::Create,
        )
        .await?;
        tracing::info!(backup = %name, bytes = file_size, snapshot_bytes = raw_size, members = extra.members.len(), stored, encrypted = extra.encryption.is_some(), "backup written");
        Ok(BackupSummary {
            name,
            snapshot_size: raw_size,
            compressed_size: file_size,
            snapshot_sha256: extra.snapshot_sha256,
        })
    }

    /// Claim a fresh backup name for `now` (the first free sequence number)
    /// by creating its side file as a placeholder: never overwrite another
    /// writer's backup.
    async fn claim_backup_name(&self, now: SystemTime) -> Result<String> {
        let placeholder = br#"{"format":0,"state":"writing"}"#.to_vec();
        self.create_at_free_name(now, 1, placeholder, |name| {
            format!("{name}/{BACKUP_EXTRA_FILE}")
        })
        .await
    }

    /// Cut `snapshot` into blocks, compress them on `workers` threads at
    /// once, each into its own gzip member, and write the members in order
    /// into `sink` (its encryption's last chunk too). Returns the hash and
    /// size of the snapshot as read.
    async fn compress_into<S>(
        &self,
        snapshot: &mut S,
        sink: &mut MemberSink,
    ) -> Result<(Sha256, u64)>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    {
        let mut raw_hash = Sha256::new();
        let mut raw_size = 0u64;
        let workers = crate::gzip::workers();
        let inline = self.inline_cpu;
        let mut inflight = futures::stream::FuturesOrdered::new();
        let mut block: Vec<u8> = Vec::with_capacity(crate::gzip::BLOCK_SIZE);
        // Finished raw blocks and output buffers come back here for reuse.
        let mut pool: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut blocks = 0u64;
        loop {
            let (chunk, end) = match snapshot.next().await {
                Some(chunk) => (chunk.map_err(Error::Snapshot)?, false),
                None => (Bytes::new(), true),
            };
            raw_hash.update(&chunk);
            raw_size += chunk.len() as u64;
            let mut rest = &chunk[..];
            // The last block goes out at the end (also an empty one for an
            // empty snapshot, so the file is still valid gzip).
            while !rest.is_empty() || (end && (!block.is_empty() || blocks == 0)) {
                let take = (crate::gzip::BLOCK_SIZE - block.len()).min(rest.len());
                block.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if block.len() < crate::gzip::BLOCK_SIZE && !end {
                    break;
                }
                let (mut next, out) = pool.pop().unwrap_or_default();
                next.clear();
                if !end {
                    next.reserve(crate::gzip::BLOCK_SIZE);
                }
                let full = std::mem::replace(&mut block, next);
                blocks += 1;
                inflight.push_back(cpu(inline, move || {
                    let raw = full.len() as u64;
                    crate::gzip::compress_block_into(&full, out, GZIP_LEVEL)
                        .map(|(gz, s)| (gz, s, raw, full))
                }));
                while inflight.len() >= workers {
                    let done = inflight.next().await;
                    pool.push(sink.put(done).await?);
                }
                if end && block.is_empty() {
                    break;
                }
            }
            if end {
                break;
            }
        }
        while !inflight.is_empty() {
            let done = inflight.next().await;
            sink.put(done).await?;
        }
        drop(pool);
        sink.finish_encryption().await?;
        Ok((raw_hash, raw_size))
    }

    /// Download, verify and decompress a backup into `dest`. Nothing is left at
    /// `dest` unless every check passed.
    pub async fn download_backup(
        &self,
        name: &str,
        dest: &std::path::Path,
    ) -> Result<DownloadedBackup> {
        let progress = std::sync::atomic::AtomicU64::new(0);
        self.download_backup_counting(name, dest, &progress).await
    }

    /// [`BackupStore::download_backup`], keeping in `progress` how many
    /// bytes of the stored file have arrived so far (for a job's progress).
    pub async fn download_backup_counting(
        &self,
        name: &str,
        dest: &std::path::Path,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<DownloadedBackup> {
        check_name(name)?;
        let extra = self.read_backup_extra(name).await?;
        let encrypted = extra.as_ref().is_some_and(|x| x.encryption.is_some());
        if encrypted {
            // No key, no download: say so before fetching gigabytes.
            self.crypt.identities(&format!("backup {name}"))?;
        }
        let parts = DownloadParts::beside(dest);
        let result: Result<DownloadedBackup> = async {
            // What is stored: the gzip, or the age file of it.
            let stored = if encrypted { &parts.age } else { &parts.gz };
            let mut gz_size = self
                .fetch_stored(name, extra.as_ref(), stored, progress)
                .await?;
            if encrypted {
                let (from, to, crypt) = (parts.age.clone(), parts.gz.clone(), self.crypt.clone());
                let what = format!("backup {name}");
                // The plaintext is shorter than the ciphertext.
                gz_size = cpu(self.inline_cpu, move || {
                    crypt.decrypt_file(&what, &from, &to, gz_size)
                })
                .await??;
                let _ = std::fs::remove_file(&parts.age);
            }
            let (raw_sha, raw_size) = self
                .inflate_download(name, extra.as_ref(), &parts, gz_size, dest)
                .await?;
            if let Some(x) = extra.as_ref().filter(|_| self.check_sums)
                && (raw_sha != x.snapshot_sha256 || raw_size != x.snapshot_size)
            {
                return Err(Error::Corrupt {
                    backup: name.into(),
                    reason: format!(
                        "snapshot has sha256 {raw_sha} and {raw_size} bytes, expected {} and {}",
                        x.snapshot_sha256, x.snapshot_size
                    ),
                });
            }
            std::fs::rename(&parts.raw, dest).map_err(io_at(dest))?;
            Ok(DownloadedBackup {
                name: name.into(),
                snapshot_size: raw_size,
                verified_checksum: extra.is_some(),
            })
        }
        .await;
        parts.remove();
        result
    }

    /// Download backup `name`'s data file as stored into `to`, never more
    /// than its side file `extra` declares (for upstream's backups, than any
    /// snapshot may be), and compare it with the declared checksum. Returns
    /// its size.
    async fn fetch_stored(
        &self,
        name: &str,
        extra: Option<&BackupExtra>,
        to: &std::path::Path,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<u64> {
        let data_path = self.path(&format!("{name}/{BACKUP_DATA_FILE}"));
        let mut stream = self
            .bulk
            .get(&data_path)
            .await
            .map_err(|e| Error::store("read", &data_path, e))?
            .into_stream();
        let mut file = crate::private_file(to).map_err(io_at(to))?;
        let mut gz_hash = Sha256::new();
        let mut gz_size = 0u64;
        let gz_limit = extra.map_or(crate::model::MAX_SNAPSHOT_SIZE, |x| x.compressed_size);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::store("read", &data_path, e))?;
            gz_hash.update(&chunk);
            gz_size += chunk.len() as u64;
            if gz_size > gz_limit {
                return Err(Error::Corrupt {
                    backup: name.into(),
                    reason: format!(
                        "{BACKUP_DATA_FILE} is larger than the {gz_limit} bytes declared"
                    ),
                });
            }
            file.write_all(&chunk).map_err(io_at(to))?;
            progress.store(gz_size, std::sync::atomic::Ordering::Relaxed);
        }
        file.sync_all().map_err(io_at(to))?;
        drop(file);
        if let Some(x) = extra.filter(|_| self.check_sums) {
            let got = hex(gz_hash.finalize());
            if got != x.compressed_sha256 || gz_size != x.compressed_size {
                return Err(Error::Corrupt {
                    backup: name.into(),
                    reason: format!(
                        "{BACKUP_DATA_FILE} has sha256 {got} and {gz_size} bytes, expected {} and {}",
                        x.compressed_sha256, x.compressed_size
                    ),
                });
            }
        }
        Ok(gz_size)
    }

    /// Inflate the downloaded gzip (`parts.gz`, `gz_size` bytes) into
    /// `parts.raw`, no more than the disk of `dest` holds (leaving
    /// [`DISK_MARGIN`]): an upstream backup declares no size and may inflate
    /// to 64 GiB, and a full disk under a running member is an outage of its
    /// own. In parallel when our own member index agrees with the file.
    /// Returns the sha256 and size of the snapshot.
    async fn inflate_download(
        &self,
        name: &str,
        extra: Option<&BackupExtra>,
        parts: &DownloadParts,
        gz_size: u64,
        dest: &std::path::Path,
    ) -> Result<(String, u64)> {
        let room = free_bytes(dest).saturating_sub(DISK_MARGIN);
        let declared = extra.map(|x| x.snapshot_size);
        if let Some(size) = declared
            && size > room
        {
            return Err(Error::NoRoom {
                path: dest.to_path_buf(),
                needed: size,
                free: room,
            });
        }
        let raw_limit = declared
            .unwrap_or(crate::model::MAX_SNAPSHOT_SIZE)
            .min(room);
        let members = extra
            .map(|x| x.members.clone())
            .filter(|m| !m.is_empty() && m.iter().map(|[g, _]| *g).sum::<u64>() == gz_size)
            .unwrap_or_default();
        let (gz, raw) = (parts.gz.clone(), parts.raw.clone());
        cpu(self.inline_cpu, move || {
            if members.is_empty() {
                decompress(&gz, &raw, raw_limit)
            } else {
                decompress_members(&gz, &raw, &members, crate::gzip::workers())
            }
        })
        .await?
        .map_err(|e| {
            // Cut short by the room on the disk, not by the backup.
            let cut_by_disk = declared.is_none()
                && raw_limit == room
                && room < crate::model::MAX_SNAPSHOT_SIZE
                && e.kind() == std::io::ErrorKind::FileTooLarge;
            if cut_by_disk {
                Error::NoRoom {
                    path: dest.to_path_buf(),
                    needed: room.saturating_add(1),
                    free: room,
                }
            } else {
                Error::Corrupt {
                    backup: name.into(),
                    reason: format!("cannot decompress: {e}"),
                }
            }
        })
    }

    /// Delete the backups `policy` does not keep, with one listing in all.
    /// Returns the names deleted.
    pub async fn apply_retention(
        &self,
        now: SystemTime,
        policy: &crate::RetentionPolicy,
    ) -> Result<Vec<String>> {
        let files = self.list_under(None).await?;
        let names: Vec<String> = {
            let mut v: Vec<String> = files
                .iter()
                .filter_map(|rel| {
                    let (name, file) = rel.split_once('/')?;
                    (file == BACKUP_META_FILE && name != CONTROL_DIR).then(|| name.to_string())
                })
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let doomed = crate::select_for_deletion(&names, now.into(), policy);
        for name in &doomed {
            // The meta first, so a half-deleted backup is invisible rather than broken.
            let mut paths: Vec<&String> = files
                .iter()
                .filter(|f| f.starts_with(&format!("{name}/")))
                .collect();
            paths.sort_by_key(|f| !f.ends_with(BACKUP_META_FILE));
            for rel in paths {
                let p = self.path(rel);
                match self.store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::store("delete", &p, e)),
                }
            }
            tracing::info!(backup = %name, "backup deleted by retention");
        }
        Ok(doomed)
    }

    pub async fn delete_backup(&self, name: &str) -> Result<()> {
        check_name(name)?;
        // The meta first, so a half-deleted backup is invisible rather than broken.
        let meta = self.path(&format!("{name}/{BACKUP_META_FILE}"));
        match self.store.delete(&meta).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::store("delete", &meta, e)),
        }
        for rel in self.list_under(Some(name)).await? {
            let p = self.path(&rel);
            match self.store.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store("delete", &p, e)),
            }
        }
        Ok(())
    }
}

/// Where compressed members go, in order: the multipart upload, the hash and
/// the member index.
struct MemberSink {
    writer: WriteMultipart,
    path: Path,
    /// Of the file as stored (the ciphertext when encrypted).
    file_hash: Sha256,
    file_size: u64,
    members: Vec<[u64; 2]>,
    stored: u64,
    encrypt: Option<crate::crypt::Encrypting>,
}

/// A compressed member, whether it was stored, its raw size, and the raw
/// block's buffer (for reuse).
type Compressed = std::io::Result<(Vec<u8>, bool, u64, Vec<u8>)>;

impl MemberSink {
    /// Write one member; hands back the raw block and output buffers for reuse.
    async fn put(&mut self, done: Option<Result<Compressed>>) -> Result<(Vec<u8>, Vec<u8>)> {
        let (gz, stored, raw, block) = done
            .ok_or_else(|| Error::Snapshot(std::io::Error::other("compression queue empty")))??
            .map_err(Error::Snapshot)?;
        self.members.push([gz.len() as u64, raw]);
        self.stored += u64::from(stored);
        match &mut self.encrypt {
            Some(enc) => {
                enc.write(&gz);
                let out = enc.take();
                self.write(&out).await?;
            }
            None => self.write(&gz).await?,
        }
        Ok((block, gz))
    }

    /// Write the encryption's last chunk (nothing when not encrypting).
    async fn finish_encryption(&mut self) -> Result<()> {
        if let Some(enc) = self.encrypt.take() {
            let out = enc.finish();
            self.write(&out).await?;
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file_hash.update(bytes);
        self.file_size += bytes.len() as u64;
        self.writer
            .wait_for_capacity(2)
            .await
            .map_err(|e| Error::store("write", &self.path, e))?;
        self.writer.write(bytes);
        Ok(())
    }
}

/// The files a download goes through beside its destination: the gzip,
/// the snapshot and (encrypted) the age file, each `.part` until the
/// snapshot is checked and renamed into place.
struct DownloadParts {
    gz: std::path::PathBuf,
    raw: std::path::PathBuf,
    age: std::path::PathBuf,
}

impl DownloadParts {
    fn beside(dest: &std::path::Path) -> Self {
        DownloadParts {
            gz: dest.with_extension("gz.part"),
            raw: dest.with_extension("part"),
            age: dest.with_extension("age.part"),
        }
    }

    /// Remove what is left of them (none is left once the download is done).
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.gz);
        let _ = std::fs::remove_file(&self.raw);
        let _ = std::fs::remove_file(&self.age);
    }
}

/// [`Error::Io`] at `path`.
fn io_at(path: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Inflate `gz` into `raw` member by member, `workers` members at a time,
/// returning the sha256 and size of the output.
fn decompress_members(
    gz: &std::path::Path,
    raw: &std::path::Path,
    members: &[[u64; 2]],
    workers: usize,
) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut input = std::io::BufReader::new(std::fs::File::open(gz)?);
    let mut out = crate::private_file(raw)?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    for batch in members.chunks(workers.max(1)) {
        let mut parts = Vec::with_capacity(batch.len());
        for [gz_len, raw_len] in batch {
            let mut b = vec![0u8; usize::try_from(*gz_len).map_err(std::io::Error::other)?];
            input.read_exact(&mut b)?;
            parts.push((b, *raw_len));
        }
        let inflated: Vec<std::io::Result<Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .map(|(b, r)| s.spawn(move || crate::gzip::inflate_member(b, *r)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(std::io::Error::other("inflate thread panicked")))
                })
                .collect()
        });
        for data in inflated {
            let data = data?;
            hash.update(&data);
            size += data.len() as u64;
            out.write_all(&data)?;
        }
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest)? != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "bytes after the last indexed gzip member",
        ));
    }
    out.sync_all()?;
    Ok((hex(hash.finalize()), size))
}

/// gunzip (every member) `gz` into `raw`, returning the sha256 and size of
/// the output; fails once the output would exceed `limit` bytes (a gzip bomb).
fn decompress(
    gz: &std::path::Path,
    raw: &std::path::Path,
    limit: u64,
) -> std::io::Result<(String, u64)> {
    let input = std::io::BufReader::new(std::fs::File::open(gz)?);
    let mut out = crate::private_file(raw)?;
    let (sha, size) = crate::gzip::inflate_all(input, &mut out, limit)?;
    out.sync_all()?;
    Ok((sha, size))
}

/// Bytes a download leaves free on its disk.
pub const DISK_MARGIN: u64 = 64 << 20;

/// Free bytes on the file system of `path` (its folder when `path` does not
/// exist yet); `u64::MAX` when that cannot be told.
pub fn free_bytes(path: &std::path::Path) -> u64 {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => st.blocks_available().saturating_mul(st.fragment_size()),
        Err(_) => u64::MAX,
    }
}

#[cfg(test)]
mod delta_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::delta::tests::segment;

    const NAME: &str = "2024-01-01T00:00:00Z-000001";

    fn store() -> BackupStore {
        BackupStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            Path::from("cluster/main"),
            "memory://cluster/main".into(),
        )
    }

    async fn raw_put(store: &BackupStore, rel: &str, body: Vec<u8>) {
        store.put(rel, body, PutMode::Overwrite).await.unwrap();
    }

    /// A backup as far as listing goes: its meta file.
    async fn fake_backup(store: &BackupStore, name: &str) {
        raw_put(store, &format!("{name}/{BACKUP_META_FILE}"), b"{}".to_vec()).await;
        raw_put(store, &format!("{name}/{BACKUP_DATA_FILE}"), vec![1, 2, 3]).await;
    }

    #[tokio::test]
    async fn segments_write_list_and_read_back() {
        let store = store();
        fake_backup(&store, NAME).await;
        let a = segment(NAME, 101, 120);
        let b = segment(NAME, 121, 121);
        let size = store.write_segment(&b).await.unwrap();
        assert_eq!(size, crate::encode_segment(&b).len() as u64);
        store.write_segment(&a).await.unwrap();
        assert_eq!(
            store.list_segments(NAME).await.unwrap(),
            vec![(101, 120), (121, 121)]
        );
        assert_eq!(store.read_segment(NAME, 101, 120).await.unwrap(), a);
        assert_eq!(store.read_segment(NAME, 121, 121).await.unwrap(), b);
        let err = store.read_segment(NAME, 1, 2).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        let err = store.read_segment(NAME, 3, 2).await.unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        let err = store.list_segments("../x").await.unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        // Segments make no phantom backups.
        assert_eq!(store.list_backups().await.unwrap(), vec![NAME.to_string()]);
    }

    #[tokio::test]
    async fn a_segment_is_never_replaced() {
        let store = store();
        let seg = segment(NAME, 5, 9);
        let size = store.write_segment(&seg).await.unwrap();
        // The same segment again (a retried upload) is fine.
        assert_eq!(store.write_segment(&seg).await.unwrap(), size);
        let mut other = seg.clone();
        other.revisions[0].at_ms += 1;
        let err = store.write_segment(&other).await.unwrap_err();
        assert!(
            matches!(&err, Error::Malformed { reason, .. } if reason.contains("another writer uploaded a different segment")),
            "{err}"
        );
        assert_eq!(store.read_segment(NAME, 5, 9).await.unwrap(), seg);
    }

    #[tokio::test]
    async fn invalid_or_oversized_segments_are_not_uploaded() {
        let store = store();
        let mut bad = segment(NAME, 5, 9);
        bad.revisions[2].ops.clear();
        let err = store.write_segment(&bad).await.unwrap_err();
        assert!(
            matches!(&err, Error::Malformed { reason, .. } if reason.contains("no operation")),
            "{err}"
        );
        let mut bad = segment(NAME, 5, 9);
        bad.base = "a/b".into();
        let err = store.write_segment(&bad).await.unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        // Past the stored cap (a small one here: encoding 64 MiB takes long
        // in a debug build).
        let seg = segment(NAME, 1, 50);
        let (body, inflated) = crate::delta::encode(&seg, None);
        let size = body.len() as u64;
        for (max, max_inflated) in [(size - 1, inflated), (size, inflated - 1)] {
            let err = store
                .write_segment_capped(&seg, max, max_inflated)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::Malformed { reason, .. } if reason.contains("smaller segments")),
                "{err}"
            );
        }
        assert_eq!(
            store
                .write_segment_capped(&seg, size, inflated)
                .await
                .unwrap(),
            size
        );
        store.delete_backup(NAME).await.unwrap();
        assert_eq!(store.list_segments(NAME).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn listing_skips_other_objects() {
        let store = store();
        store.write_segment(&segment(NAME, 1, 4)).await.unwrap();
        let dir = format!("{NAME}/{DELTA_DIR}");
        for junk in [
            "notes.txt",
            "00000000000000000005-00000000000000000009.seg.part",
            "00000000000000000009-00000000000000000005.seg",
            "5-9.seg",
            "sub/00000000000000000005-00000000000000000009.seg",
        ] {
            raw_put(&store, &format!("{dir}/{junk}"), vec![0]).await;
        }
        // A sibling folder whose name starts like ours is not listed.
        raw_put(
            &store,
            &format!("{dir}-old/00000000000000000005-00000000000000000009.seg"),
            vec![0],
        )
        .await;
        assert_eq!(store.list_segments(NAME).await.unwrap(), vec![(1, 4)]);
    }

    #[tokio::test]
    async fn a_renamed_or_damaged_segment_is_refused() {
        let store = store();
        store.write_segment(&segment(NAME, 1, 4)).await.unwrap();
        let stored = store
            .read_capped(&segment_rel(NAME, 1, 4), MAX_SEGMENT_SIZE)
            .await
            .unwrap()
            .unwrap()
            .1
            .to_vec();
        // Renamed to another range.
        raw_put(&store, &segment_rel(NAME, 5, 8), stored.clone()).await;
        let err = store.read_segment(NAME, 5, 8).await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { reason, .. } if reason.contains("not what its name says")),
            "{err}"
        );
        // Copied under another backup.
        let other = "2024-01-02T00:00:00Z-000001";
        raw_put(&store, &segment_rel(other, 1, 4), stored.clone()).await;
        let err = store.read_segment(other, 1, 4).await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { reason, .. } if reason.contains("not what its name says")),
            "{err}"
        );
        // Damaged.
        let mut damaged = stored.clone();
        *damaged.last_mut().unwrap() ^= 1;
        raw_put(&store, &segment_rel(NAME, 1, 4), damaged).await;
        let err = store.read_segment(NAME, 1, 4).await.unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { reason, .. } if reason.contains("checksum mismatch")),
            "{err}"
        );
        // Writing the genuine segment again reports the damage, not a conflict.
        let err = store.write_segment(&segment(NAME, 1, 4)).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[tokio::test]
    async fn an_oversized_object_is_refused_unread() {
        let store = store();
        raw_put(
            &store,
            &segment_rel(NAME, 1, 4),
            vec![0; MAX_SEGMENT_SIZE as usize + 1],
        )
        .await;
        let err = store.read_segment(NAME, 1, 4).await.unwrap_err();
        assert!(
            matches!(&err, Error::Malformed { reason, .. } if reason.contains("larger than the")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn deleting_a_backup_deletes_its_segments() {
        let store = store();
        let keep = "2024-01-02T00:00:00Z-000001";
        for name in [NAME, keep] {
            fake_backup(&store, name).await;
            store.write_segment(&segment(name, 1, 4)).await.unwrap();
            store.write_segment(&segment(name, 5, 6)).await.unwrap();
        }
        store.delete_backup(NAME).await.unwrap();
        assert_eq!(store.list_segments(NAME).await.unwrap(), vec![]);
        assert!(store.list_under(Some(NAME)).await.unwrap().is_empty());
        assert_eq!(store.list_backups().await.unwrap(), vec![keep.to_string()]);
        assert_eq!(
            store.list_segments(keep).await.unwrap(),
            vec![(1, 4), (5, 6)]
        );
    }
}
