//! Delta segments: what the leader saw happen to the keyspace after a full
//! backup, revision by revision, kept beside that backup in
//! `<backup>/etcd-manager-deltas/<start>-<end>.seg` so a restore can replay
//! them on top of its snapshot.
//!
//! A segment file is `EMDELTA1` (8 bytes), the SHA-256 of the rest (32 bytes),
//! then one gzip member of the bincode 2 (serde, standard configuration)
//! encoding of a [`DeltaSegment`] (encrypted, that gzip member as an age file:
//! see [`crate::crypt`]; the checksum is over what is stored). The checksum
//! is checked before anything is decrypted or inflated; inflating stops at a cap; decoding is bounded; the result must
//! pass [`DeltaSegment::validate`].

use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most bytes a stored segment file may have.
pub const MAX_SEGMENT_SIZE: u64 = 64 << 20;
/// Most bytes a segment may inflate to.
pub const MAX_SEGMENT_INFLATED: u64 = 512 << 20;

const MAGIC: &[u8; 8] = b"EMDELTA1";

/// bincode's decoding budget. bincode claims at most 8 bytes of it per byte
/// it reads (a one-byte varint becomes an i64), so every segment that
/// inflates to at most [`MAX_SEGMENT_INFLATED`] fits; the budget bounds what
/// a forged length makes it allocate.
const DECODE_LIMIT: usize = if (usize::MAX as u64) / 8 < MAX_SEGMENT_INFLATED {
    usize::MAX
} else {
    (8 * MAX_SEGMENT_INFLATED) as usize
};

/// Most operations one segment may hold. The leader flushes a segment at
/// 8 MiB of changes or [`FLUSH_OPS`], far below this.
pub const MAX_SEGMENT_OPS: u64 = 4 << 20;
/// The leader flushes a segment once it holds this many operations.
pub const FLUSH_OPS: u64 = 1 << 20;
/// A decoded segment may take at most this many bytes of memory for each
/// byte it inflated to, plus [`MEMORY_SLACK`]: an operation in memory is
/// larger than its encoding (an empty delete is 2 bytes encoded and
/// `size_of::<DeltaOp>()` in memory), so a small file could otherwise
/// decode into gigabytes.
pub const MEMORY_PER_INFLATED_BYTE: u64 = 8;
/// See [`MEMORY_PER_INFLATED_BYTE`].
pub const MEMORY_SLACK: u64 = 64 << 20;

/// Longest backup name a segment may carry (its encoding comes first, and
/// is decoded alone with this budget before the rest).
const MAX_BASE_LEN: usize = 255;

/// Why a segment breaks [`DeltaSegment::validate`]'s rules. A segment is
/// what it is: none of these goes away by trying again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSegment {
    #[error("it declares revisions {start}..={end}, not a range (1 <= start <= end)")]
    NotARange { start: i64, end: i64 },
    #[error("it declares revisions {start}..={end} but holds none")]
    Empty { start: i64, end: i64 },
    #[error("it declares revisions {start}..={end} but holds {first}..={last}")]
    WrongEnds {
        start: i64,
        end: i64,
        first: i64,
        last: i64,
    },
    #[error("revision {revision} follows revision {previous}: revisions must increase")]
    NotIncreasing { revision: i64, previous: i64 },
    #[error("revision {revision} has no operation")]
    NoOperation { revision: i64 },
    #[error("revision {revision} changes an empty key")]
    EmptyKey { revision: i64 },
    #[error("revision {revision} puts a key with lease {lease}, which cannot be")]
    NegativeLease { revision: i64, lease: i64 },
    #[error("lease {id} with TTL {ttl}: ids are at least 1 and TTLs at least 0")]
    BadLease { id: i64, ttl: i64 },
    #[error("lease {id} is listed twice")]
    DuplicateLease { id: i64 },
}

