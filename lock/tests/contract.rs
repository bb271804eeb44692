//! The lease contract, run on every backend: InMemory, LocalFileSystem and S3 (moto).
//!
//! Time is virtual: `Instant` base plus offsets; nothing here waits for the lease.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use lock::{Error, GC_BATCH, KEEP_RECORDS, LeaseClient, LeaseConfig, LeaseState, record_key};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

// ---------------------------------------------------------------- helpers

struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Clock(Instant::now())
    }
    fn at(&self, secs: f64) -> Instant {
        self.0 + Duration::from_secs_f64(secs)
    }
}

fn client(store: &Arc<dyn ObjectStore>, prefix: &str, holder: &str) -> LeaseClient {
    LeaseClient::new(
        store.clone(),
        Path::from(prefix),
        holder.to_string(),
        // The timings below are written for a 10 s lease with a 2 s margin.
        LeaseConfig::for_tests(
            Duration::from_secs(10),
            Duration::from_secs(2),
            Duration::from_secs(2),
        ),
    )
}

fn other(holder: &str, epoch: u64, released: bool) -> LeaseState {
    LeaseState::Other {
        holder: holder.to_string(),
        epoch,
        released,
    }
}

fn held_epoch(state: &LeaseState) -> Option<u64> {
    match state {
        LeaseState::Held { epoch, .. } => Some(*epoch),
        _ => None,
    }
}

async fn record_count(store: &Arc<dyn ObjectStore>, prefix: &str) -> usize {
    let metas: Vec<ObjectMeta> = store
        .list(Some(&Path::from(prefix)))
        .try_collect()
        .await
        .unwrap();
    metas.len()
}

// ---------------------------------------------------------------- fault wrappers

/// What a [`Faulty`] store does to create-only puts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Applies the put, then answers AlreadyExists (object_store retried a landed write).
    LoseAnswer,
    /// Applies the put, then answers with a generic error (the outcome is unknown).
    NoAnswer,
    /// Ignores PutMode and always overwrites: a store without conditional writes.
    IgnorePutMode,
    /// No fault: only count the requests.
    Pass,
}

/// Delegates to an inner store, injecting one kind of fault into puts.
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    fault: Fault,
    /// For LoseAnswer/NoAnswer: inject on the next create only.
    armed: AtomicBool,
    injected: AtomicUsize,
    /// Requests by kind: put, get, list, deleted object.
    counts: [AtomicUsize; 4],
}

