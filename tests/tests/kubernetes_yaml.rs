//! The static pod in `deploy/kubernetes/`: it parses as YAML and has the
//! shape a control-plane static pod needs (host network, critical priority,
//! the data and pki host paths, read-only etcd binaries, probes on the
//! metrics port). Its flags are checked against the CLI by
//! `tests/e2e/deploy.rs`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::Value;

fn manifest() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/etcd-manager-main.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

#[test]
fn static_pod_has_the_control_plane_shape() {
    let pod = manifest();
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["namespace"], "kube-system");
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    // Longer than the manager's own shutdown (etcd gets 15 s).
    assert!(spec["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30);

    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], "etcd-manager-rs:VERSION");
    let command: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(command[0], "/usr/local/bin/etcd-manager");
    let flag = |name: &str| {
        command
            .iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("no --{name}= in the command"))
    };
    assert_eq!(flag("data-dir"), "/var/lib/etcd-manager/main");
    assert_eq!(flag("seeds").split(',').count(), 3);
    assert!(flag("backup-store").starts_with("s3://"));
    let metrics_port: u64 = flag("metrics-address")
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // Probes and the declared port are the metrics port.
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(metrics_port));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        c["livenessProbe"]["httpGet"]["port"].as_u64(),
        Some(metrics_port)
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());

    // Every mount names a volume, the data dir is a host path at the
    // --data-dir, etcd binaries are read-only host paths under /opt.
    let volumes: Vec<&Value> = spec["volumes"].as_array().unwrap().iter().collect();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mut etcd_versions = 0;
    for m in mounts {
        let name = m["name"].as_str().unwrap();
        let v = volume(name);
        let path = m["mountPath"].as_str().unwrap();
        if path.starts_with("/opt/etcd-v") {
            etcd_versions += 1;
            assert_eq!(m["readOnly"], true, "{path} must be read-only");
            assert_eq!(v["hostPath"]["path"], path);
        }
    }
    assert!(etcd_versions >= 1);
    let data_mount = mounts
        .iter()
        .find(|m| m["mountPath"] == flag("data-dir"))
        .expect("the data dir is mounted");
    assert!(volume(data_mount["name"].as_str().unwrap())["hostPath"]["path"].is_string());
    assert!(
        mounts.iter().any(|m| m["mountPath"]
            .as_str()
            .unwrap()
            .starts_with("/etc/kubernetes/pki")),
        "the pki folder is mounted"
    );
}
