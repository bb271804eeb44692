//! The node's tests: identities and the trashcan, leadership, and fencing
//! with the restore, upstream-state and version-change paths it guards.

#![allow(clippy::unwrap_used)]

#[allow(unused_imports)]
use super::{
    fence::*, installed::*, process::*, requests::*, restore::*, state::*, upstream_state, *,
};

mod basics {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every id we draw passes the identifier check (base64url ids may start
    /// with '-' or '_'; refusing those made one node in 32 invisible).
    #[test]
    fn drawn_node_ids_are_valid_identifiers() {
        for _ in 0..2000 {
            let id = new_node_id();
            assert_eq!(
                etcd::check_ident(etcd::IdentKind::NodeId, &id),
                Ok(()),
                "{id}"
            );
        }
    }

    #[test]
    fn trashcan_keeps_the_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let trash = dir.path().join("data-trashcan");
        for i in 0..5 {
            let d = trash.join(format!("tok{i}-1"));
            std::fs::create_dir_all(d.join("member")).unwrap();
            std::fs::write(d.join("member/db"), b"x").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i);
            std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
        }
        let mut gone = gc_trashcan(&trash, 3).unwrap();
        gone.sort();
        assert_eq!(gone, vec![trash.join("tok0-1"), trash.join("tok1-1")]);
        let mut left: Vec<_> = std::fs::read_dir(&trash)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["tok2-1", "tok3-1", "tok4-1"]);
        assert!(
            gc_trashcan(&dir.path().join("missing"), 3)
                .unwrap()
                .is_empty()
        );
    }
}

mod leadership {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(dir: &std::path::Path) -> Node {
        Node::open(NodeSettings {
            cluster_name: "c".into(),
            data_dir: dir.to_path_buf(),
            node_config: EtcdNodeConfig::default(),
            fixed_id: None,
            dns_suffix: String::new(),
            listen_metrics_urls: vec![],
            address: std::net::IpAddr::from([127, 0, 0, 1]),
            listen_address: None,
            bin_dirs: vec![],
            etcd_env_overrides: vec![],
            store: backup::BackupStore::open("memory://x", &Default::default()).unwrap(),
            etcd_pki: None,
            runtime: std::sync::Arc::new(crate::edges::ProcessRuntime),
            rules: Default::default(),
        })
        .unwrap()
    }

    /// The installed versions are scanned once, and again only when a
    /// version folder comes (or a binary is replaced).
    #[test]
    fn installed_versions_are_scanned_again_only_on_a_change() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bins = tempfile::tempdir().unwrap();
        let add = |v: &str| {
            let d = bins.path().join(format!("etcd-v{v}"));
            std::fs::create_dir_all(&d).unwrap();
            let f = d.join("etcd");
            std::fs::write(&f, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        add("9.1.1");
        let mut n = node(dir.path());
        n.settings.bin_dirs = vec![bins.path().to_path_buf()];
        let scans = || n.installed_scans.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n.installed().contains(&"9.1.1".to_string()));
        assert!(n.installed().contains(&"9.1.1".to_string()));
        assert_eq!(scans(), 1);
        add("9.2.0");
        assert!(n.installed().contains(&"9.2.0".to_string()));
        assert_eq!(scans(), 2);
        n.installed();
        assert_eq!(scans(), 2);
    }

    #[test]
    fn a_candidate_is_refused_when_a_lower_id_is_alive() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path());
        n.set_alive_view(vec!["b".into(), "c".into(), "d".into()]);
        assert!(
            matches!(
                n.judge_leadership("c", "b", "S"),
                Response::Failed(crate::peer::Refusal::StoreIdUnknown)
            ),
            "no store id read yet: nobody is accepted"
        );
        n.set_store_id("S".into());
        assert_eq!(n.judge_leadership("c", "b", "S"), Response::Done);
        assert!(
            matches!(n.judge_leadership("c", "c", "S"), Response::Failed(m) if m.to_string().contains("b is alive"))
        );
        assert!(matches!(
            n.judge_leadership("other", "a", "S"),
            Response::Failed(_)
        ));
        // A manager on another store (a per-host file:// store) is never accepted.
        assert!(
            matches!(n.judge_leadership("c", "b", "T"), Response::Failed(m @ crate::peer::Refusal::OtherStore { .. }) if m.to_string().contains("another backup store"))
        );
    }

    #[tokio::test]
    async fn the_store_id_is_created_once_and_shared() {
        let store = backup::BackupStore::open("memory://x", &Default::default()).unwrap();
        let a = store.store_id("first".into()).await.unwrap();
        let b = store.store_id("second".into()).await.unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("first", "first"));
        let other = backup::BackupStore::open("memory://y", &Default::default()).unwrap();
        assert_eq!(other.store_id("third".into()).await.unwrap(), "third");
    }
}

