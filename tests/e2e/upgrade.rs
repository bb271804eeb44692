//! etcd version changes on real binaries.

use std::time::Duration;

use tests::{get, members, put, wait_for};

async fn versions(env: &tests::ClusterEnv) -> Vec<String> {
    let mut out = vec![];
    for h in 1..=3 {
        let ep = env.client_url(h);
        let Ok(c) =
            etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(2)).await
        else {
            continue;
        };
        if let Ok(s) = c.status().await {
            out.push(s.version);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn minor_upgrade_rolls_in_place_3_4_to_3_5() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let _ms: Vec<_> = (1..=3).map(|h| env.start(h)).collect();
    assert!(
        env.ctl(&[
            "-member-count=3",
            "-etcd-version=3.4.23",
            "configure-cluster"
        ])
        .success
    );
    let ep = env.client_url(1);
    wait_for(
        "three healthy voters on 3.4.23",
        Duration::from_secs(60),
        || {
            let ep = ep.clone();
            let env = env.clone();
            async move {
                put(&ep, "/before", "upgrade").await.ok()?;
                let ms = members(&ep).await.ok()?;
                let v = versions(&env).await;
                (ms.len() == 3 && v.len() == 3 && v.iter().all(|v| v == "3.4.23")).then_some(())
            }
        },
    )
    .await;
    let store = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
    let backups_before = store.list_backups().await.unwrap().len();

    assert!(
        env.ctl(&["-etcd-version=3.5.30", "configure-cluster"])
            .success
    );
    wait_for("every member on 3.5.30", Duration::from_secs(120), || {
        let env = env.clone();
        async move {
            let v = versions(&env).await;
            (v.len() == 3 && v.iter().all(|v| v == "3.5.30")).then_some(())
        }
    })
    .await;
    // Same data, same members, one backup per member restarted.
    for h in 1..=3 {
        let ep = env.client_url(h);
        let got = wait_for("the key on every member", Duration::from_secs(20), || {
            let ep = ep.clone();
            async move { get(&ep, "/before").await.ok()? }
        })
        .await;
        assert_eq!(got, "upgrade");
    }
    assert_eq!(members(&ep).await.unwrap().len(), 3);
    put(&ep, "/after", "upgrade").await.unwrap();
    let taken = store.list_backups().await.unwrap().len() - backups_before;
    assert!(
        taken >= 3,
        "a backup before each member's restart: {taken} new backups"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_minor_jump_goes_by_dump_and_restore_3_3_to_3_5() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let _ms: Vec<_> = (1..=3).map(|h| env.start(h)).collect();
    assert!(
        env.ctl(&[
            "-member-count=3",
            "-etcd-version=3.3.25",
            "configure-cluster"
        ])
        .success
    );
    let ep = env.client_url(1);
    wait_for(
        "three healthy members on 3.3.25",
        Duration::from_secs(60),
        || {
            let ep = ep.clone();
            let env = env.clone();
            async move {
                put(&ep, "/old", "data").await.ok()?;
                let v = versions(&env).await;
                (members(&ep).await.ok()?.len() == 3
                    && v.len() == 3
                    && v.iter().all(|v| v == "3.3.25"))
                .then_some(())
            }
        },
    )
    .await;

    assert!(
        env.ctl(&["-etcd-version=3.5.30", "configure-cluster"])
            .success
    );
    wait_for(
        "every member on 3.5.30 with the old data",
        Duration::from_secs(180),
        || {
            let (env, ep) = (env.clone(), ep.clone());
            async move {
                let v = versions(&env).await;
                let data = get(&ep, "/old").await.ok()??;
                (v.len() == 3 && v.iter().all(|v| v == "3.5.30") && data == "data").then_some(())
            }
        },
    )
    .await;
    // The restore bumped revisions, and the queued command is gone once done.
    let c = etcd::EtcdClient::connect(std::slice::from_ref(&ep), Duration::from_secs(3))
        .await
        .unwrap();
    assert!(c.status().await.unwrap().revision > 1_000_000_000);
    wait_for(
        "the internal restore command removed",
        Duration::from_secs(60),
        || {
            let env = env.clone();
            async move { env.ctl(&["list-commands"]).stdout.is_empty().then_some(()) }
        },
    )
    .await;
    put(&ep, "/new", "data").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn minor_downgrade_goes_by_dump_and_restore_3_5_to_3_4() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let _m = env.start(1);
    assert!(
        env.ctl(&[
            "-member-count=1",
            "-etcd-version=3.5.30",
            "configure-cluster"
        ])
        .success
    );
    let ep = env.client_url(1);
    wait_for("a member on 3.5.30", Duration::from_secs(60), || {
        let ep = ep.clone();
        async move { put(&ep, "/k", "v").await.ok() }
    })
    .await;
    assert!(
        env.ctl(&["-etcd-version=3.4.23", "configure-cluster"])
            .success
    );
    wait_for(
        "the member on 3.4.23 with the data",
        Duration::from_secs(120),
        || {
            let (env, ep) = (env.clone(), ep.clone());
            async move {
                let v = versions(&env).await;
                let data = get(&ep, "/k").await.ok()??;
                (v == ["3.4.23"] && data == "v").then_some(())
            }
        },
    )
    .await;
    put(&ep, "/after", "downgrade").await.unwrap();
}
