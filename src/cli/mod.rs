//! The command line of `etcd-manager`: its flags and their validation into a
//! `Config` before anything starts ([`config`]), Go-style single-dash flags
//! ([`goflags`], also for `etcd-manager-ctl`) and `--env-file` ([`envfile`]).
//!
//! It turns arguments into settings (its own, and the platform's it builds,
//! such as `VolumeSource`); only the binaries call it. It does no IO but
//! reading the env file.

pub mod config;
pub mod envfile;
pub mod goflags;
