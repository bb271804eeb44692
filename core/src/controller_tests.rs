//! Plans, not logs: each case builds an observation and checks the plan.
#![allow(clippy::disallowed_methods)] // tests make up their own instants

use super::*;
use crate::model::{EtcdNodeConfig, EtcdState, NodeInfo};

const V: &str = "3.5.30";

fn info(id: &str, state: Option<EtcdState>) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        cluster_name: "test".into(),
        node_config: EtcdNodeConfig {
            name: id.into(),
            peer_urls: vec![format!("http://{id}:2380")],
            client_urls: vec![format!("http://{id}:4001")],
            quarantined_client_urls: vec![format!("http://{id}:8001")],
        },
        etcd_state: state,
        highest_epoch: 1,
        installed_versions: vec![V.into()],
        jobs: Some(vec![]),
    }
}

fn idle(id: &str) -> PeerView {
    PeerView {
        id: id.into(),
        info: Some(info(id, None)),
    }
}

fn running(id: &str, quarantined: bool) -> PeerView {
    let state = EtcdState {
        cluster_token: "tok".into(),
        etcd_version: V.into(),
        quarantined,
        running: true,
        restarts: 0,
        nodes: vec![],
    };
    PeerView {
        id: id.into(),
        info: Some(info(id, Some(state))),
    }
}

fn member(n: u64, name: &str, healthy: bool) -> MemberView {
    MemberView {
        id: n,
        name: name.into(),
        peer_urls: vec![format!("http://{name}:2380")],
        is_learner: false,
        healthy,
        is_leader: n == 1,
        storage_version: None,
        db_size: 0,
        db_in_use: 0,
        progress: None,
    }
}

fn obs(member_count: i32, peers: Vec<PeerView>, members: Option<Vec<MemberView>>) -> Observation {
    let t0 = Instant::now();
    // Every peer's settings kept by every version (the settings tests clear this).
    let settings = peers
        .iter()
        .flat_map(|p| {
            KNOWN
                .iter()
                .map(|v| ((p.id.clone(), v.to_string()), SettingsCheck::Kept))
        })
        .collect();
    Observation {
        now: t0 + Duration::from_secs(3600),
        self_id: "a".into(),
        cluster_name: "test".into(),
        epoch: Some(1),
        spec: Some(ClusterSpec {
            member_count,
            etcd_version: V.into(),
        }),
        created_marker: members.is_some(),
        backups_exist: false,
        peers,
        cluster: members.map(|m| ClusterView {
            versions: vec![V.into()],
            members: m,
            downgrade_target: None,
            space_alarm: false,
        }),
        last_backup: Some(t0 + Duration::from_secs(3599)),
        backup_interval: Duration::from_secs(900),
        new_cluster_token: "newtok".into(),
        commands: vec![],
        last_retention: Some(t0 + Duration::from_secs(3599)),
        backup_requested: false,
        delta_full_needed: false,
        defrag_requested: None,
        restore_clear_prefixes: vec![],
        prefixes_cleared: Default::default(),
        quorum_recovery: Default::default(),
        allow_new_cluster: false,
        unhealthy_since: Default::default(),
        silent_since: Default::default(),
        out_of_reach_since: Default::default(),
        replace_grace: Duration::from_secs(60),
        defrag: DefragPolicy {
            fragmentation: 0.5,
            min_free_bytes: 1 << 20,
        },
        v2store: Default::default(),
        settings,
        unverified_backup: None,
        verify_requested: None,
        retired_tokens: Default::default(),
        rules: Default::default(),
    }
}

#[track_caller]
fn check(o: &Observation, actions: &[Action], waits: &[WaitReason]) {
    let plan = reconcile(o);
    assert_eq!(
        plan.actions, actions,
        "actions; waits were {:?}",
        plan.waits
    );
    assert_eq!(plan.waits, waits, "waits");
}

#[test]
fn only_the_leader_acts() {
    let mut o = obs(1, vec![idle("a")], None);
    o.epoch = None;
    check(&o, &[], &[WaitReason::NotLeader]);
}

#[test]
fn no_spec_and_bad_spec_wait() {
    let mut o = obs(1, vec![idle("a")], None);
    o.spec = None;
    check(&o, &[], &[WaitReason::NoSpec]);
    let o = obs(2, vec![idle("a")], None);
    assert!(matches!(
        reconcile(&o).waits[..],
        [WaitReason::InvalidSpec(_)]
    ));
}

#[test]
fn seeds_a_new_cluster_on_the_lowest_ids() {
    let o = obs(3, vec![idle("c"), idle("a"), idle("b"), idle("d")], None);
    check(
        &o,
        &[Action::SeedCluster {
            token: "newtok".into(),
            version: V.into(),
            peers: vec!["a".into(), "b".into(), "c".into()],
        }],
        &[],
    );
}

#[test]
fn seeding_waits_for_a_quorum_of_peers() {
    check(
        &obs(3, vec![idle("a")], None),
        &[],
        &[WaitReason::InsufficientPeers { have: 1, need: 2 }],
    );
}

#[test]
fn seeding_needs_the_version_installed() {
    let mut p = idle("a");
    if let Some(i) = p.info.as_mut() {
        i.installed_versions.clear();
    }
    check(
        &obs(1, vec![p], None),
        &[],
        &[WaitReason::VersionNotInstalled { version: V.into() }],
    );
}

#[test]
fn never_seeds_where_a_cluster_existed() {
    let mut o = obs(1, vec![idle("a")], None);
    o.created_marker = true;
    check(&o, &[], &[WaitReason::RestoreRequired]);
    let mut o = obs(1, vec![idle("a")], None);
    o.backups_exist = true;
    check(&o, &[], &[WaitReason::CreatedMarkerMissing]);
}

#[test]
fn waits_while_seeded_etcd_starts() {
    check(
        &obs(1, vec![running("a", true)], None),
        &[],
        &[WaitReason::EtcdStarting],
    );
}

#[test]
fn lifts_quarantine_when_all_members_are_healthy() {
    let mut o = obs(
        1,
        vec![running("a", true)],
        Some(vec![member(1, "a", true)]),
    );
    o.created_marker = false;
    check(
        &o,
        &[
            Action::WriteCreatedMarker,
            Action::LiftQuarantine {
                peers: vec!["a".into()],
            },
        ],
        &[],
    );
}

#[test]
fn grows_one_member_at_a_time_with_a_backup_first() {
    let o = obs(
        3,
        vec![running("a", false), idle("b"), idle("c")],
        Some(vec![member(1, "a", true)]),
    );
    check(
        &o,
        &[
            Action::TakeBackup {
                reason: BackupReason::BeforeChange,
            },
            Action::AddMember {
                peer: "b".into(),
                learner: true,
                token: "tok".into(),
                version: V.into(),
            },
        ],
        &[],
    );
}

#[test]
fn starts_a_member_that_was_added_but_never_started() {
    let mut added = member(2, "", false);
    added.peer_urls = vec!["http://b:2380".into()];
    let o = obs(
        3,
        vec![running("a", false), idle("b")],
        Some(vec![member(1, "a", true), added]),
    );
    check(
        &o,
        &[Action::StartAddedMember {
            peer: "b".into(),
            member_id: 2,
            token: "tok".into(),
            version: V.into(),
        }],
        &[],
    );
}

#[test]
fn promotes_a_running_learner() {
    let mut l = member(2, "b", true);
    l.is_learner = true;
    let o = obs(
        3,
        vec![running("a", false), running("b", false)],
        Some(vec![member(1, "a", true), l.clone()]),
    );
    check(
        &o,
        &[Action::PromoteMember {
            member_id: 2,
            name: "b".into(),
        }],
        &[],
    );
    l.healthy = false;
    let o = obs(
        3,
        vec![running("a", false), running("b", false)],
        Some(vec![member(1, "a", true), l]),
    );
    check(
        &o,
        &[],
        &[WaitReason::LearnerCatchingUp { name: "b".into() }],
    );
}

#[test]
fn shrinks_without_touching_the_raft_leader() {
    let peers = vec![
        running("a", false),
        running("b", false),
        running("c", false),
    ];
    let o = obs(
        1,
        peers,
        Some(vec![
            member(1, "a", true),
            member(2, "b", true),
            member(3, "c", true),
        ]),
    );
    check(&o, &backup_then_remove(3, "c"), &[]);
}

#[test]
fn stops_etcd_of_a_removed_member() {
    let o = obs(
        1,
        vec![running("a", false), running("b", false)],
        Some(vec![member(1, "a", true)]),
    );
    check(&o, &[Action::StopEtcd { peer: "b".into() }], &[]);
}

/// A member of a cluster a quorum recovery replaced comes back (its host was
/// down, not wiped): its etcd is stopped so it can join the new cluster. Any
/// other cluster beside ours is still never touched.
#[test]
fn a_member_of_a_retired_cluster_is_stopped_another_cluster_is_not() {
    let mut old = running("c", false);
    if let Some(s) = old.info.as_mut().and_then(|i| i.etcd_state.as_mut()) {
        s.cluster_token = "oldtok".into();
    }
    let mut o = obs(
        3,
        vec![running("a", false), running("b", false), old],
        Some(vec![member(1, "a", true), member(2, "b", true)]),
    );
    check(&o, &[], &[WaitReason::ForeignCluster { peer: "c".into() }]);
    o.retired_tokens.insert("oldtok".into());
    check(&o, &[Action::StopEtcd { peer: "c".into() }], &[]);
}

/// No current cluster answers (the restored cluster's only member was
/// wiped), and a member of the retired cluster it replaced serves on,
/// quarantined: it is stopped, not waited for as an etcd that is starting
/// (simulation seed 1306 waited for ever).
#[test]
fn a_retired_member_alone_is_stopped_not_waited_for() {
    let mut old = running("a", true);
    if let Some(s) = old.info.as_mut().and_then(|i| i.etcd_state.as_mut()) {
        s.cluster_token = "oldtok".into();
    }
    let mut o = obs(1, vec![old, idle("b"), idle("c")], None);
    o.created_marker = true;
    check(&o, &[], &[WaitReason::EtcdStarting]);
    o.retired_tokens.insert("oldtok".into());
    check(&o, &[Action::StopEtcd { peer: "a".into() }], &[]);
}

