//! Hosts as network namespaces on a bridge of their own, host `h` at
//! `10.240.<k>.h/24`, optionally the bridge itself at an address in the root
//! namespace (where a test runs its cloud emulators), so traffic never leaves
//! the machine. `k` is a machine-wide lease ([`crate::lease`]): namespaces
//! (`<prefix><k>-h<h>`), links and the subnet are this test's alone, beside
//! other tests and other runs. Everything is killed and removed on drop, and
//! before use (a crashed earlier run). Needs root.

use std::collections::BTreeSet;
use std::process::Command;

/// Run `cmd`: its stdout, or an error with its output.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// The effective uid is 0 (from /proc).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A test that needs root: true when it may run; under `CI=true` (which
/// runs as root) not being root fails.
pub fn root_or_skip(what: &str) -> bool {
    if is_root() {
        return true;
    }
    crate::tool_missing(&format!("{what} needs root (network and mount namespaces)"));
    false
}

/// SIGKILL every process in namespace `name`.
fn kill_all_in(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The hosts' network.
pub struct Net {
    /// `<prefix><k>`: the namespaces' names start with it.
    prefix: String,
    /// The prefix and a counter of this process: links get names of their
    /// own, as the kernel may take a minute to free a deleted namespace's
    /// links.
    links: String,
    subnet: String,
    hosts: BTreeSet<usize>,
    _lease: crate::lease::Lease,
}

static NETS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Net {
    /// Hosts `1..=n` on a fresh bridge; with `bridge_host`, the bridge
    /// answers at `<subnet>.<bridge_host>` in the root namespace. `prefix`
    /// is two or three letters naming the test.
    pub fn up(prefix: &str, n: usize, bridge_host: Option<u8>) -> Net {
        let lease = crate::lease::lease("netns", 250);
        let k = lease.index;
        let serial = NETS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 100;
        let mut net = Net {
            prefix: format!("{prefix}{k}"),
            links: format!("{prefix}{k}n{serial}"),
            subnet: format!("10.240.{k}"),
            hosts: BTreeSet::new(),
            _lease: lease,
        };
        net.cleanup(n.max(8));
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"])
            .unwrap_or_else(|e| panic!("setting up the hosts' network: {e}"));
        ip(&["link", "set", &br, "up"])
            .unwrap_or_else(|e| panic!("setting up the hosts' network: {e}"));
        if let Some(b) = bridge_host {
            ip(&["addr", "add", &format!("{}.{b}/24", net.subnet), "dev", &br])
                .unwrap_or_else(|e| panic!("setting up the hosts' network: {e}"));
        }
        for h in 1..=n {
            net.add(h);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}br", self.links)
    }

    pub fn ns(&self, h: usize) -> String {
        format!("{}-h{h}", self.prefix)
    }

    pub fn ip_of(&self, h: usize) -> String {
        format!("{}.{h}", self.subnet)
    }

    /// The hosts' /24: `10.240.<k>`.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// Host `h`: a namespace with `eth0` on the bridge and `lo` up.
    pub fn add(&mut self, h: usize) {
        let (name, veth) = (self.ns(h), format!("{}v{h}", self.links));
        ip(&["netns", "add", &name])
            .unwrap_or_else(|e| panic!("setting up the hosts' network: {e}"));
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ])
        .unwrap_or_else(|e| panic!("setting up the hosts' network: {e}"));
        ip(&["link", "set", &veth, "master", &self.bridge(), "up"])
            .unwrap_or_else(|e| panic!("setting up the hosts' network: {e}"));
        let addr = format!("{}/24", self.ip_of(h));
        ip(&["-n", &name, "addr", "add", &addr, "dev", "eth0"])
            .unwrap_or_else(|e| panic!("setting up the hosts' network: {e}"));
        ip(&["-n", &name, "link", "set", "eth0", "up"])
            .unwrap_or_else(|e| panic!("setting up the hosts' network: {e}"));
        ip(&["-n", &name, "link", "set", "lo", "up"])
            .unwrap_or_else(|e| panic!("setting up the hosts' network: {e}"));
        self.hosts.insert(h);
    }

    /// Host `h` gone: every process in it killed, the namespace deleted.
    pub fn remove(&mut self, h: usize) {
        let name = self.ns(h);
        kill_all_in(&name);
        let _ = ip(&["netns", "del", &name]);
        self.hosts.remove(&h);
    }

    /// What an earlier run that crashed left: its namespaces, and its
    /// bridges and links (named with this prefix and a number).
    fn cleanup(&mut self, n: usize) {
        for h in 1..=n {
            self.remove(h);
        }
        if let Ok(links) = ip(&["-o", "link", "show"]) {
            for l in links.lines() {
                let Some(name) = l
                    .split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n))
                else {
                    continue;
                };
                let ours = name
                    .strip_prefix(self.prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('n'));
                if ours && name.ends_with("br") {
                    let _ = ip(&["link", "del", name]);
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in self.hosts.clone() {
            self.remove(h);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Start `program args` in namespace `ns`, in a private mount namespace
/// prepared by `script` (which ends with `exec "$@"`), in a process group of
/// its own, its output into `log`; `env` on top of ours, with etcd's
/// binaries folder and `RUST_LOG=info`.
pub fn spawn_in_host(
    ns: &str,
    script: &str,
    program: &std::path::Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let out = std::fs::File::create(log)
        .unwrap_or_else(|e| panic!("console file {}: {e}", log.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("console file {}: {e}", log.display()));
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args([
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(program)
        .args(args)
        .env("RUST_LOG", "info")
        .envs(std::env::var("ETCD_MANAGER_ETCD_BIN_DIR").map(|v| ("ETCD_MANAGER_ETCD_BIN_DIR", v)))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {} in {ns}: {e}", program.display()))
}

/// Prints each host's console when the test fails: the only trace of what
/// its processes did, since the temporary folder goes with the test.
pub struct Consoles(pub std::path::PathBuf, pub Vec<usize>);

impl Drop for Consoles {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for h in &self.1 {
                let text = std::fs::read_to_string(self.0.join(format!("console-{h}.log")))
                    .unwrap_or_default();
                eprintln!("===== console of host {h} =====\n{text}");
            }
        }
    }
}