/// Why a segment file cannot be read ([`decode_segment`]): its header, its
/// checksum, its size or its encoding, or the segment it holds. Permanent:
/// the file was damaged, forged or written by something else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("{len} bytes, shorter than a segment's header: truncated")]
    Truncated { len: usize },
    #[error("not a delta segment (it does not start with EMDELTA1)")]
    NotASegment,
    #[error("checksum mismatch: the segment was changed or truncated after upload")]
    ChecksumMismatch,
    #[error("it is encrypted (age); read it through a store with the identity file")]
    Encrypted,
    /// The gzip stream is broken (the inflater's message).
    #[error("cannot inflate: {0}")]
    Inflate(String),
    #[error("inflates to more than the {max} bytes a segment may have")]
    TooLarge { max: u64 },
    #[error("does not start with a backup name")]
    NoBaseName,
    /// bincode refused the encoding (its message).
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error(
        "would take {memory} bytes of memory decoded, more than the {budget} allowed for {inflated} inflated bytes"
    )]
    TooMuchMemory {
        memory: u64,
        budget: u64,
        inflated: usize,
    },
    #[error("{0} bytes after the segment's end")]
    TrailingBytes(usize),
    #[error(transparent)]
    Invalid(#[from] InvalidSegment),
}

/// Why segments do not chain ([`check_chain`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("{start}..={end} is not a range of revisions")]
    NotARange { start: i64, end: i64 },
    #[error(
        "a gap between the full backup (revision {base}) and the first segment (starting at {first})"
    )]
    GapAfterBackup { base: i64, first: i64 },
    #[error("segments {s0}..={e0} and {s1}..={e1} overlap")]
    Overlap { s0: i64, e0: i64, s1: i64, e1: i64 },
    /// Revisions `end + 1 ..= next - 1` are missing.
    #[error(
        "a gap between the segment ending at {end} and the next (starting at {next}): revisions {}..={} are missing",
        .end + 1,
        .next - 1
    )]
    Gap { end: i64, next: i64 },
}

/// One change of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    /// `lease` is the key's lease id, 0 for none.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
}

/// The changes of one etcd revision (one transaction).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRevision {
    pub revision: i64,
    /// When the leader saw it: unix milliseconds, wall clock.
    pub at_ms: i64,
    pub ops: Vec<DeltaOp>,
}

/// A lease the segment's keys refer to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaLease {
    pub id: i64,
    /// Granted TTL in seconds; 0 when unknown.
    pub ttl: i64,
}

/// Revisions `start_revision..=end_revision` as the leader saw them, after
/// full backup `base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaSegment {
    /// The full backup's name.
    pub base: String,
    pub start_revision: i64,
    pub end_revision: i64,
    pub revisions: Vec<DeltaRevision>,
    pub leases: Vec<DeltaLease>,
}

impl DeltaSegment {
    /// The rules every segment keeps: `1 <= start <= end`; revisions strictly
    /// increasing from exactly `start` to exactly `end` (a segment holds what
    /// the leader saw, nothing empty at either end), each with at least one
    /// operation; keys non-empty; lease ids in operations `>= 0`; the lease
    /// table's ids `>= 1` and unique, TTLs `>= 0`.
    pub fn validate(&self) -> Result<(), InvalidSegment> {
        let (start, end) = (self.start_revision, self.end_revision);
        if start < 1 || start > end {
            return Err(InvalidSegment::NotARange { start, end });
        }
        let (Some(first), Some(last)) = (self.revisions.first(), self.revisions.last()) else {
            return Err(InvalidSegment::Empty { start, end });
        };
        if first.revision != start || last.revision != end {
            return Err(InvalidSegment::WrongEnds {
                start,
                end,
                first: first.revision,
                last: last.revision,
            });
        }
        // Strictly increasing from start to end: every revision is in range.
        for pair in self.revisions.windows(2) {
            if pair[1].revision <= pair[0].revision {
                return Err(InvalidSegment::NotIncreasing {
                    revision: pair[1].revision,
                    previous: pair[0].revision,
                });
            }
        }
        for r in &self.revisions {
            if r.ops.is_empty() {
                return Err(InvalidSegment::NoOperation {
                    revision: r.revision,
                });
            }
            for op in &r.ops {
                let (DeltaOp::Put { key, .. } | DeltaOp::Delete { key }) = op;
                if key.is_empty() {
                    return Err(InvalidSegment::EmptyKey {
                        revision: r.revision,
                    });
                }
                if let DeltaOp::Put { lease, .. } = op
                    && *lease < 0
                {
                    return Err(InvalidSegment::NegativeLease {
                        revision: r.revision,
                        lease: *lease,
                    });
                }
            }
        }
        let mut ids = std::collections::HashSet::with_capacity(self.leases.len());
        for l in &self.leases {
            if l.id < 1 || l.ttl < 0 {
                return Err(InvalidSegment::BadLease {
                    id: l.id,
                    ttl: l.ttl,
                });
            }
            if !ids.insert(l.id) {
                return Err(InvalidSegment::DuplicateLease { id: l.id });
            }
        }
        Ok(())
    }
}

