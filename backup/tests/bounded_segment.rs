//! A delta segment crafted to decode into far more memory than it inflates
//! to (issue 30): the review's was 519 KB with a valid checksum that
//! inflated under the cap into hundreds of millions of empty deletes, about
//! 14 GiB decoded. This one is the same at a fifth of the size (100 MB
//! inflated, 2.8 GB decoded): it is refused, and the process's peak memory
//! stays near the inflated size. Alone in its test binary, so the peak is
//! this test's own.
#![allow(clippy::unwrap_used)]

use std::io::Write;

use sha2::{Digest, Sha256};

/// bincode 2's standard varint of an unsigned number.
fn varint(n: u64, out: &mut Vec<u8>) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xffff => {
            out.push(251);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(252);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        _ => {
            out.push(253);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// The process's peak resident set (VmHWM).
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn a_segment_that_would_decode_into_gigabytes_is_refused_with_bounded_memory() {
    // Header: base name, start 1, end 1, one revision (1, at 0) holding
    // `ops` operations, each an empty delete (variant 1, key length 0).
    let ops: u64 = 50_000_000;
    let mut head = vec![];
    let base = b"2026-12-07T00:00:00Z-000001";
    varint(base.len() as u64, &mut head);
    head.extend_from_slice(base);
    for zigzag in [2u64, 2] {
        varint(zigzag, &mut head); // start 1, end 1
    }
    varint(1, &mut head); // one revision
    varint(2, &mut head); // revision 1
    varint(0, &mut head); // at 0
    varint(ops, &mut head);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&head).unwrap();
    let chunk = [1u8, 0].repeat(1 << 20);
    let mut left = ops;
    while left > 0 {
        let n = left.min(1 << 20);
        gz.write_all(&chunk[..(n * 2) as usize]).unwrap();
        left -= n;
    }
    gz.write_all(&[0]).unwrap(); // no lease
    let body = gz.finish().unwrap();
    let inflated = head.len() as u64 + 2 * ops + 1;
    assert!(
        inflated <= backup::MAX_SEGMENT_INFLATED,
        "inflates under the cap"
    );
    let file = [
        b"EMDELTA1".as_slice(),
        Sha256::digest(&body).as_slice(),
        &body,
    ]
    .concat();
    assert!(file.len() < 1_000_000, "a small file: {} bytes", file.len());
    let decoded_size = ops * std::mem::size_of::<backup::DeltaOp>() as u64;
    assert!(
        decoded_size > 2 << 30,
        "would decode into {decoded_size} bytes"
    );

    let before = peak_rss_bytes();
    let err = backup::decode_segment(&file, backup::MAX_SEGMENT_INFLATED)
        .unwrap_err()
        .to_string();
    let peak = peak_rss_bytes();
    assert!(err.contains("operations"), "{err}");
    // The inflated body (100 MB) is held while it is counted, nothing more.
    assert!(
        peak.saturating_sub(before) < inflated + (256 << 20),
        "peak grew by {} bytes decoding a {inflated}-byte body",
        peak.saturating_sub(before)
    );
}
