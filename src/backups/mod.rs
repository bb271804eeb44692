//! Backups beyond the store's own format (the `backup` crate): continuous
//! backups ([`delta`]), restore drills ([`drill`]), restores to a point
//! ([`pitr`]), backup-only mode ([`sidecar`]) and `etcd-manager-ctl
//! backup-now`'s request ([`backup_now`]).
//!
//! They reach the store through the `backup` crate, etcd through the `etcd`
//! crate and a throwaway etcd through [`crate::edges`]; the leader and the
//! node call them, never the other way round.

pub mod backup_now;
pub mod delta;
pub mod drill;
pub mod pitr;
pub mod sidecar;
