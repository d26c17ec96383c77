//! Which target of an upstream a request goes to: the one its affinity cookie names while that
//! one is available, else the upstream's balancing; then, for a retryable request on an
//! upstream with `retries`, another target while connecting fails and the budget allows.

use crate::gateway::Worker;
use crate::retry::{retryable, RetryPolicy};
use crate::upstream::Upstream;
use crate::upstream_pool::UpstreamError;
use fleetgate_http::context::Guard;
use http::request::Parts;
use http::HeaderValue;

/// The target chosen, and what the response needs for it.
pub struct Choice {
    pub target: usize,
    /// `Set-Cookie` for the response, when the request did not already name this target.
    pub set_cookie: Option<HeaderValue>,
}

/// No target could be connected to (after retries, if any): the answer is 502.
pub struct Unreachable {
    pub target: usize,
}

/// Chooses the target for `parts` (see the module documentation). `plain_http1`: the request
/// goes over a pooled HTTP/1.1 connection (not an upgrade, not gRPC), the only kind retried.
/// A least-request upstream's count of requests in flight is pushed into `guards`.
pub async fn choose(
    worker: &Worker,
    idx: usize,
    upstream: &Upstream,
    parts: &Parts,
    plain_http1: bool,
    guards: &mut Vec<Guard>,
) -> Result<Choice, Unreachable> {
    let named = upstream.affinity.as_ref().and_then(|a| a.target_in(&parts.headers));
    let mut target = match named {
        Some(t) if upstream.is_healthy(t) => t,
        _ => upstream.balance(),
    };
    if let Some(retry) = upstream
        .retry
        .as_ref()
        .filter(|_| plain_http1 && retryable(&parts.method))
    {
        // Boxed: only upstreams with retries carry the connect future's state.
        target = crate::boxed_future::boxed(|| connect_with_retries(worker, idx, upstream, retry, target)).await?;
    }
    if let Some(lr) = &upstream.least_request {
        guards.push(Box::new(lr.start(target)));
    }
    let set_cookie = match &upstream.affinity {
        Some(a) if named != Some(target) => Some(a.set_cookie(target)),
        _ => None,
    };
    Ok(Choice { target, set_cookie })
}

/// Connects to `target` (or takes an idle connection to it); while that fails, moves to
/// another available target not yet tried, within `attempts` and the retry budget. The target
/// that connected.
async fn connect_with_retries(
    worker: &Worker,
    idx: usize,
    upstream: &Upstream,
    retry: &RetryPolicy,
    mut target: usize,
) -> Result<usize, Unreachable> {
    retry.request();
    let n = upstream.targets.len();
    let mut tried = vec![false; n];
    let mut attempt = 1;
    loop {
        tried[target] = true;
        let connected = match worker.pools[idx][target].warm().await {
            Ok(()) => true,
            Err(UpstreamError::Connect(e)) => {
                tracing::debug!(upstream = %upstream.name, target = %upstream.targets[target].url(), error = %e, "connect failed");
                upstream.report_connect_failure(target);
                false
            }
            // Anything else is the exchange's business: send the request and let it fail there.
            Err(_) => true,
        };
        if attempt > 1 {
            retry.outcome(connected);
        }
        if connected {
            return Ok(target);
        }
        let next = (1..n)
            .map(|i| (target + i) % n)
            .find(|&i| !tried[i] && upstream.is_healthy(i));
        let Some(next) = next.filter(|_| attempt < retry.attempts) else {
            return Err(Unreachable { target });
        };
        if !retry.try_retry() {
            return Err(Unreachable { target });
        }
        attempt += 1;
        target = next;
    }
}
