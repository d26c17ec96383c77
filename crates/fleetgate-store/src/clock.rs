//! Time for the in-process driver: a monotonic clock behind a trait, so tests control time.
//! (The Redis driver never reads local time: its scripts read the server's `TIME`.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic clock in microseconds since an arbitrary origin.
pub trait Clock: Send + Sync + 'static {
    fn now_us(&self) -> u64;
}

/// The real clock: microseconds since the clock was made.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock { origin: Instant::now() }
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_us(&self) -> u64 {
        // Start at 1 s so that "time zero" never coincides with a fresh state.
        self.origin.elapsed().as_micros() as u64 + 1_000_000
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new(start_us: u64) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(start_us)),
        }
    }
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}