/// The file of `seg`: magic, SHA-256, gzip of its bincode encoding.
pub fn encode_segment(seg: &DeltaSegment) -> Vec<u8> {
    encode(seg, None).0
}

/// [`encode_segment`] (encrypted to `to` if given), and how many bytes the
/// file inflates to.
pub(crate) fn encode(seg: &DeltaSegment, to: Option<&crate::Recipients>) -> (Vec<u8>, u64) {
    let mut gz =
        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(crate::GZIP_LEVEL));
    // Neither can fail: these types have no length-less sequence, and
    // writing into a Vec has no IO error.
    let inflated = bincode::serde::encode_into_std_write(seg, &mut gz, bincode::config::standard())
        .expect("a segment encodes");
    let mut gz = gz.finish().expect("a gzip into memory finishes");
    if let Some(to) = to {
        gz = to.encrypt(&gz);
    }
    let mut out = Vec::with_capacity(MAGIC.len() + 32 + gz.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&Sha256::digest(&gz));
    out.extend_from_slice(&gz);
    (out, inflated as u64)
}

/// Read a segment file: magic and checksum first, then inflate at most
/// `max_inflated` bytes (never more than [`MAX_SEGMENT_INFLATED`]), decode
/// and [`DeltaSegment::validate`].
pub fn decode_segment(bytes: &[u8], max_inflated: u64) -> Result<DeltaSegment, SegmentError> {
    let body = check_segment(bytes)?;
    if crate::crypt::is_age(body) {
        return Err(SegmentError::Encrypted);
    }
    decode_body(body, max_inflated)
}

