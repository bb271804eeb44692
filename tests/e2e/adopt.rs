//! A volume upstream etcd-manager wrote, taken over in place: its `myid`,
//! its `state` (upstream's protobuf, written here from upstream's `.proto`:
//! upstream's binary is not built on these machines) and its etcd data in
//! `data/<token>`, made by a real etcd run as upstream runs it. Our manager
//! restarts etcd on the same data: same member id, same keys, revision not
//! reset, no restore; upstream's `state` stays readable beside ours.

use std::time::Duration;

use etcd_manager::node::upstream_state;
use etcd_manager::peer::EtcdNodeConfig;
use tests::{get, wait_for};

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_volume_is_adopted_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let ip = tests::host_ip(env.net, 1);
    let data_dir = env.root.join("data/1");
    let (id, token, version) = ("cA0Hk1bd2PcHJ6HMwQ3F5Q", "upstreamtok1", "3.5.30");
    let node = EtcdNodeConfig {
        name: id.into(),
        peer_urls: vec![format!("http://{ip}:2380")],
        client_urls: vec![format!("http://{ip}:4001")],
        quarantined_client_urls: vec![format!("http://{ip}:8001")],
    };
    // The member as upstream ran it: etcd on <volume>/data/<token>.
    let spec = etcd::EtcdNodeSpec {
        name: id.into(),
        version: version.into(),
        data_dir: data_dir.join("data").join(token),
        cluster_token: token.into(),
        initial_cluster: vec![(id.into(), node.peer_urls.clone())],
        initial_cluster_state_new: true,
        peer_urls: node.peer_urls.clone(),
        client_urls: node.client_urls.clone(),
        quarantined_client_urls: node.quarantined_client_urls.clone(),
        quarantined: false,
        listen_address: None,
        tls: None,
        listen_metrics_urls: vec![],
    };
    let proc = etcd::EtcdProcess::start(
        tests::etcd_binaries(version),
        spec,
        vec![],
        Some(env.root.join("upstream-etcd.log")),
    )
    .unwrap();
    let ep = node.client_urls[0].clone();
    tests::wait_put(
        "upstream's member",
        &ep,
        "/before",
        "upstream",
        Duration::from_secs(30),
    )
    .await;
    for i in 0..50 {
        tests::put(&ep, &format!("/k/{i}"), "v").await.unwrap();
    }
    let c = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
        .await
        .unwrap();
    let before = c.status().await.unwrap();
    proc.stop(Duration::from_secs(10)).await.unwrap();
    std::fs::write(data_dir.join(upstream_state::MYID_FILE), id).unwrap();
    let local = etcd_manager::node::LocalEtcd {
        cluster_token: token.into(),
        etcd_version: version.into(),
        quarantined: false,
        nodes: vec![node],
        new_cluster: false,
    };
    upstream_state::write(&data_dir, &upstream_state::to_upstream(&local, false)).unwrap();
    assert!(!data_dir.join("state.json").exists());

    env.configure(1, version);
    let m = env.start(1);
    let after = wait_for(
        "the adopted member serving its data",
        Duration::from_secs(60),
        || {
            let ep = ep.clone();
            async move {
                let c =
                    etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(2))
                        .await
                        .ok()?;
                let s = c.status().await.ok()?;
                (get(&ep, "/before").await.ok()?.as_deref() == Some("upstream")).then_some(s)
            }
        },
    )
    .await;
    assert_eq!(after.member_id, before.member_id, "the same member");
    assert!(
        after.revision >= before.revision && after.revision < before.revision + 1000,
        "revision kept, not bumped by a restore: {} -> {}",
        before.revision,
        after.revision
    );
    assert_eq!(get(&ep, "/k/49").await.unwrap().as_deref(), Some("v"));
    let log = m.log_text();
    assert!(
        log.contains("adopted upstream etcd-manager's volume"),
        "{log}"
    );
    assert!(!log.contains("restore"), "no restore: {log}");
    // Upstream's state still says the same, for a way back.
    let back = upstream_state::read(&data_dir).unwrap().unwrap();
    assert_eq!(upstream_state::from_upstream(&back).unwrap(), Some(local));
    // Writes work through the manager's member.
    tests::put(&ep, "/after", "adopted").await.unwrap();
}

