//! The Prometheus files in `deploy/prometheus/`: `promtool check rules` and
//! `promtool test rules` on the alert rules, and every PromQL expression of
//! the Grafana dashboard checked by promtool as well.
//!
//! promtool comes with Debian's `prometheus` package (scripts/test.sh installs
//! it); without it these tests fail under `CI=true` and elsewhere say why
//! they skip.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("prometheus")
}

/// promtool, if it is on PATH.
fn promtool() -> Option<PathBuf> {
    tests::which("promtool")
}

fn run_promtool(promtool: &Path, args: &[&str], cwd: &Path) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed in {}:\n{text}",
        args.join(" "),
        cwd.display()
    );
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = promtool() else {
        tests::tool_missing("promtool not found (scripts/test.sh installs it)");
        return;
    };
    let dir = prometheus_dir();
    let checked = run_promtool(
        &promtool,
        &["check", "rules", "etcd-manager.rules.yml"],
        &dir,
    );
    assert!(checked.contains("SUCCESS: 15 rules found"), "{checked}");
    let tested = run_promtool(
        &promtool,
        &["test", "rules", "etcd-manager.rules.test.yml"],
        &dir,
    );
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The alerts the rules file defines, read without a YAML parser: every
/// `- alert: Name` line.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test_and_a_runbook_anchor() {
    let dir = prometheus_dir();
    let rules = std::fs::read_to_string(dir.join("etcd-manager.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("etcd-manager.rules.test.yml")).unwrap();
    let ops = std::fs::read_to_string(dir.join("../../docs/operations.md")).unwrap();
    let names = alert_names(&rules);
    assert_eq!(names.len(), 15, "{names:?}");
    for name in &names {
        // Split the test file into alert_rule_test entries and classify them.
        let mut firing = false;
        let mut quiet = false;
        let entries: Vec<&str> = tests.split("- eval_time:").skip(1).collect();
        for e in entries {
            if !e.contains(&format!("alertname: {name}\n")) {
                continue;
            }
            let body = e.split("alertname:").nth(1).unwrap_or("");
            if body.contains("exp_alerts: []") {
                quiet = true;
            } else if body.contains("exp_labels:") {
                firing = true;
            }
        }
        assert!(firing, "{name}: no unit test in which it fires");
        assert!(quiet, "{name}: no unit test in which it stays quiet");
        let anchor = name.to_lowercase();
        assert!(
            rules.contains(&format!("docs/operations.md#{anchor}")),
            "{name}: runbook_url does not point at docs/operations.md#{anchor}"
        );
        assert!(
            ops.contains(&format!("<a id=\"{anchor}\"></a>")),
            "docs/operations.md has no anchor {anchor} for {name}"
        );
    }
}

#[test]
fn dashboard_is_json_and_its_queries_pass_promtool() {
    let dir = prometheus_dir();
    let text = std::fs::read_to_string(dir.join("etcd-manager-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("expr is a string").to_string());
        }
    }
    assert!(exprs.len() >= 15, "only {} queries", exprs.len());
    let joined = exprs.join("\n");
    for metric in [
        "etcd_manager_is_leader",
        "etcd_manager_lease_epoch",
        "etcd_manager_backup_last_success_timestamp_seconds",
        "etcd_manager_backup_size_bytes",
        "etcd_manager_backup_duration_seconds",
        "etcd_manager_etcd_members",
        "etcd_manager_gossip_members",
        "etcd_manager_reconcile_actions_total",
        "etcd_manager_reconcile_waits_total",
    ] {
        assert!(joined.contains(metric), "the dashboard shows no {metric}");
    }
    let Some(promtool) = promtool() else {
        tests::tool_missing("promtool not found (scripts/test.sh installs it)");
        return;
    };
    // Grafana's variables replaced by values, each query made a recording
    // rule, so that promtool parses it.
    let tmp = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$job", "etcd-manager-main");
        rules += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        );
    }
    std::fs::write(tmp.path().join("dashboard.rules.yml"), rules).unwrap();
    run_promtool(
        &promtool,
        &["check", "rules", "dashboard.rules.yml"],
        tmp.path(),
    );
}