/// A removed member's etcd exits by itself; if the StopEtcd that follows the
/// removal did not reach its node, the node keeps the assignment with etcd
/// not running and is never idle again, so the spec is never reached. The
/// assignment is dropped whether etcd runs or not (found by the simulation).
#[test]
fn drops_the_assignment_of_a_removed_member_whose_etcd_exited() {
    let mut exited = running("b", false);
    if let Some(s) = exited.info.as_mut().and_then(|i| i.etcd_state.as_mut()) {
        s.running = false;
    }
    let o = obs(
        1,
        vec![running("a", false), exited],
        Some(vec![member(1, "a", true)]),
    );
    check(&o, &[Action::StopEtcd { peer: "b".into() }], &[]);
}

#[test]
fn an_unhealthy_majority_blocks_every_change() {
    let peers = vec![
        running("a", false),
        running("b", false),
        running("c", false),
        idle("d"),
    ];
    let o = obs(
        5,
        peers,
        Some(vec![
            member(1, "a", true),
            member(2, "b", false),
            member(3, "c", false),
        ]),
    );
    check(
        &o,
        &[],
        &[WaitReason::ClusterUnhealthy {
            healthy: 1,
            voters: 3,
        }],
    );
}

#[test]
fn periodic_backups_follow_the_interval() {
    let mut o = obs(
        1,
        vec![running("a", false)],
        Some(vec![member(1, "a", true)]),
    );
    check(&o, &[], &[]);
    o.last_backup = None;
    check(
        &o,
        &[Action::TakeBackup {
            reason: BackupReason::Periodic,
        }],
        &[],
    );
}

#[test]
fn a_restore_drill_goes_to_the_lowest_other_manager_of_a_settled_cluster() {
    let three = || {
        obs(
            3,
            vec![
                running("a", false),
                running("c", false),
                running("b", false),
            ],
            Some(vec![
                member(1, "a", true),
                member(2, "b", true),
                member(3, "c", true),
            ]),
        )
    };
    let mut o = three();
    o.unverified_backup = Some("2026-11-30T00:00:00Z-000001".into());
    check(
        &o,
        &[Action::VerifyBackup {
            backup: "2026-11-30T00:00:00Z-000001".into(),
            peer: "b".into(),
            request: None,
        }],
        &[],
    );
    // An operator's request, also while a member is unhealthy.
    let mut asked = three();
    asked.verify_requested = Some(("verify-now--x".into(), "x".into()));
    if let Some(c) = asked.cluster.as_mut() {
        c.members[2].healthy = false;
    }
    assert!(matches!(
        reconcile(&asked).actions.as_slice(),
        [Action::VerifyBackup { request: Some(r), peer, .. }] if r == "verify-now--x" && peer == "b"
    ));
    // Alone: the leader itself.
    let mut alone = obs(
        1,
        vec![running("a", false)],
        Some(vec![member(1, "a", true)]),
    );
    alone.unverified_backup = Some("x".into());
    assert_eq!(drill_runner(&alone, V), "a");
    // Not while a member is unhealthy (the drill waits for a settled cluster).
    let mut sick = three();
    sick.unverified_backup = Some("x".into());
    if let Some(c) = sick.cluster.as_mut() {
        c.members[2].healthy = false;
    }
    assert!(
        !reconcile(&sick)
            .actions
            .iter()
            .any(|a| matches!(a, Action::VerifyBackup { .. })),
        "{:?}",
        reconcile(&sick)
    );
    // A due periodic backup comes first.
    o.last_backup = None;
    assert!(matches!(
        reconcile(&o).actions.first(),
        Some(Action::TakeBackup { .. })
    ));
}

#[test]
fn a_downgrade_goes_by_quarantine_backup_and_restore() {
    let mut o = obs(
        1,
        vec![running("a", false)],
        Some(vec![member(1, "a", true)]),
    );
    if let Some(s) = o.spec.as_mut() {
        s.etcd_version = "3.4.23".into();
    }
    // Not installed anywhere: wait and say so.
    check(
        &o,
        &[],
        &[WaitReason::VersionNotInstalled {
            version: "3.4.23".into(),
        }],
    );
    o.peers = vec![on_version(running("a", false), V)];
    check(
        &o,
        &[Action::Quarantine {
            peers: vec!["a".into()],
        }],
        &[],
    );
    o.peers = vec![on_version(running("a", true), V)];
    let target = ClusterSpec {
        member_count: 1,
        etcd_version: "3.4.23".into(),
    };
    check(
        &o,
        &[
            Action::TakeBackup {
                reason: BackupReason::BeforeChange,
            },
            Action::QueueRestore { spec: target },
        ],
        &[],
    );
}

#[test]
fn exhaustive_small_clusters_stay_safe() {
    let names = ["a", "b", "c", "d", "e"];
    for n in 1..=5usize {
        for health in 0u32..(1 << n) {
            for want in [1, 3, 5] {
                for (leader, expired) in
                    [(true, false), (false, false), (true, true), (false, true)]
                {
                    let mut peers: Vec<PeerView> =
                        names[..n].iter().map(|x| running(x, false)).collect();
                    peers.extend(names[n..].iter().map(|x| idle(x)));
                    let members: Vec<MemberView> = (0..n)
                        .map(|i| member(i as u64 + 1, names[i], health & (1 << i) != 0))
                        .collect();
                    let mut o = obs(want, peers, Some(members.clone()));
                    if !leader {
                        o.epoch = None;
                    }
                    if expired {
                        // Every unhealthy member is past the replacement grace period.
                        for m in members.iter().filter(|m| !m.healthy) {
                            o.unhealthy_since
                                .insert(m.id, o.now - Duration::from_secs(3600));
                        }
                    }
                    let plan = reconcile(&o);
                    let changes = plan
                        .actions
                        .iter()
                        .filter(|a| a.is_membership_change())
                        .count();
                    assert!(
                        changes <= 1,
                        "n={n} health={health:b} want={want}: {plan:?}"
                    );
                    if !leader {
                        assert!(plan.actions.is_empty(), "acted without the lease: {plan:?}");
                    }
                    let all_healthy = members.iter().all(|m| m.healthy);
                    for a in &plan.actions {
                        if let Action::AddMember { .. } = a {
                            assert!(all_healthy, "add with unhealthy members: {plan:?}");
                            assert_eq!(
                                plan.actions.first(),
                                Some(&Action::TakeBackup {
                                    reason: BackupReason::BeforeChange
                                }),
                                "risky change without a backup first"
                            );
                        }
                        if let Action::RemoveMember { member_id, .. } = a {
                            assert_ne!(*member_id, 1, "removed the raft leader");
                            assert_eq!(
                                plan.actions.first(),
                                Some(&Action::TakeBackup {
                                    reason: BackupReason::BeforeChange
                                }),
                                "remove without a backup first"
                            );
                            // Removing an unhealthy member, or any while all are healthy,
                            // must leave a healthy majority of the remaining voters.
                            let gone = members
                                .iter()
                                .find(|m| m.id == *member_id)
                                .expect("a member");
                            assert!(
                                !gone.healthy || all_healthy,
                                "removed a healthy member while others are down"
                            );
                            let healthy_after = members
                                .iter()
                                .filter(|m| m.healthy && m.id != *member_id)
                                .count();
                            assert!(
                                healthy_after >= quorum(n - 1),
                                "remove loses quorum: n={n} health={health:b}: {plan:?}"
                            );
                        }
                    }
                    let healthy = members.iter().filter(|m| m.healthy).count();
                    if healthy < quorum(n) {
                        assert!(plan.actions.is_empty(), "acted without quorum: {plan:?}");
                    }
                }
            }
        }
    }
}

fn restore_cmd(started: Option<&str>, refused: Option<&str>) -> CommandView {
    CommandView {
        name: "2024-01-01T00:00:00Z-000000".into(),
        backup: "2023-12-31T23:00:00Z-000001".into(),
        spec: Some(ClusterSpec {
            member_count: 3,
            etcd_version: V.into(),
        }),
        started_token: started.map(Into::into),
        refused: refused.map(Into::into),
    }
}

/// A restore that reached one of its three nodes (the others' downloads
/// failed; found by the simulation, seed 2091): the other two get the same
/// restore again, same token, while the new cluster serves no client. Once
/// it serves, or while one of them does not answer, it is not sent again.
#[test]
fn a_restore_that_reached_some_of_its_nodes_is_sent_again_to_the_others() {
    let restored = |quarantined: bool| {
        let mut p = running("a", quarantined);
        if let Some(s) = p.info.as_mut().and_then(|i| i.etcd_state.as_mut()) {
            s.cluster_token = "begun".into();
            s.nodes = ["a", "b", "c"]
                .iter()
                .map(|n| EtcdNodeConfig {
                    name: (*n).into(),
                    ..Default::default()
                })
                .collect();
        }
        p
    };
    let mut o = obs(
        3,
        vec![restored(true), idle("b"), idle("c"), idle("d")],
        Some(vec![
            member(1, "a", true),
            member(2, "b", false),
            member(3, "c", false),
        ]),
    );
    o.commands = vec![restore_cmd(Some("begun"), None)];
    check(
        &o,
        &[Action::RestoreBackup {
            command: "2024-01-01T00:00:00Z-000000".into(),
            backup: "2023-12-31T23:00:00Z-000001".into(),
            token: "begun".into(),
            version: V.into(),
            peers: vec!["a".into(), "b".into(), "c".into()],
        }],
        &[],
    );
    // A member that does not answer may be restoring still: no second try.
    let mut silent = o.clone();
    silent.peers[2].info = None;
    assert!(
        !reconcile(&silent)
            .actions
            .iter()
            .any(|a| matches!(a, Action::RestoreBackup { .. })),
        "{:?}",
        reconcile(&silent)
    );
    // Out of quarantine, the new cluster may have taken writes: no second try.
    let mut serving = o.clone();
    serving.peers[0] = restored(false);
    assert!(
        !reconcile(&serving)
            .actions
            .iter()
            .any(|a| matches!(a, Action::RestoreBackup { .. })),
        "{:?}",
        reconcile(&serving)
    );
    // Retired since (a quorum recovery rebuilt from it): no second try.
    let mut retired = o.clone();
    retired.retired_tokens.insert("begun".into());
    assert!(
        !reconcile(&retired)
            .actions
            .iter()
            .any(|a| matches!(a, Action::RestoreBackup { .. })),
        "{:?}",
        reconcile(&retired)
    );
}

#[test]
fn total_loss_waits_for_an_operator() {
    let mut o = obs(3, vec![idle("a"), idle("b"), idle("c")], None);
    o.created_marker = true;
    let plan = reconcile(&o);
    assert_eq!(plan.waits, [WaitReason::RestoreRequired]);
    assert_eq!(
        plan.waits[0].to_string(),
        "etcd has 0 members registered; must issue restore-backup command to proceed"
    );
}

