//! A backup downloaded over a slow link: the download takes longer than
//! any one store request may (object_store's 30 s), and still arrives
//! whole. S3 is moto, behind a gate that paces what S3 sends.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use backup::{BackupInfo, BackupStore, ClusterSpec, StoreOptions};
use bytes::Bytes;

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_slower_than_a_request_timeout_downloads_whole() {
    let Some(moto) = tests::moto::Moto::for_test().await else {
        return;
    };
    moto.create_bucket("slow").await.unwrap();
    let gate = tests::TcpGate::in_front_of(&moto).await;
    let opts = StoreOptions {
        s3_endpoint: Some(gate.endpoint()),
        s3_region: Some("us-east-1".into()),
        s3_access_key_id: Some("test".into()),
        s3_secret_access_key: Some("test".into()),
        ..Default::default()
    };
    let store = BackupStore::open("s3://slow/cluster/main", &opts).unwrap();
    // 1.25 MiB that gzip cannot shrink.
    let data: Vec<u8> = (0..1280 * 1024).map(|_| rand::random::<u8>()).collect();
    let chunks: Vec<std::io::Result<Bytes>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let info = BackupInfo {
        etcd_version: "3.5.30".into(),
        timestamp: 1_704_067_200,
        cluster_spec: Some(ClusterSpec {
            member_count: 3,
            etcd_version: "3.5.30".into(),
        }),
    };
    let written = store
        .write_backup(
            futures::stream::iter(chunks),
            &info,
            Some(7),
            Some(1),
            std::time::SystemTime::now(),
        )
        .await
        .unwrap();

    // 32 KiB/s: about 40 s for the backup.
    gate.set_rate(32 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("snapshot.db");
    let start = Instant::now();
    let got = store.download_backup(&written.name, &dest).await;
    let took = start.elapsed();
    println!(
        "BENCH slow store: {} bytes in {:.1} s",
        data.len(),
        took.as_secs_f64()
    );
    let got = got.unwrap_or_else(|e| panic!("the download after {took:?}: {e}"));
    assert!(got.verified_checksum);
    assert!(
        took > Duration::from_secs(30),
        "the link was slow enough to outlast one request's timeout: {took:?}"
    );
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "the snapshot arrived whole"
    );
}
