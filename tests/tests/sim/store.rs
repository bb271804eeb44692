//! The shared store of the simulation: object_store's `InMemory` behind a
//! wrapper that injects the store's faults from the simulation's own random
//! stream: errors before anything happens, writes that land but whose answer
//! is lost (object_store's retried conditional put answers AlreadyExists, an
//! unanswered one a generic error), and a store that is down.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What the store does now; the simulation changes it as faults come and go.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreFaults {
    /// Every call fails (the store is unreachable).
    pub down: bool,
    /// Probability that a call fails before doing anything.
    pub error: f64,
    /// Probability that a write lands but its answer is lost.
    pub lost_answer: f64,
}

#[derive(Debug)]
struct State {
    faults: StoreFaults,
    rng: StdRng,
    injected: u64,
}

/// `InMemory` with injected faults. Deterministic: one random stream, and the
/// simulation calls it from one thread in a fixed order.
#[derive(Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<Mutex<State>>,
    /// Set when the manager using this handle crashed: its calls fail from
    /// then on (its tasks may linger a moment, their writes must not land).
    dead: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Told of every lease record that lands: (seq, holder, released).
    lease_observer: Arc<Mutex<Option<LeaseObserver>>>,
}

/// See [`FaultyStore::observe_lease`].
pub type LeaseObserver = Arc<dyn Fn(u64, &str, bool) + Send + Sync>;

impl FaultyStore {
    pub fn new(seed: u64) -> Self {
        FaultyStore {
            inner: Arc::new(object_store::memory::InMemory::new()),
            state: Arc::new(Mutex::new(State {
                faults: StoreFaults::default(),
                rng: StdRng::seed_from_u64(seed),
                injected: 0,
            })),
            dead: None,
            lease_observer: Arc::new(Mutex::new(None)),
        }
    }

    /// Call `f` with every lease record written that lands.
    pub fn observe_lease(&self, f: LeaseObserver) {
        *self.lease_observer.lock().unwrap() = Some(f);
    }

    fn landed(&self, location: &Path, body: &bytes::Bytes) {
        let observer = self.lease_observer.lock().unwrap().clone();
        let Some(f) = observer else { return };
        let Some(name) = location.filename() else {
            return;
        };
        let Ok(seq) = name.parse::<u64>() else { return };
        if !location.as_ref().contains("etcd-manager/lease/") {
            return;
        }
        if let Ok(r) = lock::LeaseRecord::parse(location, seq, body) {
            f(r.seq, &r.holder, r.released);
        }
    }

    /// The same store for one manager: every call fails once `dead` is set.
    pub fn for_manager(&self, dead: Arc<std::sync::atomic::AtomicBool>) -> Self {
        FaultyStore {
            dead: Some(dead),
            ..self.clone()
        }
    }

    pub fn set_faults(&self, faults: StoreFaults) {
        self.state.lock().unwrap().faults = faults;
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state.lock().unwrap().injected
    }

    /// Whether this call fails before doing anything.
    pub fn fails_now(&self) -> bool {
        if self
            .dead
            .as_ref()
            .is_some_and(|d| d.load(std::sync::atomic::Ordering::SeqCst))
        {
            return true;
        }
        let mut s = self.state.lock().unwrap();
        let p = s.faults.error;
        let fail = s.faults.down || (p > 0.0 && s.rng.random_bool(p));
        if fail {
            s.injected += 1;
        }
        fail
    }

    fn loses_answer(&self) -> bool {
        let mut s = self.state.lock().unwrap();
        let p = s.faults.lost_answer;
        let lose = p > 0.0 && s.rng.random_bool(p);
        if lose {
            s.injected += 1;
        }
        lose
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "sim",
        source: format!("injected fault: {what}").into(),
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore")
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore")
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fails_now() {
            return Err(injected("the store refused the write"));
        }
        let create = opts.mode == PutMode::Create;
        let body = bytes::Bytes::from(payload.clone());
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.landed(location, &body);
        if self.loses_answer() {
            return Err(if create {
                object_store::Error::AlreadyExists {
                    path: location.to_string(),
                    source: "injected fault: the write landed, the retry found it".into(),
                }
            } else {
                injected("the write landed but its answer was lost")
            });
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        if self.fails_now() {
            return Err(injected("the store refused the upload"));
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if self.fails_now() {
            return Err(injected("the store refused the read"));
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        if self.fails_now() {
            return Box::pin(futures::stream::once(async {
                Err(injected("the store refused the delete"))
            }));
        }
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        if self.fails_now() {
            return Box::pin(futures::stream::once(async {
                Err(injected("the store refused the listing"))
            }));
        }
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        if self.fails_now() {
            return Err(injected("the store refused the listing"));
        }
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        if self.fails_now() {
            return Err(injected("the store refused the copy"));
        }
        self.inner.copy_opts(from, to, options).await
    }
}