#[test]
fn a_restore_command_restores_on_the_lowest_ids() {
    let mut o = obs(3, vec![idle("c"), idle("a"), idle("b"), idle("d")], None);
    o.created_marker = true;
    o.commands = vec![restore_cmd(None, None)];
    check(
        &o,
        &[Action::RestoreBackup {
            command: "2024-01-01T00:00:00Z-000000".into(),
            backup: "2023-12-31T23:00:00Z-000001".into(),
            token: "newtok".into(),
            version: V.into(),
            peers: vec!["a".into(), "b".into(), "c".into()],
        }],
        &[],
    );
}

/// A restore stops every etcd it can reach first; a quorum of the current
/// cluster serving from hosts whose managers do not answer would keep
/// serving beside the restored cluster (found by the simulation: a paused
/// manager whose etcd alone was the cluster). It waits, naming them; with
/// one of three out of reach it goes ahead.
#[test]
fn a_restore_waits_while_a_quorum_it_cannot_stop_serves() {
    let silent = |id: &str| PeerView {
        id: id.into(),
        info: None,
    };
    let members = vec![
        member(1, "a", true),
        member(2, "b", true),
        member(3, "c", true),
    ];
    let mut o = obs(
        3,
        vec![running("a", false), silent("b"), silent("c")],
        Some(members.clone()),
    );
    o.commands = vec![restore_cmd(None, None)];
    let plan = reconcile(&o);
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(
        plan.waits,
        [WaitReason::RestoreWaitsForMembers {
            members: vec!["b".into(), "c".into()],
        }]
    );
    assert!(
        plan.waits[0].to_string().contains("members b, c"),
        "{}",
        plan.waits[0]
    );
    // Out of reach for less than the replace grace counts as serving (a
    // host cut off for a moment, sim seed 2641); past the grace, as gone.
    let mut cut = obs(
        3,
        vec![running("a", false), silent("b"), silent("c"), idle("d")],
        Some(vec![
            member(1, "a", true),
            member(2, "b", false),
            member(3, "c", false),
        ]),
    );
    cut.commands = vec![restore_cmd(None, None)];
    cut.silent_since
        .insert(2, cut.now - Duration::from_secs(10));
    cut.silent_since
        .insert(3, cut.now - Duration::from_secs(10));
    assert_eq!(
        reconcile(&cut).waits,
        [WaitReason::RestoreWaitsForMembers {
            members: vec!["b".into(), "c".into()],
        }]
    );
    cut.silent_since.insert(2, cut.now - cut.replace_grace);
    cut.silent_since.insert(3, cut.now - cut.replace_grace);
    assert!(
        reconcile(&cut)
            .actions
            .iter()
            .any(|a| matches!(a, Action::RestoreBackup { .. })),
        "{:?}",
        reconcile(&cut)
    );
    // No member answers at all, and a manager out of reach said last that
    // its etcd serves (sim seed 2641): the same wait, until the grace.
    let mut unseen = obs(3, vec![idle("a"), silent("b"), idle("d")], None);
    unseen.commands = vec![restore_cmd(None, None)];
    unseen
        .out_of_reach_since
        .insert("b".into(), unseen.now - Duration::from_secs(10));
    assert_eq!(
        reconcile(&unseen).waits,
        [WaitReason::RestoreWaitsForMembers {
            members: vec!["b".into()],
        }]
    );
    unseen
        .out_of_reach_since
        .insert("b".into(), unseen.now - unseen.replace_grace);
    assert!(
        reconcile(&unseen)
            .actions
            .iter()
            .any(|a| matches!(a, Action::RestoreBackup { .. })),
        "{:?}",
        reconcile(&unseen)
    );
    // One of three out of reach: stopping the other two ends the old quorum.
    let mut o = obs(
        3,
        vec![
            running("a", false),
            running("b", false),
            silent("c"),
            idle("d"),
        ],
        Some(members),
    );
    o.commands = vec![restore_cmd(None, None)];
    let plan = reconcile(&o);
    assert!(
        matches!(plan.actions.as_slice(), [Action::RestoreBackup { .. }]),
        "{plan:?}"
    );
}

#[test]
fn a_started_restore_is_finished_after_the_cluster_is_healthy() {
    // Quarantined: the ordinary loop lifts the quarantine first.
    let peers = vec![running("a", true)];
    let mut o = obs(1, peers, Some(vec![member(1, "a", true)]));
    o.commands = vec![restore_cmd(Some("tok"), None)];
    check(
        &o,
        &[Action::LiftQuarantine {
            peers: vec!["a".into()],
        }],
        &[],
    );
    // Lifted and healthy: a backup, then the command goes.
    let mut o = obs(
        1,
        vec![running("a", false)],
        Some(vec![member(1, "a", true)]),
    );
    o.commands = vec![restore_cmd(Some("tok"), None)];
    check(
        &o,
        &[
            Action::TakeBackup {
                reason: BackupReason::AfterRestore,
            },
            Action::CompleteRestore {
                command: "2024-01-01T00:00:00Z-000000".into(),
            },
        ],
        &[],
    );
}

#[test]
fn prefixes_are_cleared_from_a_restored_cluster_before_its_quarantine_is_lifted() {
    let peers = vec![running("a", true), running("b", true), running("c", true)];
    let ms = vec![
        member(1, "a", true),
        member(2, "b", true),
        member(3, "c", false),
    ];
    let mut o = obs(3, peers, Some(ms));
    o.commands = vec![restore_cmd(Some("tok"), None)];
    o.restore_clear_prefixes = vec!["/registry/masterleases/".into()];
    check(
        &o,
        &[Action::ClearPrefixes {
            token: "tok".into(),
            prefixes: vec!["/registry/masterleases/".into()],
        }],
        &[],
    );
    // Cleared: the quarantine is lifted as usual.
    o.prefixes_cleared.insert("tok".into());
    assert!(matches!(
        &reconcile(&o).actions[..],
        [Action::LiftQuarantine { .. }]
    ));
    // No majority healthy yet: nothing is cleared.
    o.prefixes_cleared.clear();
    if let Some(c) = o.cluster.as_mut() {
        c.members[1].healthy = false;
    }
    assert!(
        !reconcile(&o)
            .actions
            .iter()
            .any(|a| matches!(a, Action::ClearPrefixes { .. }))
    );
}

#[test]
fn a_refused_restore_leaves_the_cluster_alone() {
    let mut o = obs(
        1,
        vec![running("a", false)],
        Some(vec![member(1, "a", true)]),
    );
    o.commands = vec![restore_cmd(None, Some("backup is corrupt"))];
    let plan = reconcile(&o);
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert!(
        matches!(&plan.waits[..], [WaitReason::RestoreRefused { reason, .. }] if reason == "backup is corrupt")
    );
    assert!(plan.waits[0].to_string().contains("delete-command"));
}

#[test]
fn a_restore_needs_a_quorum_of_peers() {
    let mut o = obs(3, vec![idle("a")], None);
    o.commands = vec![restore_cmd(None, None)];
    check(
        &o,
        &[],
        &[WaitReason::InsufficientPeers { have: 1, need: 2 }],
    );
}

#[test]
fn retention_follows_a_periodic_backup_at_most_hourly() {
    let mut o = obs(
        1,
        vec![running("a", false)],
        Some(vec![member(1, "a", true)]),
    );
    o.last_backup = None;
    o.last_retention = None;
    check(
        &o,
        &[
            Action::TakeBackup {
                reason: BackupReason::Periodic,
            },
            Action::ApplyRetention,
            Action::GcTrashcan {
                peers: vec!["a".into()],
                keep: TRASHCAN_KEEP,
            },
        ],
        &[],
    );
    o.last_retention = Some(o.now - Duration::from_secs(600));
    check(
        &o,
        &[Action::TakeBackup {
            reason: BackupReason::Periodic,
        }],
        &[],
    );
}

#[test]
fn backup_now_is_taken_then_cleared() {
    let mut o = obs(
        1,
        vec![running("a", false)],
        Some(vec![member(1, "a", true)]),
    );
    o.backup_requested = true;
    check(
        &o,
        &[
            Action::TakeBackup {
                reason: BackupReason::OnDemand,
            },
            Action::ClearBackupRequest,
        ],
        &[],
    );
}

#[test]
fn a_continuous_backup_gap_asks_for_a_full_backup_once_healthy() {
    let mut o = obs(
        1,
        vec![running("a", false)],
        Some(vec![member(1, "a", true)]),
    );
    check(&o, &[], &[]);
    o.delta_full_needed = true;
    check(
        &o,
        &[Action::TakeBackup {
            reason: BackupReason::DeltaChain,
        }],
        &[],
    );
    // Not while a member is unhealthy: a snapshot of a sick cluster waits.
    let mut sick = obs(
        1,
        vec![running("a", false), running("b", false)],
        Some(vec![member(1, "a", true), member(2, "b", false)]),
    );
    sick.delta_full_needed = true;
    assert!(!reconcile(&sick).actions.contains(&Action::TakeBackup {
        reason: BackupReason::DeltaChain
    }));
}

#[test]
fn an_operator_may_allow_a_new_cluster_despite_backups() {
    let mut o = obs(1, vec![idle("a")], None);
    o.backups_exist = true;
    check(&o, &[], &[WaitReason::CreatedMarkerMissing]);
    assert!(
        reconcile(&o).waits[0]
            .to_string()
            .contains("seed-new-cluster")
    );
    o.allow_new_cluster = true;
    assert!(matches!(
        &reconcile(&o).actions[..],
        [Action::SeedCluster { .. }]
    ));
}

fn on_version(mut p: PeerView, v: &str) -> PeerView {
    if let Some(s) = p.info.as_mut().and_then(|i| i.etcd_state.as_mut()) {
        s.etcd_version = v.into();
    }
    if let Some(i) = p.info.as_mut() {
        i.installed_versions = vec!["3.4.23".into(), V.into()];
    }
    p
}

#[test]
fn a_minor_upgrade_rolls_one_follower_at_a_time_with_a_backup_first() {
    let peers = vec![
        on_version(running("a", false), "3.4.23"),
        on_version(running("b", false), "3.4.23"),
        on_version(running("c", false), V),
    ];
    let ms = vec![
        member(1, "a", true),
        member(2, "b", true),
        member(3, "c", true),
    ];
    let mut o = obs(3, peers, Some(ms));
    if let Some(c) = o.cluster.as_mut() {
        c.versions = vec!["3.4.23".into(), V.into()];
    }
    // "a" is the raft leader: "b" goes first.
    check(
        &o,
        &[
            Action::TakeBackup {
                reason: BackupReason::BeforeChange,
            },
            Action::UpgradeMember {
                peer: "b".into(),
                version: V.into(),
            },
        ],
        &[],
    );
    // Never while a member is unhealthy.
    if let Some(c) = o.cluster.as_mut() {
        c.members[2].healthy = false;
    }
    assert!(reconcile(&o).actions.is_empty());
}

