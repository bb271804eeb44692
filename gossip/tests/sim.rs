//! Deterministic simulation: three `GossipCore`s on virtual time over an
//! in-memory network. The same seed must give the same trace.
#![allow(clippy::unwrap_used)]
// Only the starting point of virtual time comes from the real clock.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gossip::{GossipConfig, GossipCore, GossipKeys, MemberState};

const LATENCY: Duration = Duration::from_millis(1);

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fast_foca() -> gossip::foca::Config {
    let mut c = gossip::foca::Config::new_lan(NonZeroU32::new(3).unwrap());
    c.probe_period = Duration::from_millis(300);
    c.probe_rtt = Duration::from_millis(100);
    c.suspect_to_down_after = Duration::from_millis(900);
    c
}

struct Sim {
    base: Instant,
    now: Instant,
    nodes: Vec<GossipCore>,
    addrs: Vec<SocketAddr>,
    crashed: Vec<bool>,
    /// Packets to or from a partitioned node are lost; its timers run.
    partitioned: Vec<bool>,
    /// When set, every node re-announces to node 0 on this period unless it
    /// already has it as an active member (as the driver does with seeds).
    seed_refresh: Option<(Duration, Instant)>,
    net: BTreeMap<(Instant, u64), (SocketAddr, usize, Bytes)>,
    seq: u64,
    trace: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        Self::with_keys(seed, None)
    }

    /// Every node runs with `keys` (or plain when `None`).
    fn with_keys(seed: u64, keys: Option<GossipKeys>) -> Self {
        let base = Instant::now();
        let addrs: Vec<SocketAddr> = (0..3u8)
            .map(|i| SocketAddr::from(([10, 0, 0, i + 1], 8000)))
            .collect();
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let mut config = GossipConfig::new(format!("n{i}"), *addr);
                config.incarnation = 1_000;
                config.refresh_interval = Duration::from_millis(500);
                config.foca_config = Some(fast_foca());
                config.keys = keys.clone();
                let mut core =
                    GossipCore::new(&config, format!("n{i}").into_bytes(), seed + i as u64)
                        .unwrap();
                core.start(base);
                core
            })
            .collect();
        Self {
            base,
            now: base,
            nodes,
            addrs,
            crashed: vec![false; 3],
            partitioned: vec![false; 3],
            seed_refresh: None,
            net: BTreeMap::new(),
            seq: 0,
            trace: Vec::new(),
        }
    }

    fn millis(&self) -> u128 {
        (self.now - self.base).as_millis()
    }

    /// Moves node `i`'s outputs to the network and the trace.
    fn drain(&mut self, i: usize) {
        let t = self.millis();
        for (to, bytes) in self.nodes[i].drain_packets() {
            self.trace.push(format!(
                "{t} n{i}->{to} len={} h={:x}",
                bytes.len(),
                fnv(&bytes)
            ));
            // Packets to unknown addresses are lost.
            let dst = self.addrs.iter().position(|a| *a == to);
            if let Some(dst) = dst.filter(|d| !self.partitioned[i] && !self.partitioned[*d]) {
                self.seq += 1;
                self.net
                    .insert((self.now + LATENCY, self.seq), (self.addrs[i], dst, bytes));
            }
        }
        for event in self.nodes[i].drain_events() {
            self.trace.push(format!("{t} n{i} {event:?}"));
        }
    }

    /// Runs until `until` (virtual), delivering packets and firing timers.
    fn run_until(&mut self, until: Instant) {
        loop {
            let next_packet = self.net.keys().next().map(|k| k.0);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.crashed[*i])
                .filter_map(|(_, n)| n.next_deadline())
                .min();
            let next_refresh = self.seed_refresh.map(|(_, at)| at);
            let Some(next) = [next_packet, next_timer, next_refresh]
                .into_iter()
                .flatten()
                .min()
            else {
                break;
            };
            if next > until {
                break;
            }
            self.now = next;
            while let Some(entry) = self.net.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (from, to, bytes) = entry.remove();
                if !self.crashed[to] {
                    self.nodes[to].handle_packet(from, &bytes, self.now);
                    self.drain(to);
                }
            }
            if let Some((period, at)) = self.seed_refresh
                && at <= self.now
            {
                self.seed_refresh = Some((period, at + period));
                let seed = self.addrs[0];
                for i in 1..self.nodes.len() {
                    if !self.crashed[i] && !self.nodes[i].is_active_addr(seed) {
                        self.nodes[i].announce(seed);
                        self.drain(i);
                    }
                }
            }
            for i in 0..self.nodes.len() {
                if !self.crashed[i] && self.nodes[i].next_deadline().is_some_and(|d| d <= self.now)
                {
                    self.nodes[i].handle_timers(self.now);
                    self.drain(i);
                }
            }
        }
        self.now = until;
    }
}

