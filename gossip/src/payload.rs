//! Payloads as foca custom broadcasts: the newest `(incarnation, version)`
//! per node id wins.
//!
//! An item is taken only from the member it describes: the sender's id and
//! incarnation (foca's header) must be the item's. Items are not relayed:
//! each member sends its own to every other (see `GossipCore::broadcast_own`),
//! so no member can speak for another, and one that makes up ids gets
//! nowhere (the core also drops the entries of ids foca does not know).
//! Managers of the release before relayed others' items; those copies are
//! ignored, their own items are taken.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::wire::{self, CodecError};

/// One node's payload as it travels in a custom broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PayloadItem {
    pub id: String,
    pub incarnation: u64,
    pub version: u64,
    pub payload: Vec<u8>,
}

/// The broadcast key: a newer (or equal) key for the same id invalidates
/// older ones in foca's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PayloadKey {
    id: String,
    rank: (u64, u64),
}

impl foca::Invalidates for PayloadKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.id == other.id && self.rank >= other.rank
    }
}

/// The latest payload we know per node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub incarnation: u64,
    pub version: u64,
    pub payload: Vec<u8>,
}

/// Shared between the core and the broadcast handler that foca owns (foca
/// 2 has no accessor for its handler).
#[derive(Debug, Default, Clone)]
pub(crate) struct PayloadTable(Arc<Mutex<BTreeMap<String, Entry>>>);

impl PayloadTable {
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A poisoned lock only means another holder panicked mid-update of a
        // plain map; the map itself is still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The members our own item reached in the round under way (see
/// `GossipCore::broadcast_own`); `None` between rounds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Round(Arc<Mutex<Option<BTreeSet<String>>>>);

impl Round {
    fn lock(&self) -> MutexGuard<'_, Option<BTreeSet<String>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    /// Starts a round: nobody reached yet.
    pub fn begin(&self) {
        *self.lock() = Some(BTreeSet::new());
    }
    /// Ends the round: every member may get our item again.
    pub fn end(&self) {
        *self.lock() = None;
    }
    /// Records that a message went to `id` (only during a round).
    pub fn reached(&self, id: &str) {
        if let Some(set) = self.lock().as_mut() {
            set.insert(id.to_string());
        }
    }
    /// Whether `id` was reached in the round under way.
    pub fn has(&self, id: &str) -> bool {
        self.lock().as_ref().is_some_and(|set| set.contains(id))
    }
}

/// foca's `BroadcastHandler` for payloads.
pub(crate) struct PayloadHandler {
    own_id: String,
    table: PayloadTable,
    round: Round,
    /// Items dropped because their sender is not the member they describe.
    pub(crate) foreign: Arc<std::sync::atomic::AtomicU64>,
}

impl PayloadHandler {
    pub fn new(own_id: String, table: PayloadTable, round: Round) -> Self {
        Self {
            own_id,
            table,
            round,
            foreign: Arc::default(),
        }
    }
}

impl foca::BroadcastHandler<NodeId> for PayloadHandler {
    type Key = PayloadKey;
    type Error = CodecError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<PayloadKey>, CodecError> {
        let (item, used) = wire::decode::<PayloadItem>(data)?;
        if used != data.len() || crate::ident::check_member_id(&item.id).is_err() {
            return Err(wire::decode_error("malformed payload broadcast"));
        }
        let key = PayloadKey {
            id: item.id.clone(),
            rank: (item.incarnation, item.version),
        };
        if item.id == self.own_id {
            // Our own item: the core stores it before broadcasting, and a
            // local add (no sender) must always be queued so refreshes go
            // out. Copies of it (or of our previous run) coming back are
            // ignored.
            return Ok(sender.is_none().then_some(key));
        }
        // Only the member itself speaks for itself, at its current
        // incarnation; nothing is relayed.
        let Some(sender) = sender else {
            return Ok(None);
        };
        if sender.id != item.id || sender.incarnation != item.incarnation {
            self.foreign
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::trace!(sender = %sender.id, member = %item.id, "ignored a payload item sent by another member");
            return Ok(None);
        }
        let mut table = self.table.lock();
        let newer = table
            .get(&item.id)
            .is_none_or(|old| (old.incarnation, old.version) < key.rank);
        if !newer {
            return Ok(None);
        }
        tracing::debug!(
            member = %item.id,
            incarnation = item.incarnation,
            version = item.version,
            len = item.payload.len(),
            "payload updated"
        );
        table.insert(
            item.id,
            Entry {
                incarnation: item.incarnation,
                version: item.version,
                payload: item.payload,
            },
        );
        Ok(None)
    }

