//! Parallel gzip for backups.
//!
//! A snapshot is cut into [`BLOCK_SIZE`] blocks; each block is compressed on
//! its own blocking thread into a complete gzip member, and the members are
//! written in order. Concatenated members are one valid gzip file (RFC 1952
//! section 2.2): `gzip -d`, zlib and Go's `compress/gzip` (upstream
//! etcd-manager) read them all. A block that does not compress (random or
//! already compressed values) is stored (deflate level 0) instead of spending
//! a core on it. Member sizes are recorded in our side file
//! ([`crate::BackupExtra::members`]), so a restore inflates members in
//! parallel too; without them (upstream's backups) it reads sequentially.

use std::io::{Read, Write};

/// Bytes of snapshot per gzip member.
pub const BLOCK_SIZE: usize = 1 << 20;
/// How much of a block the compressibility probe looks at.
const PROBE: usize = 64 << 10;
/// A block is stored unless its probe compresses to less than this share.
const STORE_ABOVE: f64 = 0.97;

/// Threads for compressing and inflating: the machine's cores, at most 8.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// One block as one complete gzip member; `true` if it was stored uncompressed.
pub fn compress_block(block: &[u8], level: u32) -> std::io::Result<(Vec<u8>, bool)> {
    compress_block_into(block, Vec::new(), level)
}

/// [`compress_block`] into a reused buffer (cleared first), so a long backup
/// does not allocate and free a block-sized buffer per block: with one malloc
/// arena per thread that churn alone kept tens of MiB resident.
pub fn compress_block_into(
    block: &[u8],
    mut out: Vec<u8>,
    level: u32,
) -> std::io::Result<(Vec<u8>, bool)> {
    let store = !compresses(block)?;
    let level = if store {
        flate2::Compression::none()
    } else {
        flate2::Compression::new(level)
    };
    out.clear();
    out.reserve(block.len() + block.len() / 64 + 64);
    let mut enc = flate2::write::GzEncoder::new(out, level);
    enc.write_all(block)?;
    Ok((enc.finish()?, store))
}

/// Whether a fast compression of the block's start saves anything worth it.
fn compresses(block: &[u8]) -> std::io::Result<bool> {
    let probe = &block[..block.len().min(PROBE)];
    if probe.len() < 512 {
        return Ok(true);
    }
    let mut enc = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(probe.len()),
        flate2::Compression::fast(),
    );
    enc.write_all(probe)?;
    let out = enc.finish()?;
    Ok((out.len() as f64) < (probe.len() as f64) * STORE_ABOVE)
}

/// Inflate exactly one gzip member of `raw_len` bytes: never more output
/// than that (plus one byte to notice), never a reservation beyond
/// [`crate::model::MAX_MEMBER_SIZE`].
pub fn inflate_member(member: &[u8], raw_len: u64) -> std::io::Result<Vec<u8>> {
    if raw_len > crate::model::MAX_MEMBER_SIZE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a gzip member may not declare {raw_len} bytes"),
        ));
    }
    let len = usize::try_from(raw_len).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(len);
    let dec = flate2::read::GzDecoder::new(member);
    dec.take(raw_len.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "a gzip member inflated to {} bytes, the index says {len}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// gunzip every member of `input` into `out`, returning the hex SHA-256 and
/// size of the output; fails once the output would exceed `limit` bytes (a
/// gzip bomb) without writing past it.
pub fn inflate_all(
    input: impl Read,
    out: &mut impl Write,
    limit: u64,
) -> std::io::Result<(String, u64)> {
    use sha2::Digest;
    let mut decoder = flate2::read::MultiGzDecoder::new(input);
    let mut hash = sha2::Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = decoder.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                format!("inflates to more than the {limit} bytes a snapshot may have"),
            ));
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    Ok((hex::encode(hash.finalize()), size))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn json_like(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(
                format!(
                    r#"{{"kind":"Pod","metadata":{{"name":"pod-{i}","namespace":"default","uid":"{:016x}"}},"spec":{{"containers":[{{"image":"registry.local/app:{}"}}]}}}}"#,
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    i % 17
                )
                .as_bytes(),
            );
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn random(n: usize, seed: u64) -> Vec<u8> {
        // xorshift: incompressible enough for deflate.
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn members_concatenate_into_one_gzip_file_any_reader_takes() {
        let a = json_like(300_000);
        let b = random(200_000, 7);
        let (ga, stored_a) = compress_block(&a, 1).unwrap();
        let (gb, stored_b) = compress_block(&b, 1).unwrap();
        assert!(!stored_a && stored_b, "json compresses, random is stored");
        assert!(ga.len() < a.len() / 3, "json: {} -> {}", a.len(), ga.len());
        assert!(
            gb.len() < b.len() + b.len() / 50,
            "stored overhead is small"
        );
        let file = [ga.clone(), gb.clone()].concat();
        // flate2's multi-member reader, as our sequential restore uses.
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&file[..])
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all, [a.clone(), b.clone()].concat());
        // Member by member, as the parallel restore does.
        assert_eq!(inflate_member(&ga, a.len() as u64).unwrap(), a);
        assert_eq!(inflate_member(&gb, b.len() as u64).unwrap(), b);
        let err = inflate_member(&ga, a.len() as u64 + 1).unwrap_err();
        assert!(err.to_string().contains("index says"), "{err}");
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn the_gzip_command_reads_multi_member_backups() {
        let a = json_like(100_000);
        let b = random(50_000, 3);
        let file = [
            compress_block(&a, 1).unwrap().0,
            compress_block(&b, 1).unwrap().0,
            compress_block(&[], 1).unwrap().0,
        ]
        .concat();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.backup.gz");
        std::fs::write(&path, &file).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .expect("gzip is on every Debian machine");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, [a, b].concat());
    }
}
