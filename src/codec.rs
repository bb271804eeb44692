//! bincode 2 with a decoding limit: the one way this package reads bincode
//! that came from outside (peer frames, gossip payloads).
//!
//! `with_limit::<N>()` makes bincode check every length it reads (strings,
//! vectors) against the bytes left in the budget *before* it allocates, so an
//! 11-byte message that claims a 2^42-byte string fails with an error instead
//! of aborting the process. The limit does not change the encoding.

use serde::Serialize;
use serde::de::DeserializeOwned;

type Config<const N: usize> = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<N>,
>;

fn config<const N: usize>() -> Config<N> {
    bincode::config::standard().with_limit::<N>()
}

/// Why bytes did not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A value we built does not encode (larger than the limit, or a type
    /// bincode cannot write): a bug in the sender, not in the bytes.
    #[error(
        "cannot encode the message: {0}; it is larger than the limit or not encodable (a bug: report it)"
    )]
    Encode(#[source] bincode::error::EncodeError),
    /// Bytes from outside that are not a message of this type: corrupt, cut
    /// short, claiming more than the limit, or from an incompatible release.
    #[error(
        "cannot decode the message: {0}; the sender is corrupt or runs an incompatible etcd-manager release"
    )]
    Decode(#[source] bincode::error::DecodeError),
}

/// Encode `value` (bincode 2, standard configuration).
pub fn encode<T: Serialize, const N: usize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config::<N>()).map_err(CodecError::Encode)
}

/// Decode a `T` from the front of `bytes`, claiming at most `N` bytes of
/// memory for it; trailing bytes are ignored (a newer sender may append
/// fields an older reader does not know).
pub fn decode<T: DeserializeOwned, const N: usize>(bytes: &[u8]) -> Result<T, CodecError> {
    bincode::serde::decode_from_slice(bytes, config::<N>())
        .map(|(v, _)| v)
        .map_err(CodecError::Decode)
}

/// [`decode`], and the bytes after the value (what a newer sender appended).
pub fn decode_with_rest<T: DeserializeOwned, const N: usize>(
    bytes: &[u8],
) -> Result<(T, &[u8]), CodecError> {
    let (v, used) =
        bincode::serde::decode_from_slice(bytes, config::<N>()).map_err(CodecError::Decode)?;
    Ok((v, bytes.get(used..).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_string_length_fails_instead_of_allocating() {
        // A varint u64 marker (253) and a length of 2^42, then nothing.
        let mut body = vec![253u8];
        body.extend_from_slice(&(1u64 << 42).to_le_bytes());
        let err = decode::<String, 1024>(&body).expect_err("must not decode");
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
        // 2^63: the capacity overflow that used to panic.
        let mut body = vec![253u8];
        body.extend_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(decode::<Vec<String>, 1024>(&body).is_err());
        // And the round trip still works.
        let bytes = encode::<_, 1024>(&"hello".to_string()).expect("encode");
        assert_eq!(decode::<String, 1024>(&bytes).expect("decode"), "hello");
    }
}
