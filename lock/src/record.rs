//! The lease record: its key and its body.

use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::Error;

/// One lease record, stored at `<prefix>/<seq as 20 zero-padded digits>` and written
/// create-only. The highest `seq` under the prefix is the current state of the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    /// The node that wrote the record.
    pub holder: String,
    /// The fencing epoch: the same across renewals, one higher on every takeover.
    pub epoch: u64,
    /// The record's sequence number; equals the number in its key.
    pub seq: u64,
    /// Unique per write (`<holder>-<instance>-<counter>`), so a writer recognises its own
    /// record after a lost answer, and no two bodies are equal (S3 ETags are MD5s).
    pub nonce: String,
    /// The writer's lease duration in milliseconds; contenders wait at least this long.
    pub duration_ms: u64,
    /// True when the holder gave the lease up: a contender may take over at once.
    pub released: bool,
}

/// What a holder tells the other nodes (through gossip) after a write of its record
/// succeeded: record `seq` with this nonce exists. A node that receives it at `now`
/// knows the record existed at `now`, which is all a contender's wait needs
/// ([`crate::LeaseClient::note_claim`]), without reading the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseClaim {
    pub seq: u64,
    pub nonce: String,
    pub epoch: u64,
    pub duration_ms: u64,
}

/// The key of record `seq` under `prefix`.
pub fn record_key(prefix: &Path, seq: u64) -> Path {
    prefix.clone().join(format!("{seq:020}"))
}

/// The sequence number of a key directly under `prefix`, or None for anything else
/// (probes, other files, deeper paths).
pub(crate) fn parse_key(prefix: &Path, key: &Path) -> Option<u64> {
    let mut rest = key.prefix_match(prefix)?;
    let part = rest.next()?;
    if rest.next().is_some() {
        return None;
    }
    let name = part.as_ref();
    if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

impl LeaseRecord {
    /// Parse a record body read from `key` (record number `seq`).
    pub fn parse(key: &Path, seq: u64, body: &[u8]) -> Result<Self, Error> {
        let record: LeaseRecord = serde_json::from_slice(body).map_err(|e| Error::Malformed {
            key: key.to_string(),
            reason: format!("not a JSON lease record: {e}"),
        })?;
        if record.seq != seq {
            return Err(Error::Malformed {
                key: key.to_string(),
                reason: format!("its body says seq {} but its key says {seq}", record.seq),
            });
        }
        if record.holder.is_empty() || record.nonce.is_empty() {
            return Err(Error::Malformed {
                key: key.to_string(),
                reason: "holder or nonce is empty".to_string(),
            });
        }
        Ok(record)
    }

    /// The record as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, integers and booleans always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_round_trip_and_others_are_ignored() {
        let prefix = Path::from("cluster/lease");
        let key = record_key(&prefix, 42);
        assert_eq!(key.as_ref(), "cluster/lease/00000000000000000042");
        assert_eq!(parse_key(&prefix, &key), Some(42));
        assert_eq!(
            parse_key(&prefix, &record_key(&prefix, u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_key(&prefix, &prefix.clone().join("probe-x")), None);
        assert_eq!(parse_key(&prefix, &prefix.clone().join("42")), None);
        assert_eq!(parse_key(&prefix, &key.clone().join("deeper")), None);
        assert_eq!(parse_key(&Path::from("other"), &key), None);
        assert_eq!(
            parse_key(&prefix, &prefix.clone().join("99999999999999999999")),
            None
        );
    }

    #[test]
    fn body_round_trips_and_names_fields_in_camel_case() {
        let prefix = Path::from("p");
        let record = LeaseRecord {
            holder: "a".into(),
            epoch: 3,
            seq: 7,
            nonce: "a-1-2".into(),
            duration_ms: 10_000,
            released: false,
        };
        let json = record.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"durationMs\":10000"), "{text}");
        let key = record_key(&prefix, 7);
        assert_eq!(LeaseRecord::parse(&key, 7, &json).unwrap(), record);
        let err = LeaseRecord::parse(&record_key(&prefix, 8), 8, &json).unwrap_err();
        assert!(err.to_string().contains("p/00000000000000000008"), "{err}");
        let err = LeaseRecord::parse(&key, 7, b"{nope").unwrap_err();
        assert!(matches!(err, Error::Malformed { .. }), "{err}");
    }
}