#[test]
fn downgrades_and_big_jumps_are_not_rolled() {
    assert!(rolling_compatible(&["3.4.23"], "3.5.30"));
    assert!(rolling_compatible(&["3.5.16", "3.5.30"], "3.5.30"));
    assert!(!rolling_compatible(&["3.3.25"], "3.5.30"), "two minors");
    assert!(!rolling_compatible(&["3.5.30"], "3.4.23"), "downgrade");
    assert!(
        rolling_compatible(&["3.5.30"], "3.5.16"),
        "patch changes roll both ways"
    );
    assert!(rolling_compatible(&["3.3.25"], "3.4.23"));
}

#[test]
fn a_dead_member_is_replaced_after_the_grace_period() {
    let peers = vec![running("a", false), running("b", false), idle("d")];
    let ms = vec![
        member(1, "a", true),
        member(2, "b", true),
        member(3, "c", false),
    ];
    let mut o = obs(3, peers, Some(ms));
    // Within the grace period: nothing.
    o.unhealthy_since.insert(3, o.now - Duration::from_secs(30));
    assert!(reconcile(&o).actions.is_empty(), "{:?}", reconcile(&o));
    // Past it: backup, remove; the next pass adds the idle node.
    o.unhealthy_since.insert(3, o.now - Duration::from_secs(61));
    check(&o, &backup_then_remove(3, "c"), &[]);
}

#[test]
fn a_host_back_with_an_empty_disk_is_replaced_at_once() {
    // "c2" is the host of "c" with a wiped disk: a new id on c's peer URL.
    let mut wiped = idle("c2");
    if let Some(i) = wiped.info.as_mut() {
        i.node_config.peer_urls = vec!["http://c:2380".into()];
    }
    let ms = vec![
        member(1, "a", true),
        member(2, "b", true),
        member(3, "c", false),
    ];
    let o = obs(
        3,
        vec![running("a", false), running("b", false), wiped],
        Some(ms),
    );
    check(&o, &backup_then_remove(3, "c"), &[]);
}

#[test]
fn replacement_never_removes_the_raft_leader_or_costs_quorum() {
    // The dead one is the raft leader (stale view): leave it.
    let ms = vec![
        member(1, "a", false),
        member(2, "b", true),
        member(3, "c", true),
    ];
    let mut o = obs(3, vec![running("b", false), running("c", false)], Some(ms));
    o.unhealthy_since
        .insert(1, o.now - Duration::from_secs(600));
    assert!(
        reconcile(&o)
            .actions
            .iter()
            .all(|a| !a.is_membership_change())
    );
    // Two of five dead: removing one leaves 4 voters with 3 healthy, fine.
    let ms: Vec<_> = (1..=5)
        .map(|i| member(i, &format!("m{i}"), i <= 3))
        .collect();
    let peers = (1..=3).map(|i| running(&format!("m{i}"), false)).collect();
    let mut o = obs(5, peers, Some(ms));
    o.unhealthy_since
        .insert(4, o.now - Duration::from_secs(600));
    o.unhealthy_since
        .insert(5, o.now - Duration::from_secs(600));
    assert!(matches!(
        &reconcile(&o).actions[..],
        [
            Action::TakeBackup { .. },
            Action::RemoveMember { member_id: 4, .. }
        ]
    ));
}

#[test]
fn a_lift_cut_short_is_finished_even_with_a_member_down() {
    // The old leader died while lifting: "c" is still quarantined, "b" is gone.
    let peers = vec![running("a", false), running("c", true)];
    let ms = vec![
        member(1, "a", true),
        member(2, "b", false),
        member(3, "c", true),
    ];
    let o = obs(3, peers, Some(ms));
    check(
        &o,
        &[Action::LiftQuarantine {
            peers: vec!["c".into()],
        }],
        &[],
    );
}

#[test]
fn every_wait_reason_label_is_listed() {
    let all = [
        WaitReason::NotLeader,
        WaitReason::NoSpec,
        WaitReason::InvalidSpec(SpecError::NoMembers { count: 0 }),
        WaitReason::RestoreRequired,
        WaitReason::CreatedMarkerMissing,
        WaitReason::InsufficientPeers { have: 0, need: 0 },
        WaitReason::VersionNotInstalled {
            version: String::new(),
        },
        WaitReason::EtcdStarting,
        WaitReason::ClusterUnhealthy {
            healthy: 0,
            voters: 0,
        },
        WaitReason::LearnerCatchingUp {
            name: String::new(),
        },
        WaitReason::NoIdlePeer {
            members: 0,
            want: 0,
        },
        WaitReason::VersionChangePending {
            from: String::new(),
            to: String::new(),
        },
        WaitReason::ForeignCluster {
            peer: String::new(),
        },
        WaitReason::RestoreWaitsForMembers { members: vec![] },
        WaitReason::DumpWaitsForManagers { members: vec![] },
        WaitReason::RestoreRefused {
            backup: String::new(),
            reason: String::new(),
        },
        WaitReason::UpgradePathBlocked {
            reason: String::new(),
        },
        WaitReason::DowngradeMigrating {
            target: String::new(),
            members: vec![],
        },
        WaitReason::QuorumLost {
            survivors: vec![],
            lost: vec![],
            plan: String::new(),
            auto_in_secs: None,
        },
        WaitReason::BackingOff {
            action: String::new(),
            failures: 0,
            retry_in_ms: 0,
            error: String::new(),
        },
    ];
    let labels: Vec<&str> = all.iter().map(WaitReason::label).collect();
    assert_eq!(labels, WAIT_LABELS);
}

/// Every version we can run, oldest first.
const KNOWN: &[&str] = &[
    "3.3.25", "3.4.23", "3.5.16", "3.5.30", "3.5.35", "3.6.16", "3.7.3",
];

/// Three healthy members on `from`, spec on `to`, every version installed
/// everywhere except `missing`; the first plan.
/// The plan for `from` -> `to` on three members, every v2 store check clean.
fn plan_for(from: &str, to: &str, missing: &[&str]) -> Plan {
    plan_with_v2(from, to, missing, Some(V2StoreCheck::Clean))
}

/// The same with each member's v2 store check as given (None: not run).
fn plan_with_v2(from: &str, to: &str, missing: &[&str], v2: Option<V2StoreCheck>) -> Plan {
    reconcile(&version_obs(from, to, missing, v2))
}

/// Three healthy members on `from`, the spec on `to`, every known version
/// installed except `missing`, each v2 store check as given.
fn version_obs(from: &str, to: &str, missing: &[&str], v2: Option<V2StoreCheck>) -> Observation {
    let installed: Vec<String> = KNOWN
        .iter()
        .filter(|v| !missing.contains(v))
        .map(|v| v.to_string())
        .collect();
    let peers: Vec<PeerView> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let mut p = on_version(running(id, false), from);
            if let Some(i) = p.info.as_mut() {
                i.installed_versions = installed.clone();
            }
            p
        })
        .collect();
    let ms = vec![
        member(1, "a", true),
        member(2, "b", true),
        member(3, "c", true),
    ];
    let mut o = obs(3, peers, Some(ms));
    if let Some(c) = o.cluster.as_mut() {
        c.versions = vec![from.into()];
    }
    if let Some(s) = o.spec.as_mut() {
        s.etcd_version = to.into();
    }
    if let Some(c) = v2 {
        o.v2store = ["a", "b", "c"]
            .iter()
            .map(|id| (id.to_string(), c.clone()))
            .collect();
    }
    o
}

#[test]
fn settings_are_checked_for_the_next_step_before_anything_moves() {
    let mut o = version_obs("3.5.30", "3.6.16", &[], Some(V2StoreCheck::Clean));
    o.settings.clear();
    // The first step is 3.5.35 (the floor before 3.6): that is what is asked.
    let plan = reconcile(&o);
    assert_eq!(
        plan.actions,
        vec![Action::CheckSettings {
            peers: vec!["a".into(), "b".into(), "c".into()],
            version: "3.5.35".into(),
        }]
    );
    // One peer answered: only the others are asked again.
    o.settings
        .insert(("a".into(), "3.5.35".into()), SettingsCheck::Kept);
    let plan = reconcile(&o);
    assert_eq!(
        plan.actions,
        vec![Action::CheckSettings {
            peers: vec!["b".into(), "c".into()],
            version: "3.5.35".into(),
        }]
    );
}

#[test]
fn a_setting_the_next_version_lacks_holds_the_change_with_its_name() {
    let lost = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL: etcd 3.7.3 has no \
                --experimental-watch-progress-notify-interval; use \
                ETCD_WATCH_PROGRESS_NOTIFY_INTERVAL instead";
    let mut o = version_obs("3.6.16", "3.7.3", &[], Some(V2StoreCheck::Clean));
    o.settings.insert(
        ("b".into(), "3.7.3".into()),
        SettingsCheck::Lost(vec![lost.into()]),
    );
    let plan = reconcile(&o);
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert!(
        matches!(&plan.waits[..], [WaitReason::UpgradePathBlocked { reason }]
            if reason.contains("peer b") && reason.contains(lost)
                && reason.contains("Nothing was changed")),
        "{plan:?}"
    );
    // A check that could not run holds it too.
    o.settings.insert(
        ("b".into(), "3.7.3".into()),
        SettingsCheck::Failed("bad frame".into()),
    );
    let plan = reconcile(&o);
    assert!(
        plan.actions.is_empty()
            && matches!(&plan.waits[..], [WaitReason::UpgradePathBlocked { reason }]
                if reason.contains("cannot check the etcd settings of peer b")),
        "{plan:?}"
    );
    // The same holds a downgrade by etcd's protocol before it is enabled.
    let mut o = version_obs("3.7.3", "3.6.16", &[], None);
    o.settings.insert(
        ("c".into(), "3.6.16".into()),
        SettingsCheck::Lost(vec!["ETCD_FEATURE_GATES: ...".into()]),
    );
    let plan = reconcile(&o);
    assert!(
        plan.actions.is_empty()
            && matches!(&plan.waits[..], [WaitReason::UpgradePathBlocked { reason }]
                if reason.contains("peer c")),
        "{plan:?}"
    );
}

