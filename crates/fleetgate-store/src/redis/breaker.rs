//! A circuit breaker around the store connection. After `threshold` consecutive connectivity
//! failures (timeouts, refused or dropped connections) it opens: calls fail at once with
//! [`StoreError::Unavailable`] instead of each waiting for the timeout, so a dead Redis costs
//! no latency per request. After a backoff one call is let through as a probe (half-open); its
//! success closes the breaker, its failure reopens it with a doubled backoff (capped).

use crate::error::StoreError;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive connectivity failures that open the breaker (default 3).
    pub threshold: u32,
    /// First and longest wait before a probe (defaults 100 ms and 1 s).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            threshold: 3,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

pub struct Breaker {
    settings: BreakerSettings,
    state: AtomicU8,
    failures: AtomicU32,
    origin: Instant,
    /// Milliseconds since `origin` at which the next probe is allowed.
    probe_at_ms: AtomicU64,
    backoff_ms: AtomicU64,
}

/// What the breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call normally.
    Call,
    /// Half-open: this call is the probe.
    Probe,
    /// Open: fail fast.
    Reject,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            origin: Instant::now(),
            probe_at_ms: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(settings.min_backoff.as_millis() as u64),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn admit(&self) -> Admission {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admission::Call,
            OPEN if self.now_ms() >= self.probe_at_ms.load(Ordering::Acquire) => {
                match self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => Admission::Probe,
                    Err(_) => Admission::Reject,
                }
            }
            _ => Admission::Reject,
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }

    pub fn on_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.state.store(CLOSED, Ordering::Release);
            self.backoff_ms
                .store(self.settings.min_backoff.as_millis() as u64, Ordering::Relaxed);
            tracing::info!("store answered again; breaker closed");
        }
    }

    pub fn on_failure(&self, admission: Admission) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        match admission {
            Admission::Probe => {
                let next =
                    (self.backoff_ms.load(Ordering::Relaxed) * 2).min(self.settings.max_backoff.as_millis() as u64);
                self.backoff_ms.store(next, Ordering::Relaxed);
                self.open();
            }
            Admission::Call if failures >= self.settings.threshold && self.state.load(Ordering::Acquire) == CLOSED => {
                tracing::warn!(
                    failures,
                    "store failing; breaker opened, calls fail fast until a probe succeeds"
                );
                self.open();
            }
            _ => {}
        }
    }

    fn open(&self) {
        self.probe_at_ms.store(
            self.now_ms() + self.backoff_ms.load(Ordering::Relaxed),
            Ordering::Release,
        );
        self.state.store(OPEN, Ordering::Release);
    }

    pub fn rejection() -> StoreError {
        StoreError::Unavailable("store breaker open after repeated failures; probing for recovery".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_and_closes() {
        let b = Breaker::new(BreakerSettings {
            threshold: 2,
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_millis(100),
        });
        assert_eq!(b.admit(), Admission::Call);
        b.on_failure(Admission::Call);
        assert_eq!(b.admit(), Admission::Call);
        b.on_failure(Admission::Call);
        assert_eq!(b.admit(), Admission::Reject);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Reject, "one probe at a time");
        b.on_failure(Admission::Probe);
        assert_eq!(b.admit(), Admission::Reject);
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(b.admit(), Admission::Probe);
        b.on_success();
        assert_eq!(b.admit(), Admission::Call);
        assert!(!b.is_open());
    }
}
