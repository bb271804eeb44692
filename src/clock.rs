//! Time as a value: the controller gets `now` from here, tests get a fake.
//! This is the one module allowed to read clocks and sleep.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

pub trait Clock: Send + Sync + 'static {
    /// Monotonic time, for leases and intervals.
    fn now(&self) -> Instant;
    /// Wall-clock time, only for names and timestamps written to the store.
    fn wall(&self) -> SystemTime;
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[allow(clippy::disallowed_methods)]
impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(d))
    }
}
