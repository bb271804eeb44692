//! The leader's memory: what it has learnt across passes that one pass's
//! observation cannot show (since when a member has been unhealthy or
//! silent, what an unreachable manager said last, which checks ran and
//! when, which restore commands it refused, which restored clusters it
//! cleared). A fold of what the driver observes and does:
//! `memory = memory.fold(&fact, now)`, pure, tested without IO; the
//! controller reads it through the [`Observation`](crate::controller::Observation)
//! the driver builds from it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::controller::{ClusterView, PeerView, SettingsCheck, V2StoreCheck};

/// A failed v2 store check is run again after this long.
pub const V2STORE_RETRY: Duration = Duration::from_secs(60);
/// How long a peer's answer about its etcd settings is trusted: the manager
/// may restart with other settings, so the answer is asked again after this
/// (the node also refuses a move its settings would not survive).
pub const SETTINGS_RECHECK: Duration = Duration::from_secs(60);

/// What a manager said in gossip about its etcd, as the driver decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// No payload of this cluster (not yet published, another cluster's, unreadable).
    Nothing,
    /// Its etcd does not serve.
    NotServing,
    /// Its etcd serves the cluster `token` at client URL `url`.
    Serving { token: String, url: String },
}

/// One manager gossip knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub id: String,
    /// Gossip holds it alive now.
    pub alive: bool,
    pub said: Said,
}

/// What a fold takes in.
#[derive(Debug, Clone, Copy)]
pub enum Fact<'a> {
    /// Every manager gossip knows now (those it forgot are forgotten here too).
    Gossip(&'a [Heard]),
    /// One pass's observation: the managers that answered the peer API,
    /// the retired clusters' tokens, the etcd cluster as its members showed
    /// it (None: no member answered), and the restore commands still
    /// stored, by (command, backup).
    Pass {
        answered: &'a BTreeSet<String>,
        retired: &'a BTreeSet<String>,
        cluster: Option<&'a ClusterView>,
        commands: &'a [(String, String)],
    },
    /// A peer's v2 store check for the cluster `token`.
    V2StoreChecked {
        peer: &'a str,
        token: &'a str,
        check: &'a V2StoreCheck,
    },
    /// A peer's answer whether its etcd settings survive `version`.
    SettingsChecked {
        peer: &'a str,
        version: &'a str,
        check: &'a SettingsCheck,
    },
    /// This leader refused restore `command` of `backup` (it stays queued
    /// until deleted, and is judged anew if its name comes back for another backup).
    Refused {
        command: &'a str,
        backup: &'a str,
        reason: &'a str,
    },
    /// The restored cluster `token`'s `--restore-clear-prefix` keys are gone.
    PrefixesCleared { token: &'a str },
    /// This manager took the lease: it gives every member a full grace
    /// period (unhealthy counts from its own first pass; silence, which
    /// any leader sees the same, keeps counting).
    BecameLeader,
}

/// What a manager said last in gossip about its etcd (kept across its
/// restarts: a new incarnation's payload takes a moment to arrive), and
/// since when it has been out of reach while that said it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LastWord {
    /// The cluster its etcd serves and the client URL, if it does.
    serving: Option<(String, String)>,
    out_since: Option<Instant>,
}

/// See the module's doc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    unhealthy_since: BTreeMap<u64, Instant>,
    silent_since: BTreeMap<u64, Instant>,
    last_words: BTreeMap<String, LastWord>,
    /// By (peer id, cluster token), and when it ran.
    v2store: BTreeMap<(String, String), (V2StoreCheck, Instant)>,
    /// By (peer id, version), and when it ran.
    settings: BTreeMap<(String, String), (SettingsCheck, Instant)>,
    /// By (command, backup): why.
    refused: BTreeMap<(String, String), String>,
    prefixes_cleared: BTreeSet<String>,
}

