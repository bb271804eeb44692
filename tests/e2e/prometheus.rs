//! A real Prometheus scrapes a running cluster: one leader through PromQL,
//! the backup-age alert fires when the store is unreachable and resolves
//! when it returns, and the drill alert fires when a backup changed after
//! upload fails the restore drill the managers run on request.

use std::process::{Child, Stdio};
use std::time::Duration;

use tests::wait_for;

struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped rules, with the backup-age alert's margin and `for` shortened
/// so it fires within seconds; the thresholds themselves are covered by the
/// promtool unit tests in deploy/prometheus/.
fn rules_for_test() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/etcd-manager.rules.yml"
    ))
    .expect("rules file");
    let start = text
        .find("alert: EtcdManagerBackupTooOld")
        .expect("the backup-age alert");
    let end = text[start + 10..]
        .find("- alert:")
        .map_or(text.len(), |i| start + 10 + i);
    let block = &text[start..end];
    assert!(
        block.contains("+ 300") && block.contains("for: 5m"),
        "the alert changed shape:\n{block}"
    );
    let short = block.replace("+ 300", "+ 2").replace("for: 5m", "for: 2s");
    format!("{}{}{}", &text[..start], short, &text[end..])
}

async fn query(prom: &str, promql: &str) -> Option<serde_json::Value> {
    let q: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (code, body) = tests::http_get(prom, &format!("/api/v1/query?query={q}"))
        .await
        .ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

async fn alert_state(prom: &str, name: &str) -> Option<String> {
    let (_, body) = tests::http_get(prom, "/api/v1/alerts").await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .and_then(|a| a["state"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_sees_one_leader_and_the_backup_age_alert() {
    let Some(bin) = tests::which("prometheus") else {
        tests::tool_missing("prometheus not found (scripts/test.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut env = crate::env(&dir);
    env.backup_interval = "2s";
    let metrics: Vec<String> = (1..=3).map(|h| env.metrics_addr(h)).collect();
    let _ms: Vec<_> = (1..=3u8).map(|h| env.start_with_metrics(h)).collect();
    env.configure(3, "3.5.30");
    let ep = env.client_url(1);
    tests::wait_put("the cluster", &ep, "/k", "v", Duration::from_secs(60)).await;

    std::fs::write(dir.path().join("rules.yml"), rules_for_test()).unwrap();
    let targets = metrics
        .iter()
        .map(|m| format!("'{m}'"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\n\
             scrape_configs:\n  - job_name: etcd-manager-main\n    static_configs:\n      - targets: [{targets}]\n",
            dir.path().join("rules.yml").display()
        ),
    )
    .unwrap();
    let addr = format!("{}:9099", tests::host_ip(env.net, 9));
    let prom = Prometheus {
        child: std::process::Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus"),
        addr,
    };

    // Exactly one leader, through PromQL.
    wait_for(
        "sum(is_leader) == 1 in Prometheus",
        Duration::from_secs(60),
        || {
            let p = prom.addr.clone();
            async move {
                let v = query(&p, "sum(etcd_manager_is_leader{job=\"etcd-manager-main\"})").await?;
                let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
                let up = query(&p, "count(up{job=\"etcd-manager-main\"} == 1)").await?;
                let targets: f64 = up["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
                (n == 1.0 && targets == 3.0).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        alert_state(&prom.addr, "EtcdManagerBackupTooOld").await,
        None,
        "fires while backups work"
    );

    // Every metric the issue names is on the leader, and promtool accepts the page.
    let mut leader_page = None;
    for m in &metrics {
        let (_, body) = tests::http_get(m, "/metrics").await.unwrap();
        if tests::metric_value(&body, "etcd_manager_is_leader") == Some(1.0) {
            leader_page = Some(body);
        }
    }
    let page = leader_page.expect("one manager says it leads");
    for name in [
        "etcd_manager_is_leader",
        "etcd_manager_lease_epoch",
        "etcd_manager_leader_changes_total",
        "etcd_manager_backup_last_success_timestamp_seconds",
        "etcd_manager_backup_duration_seconds",
        "etcd_manager_backup_size_bytes",
        "etcd_manager_backups_total{result=",
        "etcd_manager_gossip_members{state=",
        "etcd_manager_etcd_members{kind=\"desired\"}",
        "etcd_manager_etcd_members{kind=\"actual\"}",
        "etcd_manager_etcd_members{kind=\"healthy\"}",
        "etcd_manager_quarantined",
        "etcd_manager_reconcile_actions_total{",
        "etcd_manager_reconcile_waits_total{reason=",
        "etcd_manager_store_requests_total{",
    ] {
        assert!(
            page.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics:\n{page}"
        );
    }
    if let Some(promtool) = tests::which("promtool") {
        use std::io::Write;
        let mut check = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        tests::tool_missing("promtool not found (scripts/test.sh installs it)");
    }

    // The store goes away: no more backups, the alert fires.
    let store = env.store_path();
    let away = dir.path().join("store-unreachable");
    std::fs::rename(&store, &away).unwrap();
    // A plain file in its place, so nothing can recreate the folder.
    std::fs::write(&store, b"unreachable").unwrap();
    wait_for(
        "the backup-age alert firing",
        Duration::from_secs(90),
        || {
            let p = prom.addr.clone();
            async move {
                (alert_state(&p, "EtcdManagerBackupTooOld").await.as_deref() == Some("firing"))
                    .then_some(())
            }
        },
    )
    .await;

    // It comes back: backups resume, the alert resolves.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&away, &store).unwrap();
    wait_for(
        "the backup-age alert resolved",
        Duration::from_secs(90),
        || {
            let p = prom.addr.clone();
            async move {
                alert_state(&p, "EtcdManagerBackupTooOld")
                    .await
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;

    // Restore drills: a periodic backup verified on a manager; the same
    // backup changed after upload fails the drill the managers run on
    // request, and the drill alert fires.
    let backups = backup::BackupStore::open(&env.store_url, &Default::default()).unwrap();
    let name = wait_for(
        "a backup verified by a drill",
        Duration::from_secs(90),
        || {
            let backups = backups.clone();
            async move {
                for n in backups.list_backups().await.ok()?.iter().rev() {
                    if backups.read_drill(n).await.ok()??.verdict == backup::DrillVerdict::Verified
                    {
                        return Some(n.clone());
                    }
                }
                None
            }
        },
    )
    .await;
    assert_eq!(
        alert_state(&prom.addr, "EtcdManagerBackupDrillFailed").await,
        None
    );
    let gz = env.store_path().join(&name).join(backup::BACKUP_DATA_FILE);
    let mut bytes = std::fs::read(&gz).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&gz, &bytes).unwrap();
    let out = env.ctl(&["verify-backup", "--on-manager", "--timeout=3m", &name]);
    assert!(!out.success && out.stderr.contains("failed"), "{out:?}");
    wait_for("the drill alert firing", Duration::from_secs(60), || {
        let p = prom.addr.clone();
        async move {
            (alert_state(&p, "EtcdManagerBackupDrillFailed")
                .await
                .as_deref()
                == Some("firing"))
            .then_some(())
        }
    })
    .await;
}
