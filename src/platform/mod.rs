//! The machine and what it is given: where the data lives ([`volumes`]: a
//! folder, upstream's external volumes, EBS), `/etc/hosts` and the members'
//! DNS names ([`hosts`]), certificates ([`pki`]), a fixed cluster from the
//! command line ([`statics`]) and peers found through the store
//! ([`discovery`]).
//!
//! These call the OS, the cloud and the store, and nothing of the leader or
//! the node; [`volumes`] reads the parsed command line ([`crate::cli`]) to
//! know which provider to ask.

pub mod discovery;
pub mod hosts;
pub mod pki;
pub mod statics;
pub mod volumes;
