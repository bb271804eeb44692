//! The store on InMemory, the local file system and (when moto_server is
//! installed) S3: layout, listing, integrity checks, names never reused.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backup::{BackupStore, ClusterSpec, Command, Error, RestoreBackupCommand, StoreOptions};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

mod common;
use common::{chunks, info, t0};

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half compressible, half not.
            if (i / 4096) % 2 == 0 {
                b'a' + (i % 7) as u8
            } else {
                x as u8
            }
        })
        .collect()
}

/// The contract every backend must meet.
async fn contract(store: BackupStore, tmp: &std::path::Path) {
    // Spec and marker.
    assert_eq!(store.read_spec().await.unwrap(), None);
    let spec = ClusterSpec {
        member_count: 3,
        etcd_version: "3.5.30".into(),
    };
    store.write_spec(&spec).await.unwrap();
    assert_eq!(store.read_spec().await.unwrap(), Some(spec.clone()));
    assert!(store.read_created().await.unwrap().is_none());
    store.write_created(t0()).await.unwrap();
    store
        .write_created(t0() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        store.read_created().await.unwrap().unwrap().timestamp,
        1_704_067_200_000_000_000,
        "first marker kept"
    );
    // The cached control read sees the same, and a changed spec.
    let mut cache = backup::ControlCache::default();
    let c = store.read_control(&mut cache).await.unwrap();
    assert_eq!((c.spec, c.created), (Some(spec.clone()), true));
    let five = ClusterSpec {
        member_count: 5,
        ..spec.clone()
    };
    store.write_spec(&five).await.unwrap();
    let c = store.read_control(&mut cache).await.unwrap();
    assert_eq!(c.spec, Some(five));
    store.write_spec(&spec).await.unwrap();

    // Backups: round trip with checksums.
    let data = pseudo_random(3 * 1024 * 1024 + 17, 7);
    let a = store
        .write_backup(chunks(&data), &info(), Some(42), Some(3), t0())
        .await
        .unwrap();
    let b = store
        .write_backup(chunks(&data), &info(), None, None, t0())
        .await
        .unwrap();
    assert_ne!(
        a.name, b.name,
        "two backups in one second get distinct names"
    );
    assert_eq!(a.name, "2024-01-01T00:00:00Z-000001");
    assert_eq!(
        store.list_backups().await.unwrap(),
        vec![a.name.clone(), b.name.clone()]
    );
    assert!(a.compressed_size < a.snapshot_size);
    let extra = store.read_backup_extra(&a.name).await.unwrap().unwrap();
    assert_eq!(
        (extra.revision, extra.leader_epoch, extra.snapshot_size),
        (Some(42), Some(3), data.len() as u64)
    );
    assert_eq!(store.read_backup_info(&a.name).await.unwrap(), info());

    let dest = tmp.join("snap.db");
    let got = store.download_backup(&a.name, &dest).await.unwrap();
    assert!(got.verified_checksum);
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // Tampered data: refused, nothing left behind.
    let data_key = Path::from(format!("{}{}/etcd.backup.gz", prefix_of(&store), b.name));
    let mut gz = store
        .object_store()
        .get(&data_key)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    store
        .object_store()
        .put(&data_key, gz.into())
        .await
        .unwrap();
    let dest2 = tmp.join("tampered.db");
    let err = store.download_backup(&b.name, &dest2).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&b.name), "{err}");
    assert!(!dest2.exists());
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        1,
        "only the good download remains"
    );

    // Commands.
    let cmd = Command {
        timestamp: 1_547_480_961_703_914_946,
        restore_backup: Some(RestoreBackupCommand {
            cluster_spec: Some(spec.clone()),
            backup: a.name.clone(),
        }),
    };
    let c1 = store.add_command(&cmd, t0()).await.unwrap();
    let c2 = store.add_command(&cmd, t0()).await.unwrap();
    assert_ne!(c1, c2);
    let listed = store.list_commands().await.unwrap();
    assert_eq!(
        listed.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        vec![c1.clone(), c2.clone()]
    );
    assert_eq!(listed[0].command, cmd);
    store.delete_command(&c1).await.unwrap();
    assert_eq!(store.list_commands().await.unwrap().len(), 1);
    assert!(matches!(
        store.delete_command(&c1).await,
        Err(Error::NotFound { .. })
    ));

    // Commands and the lease folder are not backups.
    store
        .object_store()
        .put(
            &Path::from(format!("{}/00000000000000000001", store.lease_prefix())),
            "x".into(),
        )
        .await
        .unwrap();
    assert_eq!(store.list_backups().await.unwrap().len(), 2);

    store.delete_backup(&b.name).await.unwrap();
    assert_eq!(store.list_backups().await.unwrap(), vec![a.name.clone()]);
}

