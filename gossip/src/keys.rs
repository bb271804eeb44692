//! The gossip keyring and the sealing of datagrams.
//!
//! With keys configured, every datagram is
//! `[SEALED_V1][24-byte nonce][XChaCha20-Poly1305 ciphertext of the plain datagram + 16-byte tag]`,
//! where the plain datagram is the framed packet of [`crate::wire`] (tag
//! byte + body) and the associated data is the fixed [`AAD`]. Packets are
//! sealed with the first key of the ring and opened with whichever key
//! works, so keys rotate without downtime: add the new key second on every
//! node, then move it first, then drop the old one.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};

use crate::error::Error;

/// Length of one gossip key in bytes.
pub const KEY_LEN: usize = 32;
/// First byte of a sealed datagram (the format version).
pub const SEALED_V1: u8 = 0x01;
/// Length of the random nonce that follows the version byte.
pub const NONCE_LEN: usize = 24;
/// Length of the authentication tag at the end of a sealed datagram.
pub const TAG_LEN: usize = 16;
/// Bytes sealing adds to a datagram: version, nonce and tag.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Associated data of every sealed datagram: binds packets to this protocol.
const AAD: &[u8] = b"etcd-manager-gossip-v1";

/// Standard base64, padding optional.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What a valid key line looks like (for error messages).
const KEY_LINE_HELP: &str = "each line holds one 32-byte key as 64 hex digits or standard base64 \
     (e.g. the output of `openssl rand -base64 32`); blank lines and lines starting with # are ignored";

/// A keyring of one or more 32-byte gossip keys.
///
/// Packets are sent sealed with the first key and accepted if any key
/// opens them. `Debug` never prints key material.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKeys {
    keys: Vec<[u8; KEY_LEN]>,
}

impl fmt::Debug for GossipKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GossipKeys")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl GossipKeys {
    /// A keyring; the first key is the sending key. An empty list is an
    /// error.
    pub fn new(keys: Vec<[u8; KEY_LEN]>) -> Result<Self, Error> {
        if keys.is_empty() {
            return Err(Error::InvalidConfig {
                reason: "the gossip keyring is empty; give at least one 32-byte key".to_string(),
            });
        }
        Ok(Self { keys })
    }

    /// Number of keys in the ring (at least 1).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a keyring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key packets are sealed with.
    pub fn sending_key(&self) -> &[u8; KEY_LEN] {
        // `new` refuses an empty list, so the first key exists.
        &self.keys[0]
    }

    /// All keys, the sending key first.
    pub fn keys(&self) -> &[[u8; KEY_LEN]] {
        &self.keys
    }

    /// Short, non-secret identifiers of the keys (in ring order) for logs:
    /// the first 4 bytes, in hex, of an XChaCha20-Poly1305 tag computed
    /// under the key over a fixed message. They tell keys apart without
    /// revealing them.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|key| {
                let cipher = XChaCha20Poly1305::new(&Key::from(*key));
                let mut nothing: [u8; 0] = [];
                match cipher.encrypt_inout_detached(
                    &XNonce::default(),
                    b"etcd-manager-gossip-key-fingerprint",
                    (&mut nothing[..]).into(),
                ) {
                    Ok(tag) => hex::encode(tag.get(..4).unwrap_or_default()),
                    Err(_) => "unknown".to_string(),
                }
            })
            .collect()
    }
}

/// Parses one key line: 64 hex digits, or standard base64 (with or without
/// padding) of exactly 32 bytes. Surrounding whitespace is ignored. The
/// error says what is wrong without repeating the line.
pub fn parse_key_line(line: &str) -> Result<[u8; KEY_LEN], String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("the line is empty".to_string());
    }
    if line.len() == 2 * KEY_LEN && line.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut key = [0u8; KEY_LEN];
        return match hex::decode_to_slice(line, &mut key) {
            Ok(()) => Ok(key),
            Err(_) => Err("the 64 characters are not valid hex".to_string()),
        };
    }
    match BASE64.decode(line) {
        Ok(bytes) => <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
            format!(
                "the key decodes (as base64) to {} bytes, but a key is exactly {KEY_LEN} bytes",
                bytes.len()
            )
        }),
        Err(_) => Err(format!(
            "the {} characters are neither 64 hex digits nor valid base64",
            line.chars().count()
        )),
    }
}

/// Parses the text of a key file (see [`load_key_file`]); `path` only
/// names the file in errors.
pub fn parse_key_file(path: &Path, text: &str) -> Result<GossipKeys, Error> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let key = parse_key_line(trimmed).map_err(|reason| Error::KeyFile {
            path: path.to_path_buf(),
            line: index + 1,
            reason: format!("{reason}; {KEY_LINE_HELP}"),
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(Error::KeyFile {
            path: path.to_path_buf(),
            line: 0,
            reason: format!("the file holds no key; {KEY_LINE_HELP}"),
        });
    }
    GossipKeys::new(keys)
}

/// Reads a gossip key file (for `--gossip-key-file`): one key per line, as
/// 64 hex digits or standard base64 (padding optional) of exactly 32
/// bytes; blank lines and lines starting with `#` are ignored; the first
/// key is the sending key. Errors name the file and the line, never the
/// key material. A file readable by group or others is logged as a
/// warning.
pub fn load_key_file(path: &Path) -> Result<GossipKeys, Error> {
    let read_err = |source| Error::KeyFileRead {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "gossip key file is readable by group or others; chmod 600 it");
        }
    }
    let keys = parse_key_file(path, &text)?;
    tracing::info!(path = %path.display(), keys = keys.len(), sending_key = %keys.fingerprints().first().map(String::as_str).unwrap_or_default(), "loaded gossip keys");
    Ok(keys)
}