/// A whole upstream cluster moved at once: three members upstream ran
/// (names = ids, data in `data/<token>`, `myid` and `state` on each
/// volume), their managers replaced by ours together. Each adopts its
/// member; the cluster comes back with the same three member ids and its
/// data, revision not reset, no member added or removed, no restore.
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_upstream_cluster_is_adopted_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let (token, version) = ("upstreamtok3", "3.5.30");
    let ids = [
        "aUpstreamMemberOne0001",
        "bUpstreamMemberTwo0002",
        "cUpstreamMemberThree03",
    ];
    let nodes: Vec<EtcdNodeConfig> = (1..=3u8)
        .map(|h| {
            let ip = tests::host_ip(env.net, h);
            EtcdNodeConfig {
                name: ids[h as usize - 1].into(),
                peer_urls: vec![format!("http://{ip}:2380")],
                client_urls: vec![format!("http://{ip}:4001")],
                quarantined_client_urls: vec![format!("http://{ip}:8001")],
            }
        })
        .collect();
    let data_dir = |h: usize| env.root.join(format!("data/{h}"));
    let procs: Vec<etcd::EtcdProcess> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let spec = etcd::EtcdNodeSpec {
                name: n.name.clone(),
                version: version.into(),
                data_dir: data_dir(i + 1).join("data").join(token),
                cluster_token: token.into(),
                initial_cluster: nodes
                    .iter()
                    .map(|m| (m.name.clone(), m.peer_urls.clone()))
                    .collect(),
                initial_cluster_state_new: true,
                peer_urls: n.peer_urls.clone(),
                client_urls: n.client_urls.clone(),
                quarantined_client_urls: n.quarantined_client_urls.clone(),
                quarantined: false,
                listen_address: None,
                tls: None,
                listen_metrics_urls: vec![],
            };
            etcd::EtcdProcess::start(
                tests::etcd_binaries(version),
                spec,
                vec![],
                Some(env.root.join(format!("upstream-etcd-{i}.log"))),
            )
            .unwrap()
        })
        .collect();
    let eps: Vec<String> = nodes.iter().map(|n| n.client_urls[0].clone()).collect();
    tests::wait_put(
        "upstream's cluster",
        &eps[0],
        "/before",
        "upstream",
        Duration::from_secs(60),
    )
    .await;
    for i in 0..50 {
        tests::put(&eps[0], &format!("/k/{i}"), "v").await.unwrap();
    }
    let before = tests::members(&eps[0]).await.unwrap();
    let revision = revision_of(&eps).await;
    for p in procs {
        p.stop(Duration::from_secs(10)).await.unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let d = data_dir(i + 1);
        std::fs::write(d.join(upstream_state::MYID_FILE), id).unwrap();
        let local = etcd_manager::node::LocalEtcd {
            cluster_token: token.into(),
            etcd_version: version.into(),
            quarantined: false,
            nodes: nodes.clone(),
            new_cluster: false,
        };
        upstream_state::write(&d, &upstream_state::to_upstream(&local, false)).unwrap();
    }

    env.configure(3, version);
    let ms: Vec<_> = (1..=3).map(|h| env.start(h)).collect();
    let after = tests::wait_voters("the adopted cluster", &eps, 3, None).await;
    let ids_of = |ms: &[etcd::Member]| {
        let mut v: Vec<(u64, String)> = ms.iter().map(|m| (m.id, m.name.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(ids_of(&after), ids_of(&before), "the same three members");
    for ep in &eps {
        let v = wait_for(
            "each member serving the old data",
            Duration::from_secs(60),
            || {
                let ep = ep.clone();
                async move { get(&ep, "/k/49").await.ok().flatten() }
            },
        )
        .await;
        assert_eq!(v, "v");
    }
    let now = revision_of(&eps).await;
    assert!(
        now >= revision && now < revision + 1000,
        "revision kept, not bumped by a restore: {revision} -> {now}"
    );
    let logs: String = ms.iter().map(|m| m.log_text()).collect();
    assert_eq!(
        logs.matches("adopted upstream etcd-manager's volume")
            .count(),
        3,
        "{logs}"
    );
    for never in ["restore", "member added", "member removed"] {
        assert!(!logs.contains(never), "{never}: {logs}");
    }
    tests::put(&eps[2], "/after", "adopted").await.unwrap();
}

/// The store revision, through the first of `eps` that answers.
pub(crate) async fn revision_of(eps: &[String]) -> i64 {
    etcd::EtcdClient::connect(eps, Duration::from_secs(3))
        .await
        .unwrap()
        .status()
        .await
        .unwrap()
        .revision
}

/// Going back: a cluster our managers made without a volume provider (as
/// upstream's walkthrough runs it), stopped, is taken back by upstream's
/// manager as it reads a data dir (`pkg/privateapi/id.go`,
/// `pkg/etcd/etcdserver.go` at v3.0.20260707): `<data-dir>/myid` read
/// verbatim as its id (without it upstream gave itself a new identity and
/// refused the member: "self node was not included in cluster"), the
/// `state` protobuf naming that id among the cluster's nodes, etcd's data
/// in `data/<token>`. Each member is then started as upstream starts it
/// (that name, that data dir, the nodes as the initial cluster, state
/// existing): the same members, every key. (`scripts/upstream-mixed.sh`
/// goes back with upstream's own binary where its source is given.)
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_we_made_is_what_upstream_reads_to_take_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let version = "3.5.30";
    let mut ms: Vec<tests::Manager> = (1..=3u8).map(|h| env.start(h)).collect();
    env.configure(3, version);
    let eps: Vec<String> = (1..=3u8).map(|h| env.client_url(h)).collect();
    let members = tests::wait_voters("three voters", &eps, 3, None).await;
    for i in 0..30 {
        tests::wait_put(
            "a write",
            &eps[i % 3],
            &format!("/ours/{i}"),
            "v",
            Duration::from_secs(30),
        )
        .await;
    }
    for m in &mut ms {
        assert!(m.terminate(Duration::from_secs(30)), "{} stops", m.name);
    }
    let mut procs = vec![];
    for h in 1..=3u8 {
        let data_dir = env.root.join(format!("data/{h}"));
        // myid, byte for byte as upstream reads it: the id, no newline.
        let myid = std::fs::read_to_string(data_dir.join(upstream_state::MYID_FILE)).unwrap();
        assert_eq!(myid.len(), 22, "{myid:?}");
        assert!(
            members.iter().any(|m| m.name == myid),
            "{myid} among {members:?}"
        );
        let pb = upstream_state::read(&data_dir)
            .unwrap()
            .expect("upstream's state");
        let local = upstream_state::from_upstream(&pb)
            .unwrap()
            .expect("a cluster");
        assert!(
            !local.quarantined && local.etcd_version == version,
            "{local:?}"
        );
        assert_eq!(local.nodes.len(), 3);
        let me = local
            .nodes
            .iter()
            .find(|n| n.name == myid)
            .expect("myid among the nodes");
        let data = data_dir.join("data").join(&local.cluster_token);
        assert!(data.join("member").is_dir(), "{}", data.display());
        // Upstream's start of its etcd, on that.
        let spec = etcd::EtcdNodeSpec {
            name: myid.clone(),
            version: version.into(),
            data_dir: data,
            cluster_token: local.cluster_token.clone(),
            initial_cluster: local
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.peer_urls.clone()))
                .collect(),
            initial_cluster_state_new: false,
            peer_urls: me.peer_urls.clone(),
            client_urls: me.client_urls.clone(),
            quarantined_client_urls: me.quarantined_client_urls.clone(),
            quarantined: false,
            listen_address: None,
            tls: None,
            listen_metrics_urls: vec![],
        };
        procs.push(
            etcd::EtcdProcess::start(
                tests::etcd_binaries(version),
                spec,
                vec![],
                Some(env.root.join(format!("upstream-etcd-{h}.log"))),
            )
            .unwrap(),
        );
    }
    let back = tests::wait_voters(
        "the same three voters, as upstream starts them",
        &eps,
        3,
        None,
    )
    .await;
    let ids = |ms: &[etcd::Member]| {
        let mut v: Vec<u64> = ms.iter().map(|m| m.id).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&back), ids(&members));
    for i in 0..30 {
        assert_eq!(
            get(&eps[i % 3], &format!("/ours/{i}"))
                .await
                .unwrap()
                .as_deref(),
            Some("v")
        );
    }
    for p in procs {
        p.stop(Duration::from_secs(10)).await.unwrap();
    }
}