mod fencing {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::peer::{Caller, Fence};
    use object_store::ObjectStoreExt;

    fn store() -> backup::BackupStore {
        backup::BackupStore::new(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            object_store::path::Path::from("c"),
            "memory://c".into(),
        )
    }

    fn node(dir: &std::path::Path, store: &backup::BackupStore) -> Node {
        Node::open(NodeSettings {
            cluster_name: "c".into(),
            data_dir: dir.to_path_buf(),
            node_config: EtcdNodeConfig::default(),
            fixed_id: None,
            dns_suffix: String::new(),
            listen_metrics_urls: vec![],
            address: std::net::IpAddr::from([127, 0, 0, 1]),
            listen_address: None,
            bin_dirs: vec![],
            etcd_env_overrides: vec![],
            store: store.clone(),
            etcd_pki: None,
            runtime: std::sync::Arc::new(crate::edges::ProcessRuntime),
            rules: Default::default(),
        })
        .unwrap()
    }

    /// Write lease record `seq` naming `holder` at `epoch`, as the lease does.
    async fn lease(store: &backup::BackupStore, seq: u64, holder: &str, epoch: u64) {
        let record = lock::LeaseRecord {
            holder: holder.into(),
            epoch,
            seq,
            nonce: format!("{holder}-{seq}"),
            duration_ms: 5000,
            released: false,
        };
        store
            .object_store()
            .put(
                &lock::record_key(&store.lease_prefix(), seq),
                record.to_json().into(),
            )
            .await
            .unwrap();
    }

    fn fence(leader: &str, epoch: u64, seq: u64) -> Fence {
        Fence {
            cluster_name: "c".into(),
            leader_id: leader.into(),
            epoch,
            lease_seq: seq,
        }
    }

    fn stop(epoch: u64, seq: u64) -> Request {
        Request::StopEtcd(fence("l", epoch, seq))
    }

    fn tls(id: &str) -> Caller {
        Caller::node("127.0.0.1:1".parse().unwrap(), id)
    }

