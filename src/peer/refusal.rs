//! Why a manager refused a peer request, or tried and failed: typed on both
//! ends, so the leader decides by the kind, not by the words.
//!
//! On the wire a refusal travels as the release before this one sent it,
//! `Response::Failed(text)` in the envelope, followed by the typed
//! [`Refusal`] as a trailer after the envelope. A manager of the previous
//! release reads the text and ignores the trailer (its decoder ignores
//! trailing bytes); a refusal from such a manager has no trailer and is read
//! as [`Refusal::Untyped`], judged as before (retried).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// See the module's doc. Each text names what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The request names another cluster than this manager's `--cluster-name`.
    #[error("this node manages cluster '{ours}', not '{theirs}'")]
    OtherCluster { ours: String, theirs: String },
    /// The candidate's backup store is not this manager's: a configuration
    /// error no retry mends.
    #[error(
        "{candidate} uses another backup store (id {theirs}, ours {ours}); every manager's --backup-store must be the same shared store"
    )]
    OtherStore {
        candidate: String,
        theirs: String,
        ours: String,
    },
    /// This manager has not read the store's id yet (it just started, or
    /// the store does not answer).
    #[error("this node has not read the backup store's id yet")]
    StoreIdUnknown,
    /// This manager knows an alive manager with a lower id, which should
    /// lead instead.
    #[error("{lower} is alive and has a lower id than {candidate}")]
    NotCandidate { lower: String, candidate: String },
    /// With TLS: the caller's certificate names another node than the
    /// request does.
    #[error("{0}")]
    NotTheCaller(String),
    /// The fence's epoch is this node's highest, recorded for another leader.
    #[error("epoch {epoch} belongs to {holder}, not {leader}")]
    EpochOfAnother {
        epoch: u64,
        holder: String,
        leader: String,
    },
    /// The store's lease records do not confirm the fence (yet).
    #[error("epoch {epoch} of {leader} is not confirmed by the lease records in the store")]
    EpochUnconfirmed { epoch: u64, leader: String },
    /// The store's lease records contradict the fence.
    #[error("epoch not confirmed: {0}")]
    EpochRefuted(String),
    /// The store could not be asked about the fence's epoch.
    #[error("cannot check epoch {epoch} against the store: {reason}")]
    EpochUncheckable { epoch: u64, reason: String },
    /// A request of an older lease record of the same leader arrived after
    /// a newer one: it was held up on its way and is not applied.
    #[error(
        "sent under lease record {seq} of epoch {epoch}, after which this node admitted a request of record {newest}: it was held up on its way; not applied"
    )]
    Late { seq: u64, epoch: u64, newest: u64 },
    /// The request does not decode or does not pass its checks.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request did not finish within its own deadline.
    #[error("{kind} did not finish within {deadline:?}")]
    Deadline { kind: String, deadline: Duration },
    /// The request needs this node's etcd, and it runs none.
    #[error("this node runs no etcd")]
    NoEtcd,
    /// Another job holds this node (its words).
    #[error("{0}")]
    Busy(String),
    /// The node tried and failed (its error, in its words): a data dir, a
    /// process, etcd.
    #[error("{0}")]
    Failed(String),
    /// A manager of the release before typed refusals: its words only.
    #[error("{0}")]
    Untyped(String),
}

impl Refusal {
    /// Only an operator can mend it: the managers do not share one backup
    /// store, or are configured for different clusters. Everything else
    /// may pass (a fence not yet confirmed, a busy node, an etcd that is
    /// starting, an old manager's words).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Refusal::OtherStore { .. } | Refusal::OtherCluster { .. }
        )
    }

    /// The fence was refused (not the request's content): another leader
    /// holds or held the epoch, or the store cannot confirm it.
    pub fn is_fence(&self) -> bool {
        matches!(
            self,
            Refusal::EpochOfAnother { .. }
                | Refusal::EpochUnconfirmed { .. }
                | Refusal::EpochRefuted(_)
                | Refusal::EpochUncheckable { .. }
                | Refusal::Late { .. }
                | Refusal::NotTheCaller(_)
        )
    }
}

/// How the refusal inside `Response::Failed` is written on the wire: as its
/// text (what the previous release reads); the typed refusal follows the
/// envelope (see [`trailer`] and [`read_trailer`]).
pub(super) mod as_text {
    use super::Refusal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &Refusal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&r.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Refusal, D::Error> {
        String::deserialize(d).map(Refusal::Untyped)
    }
}

/// A trailer's first bytes: what tells it from anything else after an envelope.
const TRAILER_MAGIC: &[u8; 4] = b"RFS1";

/// The trailer to append after the envelope of a response that carries
/// `refusal` (empty if it does not encode, which leaves the text).
pub(super) fn trailer(refusal: &Refusal) -> Vec<u8> {
    match crate::codec::encode::<_, { super::MAX_FRAME }>(refusal) {
        Ok(body) => [TRAILER_MAGIC.as_slice(), &body].concat(),
        Err(_) => Vec::new(),
    }
}

/// The typed refusal in the bytes after an envelope, if they are a trailer.
pub(super) fn read_trailer(rest: &[u8]) -> Option<Refusal> {
    let body = rest.strip_prefix(TRAILER_MAGIC.as_slice())?;
    crate::codec::decode::<Refusal, { super::MAX_FRAME }>(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configuration_errors_need_an_operator() {
        let store = Refusal::OtherStore {
            candidate: "a".into(),
            theirs: "S".into(),
            ours: "T".into(),
        };
        assert!(store.needs_operator());
        assert!(
            Refusal::OtherCluster {
                ours: "a".into(),
                theirs: "b".into()
            }
            .needs_operator()
        );
        for passing in [
            Refusal::StoreIdUnknown,
            Refusal::NoEtcd,
            Refusal::Busy("a restore runs".into()),
            Refusal::Failed("etcd is starting".into()),
            Refusal::EpochUnconfirmed {
                epoch: 3,
                leader: "a".into(),
            },
            // An old manager's words are judged as before: retried, even
            // when they name another store.
            Refusal::Untyped(store.to_string()),
        ] {
            assert!(!passing.needs_operator(), "{passing:?}");
        }
    }

    #[test]
    fn fence_refusals_are_told_from_refusals_of_the_request() {
        assert!(
            Refusal::Late {
                seq: 1,
                epoch: 2,
                newest: 3
            }
            .is_fence()
        );
        assert!(Refusal::EpochRefuted("record 7 names b".into()).is_fence());
        assert!(!Refusal::NoEtcd.is_fence());
        assert!(!Refusal::BadRequest("x".into()).is_fence());
    }

    #[test]
    fn a_trailer_round_trips_and_anything_else_is_no_trailer() {
        let r = Refusal::Deadline {
            kind: "join_cluster".into(),
            deadline: Duration::from_secs(120),
        };
        assert_eq!(read_trailer(&trailer(&r)), Some(r));
        assert_eq!(read_trailer(b""), None);
        assert_eq!(read_trailer(b"RFS1\xff\xff\xff\xff\xff"), None);
        assert_eq!(read_trailer(b"garbage"), None);
    }
}
