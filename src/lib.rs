//! etcd-manager: runs one etcd cluster across control-plane machines.
//!
//! See ARCHITECTURE.md for the map. In short: [`node`] is what every manager
//! does for its own machine, [`peer`] is how managers talk, [`controller`] is
//! the pure decision step, and [`driver`] the leader loop around it. The binaries
//! (`src/bin/`) wire everything together and hold the `etcd-manager-ctl`
//! commands.

/// The version and the revision it was built from, as `--version` prints
/// them: `0.1.0 (revision 1a2b3c…)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("ETCD_MANAGER_REVISION"),
    ")"
);

pub mod backup_now;
pub mod clock;
pub mod codec;
pub mod config;
pub mod core;
pub mod delta;
pub mod discovery;
pub mod drill;
pub mod driver;
pub mod edges;
pub mod envfile;
pub mod fuzzing;
pub mod goflags;
pub mod hosts;
pub mod jobs;
pub mod lease;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod pitr;
pub mod pki;
pub mod recover_request;
pub mod sidecar;
pub mod statics;
pub mod status;
pub mod upstream_state;
pub mod volumes;

// The core's modules keep their old paths.
pub use crate::core::{backoff, controller, leadership, rules};
