//! The datagram framing and the bincode 2 codec for foca.

use bytes::{Buf, BufMut};
use foca::{Header, Member};

use crate::identity::NodeId;

/// First byte of a datagram carrying a foca packet.
pub const TAG_FOCA: u8 = 0xF1;
/// First byte of a datagram carrying a hello (the sender's bincode
/// [`NodeId`]): "who are you?", sent to a seed whose id we do not know.
pub const TAG_HELLO: u8 = 0xF2;
/// First byte of the answer to a hello (the responder's bincode
/// [`NodeId`]); the receiver then announces itself to that identity with
/// foca, so it gets the responder's member list in foca's Feed.
pub const TAG_HELLO_ACK: u8 = 0xF3;

/// Most bytes bincode may claim while decoding one value; garbage length
/// prefixes fail fast instead of allocating.
const DECODE_LIMIT: usize = 64 * 1024;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
> {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes a value with the project's wire settings (bincode 2, standard).
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError(e.to_string()))
}

/// Decodes a value from the front of `bytes`; returns it and the bytes used.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError(e.to_string()))
}

/// A bincode encode/decode failure, or an invalid identity on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gossip wire codec: {0}")]
pub struct CodecError(String);

/// A codec error with a fixed message.
pub(crate) fn decode_error(message: &str) -> CodecError {
    CodecError(message.to_string())
}

/// foca's `Codec` on bincode 2 (serde, standard configuration).
///
/// Identities are checked on decode: a valid member id, and an incarnation
/// no higher than [`BincodeCodec::max_incarnation`] (incarnations start at
/// a manager's start time in unix milliseconds; one from far in the future
/// would outrank every real restart of that member for good).
#[derive(Debug, Clone, Default)]
pub struct BincodeCodec {
    max_incarnation: IncarnationBound,
}

/// The highest incarnation the codec accepts, shared with the core, which
/// raises it as its own time passes.
#[derive(Debug, Clone)]
pub struct IncarnationBound(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Default for IncarnationBound {
    fn default() -> Self {
        Self(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
            u64::MAX,
        )))
    }
}

impl IncarnationBound {
    /// The bound now.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Sets the bound.
    pub fn set(&self, max: u64) {
        self.0.store(max, std::sync::atomic::Ordering::Relaxed);
    }
}

impl BincodeCodec {
    /// A codec that refuses identities above `bound`.
    pub fn with_bound(bound: IncarnationBound) -> Self {
        Self {
            max_incarnation: bound,
        }
    }
    /// The highest incarnation accepted now.
    pub fn max_incarnation(&self) -> u64 {
        self.max_incarnation.get()
    }
}

impl BincodeCodec {
    fn put(bytes: &[u8], mut buf: impl BufMut) -> Result<(), CodecError> {
        if buf.remaining_mut() < bytes.len() {
            return Err(CodecError(format!(
                "{} bytes do not fit in the {} left in the packet",
                bytes.len(),
                buf.remaining_mut()
            )));
        }
        buf.put_slice(bytes);
        Ok(())
    }

    fn take<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, CodecError> {
        let (value, used) = decode::<T>(buf.chunk())?;
        buf.advance(used);
        Ok(value)
    }
}

/// An identity from the wire: its id must be a valid member id
/// ([`crate::ident::check_member_id`]) and its incarnation below the
/// codec's bound.
fn check_id(id: &NodeId, max_incarnation: u64) -> Result<(), CodecError> {
    if let Err(reason) = crate::ident::check_member_id(&id.id) {
        return Err(CodecError(format!(
            "identity whose id {reason} ({:?})",
            id.id.chars().take(40).collect::<String>()
        )));
    }
    if id.incarnation > max_incarnation {
        return Err(CodecError(format!(
            "identity {} with incarnation {}, beyond what any clock gives ({max_incarnation})",
            id.id, id.incarnation
        )));
    }
    Ok(())
}

impl foca::Codec<NodeId> for BincodeCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Self::put(&encode(header)?, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<NodeId>, CodecError> {
        let header: Header<NodeId> = Self::take(buf)?;
        let max = self.max_incarnation();
        check_id(&header.src, max)?;
        check_id(&header.dst, max)?;
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        Self::put(&encode(member)?, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<NodeId>, CodecError> {
        let member: Member<NodeId> = Self::take(buf)?;
        check_id(member.id(), self.max_incarnation())?;
        Ok(member)
    }
}

/// Frames a hello (`tag` = [`TAG_HELLO`]) or hello-ack ([`TAG_HELLO_ACK`])
/// datagram carrying `me`.
pub(crate) fn hello(tag: u8, me: &NodeId) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![tag];
    out.extend_from_slice(&encode(me)?);
    Ok(out)
}

/// Decodes the body of a hello or hello-ack datagram (after the tag). Trailing bytes are
/// an error; the identity is checked as the codec checks it.
pub(crate) fn decode_hello(body: &[u8], max_incarnation: u64) -> Result<NodeId, CodecError> {
    let (id, used) = decode::<NodeId>(body)?;
    if used != body.len() {
        return Err(CodecError(format!(
            "{} trailing bytes after hello",
            body.len() - used
        )));
    }
    check_id(&id, max_incarnation)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use foca::{Codec, Message, State};
    use std::net::SocketAddr;

    fn id(name: &str) -> NodeId {
        NodeId {
            id: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            incarnation: 1_700_000_000_000,
        }
    }

    #[test]
    fn header_and_member_roundtrip() {
        let mut codec = BincodeCodec::default();
        let header = Header {
            src: id("a"),
            src_incarnation: 3,
            dst: id("b"),
            message: Message::PingReq {
                target: id("c"),
                probe_number: 7,
            },
        };
        let member = Member::new(id("c"), 2, State::Suspect);
        let mut buf = Vec::new();
        codec.encode_header(&header, &mut buf).unwrap();
        codec.encode_member(&member, &mut buf).unwrap();
        let mut slice = &buf[..];
        assert_eq!(codec.decode_header(&mut slice).unwrap(), header);
        assert_eq!(codec.decode_member(&mut slice).unwrap(), member);
        assert!(slice.is_empty());
    }

    #[test]
    fn encode_refuses_when_full_and_writes_nothing() {
        let mut codec = BincodeCodec::default();
        let member = Member::alive(id("a-long-node-name"));
        let mut backing = Vec::new();
        let mut limited = (&mut backing).limit(4);
        assert!(codec.encode_member(&member, &mut limited).is_err());
        assert!(backing.is_empty());
    }

    #[test]
    fn garbage_and_empty_ids_are_rejected() {
        let mut codec = BincodeCodec::default();
        let mut garbage: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(codec.decode_header(&mut garbage).is_err());
        let empty = Member::alive(NodeId {
            id: String::new(),
            ..id("x")
        });
        let mut buf = Vec::new();
        codec.encode_member(&empty, &mut buf).unwrap();
        assert!(codec.decode_member(&mut &buf[..]).is_err());
        let framed = hello(TAG_HELLO, &id("a")).unwrap();
        assert_eq!(framed[0], TAG_HELLO);
        assert_eq!(decode_hello(&framed[1..], u64::MAX).unwrap(), id("a"));
        let mut long = framed[1..].to_vec();
        long.push(0);
        assert!(decode_hello(&long, u64::MAX).is_err());
    }
}
