//! Member replacement on real processes.

use std::time::Duration;

use tests::wait_for;

#[tokio::test(flavor = "multi_thread")]
async fn a_host_back_with_a_wiped_disk_rejoins_without_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let grace = ["--member-replace-grace=3s"];
    let mut ms: Vec<_> = (1..=3).map(|h| env.start_with(h, &grace)).collect();
    env.configure(3, "3.5.30");
    let eps: Vec<String> = (1..=3).map(|h| env.client_url(h)).collect();
    let before = tests::wait_voters("three voters", &eps, 3, None).await;
    let third = before
        .iter()
        .find(|m| {
            m.peer_urls
                .iter()
                .any(|u| u.contains(&tests::host_ip(env.net, 3)))
        })
        .expect("host 3 is a member")
        .name
        .clone();
    tests::wait_put(
        "a write through host 1",
        &eps[0],
        "/kept",
        "yes",
        Duration::from_secs(30),
    )
    .await;

    // Host 3 loses its disk: the manager and etcd die, the data dir is gone.
    ms[2].kill_all();
    std::fs::remove_dir_all(&ms[2].data_dir).unwrap();
    ms[2].restart();
    let after = tests::wait_voters(
        "three voters again, host 3 under a new id",
        &eps,
        3,
        Some(&third),
    )
    .await;
    assert!(after.iter().any(|m| {
        m.peer_urls
            .iter()
            .any(|u| u.contains(&tests::host_ip(env.net, 3)))
    }));
    let got = wait_for(
        "the data on the new member",
        Duration::from_secs(30),
        || {
            let ep = eps[2].clone();
            async move { tests::get(&ep, "/kept").await.ok()? }
        },
    )
    .await;
    assert_eq!(got, "yes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanently_dead_host_is_replaced_by_an_idle_fourth() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let grace = ["--member-replace-grace=3s"];
    let mut ms: Vec<_> = (1..=4).map(|h| env.start_with(h, &grace)).collect();
    env.configure(3, "3.5.30");
    let eps: Vec<String> = (1..=4).map(|h| env.client_url(h)).collect();
    let before = tests::wait_voters("three voters", &eps, 3, None).await;
    // Kill a member's host for good (not the idle one).
    let victim = (1..=4u8)
        .find(|h| {
            before.iter().any(|m| {
                m.peer_urls
                    .iter()
                    .any(|u| u.contains(&tests::host_ip(env.net, *h)))
            })
        })
        .expect("a member host");
    let dead_name = before
        .iter()
        .find(|m| {
            m.peer_urls
                .iter()
                .any(|u| u.contains(&tests::host_ip(env.net, victim)))
        })
        .map(|m| m.name.clone())
        .expect("its member");
    ms[usize::from(victim - 1)].kill_all();
    let alive: Vec<String> = eps
        .iter()
        .enumerate()
        .filter(|(i, _)| *i + 1 != usize::from(victim))
        .map(|(_, e)| e.clone())
        .collect();
    let after = tests::wait_voters("the dead member replaced", &alive, 3, Some(&dead_name)).await;
    assert!(
        after.iter().all(|m| !m
            .peer_urls
            .iter()
            .any(|u| u.contains(&tests::host_ip(env.net, victim)))),
        "{after:?}"
    );
}

/// A member whose manager is gone while its etcd still serves (a manager
/// killed on its own; an upstream manager's member during a rolling move)
/// is judged by its etcd: the leader sees it healthy and leaves it, even
/// with an idle manager ready to replace it. Once its etcd stops too, the
/// ordinary replacement takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_that_serves_without_its_manager_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let grace = ["--member-replace-grace=3s"];
    let mut ms: Vec<_> = (1..=4).map(|h| env.start_with(h, &grace)).collect();
    env.configure(3, "3.5.30");
    let eps: Vec<String> = (1..=4).map(|h| env.client_url(h)).collect();
    let before = tests::wait_voters("three voters", &eps, 3, None).await;
    // Every member out of quarantine, serving on its own client URL (a
    // manager killed while it restarts its etcd leaves a dead member).
    let member_hosts: Vec<u8> = (1..=4u8)
        .filter(|h| {
            let ip = tests::host_ip(env.net, *h);
            before
                .iter()
                .any(|m| m.peer_urls.iter().any(|u| u.contains(&ip)))
        })
        .collect();
    assert_eq!(member_hosts.len(), 3);
    wait_for(
        "every member serving on its client URL",
        Duration::from_secs(60),
        || {
            let eps: Vec<String> = member_hosts.iter().map(|h| env.client_url(*h)).collect();
            async move {
                for ep in &eps {
                    tests::put(ep, "/serving", "yes").await.ok()?;
                }
                Some(())
            }
        },
    )
    .await;
    let status_file = env.store_path().join("etcd-manager/status.json");
    let status = || -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(&status_file).ok()?).ok()
    };
    let leader = wait_for(
        "the leader's report: three healthy members",
        Duration::from_secs(60),
        || {
            let s = status();
            async move {
                let s = s?;
                let members = s["members"].as_array()?;
                let all = members.len() == 3 && members.iter().all(|m| m["healthy"] == true);
                Some(s["leader"].as_str()?.to_string()).filter(|l| all && !l.is_empty())
            }
        },
    )
    .await;
    // A member host whose manager does not lead.
    let (host, name) = (1..=4u8)
        .find_map(|h| {
            let ip = tests::host_ip(env.net, h);
            before
                .iter()
                .find(|m| m.name != leader && m.peer_urls.iter().any(|u| u.contains(&ip)))
                .map(|m| (h, m.name.clone()))
        })
        .expect("a member host without the leader");

    // Its manager dies alone: its etcd keeps serving.
    let pid = nix::unistd::Pid::from_raw(ms[usize::from(host - 1)].pid().unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_for(
        "the leader's report: the manager gone, its member healthy",
        Duration::from_secs(60),
        || {
            let (s, name) = (status(), name.clone());
            async move {
                let s = s?;
                let gone = s["peers"]
                    .as_array()?
                    .iter()
                    .all(|p| p["id"] != name.as_str() || p["answered"] == false);
                let members = s["members"].as_array()?;
                let healthy = members.len() == 3
                    && members.iter().all(|m| m["healthy"] == true)
                    && members.iter().any(|m| m["name"] == name.as_str());
                (gone && healthy).then_some(())
            }
        },
    )
    .await;
    let after = tests::healthy_members(&eps[..])
        .await
        .expect("the cluster serves");
    assert!(after.iter().any(|m| m.name == name), "{after:?}");
    assert!(
        !ms.iter().any(|m| m.log_text().contains("remove_member")),
        "no member removed"
    );

    // Its etcd stops too: now it is dead, and the idle manager replaces it.
    ms[usize::from(host - 1)].kill_all();
    let alive: Vec<String> = eps
        .iter()
        .enumerate()
        .filter(|(i, _)| *i + 1 != usize::from(host))
        .map(|(_, e)| e.clone())
        .collect();
    tests::wait_voters("the dead member replaced", &alive, 3, Some(&name)).await;
}
