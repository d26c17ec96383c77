//! The concerns' metrics: decision outcomes per limit, permit renewals, store call latency and
//! errors. Handles are registered once (at stage construction) and cached, so the hot path only
//! bumps atomics. Recorded through the `metrics` facade: the binary installs a Prometheus
//! exporter; a library user installs any recorder, or none.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

pub const RATE_DECISIONS: &str = "fleetgate_rate_limit_decisions_total";
pub const CONCURRENCY_DECISIONS: &str = "fleetgate_concurrency_decisions_total";
pub const PERMIT_RENEWALS: &str = "fleetgate_concurrency_permit_renewals_total";
pub const STORE_CALL_SECONDS: &str = "fleetgate_store_call_duration_seconds";
pub const STORE_ERRORS: &str = "fleetgate_store_errors_total";
pub const STORE_FALLBACK: &str = "fleetgate_store_fallback_active";

/// Decision counters of one limit.
#[derive(Clone)]
pub struct DecisionMetrics {
    pub allowed: Counter,
    pub limited: Counter,
    pub fallback_open: Counter,
    /// Decided by the in-process fallback: admitted, and refused.
    pub fallback_local: Counter,
    pub fallback_local_limited: Counter,
    pub fallback_closed: Counter,
    pub missing_key_refused: Counter,
    /// Admissions given back because a later limit refused the request (and failed tries).
    pub refunded: Counter,
    pub refund_failed: Counter,
}

impl DecisionMetrics {
    pub fn new(metric: &'static str, route: &str, limit: &str) -> Self {
        let c = |outcome: &'static str| counter!(metric, "route" => route.to_string(), "limit" => limit.to_string(), "outcome" => outcome);
        DecisionMetrics {
            allowed: c("allowed"),
            limited: c("limited"),
            fallback_open: c("fallback_open"),
            fallback_local: c("fallback_local"),
            fallback_local_limited: c("fallback_local_limited"),
            fallback_closed: c("fallback_closed"),
            missing_key_refused: c("missing_key_refused"),
            refunded: c("refunded"),
            refund_failed: c("refund_failed"),
        }
    }
}

/// Concurrency permit lease renewals of one limit: `renewed`, `refused` (the lease had expired
/// and the slots were taken), `failed` (the store did not answer).
#[derive(Clone)]
pub struct RenewalMetrics {
    pub renewed: Counter,
    pub refused: Counter,
    pub failed: Counter,
}

impl RenewalMetrics {
    pub fn new(route: &str, limit: &str) -> Self {
        let c = |outcome: &'static str| counter!(PERMIT_RENEWALS, "route" => route.to_string(), "limit" => limit.to_string(), "outcome" => outcome);
        RenewalMetrics {
            renewed: c("renewed"),
            refused: c("refused"),
            failed: c("failed"),
        }
    }
}

/// Store call latency and errors, per operation.
pub struct StoreMetrics {
    pub rate_seconds: Histogram,
    pub permit_seconds: Histogram,
    pub timeouts: Counter,
    pub unavailable: Counter,
    pub server_errors: Counter,
    pub fallback_active: Gauge,
    /// Milliseconds (since `origin`) of the last store-error log line: at most one a second.
    last_error_log_ms: std::sync::atomic::AtomicU64,
    origin: std::time::Instant,
}

impl StoreMetrics {
    pub fn new() -> Self {
        StoreMetrics {
            rate_seconds: histogram!(STORE_CALL_SECONDS, "op" => "rate"),
            permit_seconds: histogram!(STORE_CALL_SECONDS, "op" => "permit"),
            timeouts: counter!(STORE_ERRORS, "kind" => "timeout"),
            unavailable: counter!(STORE_ERRORS, "kind" => "unavailable"),
            server_errors: counter!(STORE_ERRORS, "kind" => "server"),
            fallback_active: gauge!(STORE_FALLBACK),
            last_error_log_ms: std::sync::atomic::AtomicU64::new(0),
            origin: std::time::Instant::now(),
        }
    }

    pub fn error(&self, e: &fleetgate_store::StoreError) {
        use fleetgate_store::StoreError::*;
        use std::sync::atomic::Ordering;
        let now = self.origin.elapsed().as_millis() as u64 + 1000;
        let last = self.last_error_log_ms.load(Ordering::Relaxed);
        if now >= last + 1000
            && self
                .last_error_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %e, "store call failed; each limit follows its on_store_error policy");
        }
        match e {
            Timeout(_) => self.timeouts.increment(1),
            Unavailable(_) => self.unavailable.increment(1),
            _ => self.server_errors.increment(1),
        }
    }
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self::new()
    }
}
