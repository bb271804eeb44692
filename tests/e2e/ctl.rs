//! etcd-manager-ctl against stores in upstream's exact layout.

use std::path::Path;

fn write(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

#[test]
fn reads_upstream_examples_in_camel_and_snake_case() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let store = env.store_path();
    write(
        &store,
        "control/etcd-cluster-spec",
        "{\n  \"memberCount\": 3,\n  \"etcdVersion\": \"3.5.30\"\n}\n",
    );
    write(
        &store,
        "control/etcd-cluster-created",
        "{\"timestamp\":1638935701000000000}",
    );
    write(
        &store,
        "2024-01-01T00:00:00Z-000001/_etcd_backup.meta",
        r#"{"etcdVersion":"3.4.13","timestamp":"1704067200","clusterSpec":{"memberCount":3,"etcdVersion":"3.4.13"}}"#,
    );
    write(&store, "2024-01-01T00:00:00Z-000001/etcd.backup.gz", "");
    write(
        &store,
        "2019-01-14T15:29:48Z-000003/_etcd_backup.meta",
        r#"{ "etcd_version": "3.3.10", "timestamp": 1547479788, "cluster_spec": { "member_count": 1, "etcd_version": "3.3.10" } }"#,
    );
    // Half-written: data but no meta yet. Must not be listed.
    write(
        &store,
        "2024-02-01T00:00:00Z-000001/etcd.backup.gz",
        "partial",
    );
    write(
        &store,
        "control/2019-01-14T15:49:21Z-000000/_command.json",
        r#"{"timestamp":"1547480961703914946","restoreBackup":{"clusterSpec":{"memberCount":3,"etcdVersion":"3.4.13"},"backup":"2019-01-14T15:29:48Z-000003"}}"#,
    );

    let got = env.ctl(&["get"]);
    assert!(got.success, "{}", got.stderr);
    assert_eq!(got.stdout, "member_count:3 etcd_version:\"3.5.30\"\n");
    // No command means get, as upstream.
    assert_eq!(env.ctl(&[]).stdout, got.stdout);

    let list = env.ctl(&["list-backups"]);
    assert!(list.success, "{}", list.stderr);
    assert_eq!(
        list.stdout,
        "2019-01-14T15:29:48Z-000003\n2024-01-01T00:00:00Z-000001\n"
    );

    let cmds = env.ctl(&["list-commands"]);
    assert!(cmds.success, "{}", cmds.stderr);
    assert_eq!(
        cmds.stdout,
        "timestamp:1547480961703914946 restore_backup:<cluster_spec:<member_count:3 etcd_version:\"3.4.13\" > \
         backup:\"2019-01-14T15:29:48Z-000003\" >\n"
    );

    // Upstream's delete-command takes the backup name the command restores.
    let del = env.ctl(&["delete-command", "2019-01-14T15:29:48Z-000003"]);
    assert!(del.success, "{}", del.stderr);
    assert_eq!(env.ctl(&["list-commands"]).stdout, "");
}

#[test]
fn snake_case_spec_is_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    write(
        &env.store_path(),
        "control/etcd-cluster-spec",
        r#"{"member_count":1,"etcd_version":"3.4.23"}"#,
    );
    assert_eq!(
        env.ctl(&["get"]).stdout,
        "member_count:1 etcd_version:\"3.4.23\"\n"
    );
}

#[test]
fn malformed_spec_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    write(&env.store_path(), "control/etcd-cluster-spec", "{ not json");
    let out = env.ctl(&["get"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("control/etcd-cluster-spec"),
        "{}",
        out.stderr
    );
}

#[test]
fn configure_cluster_writes_upstream_json_and_keeps_unset_fields() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let out = env.ctl(&[
        "-member-count=1",
        "-etcd-version=3.5.30",
        "configure-cluster",
    ]);
    assert!(out.success, "{}", out.stderr);
    let raw = std::fs::read_to_string(env.store_path().join("control/etcd-cluster-spec")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"memberCount": 1, "etcdVersion": "3.5.30"})
    );
    // Double-dash flags and flags after the command work as well.
    let out = env.ctl(&["configure-cluster", "--member-count", "3"]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(
        env.ctl(&["get"]).stdout,
        "member_count:3 etcd_version:\"3.5.30\"\n"
    );
}

#[test]
fn restore_backup_queues_an_upstream_command_and_refuses_unknown_backups() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let store = env.store_path();
    write(
        &store,
        "control/etcd-cluster-spec",
        r#"{"memberCount":3,"etcdVersion":"3.5.30"}"#,
    );
    write(
        &store,
        "2024-01-01T00:00:00Z-000001/_etcd_backup.meta",
        r#"{"etcdVersion":"3.5.30","timestamp":"1704067200"}"#,
    );
    let out = env.ctl(&["restore-backup", "2024-01-01T00:00:00Z-999999"]);
    assert!(!out.success);
    assert!(out.stderr.contains("list-backups"), "{}", out.stderr);
    assert_eq!(env.ctl(&["list-commands"]).stdout, "");

    let out = env.ctl(&["restore-backup", "2024-01-01T00:00:00Z-000001"]);
    assert!(out.success, "{}", out.stderr);
    let cmds = env.ctl(&["-o", "json", "list-commands"]);
    let v: serde_json::Value = serde_json::from_str(&cmds.stdout).unwrap();
    let name = v[0]["name"].as_str().unwrap();
    let raw =
        std::fs::read_to_string(store.join("control").join(name).join("_command.json")).unwrap();
    let c: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(c["restoreBackup"]["backup"], "2024-01-01T00:00:00Z-000001");
    assert_eq!(c["restoreBackup"]["clusterSpec"]["memberCount"], 3);
    assert!(c["timestamp"].is_string(), "int64 is a JSON string: {raw}");
}
