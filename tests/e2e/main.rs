//! End-to-end tests: the real `etcd-manager` and `etcd-manager-ctl` binaries
//! with real etcd, each test on its own loopback /24 and temp dir.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod adopt;
mod bad_input;
mod ctl;
mod deploy;
mod disaster;
mod drills;
mod hardening;
mod image;
mod kops_aws;
mod kops_metal;
mod leadership;
mod mixed;
mod pitr;
mod prometheus;
mod replace;
mod rolling;
mod security;
mod sidecar;
mod slow_restore;
mod survival;
mod tls;
mod upgrade;
mod walkthrough;

use tests::ClusterEnv;

pub fn env(dir: &tempfile::TempDir) -> ClusterEnv {
    ClusterEnv::new(
        dir.path(),
        env!("CARGO_BIN_EXE_etcd-manager"),
        env!("CARGO_BIN_EXE_etcd-manager-ctl"),
    )
}