impl Memory {
    /// The memory after `fact`, observed at `now`.
    #[must_use]
    pub fn fold(mut self, fact: &Fact<'_>, now: Instant) -> Memory {
        match *fact {
            Fact::Gossip(heard) => self.hear(heard),
            Fact::Pass {
                answered,
                retired,
                cluster,
                commands,
            } => {
                self.reach(answered, retired, now);
                self.watch(cluster, now);
                self.expire(now);
                self.refused.retain(|k, _| commands.contains(k));
            }
            Fact::V2StoreChecked { peer, token, check } => {
                self.v2store
                    .insert((peer.into(), token.into()), (check.clone(), now));
            }
            Fact::SettingsChecked {
                peer,
                version,
                check,
            } => {
                self.settings
                    .insert((peer.into(), version.into()), (check.clone(), now));
            }
            Fact::Refused {
                command,
                backup,
                reason,
            } => {
                self.refused
                    .insert((command.into(), backup.into()), reason.into());
            }
            Fact::PrefixesCleared { token } => {
                self.prefixes_cleared.insert(token.into());
            }
            Fact::BecameLeader => self.unhealthy_since.clear(),
        }
        self
    }

    /// Keep what each manager in gossip said last about its etcd; forget
    /// the managers gossip no longer knows. One gossip holds alive is not
    /// out of reach (its time out of reach counts again from the next pass
    /// that misses it, not from an earlier term's).
    fn hear(&mut self, heard: &[Heard]) {
        self.last_words
            .retain(|id, _| heard.iter().any(|h| h.id == *id));
        for h in heard {
            if h.alive
                && let Some(w) = self.last_words.get_mut(&h.id)
            {
                w.out_since = None;
            }
            let serving = match &h.said {
                Said::Nothing => continue,
                Said::NotServing => None,
                Said::Serving { token, url } => Some((token.clone(), url.clone())),
            };
            self.last_words.entry(h.id.clone()).or_default().serving = serving;
        }
    }

    /// Out of reach since now for those [`Self::serving_out_of_reach`]
    /// names, if not before; no longer for the others.
    fn reach(&mut self, answered: &BTreeSet<String>, retired: &BTreeSet<String>, now: Instant) {
        let out: BTreeSet<String> = self
            .serving_out_of_reach(answered, retired)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for (id, word) in self.last_words.iter_mut() {
            if out.contains(id) {
                word.out_since.get_or_insert(now);
            } else {
                word.out_since = None;
            }
        }
    }

    /// Since when each member has been unhealthy, and silent (no answer at
    /// all), as this leader saw it; nothing while no member answers.
    fn watch(&mut self, cluster: Option<&ClusterView>, now: Instant) {
        let Some(c) = cluster else {
            self.unhealthy_since.clear();
            self.silent_since.clear();
            return;
        };
        let unhealthy: BTreeSet<u64> = c
            .members
            .iter()
            .filter(|m| !m.healthy)
            .map(|m| m.id)
            .collect();
        let silent: BTreeSet<u64> = c
            .members
            .iter()
            .filter(|m| m.progress.is_none())
            .map(|m| m.id)
            .collect();
        since(&mut self.unhealthy_since, &unhealthy, now);
        since(&mut self.silent_since, &silent, now);
    }

    /// Failed v2 store checks and every settings check are forgotten after
    /// a while, so they run again.
    fn expire(&mut self, now: Instant) {
        self.v2store.retain(|_, (c, at)| {
            !matches!(c, V2StoreCheck::Failed(_))
                || now.saturating_duration_since(*at) < V2STORE_RETRY
        });
        self.settings
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < SETTINGS_RECHECK);
    }

    /// The managers out of reach (not among `answered`) whose last word was
    /// that their etcd serves a cluster not retired, with that client URL.
    /// Their etcd may still serve: a manager paused or cut off does not stop
    /// it, and a new leader has no other way to know.
    pub fn serving_out_of_reach(
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

    pub fn unhealthy_since(&self) -> &BTreeMap<u64, Instant> {
        &self.unhealthy_since
    }

    pub fn silent_since(&self) -> &BTreeMap<u64, Instant> {
        &self.silent_since
    }

    /// Managers out of reach whose etcd said last it serves, and since when.
    pub fn out_of_reach_since(&self) -> BTreeMap<String, Instant> {
        self.last_words
            .iter()
            .filter_map(|(id, w)| Some((id.clone(), w.out_since?)))
            .collect()
    }

    /// The v2 store checks of `peers`' current data, by peer id.
    pub fn v2store_of(&self, peers: &[PeerView]) -> BTreeMap<String, V2StoreCheck> {
        peers
            .iter()
            .filter_map(|p| {
                let key = (p.id.clone(), p.token()?.to_string());
                Some((p.id.clone(), self.v2store.get(&key)?.0.clone()))
            })
            .collect()
    }

    /// The settings checks still fresh, by (peer id, version).
    pub fn settings(&self) -> BTreeMap<(String, String), SettingsCheck> {
        self.settings
            .iter()
            .map(|(k, (c, _))| (k.clone(), c.clone()))
            .collect()
    }

    /// Why this leader refused restore `command` of `backup`, if it did.
    pub fn refusal(&self, command: &str, backup: &str) -> Option<&str> {
        self.refused
            .get(&(command.to_string(), backup.to_string()))
            .map(String::as_str)
    }

    pub fn prefixes_cleared(&self) -> &BTreeSet<String> {
        &self.prefixes_cleared
    }
}

