//! Machine-wide names for a test, held while it runs: loopback /24s,
//! namespace prefixes and subnets. Two test runs on one machine (or many
//! tests of one run side by side) never get the same one: each is a lock
//! file in `/tmp/etcd-manager-tests/<kind>/<index>` held with `flock` for
//! as long as the [`Lease`] lives (the kernel drops it if the process dies).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};

/// One index of a kind, held until dropped.
#[derive(Debug)]
pub struct Lease {
    pub index: u32,
    _lock: nix::fcntl::Flock<File>,
}

static CALLS: AtomicU64 = AtomicU64::new(0);

/// Index `index` of `kind`, if nobody holds it.
pub fn try_lease(kind: &str, index: u32) -> Option<Lease> {
    let dir = std::env::temp_dir().join("etcd-manager-tests").join(kind);
    std::fs::create_dir_all(&dir).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(index.to_string()))
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .ok()
        .map(|lock| Lease { index, _lock: lock })
}

/// The first free index of `kind` in `0..count`, tried from a place of this
/// process's own (so concurrent runs rarely try the same ones first).
pub fn lease(kind: &str, count: u32) -> Lease {
    let dir = std::env::temp_dir().join("etcd-manager-tests").join(kind);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("lease folder {}: {e}", dir.display()));
    let start = (u64::from(std::process::id()) * 7 + CALLS.fetch_add(1, Ordering::SeqCst))
        % u64::from(count);
    for i in 0..count {
        let index = ((start + u64::from(i)) % u64::from(count)) as u32;
        let path = dir.join(index.to_string());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("lease file {}: {e}", path.display()));
        if let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        {
            return Lease { index, _lock: lock };
        }
    }
    panic!("all {count} {kind} leases are held: too many tests on this machine at once")
}
