//! Real UDP on 127.0.0.1 with OS-chosen ports.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use gossip::{Error, GossipConfig, GossipHandle, MemberState, MemberView};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(15);

fn fast_foca() -> gossip::foca::Config {
    let mut c = gossip::foca::Config::new_lan(NonZeroU32::new(3).unwrap());
    c.probe_period = Duration::from_millis(200);
    c.probe_rtt = Duration::from_millis(100);
    c.suspect_to_down_after = Duration::from_millis(800);
    c
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

struct Node {
    handle: GossipHandle,
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

async fn node(
    id: &str,
    incarnation: u64,
    payload: &[u8],
    seeds: Vec<String>,
    dir: Option<&Path>,
) -> Node {
    let mut config = GossipConfig::new(id.to_string(), localhost());
    config.seeds = seeds;
    config.discovery_dir = dir.map(Path::to_path_buf);
    config.incarnation = incarnation;
    config.refresh_interval = Duration::from_millis(300);
    config.foca_config = Some(fast_foca());
    let cancel = CancellationToken::new();
    let (handle, task) = gossip::start(config, payload.to_vec(), cancel.clone())
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

fn sees(view: &[MemberView], expected: &[(&str, MemberState, &[u8])]) -> bool {
    view.len() == expected.len()
        && view.iter().zip(expected).all(|(m, (id, state, payload))| {
            m.id == *id && m.state == *state && m.payload.as_deref() == Some(*payload)
        })
}

#[tokio::test]
async fn static_seeds_converge_and_payload_updates_propagate() {
    let a = node("a", 1, b"pa", vec![], None).await;
    let seed = a.handle.local_addr().to_string();
    // The first node's own address in its seeds is skipped, not announced.
    let b = node("b", 1, b"pb", vec![seed.clone()], None).await;
    let c = node(
        "c",
        1,
        b"pc",
        vec![seed.clone(), "localhost:1".into()],
        None,
    )
    .await;
    let all = [&a, &b, &c];
    for n in all {
        wait_view(&n.handle, "3 alive with payloads", |v| {
            sees(
                v,
                &[
                    ("a", MemberState::Alive, b"pa"),
                    ("b", MemberState::Alive, b"pb"),
                    ("c", MemberState::Alive, b"pc"),
                ],
            )
        })
        .await;
        let view = n.handle.members();
        assert_eq!(view.iter().filter(|m| m.is_self).count(), 1);
        assert_eq!(view.iter().find(|m| m.is_self).unwrap().id, n.handle.id());
    }
    b.handle.set_payload(b"pb-2".to_vec());
    for n in all {
        wait_view(&n.handle, "b's new payload", |v| {
            v.iter()
                .any(|m| m.id == "b" && m.payload.as_deref() == Some(&b"pb-2"[..]))
        })
        .await;
    }
    assert_eq!(a.handle.bad_packets(), 0);
    for n in [a, b, c] {
        n.cancel.cancel();
        n.task.await.unwrap();
    }
}

#[tokio::test]
async fn discovery_folder_converges_and_leave_removes_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let a = node("a", 1, b"pa", vec![], Some(dir.path())).await;
    let b = node("b", 1, b"pb", vec![], Some(dir.path())).await;
    let c = node("c", 1, b"pc", vec![], Some(dir.path())).await;
    // An unreadable record is skipped.
    std::fs::write(dir.path().join("broken.json"), b"{").unwrap();
    let record = std::fs::read_to_string(dir.path().join("b.json")).unwrap();
    assert_eq!(
        record,
        format!(r#"{{"id":"b","addr":"{}"}}"#, b.handle.local_addr())
    );
    for n in [&a, &b, &c] {
        wait_view(&n.handle, "3 alive with payloads", |v| {
            sees(
                v,
                &[
                    ("a", MemberState::Alive, b"pa"),
                    ("b", MemberState::Alive, b"pb"),
                    ("c", MemberState::Alive, b"pc"),
                ],
            )
        })
        .await;
    }
    c.handle.leave(Duration::from_secs(5)).await;
    assert!(c.handle.is_finished());
    c.task.await.unwrap();
    assert!(!dir.path().join("c.json").exists());
    assert!(dir.path().join("a.json").exists());
    for n in [&a, &b] {
        wait_view(&n.handle, "c down after leaving", |v| {
            v.iter()
                .any(|m| m.id == "c" && m.state == MemberState::Down)
        })
        .await;
    }
    for n in [a, b] {
        n.cancel.cancel();
        n.task.await.unwrap();
    }
}

#[tokio::test]
async fn crash_leave_and_restart() {
    let a = node("a", 10, b"pa", vec![], None).await;
    let seed = vec![a.handle.local_addr().to_string()];
    let b = node("b", 10, b"pb", seed.clone(), None).await;
    let c = node("c", 10, b"pc", seed.clone(), None).await;
    for n in [&a, &b, &c] {
        wait_view(&n.handle, "3 alive", |v| {
            v.len() == 3 && v.iter().all(|m| m.state == MemberState::Alive)
        })
        .await;
    }

    // Crash: c stops without leaving; the others detect it.
    let old_c_addr = c.handle.local_addr();
    c.cancel.cancel();
    c.task.await.unwrap();
    for n in [&a, &b] {
        wait_view(&n.handle, "c down after its crash", |v| {
            v.iter().any(|m| {
                m.id == "c"
                    && m.state == MemberState::Down
                    && m.incarnation == 10
                    && m.payload.as_deref() == Some(&b"pc"[..])
            })
        })
        .await;
    }

    // Restart: same id, higher incarnation, new port and payload.
    let c2 = node("c", 20, b"pc-2", seed.clone(), None).await;
    assert_ne!(c2.handle.local_addr(), old_c_addr);
    for n in [&a, &b, &c2] {
        wait_view(&n.handle, "restarted c alive with its new payload", |v| {
            v.len() == 3
                && v.iter().all(|m| m.state == MemberState::Alive)
                && v.iter().any(|m| {
                    m.id == "c"
                        && m.incarnation >= 20
                        && m.addr == c2.handle.local_addr()
                        && m.payload.as_deref() == Some(&b"pc-2"[..])
                })
        })
        .await;
    }

    // Graceful leave: b is Down at the others without waiting for probes
    // to fail (its leave message reaches them directly).
    b.handle.leave(Duration::from_secs(5)).await;
    b.task.await.unwrap();
    let leave_deadline = Duration::from_secs(2);
    for n in [&a, &c2] {
        let mut rx = n.handle.subscribe();
        tokio::time::timeout(
            leave_deadline,
            rx.wait_for(|v| {
                v.iter()
                    .any(|m| m.id == "b" && m.state == MemberState::Down)
            }),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: b not down quickly after leaving: {:#?}",
                n.handle.id(),
                n.handle.members()
            )
        })
        .unwrap();
    }
    for n in [a, c2] {
        n.cancel.cancel();
        n.task.await.unwrap();
    }
}

#[tokio::test]
async fn garbage_is_counted_and_the_node_keeps_working() {
    let a = node("a", 1, b"pa", vec![], None).await;
    let b = node("b", 1, b"pb", vec![a.handle.local_addr().to_string()], None).await;
    wait_view(&a.handle, "b alive", |v| {
        v.iter()
            .any(|m| m.id == "b" && m.state == MemberState::Alive)
    })
    .await;

    let attacker = tokio::net::UdpSocket::bind(localhost()).await.unwrap();
    let target = a.handle.local_addr();
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        b"hello".to_vec(),
        vec![gossip::wire::TAG_FOCA, 0xff, 0xff, 0xff, 0xff, 0xff],
        vec![gossip::wire::TAG_HELLO, 0x07],
        vec![gossip::wire::TAG_FOCA; 3000],
        vec![0u8; 9000],
    ];
    for packet in &garbage {
        attacker.send_to(packet, target).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while a.handle.bad_packets() < garbage.len() as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} bad packets counted",
            a.handle.bad_packets(),
            garbage.len()
        );
        // The counter is published after each packet; poll it.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.handle.bad_packets(), garbage.len() as u64);

    b.handle.set_payload(b"pb-after".to_vec());
    wait_view(&a.handle, "b's payload after the garbage", |v| {
        v.iter().any(|m| {
            m.id == "b"
                && m.state == MemberState::Alive
                && m.payload.as_deref() == Some(&b"pb-after"[..])
        })
    })
    .await;
    for n in [a, b] {
        n.cancel.cancel();
        n.task.await.unwrap();
    }
}

#[tokio::test]
async fn start_errors_are_clear() {
    let a = node("a", 1, b"pa", vec![], None).await;
    let taken = a.handle.local_addr();
    let err = gossip::start(
        GossipConfig::new("b".into(), taken),
        vec![],
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Bind { addr, .. } if addr == taken),
        "{err}"
    );
    assert!(
        err.to_string().contains("is another etcd-manager running"),
        "{err}"
    );

    let mut config = GossipConfig::new("b".into(), localhost());
    config.seeds = vec!["no-port".into()];
    let err = gossip::start(config, vec![], CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidSeed { ref seed, .. } if seed == "no-port"),
        "{err}"
    );

    let err = gossip::start(
        GossipConfig::new("b".into(), localhost()),
        vec![0; 64 * 1024],
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");

    let mut config = GossipConfig::new("b".into(), localhost());
    config.discovery_dir = Some("/proc/no-such-dir/discovery".into());
    let err = gossip::start(config, vec![], CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Discovery { .. }), "{err}");

    a.cancel.cancel();
    a.task.await.unwrap();
}
