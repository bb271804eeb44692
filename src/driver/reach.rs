//! What the leader hears in gossip of the managers: what each said last
//! about its etcd, folded into the leader's memory (see
//! [`crate::core::memory`]), which keeps since when a manager that said it
//! serves has been out of reach (its etcd may serve on; a restore waits for it).

use super::Driver;
use super::payload::PeerPayload;
use crate::core::memory::{Fact, Heard, Said};

impl Driver {
    /// Fold what every manager gossip knows said last about its etcd.
    pub(super) fn hear_gossip(&mut self) {
        let heard: Vec<Heard> = self
            .gossip
            .members()
            .into_iter()
            .map(|mv| {
                let said = match mv.payload.as_deref().and_then(PeerPayload::decode) {
                    Some(p) if p.cluster_name == self.settings.cluster_name => match p.serving() {
                        Some((token, url)) => Said::Serving {
                            token: token.to_string(),
                            url,
                        },
                        None => Said::NotServing,
                    },
                    _ => Said::Nothing,
                };
                Heard {
                    alive: mv.state == gossip::MemberState::Alive,
                    id: mv.id,
                    said,
                }
            })
            .collect();
        self.remember(Fact::Gossip(&heard));
    }
}
