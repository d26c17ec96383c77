//! The request path: route, limits, then answer or proxy. One `Gateway` is shared by all
//! workers; each worker has its own `Worker` (store connections and upstream client pools).

use crate::body::{full, json_error, json_error_as, GatewayBody, Guarded};
use crate::client_ip::TrustedProxies;
use crate::policy::{PermitGuard, Rejection, StoreCtx};
use crate::ratelimit_headers::{ceil_secs, RateHeaders};
use crate::route::{Action, Route};
use crate::upstream::Upstream;
use crate::upstream_pool::{OutboundBody, PoolSettings, TargetPool, UpstreamError};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the request path needs that does not change after start-up.
pub struct Gateway {
    pub instance_id: String,
    pub routes: Vec<Route>,
    pub global_limits: Vec<crate::policy::RateLimiter>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub trusted: TrustedProxies,
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    /// Longest wait for the next bytes of a client's request body.
    pub body_idle_timeout: Duration,
    pub access_log: bool,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    pub store_url_redacted: String,
    /// Live gateway instances sharing the store (1 until the first heartbeat answers).
    pub live_instances: Arc<std::sync::atomic::AtomicU64>,
}

/// Per-worker state: store handles and, per upstream target, a pool of keep-alive connections.
pub struct Worker {
    pub ctx: StoreCtx,
    /// `pools[upstream][target]`.
    pub pools: Vec<Vec<Arc<TargetPool>>>,
}

impl Worker {
    pub fn new(gateway: &Gateway, ctx: StoreCtx) -> Self {
        let pools = gateway
            .upstreams
            .iter()
            .map(|u| {
                u.targets
                    .iter()
                    .map(|t| {
                        TargetPool::new(
                            t.authority.to_string(),
                            PoolSettings::for_upstream(u, gateway.body_idle_timeout, gateway.max_body_bytes),
                        )
                    })
                    .collect()
            })
            .collect();
        Worker { ctx, pools }
    }
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded in either direction.
const HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Removes the hop-by-hop headers and any header that `Connection` names. One pass over the
/// names when there are none (the common case for requests); no allocation unless `Connection`
/// names a header other than the usual `keep-alive` and `close` options (the common case for
/// responses).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',').map(str::trim) {
            if token.is_empty() || token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                listed.push(name);
            }
        }
    }
    // Then the hop-by-hop names themselves: only those present (usually just `Connection`).
    listed.extend(headers.keys().filter(|n| is_hop_by_hop(n)).cloned());
    for name in listed {
        headers.remove(name);
    }
}