/// Joins, updates a payload, crashes a node; returns the trace and the sim.
fn scenario(seed: u64) -> Sim {
    scenario_with_keys(seed, None)
}

fn scenario_with_keys(seed: u64, keys: Option<GossipKeys>) -> Sim {
    let mut sim = Sim::with_keys(seed, keys);
    let seed_addr = sim.addrs[0];
    for i in 1..3 {
        sim.nodes[i].announce(seed_addr);
        sim.drain(i);
    }
    let base = sim.base;
    sim.run_until(base + Duration::from_secs(5));
    let now = sim.now;
    sim.nodes[1].set_payload(b"n1-v2".to_vec(), now).unwrap();
    sim.drain(1);
    sim.run_until(base + Duration::from_secs(10));
    sim.crashed[2] = true;
    sim.run_until(base + Duration::from_secs(20));
    sim
}

#[test]
fn same_seed_same_trace_and_convergence() {
    let a = scenario(42);
    let b = scenario(42);
    assert!(a.trace.len() > 100, "trace too short: {}", a.trace.len());
    assert_eq!(a.trace, b.trace, "same seed must give the same trace");

    let c = scenario(7);
    assert_ne!(
        a.trace, c.trace,
        "a different seed should change foca's choices"
    );

    assert_converged_after_crash(&[&a, &c]);
}

fn assert_converged_after_crash(sims: &[&Sim]) {
    for sim in sims {
        for i in 0..2 {
            let view = sim.nodes[i].members();
            let summary: Vec<(String, MemberState, Option<Vec<u8>>)> = view
                .iter()
                .map(|m| (m.id.clone(), m.state, m.payload.clone()))
                .collect();
            assert_eq!(
                summary,
                vec![
                    ("n0".into(), MemberState::Alive, Some(b"n0".to_vec())),
                    ("n1".into(), MemberState::Alive, Some(b"n1-v2".to_vec())),
                    // crashed: Down, last payload still visible
                    ("n2".into(), MemberState::Down, Some(b"n2".to_vec())),
                ],
                "view of n{i}"
            );
            assert!(view[i].is_self);
        }
    }
}

#[test]
fn all_see_all_before_the_crash() {
    let mut sim = Sim::new(3);
    let seed_addr = sim.addrs[0];
    for i in 1..3 {
        sim.nodes[i].announce(seed_addr);
        sim.drain(i);
    }
    let base = sim.base;
    sim.run_until(base + Duration::from_secs(3));
    for i in 0..3 {
        let view = sim.nodes[i].members();
        assert_eq!(view.len(), 3, "n{i}: {view:?}");
        for m in &view {
            assert_eq!(m.state, MemberState::Alive, "n{i}: {view:?}");
            assert_eq!(
                m.payload.as_deref(),
                Some(m.id.as_bytes()),
                "n{i}: {view:?}"
            );
        }
    }
}