fn prefix_of(store: &BackupStore) -> String {
    let b = store.base().as_ref();
    if b.is_empty() {
        String::new()
    } else {
        format!("{b}/")
    }
}

#[tokio::test]
async fn contract_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = BackupStore::new(
        Arc::new(object_store::memory::InMemory::new()),
        Path::from("cluster/backups/etcd/main"),
        "memory://x".into(),
    );
    contract(store, tmp.path()).await;
}

#[tokio::test]
async fn contract_local_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}/store", dir.path().display());
    let store = BackupStore::open(&url, &StoreOptions::default()).unwrap();
    contract(store, tmp.path()).await;
}

#[tokio::test]
async fn contract_s3_on_moto() {
    let Some(moto) = moto::Moto::for_test().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    moto.create_bucket("backups").await.unwrap();
    let opts = StoreOptions {
        s3_endpoint: Some(moto.endpoint()),
        s3_region: Some("us-east-1".into()),
        s3_access_key_id: Some("test".into()),
        s3_secret_access_key: Some("test".into()),
        ..Default::default()
    };
    let store =
        BackupStore::open("s3://backups/cluster.example.com/backups/etcd/main", &opts).unwrap();
    contract(store, tmp.path()).await;
}

/// The headers S3 (moto) keeps with an object, lowercased.
async fn object_headers(moto: &moto::Moto, bucket: &str, key: &str) -> String {
    let addr = moto.endpoint().trim_start_matches("http://").to_string();
    // moto reads private objects only for a request that names a key (it
    // does not check the signature).
    let auth = "AWS4-HMAC-SHA256 Credential=test/20261130/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";
    let (code, resp) = moto::request_with(
        &addr,
        "HEAD",
        &format!("/{bucket}/{key}"),
        &[("Authorization", auth)],
        "",
        "",
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "HEAD {key}: {resp}");
    resp.to_ascii_lowercase()
}

