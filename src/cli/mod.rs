//! The command line of `etcd-manager`: its flags and their validation into a
//! `Config` before anything starts ([`config`]), Go-style single-dash flags
//! ([`goflags`], also for `etcd-manager-ctl`) and `--env-file` ([`envfile`]).
//!
//! It turns arguments into settings; the binaries call it, and the platform
//! reads the settings it made. It calls nothing that does IO but reading the
//! env file.

pub mod config;
pub mod envfile;
pub mod goflags;
