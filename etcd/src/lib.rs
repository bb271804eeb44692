//! Running and talking to real etcd.
//!
//! This crate is the only place in the workspace that spawns processes. It
//! finds the etcd binaries of a version ([`find_binaries`]), turns a member's
//! description into etcd's `ETCD_*` environment ([`etcd_env`]), supervises
//! one etcd process ([`EtcdProcess`]), talks to etcd through `etcd-client`
//! with a timeout on every call ([`EtcdClient`]), restores snapshots
//! ([`restore_snapshot`]) and writes small JSON state files atomically
//! ([`write_json_atomic`], [`read_json`]).

mod binaries;
mod client;
mod drill;
mod env;
mod error;
mod flags;
mod ident;
mod orphans;
mod process;
mod restore;
mod state;
mod v2store;
mod watch;

pub use binaries::{EtcdBinaries, find_binaries, find_binaries_in};
pub use client::{
    Backoff, ClientTls, DEFAULT_TIMEOUT, EndpointStatus, EtcdClient, HashKv, Health, Member,
    SnapshotStream,
};
pub use drill::{DrillResult, Throwaway, drill, private_dir};
pub use env::{
    EtcdNodeSpec, MemberTlsFiles, etcd_env, etcd_env_overrides_from_process, is_etcd_override,
    replace_url_host,
};
pub use error::Error;
pub use etcd_manager_core::{EtcdVersion, InvalidVersion};
pub use flags::{LostSetting, lost_settings, not_understood, understands};
pub use ident::{IdentKind, InvalidIdent, MAX_IDENT_LEN, check_ident};
pub use orphans::{Orphan, etcds_under, find_orphans, stop_orphans};
pub use process::{EtcdProcess, ProcessStatus};
pub use restore::{SnapshotInfo, restore_snapshot, verify_snapshot};
pub use state::{read_json, write_json_atomic};
pub use v2store::{V2StoreVerdict, can_check_v2store, check_v2store};
pub use watch::{KeyChange, KeyspaceWatch, MAX_WATCH_MESSAGE, WatchBatch};
