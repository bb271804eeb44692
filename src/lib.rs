//! etcd-manager: runs one etcd cluster across control-plane machines.
//!
//! See ARCHITECTURE.md for the map. In short: [`core`] is the pure decision
//! step, [`driver`] the leader loop around it, [`node`] what every manager
//! does for its own machine, [`peer`] how managers talk, [`backups`] what
//! we add to the store's backups, [`platform`] the machine and the cloud,
//! and [`cli`] the command line. The binaries (`src/bin/`) wire everything
//! together and hold the `etcd-manager-ctl` commands.

/// The version and the revision it was built from, as `--version` prints
/// them: `0.1.0 (revision 1a2b3c…)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("ETCD_MANAGER_REVISION"),
    ")"
);

pub mod accept;
pub mod backups;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod driver;
pub mod edges;
pub mod fuzzing;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod platform;
pub mod recover_request;
pub mod status;

/// The pure core, a crate of its own (`core/`).
pub use etcd_manager_core as core;
// The core's modules keep their old paths.
pub use crate::core::{backoff, controller, leadership, rules};
