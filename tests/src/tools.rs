//! Finding the tools a test needs, and what a missing one means. Also
//! included by path in `backup/tests/store.rs` (which cannot depend on this
//! crate), so it uses nothing else of it.

use std::path::PathBuf;

/// The first `name` on PATH (what a shell would run).
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A tool a test needs is missing: under `CI=true` that fails the test
/// (CI installs everything), elsewhere the test says why it skips.
pub fn tool_missing(what: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} (CI=true: a missing tool fails)"
    );
    println!("skipped: {what}");
}

/// The previous release's `etcd-manager` (`PREVIOUS_RELEASE_BIN`, set by
/// `scripts/test.sh` from `scripts/previous-release.sh`), for the tests of
/// a rolling update from it; `None` (after [`tool_missing`]) without it.
pub fn previous_release() -> Option<PathBuf> {
    match std::env::var_os("PREVIOUS_RELEASE_BIN").map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        _ => {
            tool_missing(
                "PREVIOUS_RELEASE_BIN names no binary: run scripts/previous-release.sh and export its output",
            );
            None
        }
    }
}
