//! Client-side encryption: what is stored is ciphertext a key holder (and
//! only one) turns back into the snapshot, checksums catch changes before
//! any key is asked for, and segments are encrypted the same way.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::sync::Arc;

use age::secrecy::ExposeSecret;
use backup::{
    BACKUP_DATA_FILE, BackupStore, DeltaOp, DeltaRevision, DeltaSegment, Encryption, Error,
    Recipients,
};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

mod common;
use common::{chunks, info, snapshot, t0};

struct Key {
    recipients: Recipients,
    _dir: tempfile::TempDir,
    identity_file: std::path::PathBuf,
}

fn key() -> Key {
    let id = age::x25519::Identity::generate();
    let dir = tempfile::tempdir().unwrap();
    let identity_file = dir.path().join("backup.key");
    std::fs::write(
        &identity_file,
        format!(
            "# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    Key {
        recipients: Recipients::parse(&id.to_public().to_string()).unwrap(),
        _dir: dir,
        identity_file,
    }
}

fn stores() -> (Arc<object_store::memory::InMemory>, BackupStore) {
    let mem = Arc::new(object_store::memory::InMemory::new());
    let store = BackupStore::new(mem.clone(), Path::from("b"), "memory://b".into());
    (mem, store)
}

fn with(store: &BackupStore, recipients: Option<&Key>, identity: Option<&Key>) -> BackupStore {
    store.clone().with_encryption(Encryption {
        recipients: recipients.map(|k| k.recipients.clone()),
        identity_file: identity.map(|k| k.identity_file.clone()),
    })
}

async fn raw(mem: &object_store::memory::InMemory, rel: &str) -> Vec<u8> {
    mem.get(&Path::from(format!("b/{rel}")))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn an_encrypted_backup_restores_only_with_its_key() {
    let (mem, plain) = stores();
    let (k, other) = (key(), key());
    let writer = with(&plain, Some(&k), None);
    // Several gzip members and age chunks.
    let data = snapshot(2_700_000);
    let t = t0();
    let done = writer
        .write_backup(chunks(&data), &info(), Some(7), None, t)
        .await
        .unwrap();

    // Stored: an age file, and the side file says so (with the public key).
    let stored = raw(&mem, &format!("{}/{BACKUP_DATA_FILE}", done.name)).await;
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(done.compressed_size, stored.len() as u64);
    let extra = plain.read_backup_extra(&done.name).await.unwrap().unwrap();
    let enc = extra.encryption.clone().unwrap();
    assert_eq!(
        (enc.scheme.as_str(), enc.recipients.clone()),
        ("age", k.recipients.keys())
    );
    assert!(extra.members.len() >= 3, "{:?}", extra.members);

    // By hand, as docs/operations.md says: age -d, then gunzip.
    let ids = backup::crypt::parse_identities(&std::fs::read_to_string(&k.identity_file).unwrap())
        .unwrap();
    let mut gz = Vec::new();
    age::Decryptor::new(&stored[..])
        .unwrap()
        .decrypt(ids.iter().map(|i| i as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut gz)
        .unwrap();
    let mut by_hand = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_end(&mut by_hand)
        .unwrap();
    assert!(by_hand == data, "age -d | gunzip gives the snapshot");

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("snap.db");
    // No key: refused before anything is downloaded, naming the flag.
    let err = plain.download_backup(&done.name, &dest).await.unwrap_err();
    assert!(matches!(err, Error::Encryption { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("--backup-encryption-identity-file"),
        "{err}"
    );
    assert!(!err.is_retryable());
    // Another key: refused, nothing left behind.
    let err = with(&plain, None, Some(&other))
        .download_backup(&done.name, &dest)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("none of the 1 key(s)"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // The key: the snapshot, checksums verified.
    let got = with(&plain, None, Some(&k))
        .download_backup(&done.name, &dest)
        .await
        .unwrap();
    assert!(got.verified_checksum);
    assert!(std::fs::read(&dest).unwrap() == data);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[tokio::test]
async fn a_changed_ciphertext_byte_is_caught_before_decryption() {
    let (mem, plain) = stores();
    let k = key();
    let writer = with(&plain, Some(&k), Some(&k));
    let data = snapshot(300_000);
    let t = t0();
    let done = writer
        .write_backup(chunks(&data), &info(), Some(7), None, t)
        .await
        .unwrap();
    let rel = format!("{}/{BACKUP_DATA_FILE}", done.name);
    let mut stored = raw(&mem, &rel).await;
    let mid = stored.len() / 2;
    stored[mid] ^= 0x20;
    mem.put(&Path::from(format!("b/{rel}")), PutPayload::from(stored))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = writer
        .download_backup(&done.name, &dir.path().join("s.db"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { reason, .. } if reason.contains("sha256")),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn segments_are_encrypted_and_read_back_with_the_key() {
    let (mem, plain) = stores();
    let k = key();
    let name = "2024-01-01T00:00:00Z-000001";
    let seg = DeltaSegment {
        base: name.into(),
        start_revision: 8,
        end_revision: 9,
        revisions: (8..=9)
            .map(|r| DeltaRevision {
                revision: r,
                at_ms: 1_704_067_200_000 + r,
                ops: vec![DeltaOp::Put {
                    key: format!("/registry/k{r}").into_bytes(),
                    value: b"a secret value".to_vec(),
                    lease: 0,
                }],
            })
            .collect(),
        leases: vec![],
    };
    let writer = with(&plain, Some(&k), None);
    writer.write_segment(&seg).await.unwrap();
    let stored = raw(
        &mem,
        &format!(
            "{name}/etcd-manager-deltas/{}",
            backup::segment_file_name(8, 9)
        ),
    )
    .await;
    assert!(stored.starts_with(b"EMDELTA1"));
    assert!(stored[40..].starts_with(b"age-encryption.org/v1\n"));
    assert!(!stored.windows(14).any(|w| w == b"a secret value"));
    // Without the key: a clear error, not "corrupt".
    let err = writer.read_segment(name, 8, 9).await.unwrap_err();
    assert!(matches!(err, Error::Encryption { .. }), "{err}");
    let err = backup::decode_segment(&stored, 1 << 20).unwrap_err();
    assert_eq!(err, backup::SegmentError::Encrypted);
    assert!(err.to_string().contains("encrypted"), "{err}");
    // With it: the segment.
    let reader = with(&plain, None, Some(&k));
    assert_eq!(reader.read_segment(name, 8, 9).await.unwrap(), seg);
    // A retried upload (fresh ciphertext, same changes) is not a conflict.
    let both = with(&plain, Some(&k), Some(&k));
    both.write_segment(&seg).await.unwrap();
}
