//! Majority acceptance on real processes: a leader cut off from the majority
//! of the managers it knows stops leading, and leadership returns with them.

use std::time::Duration;

use tests::wait_for;

async fn is_leader(metrics: &str) -> Option<f64> {
    let (_, body) = tests::http_get(metrics, "/metrics").await.ok()?;
    tests::metric_value(&body, "etcd_manager_is_leader")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_without_a_majority_stops_leading() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let metrics: Vec<String> = (1..=3).map(|h| env.metrics_addr(h)).collect();
    let mut ms: Vec<_> = (1..=3u8).map(|h| env.start_with_metrics(h)).collect();
    env.configure(3, "3.5.30");
    let ep = env.client_url(1);
    tests::wait_put("the cluster", &ep, "/k", "v", Duration::from_secs(60)).await;
    let leader = wait_for("one leader", Duration::from_secs(30), || {
        let metrics = metrics.clone();
        async move {
            let mut found = None;
            for (i, m) in metrics.iter().enumerate() {
                if is_leader(m).await? == 1.0 {
                    found = Some(i);
                }
            }
            found
        }
    })
    .await;

    // Both other managers (and their etcd) die: the leader is alone.
    for (i, m) in ms.iter_mut().enumerate() {
        if i != leader {
            m.kill_all();
        }
    }
    wait_for(
        "the lone leader steps down",
        Duration::from_secs(60),
        || {
            let m = metrics[leader].clone();
            async move { (is_leader(&m).await? == 0.0).then_some(()) }
        },
    )
    .await;

    // One comes back: two of three, a majority again, and a leader again.
    let back = (0..3).find(|i| *i != leader).expect("another host");
    ms[back].restart();
    wait_for("a leader again", Duration::from_secs(90), || {
        let (a, b) = (metrics[leader].clone(), metrics[back].clone());
        async move { (is_leader(&a).await? + is_leader(&b).await? == 1.0).then_some(()) }
    })
    .await;
}

/// Managers that share nothing but the bucket find each other through it.
#[tokio::test(flavor = "multi_thread")]
async fn managers_find_each_other_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let _ms: Vec<_> = (1..=3u8)
        .map(|h| env.start_with(h, &["--store-discovery"]))
        .collect();
    env.configure(3, "3.5.30");
    let ep = env.client_url(1);
    tests::wait_voters(
        "three voters found through the store",
        std::slice::from_ref(&ep),
        3,
        None,
    )
    .await;
    assert!(
        !env.discovery_dir.exists(),
        "the shared discovery folder was used"
    );
    let records = std::fs::read_dir(env.store_path().join("etcd-manager"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("discovery-"))
        .count();
    assert_eq!(records, 3);
}

/// Gossip sealed with a key: managers with the key form the cluster; one with
/// another key is never seen by them.
#[tokio::test(flavor = "multi_thread")]
async fn gossip_with_a_key_keeps_strangers_out() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let ours = dir.path().join("gossip.key");
    let theirs = dir.path().join("other.key");
    std::fs::write(&ours, format!("# our key\n{}\n", "ab".repeat(32))).unwrap();
    std::fs::write(&theirs, format!("{}\n", "cd".repeat(32))).unwrap();
    let key = |p: &std::path::Path| format!("--gossip-key-file={}", p.display());
    let _ms: Vec<_> = (1..=3u8)
        .map(|h| env.start_with(h, &[&key(&ours)]))
        .collect();
    let _stranger = env.start_with(4, &[&key(&theirs)]);
    env.configure(3, "3.5.30");
    let ep = env.client_url(1);
    tests::wait_voters(
        "three voters over keyed gossip",
        std::slice::from_ref(&ep),
        3,
        None,
    )
    .await;
    let status: serde_json::Value =
        serde_json::from_str(&env.ctl(&["-o", "json", "status"]).stdout).unwrap();
    let peers = status["report"]["peers"].as_array().unwrap();
    assert_eq!(
        peers.len(),
        3,
        "the stranger must not be in the leader's view: {peers:?}"
    );
    let members = tests::members(&ep).await.unwrap();
    let stranger_ip = tests::host_ip(env.net, 4);
    assert!(
        members
            .iter()
            .all(|m| m.peer_urls.iter().all(|u| !u.contains(&stranger_ip)))
    );
}