#[test]
fn a_dump_and_restore_checks_the_settings_first() {
    // 3.5 -> 3.4: no in-place path; the restore is not queued before every
    // member's settings are known to survive 3.4.
    let mut o = version_obs("3.5.30", "3.4.23", &[], Some(V2StoreCheck::Clean));
    assert_eq!(first_step("3.5.30", "3.4.23"), None);
    o.settings.clear();
    let plan = reconcile(&o);
    assert_eq!(
        plan.actions,
        vec![Action::CheckSettings {
            peers: vec!["a".into(), "b".into(), "c".into()],
            version: "3.4.23".into(),
        }]
    );
}

#[test]
fn a_dump_and_restore_waits_for_every_members_manager() {
    // 3.5 -> 3.4 by dump and restore; c's etcd is healthy but its manager
    // does not answer: c cannot be quarantined, so nothing starts (found by
    // the simulation, seed 1613: the dump lost a write c took after it).
    let mut o = version_obs("3.5.30", "3.4.23", &[], Some(V2StoreCheck::Clean));
    let quarantine = |o: &Observation| {
        reconcile(o)
            .actions
            .iter()
            .any(|a| matches!(a, Action::Quarantine { .. }))
    };
    assert!(quarantine(&o), "with every manager answering, it starts");
    for gone in [true, false] {
        let mut o = o.clone();
        if gone {
            o.peers.retain(|p| p.id != "c");
        } else if let Some(c) = o.peers.iter_mut().find(|p| p.id == "c") {
            c.info = None;
        }
        let plan = reconcile(&o);
        assert!(!quarantine(&o), "{plan:?}");
        assert_eq!(
            plan.waits,
            vec![WaitReason::DumpWaitsForManagers {
                members: vec!["c".into()]
            }]
        );
    }
    // The knob the simulation switches off: the dump goes ahead.
    o.peers.retain(|p| p.id != "c");
    o.rules.dump_quarantine = false;
    assert!(
        reconcile(&o)
            .actions
            .iter()
            .any(|a| matches!(a, Action::TakeBackup { .. }))
    );
}

/// A removal's plan: a backup first, then the removal.
fn backup_then_remove(member_id: u64, name: &str) -> [Action; 2] {
    [
        Action::TakeBackup {
            reason: BackupReason::BeforeChange,
        },
        Action::RemoveMember {
            member_id,
            name: name.into(),
        },
    ]
}

#[test]
fn a_pending_dump_and_restore_lets_a_dead_member_be_replaced_first() {
    // 3.5 -> 3.4 is pending, and c's host came back with an empty disk
    // (another id on c's peer URL): c is replaced before anything moves.
    let mut o = version_obs("3.5.30", "3.4.23", &[], Some(V2StoreCheck::Clean));
    let mut wiped = idle("c2");
    if let Some(i) = wiped.info.as_mut() {
        i.node_config.peer_urls = vec!["http://c:2380".into()];
        i.installed_versions = KNOWN.iter().map(|v| v.to_string()).collect();
    }
    o.peers.retain(|p| p.id != "c");
    o.peers.push(wiped);
    if let Some(c) = o.cluster.as_mut() {
        c.members[2].healthy = false;
    }
    check(&o, &backup_then_remove(3, "c"), &[]);
}

/// The first step the whole path takes from `from` to `to` when every
/// known version is installed: up through each minor in between at its
/// newest version (3.5.35 before 3.6, 3.6.16 before 3.7), the first minor's
/// members below its floor to that version first; down from 3.6+ one minor
/// at a time. None: no in-place step (dump and restore, or refused).
fn first_step(from: &str, to: &str) -> Option<String> {
    let v = |s: &str| s.parse::<crate::EtcdVersion>().expect("version");
    let (f, t) = (v(from), v(to));
    let newest = |minor: u32| {
        KNOWN
            .iter()
            .rev()
            .find(|k| v(k).minor == minor)
            .map(|k| k.to_string())
    };
    if t.minor >= f.minor {
        if t.minor > f.minor {
            // The first minor's floor (3.5.32 before 3.6, 3.6.11 before 3.7).
            let floor = match f.minor {
                5 => Some(MIN_3_5_FOR_3_6),
                6 => Some(MIN_3_6_FOR_3_7),
                _ => None,
            };
            if floor.is_some_and(|fl| f < fl) {
                return newest(f.minor);
            }
            if t.minor > f.minor + 1 {
                return newest(f.minor + 1);
            }
        }
        return Some(to.into());
    }
    if f.minor >= 6 && t.minor >= 5 {
        return newest(f.minor - 1).map(|n| if v(&n).minor == t.minor { to.into() } else { n });
    }
    None
}

/// Every pair of known versions, both directions, as the whole path plans
/// them: the first step rolls (one version up, or a patch either way),
/// enables etcd's downgrade (one minor down from 3.6+), goes by dump and
/// restore (down below 3.6 across minors) or is refused (below 3.5 from
/// 3.6+).
#[test]
fn the_version_planner_covers_every_pair_of_known_versions() {
    let v = |s: &str| s.parse::<crate::EtcdVersion>().expect("version");
    for from in KNOWN {
        for to in KNOWN {
            let plan = plan_for(from, to, &[]);
            let (f, t) = (v(from), v(to));
            if from == to {
                assert!(
                    !plan.actions.iter().any(|a| matches!(
                        a,
                        Action::UpgradeMember { .. } | Action::Quarantine { .. }
                    )),
                    "{from} -> {to}: nothing to change, got {plan:?}"
                );
                continue;
            }
            match first_step(from, to) {
                Some(step) if v(&step).minor < f.minor => assert_eq!(
                    plan.actions,
                    enable_downgrade(&format!("3.{}", v(&step).minor)),
                    "{from} -> {to}: etcd's downgrade protocol, first to {step}"
                ),
                Some(step) => assert_eq!(
                    plan.actions,
                    vec![
                        Action::TakeBackup {
                            reason: BackupReason::BeforeChange
                        },
                        Action::UpgradeMember {
                            peer: "b".into(),
                            version: step.clone()
                        }
                    ],
                    "{from} -> {to}: rolling, first to {step}"
                ),
                None if f.minor >= 6 => assert!(
                    plan.actions.is_empty()
                        && matches!(&plan.waits[..], [WaitReason::UpgradePathBlocked { reason }] if reason.contains("3.5 at the lowest")),
                    "{from} -> {to}: refused before anything moves, got {plan:?}"
                ),
                None => {
                    assert!(t < f, "{from} -> {to}");
                    assert_eq!(
                        plan.actions,
                        vec![Action::Quarantine {
                            peers: vec!["a".into(), "b".into(), "c".into()]
                        }],
                        "{from} -> {to}: dump and restore"
                    );
                }
            }
        }
    }
    // Below 3.6 to 3.6+: nothing moves before every member's v2 store is
    // checked (rolling or by dump and restore); 3.6 -> 3.7 checks nothing.
    for from in KNOWN {
        for to in KNOWN {
            let plan = plan_with_v2(from, to, &[], None);
            let crosses =
                first_step(from, to).is_some_and(|s| v(from).minor < 6 && v(&s).minor >= 6);
            if crosses {
                assert_eq!(
                    plan.actions,
                    vec![Action::CheckV2Store {
                        peers: vec!["a".into(), "b".into(), "c".into()]
                    }],
                    "{from} -> {to}: v2 store checks first"
                );
            } else {
                assert_eq!(
                    plan.actions,
                    plan_for(from, to, &[]).actions,
                    "{from} -> {to}: no v2 store check"
                );
            }
        }
    }
    // 3.5.30 -> 3.6.16 with no 3.5.32+ installed: refused, nothing changes.
    let plan = plan_for("3.5.30", "3.6.16", &["3.5.35"]);
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert!(
        matches!(&plan.waits[..], [WaitReason::UpgradePathBlocked { reason }] if reason.contains("3.5.32")),
        "{plan:?}"
    );
    // Two minors up with the minor in between missing: dump and restore,
    // checked for v2 content first.
    let plan = plan_for("3.5.30", "3.7.3", &["3.6.16"]);
    assert_eq!(
        plan.actions,
        vec![Action::Quarantine {
            peers: vec!["a".into(), "b".into(), "c".into()]
        }]
    );
    let plan = plan_with_v2("3.5.30", "3.7.3", &["3.6.16"], None);
    assert!(matches!(&plan.actions[..], [Action::CheckV2Store { .. }]));
    // Two minors down from 3.7 with no 3.6 installed: refused.
    let plan = plan_for("3.7.3", "3.5.35", &["3.6.16"]);
    assert!(
        matches!(&plan.waits[..], [WaitReason::UpgradePathBlocked { reason }] if reason.contains("one minor at a time")),
        "{plan:?}"
    );
}

/// A spec is refused naming what is wrong, in the words operators read.
#[test]
fn a_spec_is_refused_naming_what_is_wrong() {
    let spec = |member_count, version: &str| ClusterSpec {
        member_count,
        etcd_version: version.into(),
    };
    assert_eq!(validate_spec(&spec(3, "3.5.30")), Ok(()));
    assert_eq!(
        validate_spec(&spec(0, "3.5.30")),
        Err(SpecError::NoMembers { count: 0 })
    );
    let even = validate_spec(&spec(4, "3.5.30")).expect_err("even");
    assert_eq!(even, SpecError::EvenMembers { count: 4 });
    assert!(
        even.to_string().contains("is even; use an odd number"),
        "{even}"
    );
    let version = validate_spec(&spec(3, "3.5")).expect_err("not a version");
    assert!(matches!(version, SpecError::Version(_)), "{version:?}");
    assert_eq!(
        version.to_string(),
        "etcd_version '3.5' is not a version like 3.5.30"
    );
}

/// A blocked version change says which case it is and what to install.
#[test]
fn a_blocked_version_path_names_its_case() {
    let blocked = version_path(&["3.6.16"], "3.4.23", KNOWN).expect_err("below 3.5");
    assert!(
        matches!(blocked, PathBlocked::BelowLowestDowngrade { .. }),
        "{blocked:?}"
    );
    assert!(
        blocked.to_string().contains("3.5 at the lowest"),
        "{blocked}"
    );
    let blocked = version_path(&["3.6.5"], "3.7.3", &["3.6.5", "3.7.3"]).expect_err("no floor");
    assert_eq!(
        blocked,
        PathBlocked::FloorNotInstalled {
            from: "3.6.5".into(),
            target: "3.7.3".into(),
            floor: "3.6.11".into(),
            major: 3,
            minor: 6,
        }
    );
    let blocked = version_path(&["3.7.3"], "3.5.35", &["3.5.35", "3.7.3"]).expect_err("no 3.6");
    assert!(
        matches!(blocked, PathBlocked::MinorNotInstalled { minor: 6, .. }),
        "{blocked:?}"
    );
    assert!(
        blocked.to_string().contains("one minor at a time"),
        "{blocked}"
    );
}

