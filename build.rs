//! The revision `--version` prints beside the version: the commit this was
//! built from (`git rev-parse HEAD`), or `ETCD_MANAGER_REVISION` when set (a
//! build without the repository). Built again when HEAD moves (a commit, a
//! checkout), not on every change of the working tree.

// The one place the build runs a program: git, for the revision.
#![allow(clippy::disallowed_methods)]

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ETCD_MANAGER_REVISION");
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let revision = std::env::var("ETCD_MANAGER_REVISION").ok().or_else(|| {
        let head = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()?;
        if !head.status.success() {
            return None;
        }
        Some(String::from_utf8(head.stdout).ok()?.trim().to_string())
    });
    println!(
        "cargo:rustc-env=ETCD_MANAGER_REVISION={}",
        revision.unwrap_or_else(|| "unknown".into())
    );
}
