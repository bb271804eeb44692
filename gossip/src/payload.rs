//! Payloads as foca custom broadcasts: the newest `(incarnation, version)`
//! per node id wins.

use std::collections::BTreeMap;
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

/// foca's `BroadcastHandler` for payloads.
pub(crate) struct PayloadHandler {
    own_id: String,
    table: PayloadTable,
}

impl PayloadHandler {
    pub fn new(own_id: String, table: PayloadTable) -> Self {
        Self { own_id, table }
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
        if used != data.len() || item.id.is_empty() {
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
        Ok(Some(key))
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

    fn sender() -> NodeId {
        NodeId {
            id: "other".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            incarnation: 1,
        }
    }

    #[test]
    fn newest_per_id_wins() {
        let table = PayloadTable::default();
        let mut h = PayloadHandler::new("me".into(), table.clone());
        let s = sender();
        assert!(
            h.receive_item(&item("b", 10, 2, b"v2"), Some(&s))
                .unwrap()
                .is_some()
        );
        assert!(
            h.receive_item(&item("b", 10, 1, b"v1"), Some(&s))
                .unwrap()
                .is_none()
        );
        assert!(
            h.receive_item(&item("b", 10, 2, b"v2"), Some(&s))
                .unwrap()
                .is_none()
        );
        assert_eq!(table.lock()["b"].payload, b"v2");
        // A restart (higher incarnation) wins even with a lower version.
        assert!(
            h.receive_item(&item("b", 11, 1, b"new"), Some(&s))
                .unwrap()
                .is_some()
        );
        assert_eq!(table.lock()["b"].payload, b"new");
        // Our own items: local adds always queue, echoes are ignored.
        assert!(
            h.receive_item(&item("me", 1, 1, b"x"), None)
                .unwrap()
                .is_some()
        );
        assert!(
            h.receive_item(&item("me", 1, 1, b"x"), Some(&s))
                .unwrap()
                .is_none()
        );
        assert!(!table.lock().contains_key("me"));
        // Garbage is an error, never a panic.
        assert!(h.receive_item(&[0xff; 9], Some(&s)).is_err());
        let mut trailing = item("b", 12, 1, b"x");
        trailing.push(0);
        assert!(h.receive_item(&trailing, Some(&s)).is_err());
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
