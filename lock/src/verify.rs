//! Checking another node's claim to an epoch against the store: what a node
//! does before it accepts a leader's request with an epoch higher than any
//! it has seen, so no epoch can be raised by a message alone.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::Error;
use crate::record::{LeaseRecord, parse_key, record_key};

/// Most bytes read of one lease record (a real one is about 150).
pub const MAX_RECORD_SIZE: u64 = 64 * 1024;

/// What the store says about `holder` at `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochCheck {
    /// A record names `holder` at `epoch`: the epoch is real.
    Confirmed,
    /// No record supports it; the reason says what the store holds instead.
    Refuted(String),
}

/// Does a lease record under `prefix` name `holder` at `epoch`? Reads record
/// `seq` (the one the holder says it held); if that record is gone because
/// it was garbage-collected (it is behind the current one), the current
/// one. A record number beyond the current one is refuted: it was never
/// written (a fence naming record u64::MAX would otherwise pass as the
/// current one and then hold every real request of that leader back as
/// late). One or two reads and at most one listing.
pub async fn check_epoch(
    store: &dyn ObjectStore,
    prefix: &Path,
    seq: u64,
    holder: &str,
    epoch: u64,
) -> Result<EpochCheck, Error> {
    let judge = |r: &LeaseRecord| {
        if r.holder == holder && r.epoch == epoch {
            EpochCheck::Confirmed
        } else {
            EpochCheck::Refuted(format!(
                "lease record {} names {} at epoch {}, not {holder} at epoch {epoch}",
                r.seq, r.holder, r.epoch
            ))
        }
    };
    if let Some(r) = read_record(store, prefix, seq).await? {
        return Ok(judge(&r));
    }
    let mut latest: Option<(u64, Path)> = None;
    let mut listing = store.list(Some(prefix));
    use futures::StreamExt;
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|source| Error::Store {
            op: "list",
            key: prefix.to_string(),
            source,
        })?;
        if let Some(s) = parse_key(prefix, &meta.location)
            && latest.as_ref().is_none_or(|(l, _)| s > *l)
        {
            latest = Some((s, meta.location));
        }
    }
    let Some((latest, _)) = latest else {
        return Ok(EpochCheck::Refuted(format!(
            "no lease record exists under {prefix}"
        )));
    };
    if seq > latest {
        return Ok(EpochCheck::Refuted(format!(
            "lease record {seq} was never written (the newest is {latest})"
        )));
    }
    match read_record(store, prefix, latest).await? {
        Some(r) => Ok(judge(&r)),
        None => Ok(EpochCheck::Refuted(format!(
            "lease record {seq} does not exist and {latest} vanished while read"
        ))),
    }
}

/// Read and parse record `seq`, at most [`MAX_RECORD_SIZE`] bytes; None when absent.
pub(crate) async fn read_record(
    store: &dyn ObjectStore,
    prefix: &Path,
    seq: u64,
) -> Result<Option<LeaseRecord>, Error> {
    let key = record_key(prefix, seq);
    let store_err = |source| Error::Store {
        op: "get",
        key: key.to_string(),
        source,
    };
    let got = match store.get(&key).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(e)),
    };
    if got.meta.size > MAX_RECORD_SIZE {
        return Err(Error::Malformed {
            key: key.to_string(),
            reason: format!(
                "{} bytes, more than the {MAX_RECORD_SIZE} a record may have",
                got.meta.size
            ),
        });
    }
    let body = got.bytes().await.map_err(store_err)?;
    if body.len() as u64 > MAX_RECORD_SIZE {
        return Err(Error::Malformed {
            key: key.to_string(),
            reason: format!("more than the {MAX_RECORD_SIZE} bytes a record may have"),
        });
    }
    LeaseRecord::parse(&key, seq, &body).map(Some)
}
