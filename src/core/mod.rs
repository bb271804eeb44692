//! The pure core: what the leader decides ([`controller`]), the leadership
//! rules ([`leadership`]), backoff after failures ([`backoff`]), the
//! safety rules' switches ([`rules`]) and the model they decide on ([`model`]). Functions of observations, spec and
//! time only: no IO module of this crate, no IO crate, no tokio, no clock
//! reads (the test below checks the imports; clippy.toml the clock, sleep,
//! random and spawn calls). The driver, the node and the simulation in
//! `tests/` all run this one implementation.

pub mod backoff;
pub mod controller;
pub mod leadership;
pub mod model;
pub mod rules;

#[cfg(test)]
mod tests {
    /// Every path the core's files name, checked against what a pure
    /// module may use. A new import of an IO module or crate fails here.
    #[test]
    fn the_core_imports_no_io() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
        // Plain data types of other crates (the store's spec, etcd's version
        // numbers), and serde for the wire.
        const ALLOWED_EXTERNAL: &[&str] = &["backup::ClusterSpec", "etcd::EtcdVersion", "serde::"];
        const FORBIDDEN: &[&str] = &[
            "tokio",
            "std::net",
            "std::fs",
            "std::process",
            "std::thread",
            "object_store",
            "reqwest",
            "etcd_client",
            "foca",
            "metrics::",
            "tracing::",
            "SystemTime::now",
            "Instant::now",
        ];
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).expect("src/core") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            files += 1;
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            // Tests may read the clock and the disk; the code they test may not.
            if name.ends_with("_tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let lines = text.lines().take_while(|l| l.trim() != "#[cfg(test)]");
            for (i, line) in lines.enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                let at = format!("src/core/{name}:{}: {}", i + 1, line.trim());
                for bad in FORBIDDEN {
                    assert!(!code.contains(bad), "{at}: the core uses {bad}");
                }
                // Modules of this crate: only the core's own.
                let mut rest = code;
                while let Some(p) = rest.find("crate::") {
                    let after = &rest[p + "crate::".len()..];
                    assert!(
                        after.starts_with("core::"),
                        "{at}: the core uses a module outside src/core/"
                    );
                    rest = after;
                }
                // Other crates of the workspace: only the data types allowed.
                for krate in ["backup::", "etcd::", "lock::", "gossip::"] {
                    let mut rest = code;
                    while let Some(p) = rest.find(krate) {
                        let before = rest[..p].chars().last();
                        let after = &rest[p..];
                        let word_start =
                            before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
                        if word_start {
                            assert!(
                                ALLOWED_EXTERNAL.iter().any(|a| after.starts_with(a)),
                                "{at}: the core uses {krate}, an IO crate"
                            );
                        }
                        rest = &rest[p + krate.len()..];
                    }
                }
            }
        }
        assert!(files >= 5, "only {files} files read in {}", dir.display());
    }
}
