//! Retries (`upstreams.NAME.retries`): an idempotent request whose target refused the
//! connection (or could not be reached in `connect_timeout_ms`) goes to another target, up to
//! `attempts` targets in all, while the upstream's retry budget allows: retries in the last
//! 10 s (on this instance) may be at most `budget` of the retryable requests in that time plus `min_per_second` for each
//! second of it (as Linkerd's and Finagle's budgets). So a failing upstream does not get its
//! load multiplied by retries. Only connection failures are retried: the request was never
//! sent, so even a request with a body is safe to send elsewhere (its body was not read).
//!
//! Counted in `fleetgate_upstream_retries_total{upstream,outcome}`: `ok` (the retry reached a
//! target), `failed` (it could not connect either), `budget_exhausted` (not retried).

use fleetgate_config::RetryConfig;
use http::Method;
use parking_lot::Mutex;
use std::time::Instant;

pub const UPSTREAM_RETRIES: &str = "fleetgate_upstream_retries_total";

/// The window of the budget, in one-second buckets.
const WINDOW_SECS: usize = 10;

pub struct RetryPolicy {
    /// Targets tried at most, the first included.
    pub attempts: u32,
    percent: u64,
    min_per_second: u64,
    origin: Instant,
    window: Mutex<Window>,
    ok: metrics::Counter,
    failed: metrics::Counter,
    exhausted: metrics::Counter,
}

#[derive(Default)]
struct Window {
    /// The second of the newest bucket.
    second: u64,
    /// Per bucket: (requests, retries).
    buckets: [(u64, u64); WINDOW_SECS],
}

impl Window {
    fn advance(&mut self, now: u64) {
        if now > self.second {
            let stale = (now - self.second).min(WINDOW_SECS as u64);
            for s in 0..stale {
                self.buckets[((now - s) % WINDOW_SECS as u64) as usize] = (0, 0);
            }
            self.second = now;
        }
    }

    fn current(&mut self) -> &mut (u64, u64) {
        &mut self.buckets[(self.second % WINDOW_SECS as u64) as usize]
    }
}

/// Whether a request may be retried after a connect failure: its method is idempotent.
pub fn retryable(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl RetryPolicy {
    pub fn new(config: &RetryConfig, upstream: &str) -> Self {
        let counter = |outcome: &'static str| metrics::counter!(UPSTREAM_RETRIES, "upstream" => upstream.to_string(), "outcome" => outcome);
        RetryPolicy {
            attempts: config.attempts,
            percent: u64::from(config.budget_percent),
            min_per_second: u64::from(config.min_per_second),
            origin: Instant::now(),
            window: Mutex::new(Window::default()),
            ok: counter("ok"),
            failed: counter("failed"),
            exhausted: counter("budget_exhausted"),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// Counts a retryable request to the upstream (the budget's base).
    pub fn request(&self) {
        let now = self.now();
        let mut w = self.window.lock();
        w.advance(now);
        w.current().0 += 1;
    }

    /// Takes one retry from the budget, if there is one left (counted as exhausted if not).
    pub fn try_retry(&self) -> bool {
        let now = self.now();
        let mut w = self.window.lock();
        w.advance(now);
        let (requests, retries) = w.buckets.iter().fold((0, 0), |(a, b), (r, t)| (a + r, b + t));
        // retries + 1 <= percent% of requests + min_per_second * window, in hundredths.
        let allowed = (retries + 1) * 100 <= self.percent * requests + self.min_per_second * WINDOW_SECS as u64 * 100;
        if allowed {
            w.current().1 += 1;
        } else {
            drop(w);
            self.exhausted.increment(1);
        }
        allowed
    }

    /// The outcome of a retry that was sent.
    pub fn outcome(&self, connected: bool) {
        match connected {
            true => self.ok.increment(1),
            false => self.failed.increment(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32, min_per_second: u32) -> RetryPolicy {
        RetryPolicy::new(
            &RetryConfig {
                attempts: 2,
                budget_percent: percent,
                min_per_second,
            },
            "u",
        )
    }

    #[test]
    fn the_budget_is_a_share_of_requests_plus_a_minimum() {
        let p = policy(20, 0);
        assert!(!p.try_retry(), "no requests, no minimum: no retry");
        for _ in 0..10 {
            p.request();
        }
        assert!(p.try_retry());
        assert!(p.try_retry());
        assert!(!p.try_retry(), "20% of 10 is 2");
        let m = policy(0, 1);
        let granted = (0..20).filter(|_| m.try_retry()).count();
        assert_eq!(granted, WINDOW_SECS, "1 per second over the window");
    }

    #[test]
    fn only_idempotent_methods_are_retried() {
        assert!(retryable(&Method::GET) && retryable(&Method::PUT) && retryable(&Method::DELETE));
        assert!(!retryable(&Method::POST) && !retryable(&Method::PATCH));
    }
}
