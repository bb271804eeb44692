//! Restore drills: evidence that a backup restores, from a manager that is
//! not the leader, and a stored backup corrupted after upload caught.

use std::time::Duration;

use backup::{BackupStore, DrillVerdict};
use etcd_manager::metrics as m;
use tests::{http_get, metric_value, put, wait_for, wait_put, wait_voters};

#[tokio::test(flavor = "multi_thread")]
async fn backups_are_drilled_by_a_follower_and_a_corrupted_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "4s";
    let _ms: Vec<_> = (1..=3).map(|h| env.start_with_metrics(h)).collect();
    env.configure(3, "3.5.30");
    let eps: Vec<String> = (1..=3).map(|h| env.client_url(h)).collect();
    wait_voters("three voters", &eps, 3, None).await;
    // Members leave quarantine one restart at a time: host 1 serves when it
    // takes a write.
    wait_put(
        "host 1 serving",
        &eps[0],
        "/probe",
        "x",
        Duration::from_secs(60),
    )
    .await;
    for i in 0..50 {
        put(&eps[0], &format!("/drill/{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let store = BackupStore::open(&env.store_url, &Default::default()).unwrap();
    // A periodic backup verified by a drill, with the keys above in it.
    let (name, record) = wait_for(
        "a backup verified by a drill",
        Duration::from_secs(120),
        || {
            let store = store.clone();
            async move {
                for n in store.list_backups().await.ok()?.iter().rev() {
                    let extra = store.read_backup_extra(n).await.ok()??;
                    if let Some(d) = store.read_drill(n).await.ok()?
                        && d.verdict == DrillVerdict::Verified
                        && extra.revision? > 50
                    {
                        return Some((n.clone(), d));
                    }
                }
                None
            }
        },
    )
    .await;
    assert_eq!(record.expected, record.found, "{record:?}");
    let made = store.read_backup_info(&name).await.unwrap().timestamp;
    assert!(
        record.at - made <= 60,
        "verified {} s after the backup was made",
        record.at - made
    );
    assert_eq!(record.etcd_version, "3.5.30");
    let status: serde_json::Value =
        serde_json::from_str(&env.ctl(&["-o", "json", "status"]).stdout).unwrap();
    let leader = status["report"]["leader"].as_str().unwrap().to_string();
    assert_ne!(
        record.by, leader,
        "the leader ran the drill itself: {record:?}"
    );
    // The drill's manager says so in its metrics.
    let mut verified_at = 0.0f64;
    for h in 1..=3 {
        let (_, text) = http_get(&env.metrics_addr(h), "/metrics").await.unwrap();
        verified_at = verified_at.max(metric_value(&text, m::BACKUP_LAST_VERIFIED).unwrap_or(0.0));
    }
    assert!(
        verified_at >= record.at as f64,
        "{verified_at} < {}",
        record.at
    );
    let wide = env.ctl(&["-o", "wide", "list-backups"]);
    assert!(wide.success, "{wide:?}");
    let line = wide.stdout.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(line.contains("verified"), "{}", wide.stdout);

    // On demand, from the ctl: the same verdict.
    let out = env.ctl(&["verify-backup", &name]);
    assert!(out.success, "{out:?}");
    assert!(out.stdout.contains("verified"), "{out:?}");

    // One byte of the stored backup changed after upload: the drill fails,
    // says why, and the verdict is kept.
    let gz = env.store_path().join(&name).join(backup::BACKUP_DATA_FILE);
    let mut bytes = std::fs::read(&gz).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&gz, &bytes).unwrap();
    let out = env.ctl(&["verify-backup", &name]);
    assert!(!out.success, "{out:?}");
    assert!(
        out.stderr.contains("failed") && out.stderr.contains("sha256"),
        "{out:?}"
    );
    let kept = store.read_drill(&name).await.unwrap().unwrap();
    assert_eq!(kept.verdict, DrillVerdict::Failed, "{kept:?}");
    let wide = env.ctl(&["-o", "wide", "list-backups"]);
    let line = wide.stdout.lines().find(|l| l.starts_with(&name)).unwrap();
    assert!(line.contains("failed"), "{}", wide.stdout);
    // A name that is not a backup writes nothing.
    let out = env.ctl(&["verify-backup", "2020-01-01T00:00:00Z-000001"]);
    assert!(!out.success && out.stderr.contains("not in"), "{out:?}");
    assert!(
        !env.store_path()
            .join("2020-01-01T00:00:00Z-000001")
            .exists()
    );
}
