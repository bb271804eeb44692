//! Keyed gossip over real UDP on 127.0.0.1: sealed packets, intruders
//! refused and counted, key rotation on a running cluster.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gossip::{Error, GossipConfig, GossipHandle, GossipKeys, MemberState, MemberView};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(15);

fn fast_foca() -> gossip::foca::Config {
    let mut c = gossip::foca::Config::new_lan(NonZeroU32::new(3).unwrap());
    c.probe_period = Duration::from_millis(200);
    c.probe_rtt = Duration::from_millis(100);
    c.suspect_to_down_after = Duration::from_millis(2000);
    c
}

fn ring(bytes: &[u8]) -> GossipKeys {
    GossipKeys::new(bytes.iter().map(|b| [*b; 32]).collect()).unwrap()
}

struct Node {
    handle: GossipHandle,
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

impl Node {
    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

async fn node(id: &str, keys: Option<GossipKeys>, seeds: &[SocketAddr]) -> Node {
    let mut config = GossipConfig::new(id.to_string(), SocketAddr::from(([127, 0, 0, 1], 0)));
    config.seeds = seeds.iter().map(ToString::to_string).collect();
    config.incarnation = 1;
    config.refresh_interval = Duration::from_millis(300);
    config.foca_config = Some(fast_foca());
    config.keys = keys;
    let cancel = CancellationToken::new();
    let payload = format!("p{id}").into_bytes();
    let (handle, task) = gossip::start(config, payload, cancel.clone())
        .await
        .unwrap();
    Node {
        handle,
        task,
        cancel,
    }
}

/// Waits until `pred` holds for `node`'s view, or panics with the view.
async fn wait_view(node: &GossipHandle, what: &str, pred: impl Fn(&[MemberView]) -> bool) {
    let mut rx = node.subscribe();
    let waited = tokio::time::timeout(CONVERGE, rx.wait_for(|v| pred(v))).await;
    if waited.is_err() {
        panic!(
            "{}: timed out waiting for {what}; view: {:#?}",
            node.id(),
            node.members()
        );
    }
}

/// Polls `cond` (a counter read) until it holds, or panics after CONVERGE.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        // bad_packets is a counter, not a watch; poll it.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Exactly the members `ids`, all Alive, each with its payload `p<id>`.
fn whole(view: &[MemberView], ids: &[&str]) -> bool {
    view.len() == ids.len()
        && view.iter().zip(ids).all(|(m, id)| {
            m.id == *id
                && m.state == MemberState::Alive
                && m.payload.as_deref() == Some(format!("p{id}").as_bytes())
        })
}

async fn wait_whole(nodes: &[&Node], ids: &[&str], what: &str) {
    for n in nodes {
        wait_view(&n.handle, what, |v| whole(v, ids)).await;
    }
}

/// Records whether `node` ever lists a member with id `intruder`.
fn watch_for_member(node: &GossipHandle, intruder: &'static str) -> Arc<AtomicBool> {
    let seen = Arc::new(AtomicBool::new(false));
    let flag = seen.clone();
    let mut rx = node.subscribe();
    tokio::spawn(async move {
        loop {
            if rx.borrow_and_update().iter().any(|m| m.id == intruder) {
                flag.store(true, Ordering::SeqCst);
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
    seen
}

/// Records whether `node` ever sees a member Down.
fn watch_for_trouble(node: &GossipHandle) -> Arc<AtomicBool> {
    let trouble = Arc::new(AtomicBool::new(false));
    let flag = trouble.clone();
    let mut rx = node.subscribe();
    tokio::spawn(async move {
        loop {
            if rx
                .borrow_and_update()
                .iter()
                .any(|m| m.state == MemberState::Down)
            {
                flag.store(true, Ordering::SeqCst);
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
    trouble
}

#[tokio::test]
async fn keyed_nodes_converge_and_exchange_payloads() {
    let keys = ring(&[7]);
    let a = node("a", Some(keys.clone()), &[]).await;
    let seed = [a.handle.local_addr()];
    let b = node("b", Some(keys.clone()), &seed).await;
    let c = node("c", Some(keys.clone()), &seed).await;
    wait_whole(&[&a, &b, &c], &["a", "b", "c"], "3 keyed alive").await;
    c.handle.set_payload(b"pc-2".to_vec());
    for n in [&a, &b] {
        wait_view(&n.handle, "c's new payload", |v| {
            v.iter()
                .any(|m| m.id == "c" && m.payload.as_deref() == Some(&b"pc-2"[..]))
        })
        .await;
    }
    for n in [&a, &b, &c] {
        assert_eq!(n.handle.bad_packets(), 0, "{}", n.handle.id());
    }
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test]
async fn nodes_without_the_key_cannot_join_and_garbage_is_counted() {
    let keys = ring(&[1]);
    let a = node("a", Some(keys.clone()), &[]).await;
    let seed = [a.handle.local_addr()];
    let b = node("b", Some(keys.clone()), &seed).await;
    let c = node("c", Some(keys.clone()), &seed).await;
    wait_whole(&[&a, &b, &c], &["a", "b", "c"], "3 keyed alive").await;
    let watchers: Vec<(Arc<AtomicBool>, Arc<AtomicBool>)> = [&a, &b, &c]
        .iter()
        .map(|n| {
            (
                watch_for_member(&n.handle, "other-key"),
                watch_for_member(&n.handle, "plain"),
            )
        })
        .collect();
    let before: Vec<u64> = [&a, &b, &c]
        .iter()
        .map(|n| n.handle.bad_packets())
        .collect();

    let all = [
        a.handle.local_addr(),
        b.handle.local_addr(),
        c.handle.local_addr(),
    ];
    let other = node("other-key", Some(ring(&[2])), &all).await;
    let plain = node("plain", None, &all).await;
    // Each intruder keeps announcing to all three on every refresh: every
    // keyed node counts at least two bad packets from each.
    for (n, base) in [&a, &b, &c].iter().zip(&before) {
        wait_until(&format!("{} counting the intruders", n.handle.id()), || {
            n.handle.bad_packets() >= base + 4
        })
        .await;
    }
    // The intruders see nobody; their hellos went unanswered.
    for n in [&other, &plain] {
        assert_eq!(n.handle.members().len(), 1, "{}", n.handle.id());
    }

    // Plain garbage is counted too.
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![gossip::SEALED_V1],
        vec![gossip::SEALED_V1; 200],
        vec![gossip::wire::TAG_HELLO, 0x07],
        vec![0u8; 9000],
    ];
    // Stop the intruders first so the count is ours alone.
    for n in [other, plain] {
        n.stop().await;
    }
    let base = a.handle.bad_packets();
    for packet in &garbage {
        attacker.send_to(packet, all[0]).await.unwrap();
    }
    wait_until("a counting the garbage", || {
        a.handle.bad_packets() >= base + garbage.len() as u64
    })
    .await;

    // The cluster still works and never listed an intruder.
    b.handle.set_payload(b"pb-after".to_vec());
    wait_view(&a.handle, "b's payload after the attack", |v| {
        v.iter().any(|m| {
            m.id == "b"
                && m.state == MemberState::Alive
                && m.payload.as_deref() == Some(&b"pb-after"[..])
        })
    })
    .await;
    for (n, (other_seen, plain_seen)) in [&a, &b, &c].iter().zip(&watchers) {
        assert!(
            !other_seen.load(Ordering::SeqCst),
            "{} listed the node with another key",
            n.handle.id()
        );
        assert!(
            !plain_seen.load(Ordering::SeqCst),
            "{} listed the node without keys",
            n.handle.id()
        );
        assert_eq!(n.handle.members().len(), 3, "{}", n.handle.id());
    }
    for n in [a, b, c] {
        n.stop().await;
    }
}

fn payload(id: &str, round: u32) -> Vec<u8> {
    format!("p{id}-{round}").into_bytes()
}

#[tokio::test]
async fn rotating_keys_keeps_the_cluster_whole() {
    let (k1, k2) = (1u8, 2u8);
    let a = node("a", Some(ring(&[k1])), &[]).await;
    let seed = [a.handle.local_addr()];
    let b = node("b", Some(ring(&[k1])), &seed).await;
    let c = node("c", Some(ring(&[k1])), &seed).await;
    let nodes = [&a, &b, &c];
    let ids = ["a", "b", "c"];
    wait_whole(&nodes, &ids, "3 alive on [k1]").await;
    let trouble: Vec<Arc<AtomicBool>> =
        nodes.iter().map(|n| watch_for_trouble(&n.handle)).collect();

    let mut round = 0;
    for (step, keys) in [
        ("[k1, k2]", ring(&[k1, k2])),
        ("[k2, k1]", ring(&[k2, k1])),
        ("[k2]", ring(&[k2])),
    ] {
        // One node at a time, as an operator would roll it out; after each
        // switch, fresh payloads from every node must reach every node.
        for switched in nodes {
            switched.handle.set_keys(keys.clone()).await.unwrap();
            round += 1;
            for n in nodes {
                n.handle.set_payload(payload(n.handle.id(), round));
            }
            for n in nodes {
                let what = format!("round {round} after {} took {step}", switched.handle.id());
                wait_view(&n.handle, &what, |v| {
                    v.len() == 3
                        && v.iter().all(|m| {
                            m.state == MemberState::Alive
                                && m.payload.as_deref() == Some(payload(&m.id, round).as_slice())
                        })
                })
                .await;
            }
        }
    }
    for n in nodes {
        assert_eq!(
            n.handle.bad_packets(),
            0,
            "{} refused packets during the rotation",
            n.handle.id()
        );
    }
    for (n, flag) in nodes.iter().zip(&trouble) {
        assert!(
            !flag.load(Ordering::SeqCst),
            "{} saw a member Down during the rotation",
            n.handle.id()
        );
    }

    // A node still on [k1] alone is refused now.
    let seen = watch_for_member(&a.handle, "stale");
    let base = a.handle.bad_packets();
    let stale = node("stale", Some(ring(&[k1])), &seed).await;
    wait_until("a counting the stale node's packets", || {
        a.handle.bad_packets() >= base + 2
    })
    .await;
    assert_eq!(stale.handle.members().len(), 1);
    stale.stop().await;
    assert!(!seen.load(Ordering::SeqCst), "a listed the stale node");
    for n in nodes {
        assert_eq!(n.handle.members().len(), 3, "{}", n.handle.id());
    }

    // set_keys on a stopped node says so.
    let handle = c.handle.clone();
    for n in [a, b, c] {
        n.stop().await;
    }
    let err = handle.set_keys(ring(&[k2])).await.unwrap_err();
    assert!(matches!(err, Error::NotRunning), "{err}");
}
