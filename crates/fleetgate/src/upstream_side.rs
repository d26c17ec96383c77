//! The upstream side's fleet-wide concerns (`upstreams.NAME.throttle`, `breaker`), in the
//! order of the way in (DESIGN.md, "The request pipeline"): the breaker says which target may
//! be called, if any; then the throttle says when the call may go. On the way out the call's
//! outcome goes to its breaker. The concerns themselves live in `fleetgate_http::breaker` and
//! `fleetgate_http::throttle`; this module only joins them to the proxy.

use crate::body::{json_error, GatewayBody};
use crate::build::BuildError;
use crate::gateway::Worker;
use crate::upstream::Upstream;
use crate::upstream_pool::UpstreamError;
use fleetgate_http::breaker::{Admission, BreakerId, Breakers, Outcome};
use fleetgate_http::rate_headers::ceil_secs;
use fleetgate_http::Throttle;
use fleetgate_store::{Keyspace, Store};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// An upstream's throttle and breakers (each `None` when not configured).
#[derive(Default)]
pub struct UpstreamSide {
    pub throttle: Option<Arc<Throttle>>,
    pub breakers: Option<Arc<Breakers>>,
}

impl UpstreamSide {
    /// Neither a throttle nor a breaker: the call goes where balancing chose, at once.
    pub fn is_empty(&self) -> bool {
        self.throttle.is_none() && self.breakers.is_none()
    }

    pub fn build(keyspace: &Keyspace, name: &str, u: &fleetgate_config::UpstreamConfig) -> Result<Self, BuildError> {
        let throttle = match &u.throttle {
            Some(t) => {
                Some(Arc::new(Throttle::new(keyspace, name, t).map_err(|e| {
                    BuildError::new(format!("upstreams.{name}.throttle: {e}"))
                })?))
            }
            None => None,
        };
        // A probe's claim outlives the probe itself (bounded by the request timeout).
        let probe_ttl = u.request_timeout + Duration::from_secs(1);
        let breakers = u
            .breaker
            .as_ref()
            .map(|b| Arc::new(Breakers::new(keyspace, name, b, probe_ttl)));
        Ok(UpstreamSide { throttle, breakers })
    }
}

/// Carried in a proxied response's extensions: how long the throttle held the request (for
/// the access log).
#[derive(Debug, Clone, Copy)]
pub struct ThrottleWaited(pub Duration);

/// The target a request may go to, and its breaker (with whether it is the fleet's probe).
pub struct Admitted {
    pub target: usize,
    pub breaker: Option<(BreakerId, bool)>,
}

/// What the upstream side decided for a call that may go.
pub struct Go {
    pub target: usize,
    pub set_cookie: Option<HeaderValue>,
    pub breaker: Option<(BreakerId, bool)>,
    /// How long the throttle held the call (`None`: no throttle).
    pub throttle_wait: Option<Duration>,
}

/// Before the call: the breaker (moving to another target when `target`'s is open), then
/// the throttle's wait (its permit, if any, pushed into `guards`). `Err`: the answer instead
/// (503 with Retry-After), the upstream not called.
pub async fn before_call(
    worker: &Worker,
    upstream: &Upstream,
    headers: &HeaderMap,
    target: usize,
    set_cookie: Option<HeaderValue>,
    guards: &mut Vec<fleetgate_http::context::Guard>,
) -> Result<Go, Response<GatewayBody>> {
    let admitted = admit(worker, upstream, headers, target).await?;
    // Affinity names the target that answers; a moved request names its new one.
    let set_cookie = match &upstream.affinity {
        Some(a) if admitted.target != target => Some(a.set_cookie(admitted.target)),
        _ => set_cookie,
    };
    let throttle_wait = match &upstream.side.throttle {
        Some(throttle) => match throttle.acquire(&worker.ctx).await {
            Ok(pass) => {
                let waited = pass.waited;
                guards.extend(pass.into_guard());
                Some(waited)
            }
            Err(refusal) => {
                tracing::debug!(upstream = %upstream.name, %refusal, "throttle refused a call");
                // A probe that does not go leaves its claim to expire; say so to no one.
                return Err(refusal.response().map(crate::body::full));
            }
        },
        None => None,
    };
    Ok(Go {
        target: admitted.target,
        set_cookie,
        breaker: admitted.breaker,
        throttle_wait,
    })
}