/// The whole path, as `status` shows it.
#[test]
fn the_whole_path_is_planned_before_anything_moves() {
    let all: Vec<&str> = KNOWN.to_vec();
    let path = |from: &[&str], to: &str| version_path(from, to, &all);
    let s = |v: &[&str]| Ok(Some(v.iter().map(|x| x.to_string()).collect::<Vec<_>>()));
    assert_eq!(
        path(&["3.5.30"], "3.7.3"),
        s(&["3.5.35", "3.6.16", "3.7.3"])
    );
    assert_eq!(path(&["3.3.25"], "3.5.30"), s(&["3.4.23", "3.5.30"]));
    assert_eq!(
        path(&["3.5.35", "3.6.16"], "3.7.3"),
        s(&["3.6.16", "3.7.3"])
    );
    assert_eq!(path(&["3.7.3"], "3.5.35"), s(&["3.6.16", "3.5.35"]));
    assert_eq!(path(&["3.6.16", "3.7.3"], "3.6.16"), s(&["3.6.16"]));
    assert_eq!(path(&["3.5.30"], "3.4.23"), Ok(None));
    assert_eq!(path(&["3.5.30"], "3.5.30"), Ok(Some(vec![])));
    assert!(path(&["3.6.16"], "3.4.23").is_err());
    // 3.6 below 3.6.11 before 3.7: the newest installed 3.6 first.
    assert_eq!(
        version_path(&["3.6.5"], "3.7.3", &["3.6.5", "3.6.16", "3.7.3"]),
        s(&["3.6.16", "3.7.3"])
    );
    assert!(version_path(&["3.6.5"], "3.7.3", &["3.6.5", "3.7.3"]).is_err());
}