/// A segment file's magic and checksum checked: the body (gzip, or an age
/// file of it).
pub(crate) fn check_segment(bytes: &[u8]) -> Result<&[u8], SegmentError> {
    let truncated = SegmentError::Truncated { len: bytes.len() };
    let Some((magic, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(truncated);
    };
    if magic != MAGIC {
        return Err(SegmentError::NotASegment);
    }
    let Some((sum, gz)) = rest.split_first_chunk::<32>() else {
        return Err(truncated);
    };
    if Sha256::digest(gz).as_slice() != sum {
        return Err(SegmentError::ChecksumMismatch);
    }
    Ok(gz)
}

/// Inflate (at most `max_inflated` bytes), decode and validate a segment's
/// gzip'd body.
pub(crate) fn decode_body(gz: &[u8], max_inflated: u64) -> Result<DeltaSegment, SegmentError> {
    let max = max_inflated.min(MAX_SEGMENT_INFLATED);
    let mut body = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .take(max.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| SegmentError::Inflate(e.to_string()))?;
    if body.len() as u64 > max {
        return Err(SegmentError::TooLarge { max });
    }
    let config = bincode::config::standard();
    // The name comes first: decoding it alone on a small budget keeps a
    // forged length from reserving the whole budget.
    bincode::serde::decode_from_slice::<String, _>(
        &body,
        config.with_limit::<{ MAX_BASE_LEN + 16 }>(),
    )
    .ok()
    .filter(|(base, _)| base.len() <= MAX_BASE_LEN)
    .ok_or(SegmentError::NoBaseName)?;
    // First count what the segment holds, keeping nothing: its operations
    // and the memory they would take decoded, both bounded.
    let (shape, _): (shape::Shape, usize) =
        bincode::serde::decode_from_slice(&body, config.with_limit::<DECODE_LIMIT>())
            .map_err(|e| SegmentError::Decode(e.to_string()))?;
    let budget = (body.len() as u64)
        .saturating_mul(MEMORY_PER_INFLATED_BYTE)
        .saturating_add(MEMORY_SLACK);
    if shape.memory > budget {
        return Err(SegmentError::TooMuchMemory {
            memory: shape.memory,
            budget,
            inflated: body.len(),
        });
    }
    let (seg, used): (DeltaSegment, usize) =
        bincode::serde::decode_from_slice(&body, config.with_limit::<DECODE_LIMIT>())
            .map_err(|e| SegmentError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(SegmentError::TrailingBytes(body.len() - used));
    }
    seg.validate()?;
    Ok(seg)
}

/// A segment's shape, decoded without keeping its operations: how many there
/// are (at most [`MAX_SEGMENT_OPS`], else decoding stops at once) and the
/// memory the whole segment would take decoded.
mod shape {
    use std::fmt;
    use std::mem::size_of;

    use serde::Deserialize;
    use serde::de::{self, Deserializer, SeqAccess, Visitor};

    use super::{DeltaLease, DeltaOp, DeltaRevision, MAX_SEGMENT_OPS};

    /// Memory of the decoded segment (bytes), and its operation count.
    #[derive(Debug, Default)]
    pub(super) struct Shape {
        pub memory: u64,
    }

    #[derive(Deserialize)]
    struct Fields {
        base: String,
        _start_revision: i64,
        _end_revision: i64,
        revisions: Revisions,
        leases: Leases,
    }

    impl<'de> Deserialize<'de> for Shape {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let f = Fields::deserialize(d)?;
            Ok(Shape {
                memory: (f.base.len() as u64)
                    .saturating_add(f.revisions.memory)
                    .saturating_add(f.leases.0),
            })
        }
    }

    /// The revisions' memory (their structs, operations and bytes).
    struct Revisions {
        memory: u64,
    }

    impl<'de> Deserialize<'de> for Revisions {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Revisions;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a list of revisions")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Revisions, A::Error> {
                    let (mut memory, mut ops) = (0u64, 0u64);
                    while let Some(r) = seq.next_element::<Revision>()? {
                        ops = ops.saturating_add(r.ops.count);
                        if ops > MAX_SEGMENT_OPS {
                            return Err(de::Error::custom(format!(
                                "more than {MAX_SEGMENT_OPS} operations"
                            )));
                        }
                        memory = memory
                            .saturating_add(size_of::<DeltaRevision>() as u64)
                            .saturating_add(r.ops.memory);
                    }
                    Ok(Revisions { memory })
                }
            }
            d.deserialize_seq(V)
        }
    }

    #[derive(Deserialize)]
    struct Revision {
        _revision: i64,
        _at_ms: i64,
        ops: Ops,
    }

    /// One revision's operations: their count and memory.
    struct Ops {
        count: u64,
        memory: u64,
    }

    impl<'de> Deserialize<'de> for Ops {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Ops;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a list of operations")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ops, A::Error> {
                    let (mut count, mut memory) = (0u64, 0u64);
                    // Each operation is decoded and dropped: only one lives at a time.
                    while let Some(op) = seq.next_element::<DeltaOp>()? {
                        count += 1;
                        if count > MAX_SEGMENT_OPS {
                            return Err(de::Error::custom(format!(
                                "more than {MAX_SEGMENT_OPS} operations in one revision"
                            )));
                        }
                        let bytes = match &op {
                            DeltaOp::Put { key, value, .. } => key.len() + value.len(),
                            DeltaOp::Delete { key } => key.len(),
                        };
                        memory = memory
                            .saturating_add(size_of::<DeltaOp>() as u64)
                            .saturating_add(bytes as u64);
                    }
                    Ok(Ops { count, memory })
                }
            }
            d.deserialize_seq(V)
        }
    }

    /// The lease table's memory.
    struct Leases(u64);

    impl<'de> Deserialize<'de> for Leases {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Leases;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a list of leases")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Leases, A::Error> {
                    let mut memory = 0u64;
                    while seq.next_element::<DeltaLease>()?.is_some() {
                        memory = memory.saturating_add(size_of::<DeltaLease>() as u64);
                    }
                    Ok(Leases(memory))
                }
            }
            d.deserialize_seq(V)
        }
    }
}

