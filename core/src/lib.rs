//! The pure core of etcd-manager: what the leader decides ([`controller`]),
//! the leadership rules ([`leadership`]), the leader's memory across
//! passes ([`memory`]), backoff after failures
//! ([`backoff`]), the safety rules' switches ([`rules`]) and the model they
//! decide on ([`model`], [`EtcdVersion`], [`ClusterSpec`]). Functions of
//! observations, spec and time only.
//!
//! A crate of its own so the compiler keeps IO out: it depends on serde and
//! thiserror alone (a test below holds `Cargo.toml` to that), so no tokio,
//! no store, no etcd client, no gossip can be named here; `clippy.toml` in
//! this folder forbids the clock, sleeps, randomness, spawning, files and
//! sockets of the standard library. The driver, the node and the
//! simulation in `tests/` all run this one implementation; the IO crates
//! (`etcd`, `backup`) take their plain data types from here.

pub mod backoff;
pub mod controller;
pub mod leadership;
pub mod memory;
pub mod model;
pub mod rules;
mod spec;
mod version;

pub use spec::ClusterSpec;
pub use version::{EtcdVersion, InvalidVersion};

#[cfg(test)]
mod tests {
    /// The core's dependencies: what a pure crate may build on. A new one
    /// (tokio, object_store, an etcd client, the workspace's IO crates) fails here.
    #[test]
    fn the_core_depends_on_nothing_that_does_io() {
        const ALLOWED: &[&str] = &["serde", "thiserror"];
        let manifest = include_str!("../Cargo.toml");
        let mut section = "";
        let mut seen = 0;
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if section != "[dependencies]" || line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name = line.split(['=', '.', ' ']).next().unwrap_or_default();
            assert!(
                ALLOWED.contains(&name),
                "core/Cargo.toml depends on {name}: the core must stay pure (allowed: {ALLOWED:?})"
            );
            seen += 1;
        }
        assert!(seen >= 1, "no [dependencies] read from core/Cargo.toml");
    }
}
