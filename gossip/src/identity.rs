use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's identity on the gossip wire.
///
/// foca's `Identity::Addr` is the id: two identities with the same id are
/// the same node, and the higher incarnation wins the conflict. The
/// incarnation starts at the caller's wall-clock millis, so a restarted node
/// replaces its previous run; `renew` (used by foca to rejoin after being
/// declared down) bumps it by one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Stable node id.
    pub id: String,
    /// Address the node advertises (where its UDP socket is reached).
    pub addr: SocketAddr,
    /// Incarnation: start millis, plus one per rejoin.
    pub incarnation: u64,
}

impl foca::Identity for NodeId {
    type Addr = String;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            id: self.id.clone(),
            addr: self.addr,
            incarnation: self.incarnation.checked_add(1)?,
        })
    }

    fn addr(&self) -> String {
        self.id.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn node(incarnation: u64) -> NodeId {
        NodeId {
            id: "a".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            incarnation,
        }
    }

    #[test]
    fn renew_bumps_and_wins() {
        let old = node(5);
        let new = old.renew().expect("renewable");
        assert_eq!(new.incarnation, 6);
        assert_eq!(new.addr(), old.addr());
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
        assert!(node(u64::MAX).renew().is_none());
    }
}
