//! What the store's integration tests share: a fixed time, a backup's
//! meta, a snapshot of any size and the stream a writer reads it from.
#![allow(dead_code)] // each test file uses some of it

use std::time::{Duration, SystemTime};

use backup::{BackupInfo, ClusterSpec};
use bytes::Bytes;

/// 2024-01-01T00:00:00Z.
pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)
}

pub fn info() -> BackupInfo {
    BackupInfo {
        etcd_version: "3.5.30".into(),
        timestamp: 1_704_067_200,
        cluster_spec: Some(ClusterSpec {
            member_count: 3,
            etcd_version: "3.5.30".into(),
        }),
    }
}

/// `n` bytes of a fixed pattern that compresses somewhat.
pub fn snapshot(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31) ^ (i >> 9)) as u8).collect()
}

/// `data` as a snapshot stream of 64 KiB chunks.
pub fn chunks(data: &[u8]) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin {
    let v: Vec<std::io::Result<Bytes>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(v)
}