/// Why a datagram could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Shorter than version + nonce + tag.
    TooShort,
    /// The first byte is not [`SEALED_V1`] (e.g. a plain packet).
    Version,
    /// No key of the ring authenticates it.
    NoKey,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooShort => "too short to be sealed",
            Self::Version => "not a sealed packet (unknown format version)",
            Self::NoKey => "no gossip key authenticates it",
        })
    }
}

/// The ciphers of a keyring, ready to seal and open datagrams.
pub(crate) struct Sealer {
    keys: GossipKeys,
    ciphers: Vec<XChaCha20Poly1305>,
}

impl Sealer {
    pub(crate) fn new(keys: GossipKeys) -> Self {
        let ciphers = keys
            .keys
            .iter()
            .map(|key| XChaCha20Poly1305::new(&Key::from(*key)))
            .collect();
        Self { keys, ciphers }
    }

    pub(crate) fn keys(&self) -> &GossipKeys {
        &self.keys
    }

    /// Seals `plain` with the sending key and `nonce`.
    pub(crate) fn seal(&self, plain: &[u8], nonce: [u8; NONCE_LEN]) -> Option<Vec<u8>> {
        let cipher = self.ciphers.first()?;
        let mut out = Vec::with_capacity(plain.len() + SEAL_OVERHEAD);
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = cipher
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                AAD,
                out.get_mut(1 + NONCE_LEN..)?.into(),
            )
            .ok()?;
        out.extend_from_slice(&tag);
        Some(out)
    }

    /// Opens a sealed datagram with the first key that authenticates it.
    pub(crate) fn open(&self, data: &[u8]) -> Result<Vec<u8>, OpenError> {
        if data.len() < SEAL_OVERHEAD {
            return Err(OpenError::TooShort);
        }
        let (&version, rest) = data.split_first().ok_or(OpenError::TooShort)?;
        if version != SEALED_V1 {
            return Err(OpenError::Version);
        }
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError::TooShort)?;
        let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| OpenError::TooShort)?;
        for cipher in &self.ciphers {
            let mut plain = ciphertext.to_vec();
            if cipher
                .decrypt_inout_detached(&nonce, AAD, plain.as_mut_slice().into(), &tag)
                .is_ok()
            {
                return Ok(plain);
            }
        }
        Err(OpenError::NoKey)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ring(keys: &[u8]) -> GossipKeys {
        GossipKeys::new(keys.iter().map(|b| [*b; KEY_LEN]).collect()).unwrap()
    }

    #[test]
    fn seal_open_roundtrip_and_rotation() {
        let k1 = Sealer::new(ring(&[1]));
        let k12 = Sealer::new(ring(&[1, 2]));
        let k21 = Sealer::new(ring(&[2, 1]));
        let k2 = Sealer::new(ring(&[2]));
        let plain = b"\xF1hello foca";
        let sealed = k1.seal(plain, [7; NONCE_LEN]).unwrap();
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert_eq!(sealed[0], SEALED_V1);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(k1.open(&sealed).unwrap(), plain);
        assert_eq!(k12.open(&sealed).unwrap(), plain);
        assert_eq!(k21.open(&sealed).unwrap(), plain);
        assert_eq!(k2.open(&sealed), Err(OpenError::NoKey));
        let from_k21 = k21.seal(plain, [8; NONCE_LEN]).unwrap();
        assert_eq!(k1.open(&from_k21), Err(OpenError::NoKey));
        assert_eq!(k12.open(&from_k21).unwrap(), plain);
        assert_eq!(k2.open(&from_k21).unwrap(), plain);
    }

    #[test]
    fn tampered_short_and_plain_packets_are_refused() {
        let s = Sealer::new(ring(&[3]));
        let sealed = s.seal(b"\xF1abc", [1; NONCE_LEN]).unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(s.open(&bad).is_err(), "flipped byte {i} accepted");
        }
        assert_eq!(s.open(&[]), Err(OpenError::TooShort));
        assert_eq!(
            s.open(&sealed[..SEAL_OVERHEAD - 1]),
            Err(OpenError::TooShort)
        );
        let mut plain = vec![0xF1];
        plain.extend_from_slice(&[0; 60]);
        assert_eq!(s.open(&plain), Err(OpenError::Version));
        // An empty plaintext still round-trips.
        let empty = s.seal(b"", [2; NONCE_LEN]).unwrap();
        assert_eq!(s.open(&empty).unwrap(), b"");
    }

    #[test]
    fn debug_and_fingerprints_hide_keys() {
        let keys = ring(&[0xAB, 0xCD]);
        let debug = format!("{keys:?}");
        assert!(!debug.to_lowercase().contains("ab"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
        let prints = keys.fingerprints();
        assert_eq!(prints.len(), 2);
        assert_ne!(prints[0], prints[1]);
        assert_eq!(prints[0].len(), 8);
        assert_eq!(prints, ring(&[0xAB, 0xCD]).fingerprints());
        assert!(GossipKeys::new(Vec::new()).is_err());
    }
}