impl Faulty {
    fn new(inner: Arc<dyn ObjectStore>, fault: Fault) -> Arc<Self> {
        Arc::new(Self {
            inner,
            fault,
            armed: AtomicBool::new(false),
            injected: AtomicUsize::new(0),
            counts: Default::default(),
        })
    }
    fn count(&self, kind: usize) {
        self.counts[kind].fetch_add(1, Ordering::SeqCst);
    }
    /// (puts, gets, lists, deleted objects) so far.
    fn counts(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|k| self.counts[k].load(Ordering::SeqCst))
    }
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({:?}, {})", self.fault, self.inner)
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.count(0);
        match self.fault {
            Fault::Pass => self.inner.put_opts(location, payload, opts).await,
            Fault::IgnorePutMode => {
                opts.mode = PutMode::Overwrite;
                self.inner.put_opts(location, payload, opts).await
            }
            Fault::LoseAnswer | Fault::NoAnswer => {
                let inject =
                    opts.mode == PutMode::Create && self.armed.swap(false, Ordering::SeqCst);
                let result = self.inner.put_opts(location, payload, opts).await?;
                if !inject {
                    return Ok(result);
                }
                self.injected.fetch_add(1, Ordering::SeqCst);
                let source = "injected fault: the write landed but its answer was lost".into();
                Err(if self.fault == Fault::LoseAnswer {
                    object_store::Error::AlreadyExists {
                        path: location.to_string(),
                        source,
                    }
                } else {
                    object_store::Error::Generic {
                        store: "Faulty",
                        source,
                    }
                })
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.count(1);
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.count(3);
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.count(2);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

// ---------------------------------------------------------------- the contract

/// Runs every case against `store`, each under its own prefix.
async fn contract(store: Arc<dyn ObjectStore>) {
    probe_passes(store.clone(), "c/probe").await;
    probe_refuses_store_without_preconditions(store.clone(), "c/probe-bad").await;
    takeover_only_after_duration_plus_margin(store.clone(), "c/takeover").await;
    renewal_keeps_epoch_and_moves_validity(store.clone(), "c/renew").await;
    timely_renewals_prevent_takeover(store.clone(), "c/no-takeover").await;
    release_allows_immediate_takeover(store.clone(), "c/release").await;
    racing_contenders_one_wins(store.clone(), "c/race").await;
    lost_answer_still_wins(store.clone(), "c/lost-answer").await;
    unanswered_write_is_adopted(store.clone(), "c/no-answer").await;
    malformed_record_is_held_by_unknown(store.clone(), "c/malformed").await;
    higher_epoch_stops_holding(store.clone(), "c/epoch").await;
    gc_keeps_records_bounded(store.clone(), "c/gc").await;
    quiet_between_checks(store.clone(), "c/quiet").await;
    claims_confirm_a_sighting(store.clone(), "c/claims").await;
    claims_of_others_do_not_restart_a_wait(store.clone(), "c/claims-others").await;
}

async fn probe_passes(store: Arc<dyn ObjectStore>, prefix: &str) {
    let a = client(&store, prefix, "node-a");
    a.probe()
        .await
        .expect("probe on a store with conditional writes");
    assert_eq!(
        record_count(&store, prefix).await,
        0,
        "probe object left behind"
    );
}

async fn probe_refuses_store_without_preconditions(store: Arc<dyn ObjectStore>, prefix: &str) {
    let bad: Arc<dyn ObjectStore> = Faulty::new(store.clone(), Fault::IgnorePutMode);
    let a = client(&bad, prefix, "node-a");
    let err = a
        .probe()
        .await
        .expect_err("probe must refuse an overwriting store");
    assert!(
        matches!(err, Error::PreconditionsUnsupported { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("Faulty(IgnorePutMode"),
        "names the store: {text}"
    );
    assert!(text.contains("leader election cannot run"), "{text}");
    assert!(!err.is_retryable());
    assert_eq!(
        record_count(&store, prefix).await,
        0,
        "probe object left behind"
    );
}

async fn takeover_only_after_duration_plus_margin(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let mut a = client(&store, prefix, "node-a");
    let mut b = client(&store, prefix, "node-b");

    let state = a.tick(t.at(0.0), true).await.unwrap();
    assert_eq!(
        state,
        LeaseState::Held {
            epoch: 1,
            valid_until: t.at(8.0)
        },
        "first acquirer gets epoch 1, valid for duration - margin"
    );
    assert_eq!(
        b.tick(t.at(0.0), true).await.unwrap(),
        other("node-a", 1, false)
    );

    // A stops renewing (partitioned). Its validity ends on its own clock, without IO.
    assert_eq!(a.held(t.at(7.9)), Some(1));
    assert_eq!(a.held(t.at(8.0)), None);
    // What is left of it bounds an action's retries.
    assert_eq!(a.remaining(t.at(5.0)), Some(Duration::from_secs(3)));
    assert_eq!(a.remaining(t.at(8.0)), None);

    // B confirms the record at its tick of t=1 (a tick that began after one that saw it)
    // and may take over only at 1 + duration + margin = 13.
    for s in 1..=12 {
        let state = b.tick(t.at(s as f64), true).await.unwrap();
        assert_eq!(
            state,
            other("node-a", 1, false),
            "takeover too early at t={s}"
        );
    }
    assert_eq!(
        b.tick(t.at(12.999), true).await.unwrap(),
        other("node-a", 1, false)
    );
    let state = b.tick(t.at(13.0), true).await.unwrap();
    assert_eq!(
        state,
        LeaseState::Held {
            epoch: 2,
            valid_until: t.at(21.0)
        }
    );
    assert_eq!(b.held(t.at(13.0)), Some(2));

    // The old holder comes back: it sees it lost, and the new epoch.
    let state = a.tick(t.at(14.0), true).await.unwrap();
    assert_eq!(state, other("node-b", 2, false));
    assert_eq!(a.held(t.at(14.0)), None);
    assert_eq!(a.highest_epoch_seen(), 2);
}

async fn renewal_keeps_epoch_and_moves_validity(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let mut a = client(&store, prefix, "node-a");
    assert_eq!(held_epoch(&a.tick(t.at(0.0), true).await.unwrap()), Some(1));
    // Not due yet: no write, validity unchanged.
    assert_eq!(
        a.tick(t.at(1.0), true).await.unwrap(),
        LeaseState::Held {
            epoch: 1,
            valid_until: t.at(8.0)
        }
    );
    assert_eq!(record_count(&store, prefix).await, 1);
    // Due: renewal from the `now` before the IO.
    assert_eq!(
        a.tick(t.at(2.0), true).await.unwrap(),
        LeaseState::Held {
            epoch: 1,
            valid_until: t.at(10.0)
        }
    );
    assert_eq!(record_count(&store, prefix).await, 2);
    assert_eq!(a.held(t.at(9.999)), Some(1));
    assert_eq!(a.held(t.at(10.0)), None, "expiry is judged without IO");

    // Renewing after our own validity ran out (nobody took over) keeps the epoch.
    assert_eq!(
        a.tick(t.at(11.0), true).await.unwrap(),
        LeaseState::Held {
            epoch: 1,
            valid_until: t.at(19.0)
        }
    );
    assert_eq!(a.highest_epoch_seen(), 1);
}

async fn timely_renewals_prevent_takeover(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let mut a = client(&store, prefix, "node-a");
    let mut b = client(&store, prefix, "node-b");
    assert_eq!(held_epoch(&a.tick(t.at(0.0), true).await.unwrap()), Some(1));
    for s in 0..=40u32 {
        let now = t.at(f64::from(s));
        if s % 2 == 0 {
            let state = a.tick(now, true).await.unwrap();
            assert_eq!(
                held_epoch(&state),
                Some(1),
                "holder lost the lease at t={s}"
            );
        }
        assert_eq!(
            b.tick(now, true).await.unwrap(),
            other("node-a", 1, false),
            "t={s}"
        );
        assert_eq!(a.held(now), Some(1), "t={s}");
    }
}

async fn release_allows_immediate_takeover(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let mut a = client(&store, prefix, "node-a");
    let mut b = client(&store, prefix, "node-b");
    assert_eq!(held_epoch(&a.tick(t.at(0.0), true).await.unwrap()), Some(1));
    assert_eq!(
        b.tick(t.at(0.0), true).await.unwrap(),
        other("node-a", 1, false)
    );

    a.release(t.at(1.0)).await.unwrap();
    assert_eq!(a.held(t.at(1.0)), None, "not holder after release");
    a.release(t.at(1.0)).await.unwrap(); // releasing again is a no-op

    assert_eq!(held_epoch(&b.tick(t.at(1.0), true).await.unwrap()), Some(2));

    // Release through tick(want = false), then A takes it back at once with epoch 3.
    assert_eq!(
        b.tick(t.at(2.0), false).await.unwrap(),
        other("node-b", 2, true)
    );
    assert_eq!(b.held(t.at(2.0)), None);
    assert_eq!(held_epoch(&a.tick(t.at(2.0), true).await.unwrap()), Some(3));
    assert_eq!(
        b.tick(t.at(2.5), false).await.unwrap(),
        other("node-a", 3, false)
    );
    assert_eq!(b.highest_epoch_seen(), 3);
}

async fn racing_contenders_one_wins(store: Arc<dyn ObjectStore>, prefix: &str) {
    const N: usize = 8;
    let t = Clock::new();
    let now = t.at(0.0);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let mut c = client(&store, prefix, &format!("node-{i}"));
        tasks.spawn(async move {
            let state = c.tick(now, true).await;
            (c, state)
        });
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (c, state) = joined.expect("task");
        match state.expect("tick") {
            LeaseState::Held { epoch, .. } => winners.push((c.holder().to_string(), epoch)),
            LeaseState::Other { holder, epoch, .. } => losers.push((holder, epoch)),
            LeaseState::Free => panic!("a contender saw Free after the race"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner, got {winners:?}");
    let (winner, epoch) = winners.remove(0);
    assert_eq!(epoch, 1);
    for (holder, epoch) in losers {
        assert_eq!((holder.as_str(), epoch), (winner.as_str(), 1));
    }
}

async fn lost_answer_still_wins(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let faulty = Faulty::new(store.clone(), Fault::LoseAnswer);
    let wrapped: Arc<dyn ObjectStore> = faulty.clone();
    let mut a = client(&wrapped, prefix, "node-a");
    let mut b = client(&store, prefix, "node-b");

    faulty.arm();
    let state = a.tick(t.at(0.0), true).await.unwrap();
    assert_eq!(
        faulty.injected.load(Ordering::SeqCst),
        1,
        "fault was injected"
    );
    assert_eq!(
        state,
        LeaseState::Held {
            epoch: 1,
            valid_until: t.at(8.0)
        }
    );
    assert_eq!(
        b.tick(t.at(0.0), true).await.unwrap(),
        other("node-a", 1, false)
    );

    // A renewal whose answer is lost is still a renewal.
    faulty.arm();
    let state = a.tick(t.at(2.0), true).await.unwrap();
    assert_eq!(faulty.injected.load(Ordering::SeqCst), 2);
    assert_eq!(
        state,
        LeaseState::Held {
            epoch: 1,
            valid_until: t.at(10.0)
        }
    );
}

async fn unanswered_write_is_adopted(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let faulty = Faulty::new(store.clone(), Fault::NoAnswer);
    let wrapped: Arc<dyn ObjectStore> = faulty.clone();
    let mut a = client(&wrapped, prefix, "node-a");

    faulty.arm();
    let err = a.tick(t.at(0.0), true).await.expect_err("no answer");
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(a.held(t.at(0.0)), None, "no answer, no lease");
    // The next tick finds our record and adopts it, valid from the start of the write.
    assert_eq!(
        a.tick(t.at(1.0), true).await.unwrap(),
        LeaseState::Held {
            epoch: 1,
            valid_until: t.at(8.0)
        }
    );
    // A failed renewal keeps the held state, judged by valid_until.
    faulty.arm();
    a.tick(t.at(2.0), true).await.expect_err("no answer");
    assert_eq!(a.held(t.at(2.0)), Some(1));
    assert_eq!(
        a.tick(t.at(3.0), true).await.unwrap(),
        LeaseState::Held {
            epoch: 1,
            valid_until: t.at(10.0)
        }
    );
    // A release without an answer: we stop acting at once; the next tick finds it landed.
    faulty.arm();
    a.tick(t.at(4.0), false).await.expect_err("no answer");
    assert_eq!(
        a.held(t.at(4.0)),
        None,
        "stopped acting before the release write"
    );
    assert_eq!(
        a.tick(t.at(5.0), false).await.unwrap(),
        other("node-a", 1, true)
    );
    assert_eq!(a.held(t.at(5.0)), None);
}

async fn malformed_record_is_held_by_unknown(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let key = record_key(&Path::from(prefix), 1);
    store
        .put(&key, PutPayload::from_static(b"{\"holder\": 42"))
        .await
        .unwrap();
    let mut a = client(&store, prefix, "node-a");
    for s in [0.0, 1.0, 100.0, 1000.0] {
        let err = a.tick(t.at(s), true).await.expect_err("malformed record");
        assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
        assert!(
            err.to_string().contains(key.as_ref()),
            "names the key: {err}"
        );
        assert!(!err.is_retryable());
        assert_eq!(a.held(t.at(s)), None, "never taken over");
    }
    assert_eq!(
        record_count(&store, prefix).await,
        1,
        "nothing written over it"
    );

    // A body whose seq disagrees with its key is malformed too.
    let key2 = record_key(&Path::from(prefix), 2);
    let body =
        br#"{"holder":"x","epoch":1,"seq":7,"nonce":"x-1","durationMs":10000,"released":false}"#;
    store
        .put(&key2, PutPayload::from_static(body))
        .await
        .unwrap();
    let err = a.tick(t.at(2000.0), true).await.expect_err("seq mismatch");
    assert!(err.to_string().contains("seq 7"), "{err}");
}

async fn higher_epoch_stops_holding(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let mut a = client(&store, prefix, "node-a");
    assert_eq!(held_epoch(&a.tick(t.at(0.0), true).await.unwrap()), Some(1));
    a.observe_epoch(5);
    assert_eq!(a.held(t.at(0.5)), None, "a higher epoch stops us at once");
    assert_eq!(a.highest_epoch_seen(), 5);
    // Our own old record now counts as someone else's: wait it out, then take over above 5.
    assert_eq!(
        a.tick(t.at(1.0), true).await.unwrap(),
        other("node-a", 1, false)
    );
    assert_eq!(
        a.tick(t.at(2.0), true).await.unwrap(),
        other("node-a", 1, false)
    );
    assert_eq!(
        a.tick(t.at(13.9), true).await.unwrap(),
        other("node-a", 1, false)
    );
    assert_eq!(
        held_epoch(&a.tick(t.at(14.0), true).await.unwrap()),
        Some(6)
    );
    a.observe_epoch(3);
    assert_eq!(a.held(t.at(14.0)), Some(6), "a lower epoch changes nothing");
}

async fn gc_keeps_records_bounded(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let mut a = client(&store, prefix, "node-a");
    let mut max_seen = 0;
    for k in 0..60u32 {
        let state = a.tick(t.at(f64::from(2 * k)), true).await.unwrap();
        assert_eq!(held_epoch(&state), Some(1), "renewal {k}");
        max_seen = max_seen.max(record_count(&store, prefix).await);
    }
    assert!(
        max_seen <= KEEP_RECORDS as usize + GC_BATCH + 1,
        "{max_seen} records after 60 renewals"
    );
    // The newest records survive and the lease still reads correctly.
    let mut b = client(&store, prefix, "node-b");
    assert_eq!(
        b.tick(t.at(120.0), true).await.unwrap(),
        other("node-a", 1, false)
    );
    let newest = record_key(&Path::from(prefix), 60);
    store.head(&newest).await.expect("newest record kept");
}

/// A claim received from the holder counts as a confirmed sighting at its arrival: the
/// contender may take over `duration + margin` after it, not after its own second look.
/// A claim whose nonce is not the stored record's gives nothing.
async fn claims_confirm_a_sighting(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let mut a = client(&store, prefix, "node-a");
    let mut b = client(&store, prefix, "node-b");
    let mut forged = client(&store, prefix, "node-c");
    assert_eq!(held_epoch(&a.tick(t.at(0.0), true).await.unwrap()), Some(1));
    assert_eq!(held_epoch(&a.tick(t.at(2.0), true).await.unwrap()), Some(1));
    let claim = a.claim(t.at(2.0)).expect("A holds and claims its record");
    assert_eq!(claim.seq, 2);
    b.note_claim(&claim, "node-a", t.at(2.1));
    let mut wrong = claim.clone();
    wrong.nonce = "node-a-0000000000000000-9".into();
    forged.note_claim(&wrong, "node-a", t.at(2.1));
    // A dies. B looks from t=5: the stored record is the claimed one, so its wait
    // counts from 2.1: 2.1 + 10 + 2 = 14.1.
    assert_eq!(
        b.tick(t.at(5.0), true).await.unwrap(),
        other("node-a", 1, false)
    );
    assert_eq!(
        b.tick(t.at(14.0), true).await.unwrap(),
        other("node-a", 1, false)
    );
    // The forged claim's holder saw the record for the first time at 5 and confirmed it
    // at 14: not before 26.
    assert_eq!(
        forged.tick(t.at(5.0), true).await.unwrap(),
        other("node-a", 1, false)
    );
    assert_eq!(
        forged.tick(t.at(14.0), true).await.unwrap(),
        other("node-a", 1, false)
    );
    assert_eq!(
        held_epoch(&b.tick(t.at(14.1), true).await.unwrap()),
        Some(2)
    );
    // A claim's epoch is a hint, not proof: a forged claim at u64::MAX does not stop
    // a holder; it makes its next tick look at the store, which decides.
    let mut c = client(&store, prefix, "node-c");
    let c_prefix_seq = b.claim(t.at(14.1)).expect("B claims").seq;
    assert_eq!(held_epoch(&c.tick(t.at(14.2), false).await.unwrap()), None);
    let mut forged_max = b.claim(t.at(14.1)).expect("B claims");
    forged_max.epoch = u64::MAX;
    forged_max.seq = c_prefix_seq + 1000;
    b.note_claim(&forged_max, "node-c", t.at(14.2));
    assert_eq!(
        b.held(t.at(14.2)),
        Some(2),
        "gossip alone never stops a holder"
    );
    assert_eq!(
        held_epoch(&b.tick(t.at(14.3), true).await.unwrap()),
        Some(2)
    );
    assert_eq!(
        b.highest_epoch_seen(),
        2,
        "the forged epoch was never recorded"
    );
    // A real newer epoch, claimed: the old holder learns it from the store on its
    // next tick (A still had until 10 on its own clock).
    assert_eq!(a.held(t.at(3.0)), Some(1));
    let newer = b.claim(t.at(14.3)).expect("B claims");
    assert_eq!(newer.epoch, 2);
    a.note_claim(&newer, "node-b", t.at(3.0));
    assert_eq!(a.held(t.at(3.0)), Some(1), "a claim alone is not proof");
    let state = a.tick(t.at(3.1), true).await.unwrap();
    assert_eq!(held_epoch(&state), None, "{state:?}");
    assert_eq!(a.held(t.at(3.1)), None);
}

/// The holder dies; another member keeps claiming records of its own with fresh nonces
/// (the same sequence number, then higher ones). The contender's wait for the dead
/// holder's record does not restart: it takes over when it would have without them.
async fn claims_of_others_do_not_restart_a_wait(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let mut a = client(&store, prefix, "node-a");
    let mut b = client(&store, prefix, "node-b");
    assert_eq!(held_epoch(&a.tick(t.at(0.0), true).await.unwrap()), Some(1));
    assert_eq!(held_epoch(&a.tick(t.at(2.0), true).await.unwrap()), Some(1));
    let claim = a.claim(t.at(2.0)).expect("A holds and claims its record");
    b.note_claim(&claim, "node-a", t.at(2.1));
    // A dies. M claims, B looks, over and over.
    for (i, at) in [5.0, 8.0, 11.0, 13.9].into_iter().enumerate() {
        let mut fake = claim.clone();
        fake.seq = claim.seq + i as u64 / 2;
        fake.nonce = format!("node-m-{i:016x}-1");
        b.note_claim(&fake, "node-m", t.at(at));
        assert_eq!(
            b.tick(t.at(at), true).await.unwrap(),
            other("node-a", 1, false),
            "at {at}"
        );
    }
    // 2.1 + 10 + 2 = 14.1, as without the other member's claims.
    assert_eq!(
        held_epoch(&b.tick(t.at(14.1), true).await.unwrap()),
        Some(2)
    );
}

/// With the production check interval a holder writes one record per renewal and reads
/// nothing in between but one listing per check interval; a node that does not want the
/// lease looks once per check interval. Old records are still collected, and a holder that
/// was superseded learns it from its next renewal's failed create.
async fn quiet_between_checks(store: Arc<dyn ObjectStore>, prefix: &str) {
    let t = Clock::new();
    let config = LeaseConfig::for_tests(
        Duration::from_secs(5),
        Duration::from_millis(1500),
        Duration::from_millis(2500),
    )
    .with_check_interval(Duration::from_secs(30));
    let (sa, sb) = (
        Faulty::new(store.clone(), Fault::Pass),
        Faulty::new(store.clone(), Fault::Pass),
    );
    let mut a = LeaseClient::new(
        sa.clone(),
        Path::from(prefix),
        "node-a".into(),
        config.clone(),
    );
    let mut b = LeaseClient::new(sb.clone(), Path::from(prefix), "node-b".into(), config);
    let mut max_records = 0;
    // 300 s: A ticks every 0.5 s (a busy driver), B every 2 s without wanting the lease.
    for k in 0..=600u32 {
        let now = t.at(f64::from(k) * 0.5);
        assert_eq!(
            held_epoch(&a.tick(now, true).await.unwrap()),
            Some(1),
            "tick {k}"
        );
        assert!(a.held(now).is_some(), "A acts between renewals (tick {k})");
        if k % 4 == 0 {
            assert_eq!(b.tick(now, false).await.unwrap(), other("node-a", 1, false));
        }
        max_records = max_records.max(record_count(&store, prefix).await);
    }
    let [puts, gets, lists, deletes] = sa.counts();
    // One acquisition and a renewal every 2.5 s.
    assert!((120..=122).contains(&puts), "holder puts: {puts}");
    assert_eq!(gets, 0, "the holder never reads its own records");
    assert!((10..=12).contains(&lists), "holder listings: {lists}");
    assert!(deletes >= 1, "old records were collected");
    assert!(
        max_records <= KEEP_RECORDS as usize + GC_BATCH + 13,
        "{max_records} records"
    );
    let [puts, gets, lists, _] = sb.counts();
    assert_eq!(puts, 0);
    assert!(
        (10..=11).contains(&lists) && gets == lists,
        "observer: {lists} lists, {gets} gets"
    );

    // A stops (paused); B wants the lease, confirms the record and takes over after
    // duration + margin; A's next renewal fails its create and A learns it lost.
    let mut at = 301.0;
    let taken = loop {
        let state = b.tick(t.at(at), true).await.unwrap();
        if held_epoch(&state).is_some() {
            break at;
        }
        at += 0.5;
        assert!(at < 320.0, "B never took over");
    };
    assert!(taken >= 300.0 + 6.5, "B took over at {taken}");
    assert_eq!(a.held(t.at(taken)), None);
    assert_eq!(
        a.tick(t.at(taken + 0.5), true).await.unwrap(),
        other("node-b", 2, false)
    );
    assert_eq!(a.held(t.at(taken + 0.5)), None);
}

// ---------------------------------------------------------------- backends

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_in_memory() {
    contract(Arc::new(object_store::memory::InMemory::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_local_file_system() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    contract(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_s3_moto() {
    let Some(moto) = moto::Moto::for_test().await else {
        return;
    };
    moto.create_bucket(BUCKET).await.unwrap();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(moto.endpoint())
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_bucket_name(BUCKET)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .build()
        .expect("S3 store for moto");
    contract(Arc::new(store)).await;
}

#[allow(dead_code)] // only some of the helper is used here
#[path = "../../tests/src/azurite.rs"]
mod azurite;

#[allow(dead_code)]
#[path = "../../tests/src/tools.rs"]
mod tools;

/// Azure Blob Storage (Azurite): `PutMode::Create` is `If-None-Match: *`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contract_azure_azurite() {
    let Some(az) = azurite::Azurite::start().await else {
        return;
    };
    az.create_container(BUCKET).await;
    contract(Arc::new(az.store(BUCKET))).await;
}

#[test]
fn config_validation() {
    assert!(LeaseConfig::default().validate().is_ok());
    let fast = LeaseConfig::for_tests(
        Duration::from_secs(1),
        Duration::from_millis(200),
        Duration::from_millis(300),
    );
    assert!(fast.validate_relaxed().is_ok());
    let err = fast.validate().expect_err("below the 2 s floor");
    assert!(err.to_string().contains("renew interval"), "{err}");
    let no_margin = LeaseConfig::for_tests(
        Duration::from_secs(10),
        Duration::ZERO,
        Duration::from_secs(2),
    );
    assert!(no_margin.validate_relaxed().is_err());
    let slow_renew = LeaseConfig::for_tests(
        Duration::from_secs(10),
        Duration::from_secs(2),
        Duration::from_secs(8),
    );
    assert!(slow_renew.validate().is_err());
}

#[tokio::test]
async fn tick_refuses_an_unsafe_config() {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let config = LeaseConfig::for_tests(
        Duration::from_secs(2),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    let mut a = LeaseClient::new(store.clone(), Path::from("p"), "a".into(), config);
    let err = a
        .tick(Instant::now(), true)
        .await
        .expect_err("unsafe config");
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    assert_eq!(record_count(&store, "p").await, 0);
}

// ---------------------------------------------------------------- moto

const BUCKET: &str = "lease-test";

#[allow(dead_code)] // only some of the helper is used here
#[path = "../../tests/src/moto.rs"]
mod moto;
