//! The machine and what it is given: where the data lives ([`volumes`]: a
//! folder, upstream's external volumes, EBS), `/etc/hosts` and the members'
//! DNS names ([`hosts`]), certificates ([`pki`]), a fixed cluster from the
//! command line ([`statics`]) and peers found through the store
//! ([`discovery`]).
//!
//! These call the OS, the cloud and the store, and nothing of the leader,
//! the node or the command line: the command line ([`crate::cli`]) builds
//! their settings (a [`volumes::VolumeSource`], say) and hands them in.

pub mod discovery;
pub mod hosts;
pub mod pki;
pub mod statics;
pub mod volumes;
