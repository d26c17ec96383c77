//! Upstreams: a list of targets balanced round-robin, with active health checks (a periodic
//! GET of a path) and passive ejection (consecutive connection failures take a target out for a
//! while). When every target is down, all are tried anyway: refusing everything would turn a
//! health-check blip into an outage (Envoy's "panic mode").

use crate::telemetry::UPSTREAM_HEALTHY;
use http::uri::{Authority, Scheme};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    /// How the target is reached (TLS, HTTP version).
    pub link: crate::upstream_pool::TargetLink,
    /// Set by active health checks.
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Monotonic ms (since the upstream's origin) until which the target is ejected.
    ejected_until_ms: AtomicU64,
    health_gauge: metrics::Gauge,
}

impl Target {
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// The default of both I/O bounds (as in the configuration).
const DEFAULT_IO_BOUND: Duration = Duration::from_secs(60);

pub struct Upstream {
    pub name: String,
    pub targets: Vec<Target>,
    next: AtomicUsize,
    origin: Instant,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of a response body.
    pub body_idle_timeout: Duration,
    /// Longest time a write to a target may make no progress.
    pub write_timeout: Duration,
    pub health_check: Option<HealthCheck>,
    eject_after: u32,
    eject_for: Duration,
    /// `balance: least_request`: requests in flight per target; `None`: round robin.
    pub least_request: Option<crate::balance::LeastRequest>,
    /// Cookie affinity (`affinity`).
    pub affinity: Option<crate::affinity::Affinity>,
    /// Retries on connect failures (`retries`).
    pub retry: Option<crate::retry::RetryPolicy>,
    /// The upstream side's fleet-wide concerns: throttle and breakers.
    pub side: crate::upstream_side::UpstreamSide,
    /// One login for the fleet (`login`).
    pub login: Option<Arc<fleetgate_http::upstream_login::UpstreamLogin>>,
}

impl Upstream {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        targets: Vec<(Scheme, Authority)>,
        connect_timeout: Duration,
        request_timeout: Duration,
        idle_timeout: Duration,
        health_check: Option<HealthCheck>,
        eject_after: u32,
        eject_for: Duration,
    ) -> Self {
        let targets = targets
            .into_iter()
            .map(|(scheme, authority)| {
                let health_gauge = metrics::gauge!(UPSTREAM_HEALTHY, "upstream" => name.to_string(), "target" => authority.to_string());
                health_gauge.set(1.0);
                Target {
                    scheme,
                    authority,
                    link: crate::upstream_pool::TargetLink::plain(),
                    healthy: AtomicBool::new(true),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    health_gauge,
                }
            })
            .collect();
        Upstream {
            name: name.to_string(),
            targets,
            next: AtomicUsize::new(0),
            origin: Instant::now(),
            connect_timeout,
            request_timeout,
            idle_timeout,
            body_idle_timeout: DEFAULT_IO_BOUND,
            write_timeout: DEFAULT_IO_BOUND,
            health_check,
            eject_after: eject_after.max(1),
            eject_for,
            least_request: None,
            affinity: None,
            retry: None,
            side: Default::default(),
            login: None,
        }
    }

    /// Sets the throttle and breakers (`throttle`, `breaker`).
    pub fn with_side(mut self, side: crate::upstream_side::UpstreamSide) -> Self {
        self.side = side;
        self
    }

    /// Sets the upstream's login (`login`).
    pub fn with_login(mut self, login: Option<fleetgate_http::upstream_login::UpstreamLogin>) -> Self {
        self.login = login.map(Arc::new);
        self
    }

    /// Sets how targets are chosen and retried.
    pub fn with_policies(
        mut self,
        least_request: bool,
        affinity: Option<crate::affinity::Affinity>,
        retry: Option<crate::retry::RetryPolicy>,
    ) -> Self {
        self.least_request = least_request.then(|| crate::balance::LeastRequest::new(self.targets.len()));
        self.affinity = affinity;
        self.retry = retry;
        self
    }

    /// A target by the upstream's balancing (round robin or least request).
    pub fn balance(&self) -> usize {
        match &self.least_request {
            Some(lr) => lr.choose(self),
            None => self.pick(),
        }
    }

    /// Sets how each target is reached (`links[i]` for `targets[i]`).
    pub fn with_links(mut self, links: Vec<crate::upstream_pool::TargetLink>) -> Self {
        for (t, link) in self.targets.iter_mut().zip(links) {
            t.link = link;
        }
        self
    }