/// Custom v2 content on any member, or a check that could not run, blocks
/// the move to 3.6 with the reason, and nothing is changed; a member whose
/// check is missing is checked (only that one).
#[test]
fn custom_v2_content_blocks_the_move_to_3_6() {
    for to in ["3.6.16", "3.7.3"] {
        let plan = plan_with_v2(
            "3.5.35",
            to,
            &[],
            Some(V2StoreCheck::Custom(
                "detected custom content in v2store".into(),
            )),
        );
        assert!(plan.actions.is_empty(), "{to}: {plan:?}");
        assert!(
            matches!(&plan.waits[..], [WaitReason::UpgradePathBlocked { reason }]
                if reason.contains("custom v2 content") && reason.contains("Nothing was changed")
                    && reason.contains("set the version back to 3.5.35")),
            "{to}: {plan:?}"
        );
        let plan = plan_with_v2(
            "3.5.35",
            to,
            &[],
            Some(V2StoreCheck::Failed("etcdutl missing".into())),
        );
        assert!(plan.actions.is_empty(), "{to}: {plan:?}");
        assert!(
            matches!(&plan.waits[..], [WaitReason::UpgradePathBlocked { reason }]
                if reason.contains("cannot check the v2 store") && reason.contains("etcdutl missing")),
            "{to}: {plan:?}"
        );
    }
    // One member not checked yet (a new leader mid-way): only that one.
    let mut o = {
        let peers: Vec<PeerView> = ["a", "b", "c"]
            .iter()
            .map(|id| {
                let mut p = on_version(running(id, false), "3.5.35");
                if let Some(i) = p.info.as_mut() {
                    i.installed_versions = KNOWN.iter().map(|v| v.to_string()).collect();
                }
                p
            })
            .collect();
        obs(
            3,
            peers,
            Some(vec![
                member(1, "a", true),
                member(2, "b", true),
                member(3, "c", true),
            ]),
        )
    };
    if let Some(c) = o.cluster.as_mut() {
        c.versions = vec!["3.5.35".into()];
    }
    if let Some(s) = o.spec.as_mut() {
        s.etcd_version = "3.6.16".into();
    }
    o.v2store = [("a", V2StoreCheck::Clean), ("c", V2StoreCheck::Clean)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(
        reconcile(&o).actions,
        vec![Action::CheckV2Store {
            peers: vec!["b".into()]
        }]
    );
}

/// A backup, then `downgrade enable` to `minor`.
fn enable_downgrade(minor: &str) -> Vec<Action> {
    vec![
        Action::TakeBackup {
            reason: BackupReason::BeforeChange,
        },
        Action::EnableDowngrade {
            minor: minor.into(),
        },
    ]
}

/// Three members on `versions` (a, b, c; a is the raft leader) whose data
/// is at `storage`, every version installed, the spec asking for `to`, a
/// downgrade enabled to `enabled`.
fn downgrade_obs(
    versions: [&str; 3],
    storage: [Option<&str>; 3],
    to: &str,
    enabled: Option<&str>,
) -> Observation {
    let ids = ["a", "b", "c"];
    let peers: Vec<PeerView> = ids
        .iter()
        .zip(versions)
        .map(|(id, v)| {
            let mut p = on_version(running(id, false), v);
            if let Some(i) = p.info.as_mut() {
                i.installed_versions = KNOWN.iter().map(|v| v.to_string()).collect();
            }
            p
        })
        .collect();
    let ms: Vec<MemberView> = ids
        .iter()
        .zip(storage)
        .enumerate()
        .map(|(n, (id, sv))| MemberView {
            storage_version: sv.map(str::to_string),
            ..member(n as u64 + 1, id, true)
        })
        .collect();
    let mut o = obs(3, peers, Some(ms));
    if let Some(c) = o.cluster.as_mut() {
        c.versions = versions.iter().map(|v| v.to_string()).collect();
        c.downgrade_target = enabled.map(str::to_string);
    }
    if let Some(s) = o.spec.as_mut() {
        s.etcd_version = to.into();
    }
    o
}

/// 3.7 -> 3.6 and 3.6 -> 3.5 by etcd's protocol, step by step: a backup and
/// `downgrade enable` while data is above the target; a wait naming the
/// members still migrating; then binaries one at a time, followers first; a
/// half-done upgrade goes back binary by binary without the protocol; a
/// downgrade the spec no longer wants is cancelled.
#[test]
fn downgrades_go_by_etcds_protocol_one_minor_at_a_time() {
    let upgrade = |peer: &str, version: &str| {
        vec![
            Action::TakeBackup {
                reason: BackupReason::BeforeChange,
            },
            Action::UpgradeMember {
                peer: peer.into(),
                version: version.into(),
            },
        ]
    };
    for (new, old, new_sv, old_sv, minor) in [
        ("3.7.3", "3.6.16", "3.7.0", "3.6.0", "3.6"),
        ("3.6.16", "3.5.35", "3.6.0", "3.5.0", "3.5"),
    ] {
        // Fully on the newer minor: enable the downgrade, after a backup.
        let o = downgrade_obs([new; 3], [Some(new_sv); 3], old, None);
        assert_eq!(
            reconcile(&o).actions,
            enable_downgrade(minor),
            "{new} -> {old}"
        );
        // Enabled; b has not migrated yet: wait, naming it; nothing moves.
        let o = downgrade_obs(
            [new; 3],
            [Some(old_sv), Some(new_sv), Some(old_sv)],
            old,
            Some(old_sv),
        );
        let plan = reconcile(&o);
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert!(
            plan.waits.contains(&WaitReason::DowngradeMigrating {
                target: minor.into(),
                members: vec!["b".into()]
            }),
            "{plan:?}"
        );
        // Every member migrated: a follower first (a is the raft leader).
        let o = downgrade_obs([new; 3], [Some(old_sv); 3], old, Some(old_sv));
        assert_eq!(reconcile(&o).actions, upgrade("b", old), "{new} -> {old}");
        // b is back (3.5 reports no storage version), c next, the leader last.
        let back = if old.starts_with("3.5") {
            None
        } else {
            Some(old_sv)
        };
        let o = downgrade_obs(
            [new, old, new],
            [Some(old_sv), back, Some(old_sv)],
            old,
            Some(old_sv),
        );
        assert_eq!(reconcile(&o).actions, upgrade("c", old), "{new} -> {old}");
        let o = downgrade_obs(
            [new, old, old],
            [Some(old_sv), back, back],
            old,
            Some(old_sv),
        );
        assert_eq!(reconcile(&o).actions, upgrade("a", old), "{new} -> {old}");
        // A half-done upgrade (the cluster, so the data, still on the older
        // minor) goes back binary by binary, without enabling anything.
        let o = downgrade_obs([old, new, old], [back, Some(old_sv), back], old, None);
        assert_eq!(reconcile(&o).actions, upgrade("b", old), "{new} -> {old}");
        // The spec set back to the newer version: the downgrade is cancelled.
        let o = downgrade_obs([new; 3], [Some(old_sv); 3], new, Some(old_sv));
        assert_eq!(
            reconcile(&o).actions,
            vec![Action::CancelDowngrade],
            "{new} -> {old}"
        );
    }
}

/// Two minors down: the first step's downgrade (to 3.6) is not cancelled
/// because the spec says 3.5; once every member runs 3.6 it is cleared
/// (etcd does the same) and the next one is enabled.
#[test]
fn two_minors_down_go_one_downgrade_at_a_time() {
    let o = downgrade_obs(["3.7.3"; 3], [Some("3.6.0"); 3], "3.5.35", Some("3.6.0"));
    assert_eq!(
        reconcile(&o).actions,
        vec![
            Action::TakeBackup {
                reason: BackupReason::BeforeChange
            },
            Action::UpgradeMember {
                peer: "b".into(),
                version: "3.6.16".into()
            }
        ]
    );
    let o = downgrade_obs(["3.6.16"; 3], [Some("3.6.0"); 3], "3.5.35", Some("3.6.0"));
    assert_eq!(reconcile(&o).actions, vec![Action::CancelDowngrade]);
    let o = downgrade_obs(["3.6.16"; 3], [Some("3.6.0"); 3], "3.5.35", None);
    assert_eq!(reconcile(&o).actions, enable_downgrade("3.5"));
    // Set back to 3.7.3 before anything moved: cancelled.
    let o = downgrade_obs(["3.7.3"; 3], [Some("3.7.0"); 3], "3.7.3", Some("3.6.0"));
    assert_eq!(reconcile(&o).actions, vec![Action::CancelDowngrade]);
}

/// A NOSPACE alarm is cleared before anything else (every other change
/// needs writes), as long as a majority is healthy.
#[test]
fn a_space_alarm_is_cleared_first() {
    let peers = vec![
        running("a", false),
        running("b", false),
        running("c", false),
    ];
    let ms = vec![
        member(1, "a", true),
        member(2, "b", true),
        member(3, "c", true),
    ];
    let mut o = obs(3, peers, Some(ms));
    o.backup_requested = true;
    if let Some(c) = o.cluster.as_mut() {
        c.space_alarm = true;
    }
    assert_eq!(reconcile(&o).actions, vec![Action::ClearSpaceAlarm]);
    if let Some(c) = o.cluster.as_mut() {
        c.space_alarm = false;
    }
    assert_ne!(reconcile(&o).actions, vec![Action::ClearSpaceAlarm]);
}

/// Where two rules apply at once, the earlier in `RUNNING_RULES` wins: the
/// space alarm before a quarantine is lifted (the lift needs writes), an
/// operator's backup before the periodic one that is also due, an
/// operator's drill before either.
#[test]
fn the_rules_of_a_running_cluster_apply_in_their_order() {
    let mut o = obs(
        1,
        vec![running("a", true)],
        Some(vec![member(1, "a", true)]),
    );
    if let Some(c) = o.cluster.as_mut() {
        c.space_alarm = true;
    }
    assert_eq!(reconcile(&o).actions, vec![Action::ClearSpaceAlarm]);

    let mut o = obs(
        1,
        vec![running("a", false)],
        Some(vec![member(1, "a", true)]),
    );
    o.backup_requested = true;
    o.last_backup = None;
    assert_eq!(
        reconcile(&o).actions,
        vec![
            Action::TakeBackup {
                reason: BackupReason::OnDemand,
            },
            Action::ClearBackupRequest,
        ]
    );
    o.verify_requested = Some(("verify-now--b1".into(), "b1".into()));
    assert!(
        matches!(&reconcile(&o).actions[..], [Action::VerifyBackup { backup, .. }] if backup == "b1"),
        "{:?}",
        reconcile(&o)
    );
}

/// Past the threshold a member is defragmented: followers first, the one
/// that frees the most first; the raft leader last, moving leadership away;
/// never while something else is waited for or a member is unhealthy.
#[test]
fn fragmented_members_are_defragmented_one_at_a_time_followers_first() {
    let p = DefragPolicy {
        fragmentation: 0.5,
        min_free_bytes: 1 << 20,
    };
    assert!(p.due(10 << 20, 4 << 20));
    assert!(!p.due(10 << 20, 6 << 20), "40 % free");
    assert!(!p.due(1 << 20, 1 << 18), "less than 1 MiB free");
    assert!(!p.due(10 << 20, 0), "in-use not reported");
    assert!(!DefragPolicy::default().due(10 << 20, 1), "off");
    let build = |sizes: [(i64, i64); 3], healthy: bool| {
        let peers = vec![
            running("a", false),
            running("b", false),
            running("c", false),
        ];
        let ms = ["a", "b", "c"]
            .iter()
            .zip(sizes)
            .enumerate()
            .map(|(n, (id, (size, used)))| MemberView {
                db_size: size,
                db_in_use: used,
                progress: None,
                ..member(n as u64 + 1, id, healthy || n != 2)
            })
            .collect();
        obs(3, peers, Some(ms))
    };
    let mib = 1 << 20;
    // a (the raft leader) is the most fragmented; b frees more than c.
    let o = build(
        [
            (100 * mib, 10 * mib),
            (50 * mib, 10 * mib),
            (40 * mib, 10 * mib),
        ],
        true,
    );
    assert_eq!(
        reconcile(&o).actions,
        vec![Action::Defragment {
            member_id: 2,
            name: "b".into(),
            move_leader: false
        }]
    );
    let o = build(
        [
            (100 * mib, 10 * mib),
            (10 * mib, 10 * mib),
            (10 * mib, 10 * mib),
        ],
        true,
    );
    assert_eq!(
        reconcile(&o).actions,
        vec![Action::Defragment {
            member_id: 1,
            name: "a".into(),
            move_leader: true
        }]
    );
    // An unhealthy member: nothing is defragmented.
    let o = build(
        [
            (100 * mib, 10 * mib),
            (50 * mib, 10 * mib),
            (40 * mib, 10 * mib),
        ],
        false,
    );
    assert!(
        !reconcile(&o)
            .actions
            .iter()
            .any(|a| matches!(a, Action::Defragment { .. }))
    );
}

#[test]
fn an_operators_defrag_goes_followers_first_and_the_leader_last() {
    let ms = vec![
        member(1, "a", true),
        member(2, "b", true),
        member(3, "c", true),
    ];
    let peers = vec![
        running("a", false),
        running("b", false),
        running("c", false),
    ];
    let mut o = obs(3, peers, Some(ms));
    if let Some(c) = o.cluster.as_mut() {
        c.members[0].is_leader = true;
    }
    o.defrag_requested = Some(DefragRequest {
        file: "defrag-now".into(),
        member: None,
    });
    let plan = reconcile(&o);
    assert_eq!(
        plan.actions,
        vec![Action::DefragmentNow {
            members: vec![(2, "b".into()), (3, "c".into()), (1, "a".into())],
            move_leader: true,
            request: "defrag-now".into(),
        }]
    );
    // One member by name; one the cluster does not have: dropped.
    o.defrag_requested = Some(DefragRequest {
        file: "defrag-now--c".into(),
        member: Some("c".into()),
    });
    assert_eq!(
        reconcile(&o).actions,
        vec![Action::DefragmentNow {
            members: vec![(3, "c".into())],
            move_leader: false,
            request: "defrag-now--c".into(),
        }]
    );
    o.defrag_requested = Some(DefragRequest {
        file: "defrag-now--z".into(),
        member: Some("z".into()),
    });
    assert!(matches!(
        &reconcile(&o).actions[..],
        [Action::DefragmentNow { members, .. }] if members.is_empty()
    ));
    // Not while a member is unhealthy.
    if let Some(c) = o.cluster.as_mut() {
        c.members[1].healthy = false;
    }
    assert!(
        !reconcile(&o)
            .actions
            .iter()
            .any(|a| matches!(a, Action::DefragmentNow { .. }))
    );
}

/// Three voters, two of them gone (no answer), the third at raft index
/// `index` and revision `rev`; `b` answers too when `b_progress` is given.
fn lost_quorum(b_progress: Option<(u64, i64)>) -> Observation {
    let peers = vec![running("a", false), idle("b"), idle("c")];
    let mut ms = vec![
        member(1, "a", false),
        member(2, "b", false),
        member(3, "c", false),
    ];
    ms[0].progress = Some((100, 50));
    ms[1].progress = b_progress;
    let mut o = obs(3, peers, Some(ms));
    let t = o.now - Duration::from_secs(30);
    o.unhealthy_since = [(1, t), (2, t), (3, t)].into_iter().collect();
    o.silent_since = o
        .cluster
        .iter()
        .flat_map(|c| &c.members)
        .filter(|m| m.progress.is_none())
        .map(|m| (m.id, t))
        .collect();
    o
}

/// A lost voter's grace counts from when it stopped answering, not from
/// when the quorum was lost: one that answered until a moment ago may still
/// come back (found by the simulation).
#[test]
fn the_recovery_grace_counts_from_when_a_voter_stopped_answering() {
    let mut o = lost_quorum(None);
    o.quorum_recovery.auto_after = Some(Duration::from_secs(20));
    assert!(matches!(
        reconcile(&o).actions.as_slice(),
        [Action::RecoverQuorum { .. }]
    ));
    o.silent_since.insert(2, o.now - Duration::from_secs(5));
    let plan = reconcile(&o);
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert!(
        plan.waits.iter().any(|w| matches!(
            w,
            WaitReason::QuorumLost {
                auto_in_secs: Some(15),
                ..
            }
        )),
        "{plan:?}"
    );
}

/// The plan rebuilds a lost quorum.
fn recovers(plan: &Plan) -> bool {
    plan.actions
        .iter()
        .any(|a| matches!(a, Action::RecoverQuorum { .. }))
}

/// A restore half done (one of its two members restored, the other's host
/// down at the time), then a quorum recovery from the restored member: the
/// recovery queues one restore and no more, and the half-done restore gives
/// way to it (found by the simulation: a backup and a command every pass).
#[test]
fn a_recovery_queues_one_restore_and_a_half_done_restore_gives_way() {
    let mut o = lost_quorum(None);
    o.quorum_recovery.auto_after = Some(Duration::from_secs(20));
    let token = o.peers[0].token().expect("a runs a cluster").to_string();
    let half_done = restore_cmd(Some(&token), None);
    o.commands = vec![half_done.clone()];
    assert!(matches!(
        reconcile(&o).actions.as_slice(),
        [Action::RecoverQuorum { .. }]
    ));
    // The recovery retired the half-done restore's cluster and queued its own.
    let mut recovery = restore_cmd(None, None);
    recovery.name = "2024-01-01T00:05:00Z-000000".into();
    o.commands = vec![half_done.clone(), recovery.clone()];
    o.retired_tokens.insert(token.clone());
    assert_eq!(
        reconcile(&o).actions,
        vec![Action::CompleteRestore {
            command: half_done.name.clone()
        }]
    );
    // Before the retirement is seen: no second recovery.
    o.retired_tokens.clear();
    let plan = reconcile(&o);
    assert!(!recovers(&plan), "{plan:?}");
    // A retired restore with nothing queued after it stays (nothing to run instead).
    o.retired_tokens.insert(token);
    o.commands = vec![half_done];
    assert!(
        !reconcile(&o)
            .actions
            .iter()
            .any(|a| matches!(a, Action::CompleteRestore { .. })),
    );
}

/// A learner registered but never started (its host was cut off) while the
/// quorum is lost: starting it restores no quorum, so the recovery goes
/// ahead (found by the simulation: the learner's start was tried for ever).
#[test]
fn an_unstarted_learner_does_not_hold_a_quorum_recovery_back() {
    let mut o = lost_quorum(None);
    o.quorum_recovery.auto_after = Some(Duration::from_secs(20));
    let c = o.cluster.as_mut().expect("a cluster");
    c.members.retain(|m| m.name != "c");
    let mut learner = member(3, "c", false);
    learner.name.clear();
    learner.is_learner = true;
    c.members.push(learner);
    o.silent_since.insert(3, o.now - Duration::from_secs(30));
    let plan = reconcile(&o);
    assert!(recovers(&plan), "{plan:?}");
    // With the quorum there, the learner is started as before.
    let c = o.cluster.as_mut().expect("a cluster");
    for m in c.members.iter_mut().filter(|m| !m.is_learner) {
        m.healthy = true;
    }
    assert!(
        matches!(
            reconcile(&o).actions.as_slice(),
            [Action::StartAddedMember { peer, .. }] if peer == "c"
        ),
        "{:?}",
        reconcile(&o)
    );
}

#[test]
fn a_lost_quorum_waits_and_says_what_recovery_would_do() {
    let o = lost_quorum(None);
    let plan = reconcile(&o);
    assert!(plan.actions.is_empty(), "{plan:?}");
    let [
        WaitReason::QuorumLost {
            survivors,
            lost,
            plan: text,
            auto_in_secs,
        },
    ] = &plan.waits[..]
    else {
        panic!("{plan:?}");
    };
    assert_eq!(survivors, &["a"]);
    assert_eq!(lost, &["b", "c"]);
    assert!(
        text.contains("rebuild the cluster from a (raft index 100, revision 50"),
        "{text}"
    );
    assert_eq!(*auto_in_secs, None);
    // Two of three answer: an election, not a lost quorum.
    let o = lost_quorum(Some((90, 40)));
    assert!(
        reconcile(&o)
            .waits
            .iter()
            .all(|w| !matches!(w, WaitReason::QuorumLost { .. })),
        "two survivors of three can still elect"
    );
}

#[test]
fn recovery_acts_on_request_or_after_the_grace_and_from_the_best_survivor() {
    let mut o = lost_quorum(None);
    o.quorum_recovery.requested = Some("recover-quorum".into());
    assert_eq!(
        reconcile(&o).actions,
        vec![Action::RecoverQuorum {
            from: Some((1, "a".into())),
            backup: None,
            spec: ClusterSpec {
                member_count: 1,
                etcd_version: V.into(),
            },
            request: Some("recover-quorum".into()),
        }]
    );
    // Automatic: not while a lost voter could still come back in time.
    let mut o = lost_quorum(None);
    o.quorum_recovery.auto_after = Some(Duration::from_secs(60));
    assert!(reconcile(&o).actions.is_empty());
    assert!(matches!(
        &reconcile(&o).waits[..],
        [WaitReason::QuorumLost {
            auto_in_secs: Some(30),
            ..
        }]
    ));
    o.quorum_recovery.auto_after = Some(Duration::from_secs(20));
    assert!(matches!(
        &reconcile(&o).actions[..],
        [Action::RecoverQuorum {
            from: Some((1, _)),
            request: None,
            ..
        }]
    ));
    // A newer backup than every survivor: that backup instead.
    o.quorum_recovery.latest_backup = Some(("2026-11-30T00:00:00Z-000001".into(), Some(60)));
    assert!(matches!(
        &reconcile(&o).actions[..],
        [Action::RecoverQuorum { from: None, backup: Some(b), .. }] if b == "2026-11-30T00:00:00Z-000001"
    ));
    // An older one: the survivor.
    o.quorum_recovery.latest_backup = Some(("2026-11-30T00:00:00Z-000001".into(), Some(49)));
    assert!(matches!(
        &reconcile(&o).actions[..],
        [Action::RecoverQuorum {
            from: Some(_),
            backup: None,
            ..
        }]
    ));
}

/// A recover-quorum request is void when it expired (an hour) or when the
/// cluster holds its quorum (it came back before the recovery): removed,
/// never acted on, so it cannot rebuild a later quorum loss at once.
#[test]
fn a_stale_recover_quorum_request_does_nothing_and_is_removed() {
    let mut o = lost_quorum(None);
    o.quorum_recovery.requested = Some("recover-quorum".into());
    o.quorum_recovery.request_age = RECOVER_REQUEST_TTL;
    let plan = reconcile(&o);
    assert!(!recovers(&plan), "{plan:?}");
    assert!(plan.actions.contains(&Action::ClearRecoverQuorumRequest {
        file: "recover-quorum".into(),
        expired: true,
    }));
    assert!(
        plan.waits
            .iter()
            .any(|w| matches!(w, WaitReason::QuorumLost { .. })),
        "{plan:?}"
    );
    // Younger than that it is acted on.
    o.quorum_recovery.request_age = RECOVER_REQUEST_TTL - Duration::from_secs(1);
    assert!(recovers(&reconcile(&o)));
    // The quorum is back: removed at once, whatever its age.
    let mut o = obs(
        3,
        vec![
            running("a", false),
            running("b", false),
            running("c", false),
        ],
        Some(vec![
            member(1, "a", true),
            member(2, "b", true),
            member(3, "c", true),
        ]),
    );
    o.quorum_recovery.requested = Some("recover-quorum".into());
    let plan = reconcile(&o);
    assert!(
        plan.actions.contains(&Action::ClearRecoverQuorumRequest {
            file: "recover-quorum".into(),
            expired: false,
        }),
        "{plan:?}"
    );
    assert!(!recovers(&plan));
}

#[test]
fn a_member_whose_manager_says_it_runs_is_not_lost() {
    // b's etcd does not answer this leader, but b's manager says it runs
    // this cluster's etcd: a partition of etcd's ports, never a recovery.
    let mut o = lost_quorum(None);
    o.peers[1] = running("b", false);
    o.quorum_recovery.requested = Some("recover-quorum".into());
    o.quorum_recovery.auto_after = Some(Duration::from_secs(1));
    let plan = reconcile(&o);
    assert!(!recovers(&plan), "{plan:?}");
    assert!(
        plan.waits
            .iter()
            .any(|w| matches!(w, WaitReason::ClusterUnhealthy { .. })),
        "{plan:?}"
    );
}

#[test]
fn recovery_never_starts_from_a_member_behind_another_that_answers() {
    // Five voters, two answer (no quorum of five): the one further ahead.
    let peers = vec![
        running("a", false),
        running("b", false),
        idle("c"),
        idle("d"),
        idle("e"),
    ];
    let mut ms: Vec<MemberView> = ["a", "b", "c", "d", "e"]
        .iter()
        .enumerate()
        .map(|(i, n)| member(i as u64 + 1, n, false))
        .collect();
    ms[0].progress = Some((100, 50));
    ms[1].progress = Some((120, 55));
    let mut o = obs(5, peers, Some(ms));
    o.quorum_recovery.requested = Some("recover-quorum".into());
    assert!(matches!(
        &reconcile(&o).actions[..],
        [Action::RecoverQuorum { from: Some((2, b)), .. }] if b == "b"
    ));
}

mod quorum_recovery_properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// For any cluster of 3 or 5 voters: a recovery is planned only when
        /// fewer answer than a quorum and no lost voter's manager says its
        /// etcd runs, only on request or once every lost voter has been
        /// gone for the grace, and always from a member that no other
        /// answering member is ahead of (or from a newer backup).
        #[test]
        fn recovery_waits_for_the_grace_and_starts_from_the_furthest(
            five in any::<bool>(),
            answering in proptest::collection::vec(any::<bool>(), 5),
            progress in proptest::collection::vec((0u64..1000, 0i64..1000), 5),
            gone_secs in proptest::collection::vec(0u64..120, 5),
            grace in proptest::option::of(1u64..100),
            requested in any::<bool>(),
            request_age in 0u64..7200,
            backup_rev in proptest::option::of(0i64..1200),
            still_running in proptest::collection::vec(proptest::bool::weighted(0.2), 5),
        ) {
            let n = if five { 5 } else { 3 };
            let names = ["a", "b", "c", "d", "e"];
            // A lost voter's manager is gone or idle, or (sometimes) says
            // its etcd still runs.
            let peers: Vec<PeerView> = (0..n)
                .map(|i| {
                    if answering[i] || still_running[i] {
                        running(names[i], false)
                    } else {
                        idle(names[i])
                    }
                })
                .collect();
            let ms: Vec<MemberView> = (0..n)
                .map(|i| MemberView {
                    progress: answering[i].then_some(progress[i]),
                    ..member(i as u64 + 1, names[i], false)
                })
                .collect();
            let mut o = obs(n as i32, peers, Some(ms.clone()));
            o.unhealthy_since = (0..n)
                .map(|i| (i as u64 + 1, o.now - Duration::from_secs(gone_secs[i])))
                .collect();
            o.silent_since = o.unhealthy_since.clone();
            o.quorum_recovery = QuorumRecovery {
                requested: requested.then(|| "recover-quorum".to_string()),
                request_age: Duration::from_secs(request_age),
                auto_after: grace.map(Duration::from_secs),
                latest_backup: backup_rev.map(|r| ("2026-01-01T00:00:00Z-000001".to_string(), Some(r))),
            };
            let plan = reconcile(&o);
            // A request is removed, never acted on, once it expired.
            let live = requested && Duration::from_secs(request_age) < RECOVER_REQUEST_TTL;
            if requested && !live {
                prop_assert!(
                    plan.actions.iter().any(|a| matches!(a, Action::ClearRecoverQuorumRequest { expired: true, .. }))
                        || plan.actions.iter().any(|a| matches!(a, Action::RecoverQuorum { .. })),
                    "an expired request stays: {plan:?}"
                );
            }
            let Some(Action::RecoverQuorum { from, backup, .. }) = plan
                .actions
                .iter()
                .find(|a| matches!(a, Action::RecoverQuorum { .. }))
            else {
                return Ok(());
            };
            let alive: Vec<&MemberView> = ms.iter().filter(|m| m.progress.is_some()).collect();
            prop_assert!(!alive.is_empty() && alive.len() < n / 2 + 1, "acted with {} of {n} answering", alive.len());
            let lost_gone_long = ms
                .iter()
                .filter(|m| m.progress.is_none())
                .all(|m| grace.is_some_and(|g| gone_secs[(m.id - 1) as usize] >= g));
            prop_assert!(live || lost_gone_long, "acted before the grace (or on an expired request)");
            prop_assert!(
                (0..n).all(|i| answering[i] || !still_running[i]),
                "acted while a lost voter's manager says its etcd runs"
            );
            let best = alive.iter().filter_map(|m| m.progress).max().unwrap_or_default();
            match (from, backup) {
                (Some((id, _)), None) => {
                    let mine = ms[(*id - 1) as usize].progress.unwrap_or_default();
                    prop_assert_eq!(mine, best, "not the furthest survivor");
                    prop_assert!(backup_rev.is_none_or(|r| r <= best.1));
                }
                (None, Some(_)) => prop_assert!(backup_rev.is_some_and(|r| r > best.1)),
                _ => prop_assert!(false, "neither a survivor nor a backup"),
            }
        }
    }
}
