//! The lease client: one state machine per node, driven by [`LeaseClient::tick`].

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tracing::{debug, info, warn};

use crate::record::{LeaseClaim, LeaseRecord, parse_key, record_key};
use crate::{Error, LeaseConfig};

/// Records kept behind the current one; older ones are garbage-collected by the holder.
pub const KEEP_RECORDS: u64 = 8;
/// The holder deletes old records once at least this many have piled up (one batch: a
/// single request on S3, one per record elsewhere).
pub const GC_BATCH: usize = 32;

/// What [`LeaseClient::tick`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// We hold it; act only while now < valid_until.
    Held {
        /// Our fencing epoch.
        epoch: u64,
        /// Act only while `now < valid_until` (see [`LeaseClient::held`]).
        valid_until: Instant,
    },
    /// Someone else holds it (or held it and released it).
    Other {
        /// The node named in the current record.
        holder: String,
        /// The epoch of the current record.
        epoch: u64,
        /// True when the holder gave the lease up.
        released: bool,
    },
    /// No lease record exists.
    Free,
}

/// Our own current record, while we hold the lease.
#[derive(Debug, Clone)]
struct Ours {
    seq: u64,
    nonce: String,
    epoch: u64,
    /// `now` at the start of the last successful renewal (or acquisition).
    renewed_at: Instant,
    /// We may act while `now < valid_until`.
    valid_until: Instant,
}

/// The record we are watching as a contender.
#[derive(Debug, Clone)]
struct Observation {
    seq: u64,
    /// None for a malformed record.
    nonce: Option<String>,
    /// The record's own duration, if it parsed.
    duration: Duration,
    /// Who holds it: the record's holder when read from the store, the
    /// member that claimed it when learned from a claim; None for a
    /// malformed record.
    holder: Option<String>,
    /// `now` of the first tick that began after a previous tick had already seen the record:
    /// the record certainly existed at this instant. None until then.
    confirmed_at: Option<Instant>,
}

/// A write whose outcome we do not know (the store failed without a clear answer).
#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    nonce: String,
    epoch: u64,
    started: Instant,
    released: bool,
}

/// How a create-only write ended.
enum Written {
    /// Our record is at the key.
    Won,
    /// Somebody else's record is at the key.
    Lost(LeaseRecord),
}

/// The leader lease of one node. See the crate documentation for the protocol.
pub struct LeaseClient {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    holder: String,
    config: LeaseConfig,
    instance: u64,
    counter: u64,
    ours: Option<Ours>,
    observed: Option<Observation>,
    pending: Option<Pending>,
    highest_epoch: u64,
    /// `now` of the last tick that read the store.
    last_look: Option<Instant>,
    /// What the last tick found or did.
    last_state: Option<LeaseState>,
}

impl std::fmt::Debug for LeaseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseClient")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .field("holder", &self.holder)
            .field("config", &self.config)
            .field("ours", &self.ours)
            .field("observed", &self.observed)
            .field("pending", &self.pending)
            .field("highest_epoch", &self.highest_epoch)
            .finish()
    }
}