    #[tokio::test]
    async fn a_former_leaders_requests_are_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 9, "l", 5).await;
        let n = node(dir.path(), &store);
        let l = tls("l");
        assert_eq!(n.handle(&l, stop(5, 9)).await, Response::Done);
        assert_eq!(n.highest_epoch().await, 5);
        assert_eq!(
            n.handle(&l, stop(4, 3)).await,
            Response::Fenced { highest_epoch: 5 }
        );
        lease(&store, 10, "l", 5).await;
        assert_eq!(
            n.handle(&l, stop(5, 10)).await,
            Response::Done,
            "the current leader keeps working (a later record of the same epoch)"
        );
        drop(n);
        // The highest epoch survives a restart of the manager.
        let n = node(dir.path(), &store);
        assert_eq!(
            n.handle(&l, stop(4, 3)).await,
            Response::Fenced { highest_epoch: 5 }
        );
        let wrong_cluster = Request::StopEtcd(Fence {
            cluster_name: "other".into(),
            ..fence("l", 9, 9)
        });
        assert!(matches!(
            n.handle(&l, wrong_cluster).await,
            Response::Failed(_)
        ));
        assert_eq!(
            n.highest_epoch().await,
            5,
            "a request for another cluster raises nothing"
        );
    }

    /// A fence naming lease record u64::MAX (never written) passed as the
    /// current record and then held every real request of its leader back
    /// as late until the epoch changed: a record beyond the newest is
    /// refused, and the leader's next real request goes through.
    #[tokio::test]
    async fn a_fence_naming_a_record_never_written_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 4, "l", 2).await;
        let n = node(dir.path(), &store);
        let l = tls("l");
        assert_eq!(n.handle(&l, stop(2, 4)).await, Response::Done);
        let forged = n.handle(&l, stop(2, u64::MAX)).await;
        assert!(
            matches!(&forged, Response::Failed(m) if m.to_string().contains("never written")),
            "{forged:?}"
        );
        lease(&store, 5, "l", 2).await;
        assert_eq!(n.handle(&l, stop(2, 5)).await, Response::Done);
        // A record garbage-collected since (behind the newest) still passes.
        assert_eq!(n.handle(&l, stop(2, 5)).await, Response::Done);
    }

    /// Any holder of an etcd-manager-ca certificate could stop every etcd and
    /// fence every node at u64::MAX: now the fence must name the caller, and an
    /// epoch the store does not hold is refused without raising anything.
    #[tokio::test]
    async fn a_certificate_is_not_a_leader() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 1, "l", 3).await;
        let n = node(dir.path(), &store);
        // A foreign node speaking for the leader.
        let resp = n.handle(&tls("mallory"), stop(3, 1)).await;
        assert!(
            matches!(&resp, Response::Failed(m) if m.to_string().contains("names node mallory")),
            "{resp:?}"
        );
        assert_eq!(n.highest_epoch().await, 0);
        // Its own name, at an epoch the store does not hold.
        for (epoch, seq) in [(u64::MAX, 1), (4, 1), (4, 2), (u64::MAX, u64::MAX)] {
            let req = Request::StopEtcd(fence("mallory", epoch, seq));
            let resp = n.handle(&tls("mallory"), req).await;
            assert!(
                matches!(&resp, Response::Failed(m) if m.to_string().contains("not confirmed") || m.to_string().contains("not mallory")),
                "{resp:?}"
            );
        }
        assert_eq!(n.highest_epoch().await, 0, "no forged epoch was recorded");
        // A GcTrashcan with keep 0 from a stranger deletes nothing.
        let trash = dir.path().join("data-trashcan/old-1");
        std::fs::create_dir_all(&trash).unwrap();
        let gc = Request::GcTrashcan {
            fence: fence("mallory", 3, 1),
            keep: 0,
        };
        assert!(matches!(
            n.handle(&tls("mallory"), gc).await,
            Response::Failed(_)
        ));
        assert!(trash.exists());
        // The real leader is accepted; and then nobody else at its epoch.
        assert_eq!(n.handle(&tls("l"), stop(3, 1)).await, Response::Done);
        let resp = n
            .handle(&tls("mallory"), Request::StopEtcd(fence("mallory", 3, 1)))
            .await;
        assert!(
            matches!(&resp, Response::Failed(m) if m.to_string().contains("names l at epoch 3, not mallory")),
            "{resp:?}"
        );
        assert_eq!(n.highest_epoch().await, 3);
        // Even the leader's own GcTrashcan keeps the newest old data dir.
        let gc = Request::GcTrashcan {
            fence: fence("l", 3, 1),
            keep: 0,
        };
        assert_eq!(n.handle(&tls("l"), gc).await, Response::Done);
        assert!(trash.exists(), "keep 0 still keeps one");
        // Leadership requests, too, only for oneself.
        let lead = Request::Leadership {
            cluster_name: "c".into(),
            candidate: "aaa".into(),
            store_id: "S".into(),
        };
        assert!(
            matches!(n.handle(&tls("mallory"), lead).await, Response::Failed(m) if m.to_string().contains("names node mallory"))
        );
    }

    /// A request of the current leader held up on its way (sent under an
    /// older lease record than one the node already admitted) is refused,
    /// across a restart too; one of the same record or newer goes through.
    #[tokio::test]
    async fn a_request_that_arrives_after_a_newer_one_of_its_leader_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 3, "l", 2).await;
        let n = node(dir.path(), &store);
        assert_eq!(n.handle(&tls("l"), stop(2, 3)).await, Response::Done);
        for seq in 4..=8 {
            lease(&store, seq, "l", 2).await;
        }
        assert_eq!(n.handle(&tls("l"), stop(2, 7)).await, Response::Done);
        assert_eq!(n.handle(&tls("l"), stop(2, 7)).await, Response::Done);
        let late = n.handle(&tls("l"), stop(2, 5)).await;
        assert!(
            matches!(&late, Response::Failed(m) if m.to_string().contains("held up on its way") && m.to_string().contains("record 7")),
            "{late:?}"
        );
        drop(n);
        let n = node(dir.path(), &store);
        let late = n.handle(&tls("l"), stop(2, 6)).await;
        assert!(matches!(&late, Response::Failed(_)), "{late:?}");
        assert_eq!(n.handle(&tls("l"), stop(2, 8)).await, Response::Done);
    }

    #[tokio::test]
    async fn a_store_that_cannot_confirm_refuses_new_epochs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 1, "l", 2).await;
        let n = node(dir.path(), &store);
        assert_eq!(n.handle(&tls("l"), stop(2, 1)).await, Response::Done);
        // The record is gone (garbage-collected): the current one decides.
        lease(&store, 40, "k", 3).await;
        assert_eq!(
            n.handle(&tls("k"), Request::StopEtcd(fence("k", 3, 20)))
                .await,
            Response::Done
        );
        assert_eq!(n.highest_epoch().await, 3);
        // With no record at all an epoch above ours is refused; ours still works.
        let other = tempfile::tempdir().unwrap();
        let empty = node(other.path(), &super::fencing::store());
        let resp = empty.handle(&tls("l"), stop(1, 1)).await;
        assert!(
            matches!(&resp, Response::Failed(m) if m.to_string().contains("no lease record")),
            "{resp:?}"
        );
    }

    /// A restore job is answered at once and reports how it ended in
    /// GetInfo; a request this node cannot carry out fails at once.
    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // a deadline in real time
    async fn a_restore_job_answers_at_once_and_reports_its_end() {
        use crate::core::model::{JobKind, JobPhase};
        let dir = tempfile::tempdir().unwrap();
        let bins = tempfile::tempdir().unwrap();
        let etcd = bins.path().join("etcd-v3.5.30/etcd");
        std::fs::create_dir_all(etcd.parent().unwrap()).unwrap();
        std::fs::write(&etcd, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&etcd, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let store = store();
        lease(&store, 1, "l", 2).await;
        let mut n = node(dir.path(), &store);
        n.settings.bin_dirs = vec![bins.path().to_path_buf()];
        let n = n.shared();
        let job = |token: &str, name: &str| {
            Request::RestoreJob(crate::peer::RestoreBackup {
                fence: fence("l", 2, 1),
                cluster_token: token.into(),
                backup: "2026-01-02T03:04:05Z-000001".into(),
                etcd_version: "3.5.30".into(),
                nodes: vec![EtcdNodeConfig {
                    name: name.into(),
                    ..Default::default()
                }],
            })
        };
        let resp = n.handle(&tls("l"), job("tok1", "someone-else")).await;
        assert!(
            matches!(&resp, Response::Failed(m) if m.to_string().contains("not in the cluster")),
            "{resp:?}"
        );
        let id = n.id().to_string();
        assert_eq!(n.handle(&tls("l"), job("tok1", &id)).await, Response::Done);
        // The backup is not in the store: the job fails, and says why.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let phase = loop {
            let info = n.info().await;
            let j = info
                .job(JobKind::Restore, "tok1")
                .cloned()
                .expect("the job is reported");
            if j.phase.ended() {
                break j.phase;
            }
            assert!(std::time::Instant::now() < deadline, "the job ends: {j:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            matches!(&phase, JobPhase::Failed(m) if m.contains("2026-01-02T03:04:05Z-000001")),
            "{phase:?}"
        );
        assert_eq!(n.info().await.etcd_state, None, "nothing was touched");
        // A failed job is started again when asked again.
        assert_eq!(n.handle(&tls("l"), job("tok1", &id)).await, Response::Done);
    }

    /// Upstream's volume: adopted with its member when the state names this
    /// node, refused with the names when it does not; upstream's file is
    /// kept in step with ours.
    #[tokio::test]
    async fn an_upstream_state_is_adopted_only_by_its_member() {
        let store = store();
        let local = LocalEtcd {
            cluster_token: "tok".into(),
            etcd_version: "3.5.30".into(),
            quarantined: true,
            nodes: vec![EtcdNodeConfig {
                name: "m-up".into(),
                ..EtcdNodeConfig::default()
            }],
            new_cluster: false,
        };
        let pb = super::upstream_state::to_upstream(&local, false);
        // Another member's volume: refused, nothing written.
        let dir = tempfile::tempdir().unwrap();
        super::upstream_state::write(dir.path(), &pb).unwrap();
        std::fs::write(dir.path().join("myid"), "someone-else").unwrap();
        let e = Node::open(NodeSettings {
            data_dir: dir.path().to_path_buf(),
            ..node(tempfile::tempdir().unwrap().path(), &store)
                .settings
                .clone()
        })
        .err()
        .expect("refused");
        assert!(
            e.to_string().contains("m-up") && e.to_string().contains("someone-else"),
            "{e}"
        );
        assert!(!dir.path().join(STATE_FILE).exists());
        // Its own volume: adopted.
        std::fs::write(dir.path().join("myid"), "m-up").unwrap();
        let n = node(dir.path(), &store);
        assert_eq!(n.id(), "m-up");
        assert_eq!(n.inner.lock().await.state.etcd, Some(local.clone()));
        // A change of ours reaches upstream's file.
        {
            let mut inner = n.inner.lock().await;
            inner.state.etcd.as_mut().unwrap().quarantined = false;
            n.persist(&inner).unwrap();
        }
        let back = super::upstream_state::read(dir.path()).unwrap().unwrap();
        assert!(!back.quarantined);
        // Opened again, our own file is what counts.
        drop(n);
        assert_eq!(node(dir.path(), &store).id(), "m-up");
    }

    /// A setting the next version lacks: the check names it, and a move to
    /// that version is refused before etcd is touched.
    #[tokio::test]
    async fn settings_a_version_would_lose_are_named_and_refuse_the_move() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 1, "l", 1).await;
        let mut n = node(dir.path(), &store);
        n.settings.etcd_env_overrides = vec![(
            "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL".into(),
            "5s".into(),
        )];
        let l = tls("l");
        let check = |version: &str| Request::CheckSettings {
            version: version.into(),
        };
        assert_eq!(
            n.handle(&l, check("3.7.3")).await,
            Response::Failed(crate::peer::Refusal::NoEtcd)
        );
        n.inner.lock().await.state.etcd = Some(LocalEtcd {
            cluster_token: "tok".into(),
            etcd_version: "3.6.16".into(),
            quarantined: false,
            nodes: vec![],
            new_cluster: false,
        });
        let Response::Settings { lost } = n.handle(&l, check("3.7.3")).await else {
            panic!("no settings answer");
        };
        assert_eq!(lost.len(), 1);
        assert!(
            lost[0].contains("use ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL instead"),
            "{lost:?}"
        );
        assert_eq!(
            n.handle(&l, check("3.6.16")).await,
            Response::Settings { lost: vec![] }
        );
        assert!(matches!(
            n.handle(&l, check("../3.7")).await,
            Response::Failed(m) if m.to_string().starts_with("bad request")
        ));
        let up = Request::Reconfigure(crate::peer::Reconfigure {
            fence: fence("l", 1, 1),
            quarantined: None,
            etcd_version: Some("3.7.3".into()),
        });
        match n.handle(&l, up).await {
            Response::Failed(m) => assert!(
                m.to_string()
                    .contains("refused to move etcd 3.6.16 -> 3.7.3")
                    && m.to_string()
                        .contains("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL"),
                "{m}"
            ),
            other => panic!("moved anyway: {other:?}"),
        }
        assert_eq!(
            n.inner
                .lock()
                .await
                .state
                .etcd
                .as_ref()
                .unwrap()
                .etcd_version,
            "3.6.16"
        );
    }

    #[tokio::test]
    async fn path_like_tokens_are_refused_before_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = store();
        lease(&store, 1, "l", 1).await;
        let n = node(dir.path(), &store);
        let victim = dir.path().join("victim.db");
        std::fs::write(&victim, b"keep me").unwrap();
        for token in ["../x", "..", "a/b", "", ".hidden"] {
            let req = Request::RestoreBackup(crate::peer::RestoreBackup {
                fence: fence("l", 1, 1),
                cluster_token: token.into(),
                backup: "2026-01-02T03:04:05Z-000001".into(),
                etcd_version: "3.5.30".into(),
                nodes: vec![],
            });
            let resp = n.handle(&tls("l"), req).await;
            assert!(
                matches!(&resp, Response::Failed(m) if m.to_string().contains("invalid cluster token")),
                "{token}: {resp:?}"
            );
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(
            n.highest_epoch().await,
            0,
            "refused before the fence was recorded"
        );
    }
}
