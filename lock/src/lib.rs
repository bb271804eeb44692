//! The leader lease, kept in an object store with create-only writes.
//!
//! # Protocol
//!
//! The lease is a sequence of records under a prefix, `<prefix>/<seq>` with `seq` as 20
//! zero-padded digits, each a JSON [`LeaseRecord`]
//! (`holder`, `epoch`, `seq`, `nonce`, `durationMs`, `released`). Every record is written
//! with `PutMode::Create` (If-None-Match on S3, generation 0 on GCS, an exclusive link on a
//! local file system), so of all nodes trying to create record N+1 exactly one succeeds.
//! The record with the highest `seq` is the state of the lease; a [`LeaseClient::tick`]
//! that looks reads it with one LIST and one GET (see its documentation for when a tick
//! looks: a holder renews with one put and no read, and lists only every `check_interval`).
//!
//! * **Acquire**: no record at all: create seq 1 (epoch one above any epoch seen).
//! * **Renew**: the holder creates N+1 with the same epoch every `renew_interval`.
//! * **Take over**: a contender that has seen the same record (same seq and nonce) unchanged
//!   for `max(duration, record's durationMs) + margin` on its own clock creates N+1 with a
//!   higher epoch. A record marked `released` may be taken over at once.
//! * **Release**: the holder stops acting, then creates N+1 with `released: true`.
//! * **Lost answers**: object_store retries puts, so a create that landed but whose answer
//!   was lost comes back as AlreadyExists. The writer then reads N+1 and compares the nonce
//!   (unique per write) before deciding it lost. A write that fails without any answer is
//!   remembered and adopted if the next tick finds it in place.
//! * **GC**: the holder deletes records more than [`KEEP_RECORDS`] behind the current one,
//!   in batches of [`GC_BATCH`] when its periodic listing finds that many, best effort.
//! * **Claims**: after each successful write the holder may tell the others (gossip)
//!   which record it wrote ([`LeaseClient::claim`]); a contender that receives the claim
//!   at `now` counts the record as seen and confirmed at `now`
//!   ([`LeaseClient::note_claim`]): the record existed before the claim was sent. Its
//!   takeover still lists and reads the store first and starts over if the current record
//!   is not the claimed one, so a stale or forged claim (it would need the unpredictable
//!   nonce) can delay a takeover but never hasten one. A claim's epoch is only a hint: it
//!   makes the next tick read the store, and only epochs read from the store raise the
//!   highest epoch seen, so a forged claim cannot stop a holder.
//! * **Fences**: a node asked to act at an epoch it has not seen checks it with
//!   [`check_epoch`] (a record naming that holder at that epoch must exist).
//! * **Probe**: [`LeaseClient::probe`] creates an object twice and requires the second
//!   create to fail, so leader election never runs on a store without conditional writes.
//!
//! # Why it is safe
//!
//! Safety rule 1: no node compares its clock with another's; each judges time only on its
//! own monotonic clock, from `now` values its caller reads *before* each call. The holder
//! acts until `s + duration - margin`, where `s` is the `now` of the call that started its
//! last successful renewal, so `s` precedes the moment record N was stored. A contender
//! counts from `c`, the `now` of a tick that started after an earlier tick of its own had
//! already seen record N; so record N existed at `c`, and `c` follows `s`. The contender
//! creates N+1 no earlier than `c + duration + margin`, which is `2 * margin` after the
//! holder stopped acting; the margin absorbs differences in clock rates. If the holder renews
//! in time, its N+1 exists and the contender's create fails; if the contender created N+1
//! first, the holder's renewal fails and it sees the new record.
//!
//! Safety rule 2: every takeover writes an epoch above the epoch of the record it replaces
//! and above every epoch the client has seen; a client that sees a higher epoch (in a record
//! or through [`LeaseClient::observe_epoch`], whose callers pass only epochs the store
//! confirmed) stops holding at once. An epoch that cannot grow (`u64::MAX`) is an error,
//! never a wrap-around. A malformed record is
//! treated as held by an unknown node and never taken over automatically.
//!
//! The client never reads a clock and never sleeps (enforced by this crate's clippy.toml).

mod client;
mod config;
mod error;
mod record;
mod verify;

pub use client::{GC_BATCH, KEEP_RECORDS, LeaseClient, LeaseState};
pub use config::{CHECK_INTERVAL, LeaseConfig, MIN_RENEW_INTERVAL};
pub use error::{Error, store_error_is_retryable};
pub use record::{LeaseClaim, LeaseRecord, record_key};
pub use verify::{EpochCheck, MAX_RECORD_SIZE, check_epoch};
