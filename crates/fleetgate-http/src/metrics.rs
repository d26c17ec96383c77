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
pub const PAYMENTS: &str = "fleetgate_payments_total";
/// The payment gate's store calls under its failure policy (`fallback_open`, `fallback_closed`).
pub const PAYMENT_STORE_DECISIONS: &str = "fleetgate_payment_store_decisions_total";

/// Payment outcomes of one route (`fleetgate_payments_total{route, outcome}`): `required` (402
/// without a payment), `malformed` (400), `rejected` (402: no matching offer, bad timing, or
/// invalid), `replayed` (402: already used), `verified`, `verdict_cached` (a verdict read from
/// the fleet's cache), `settled`, `failed` (settlement refused or the facilitator failed),
/// `unsettled` (after_response and the upstream answered 500 or more), `session` (admitted by a
/// payment session), `store_unavailable` (503 under `closed`).
#[derive(Clone)]
pub struct PaymentMetrics {
    pub required: Counter,
    pub malformed: Counter,
    pub rejected: Counter,
    pub replayed: Counter,
    pub verified: Counter,
    pub verdict_cached: Counter,
    pub settled: Counter,
    pub failed: Counter,
    pub unsettled: Counter,
    pub session: Counter,
    pub store_unavailable: Counter,
}

impl PaymentMetrics {
    pub fn new(route: &str) -> Self {
        let c = |outcome: &'static str| counter!(PAYMENTS, "route" => route.to_string(), "outcome" => outcome);
        PaymentMetrics {
            required: c("required"),
            malformed: c("malformed"),
            rejected: c("rejected"),
            replayed: c("replayed"),
            verified: c("verified"),
            verdict_cached: c("verdict_cached"),
            settled: c("settled"),
            failed: c("failed"),
            unsettled: c("unsettled"),
            session: c("session"),
            store_unavailable: c("store_unavailable"),
        }
    }
}

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
    /// Markers, verdicts and sessions (get, set, claim, delete).
    pub marker_seconds: Histogram,
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
            marker_seconds: histogram!(STORE_CALL_SECONDS, "op" => "marker"),
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