    /// Sets the bounds on waiting for response body bytes and on stalled writes.
    pub fn with_io_bounds(mut self, body_idle_timeout: Duration, write_timeout: Duration) -> Self {
        self.body_idle_timeout = body_idle_timeout;
        self.write_timeout = write_timeout;
        self
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn available(&self, t: &Target, now_ms: u64) -> bool {
        t.healthy.load(Ordering::Relaxed) && t.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// The next target in round-robin order among the available ones (index into `targets`).
    pub fn pick(&self) -> usize {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return 0;
        }
        let now = self.now_ms();
        for i in 0..n {
            let idx = (start + i) % n;
            if self.available(&self.targets[idx], now) {
                return idx;
            }
        }
        start % n
    }

    /// A connection to the target failed: count it, eject after the threshold.
    pub fn report_connect_failure(&self, idx: usize) {
        let t = &self.targets[idx];
        let failures = t.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.eject_after {
            t.ejected_until_ms
                .store(self.now_ms() + self.eject_for.as_millis() as u64, Ordering::Relaxed);
            t.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, target = %t.url(), for_ms = self.eject_for.as_millis() as u64, "target ejected after consecutive connection failures");
        }
    }

    pub fn report_success(&self, idx: usize) {
        let t = &self.targets[idx];
        if t.consecutive_failures.load(Ordering::Relaxed) != 0 {
            t.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    pub fn is_healthy(&self, idx: usize) -> bool {
        self.available(&self.targets[idx], self.now_ms())
    }
}

/// Runs the active health checks of `upstream` until the process ends.
pub async fn run_health_checks(upstream: Arc<Upstream>) {
    let Some(check) = upstream.health_check.as_ref() else {
        return;
    };
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_connect_timeout(Some(check.timeout));
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
    let mut streaks: Vec<(u32, u32)> = vec![(0, 0); upstream.targets.len()];
    // https targets are checked over TLS, on connections of their own.
    let probes: Vec<_> = upstream
        .targets
        .iter()
        .map(|t| {
            t.link.tls.as_ref().map(|_| {
                let settings = crate::upstream_pool::PoolSettings {
                    connect_timeout: check.timeout,
                    idle_timeout: check.timeout,
                    response_body_idle: check.timeout,
                    request_body_idle: check.timeout,
                    write_timeout: check.timeout,
                    max_body_bytes: 0,
                };
                crate::upstream_pool::TargetPool::new(t.authority.to_string(), settings, t.link.clone())
            })
        })
        .collect();
    let mut ticker = tokio::time::interval(check.interval);
    loop {
        ticker.tick().await;
        for (idx, target) in upstream.targets.iter().enumerate() {
            let uri = format!("{}{}", target.url(), check.path);
            let ok = if let Some(probe) = &probes[idx] {
                matches!(
                    tokio::time::timeout(check.timeout, probe.probe(&check.path)).await,
                    Ok(true)
                )
            } else {
                match uri.parse::<http::Uri>() {
                    Ok(uri) => {
                        let req = http::Request::get(uri)
                            .header("user-agent", "fleetgate-health-check")
                            .body(http_body_util::Empty::new());
                        match req {
                            Ok(req) => {
                                matches!(tokio::time::timeout(check.timeout, client.request(req)).await, Ok(Ok(resp)) if resp.status().is_success())
                            }
                            Err(_) => false,
                        }
                    }
                    Err(_) => false,
                }
            };
            let (ups, downs) = &mut streaks[idx];
            if ok {
                *ups += 1;
                *downs = 0;
            } else {
                *downs += 1;
                *ups = 0;
            }
            let was = target.healthy.load(Ordering::Relaxed);
            if was && *downs >= check.unhealthy_threshold {
                target.healthy.store(false, Ordering::Relaxed);
                target.health_gauge.set(0.0);
                tracing::warn!(upstream = %upstream.name, target = %target.url(), "target failed its health check; marked down");
            } else if !was && *ups >= check.healthy_threshold {
                target.healthy.store(true, Ordering::Relaxed);
                target.health_gauge.set(1.0);
                tracing::info!(upstream = %upstream.name, target = %target.url(), "target passed its health check; marked up");
            }
        }
    }
}
