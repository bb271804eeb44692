//! Survival of a manager's own death: a manager killed on its own (the OOM
//! killer, `kill -9`) leaves its etcd running; the manager started next
//! stops that etcd and runs its own instead of starting a second one that
//! dies on "address already in use" until someone kills the first by hand.

use std::path::Path;
use std::time::Duration;

use tests::wait_for;

/// The etcd processes whose data dir lies under `data_root`.
fn etcds_of(data_root: &Path) -> Vec<u32> {
    etcd::etcds_under(Path::new("/proc"), data_root, std::process::id())
        .into_iter()
        .map(|o| o.pid)
        .collect()
}

/// The parent of `pid` (`/proc/<pid>/stat`'s fourth field).
fn parent_of(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Kills a process group when the test ends, passed or not (the orphaned
/// etcd is in the killed manager's group, which no `Manager` owns any more).
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manager_killed_alone_leaves_no_second_etcd_to_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let env = crate::env(&dir);
    let mut ms: Vec<_> = (1..=3u8).map(|h| env.start(h)).collect();
    env.configure(3, "3.5.30");
    let eps: Vec<String> = (1..=3).map(|h| env.client_url(h)).collect();
    tests::wait_voters("three voters", &eps[..1], 3, None).await;
    tests::wait_put("a write", &eps[0], "/before", "1", Duration::from_secs(60)).await;

    let data = dir.path().join("data/1/data");
    let old = ms[0].pid().expect("manager 1 runs");
    let before = etcds_of(&data);
    assert_eq!(before.len(), 1, "one etcd of host 1's data: {before:?}");
    assert_eq!(parent_of(before[0]), Some(old), "the manager's own child");

    let group = KillGroup(ms[0].kill_alone().expect("killed"));
    // Its etcd runs on without it, and serves.
    tests::wait_put(
        "the orphan serves",
        &eps[0],
        "/orphaned",
        "1",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(etcds_of(&data), before, "the orphan runs on");

    ms[0].spawn_again();
    let new = ms[0].pid().expect("manager 1 runs again");
    let orphan = before[0];
    wait_for(
        "host 1's only etcd is the new manager's own, and serves",
        Duration::from_secs(90),
        || {
            let (data, ep) = (data.clone(), eps[0].clone());
            async move {
                let now = etcds_of(&data);
                if now.len() != 1 || now[0] == orphan || parent_of(now[0]) != Some(new) {
                    return None;
                }
                tests::put(&ep, "/after", "1").await.ok()
            }
        },
    )
    .await;
    tests::wait_voters("three voters again", &eps, 3, None).await;
    assert_eq!(
        tests::get(&eps[1], "/orphaned").await.unwrap().as_deref(),
        Some("1"),
        "what the orphan acknowledged is kept"
    );
    let log = ms[0].log_text();
    assert!(
        log.contains("stopped the etcd the manager before left running"),
        "the new manager says what it did"
    );
    drop(group);
}