#[test]
fn partitioned_node_rejoins_with_a_renewed_incarnation() {
    let mut sim = Sim::new(11);
    let base = sim.base;
    sim.seed_refresh = Some((Duration::from_millis(500), base));
    sim.run_until(base + Duration::from_secs(3));
    assert!(
        (0..3).all(|i| sim.nodes[i]
            .members()
            .iter()
            .all(|m| m.state == MemberState::Alive)),
        "not converged before the partition"
    );

    sim.partitioned[2] = true;
    sim.run_until(base + Duration::from_secs(8));
    let n2 = sim.nodes[0]
        .members()
        .into_iter()
        .find(|m| m.id == "n2")
        .unwrap();
    assert_eq!(
        n2.state,
        MemberState::Down,
        "n0 should see the partitioned n2 down"
    );
    assert_eq!(
        n2.payload.as_deref(),
        Some(&b"n2"[..]),
        "the last payload stays visible"
    );

    sim.partitioned[2] = false;
    sim.run_until(base + Duration::from_secs(20));
    assert!(
        sim.trace.iter().any(|line| line.contains("n2 Rejoined")),
        "n2 should have rejoined with a renewed identity"
    );
    for i in 0..3 {
        let view = sim.nodes[i].members();
        assert_eq!(view.len(), 3, "n{i}: {view:?}");
        for m in &view {
            assert_eq!(m.state, MemberState::Alive, "n{i}: {view:?}");
            assert_eq!(
                m.payload.as_deref(),
                Some(m.id.as_bytes()),
                "n{i}: {view:?}"
            );
        }
        let n2 = view.iter().find(|m| m.id == "n2").unwrap();
        assert!(
            n2.incarnation > 1_000,
            "n{i}: n2 kept its old incarnation: {view:?}"
        );
    }
}

fn keyring(bytes: &[u8]) -> GossipKeys {
    GossipKeys::new(bytes.iter().map(|b| [*b; 32]).collect()).unwrap()
}

#[test]
fn keyed_same_seed_same_trace_and_convergence() {
    let keys = || Some(keyring(&[0x11, 0x22]));
    let a = scenario_with_keys(42, keys());
    let b = scenario_with_keys(42, keys());
    assert!(a.trace.len() > 100, "trace too short: {}", a.trace.len());
    assert_eq!(
        a.trace, b.trace,
        "same seed and keys must give the same trace"
    );
    let plain = scenario(42);
    assert_ne!(
        a.trace, plain.trace,
        "keyed packets must differ from plain ones"
    );
    for (i, node) in a.nodes.iter().enumerate().take(2) {
        assert_eq!(node.bad_packets(), 0, "n{i} dropped packets");
        assert_eq!(node.keys(), keys().as_ref());
    }
    // Every packet on the wire is sealed: version byte, nonce, tag.
    let mut sim = Sim::with_keys(5, keys());
    sim.nodes[1].announce(sim.addrs[0]);
    let sent = sim.nodes[1].drain_packets();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1[0], gossip::SEALED_V1);
    assert!(sent[0].1.len() > gossip::SEAL_OVERHEAD);
    assert_converged_after_crash(&[&a]);
}

#[test]
fn a_node_with_another_key_cannot_join_in_simulation() {
    let mut sim = Sim::with_keys(9, Some(keyring(&[1])));
    let base = sim.base;
    // n2 holds another key: it announces to n0 and n1, whose keyring
    // refuses everything it sends.
    sim.nodes[2].set_keys(Some(keyring(&[2])));
    for i in 1..3 {
        sim.nodes[i].announce(sim.addrs[0]);
        sim.drain(i);
    }
    sim.nodes[2].announce(sim.addrs[1]);
    sim.drain(2);
    sim.run_until(base + Duration::from_secs(5));
    for i in 0..2 {
        let ids: Vec<String> = sim.nodes[i].members().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["n0", "n1"], "n{i} must not list n2");
    }
    assert!(sim.nodes[0].bad_packets() >= 1);
    assert!(sim.nodes[1].bad_packets() >= 1);
    assert_eq!(sim.nodes[2].members().len(), 1, "n2 learned nobody");
    assert!(
        !sim.trace
            .iter()
            .any(|l| l.contains("MemberUp") && l.contains("\"n2\"")),
        "n2 came up somewhere"
    );
}
