//! Metrics (Prometheus text via `metrics-exporter-prometheus`) and logs (`tracing`).
//! Metric handles are registered once at start-up and cached, so the hot path only bumps atomics.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const REQUESTS: &str = "fleetgate_requests_total";
pub const REQUESTS_REFUSED: &str = "fleetgate_requests_refused_total";
pub const RATE_DECISIONS: &str = "fleetgate_rate_limit_decisions_total";
pub const CONCURRENCY_DECISIONS: &str = "fleetgate_concurrency_decisions_total";
pub const PERMIT_RENEWALS: &str = "fleetgate_concurrency_permit_renewals_total";
pub const STORE_CALL_SECONDS: &str = "fleetgate_store_call_duration_seconds";
pub const STORE_ERRORS: &str = "fleetgate_store_errors_total";
pub const STORE_FALLBACK: &str = "fleetgate_store_fallback_active";
pub const UPSTREAM_ERRORS: &str = "fleetgate_upstream_errors_total";
pub const UPSTREAM_HEALTHY: &str = "fleetgate_upstream_target_healthy";
pub const CLIENT_CONNECTIONS: &str = "fleetgate_client_connections";
pub const CLIENT_CONNECTIONS_REFUSED: &str = "fleetgate_client_connections_refused_total";

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process).
pub fn install_metrics() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(STORE_CALL_SECONDS.into()),
                &buckets,
            )
            .expect("static bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // A second gateway in one process (tests) keeps the first recorder.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Drains buffered histogram samples into their buckets.
pub fn run_metrics_upkeep() {
    if let Some(h) = PROMETHEUS.get() {
        h.run_upkeep();
    }
}

pub fn render_metrics() -> String {
    PROMETHEUS.get().map(|h| h.render()).unwrap_or_default()
}

/// A request refused before routing (`reason`: the `error` of its answer, e.g.
/// `path_encoded_slash`, `duplicate_host`). Off the hot path: the handle is looked up per call.
pub fn request_refused(reason: &'static str) {
    counter!(REQUESTS_REFUSED, "reason" => reason).increment(1);
}

/// Per-route request counters, one handle per status code, created on first use.
pub struct RouteMetrics {
    route: &'static str,
    by_status: Box<[OnceLock<Counter>]>,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        RouteMetrics {
            route: Box::leak(route.to_string().into_boxed_str()),
            by_status: (0..500).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn request(&self, status: u16) {
        let i = (status.clamp(100, 599) - 100) as usize;
        self.by_status[i]
            .get_or_init(|| counter!(REQUESTS, "route" => self.route, "status" => status.to_string()))
            .increment(1);
    }
}

/// Decision counters of one limit.
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

/// Sets up logging: `RUST_LOG` wins over the configured level. Logs go through a non-blocking
/// writer so a slow terminal never stalls request handling. Keep the guard alive.
pub fn init_logging(level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only for a terminal: log files and collectors get plain text.
    use std::io::IsTerminal;
    let ansi = std::io::stdout().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true)
        .with_ansi(ansi)
        .try_init();
    guard
}