impl Gateway {
    fn route_for(&self, parts: &http::request::Parts) -> Option<&Route> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.host());
        let path = parts.uri.path();
        self.routes.iter().find(|r| r.matches(&parts.method, host, path))
    }

    /// Handles one request end to end. Never fails: every problem becomes a response.
    pub async fn handle(&self, worker: &Worker, peer: SocketAddr, req: Request<Incoming>) -> Response<GatewayBody> {
        let (parts, body) = req.into_parts();
        // Only what the access log needs, captured before the request moves on (and no clock
        // read when there is no access log).
        let access = self
            .access_log
            .then(|| (Instant::now(), parts.method.clone(), parts.uri.path().to_string()));
        let Some(route) = self.route_for(&parts) else {
            let resp = json_error(StatusCode::NOT_FOUND, "no_route", "no route matches this request", &[]);
            self.log(access, None, peer, resp.status(), None);
            return resp;
        };
        let ip = self.trusted.client_ip(peer.ip(), &parts.headers);
        let mut rate_headers = RateHeaders::default();
        let mut guards: Vec<PermitGuard> = Vec::new();
        let mut upstream_target = None;
        let outcome = async {
            for limiter in self.global_limits.iter().chain(route.rate_limits.iter()) {
                limiter
                    .check(&worker.ctx, &parts, ip, &route.name, &mut rate_headers)
                    .await?;
            }
            for limiter in &route.concurrency_limits {
                if let Some(g) = limiter
                    .acquire(&worker.ctx, &self.instance_id, &parts, ip, &route.name)
                    .await?
                {
                    guards.push(g);
                }
            }
            Ok::<(), Rejection>(())
        }
        .await;
        let mut resp = match outcome {
            Err(rejection) => rejection_response(&route.name, rejection),
            Ok(()) => match &route.action {
                Action::Respond { status, body, headers } => {
                    let mut resp = Response::new(full(body.clone()));
                    *resp.status_mut() = *status;
                    resp.headers_mut()
                        .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
                    resp
                }
                Action::Proxy(idx) => {
                    let upstream = &self.upstreams[*idx];
                    let (resp, target) = self.proxy(worker, route, *idx, upstream, parts, body, peer, ip).await;
                    if access.is_some() {
                        upstream_target = target.map(|t| upstream.targets[t].url());
                    }
                    resp
                }
            },
        };
        rate_headers.write(resp.headers_mut());
        let status = resp.status();
        route.metrics.request(status.as_u16());
        self.log(access, Some(&route.name), peer, status, upstream_target);
        if guards.is_empty() {
            resp
        } else {
            resp.map(|b| Guarded::new(b, guards).boxed_unsync())
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn proxy(
        &self,
        worker: &Worker,
        route: &Route,
        idx: usize,
        upstream: &Upstream,
        mut parts: http::request::Parts,
        body: Incoming,
        peer: SocketAddr,
        ip: std::net::IpAddr,
    ) -> (Response<GatewayBody>, Option<usize>) {
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > self.max_body_bytes {
                let msg = format!(
                    "request body of {len} bytes exceeds the limit of {} bytes",
                    self.max_body_bytes
                );
                return (
                    json_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &msg, &[]),
                    None,
                );
            }
        }
        let t = upstream.pick();
        let pq = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        let path = route.upstream_path(pq);
        // Origin-form (path and query only): the connection already names the target.
        let uri = Uri::builder().path_and_query(path.as_ref()).build();
        let Ok(uri) = uri else {
            return (
                json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "request target cannot be forwarded",
                    &[],
                ),
                None,
            );
        };
        let original_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        self.set_forwarded(&mut parts.headers, peer, ip, original_host);
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        let body = OutboundBody::new(body);
        let req = Request::from_parts(parts, body);
        let timeout = upstream.request_timeout.min(self.request_timeout);
        let result = tokio::time::timeout(timeout, worker.pools[idx][t].send(req)).await;
        let target_url = Some(t);
        match result {
            Err(_) => {
                let msg = format!(
                    "upstream {} did not answer within {} ms",
                    upstream.name,
                    timeout.as_millis()
                );
                (
                    json_error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", &msg, &[]),
                    target_url,
                )
            }
            Ok(Err(UpstreamError::ClientBodyIdle(bound))) => {
                let msg = format!("no request body bytes arrived for {} ms", bound.as_millis());
                let mut resp = json_error(StatusCode::REQUEST_TIMEOUT, "request_body_timeout", &msg, &[]);
                // The rest of the body is not going to be read.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                (resp, target_url)
            }
            Ok(Err(UpstreamError::UpstreamStalled(bound))) => {
                let msg = format!(
                    "upstream {} read nothing of the request for {} ms",
                    upstream.name,
                    bound.as_millis()
                );
                (
                    json_error(StatusCode::GATEWAY_TIMEOUT, "upstream_stalled", &msg, &[]),
                    target_url,
                )
            }
            Ok(Err(e)) => {
                let too_large = match &e {
                    UpstreamError::Request(err) => error_chain_has::<crate::upstream_pool::BodyTooLarge>(err),
                    _ => false,
                };
                if too_large {
                    let msg = format!("request body exceeds the limit of {} bytes", self.max_body_bytes);
                    return (
                        json_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &msg, &[]),
                        target_url,
                    );
                }
                if matches!(e, UpstreamError::Connect(_)) {
                    upstream.report_connect_failure(t);
                }
                tracing::debug!(upstream = %upstream.name, error = %e, "upstream request failed");
                let msg = format!("upstream {} is unreachable", upstream.name);
                (
                    json_error(StatusCode::BAD_GATEWAY, "upstream_unreachable", &msg, &[]),
                    target_url,
                )
            }
            Ok(Ok(resp)) => {
                upstream.report_success(t);
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = body.boxed_unsync();
                (Response::from_parts(parts, body), target_url)
            }
        }
    }

    fn set_forwarded(
        &self,
        headers: &mut HeaderMap,
        peer: SocketAddr,
        client: std::net::IpAddr,
        host: Option<HeaderValue>,
    ) {
        let trusted = self.trusted.contains(peer.ip());
        let xff = match (trusted, headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok())) {
            (true, Some(prior)) => HeaderValue::from_str(&format!("{prior}, {}", peer.ip())).ok(),
            _ => Some(ip_header_value(client)),
        };
        if let Some(v) = xff {
            headers.insert(&X_FORWARDED_FOR, v);
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            if let Some(h) = host {
                headers.insert(&X_FORWARDED_HOST, h);
            }
        }
    }

    fn log(
        &self,
        access: Option<(Instant, http::Method, String)>,
        route: Option<&str>,
        peer: SocketAddr,
        status: StatusCode,
        upstream: Option<String>,
    ) {
        if let Some((started, method, path)) = access {
            tracing::info!(
                target: "fleetgate::access",
                method = %method,
                path = %path,
                status = status.as_u16(),
                route = route.unwrap_or("-"),
                peer = %peer,
                upstream = upstream.as_deref().unwrap_or("-"),
                micros = started.elapsed().as_micros() as u64,
            );
        }
    }
}