/// `map` holds, for each of `now_in`, since when it has been in (kept from
/// before, else `now`); nothing else.
fn since(map: &mut BTreeMap<u64, Instant>, now_in: &BTreeSet<u64>, now: Instant) {
    map.retain(|id, _| now_in.contains(id));
    for id in now_in {
        map.entry(*id).or_insert(now);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // a base instant; every time is an offset of it
    use super::*;
    use crate::controller::MemberView;

    fn member(id: u64, healthy: bool, answers: bool) -> MemberView {
        MemberView {
            id,
            name: format!("m{id}"),
            peer_urls: vec![],
            is_learner: false,
            healthy,
            is_leader: false,
            storage_version: None,
            db_size: 0,
            db_in_use: 0,
            progress: answers.then_some((1, 1)),
        }
    }

    fn cluster(members: Vec<MemberView>) -> ClusterView {
        ClusterView {
            members,
            versions: vec![],
            downgrade_target: None,
            space_alarm: false,
        }
    }

    fn pass(m: Memory, answered: &[&str], cluster: Option<&ClusterView>, at: Instant) -> Memory {
        let answered = answered.iter().map(|s| s.to_string()).collect();
        m.fold(
            &Fact::Pass {
                answered: &answered,
                retired: &["old".to_string()].into(),
                cluster,
                commands: &[],
            },
            at,
        )
    }

    fn heard(id: &str, alive: bool, said: Said) -> Heard {
        Heard {
            id: id.into(),
            alive,
            said,
        }
    }

    fn serving(token: &str) -> Said {
        Said::Serving {
            token: token.into(),
            url: format!("https://{token}:4001"),
        }
    }

    #[test]
    fn unhealthy_and_silent_count_from_the_first_pass_that_saw_them() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let sick = cluster(vec![
            member(1, true, true),
            member(2, false, true),
            member(3, false, false),
        ]);
        let m = pass(Memory::default(), &[], Some(&sick), t0);
        let m = pass(m, &[], Some(&sick), t1);
        assert_eq!(m.unhealthy_since(), &[(2, t0), (3, t0)].into());
        assert_eq!(m.silent_since(), &[(3, t0)].into());
        // Member 3 answers again but is still unhealthy; 2 is well.
        let better = cluster(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, false, true),
        ]);
        let m = pass(m, &[], Some(&better), t1);
        assert_eq!(m.unhealthy_since(), &[(3, t0)].into());
        assert!(m.silent_since().is_empty());
        // A new term: unhealthy counts afresh, silence goes on counting.
        let m = pass(m, &[], Some(&sick), t1);
        let t2 = t1 + Duration::from_secs(5);
        let m = pass(m.fold(&Fact::BecameLeader, t2), &[], Some(&sick), t2);
        assert_eq!(m.unhealthy_since(), &[(2, t2), (3, t2)].into());
        assert_eq!(m.silent_since(), &[(3, t1)].into());
        // No member answers: nothing is known of any.
        let m = pass(m, &[], None, t1);
        assert!(m.unhealthy_since().is_empty() && m.silent_since().is_empty());
    }

    #[test]
    fn a_manager_serving_when_last_heard_is_out_of_reach_from_the_first_pass_it_misses() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(5);
        let t2 = t1 + Duration::from_secs(5);
        let m = Memory::default().fold(
            &Fact::Gossip(&[
                heard("a", true, serving("tok")),
                heard("b", true, Said::NotServing),
                heard("c", true, serving("old")),
                heard("d", true, Said::Nothing),
            ]),
            t0,
        );
        // Everyone answers: nobody is out of reach.
        let m = pass(m, &["a", "b", "c", "d"], None, t0);
        assert!(m.out_of_reach_since().is_empty());
        // Nobody answers: only "a" said it serves a cluster not retired.
        let none = BTreeSet::new();
        let old: BTreeSet<String> = ["old".to_string()].into();
        assert_eq!(
            m.serving_out_of_reach(&none, &old),
            vec![("a".to_string(), "https://tok:4001".to_string())]
        );
        let m = pass(m, &[], None, t1);
        let m = pass(m, &[], None, t2);
        assert_eq!(m.out_of_reach_since(), [("a".to_string(), t1)].into());
        // Gossip holds it alive again: its time out of reach starts over.
        let m = m.fold(&Fact::Gossip(&[heard("a", true, Said::Nothing)]), t2);
        assert!(m.out_of_reach_since().is_empty());
        let m = pass(m, &[], None, t2 + Duration::from_secs(1));
        assert_eq!(
            m.out_of_reach_since(),
            [("a".to_string(), t2 + Duration::from_secs(1))].into(),
            "the last word survives a payload-less gossip update; the clock restarts"
        );
        // Gossip forgets it: so does the memory.
        let m = m.fold(&Fact::Gossip(&[]), t2);
        assert!(m.serving_out_of_reach(&none, &old).is_empty());
    }

    #[test]
    fn failed_v2_checks_and_all_settings_checks_run_again_after_their_time() {
        let t0 = Instant::now();
        let failed = V2StoreCheck::Failed("no answer".into());
        let m = Memory::default()
            .fold(
                &Fact::V2StoreChecked {
                    peer: "a",
                    token: "tok",
                    check: &V2StoreCheck::Clean,
                },
                t0,
            )
            .fold(
                &Fact::V2StoreChecked {
                    peer: "b",
                    token: "tok",
                    check: &failed,
                },
                t0,
            )
            .fold(
                &Fact::SettingsChecked {
                    peer: "a",
                    version: "3.6.16",
                    check: &SettingsCheck::Kept,
                },
                t0,
            );
        let just_before = pass(
            m.clone(),
            &[],
            None,
            t0 + V2STORE_RETRY - Duration::from_millis(1),
        );
        assert_eq!(just_before.v2store.len(), 2);
        assert_eq!(just_before.settings().len(), 1);
        let after = pass(m, &[], None, t0 + V2STORE_RETRY.max(SETTINGS_RECHECK));
        assert_eq!(
            after.v2store.keys().collect::<Vec<_>>(),
            vec![&("a".to_string(), "tok".to_string())],
            "a clean check is kept; a failed one is forgotten"
        );
        assert!(after.settings().is_empty());
    }

    #[test]
    fn a_refusal_lasts_while_its_command_is_stored_and_names_the_backup() {
        let t0 = Instant::now();
        let m = Memory::default().fold(
            &Fact::Refused {
                command: "restore-1",
                backup: "2026-01-01",
                reason: "missing",
            },
            t0,
        );
        assert_eq!(m.refusal("restore-1", "2026-01-01"), Some("missing"));
        assert_eq!(m.refusal("restore-1", "2026-02-02"), None);
        let kept = [("restore-1".to_string(), "2026-01-01".to_string())];
        let stays = m.clone().fold(
            &Fact::Pass {
                answered: &BTreeSet::new(),
                retired: &BTreeSet::new(),
                cluster: None,
                commands: &kept,
            },
            t0,
        );
        assert_eq!(stays.refusal("restore-1", "2026-01-01"), Some("missing"));
        let gone = pass(m, &[], None, t0);
        assert_eq!(gone.refusal("restore-1", "2026-01-01"), None);
    }

    #[test]
    fn cleared_prefixes_are_remembered_by_token() {
        let m = Memory::default().fold(&Fact::PrefixesCleared { token: "tok" }, Instant::now());
        assert!(m.prefixes_cleared().contains("tok"));
        assert!(!m.prefixes_cleared().contains("other"));
    }
}