/// `<start>-<end>.seg`, both 20 digits (so names sort by revision).
pub fn segment_file_name(start: i64, end: i64) -> String {
    format!("{start:020}-{end:020}.seg")
}

/// The range of a name [`segment_file_name`] wrote; None for anything else.
pub fn parse_segment_file_name(name: &str) -> Option<(i64, i64)> {
    let (start, end) = name.strip_suffix(".seg")?.split_once('-')?;
    let num = |s: &str| {
        (s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let (start, end) = (num(start)?, num(end)?);
    (1 <= start && start <= end).then_some((start, end))
}

/// Whether `ranges` (in any order) chain without gap or overlap, and, with
/// the full backup's revision, whether the first follows the backup. The
/// backup's revision is read before its snapshot is taken, so the first
/// segment may start at or before `base_revision + 1`.
pub fn check_chain(base_revision: Option<i64>, ranges: &[(i64, i64)]) -> Result<(), ChainError> {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    if let Some(&(start, end)) = sorted.iter().find(|(s, e)| *s < 1 || s > e) {
        return Err(ChainError::NotARange { start, end });
    }
    if let (Some(base), Some(&(first, _))) = (base_revision, sorted.first())
        && first > base.saturating_add(1)
    {
        return Err(ChainError::GapAfterBackup { base, first });
    }
    for pair in sorted.windows(2) {
        let ((s0, e0), (s1, e1)) = (pair[0], pair[1]);
        if s1 <= e0 {
            return Err(ChainError::Overlap { s0, e0, s1, e1 });
        }
        if s1 - 1 != e0 {
            return Err(ChainError::Gap { end: e0, next: s1 });
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    pub(crate) fn segment(base: &str, start: i64, end: i64) -> DeltaSegment {
        DeltaSegment {
            base: base.into(),
            start_revision: start,
            end_revision: end,
            revisions: (start..=end)
                .map(|r| DeltaRevision {
                    revision: r,
                    at_ms: 1_704_067_200_000 + r,
                    ops: vec![
                        DeltaOp::Put {
                            key: format!("/registry/pods/p{r}").into_bytes(),
                            value: vec![b'v'; (r % 50) as usize],
                            lease: 7,
                        },
                        DeltaOp::Delete {
                            key: format!("/registry/events/e{r}").into_bytes(),
                        },
                    ],
                })
                .collect(),
            leases: vec![DeltaLease { id: 7, ttl: 60 }],
        }
    }

    fn with_checksum(body: &[u8]) -> Vec<u8> {
        [MAGIC.as_slice(), Sha256::digest(body).as_slice(), body].concat()
    }

    /// Two million empty deletes: under the operation cap, but 112 MB of
    /// memory for 4 MB inflated, past the budget (8 bytes each, plus 64 MiB).
    #[test]
    fn a_segment_past_its_memory_budget_is_refused() {
        let seg = DeltaSegment {
            base: "b".into(),
            start_revision: 1,
            end_revision: 1,
            revisions: vec![DeltaRevision {
                revision: 1,
                at_ms: 0,
                ops: vec![DeltaOp::Delete { key: vec![] }; 2_000_000],
            }],
            leases: vec![],
        };
        let (bytes, inflated) = encode(&seg, None);
        assert!(inflated < 5_000_000);
        let err = decode_segment(&bytes, MAX_SEGMENT_INFLATED).unwrap_err();
        assert!(matches!(err, SegmentError::TooMuchMemory { .. }), "{err}");
        assert!(err.to_string().contains("bytes of memory decoded"), "{err}");
    }

    #[test]
    fn round_trip() {
        let seg = segment("2024-01-01T00:00:00Z-000001", 10, 40);
        let (bytes, inflated) = encode(&seg, None);
        assert_eq!(&bytes[..8], b"EMDELTA1");
        let plain = bincode::serde::encode_to_vec(&seg, bincode::config::standard()).unwrap();
        assert_eq!(inflated, plain.len() as u64);
        assert_eq!(decode_segment(&bytes, MAX_SEGMENT_INFLATED).unwrap(), seg);
    }

    #[test]
    fn any_flipped_byte_fails_the_checksum() {
        let bytes = encode_segment(&segment("b", 1, 3));
        for i in 8..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let err = decode_segment(&bad, MAX_SEGMENT_INFLATED)
                .unwrap_err()
                .to_string();
            assert!(err.contains("checksum mismatch"), "byte {i}: {err}");
        }
    }

    #[test]
    fn truncation_and_wrong_magic_fail() {
        let bytes = encode_segment(&segment("b", 1, 3));
        for len in [0, 5, 8, 39, 40, bytes.len() - 1] {
            let err = decode_segment(&bytes[..len], MAX_SEGMENT_INFLATED)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("truncated") || err.contains("checksum mismatch"),
                "{len}: {err}"
            );
        }
        let mut bad = bytes.clone();
        bad[..8].copy_from_slice(b"EMDELTA2");
        let err = decode_segment(&bad, MAX_SEGMENT_INFLATED)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a delta segment"), "{err}");
    }

    #[test]
    fn an_inflate_bomb_is_refused() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 8 << 20]).unwrap();
        let bytes = with_checksum(&gz.finish().unwrap());
        assert!(bytes.len() < 64 << 10);
        let err = decode_segment(&bytes, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("more than the 1048576 bytes"), "{err}");
    }

    #[test]
    fn a_forged_length_or_trailing_bytes_fail_without_panic() {
        let gzip = |body: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(body).unwrap();
            with_checksum(&gz.finish().unwrap())
        };
        // A varint u64 marker and a base name of 2^42 bytes.
        let mut forged = vec![253u8];
        forged.extend_from_slice(&(1u64 << 42).to_le_bytes());
        let err = decode_segment(&gzip(&forged), MAX_SEGMENT_INFLATED)
            .unwrap_err()
            .to_string();
        assert!(err.contains("backup name"), "{err}");
        // A revision list claiming 2^60 entries.
        let seg = segment("b", 1, 1);
        let mut body = bincode::serde::encode_to_vec(&seg, bincode::config::standard()).unwrap();
        let at = 1 + 1 + 1 + 1; // base "b" (len + 1 byte), start, end
        body.truncate(at);
        body.push(253);
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let err = decode_segment(&gzip(&body), MAX_SEGMENT_INFLATED)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot decode"), "{err}");
        // Trailing bytes after a valid encoding.
        let mut body = bincode::serde::encode_to_vec(&seg, bincode::config::standard()).unwrap();
        body.push(0);
        let err = decode_segment(&gzip(&body), MAX_SEGMENT_INFLATED)
            .unwrap_err()
            .to_string();
        assert!(err.contains("after the segment's end"), "{err}");
    }

    #[test]
    fn decoding_validates() {
        let mut seg = segment("b", 1, 3);
        seg.leases.push(DeltaLease { id: 7, ttl: 1 });
        let bytes = encode_segment(&seg);
        let err = decode_segment(&bytes, MAX_SEGMENT_INFLATED)
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn validate_catches_each_rule() {
        let ok = segment("b", 5, 8);
        assert_eq!(ok.validate(), Ok(()));
        let check = |change: &dyn Fn(&mut DeltaSegment), want: &str| {
            let mut s = ok.clone();
            change(&mut s);
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?}: {err}");
        };
        check(&|s| s.start_revision = 9, "not a range");
        check(
            &|s| {
                *s = segment("b", 0, 2);
            },
            "not a range",
        );
        check(&|s| s.revisions.clear(), "holds none");
        check(&|s| s.start_revision = 4, "holds 5..=8");
        check(&|s| s.end_revision = 9, "holds 5..=8");
        check(&|s| s.revisions.swap(1, 2), "must increase");
        check(&|s| s.revisions[2].revision = 6, "must increase");
        check(
            &|s| s.revisions[1].ops.clear(),
            "revision 6 has no operation",
        );
        check(
            &|s| s.revisions[0].ops[1] = DeltaOp::Delete { key: vec![] },
            "empty key",
        );
        check(
            &|s| {
                s.revisions[0].ops[0] = DeltaOp::Put {
                    key: vec![],
                    value: vec![1],
                    lease: 0,
                }
            },
            "empty key",
        );
        check(
            &|s| {
                s.revisions[3].ops[0] = DeltaOp::Put {
                    key: b"k".to_vec(),
                    value: vec![],
                    lease: -1,
                }
            },
            "lease -1",
        );
        check(
            &|s| s.leases.push(DeltaLease { id: 7, ttl: 5 }),
            "listed twice",
        );
        check(&|s| s.leases[0].ttl = -1, "TTL -1");
        check(&|s| s.leases[0].id = 0, "lease 0");
    }

    #[test]
    fn segment_names_are_strict() {
        let name = segment_file_name(3, 1_000_000_007);
        assert_eq!(name, "00000000000000000003-00000000001000000007.seg");
        assert_eq!(parse_segment_file_name(&name), Some((3, 1_000_000_007)));
        let max = segment_file_name(1, i64::MAX);
        assert_eq!(parse_segment_file_name(&max), Some((1, i64::MAX)));
        for bad in [
            "00000000000000000003-00000000000000000007",
            "00000000000000000003-00000000000000000007.seg.tmp",
            "0000000000000000003-00000000000000000007.seg",
            "00000000000000000003-000000000000000000007.seg",
            "00000000000000000000-00000000000000000007.seg",
            "00000000000000000008-00000000000000000007.seg",
            "+0000000000000000003-00000000000000000007.seg",
            "99999999999999999999-99999999999999999999.seg",
            "00000000000000000003_00000000000000000007.seg",
            "x.seg",
            "",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn chains() {
        assert_eq!(check_chain(Some(100), &[]), Ok(()));
        assert_eq!(check_chain(None, &[(5, 9)]), Ok(()));
        // Out of order is fine; the first may start before the backup's revision.
        assert_eq!(
            check_chain(Some(100), &[(121, 130), (90, 120), (131, 131)]),
            Ok(())
        );
        assert_eq!(check_chain(Some(100), &[(101, 101)]), Ok(()));
        let err = check_chain(Some(100), &[(102, 110)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "a gap between the full backup (revision 100) and the first segment (starting at 102)"
        );
        let err = check_chain(None, &[(1, 10), (12, 20)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("revisions 11..=11 are missing"), "{err}");
        let err = check_chain(None, &[(1, 10), (10, 20)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("overlap"), "{err}");
        let err = check_chain(None, &[(1, 10), (1, 10)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("overlap"), "{err}");
        let err = check_chain(None, &[(5, 4)]).unwrap_err().to_string();
        assert!(err.contains("not a range"), "{err}");
        let err = check_chain(None, &[(0, 4)]).unwrap_err().to_string();
        assert!(err.contains("not a range"), "{err}");
    }
}
