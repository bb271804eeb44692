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
