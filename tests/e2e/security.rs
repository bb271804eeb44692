//! Holes a review found (issue 30), each tried against a live manager.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use etcd_manager::driver::PeerPayload;
use etcd_manager::peer::EtcdNodeConfig;
use tests::{host_ip, wait_for};

/// A stranger on the network, in the gossip mesh of an unkeyed manager:
/// a real gossip core under the id it chooses, on its own UDP socket,
/// publishing a payload that names cluster `cluster` and address `claims`.
async fn stranger(
    id: &str,
    bind_ip: &str,
    seed: SocketAddr,
    cluster: &str,
    claims: SocketAddr,
    run_for: Duration,
) {
    let socket = tokio::net::UdpSocket::bind(format!("{bind_ip}:0"))
        .await
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let mut config = gossip::GossipConfig::new(id.to_string(), addr);
    config.incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let payload = PeerPayload {
        cluster_name: cluster.into(),
        peer_api: claims,
        node_config: EtcdNodeConfig::default(),
        etcd: None,
        lease: None,
    };
    let mut core = gossip::GossipCore::new(&config, payload.encode(), 7).unwrap();
    let start = Instant::now();
    core.start(start);
    let mut buf = vec![0u8; 65536];
    let mut last_hello = None::<Instant>;
    while start.elapsed() < run_for {
        let now = Instant::now();
        if last_hello.is_none_or(|at| now.duration_since(at) > Duration::from_secs(1)) {
            core.announce(seed);
            last_hello = Some(now);
        }
        core.handle_timers(now);
        for (to, packet) in core.drain_packets() {
            let _ = socket.send_to(&packet, to).await;
        }
        if let Ok(Ok((len, from))) =
            tokio::time::timeout(Duration::from_millis(50), socket.recv_from(&mut buf)).await
        {
            core.handle_packet(from, &buf[..len], Instant::now());
        }
    }
}

/// Any host that reached the gossip port could write lines into every
/// master's `/etc/hosts`: a member id holding a newline, the block's end
/// marker and an address of its own landed past the block, and stayed
/// there after it left. With gossip unauthenticated (--insecure), a
/// stranger with a valid id still joins (and is named, as the mode
/// allows), the crafted id gets nowhere, and a line an older release left
/// behind is removed: the file is exactly the managed block.
#[tokio::test(flavor = "multi_thread")]
async fn a_crafted_gossip_id_cannot_write_the_hosts_file() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let hosts = dir.path().join("hosts");
    let left_behind = "10.6.6.6\tkubernetes.default.svc etcd-x.internal.test";
    std::fs::write(&hosts, format!("127.0.0.1\tlocalhost\n{left_behind}\n")).unwrap();
    let _m = env.start_with(
        1,
        &[
            "--dns-suffix=internal.test",
            &format!("--hosts-file={}", hosts.display()),
        ],
    );
    env.configure(1, "3.5.30");
    let me = host_ip(env.net, 1);
    wait_for(
        "the manager's own name in its hosts file",
        Duration::from_secs(60),
        || async {
            std::fs::read_to_string(&hosts)
                .ok()
                .filter(|t| t.contains(&format!("{me}\t")))
        },
    )
    .await;
    let seed: SocketAddr = format!("{me}:8000").parse().unwrap();
    let crafted = "a\n# End host entries managed by etcd-manager[test]\n10.6.6.6\tkubernetes.default.svc etcd-a";
    let attacker_ip = host_ip(env.net, 9);
    // Where the strangers say their peer API is: an address of the test's
    // own where nothing listens (the manager will try it).
    let claims: SocketAddr = format!("{attacker_ip}:8000").parse().unwrap();
    tokio::join!(
        stranger(
            crafted,
            &attacker_ip,
            seed,
            "test",
            claims,
            Duration::from_secs(12)
        ),
        stranger(
            "intruder",
            &attacker_ip,
            seed,
            "test",
            claims,
            Duration::from_secs(12)
        ),
    );
    let text = std::fs::read_to_string(&hosts).unwrap();
    let own_id = text
        .lines()
        .find(|l| l.starts_with(&format!("{me}\t")))
        .map(|l| l.split('\t').nth(1).unwrap_or_default().to_string())
        .expect("the manager names itself");
    assert_eq!(
        text,
        format!(
            "127.0.0.1\tlocalhost\n\n\
             # Begin host entries managed by etcd-manager[test] - do not edit\n\
             {me}\t{own_id}\n\
             {attacker_ip}\tintruder.internal.test\n\
             # End host entries managed by etcd-manager[test]\n"
        ),
        "the hosts file is exactly the managed block"
    );
}

/// A `recover-quorum` request left armed (its ctl gave up, or the quorum
/// came back first) used to stay in the store and rebuild the next quorum
/// loss at once, without the grace: a leader that sees its cluster hold its
/// quorum removes it, and the ctl says so instead of waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_recover_quorum_request_does_not_stay_armed() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let _m = env.start(1);
    env.configure(1, "3.5.30");
    tests::wait_put(
        "a one-member cluster",
        &env.client_url(1),
        "/k",
        "v",
        Duration::from_secs(60),
    )
    .await;
    let request = env.store_path().join("etcd-manager/recover-quorum");
    // An older ctl's request, without a stamp.
    std::fs::write(&request, b"{}\n").unwrap();
    wait_for(
        "the leader to remove a request while the quorum holds",
        Duration::from_secs(30),
        || async { (!request.exists()).then_some(()) },
    )
    .await;
    wait_for(
        "status without the request",
        Duration::from_secs(30),
        || async { (!env.ctl(&["status"]).stdout.contains("recovery:")).then_some(()) },
    )
    .await;
    // The ctl refuses: the report says no quorum is lost.
    let out = env.ctl(&["recover-quorum", "--timeout=20s"]);
    assert!(
        !out.success && out.stderr.contains("no quorum is lost"),
        "{out:?}"
    );
    assert!(!request.exists());
}
