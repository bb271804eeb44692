//! What the leader knows of managers it cannot reach: what each said last
//! in gossip about its etcd, and since when it has been out of reach while
//! that said it serves (their etcd may serve on; a restore waits for them).

use std::collections::BTreeSet;
use std::time::Instant;

use super::Driver;
use super::payload::PeerPayload;

/// What a manager said last in gossip about its etcd (kept across its
/// restarts: a new incarnation's payload takes a moment to arrive), and
/// since when it has been out of reach while that said it serves.
#[derive(Debug, Clone, Default)]
pub(super) struct LastWord {
    /// The cluster its etcd serves and the client URL, if it does.
    pub(super) serving: Option<(String, String)>,
    pub(super) out_since: Option<Instant>,
}

impl Driver {
    /// The managers out of reach (suspect or down in gossip, or not
    /// answering GetInfo: not among `answered`) that said last that their
    /// etcd serves a cluster that is not retired, with that client URL.
    /// Their etcd may still serve: a manager paused or cut off does not stop
    /// it, and a new leader has no other way to know.
    pub(super) fn last_seen_serving(
        &self,
        answered: &BTreeSet<String>,
        retired: &BTreeSet<String>,
    ) -> Vec<(String, String)> {
        self.last_words
            .iter()
            .filter(|(id, _)| !answered.contains(*id))
            .filter_map(|(id, w)| {
                let (token, url) = w.serving.as_ref()?;
                (!retired.contains(token)).then(|| (id.clone(), url.clone()))
            })
            .collect()
    }

    /// Keep what each manager in gossip said last about its etcd; forget
    /// the managers gossip no longer knows. One gossip shows alive is not
    /// out of reach (its time out of reach counts again from the next
    /// observation that misses it, not from an earlier term's).
    pub(super) fn remember_last_words(&mut self) {
        let members = self.gossip.members();
        self.last_words
            .retain(|id, _| members.iter().any(|mv| mv.id == *id));
        for mv in &members {
            if mv.state == gossip::MemberState::Alive
                && let Some(w) = self.last_words.get_mut(&mv.id)
            {
                w.out_since = None;
            }
            let Some(p) = mv.payload.as_deref().and_then(PeerPayload::decode) else {
                continue;
            };
            if p.cluster_name != self.settings.cluster_name {
                continue;
            }
            let serving = p.serving().map(|(t, url)| (t.to_string(), url));
            self.last_words.entry(mv.id.clone()).or_default().serving = serving;
        }
    }
}