/// S3 server-side encryption, as asked: on small objects and on a backup's
/// multipart upload alike; wrong settings refused at open.
#[tokio::test]
async fn s3_server_side_encryption_is_asked_for_on_every_write() {
    let Some(moto) = moto::Moto::for_test().await else {
        return;
    };
    for (bucket, sse, key_id) in [
        ("sse-kms", "aws:kms", Some("alias/etcd-backups")),
        ("sse-s3", "AES256", None),
    ] {
        moto.create_bucket(bucket).await.unwrap();
        let opts = StoreOptions {
            s3_endpoint: Some(moto.endpoint()),
            s3_region: Some("us-east-1".into()),
            s3_access_key_id: Some("test".into()),
            s3_secret_access_key: Some("test".into()),
            s3_server_side_encryption: Some(sse.into()),
            s3_sse_kms_key_id: key_id.map(String::from),
        };
        let store = BackupStore::open(&format!("s3://{bucket}/c/main"), &opts).unwrap();
        store
            .write_manager_file("probe", b"1".to_vec())
            .await
            .unwrap();
        let data = pseudo_random(6 * 1024 * 1024 + 5, 3);
        let summary = store
            .write_backup(chunks(&data), &info(), Some(7), None, t0())
            .await
            .unwrap();
        for key in [
            "c/main/etcd-manager/probe".to_string(),
            format!("c/main/{}/{}", summary.name, backup::BACKUP_DATA_FILE),
            format!("c/main/{}/{}", summary.name, backup::BACKUP_META_FILE),
        ] {
            let h = object_headers(&moto, bucket, &key).await;
            assert!(
                h.contains(&format!(
                    "x-amz-server-side-encryption: {}",
                    sse.to_ascii_lowercase()
                )),
                "{key}: {h}"
            );
            if let Some(k) = key_id {
                assert!(
                    h.contains(&format!("x-amz-server-side-encryption-aws-kms-key-id: {k}")),
                    "{key}: {h}"
                );
            }
        }
    }
    // Nothing asked: nothing sent (the bucket's default applies).
    moto.create_bucket("plain").await.unwrap();
    let opts = StoreOptions {
        s3_endpoint: Some(moto.endpoint()),
        s3_region: Some("us-east-1".into()),
        s3_access_key_id: Some("test".into()),
        s3_secret_access_key: Some("test".into()),
        ..Default::default()
    };
    let store = BackupStore::open("s3://plain/c/main", &opts).unwrap();
    store
        .write_manager_file("probe", b"1".to_vec())
        .await
        .unwrap();
    let h = object_headers(&moto, "plain", "c/main/etcd-manager/probe").await;
    assert!(
        !h.contains("x-amz-server-side-encryption-aws-kms-key-id"),
        "{h}"
    );
    // Settings S3 would refuse on every write are refused at open.
    for (sse, key, needle) in [
        ("aes256", None, "AES256 (SSE-S3), aws:kms"),
        (
            "AES256",
            Some("alias/x"),
            "needs --s3-server-side-encryption=aws:kms",
        ),
        ("aws:kms", Some("alias/has space"), "not a key id"),
    ] {
        let bad = StoreOptions {
            s3_server_side_encryption: Some(sse.into()),
            s3_sse_kms_key_id: key.map(String::from),
            ..opts.clone()
        };
        let e = BackupStore::open("s3://plain/c/main", &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{sse}: {e}");
    }
}

#[allow(dead_code)] // only some of the helper is used here
#[path = "../../tests/src/azurite.rs"]
mod azurite;

#[allow(dead_code)]
#[path = "../../tests/src/tools.rs"]
mod tools;

/// The store's contract on Azure Blob Storage (Azurite), opened from an
/// azureblob:// URL the way a manager does it: `BackupStore::open` reads the
/// account, key and endpoint from the environment, which a test cannot set
/// for one thread; so the same client is built from the same values here,
/// and the e2e test runs `open` in a manager process.
#[tokio::test]
async fn contract_azure_on_azurite() {
    let Some(az) = azurite::Azurite::start().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    az.create_container("backups").await;
    let store = BackupStore::new(
        Arc::new(az.store("backups")),
        Path::from("cluster.example.com/backups/etcd/main"),
        "azureblob://backups/cluster.example.com/backups/etcd/main".into(),
    );
    contract(store, tmp.path()).await;
}

/// No region given: the store asks S3 where the bucket lives (HeadBucket's
/// x-amz-bucket-region, here from moto) and uses that; a missing bucket or
/// a server that does not answer leaves the options alone and says why.
#[tokio::test]
async fn the_buckets_region_comes_from_s3_when_none_is_given() {
    let Some(moto) = moto::Moto::for_test().await else {
        return;
    };
    moto.create_bucket_in("far-away", Some("eu-west-2"))
        .await
        .unwrap();
    moto.create_bucket("nearby").await.unwrap();
    let base = StoreOptions {
        s3_endpoint: Some(moto.endpoint()),
        s3_region: None,
        s3_access_key_id: Some("test".into()),
        s3_secret_access_key: Some("test".into()),
        ..Default::default()
    };
    let mut opts = base.clone();
    backup::resolve_s3_region("s3://far-away/cluster/backups/etcd/main", &mut opts).await;
    assert_eq!(opts.s3_region.as_deref(), Some("eu-west-2"));
    // The store opened with it works.
    let store = BackupStore::open("s3://far-away/cluster/backups/etcd/main", &opts).unwrap();
    store
        .write_manager_file("probe", b"1".to_vec())
        .await
        .unwrap();
    let mut opts = base.clone();
    backup::resolve_s3_region("s3://nearby/x", &mut opts).await;
    assert_eq!(opts.s3_region.as_deref(), Some("us-east-1"));
    // Given explicitly, nothing is asked.
    let mut opts = StoreOptions {
        s3_region: Some("ap-south-1".into()),
        ..base.clone()
    };
    backup::resolve_s3_region("s3://far-away/x", &mut opts).await;
    assert_eq!(opts.s3_region.as_deref(), Some("ap-south-1"));
    // A missing bucket and a dead endpoint: an error naming what was asked.
    let e = backup::bucket_region(Some(&moto.endpoint()), "missing")
        .await
        .unwrap_err();
    assert!(matches!(e, backup::RegionError::NoSuchBucket { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("no such bucket") && e.contains("/missing"),
        "{e}"
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut opts = StoreOptions {
        s3_endpoint: Some(format!("http://{dead}")),
        ..base
    };
    backup::resolve_s3_region("s3://far-away/x", &mut opts).await;
    assert_eq!(opts.s3_region, None);
}

#[tokio::test]
async fn half_written_backups_are_invisible_and_odd_names_listed() {
    let mem = Arc::new(object_store::memory::InMemory::new());
    let store = BackupStore::new(mem.clone(), Path::default(), "memory://".into());
    mem.put(
        &Path::from("2024-02-01T00:00:00Z-000001/etcd.backup.gz"),
        "partial".into(),
    )
    .await
    .unwrap();
    mem.put(&Path::from("not-a-time/_etcd_backup.meta"), "{}".into())
        .await
        .unwrap();
    mem.put(&Path::from("control/x/_etcd_backup.meta"), "{}".into())
        .await
        .unwrap();
    assert_eq!(
        store.list_backups().await.unwrap(),
        vec!["not-a-time".to_string()]
    );
    assert!(backup::parse_backup_name("not-a-time").is_none());
    let (t, seq) = backup::parse_backup_name("2019-05-07T18:28:01Z-000977").unwrap();
    assert_eq!((t.timestamp(), seq), (1_557_253_681, 977));
    assert_eq!(
        backup::format_backup_name(t.into(), 977),
        "2019-05-07T18:28:01Z-000977"
    );
}

#[tokio::test]
async fn malformed_files_name_the_path() {
    let mem = Arc::new(object_store::memory::InMemory::new());
    let store = BackupStore::new(mem.clone(), Path::from("base"), "s3://bucket/base".into());
    mem.put(
        &Path::from("base/control/etcd-cluster-spec"),
        "{ nope".into(),
    )
    .await
    .unwrap();
    let e = store.read_spec().await.unwrap_err().to_string();
    assert!(
        e.contains("s3://bucket/base/control/etcd-cluster-spec") && e.contains("configure-cluster"),
        "{e}"
    );
    mem.put(
        &Path::from("base/control/c1/_command.json"),
        "{\"timestamp\": \"soon\"}".into(),
    )
    .await
    .unwrap();
    // A malformed command is skipped and named, never a reason to fail.
    let (cmds, bad) = store.list_commands_reporting().await.unwrap();
    assert!(cmds.is_empty());
    assert_eq!(bad.len(), 1);
    assert!(bad[0].path.contains("control/c1/_command.json"), "{bad:?}");
    // A huge file is refused by its size before it is read whole.
    let mut huge = b"{\"restoreBackup\":{\"backup\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 2 << 20));
    huge.extend_from_slice(b"\"}}");
    mem.put(&Path::from("base/control/c2/_command.json"), huge.into())
        .await
        .unwrap();
    let (_, bad) = store.list_commands_reporting().await.unwrap();
    assert!(
        bad.iter()
            .any(|f| f.path.contains("c2/_command.json") && f.reason.contains("larger than")),
        "{bad:?}"
    );
    mem.put(
        &Path::from("base/control/etcd-cluster-spec"),
        vec![b' '; 3 << 20].into(),
    )
    .await
    .unwrap();
    let e = store.read_spec().await.unwrap_err().to_string();
    assert!(
        e.contains("etcd-cluster-spec") && e.contains("larger than"),
        "{e}"
    );
}

#[tokio::test]
async fn upstream_backups_without_our_checksum_still_download() {
    use std::io::Write;
    let mem = Arc::new(object_store::memory::InMemory::new());
    let store = BackupStore::new(mem.clone(), Path::default(), "memory://".into());
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(b"snapshot bytes").unwrap();
    let gz = enc.finish().unwrap();
    mem.put(
        &Path::from("2019-01-14T15:29:48Z-000003/etcd.backup.gz"),
        gz.clone().into(),
    )
    .await
    .unwrap();
    mem.put(
        &Path::from("2019-01-14T15:29:48Z-000003/_etcd_backup.meta"),
        "{}".into(),
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let got = store
        .download_backup("2019-01-14T15:29:48Z-000003", &tmp.path().join("s"))
        .await
        .unwrap();
    assert!(!got.verified_checksum);
    assert_eq!(
        std::fs::read(tmp.path().join("s")).unwrap(),
        b"snapshot bytes"
    );
    // A truncated gzip fails its own CRC/length check.
    mem.put(
        &Path::from("2019-01-14T15:29:48Z-000003/etcd.backup.gz"),
        gz[..gz.len() - 4].to_vec().into(),
    )
    .await
    .unwrap();
    let err = store
        .download_backup("2019-01-14T15:29:48Z-000003", &tmp.path().join("t"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

/// An upstream backup declares no size and may inflate to 64 GiB: the
/// download inflates no more than its disk holds (less a margin) and says
/// so, instead of filling the disk under a running member (it used to run
/// until the disk was full, then called the backup corrupt). On a small
/// tmpfs of this test's own (root only).
#[tokio::test]
async fn a_download_never_fills_its_disk() {
    use std::io::Write;
    if std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        !s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    }) {
        tools::tool_missing("mounting a small tmpfs needs root");
        return;
    }
    let mem = Arc::new(object_store::memory::InMemory::new());
    let store = BackupStore::new(mem.clone(), Path::default(), "memory://".into());
    // 200 MiB of zeros: a few hundred KiB of gzip.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        enc.write_all(&zeros).unwrap();
    }
    let gz = enc.finish().unwrap();
    let name = "2019-01-14T15:29:48Z-000004";
    mem.put(&Path::from(format!("{name}/etcd.backup.gz")), gz.into())
        .await
        .unwrap();
    mem.put(
        &Path::from(format!("{name}/_etcd_backup.meta")),
        "{}".into(),
    )
    .await
    .unwrap();
    let disk = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=128m", "tmpfs"])
        .arg(disk.path())
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.path().to_path_buf());
    let err = store
        .download_backup(name, &disk.path().join("s"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoRoom { .. }), "{err}");
    assert!(err.is_retryable(), "not the backup's fault: {err}");
    let free = backup::free_bytes(disk.path());
    assert!(
        free >= backup::DISK_MARGIN,
        "the margin was left: {free} bytes free"
    );
    assert!(
        std::fs::read_dir(disk.path()).unwrap().next().is_none(),
        "nothing left behind"
    );
}

/// Counts list calls, to keep listing cheap (one call per listing).
#[derive(Debug)]
struct CountingStore {
    inner: object_store::memory::InMemory,
    lists: AtomicUsize,
    gets: AtomicUsize,
}

impl CountingStore {
    fn new() -> Arc<CountingStore> {
        Arc::new(CountingStore {
            inner: object_store::memory::InMemory::new(),
            lists: AtomicUsize::new(0),
            gets: AtomicUsize::new(0),
        })
    }
}

impl std::fmt::Display for CountingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CountingStore")
    }
}

#[async_trait::async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// The leader's look at the control files: two listings, and reads only of
/// files that changed since the last look.
#[tokio::test]
async fn control_reads_only_what_changed() {
    let counting = CountingStore::new();
    let store = BackupStore::new(
        counting.clone(),
        Path::from("base"),
        "memory://x/base".into(),
    );
    let spec = ClusterSpec {
        member_count: 3,
        etcd_version: "3.5.30".into(),
    };
    store.write_spec(&spec).await.unwrap();
    store.write_created(t0()).await.unwrap();
    let cmd = backup::Command {
        timestamp: 1,
        restore_backup: Some(backup::RestoreBackupCommand {
            cluster_spec: Some(spec.clone()),
            backup: "2024-01-01T00:00:00Z-000001".into(),
        }),
    };
    let name = store.add_command(&cmd, t0()).await.unwrap();
    store
        .write_manager_file("backup-now", vec![])
        .await
        .unwrap();
    let counts = || {
        (
            counting.lists.load(Ordering::SeqCst),
            counting.gets.load(Ordering::SeqCst),
        )
    };
    let mut cache = backup::ControlCache::default();
    let (l0, g0) = counts();
    let c = store.read_control(&mut cache).await.unwrap();
    assert_eq!(c.spec, Some(spec.clone()));
    assert!(c.created && c.manager_files.contains("backup-now"));
    assert_eq!(c.commands.len(), 1);
    assert_eq!(c.commands[0].name, name);
    assert_eq!(
        counts(),
        (l0 + 2, g0 + 3),
        "two listings, three first reads"
    );
    // Nothing changed: listings only.
    let again = store.read_control(&mut cache).await.unwrap();
    assert_eq!(again.commands.len(), 1);
    assert_eq!(counts(), (l0 + 4, g0 + 3));
    // A restore marker appears and the backup-now request goes: one read.
    store
        .mark_restore_started(
            &name,
            &backup::RestoreProgress {
                cluster_token: "tok".into(),
                leader_epoch: 7,
            },
        )
        .await
        .unwrap();
    store.delete_manager_file("backup-now").await.unwrap();
    let c = store.read_control(&mut cache).await.unwrap();
    assert_eq!(
        c.commands[0]
            .restore_started
            .as_ref()
            .unwrap()
            .cluster_token,
        "tok"
    );
    assert!(!c.manager_files.contains("backup-now"));
    assert_eq!(counts(), (l0 + 6, g0 + 4));
    // A deleted command is gone; a malformed spec names its path and the fix.
    store.delete_command(&name).await.unwrap();
    counting
        .inner
        .put(&Path::from("base/control/etcd-cluster-spec"), "{".into())
        .await
        .unwrap();
    let c = store.read_control(&mut cache).await.unwrap();
    assert_eq!(c.spec, None, "a malformed spec reads as no spec");
    assert_eq!(c.malformed.len(), 1, "{:?}", c.malformed);
    assert!(
        c.malformed[0].path.contains("control/etcd-cluster-spec")
            && c.malformed[0].reason.contains("configure-cluster"),
        "{:?}",
        c.malformed
    );
    store.write_spec(&spec).await.unwrap();
    assert!(
        store
            .read_control(&mut cache)
            .await
            .unwrap()
            .commands
            .is_empty()
    );
}

#[tokio::test]
async fn listing_backups_is_one_call() {
    let counting = CountingStore::new();
    let store = BackupStore::new(counting.clone(), Path::default(), "memory://".into());
    for i in 0..20 {
        store
            .write_backup(
                chunks(&[i; 1000]),
                &info(),
                None,
                None,
                t0() + Duration::from_secs(i as u64 * 3600),
            )
            .await
            .unwrap();
    }
    let before = counting.lists.load(Ordering::SeqCst);
    assert_eq!(store.list_backups().await.unwrap().len(), 20);
    assert_eq!(counting.lists.load(Ordering::SeqCst) - before, 1);
}

/// An S3 endpoint nobody answers on fails the call after a few quick
/// retries instead of object_store's default 10 retries within 3 minutes.
#[tokio::test]
async fn an_unreachable_store_fails_instead_of_hanging() {
    // A port that was free a moment ago: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = BackupStore::open(
        "s3://nobody/prefix",
        &StoreOptions {
            s3_endpoint: Some(format!("http://127.0.0.1:{port}")),
            s3_access_key_id: Some("k".into()),
            s3_secret_access_key: Some("s".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(60), store.read_spec()).await;
    let err = answer
        .expect("the store call gave up within a minute")
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn urls_are_checked_with_helpful_errors() {
    let o = StoreOptions::default();
    for (url, needle) in [
        ("ftp://bucket/x", "unknown scheme 'ftp'"),
        ("file://relative/dir", "three slashes"),
        ("relative/dir", "file:///absolute/path"),
        ("s3:///prefix", "no bucket"),
    ] {
        let e = BackupStore::open(url, &o).unwrap_err().to_string();
        assert!(e.contains(needle), "{url}: {e}");
        assert!(e.contains(url), "{url}: {e}");
    }
    assert!(BackupStore::open("memory://test", &o).is_ok());
    let s3 = StoreOptions {
        s3_endpoint: Some("http://127.0.0.1:1".into()),
        ..Default::default()
    };
    let s = BackupStore::open("s3://bucket/a/b", &s3).unwrap();
    assert_eq!(s.base().as_ref(), "a/b");
    assert_eq!(s.lease_prefix().as_ref(), "a/b/etcd-manager/lease");
}

#[test]
fn gcs_urls_are_configured_without_io() {
    // No emulator here speaks GCS with preconditions (see environment.md):
    // only the configuration path is checked. Credentials are resolved lazily,
    // on the first request, from the usual GOOGLE_* variables or the metadata server.
    let s = BackupStore::open("gs://bucket/cluster/backups", &StoreOptions::default()).unwrap();
    assert_eq!(s.base().as_ref(), "cluster/backups");
    assert_eq!(s.url(), "gs://bucket/cluster/backups");
    let e = BackupStore::open("gs:///nobucket", &StoreOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no bucket"), "{e}");
}

#[allow(dead_code)] // only some of the helper is used here
#[path = "../../tests/src/moto.rs"]
mod moto;

#[tokio::test]
async fn retention_deletes_with_one_listing_and_spares_odd_names() {
    let counting = CountingStore::new();
    let store = BackupStore::new(counting.clone(), Path::from("base"), "memory://".into());
    // One backup an hour for three days.
    for h in 0..72u64 {
        store
            .write_backup(
                chunks(&[1; 100]),
                &info(),
                None,
                None,
                t0() + Duration::from_secs(h * 3600),
            )
            .await
            .unwrap();
    }
    counting
        .inner
        .put(&Path::from("base/odd-name/_etcd_backup.meta"), "{}".into())
        .await
        .unwrap();
    let now = t0() + Duration::from_secs(72 * 3600);
    let policy = backup::RetentionPolicy {
        hourly: Duration::from_secs(86_400),
        daily: Duration::from_secs(2 * 86_400),
    };
    let before = counting.lists.load(Ordering::SeqCst);
    let deleted = store.apply_retention(now, &policy).await.unwrap();
    assert_eq!(
        counting.lists.load(Ordering::SeqCst) - before,
        1,
        "one listing per cleanup"
    );
    let left = store.list_backups().await.unwrap();
    // Ages 1..23 h: one per hour, 23 kept; ages 24..47 h span two UTC days: the
    // oldest of each kept; older than 48 h: deleted. Plus the odd name.
    assert_eq!(left.len(), 23 + 2 + 1, "{left:?}");
    assert!(left.contains(&"odd-name".to_string()));
    assert_eq!(deleted.len(), 72 - 25);
    for d in &deleted {
        let files: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(
            counting.inner.list(Some(&Path::from(format!("base/{d}")))),
        )
        .await
        .unwrap();
        assert!(files.is_empty(), "{d} left files behind");
    }
}

/// Snapshots larger than a block become several gzip members compressed in
/// parallel; the index in our side file lets the download inflate them in
/// parallel, and without it (an older writer) they still read in sequence.
#[tokio::test]
async fn large_snapshots_are_multi_member_gzip_and_read_back_either_way() {
    use backup::gzip::BLOCK_SIZE;
    let store = BackupStore::open("memory:///backups/main", &StoreOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = pseudo_random(2 * BLOCK_SIZE + BLOCK_SIZE / 3 + 5, 11);
    let s = store
        .write_backup(chunks(&data), &info(), None, None, t0())
        .await
        .unwrap();
    let extra = store.read_backup_extra(&s.name).await.unwrap().unwrap();
    let raw: Vec<u64> = extra.members.iter().map(|[_, r]| *r).collect();
    assert_eq!(
        raw,
        vec![
            BLOCK_SIZE as u64,
            BLOCK_SIZE as u64,
            (BLOCK_SIZE / 3 + 5) as u64
        ]
    );
    assert_eq!(
        extra.members.iter().map(|[g, _]| *g).sum::<u64>(),
        s.compressed_size
    );
    let dest = tmp.path().join("parallel.db");
    store.download_backup(&s.name, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // The same backup without the member index: the sequential path.
    let extra_key = Path::from(format!(
        "{}{}/etcd-manager-backup.json",
        prefix_of(&store),
        s.name
    ));
    let mut without = extra.clone();
    without.members.clear();
    store
        .object_store()
        .put(&extra_key, serde_json::to_vec(&without).unwrap().into())
        .await
        .unwrap();
    let dest = tmp.path().join("sequential.db");
    store.download_backup(&s.name, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // A wrong index is refused, not trusted: nothing is left behind.
    let mut wrong = extra.clone();
    wrong.members[0][1] += 1;
    wrong.members[1][1] -= 1;
    store
        .object_store()
        .put(&extra_key, serde_json::to_vec(&wrong).unwrap().into())
        .await
        .unwrap();
    let dest = tmp.path().join("wrong.db");
    let err = store.download_backup(&s.name, &dest).await.unwrap_err();
    assert!(err.to_string().contains("index says"), "{err}");
    assert!(!dest.exists());

    // An empty snapshot is still a valid gzip file of one member.
    let e = store
        .write_backup(chunks(&[]), &info(), None, None, t0())
        .await
        .unwrap();
    let dest = tmp.path().join("empty.db");
    store.download_backup(&e.name, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), Vec::<u8>::new());
}
