//! Bad input: one clear line naming the problem and the fix, a non-zero exit,
//! and nothing written to the store.

use std::path::Path;
use std::time::Duration;

fn store_files(root: &Path) -> Vec<String> {
    fn walk(p: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path().display().to_string());
                }
            }
        }
    }
    let mut v = vec![];
    walk(root, &mut v);
    v
}

#[test]
fn ctl_rejects_bad_input_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "-member-count=2",
                "-etcd-version=3.5.30",
                "configure-cluster",
            ],
            "odd",
        ),
        (
            &[
                "-member-count=0",
                "-etcd-version=3.5.30",
                "configure-cluster",
            ],
            "at least 1",
        ),
        (
            &[
                "-member-count=3",
                "-etcd-version=9.9.9",
                "configure-cluster",
            ],
            "install-etcd.sh 9.9.9",
        ),
        (
            &[
                "-member-count=3",
                "-etcd-version=latest",
                "configure-cluster",
            ],
            "version",
        ),
        (
            &["-member-count=3", "configure-cluster"],
            "-etcd-version is required",
        ),
        (&["--no-such-flag", "get"], "--no-such-flag"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let out = env.ctl(args);
        assert!(!out.success, "{args:?} should fail");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: stderr lacks '{needle}':\n{}",
            out.stderr
        );
    }
    assert!(
        store_files(&env.store_path()).is_empty(),
        "store was written: {:?}",
        store_files(&env.store_path())
    );

    for url in ["ftp://bucket/x", "relative/path", "file://relative"] {
        let out = tests::run_ctl(
            &env.ctl_bin,
            &[format!("-backup-store={url}"), "get".into()],
        );
        assert!(!out.success, "{url} should fail");
        assert!(out.stderr.contains("backup-store"), "{url}: {}", out.stderr);
    }
}

fn manager_fails(env: &tests::ClusterEnv, extra: &[&str], needle: &str) {
    let mut m = env.start_with(1, extra);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = m.try_exit() {
            break Some(s);
        }
        if start.elapsed() > Duration::from_secs(20) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = m.log_text();
    let status = status.unwrap_or_else(|| panic!("manager with {extra:?} kept running:\n{log}"));
    assert!(!status.success(), "{extra:?} exited 0");
    assert!(
        log.contains(needle),
        "{extra:?}: output lacks '{needle}':\n{log}"
    );
}

#[test]
fn manager_rejects_bad_input_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    manager_fails(&env, &["--peer-urls=127.0.0.1:2380"], "--peer-urls");
    manager_fails(&env, &["--no-such-flag"], "--no-such-flag");
    manager_fails(&env, &["--backup-store=ftp://x/y"], "backup-store");
    manager_fails(&env, &["--backup-interval=often"], "backup-interval");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let bad_dir = format!("--data-dir={}/sub", file.display());
    manager_fails(&env, &[&bad_dir], "data dir");

    // A volume provider that is not built yet: one line naming it and what works.
    manager_fails(
        &env,
        &["--volume-provider=gce", "--volume-tag=k8s.io/etcd/main"],
        "--volume-provider=gce is not supported by this etcd-manager yet; use --volume-provider=aws (EBS), --volume-provider=external",
    );
    manager_fails(
        &env,
        &["--volume-provider=vsphere"],
        "unknown volume provider 'vsphere'",
    );

    // Port in use: someone else holds the peer API port.
    let ip = tests::host_ip(env.net, 1);
    let _holder = std::net::TcpListener::bind(format!("{ip}:8000")).unwrap();
    manager_fails(&env, &[], "8000");

    assert!(
        store_files(&env.store_path()).is_empty(),
        "store was written: {:?}",
        store_files(&env.store_path())
    );
}
