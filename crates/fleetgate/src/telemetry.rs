//! Metrics (Prometheus text via `metrics-exporter-prometheus`) and logs (`tracing`).
//! Metric handles are registered once at start-up and cached, so the hot path only bumps atomics.

pub use fleetgate_http::metrics::{
    StoreMetrics, CONCURRENCY_DECISIONS, PERMIT_RENEWALS, RATE_DECISIONS, STORE_CALL_SECONDS, STORE_ERRORS,
    STORE_FALLBACK,
};
use metrics::{counter, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const REQUESTS: &str = "fleetgate_requests_total";
pub const REQUESTS_REFUSED: &str = "fleetgate_requests_refused_total";
/// Requests by route, from arrival to the response head (seconds).
pub const REQUEST_DURATION: &str = "fleetgate_request_duration_seconds";
/// Failed exchanges with an upstream, by `upstream` and `reason`: `connect`, `timeout`,
/// `stalled` (the upstream read none of the request), `reset`, `protocol`, `other`.
pub const UPSTREAM_ERRORS: &str = "fleetgate_upstream_errors_total";
/// Configuration reloads (SIGHUP) by `outcome`: `applied`, `invalid` (the file was refused;
/// the old configuration keeps serving).
pub const CONFIG_RELOADS: &str = "fleetgate_config_reloads_total";
pub const UPSTREAM_HEALTHY: &str = "fleetgate_upstream_target_healthy";
pub const CLIENT_CONNECTIONS: &str = "fleetgate_client_connections";
pub const CLIENT_CONNECTIONS_REFUSED: &str = "fleetgate_client_connections_refused_total";
/// HTTP/2 client connections the gateway ended on a protocol error, by `reason`: `flood`
/// (GOAWAY ENHANCE_YOUR_CALM: rapid resets, CONTINUATION floods, too many local resets) or
/// `protocol` (any other h2 error).
pub const H2_CONNECTION_ERRORS: &str = "fleetgate_h2_connection_errors_total";
/// Upgrade (WebSocket) requests by `outcome`: `opened` (101, tunnel joined), `refused` (the
/// upstream answered something else, passed on), `failed` (the upstream could not be reached or
/// one side's upgrade broke).
pub const UPGRADES: &str = "fleetgate_upgrades_total";
/// Upgrade tunnels open now.
pub const UPGRADES_OPEN: &str = "fleetgate_upgrades_open";
/// TLS handshakes with clients that failed, by `reason`: `no_alpn` (the client offered no
/// protocol the gateway speaks), `protocol` (not TLS, or malformed), `incompatible` (no common
/// version or cipher suite), `alert` (the client refused the handshake, e.g. an untrusted
/// certificate), `timeout`, `closed` (the client left), `other`.
pub const TLS_HANDSHAKE_ERRORS: &str = "fleetgate_tls_handshake_errors_total";
/// Certificate reloads after the files changed, by `result`: `ok` or `error` (the previous
/// certificates kept serving).
pub const TLS_CERT_RELOADS: &str = "fleetgate_tls_certificate_reloads_total";

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process).
pub fn install_metrics() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ];
        let request_buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(STORE_CALL_SECONDS.into()),
                &buckets,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(REQUEST_DURATION.into()),
                    &request_buckets,
                )
            })
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

/// An upgrade request's outcome (see [`UPGRADES`]). Off the hot path.
pub fn upgrade(outcome: &'static str) {
    counter!(UPGRADES, "outcome" => outcome).increment(1);
}

/// A failed exchange with an upstream (see [`UPSTREAM_ERRORS`]). Off the hot path.
pub fn upstream_error(upstream: &str, reason: &'static str) {
    counter!(UPSTREAM_ERRORS, "upstream" => upstream.to_string(), "reason" => reason).increment(1);
}

/// A configuration reload's outcome (see [`CONFIG_RELOADS`]).
pub fn config_reload(outcome: &'static str) {
    counter!(CONFIG_RELOADS, "outcome" => outcome).increment(1);
}

/// Per-route request counters, one handle per status code, created on first use, and the
/// route's duration histogram.
pub struct RouteMetrics {
    route: &'static str,
    by_status: Box<[OnceLock<Counter>]>,
    duration: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        RouteMetrics {
            route: Box::leak(route.to_string().into_boxed_str()),
            by_status: (0..500).map(|_| OnceLock::new()).collect(),
            duration: histogram!(REQUEST_DURATION, "route" => route.to_string()),
        }
    }

    /// One request answered with `status`, its response head ready after `elapsed`.
    pub fn request(&self, status: u16, elapsed: std::time::Duration) {
        self.duration.record(elapsed.as_secs_f64());
        let i = (status.clamp(100, 599) - 100) as usize;
        self.by_status[i]
            .get_or_init(|| counter!(REQUESTS, "route" => self.route, "status" => status.to_string()))
            .increment(1);
    }
}

/// Sets up logging: `RUST_LOG` wins over the configured level. Logs go through a non-blocking
/// writer so a slow terminal never stalls request handling. Keep the guard alive.
/// The JSON access log has its own writer ([`crate::access_log`]), started here when asked.
pub fn init_logging(level: &str, json_access_log: bool) -> LogGuards {
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
    let json = json_access_log.then(crate::access_log::init_json_writer).flatten();
    LogGuards {
        _text: guard,
        _json: json,
    }
}

/// Keeps the log writers running; dropping it flushes what they hold.
pub struct LogGuards {
    _text: tracing_appender::non_blocking::WorkerGuard,
    _json: Option<tracing_appender::non_blocking::WorkerGuard>,
}