/// An address as a header value, formatted without `fmt` for IPv4 (the common case).
fn ip_header_value(ip: std::net::IpAddr) -> HeaderValue {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut out = Vec::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
            HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).expect("digits and dots are a valid header value")
        }
        v6 => HeaderValue::from_str(&v6.to_string()).expect("an IPv6 address is a valid header value"),
    }
}

fn error_chain_has<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn rejection_response(route: &str, rejection: Rejection) -> Response<GatewayBody> {
    rejection_response_as(route, rejection, full)
}

/// The response for a refused request (429, 503 or 400 with a JSON body), with any body type.
pub fn rejection_response_as<B>(route: &str, rejection: Rejection, make: impl FnOnce(String) -> B) -> Response<B> {
    let ids = |limit: &str| [("route", json!(route)), ("limit", json!(limit))];
    match rejection {
        Rejection::Limited { limit, decision } => {
            let retry = ceil_secs(decision.retry_after).max(1);
            let msg = format!("rate limit {limit} exceeded; retry in {retry} s");
            let [r, l] = ids(&limit);
            let mut resp = json_error_as(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                &msg,
                &[r, l, ("retry_after", json!(retry))],
                make,
            );
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
            resp
        }
        Rejection::Concurrency { limit, max } => {
            let msg = format!("concurrency limit {limit} reached ({max} in flight)");
            let mut resp = json_error_as(
                StatusCode::TOO_MANY_REQUESTS,
                "concurrency_limited",
                &msg,
                &ids(&limit),
                make,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
        Rejection::StoreDown { limit } => {
            let msg = format!("limit {limit} cannot be checked: the store is unavailable and its policy is closed");
            json_error_as(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &msg,
                &ids(&limit),
                make,
            )
        }
        Rejection::MissingKey { limit, what } => {
            let msg = format!("limit {limit} needs {what}, which the request lacks");
            json_error_as(StatusCode::BAD_REQUEST, "missing_key", &msg, &ids(&limit), make)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret , close"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("trailer", "x-t"),
            ("content-type", "text/plain"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn leaves_end_to_end_headers_alone() {
        let mut h = map(&[("content-type", "text/plain"), ("x-forwarded-for", "10.0.0.1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn formats_addresses_for_x_forwarded_for() {
        assert_eq!(ip_header_value("192.0.2.1".parse().unwrap()), "192.0.2.1");
        assert_eq!(ip_header_value("0.0.0.0".parse().unwrap()), "0.0.0.0");
        assert_eq!(ip_header_value("255.255.255.255".parse().unwrap()), "255.255.255.255");
        assert_eq!(ip_header_value("2001:db8::1".parse().unwrap()), "2001:db8::1");
    }
}