impl LeaseClient {
    /// A client for the lease whose records live under `prefix`, acting as `holder`.
    /// Nothing is read or written until [`LeaseClient::probe`] or [`LeaseClient::tick`].
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        holder: String,
        config: LeaseConfig,
    ) -> Self {
        // A per-process random value (std seeds RandomState from the OS), so a restarted
        // node with the same holder id never mistakes its predecessor's records for its own.
        let instance = std::collections::hash_map::RandomState::new().hash_one(&holder);
        Self {
            store,
            prefix,
            holder,
            config,
            instance,
            counter: 0,
            ours: None,
            observed: None,
            pending: None,
            highest_epoch: 0,
            last_look: None,
            last_state: None,
        }
    }

    /// Replace the random instance number that makes nonces unique (for deterministic
    /// simulations). Two live clients with the same holder id must not share it.
    pub fn with_instance(mut self, instance: u64) -> Self {
        self.instance = instance;
        self
    }

    /// The holder id this client writes into records.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The prefix the lease records live under.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// The highest epoch seen in any record or passed to [`LeaseClient::observe_epoch`].
    pub fn highest_epoch_seen(&self) -> u64 {
        self.highest_epoch
    }

    /// Pure: Some(epoch) while we hold the lease and now < valid_until.
    pub fn held(&self, now: Instant) -> Option<u64> {
        self.ours
            .as_ref()
            .filter(|o| now < o.valid_until && o.epoch >= self.highest_epoch)
            .map(|o| o.epoch)
    }

    /// Pure: the sequence number of our current record while we hold the lease (a
    /// fence names it so a node can check our epoch, see [`crate::check_epoch`]).
    pub fn held_seq(&self, now: Instant) -> Option<u64> {
        self.held(now)?;
        self.ours.as_ref().map(|o| o.seq)
    }

    /// Pure: how long we may still act (`valid_until - now`) while we hold the lease.
    /// Anything an action keeps retrying must stop by then: a change that lands after our
    /// validity can land after a successor has started to act.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.held(now)?;
        self.ours
            .as_ref()
            .map(|o| o.valid_until.saturating_duration_since(now))
    }

    /// Pure: when the holder's next renewal is due (None when not holding). A caller that
    /// keeps the lease through long actions ticks again at this instant.
    pub fn renew_at(&self) -> Option<Instant> {
        let ours = self.ours.as_ref()?;
        let at = ours
            .renewed_at
            .checked_add(self.config.renew_interval)
            .unwrap_or(ours.valid_until);
        Some(at.min(ours.valid_until))
    }

    /// Pure: our current record while we hold the lease, for the others to
    /// [`LeaseClient::note_claim`].
    pub fn claim(&self, now: Instant) -> Option<LeaseClaim> {
        self.held(now)?;
        let ours = self.ours.as_ref()?;
        Some(LeaseClaim {
            seq: ours.seq,
            nonce: ours.nonce.clone(),
            epoch: ours.epoch,
            duration_ms: u64::try_from(self.config.duration.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Member `claimant` says (through gossip) that `claim`'s record exists; we learned it
    /// at `now`, read before this call. The record existed at `now`, so it counts as seen
    /// and confirmed then (see the crate docs). Ignored while we hold the lease ourselves,
    /// and for a record older than the one we are watching. A claim is a hint, never a
    /// reset: one that names another record than the one we watch is taken only from the
    /// member that holds ours (its renewal); from anyone else it only makes the next tick
    /// look at the store, so no member can restart a contender's wait for a dead holder
    /// by claiming records of its own.
    pub fn note_claim(&mut self, claim: &LeaseClaim, claimant: &str, now: Instant) {
        // Gossip is not the store: a claimed epoch only makes the next tick look.
        if claim.epoch > self.highest_epoch {
            self.last_look = None;
        }
        if self.ours.is_some() {
            return;
        }
        match &mut self.observed {
            Some(o) if o.seq == claim.seq && o.nonce.as_deref() == Some(claim.nonce.as_str()) => {
                if o.confirmed_at.is_none() {
                    o.confirmed_at = Some(now);
                }
            }
            Some(o) if o.seq > claim.seq => {}
            Some(o) if o.holder.as_deref() != Some(claimant) => {
                debug!(
                    claimant,
                    seq = claim.seq,
                    "a lease claim from a member that does not hold the record we watch: looking at the store instead"
                );
                self.last_look = None;
            }
            _ => {
                self.observed = Some(Observation {
                    seq: claim.seq,
                    nonce: Some(claim.nonce.clone()),
                    duration: Duration::from_millis(claim.duration_ms),
                    holder: Some(claimant.to_string()),
                    confirmed_at: Some(now),
                });
            }
        }
    }

    /// Raise the highest epoch seen (from a peer or from persisted state): if it exceeds our
    /// held epoch we stop holding at once.
    pub fn observe_epoch(&mut self, epoch: u64) {
        self.note_epoch(epoch);
    }

    /// Check that the store honours create-only writes: create a probe object twice under
    /// the prefix, expect the second create to fail, delete the probe.
    pub async fn probe(&self) -> Result<(), Error> {
        let key = self.prefix.clone().join(format!(
            "probe-{}-{:016x}",
            sanitize(&self.holder),
            self.instance
        ));
        let unsupported = |detail: String| Error::PreconditionsUnsupported {
            store: self.store.to_string(),
            detail,
        };
        let create = || {
            self.store.put_opts(
                &key,
                PutPayload::from(format!("lease probe by {}", self.holder)),
                PutOptions::from(PutMode::Create),
            )
        };
        match create().await {
            // AlreadyExists: the key is unique to this client, so an earlier attempt of this
            // very call landed and its answer was lost (object_store retries).
            Ok(_)
            | Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {}
            Err(e @ object_store::Error::NotImplemented { .. }) => {
                return Err(unsupported(format!("a create-only put failed: {e}")));
            }
            Err(source) => {
                return Err(Error::Store {
                    op: "put",
                    key: key.to_string(),
                    source,
                });
            }
        }
        let second = create().await;
        if let Err(e) = self.store.delete(&key).await {
            warn!(key = %key, error = %e, "could not delete the lease probe object");
        }
        match second {
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                debug!(store = %self.store, key = %key, "store honours create-only writes");
                Ok(())
            }
            Ok(_) => Err(unsupported(
                "a second create-only put of the same key succeeded instead of failing with \
                 AlreadyExists"
                    .to_string(),
            )),
            Err(e @ object_store::Error::NotImplemented { .. }) => {
                Err(unsupported(format!("a create-only put failed: {e}")))
            }
            Err(source) => Err(Error::Store {
                op: "put",
                key: key.to_string(),
                source,
            }),
        }
    }

    /// One step. `want` = this node is the candidate and wants the lease. `now` is read by the
    /// caller from its monotonic clock BEFORE calling.
    ///
    /// want && free/expired/released -> try to take; want && held -> renew if due;
    /// !want && held -> release. On a store error while holding: returns the error, but keeps
    /// the held state (validity is still judged by `valid_until`).
    ///
    /// What it costs: a holder's renewal (or release) is one create-only put, with no read
    /// (the next record can only be `seq + 1`: if another node wrote it, the put fails and we
    /// read it). Between renewals a holder reads nothing, except one list every
    /// `check_interval` (which also collects old records in batches). A contender that wants
    /// the lease lists and reads the current record at every tick; a client that does not want
    /// it looks every `check_interval` and otherwise answers with what it saw last.
    pub async fn tick(&mut self, now: Instant, want: bool) -> Result<LeaseState, Error> {
        self.config.validate_relaxed()?;
        let look_due = self.last_look.is_none_or(|at| {
            at.checked_add(self.config.check_interval)
                .is_none_or(|due| now >= due)
        });
        let state = self.step(now, want, look_due).await?;
        self.last_state = Some(state.clone());
        Ok(state)
    }

    async fn step(
        &mut self,
        now: Instant,
        want: bool,
        look_due: bool,
    ) -> Result<LeaseState, Error> {
        if self.pending.is_none() {
            match (self.ours.clone(), want) {
                (Some(ours), true) if !look_due && self.renewal_due(&ours, now) => {
                    return self
                        .write(next_seq(ours.seq, &self.prefix)?, ours.epoch, false, now)
                        .await;
                }
                (Some(ours), true) if !look_due => {
                    return Ok(LeaseState::Held {
                        epoch: ours.epoch,
                        valid_until: ours.valid_until,
                    });
                }
                (Some(ours), false) => {
                    self.stop_acting(now);
                    return self
                        .write(next_seq(ours.seq, &self.prefix)?, ours.epoch, true, now)
                        .await;
                }
                (None, false) if !look_due => {
                    if let Some(state @ (LeaseState::Other { .. } | LeaseState::Free)) =
                        &self.last_state
                    {
                        return Ok(state.clone());
                    }
                }
                _ => {}
            }
        }
        self.last_look = Some(now);
        self.look(now, want).await
    }

    fn renewal_due(&self, ours: &Ours, now: Instant) -> bool {
        now >= ours.valid_until
            || ours
                .renewed_at
                .checked_add(self.config.renew_interval)
                .is_none_or(|at| now >= at)
    }

    /// A tick that reads the store: list, read the current record unless it is our own, act.
    async fn look(&mut self, now: Instant, want: bool) -> Result<LeaseState, Error> {
        let listing = self.list().await?;
        let Some(&(seq, ref key)) = listing.last() else {
            return self.on_empty(now, want).await;
        };
        // Our own record is still the current one: nothing to read (records never change).
        if let Some(ours) = self.ours.clone()
            && ours.seq == seq
            && self.pending.is_none()
        {
            let state = match want {
                true if self.renewal_due(&ours, now) => {
                    self.write(next_seq(ours.seq, &self.prefix)?, ours.epoch, false, now)
                        .await?
                }
                true => LeaseState::Held {
                    epoch: ours.epoch,
                    valid_until: ours.valid_until,
                },
                false => {
                    self.stop_acting(now);
                    self.write(next_seq(ours.seq, &self.prefix)?, ours.epoch, true, now)
                        .await?
                }
            };
            self.collect_garbage(&listing).await;
            return Ok(state);
        }
        let record = match self.read(key, seq).await {
            Ok(record) => record,
            Err(e @ Error::Malformed { .. }) => {
                self.on_malformed(seq);
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.note_epoch(record.epoch);
        self.resolve_pending(&record);

        if let Some(ours) = &self.ours
            && (ours.seq != record.seq || ours.nonce != record.nonce)
        {
            info!(
                holder = %self.holder, epoch = ours.epoch, new_holder = %record.holder,
                new_epoch = record.epoch, seq = record.seq,
                "lost the lease: another record superseded ours"
            );
            self.ours = None;
        }
        self.observe(&record, now);

        let state = match (self.ours.clone(), want) {
            (Some(ours), true) => {
                if self.renewal_due(&ours, now) {
                    self.write(next_seq(ours.seq, &self.prefix)?, ours.epoch, false, now)
                        .await?
                } else {
                    LeaseState::Held {
                        epoch: ours.epoch,
                        valid_until: ours.valid_until,
                    }
                }
            }
            (Some(ours), false) => {
                self.stop_acting(now);
                self.write(next_seq(ours.seq, &self.prefix)?, ours.epoch, true, now)
                    .await?
            }
            (None, true) if record.released || self.takeover_due(now) => {
                let epoch = next_epoch(record.epoch.max(self.highest_epoch), key.as_ref())?;
                info!(
                    holder = %self.holder, previous_holder = %record.holder,
                    previous_epoch = record.epoch, released = record.released, epoch,
                    "taking over the lease"
                );
                self.write(next_seq(record.seq, &self.prefix)?, epoch, false, now)
                    .await?
            }
            (None, _) => LeaseState::Other {
                holder: record.holder,
                epoch: record.epoch,
                released: record.released,
            },
        };
        self.collect_garbage(&listing).await;
        Ok(state)
    }

    /// Release if held (best effort, one write). Afterwards this client is not the holder,
    /// even when the write fails (the record then simply expires).
    pub async fn release(&mut self, now: Instant) -> Result<(), Error> {
        let Some(ours) = self.ours.clone() else {
            return Ok(());
        };
        self.stop_acting(now);
        let result = self
            .write(next_seq(ours.seq, &self.prefix)?, ours.epoch, true, now)
            .await;
        self.ours = None;
        result.map(|_| ())
    }

    fn note_epoch(&mut self, epoch: u64) {
        if epoch > self.highest_epoch {
            self.highest_epoch = epoch;
        }
        if let Some(ours) = &self.ours
            && ours.epoch < self.highest_epoch
        {
            info!(
                holder = %self.holder, epoch = ours.epoch, higher_epoch = self.highest_epoch,
                "lost the lease: a higher epoch exists"
            );
            self.ours = None;
        }
    }

    /// Stop acting at once (before a release write), but remember the record so that a
    /// failed release can be retried or the lease renewed again.
    fn stop_acting(&mut self, now: Instant) {
        if let Some(ours) = &mut self.ours
            && ours.valid_until > now
        {
            ours.valid_until = now;
        }
    }

    async fn on_empty(&mut self, now: Instant, want: bool) -> Result<LeaseState, Error> {
        if self.ours.take().is_some() {
            warn!(holder = %self.holder, prefix = %self.prefix,
                "our lease record vanished (someone deleted the records): not holding");
        }
        self.pending = None;
        self.observed = None;
        if !want {
            return Ok(LeaseState::Free);
        }
        let epoch = next_epoch(self.highest_epoch, self.prefix.as_ref())?;
        info!(holder = %self.holder, epoch, "acquiring the free lease");
        self.write(1, epoch, false, now).await
    }

    fn on_malformed(&mut self, seq: u64) {
        if self.ours.take().is_some() {
            warn!(holder = %self.holder, seq, "lost the lease: the current record is malformed");
        }
        self.pending = None;
        let same = self
            .observed
            .as_ref()
            .is_some_and(|o| o.seq == seq && o.nonce.is_none());
        if !same {
            self.observed = Some(Observation {
                seq,
                nonce: None,
                duration: Duration::ZERO,
                holder: None,
                confirmed_at: None,
            });
        }
    }

    /// A write of ours had no clear answer: if it landed, adopt it.
    fn resolve_pending(&mut self, record: &LeaseRecord) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if p.seq != record.seq || p.nonce != record.nonce {
            if record.seq < p.seq {
                debug!(holder = %self.holder, seq = p.seq, "our unanswered write did not land");
            }
            return;
        }
        info!(holder = %self.holder, seq = p.seq, epoch = p.epoch, released = p.released,
            "our unanswered write landed");
        if p.released {
            self.ours = None;
            return;
        }
        let valid_until = self.valid_from(p.started);
        self.ours = Some(Ours {
            seq: p.seq,
            nonce: p.nonce,
            epoch: p.epoch,
            renewed_at: p.started,
            valid_until,
        });
    }

    fn observe(&mut self, record: &LeaseRecord, now: Instant) {
        let same = self
            .observed
            .as_ref()
            .is_some_and(|o| o.seq == record.seq && o.nonce.as_deref() == Some(&record.nonce));
        if same {
            if let Some(o) = &mut self.observed
                && o.confirmed_at.is_none()
            {
                o.confirmed_at = Some(now);
            }
        } else {
            self.observed = Some(Observation {
                seq: record.seq,
                nonce: Some(record.nonce.clone()),
                duration: Duration::from_millis(record.duration_ms),
                holder: Some(record.holder.clone()),
                confirmed_at: None,
            });
        }
    }

    /// True once the observed record has been unchanged for `duration + margin` on our clock.
    fn takeover_due(&self, now: Instant) -> bool {
        let Some(o) = &self.observed else {
            return false;
        };
        let (Some(_), Some(confirmed)) = (&o.nonce, o.confirmed_at) else {
            return false;
        };
        let wait = self.config.duration.max(o.duration) + self.config.margin;
        confirmed.checked_add(wait).is_some_and(|at| now >= at)
    }

    fn valid_from(&self, start: Instant) -> Instant {
        start
            .checked_add(self.config.duration.saturating_sub(self.config.margin))
            .unwrap_or(start)
    }

    fn next_nonce(&mut self) -> String {
        self.counter += 1;
        format!("{}-{:016x}-{}", self.holder, self.instance, self.counter)
    }

    /// All records under the prefix, by sequence number.
    async fn list(&self) -> Result<Vec<(u64, Path)>, Error> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|source| Error::Store {
                op: "list",
                key: self.prefix.to_string(),
                source,
            })?;
        let mut records: Vec<(u64, Path)> = metas
            .into_iter()
            .filter_map(|m| parse_key(&self.prefix, &m.location).map(|seq| (seq, m.location)))
            .collect();
        records.sort_by_key(|(seq, _)| *seq);
        Ok(records)
    }

    async fn read(&self, key: &Path, seq: u64) -> Result<LeaseRecord, Error> {
        crate::verify::read_record(self.store.as_ref(), &self.prefix, seq)
            .await?
            .ok_or_else(|| Error::Store {
                op: "get",
                key: key.to_string(),
                source: object_store::Error::NotFound {
                    path: key.to_string(),
                    source: "the record vanished between listing and reading".into(),
                },
            })
    }

    /// Create record `seq` and update our state from the outcome.
    async fn write(
        &mut self,
        seq: u64,
        epoch: u64,
        released: bool,
        now: Instant,
    ) -> Result<LeaseState, Error> {
        let key = record_key(&self.prefix, seq);
        let record = LeaseRecord {
            holder: self.holder.clone(),
            epoch,
            seq,
            nonce: self.next_nonce(),
            duration_ms: u64::try_from(self.config.duration.as_millis()).unwrap_or(u64::MAX),
            released,
        };
        let pending = Pending {
            seq,
            nonce: record.nonce.clone(),
            epoch,
            started: now,
            released,
        };
        // Until the put answers, its outcome is unknown: if the caller drops this future
        // (a timeout), the next tick reads the record and adopts it if it landed.
        self.pending = Some(pending.clone());
        let put = self
            .store
            .put_opts(
                &key,
                PutPayload::from(record.to_json()),
                PutOptions::from(PutMode::Create),
            )
            .await;
        let outcome = match put {
            Ok(_) => Written::Won,
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                // Somebody was first, or object_store retried our own write after its answer
                // was lost: look before deciding.
                match self.read(&key, seq).await {
                    Ok(found) if found.nonce == record.nonce => {
                        info!(key = %key, "our write landed although its answer was lost");
                        Written::Won
                    }
                    Ok(found) => Written::Lost(found),
                    Err(e) => {
                        self.pending = Some(pending);
                        return Err(e);
                    }
                }
            }
            Err(e @ object_store::Error::NotImplemented { .. }) => {
                return Err(Error::PreconditionsUnsupported {
                    store: self.store.to_string(),
                    detail: format!("a create-only put failed: {e}"),
                });
            }
            Err(source) => {
                warn!(key = %key, error = %source, "lease write failed; outcome unknown");
                self.pending = Some(pending);
                return Err(Error::Store {
                    op: "put",
                    key: key.to_string(),
                    source,
                });
            }
        };
        self.pending = None;
        match outcome {
            Written::Won => {
                self.note_epoch(epoch);
                self.observed = None;
                if released {
                    info!(holder = %self.holder, epoch, seq, "released the lease");
                    self.ours = None;
                    Ok(LeaseState::Other {
                        holder: self.holder.clone(),
                        epoch,
                        released: true,
                    })
                } else {
                    let valid_until = self.valid_from(now);
                    debug!(holder = %self.holder, epoch, seq, "lease written");
                    self.ours = Some(Ours {
                        seq,
                        nonce: record.nonce,
                        epoch,
                        renewed_at: now,
                        valid_until,
                    });
                    Ok(LeaseState::Held { epoch, valid_until })
                }
            }
            Written::Lost(found) => {
                info!(holder = %self.holder, seq, winner = %found.holder, epoch = found.epoch,
                    "another node wrote the next lease record first");
                self.ours = None;
                self.note_epoch(found.epoch);
                self.observe(&found, now);
                Ok(LeaseState::Other {
                    holder: found.holder,
                    epoch: found.epoch,
                    released: found.released,
                })
            }
        }
    }

    /// As holder, delete records older than the last [`KEEP_RECORDS`] once a batch has piled
    /// up. Best effort: failures are logged.
    async fn collect_garbage(&self, listing: &[(u64, Path)]) {
        let Some(ours) = &self.ours else {
            return;
        };
        let stale: Vec<Path> = listing
            .iter()
            .filter(|(seq, _)| seq.saturating_add(KEEP_RECORDS) < ours.seq)
            .map(|(_, key)| key.clone())
            .collect();
        if stale.len() < GC_BATCH {
            return;
        }
        let count = stale.len();
        let results: Vec<_> = self
            .store
            .delete_stream(futures::stream::iter(stale.into_iter().map(Ok)).boxed())
            .collect()
            .await;
        let mut failed = 0usize;
        for result in results {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    failed += 1;
                    warn!(prefix = %self.prefix, error = %e, "could not delete an old lease record");
                }
            }
        }
        debug!(prefix = %self.prefix, count, failed, "garbage-collected old lease records");
    }
}

/// The epoch after `epoch`; at `u64::MAX` an error naming `key`, never a wrap.
fn next_epoch(epoch: u64, key: &str) -> Result<u64, Error> {
    epoch.checked_add(1).ok_or_else(|| Error::Malformed {
        key: key.to_string(),
        reason: format!("epoch {epoch} cannot grow"),
    })
}

/// The record after `seq`; at `u64::MAX` an error, never a wrap.
fn next_seq(seq: u64, prefix: &Path) -> Result<u64, Error> {
    seq.checked_add(1).ok_or_else(|| Error::Malformed {
        key: record_key(prefix, seq).to_string(),
        reason: "the record sequence cannot grow".to_string(),
    })
}

/// A holder id made safe for one path segment.
fn sanitize(holder: &str) -> String {
    holder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