/// After the call: its outcome to its breaker.
pub async fn after_call(worker: &Worker, upstream: &Upstream, id: &BreakerId, probe: bool, outcome: Option<Outcome>) {
    if let (Some(b), Some(o)) = (&upstream.side.breakers, outcome) {
        b.record(&worker.ctx, id, probe, o).await;
    }
}

/// Asks the breaker of `target` (chosen by the balancing); when it is open and the breaker is
/// per target, another available target whose breaker lets it through. `Err`: every breaker
/// the request could use is open: 503 with Retry-After, the upstream not called.
async fn admit(
    worker: &Worker,
    upstream: &Upstream,
    headers: &HeaderMap,
    target: usize,
) -> Result<Admitted, Response<GatewayBody>> {
    let Some(b) = &upstream.side.breakers else {
        return Ok(Admitted { target, breaker: None });
    };
    let n = upstream.targets.len();
    let candidates = if b.per_target() { n } else { 1 };
    let mut soonest: Option<Duration> = None;
    for i in 0..candidates {
        let t = (target + i) % n;
        if i > 0 && !upstream.is_healthy(t) {
            continue;
        }
        let id = b.identify(headers, &upstream.targets[t].url());
        match b.admit(&worker.ctx, &id).await {
            Admission::Go => return Ok(admitted(t, id, false)),
            Admission::Probe => return Ok(admitted(t, id, true)),
            Admission::Open { retry_after } => {
                soonest = Some(soonest.map_or(retry_after, |s| s.min(retry_after)));
            }
        }
    }
    let retry = ceil_secs(soonest.unwrap_or(Duration::from_secs(1))).max(1);
    let msg = format!(
        "upstream {} is failing: its circuit breaker is open; retry in {retry} s",
        upstream.name
    );
    let mut resp = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "breaker_open",
        &msg,
        &[("upstream", json!(upstream.name)), ("retry_after", json!(retry))],
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
    Err(resp)
}

fn admitted(target: usize, id: BreakerId, probe: bool) -> Admitted {
    Admitted {
        target,
        breaker: Some((id, probe)),
    }
}

/// What an exchange's result means for its breaker: 5xx, 429, timeouts and failed connections
/// fail; a client's own failure (its body broke off or stalled) says nothing about the
/// upstream (`None`).
pub fn outcome<B>(
    result: &Result<Result<Response<B>, UpstreamError>, crate::upstream_pool::TimedOut>,
    upstream: &Upstream,
    client_failed: impl Fn(&hyper::Error) -> bool,
) -> Option<Outcome> {
    let breakers = upstream.side.breakers.as_deref()?;
    match result {
        Err(_) => Some(Outcome::Failure { retry_after: None }),
        Ok(Ok(resp)) => Some(Outcome::of_response(resp.status().as_u16(), resp.headers(), breakers)),
        Ok(Err(UpstreamError::ClientBodyIdle(_))) => None,
        Ok(Err(UpstreamError::Request(e))) if client_failed(e) => None,
        Ok(Err(_)) => Some(Outcome::Failure { retry_after: None }),
    }
}

/// The breakers' listeners (trips and closes from other instances), on the control runtime.
pub fn spawn_listeners(gateway: &crate::gateway::Gateway, store: &Store) -> Vec<tokio::task::JoinHandle<()>> {
    gateway
        .upstreams
        .iter()
        .filter_map(|u| u.side.breakers.clone())
        .map(|b| tokio::spawn(b.run_listener(store.clone())))
        .collect()
}

/// `GET /breakers` (admin): the open breakers of every upstream and their remaining cooldown.
pub fn open_breakers(gateway: &crate::gateway::Gateway) -> serde_json::Value {
    let open: Vec<serde_json::Value> = gateway
        .upstreams
        .iter()
        .filter_map(|u| u.side.breakers.as_ref())
        .flat_map(|b| {
            b.open().into_iter().map(move |(breaker, left)| {
                json!({
                    "upstream": b.upstream(),
                    "breaker": breaker,
                    "remaining_ms": left.as_millis() as u64,
                })
            })
        })
        .collect();
    json!({ "instance": gateway.instance_id, "open": open })
}
