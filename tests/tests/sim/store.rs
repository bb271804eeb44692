//! The shared store of the simulation: object_store's `InMemory` behind a
//! wrapper that injects the store's faults from the simulation's own random
//! stream: errors before anything happens, writes that land but whose answer
//! is lost (object_store's retried conditional put answers AlreadyExists, an
//! unanswered one a generic error), and a store that is down.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Writes whose path holds this are denied, as a bucket policy denies
    /// them (kept across [`FaultyStore::set_faults`]).
    deny: Option<&'static str>,
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
    dead: Option<Arc<AtomicBool>>,
    /// Set while the manager using this handle is paused (SIGSTOP, a long
    /// GC): an answer reaches it only once it runs again.
    paused: Option<Arc<AtomicBool>>,
    /// Set while the host of the manager using this handle cannot reach the
    /// store (its route to the store is gone; its peers are not).
    cut: Option<Arc<AtomicBool>>,
    /// Told of every write that lands: (path, body).
    observer: Arc<Mutex<Option<PutObserver>>>,
}

/// See [`FaultyStore::observe`].
pub type PutObserver = Arc<dyn Fn(&Path, &bytes::Bytes) + Send + Sync>;

/// Wait while `paused` is set (a paused process makes no progress).
pub async fn wait_while_paused(paused: &AtomicBool) {
    while paused.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

impl FaultyStore {
    pub fn new(seed: u64) -> Self {
        FaultyStore {
            inner: Arc::new(object_store::memory::InMemory::new()),
            state: Arc::new(Mutex::new(State {
                faults: StoreFaults::default(),
                deny: None,
                rng: StdRng::seed_from_u64(seed),
                injected: 0,
            })),
            dead: None,
            paused: None,
            cut: None,
            observer: Arc::new(Mutex::new(None)),
        }
    }

    /// Call `f` with every write that lands.
    pub fn observe(&self, f: PutObserver) {
        *self.observer.lock().unwrap() = Some(f);
    }

    fn landed(&self, location: &Path, body: &bytes::Bytes) {
        let observer = self.observer.lock().unwrap().clone();
        if let Some(f) = observer {
            f(location, body);
        }
    }

    /// The same store for one manager: every call fails once `dead` is
    /// set or while `cut` is, and answers wait while `paused` is.
    pub fn for_manager(
        &self,
        dead: Arc<AtomicBool>,
        paused: Arc<AtomicBool>,
        cut: Arc<AtomicBool>,
    ) -> Self {
        FaultyStore {
            dead: Some(dead),
            paused: Some(paused),
            cut: Some(cut),
            ..self.clone()
        }
    }

    /// The answer reaches a paused manager once it runs again.
    async fn answer<T>(&self, result: T) -> T {
        if let Some(p) = &self.paused {
            wait_while_paused(p).await;
        }
        result
    }

    pub fn set_faults(&self, faults: StoreFaults) {
        self.state.lock().unwrap().faults = faults;
    }

    /// Deny writes whose path holds `part` (None: deny none), with the
    /// store's own words for it: access denied, which no retry mends.
    pub fn deny_writes(&self, part: Option<&'static str>) {
        self.state.lock().unwrap().deny = part;
    }

    fn denied(&self, location: &Path) -> Option<object_store::Error> {
        let deny = self.state.lock().unwrap().deny?;
        location
            .as_ref()
            .contains(deny)
            .then(|| object_store::Error::PermissionDenied {
                path: location.to_string(),
                source: "AccessDenied: a bucket policy denies this write (sim)".into(),
            })
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state.lock().unwrap().injected
    }

    /// Whether this call fails before doing anything.
    pub fn fails_now(&self) -> bool {
        if self.dead.as_ref().is_some_and(|d| d.load(Ordering::SeqCst)) {
            return true;
        }
        let mut s = self.state.lock().unwrap();
        if self.cut.as_ref().is_some_and(|c| c.load(Ordering::SeqCst)) {
            s.injected += 1;
            return true;
        }
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
        if let Some(e) = self.denied(location) {
            return Err(e);
        }
        let create = opts.mode == PutMode::Create;
        let body = bytes::Bytes::from(payload.clone());
        let result = self.inner.put_opts(location, payload, opts).await;
        if result.is_ok() {
            self.landed(location, &body);
        }
        let result = self.answer(result).await?;
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
        if let Some(e) = self.denied(location) {
            return Err(e);
        }
        let r = self.inner.put_multipart_opts(location, opts).await;
        self.answer(r).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if self.fails_now() {
            return Err(injected("the store refused the read"));
        }
        let r = self.inner.get_opts(location, options).await;
        self.answer(r).await
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
        let r = self.inner.list_with_delimiter(prefix).await;
        self.answer(r).await
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
        let r = self.inner.copy_opts(from, to, options).await;
        self.answer(r).await
    }
}