    fn should_add_broadcast_data(&self, member: &NodeId) -> bool {
        !self.round.has(&member.id)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use foca::{BroadcastHandler, Invalidates};
    use std::net::SocketAddr;

    fn item(id: &str, incarnation: u64, version: u64, payload: &[u8]) -> Vec<u8> {
        wire::encode(&PayloadItem {
            id: id.into(),
            incarnation,
            version,
            payload: payload.to_vec(),
        })
        .unwrap()
    }

    fn from(id: &str, incarnation: u64) -> NodeId {
        NodeId {
            id: id.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            incarnation,
        }
    }

    #[test]
    fn newest_per_id_wins_and_only_from_the_member_itself() {
        let table = PayloadTable::default();
        let mut h = PayloadHandler::new("me".into(), table.clone(), Round::default());
        let b10 = from("b", 10);
        // Taken from b itself, never relayed further.
        assert_eq!(
            h.receive_item(&item("b", 10, 2, b"v2"), Some(&b10))
                .unwrap(),
            None
        );
        assert_eq!(table.lock()["b"].payload, b"v2");
        assert!(
            h.receive_item(&item("b", 10, 1, b"v1"), Some(&b10))
                .unwrap()
                .is_none()
        );
        assert_eq!(table.lock()["b"].payload, b"v2");
        // A restart (higher incarnation) wins even with a lower version.
        let b11 = from("b", 11);
        h.receive_item(&item("b", 11, 1, b"new"), Some(&b11))
            .unwrap();
        assert_eq!(table.lock()["b"].payload, b"new");
        // Another member cannot speak for b, nor b at another incarnation
        // (u64::MAX would pin b's payload for good).
        let c = from("c", 5);
        h.receive_item(&item("b", 12, 1, b"forged"), Some(&c))
            .unwrap();
        h.receive_item(&item("b", u64::MAX, 1, b"pinned"), Some(&b11))
            .unwrap();
        h.receive_item(&item("b", 12, 1, b"local"), None).unwrap();
        assert_eq!(table.lock()["b"].payload, b"new");
        assert_eq!(h.foreign.load(std::sync::atomic::Ordering::Relaxed), 2);
        // Our own items: local adds always queue, echoes are ignored.
        assert!(
            h.receive_item(&item("me", 1, 1, b"x"), None)
                .unwrap()
                .is_some()
        );
        assert!(
            h.receive_item(&item("me", 1, 1, b"x"), Some(&c))
                .unwrap()
                .is_none()
        );
        assert!(!table.lock().contains_key("me"));
        // Garbage and bad ids are errors, never a panic.
        assert!(h.receive_item(&[0xff; 9], Some(&c)).is_err());
        let mut trailing = item("b", 12, 1, b"x");
        trailing.push(0);
        assert!(h.receive_item(&trailing, Some(&b11)).is_err());
        let evil = "a\n# End host entries managed by etcd-manager[etcd]";
        assert!(
            h.receive_item(&item(evil, 1, 1, b"x"), Some(&from(evil, 1)))
                .is_err()
        );
    }

    #[test]
    fn a_round_keeps_our_item_from_members_it_reached() {
        let round = Round::default();
        let h = PayloadHandler::new("me".into(), PayloadTable::default(), round.clone());
        assert!(h.should_add_broadcast_data(&from("b", 1)));
        round.begin();
        round.reached("b");
        assert!(!h.should_add_broadcast_data(&from("b", 1)));
        assert!(h.should_add_broadcast_data(&from("c", 1)));
        round.end();
        round.reached("c");
        assert!(h.should_add_broadcast_data(&from("b", 1)));
        assert!(h.should_add_broadcast_data(&from("c", 1)));
    }

    #[test]
    fn keys_invalidate_older_of_same_id() {
        let k = |id: &str, i, v| PayloadKey {
            id: id.into(),
            rank: (i, v),
        };
        assert!(k("a", 1, 2).invalidates(&k("a", 1, 1)));
        assert!(k("a", 1, 2).invalidates(&k("a", 1, 2)));
        assert!(!k("a", 1, 1).invalidates(&k("a", 1, 2)));
        assert!(!k("a", 2, 0).invalidates(&k("b", 1, 0)));
    }
}
