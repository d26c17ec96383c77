//! The request path: route, limits, then answer or proxy. One `Gateway` is shared by all
//! workers; each worker has its own `Worker` (store connections and upstream client pools).
//!
//! Protocols upstream: HTTP/1.1, except
//! - an HTTP/1.1 upgrade request (WebSocket): its own HTTP/1.1 connection, joined to the
//!   client's after a 101 ([`crate::tunnel`]);
//! - a gRPC request (HTTP/2 from the client, `content-type: application/grpc...`): HTTP/2 with
//!   prior knowledge to the target, on the worker's one multiplexed connection to it, with
//!   `te: trailers` kept and the response's trailers (`grpc-status`) passed back. gRPC exists
//!   only over HTTP/2, so a target that serves it speaks HTTP/2;
//! - an upstream with `protocol: http2`, or an `https://` target that chose `h2` by ALPN under
//!   `protocol: auto`: every request but upgrades over HTTP/2, `:authority` being the client's
//!   Host.

use crate::access_log::{Logged, Record};
use crate::body::{full, json_error, GatewayBody};
use crate::boxed_future::boxed;
use crate::correlation::{TraceContext, X_REQUEST_ID};
use crate::forward_headers::{set_forwarded, strip_hop_by_hop};
use crate::request_head::{self, Refusal};
use crate::route::{Action, Route};
use crate::tunnel::Tunnel;
use crate::upstream::Upstream;
use crate::upstream_pool::{OutboundBody, PoolSettings, TargetPool, UpstreamError};
use fleetgate_http::body::{Finish, Finishing};
use fleetgate_http::{Flow, RequestCtx, Stage, StoreCtx, TrustedProxies};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the request path needs that does not change after start-up.
pub struct Gateway {
    pub instance_id: String,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub trusted: TrustedProxies,
    pub max_body_bytes: u64,
    /// `server.max_header_bytes` when it is below what hyper can enforce itself
    /// ([`request_head::MIN_HYPER_BUF`]); the gateway then counts each head.
    pub header_limit: Option<usize>,
    pub request_timeout: Duration,
    /// Longest wait for the next bytes of a client's request body.
    pub body_idle_timeout: Duration,
    /// How long an upgraded tunnel may move no byte either way (`server.idle_timeout`).
    pub tunnel_idle_timeout: Duration,
    pub access_log: fleetgate_config::AccessLog,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    pub store_url_redacted: String,
    /// Live gateway instances sharing the store (1 until the first heartbeat answers).
    pub live_instances: Arc<std::sync::atomic::AtomicU64>,
    /// The TLS listener's settings (`tls`), when there is one.
    pub tls: Option<crate::tls::server::TlsListener>,
    /// The live events' channel, until the publisher takes it (`None`: events are off, or a
    /// reloaded gateway, which sends into the first one's channel).
    pub events_rx: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<fleetgate_http::events::Event>>>,
    /// The sending side every route's event stage holds, handed on to a reloaded gateway.
    pub events_sink: Option<fleetgate_http::EventSink>,
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
                            t.link.clone(),
                        )
                    })
                    .collect()
            })
            .collect();
        Worker { ctx, pools }
    }
}

/// 400 for a request whose target cannot be put into the upstream's URI.
fn unforwardable_target() -> Response<GatewayBody> {
    json_error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "request target cannot be forwarded",
        &[],
    )
}

impl Gateway {
    /// The route for a checked request: its Host (or, without one, an absolute target's host)
    /// and its normalised path.
    fn route_for(&self, parts: &http::request::Parts) -> Option<&Route> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.host());
        let path = parts.uri.path();
        self.routes.iter().find(|r| r.matches(parts, host, path))
    }

    /// Handles one request end to end, on the snapshot it owns: this is the future hyper boxes
    /// per request, with nothing wrapped around it (each level of async nesting copies the
    /// whole of the future it awaits into its own state). Never fails: every problem becomes a
    /// response, and every response carries the request's `X-Request-Id`.
    pub async fn handle(
        snap: std::sync::Arc<crate::reload::Snapshot>,
        peer: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<GatewayBody>, std::convert::Infallible> {
        let (this, worker) = (&*snap.gateway, &snap.worker);
        let started = Instant::now();
        // Only what the access log needs, captured before the request moves on (nothing when
        // there is no access log). The path as the client sent it.
        let mut access = this.access_log.is_on().then(|| {
            Record::new(
                this.access_log,
                req.method().clone(),
                req.uri().path(),
                req.version(),
                peer,
            )
        });
        let request_id = crate::correlation::request_id(req.headers(), this.trusted.contains(peer.ip()));
        let mut resp = this.serve(worker, peer, req, &request_id, &mut access, started).await;
        if let Some(mut record) = access {
            record.status = resp.status().as_u16();
            record.request_id = request_id.clone();
            record.refused_by = resp
                .extensions()
                .get::<fleetgate_http::refusal::RefusedBy>()
                .map(|r| (r.limit.clone(), r.error));
            record.throttle_wait = resp
                .extensions()
                .get::<crate::upstream_side::ThrottleWaited>()
                .map(|w| w.0);
            record.dedup = resp
                .extensions()
                .get::<fleetgate_http::dedup::DedupRole>()
                .map(|r| r.0.as_str());
            record.ratelimit = resp
                .headers()
                .get(&fleetgate_http::rate_headers::RATELIMIT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            record.cache = resp
                .headers()
                .get(&fleetgate_http::cache::CACHE_STATUS)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
            return Ok(resp.map(|b| Logged::new(b, record).boxed_unsync()));
        }
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        Ok(resp)
    }

    async fn serve(
        &self,
        worker: &Worker,
        peer: SocketAddr,
        req: Request<Incoming>,
        request_id: &HeaderValue,
        access: &mut Option<Box<Record>>,
        started: Instant,
    ) -> Response<GatewayBody> {
        // A known length: no body, or Content-Length. Otherwise hyper read a chunked body.
        let body_length_known = req.body().size_hint().exact().is_some();
        let (mut parts, body) = req.into_parts();
        // Before anything else: refuse what is malformed or ambiguous, and normalise the path
        // so that routing, limits and the upstream all see the same one.
        let checked = request_head::check(&parts, body_length_known, self.header_limit).and_then(|checked| {
            if let Some(path) = &checked.normalized_path {
                parts.uri = with_path(&parts.uri, path)?;
            }
            Ok(checked)
        });
        let checked = match checked {
            Ok(c) => c,
            Err(refusal) => {
                crate::telemetry::request_refused(refusal.kind);
                return refusal.response();
            }
        };
        let Some(route) = self.route_for(&parts) else {
            return json_error(StatusCode::NOT_FOUND, "no_route", "no route matches this request", &[]);
        };
        let ip = self.trusted.client_ip(peer.ip(), &parts.headers);
        if let Some(record) = access.as_deref_mut() {
            record.route = Some(route.name.clone());
            record.client_ip = Some(ip);
            record.bytes_in = content_length(&parts.headers).map(|(len, _)| len);
        }
        // Proxied requests continue the trace upstream; with trace export on, every routed
        // request has its span.
        let proxied = matches!(route.action, Action::Proxy(_));
        let mut trace =
            (proxied || crate::otlp::enabled()).then(|| TraceContext::continue_or_start(&mut parts.headers));
        let span = match &mut trace {
            Some(t) => crate::otlp::start(t, &route.name, &parts.method, parts.uri.path()),
            None => None,
        };
        if let (Some(record), Some(t)) = (access.as_deref_mut(), &trace) {
            record.trace_id = Some(t.trace_id_hex());
        }
        let mut cx = RequestCtx::new(&worker.ctx, ip, &route.name);
        // The route's complete phase (live events) needs the request line and the start.
        let completes = route.pipeline.0.is_some();
        let request_line = completes.then(|| {
            cx.started = Some(started);
            (parts.method.clone(), parts.uri.path().to_string())
        });
        // Key forms that read the body (`json:`, `form:`) find its first bytes in the
        // request's extensions; the proxy sends them on, then the rest.
        let body = match route.read_body_ahead {
            Some(cap) if !body.is_end_stream() => {
                // Boxed: only routes whose keys read the body carry the read's state.
                match boxed(|| crate::client_body::read_prefix(body, cap, self.body_idle_timeout)).await {
                    Ok((buffered, body)) => {
                        parts.extensions.insert(buffered);
                        body
                    }
                    Err(e) => return read_ahead_refusal(e),
                }
            }
            _ => crate::client_body::ClientBody::streaming(body),
        };
        let mut answered_by_stage = false;
        let mut upstream_target = None;
        let mut tunnel = None;
        // The stages that can decide without waiting do so as plain calls; only from the
        // first that must wait on is a future built. Boxed: the stages' futures are large, and
        // inline they would be moved with every future that holds this one (see the note on
        // `proxy` below).
        let flow = match route.pipeline.request_sync(&mut cx, &mut parts) {
            Ok(flow) => flow,
            Err(done) => boxed(|| route.pipeline.request_from(&mut cx, &mut parts, done)).await,
        };
        let mut resp = match flow {
            Flow::Answer(answer) => {
                answered_by_stage = true;
                answer.map(full)
            }
            Flow::Continue => match &route.action {
                Action::Respond { status, body, headers } => {
                    let mut resp = Response::new(full(body.clone()));
                    *resp.status_mut() = *status;
                    resp.headers_mut()
                        .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
                    resp
                }
                Action::Proxy(idx) => {
                    let upstream = &self.upstreams[*idx];
                    let mut upstream_time = None;
                    // Boxed, like the stages: the request's whole future is moved when hyper
                    // stores it, so what stays inline is what every request pays to copy.
                    let (resp, target) = boxed(|| {
                        self.proxy(
                            worker,
                            route,
                            *idx,
                            upstream,
                            parts,
                            body,
                            peer,
                            ip,
                            checked.chunked,
                            &mut tunnel,
                            (request_id, trace.as_ref()),
                            access.is_some().then_some(&mut upstream_time),
                            &mut cx.guards,
                        )
                    })
                    .await;
                    if completes {
                        upstream_target = target.map(|t| upstream.targets[t].url());
                    }
                    if let Some(record) = access.as_deref_mut() {
                        record.upstream = Some(upstream.name.clone());
                        record.target = match &upstream_target {
                            Some(url) => Some(url.clone()),
                            None => target.map(|t| upstream.targets[t].url()),
                        };
                        record.upstream_time = upstream_time;
                    }
                    resp
                }
            },
        };
        if let Err(done) = route.pipeline.response_sync(&mut cx, &mut resp) {
            boxed(|| route.pipeline.response_from(&mut cx, &mut resp, done)).await;
        }
        let fill = cx.cache_fill.take();
        if let Some(answer) = cx.answer_instead.take() {
            // A way-out stage answers instead (a failed settlement): the upstream's body is
            // dropped, and not stored by the cache either.
            resp = answer.map(full);
            cx.idempotency = None; // and an idempotency claim is released, not completed
        } else if let Some(fill) = fill {
            // The cache stores this body as it streams to the client.
            resp = resp.map(|b| fill.tee(b).boxed_unsync());
        }
        if let Some(claim) = cx.idempotency.take() {
            // The response is stored for replays when its body has ended (a bounded tee).
            resp = resp.map(|b| claim.tee(b).boxed_unsync());
        }
        if let Some(dedup) = cx.dedup.take() {
            // The leader's body is teed to its followers and the store; a follower's is live.
            resp = dedup.respond(resp);
        }
        let status = resp.status();
        route.metrics.request(status.as_u16(), started.elapsed());
        if let Some(span) = span {
            let upstream = match route.action {
                Action::Proxy(idx) => Some(self.upstreams[idx].name.as_str()),
                Action::Respond { .. } => None,
            };
            span.end(status.as_u16(), request_id, upstream);
        }
        let complete = request_line.map(|(method, path)| {
            let completion = fleetgate_http::Completion {
                status: status.as_u16(),
                client_ip: ip,
                principal: cx.principal.take(),
                started: cx.started,
                body_finished: false,
                method,
                path,
                upstream: upstream_target.clone(),
                answered_by_stage,
                bytes: 0,
            };
            let pipeline = route.pipeline.clone();
            let run: Box<dyn FnOnce(&fleetgate_http::Completion) + Send> =
                Box::new(move |done| Stage::<fleetgate_store::Store>::complete(&*pipeline, done));
            (run, completion)
        });
        if let Some(tunnel) = tunnel {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                // The permits are held by the tunnel until it closes; its event is the 101.
                let guards = std::mem::take(&mut cx.guards);
                if let Some((run, done)) = complete {
                    run(&done);
                }
                tokio::spawn(tunnel.run(guards, self.tunnel_idle_timeout));
                return resp;
            }
        }
        // Permits are held, and complete phases run, when the body is over.
        if cx.guards.is_empty() && complete.is_none() {
            resp
        } else {
            let finish = Finish::new(std::mem::take(&mut cx.guards), complete);
            resp.map(|b| Finishing::new(b, finish).boxed_unsync())
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
        body: crate::client_body::ClientBody,
        peer: SocketAddr,
        ip: std::net::IpAddr,
        chunked: bool,
        tunnel: &mut Option<Tunnel>,
        (request_id, trace): (&HeaderValue, Option<&TraceContext>),
        upstream_time: Option<&mut Option<Duration>>,
        guards: &mut Vec<fleetgate_http::context::Guard>,
    ) -> (Response<GatewayBody>, Option<usize>) {
        let content_length = content_length(&parts.headers);
        if let Some((len, zero_padded)) = content_length {
            if zero_padded {
                // `005` is 5; the upstream gets the plain spelling.
                parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
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
        let pq = parts.uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        let path = route.upstream_path(pq);
        // Origin-form (path and query only): the connection already names the target. A
        // request that came in origin-form and keeps its path keeps its URI as it is (`None`):
        // building it again would parse and copy the same bytes.
        let kept = path.as_ref() == pq
            && parts.uri.scheme().is_none()
            && parts.uri.authority().is_none()
            && parts.uri.path_and_query().is_some();
        let uri = match kept {
            true => None,
            false => match Uri::builder().path_and_query(path.as_ref()).build() {
                Ok(uri) => Some(uri),
                Err(_) => return (unforwardable_target(), None),
            },
        };
        // The host the client asked for: its Host, or an HTTP/1.0 absolute target's authority.
        let sent_host = parts.headers.get(header::HOST);
        let has_host = sent_host.is_some();
        let client_host = match sent_host {
            Some(h) => Some(h.clone()),
            None => parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        // Upgrades are HTTP/1.1 only (HTTP/2 has no Upgrade); gRPC is HTTP/2 only.
        let upgrade = match parts.version {
            http::Version::HTTP_11 => crate::tunnel::requested(&parts.headers),
            _ => None,
        };
        let grpc = parts.version == http::Version::HTTP_2 && is_grpc(&parts.headers);
        let choice =
            crate::target_choice::choose(worker, idx, upstream, &parts, upgrade.is_none() && !grpc, guards).await;
        let (t, set_cookie) = match choice {
            Ok(c) => (c.target, c.set_cookie),
            Err(unreachable) => {
                let msg = format!("upstream {} is unreachable", upstream.name);
                return (
                    upstream_failure(json_error(StatusCode::BAD_GATEWAY, "upstream_unreachable", &msg, &[])),
                    Some(unreachable.target),
                );
            }
        };
        // The upstream side: the breaker (which target, if any), then the throttle (when).
        // Without a breaker or throttle, nothing to wait for; with one, boxed (their store
        // calls' futures would make every request's proxy future larger).
        let side = if upstream.side.is_empty() {
            Ok(crate::upstream_side::Go {
                target: t,
                set_cookie,
                breaker: None,
                throttle_wait: None,
            })
        } else {
            boxed(|| crate::upstream_side::before_call(worker, upstream, &parts.headers, t, set_cookie, guards)).await
        };
        let (t, set_cookie, breaker, throttle_wait) = match side {
            Ok(go) => (go.target, go.set_cookie, go.breaker, go.throttle_wait),
            Err(answer) => return (answer, Some(t)),
        };
        let pool = &worker.pools[idx][t];
        // HTTP/2 to the target: for gRPC always; otherwise as the upstream's `protocol` (and,
        // under `auto`, an https target's ALPN) says. Upgrades stay HTTP/1.1.
        let h2 = grpc
            || (upgrade.is_none()
                && match pool.h2_known() {
                    Some(known) => known,
                    None => boxed(|| pool.learn_protocol()).await,
                });
        let te_trailers = grpc
            && parts
                .headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip_hop_by_hop(&mut parts.headers);
        let client_upgrade = match &upgrade {
            Some(protocol) => {
                crate::tunnel::restore_headers(&mut parts.headers, protocol.clone());
                parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
            }
            None => None,
        };
        if te_trailers {
            // gRPC servers expect it; it is the one TE value HTTP/2 allows.
            parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if chunked && !h2 {
            // Transfer-Encoding went with the hop-by-hop headers. Said again, so the body is
            // sent as it was read: without it, hyper sends a GET's unknown-length body as empty.
            parts
                .headers
                .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        if !has_host && !h2 {
            // HTTP/1.0 clients may leave Host out; HTTP/1.1 upstreams need one. (`Connection`
            // cannot remove a Host that was sent.)
            let host = client_host
                .clone()
                .or_else(|| HeaderValue::from_str(upstream.targets[t].authority.as_str()).ok());
            if let Some(h) = host {
                parts.headers.insert(header::HOST, h);
            }
        }
        // HTTP/2 names the authority in `:authority`: the client's, else the target's.
        let h2_authority = h2.then(|| {
            client_host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .unwrap_or_else(|| upstream.targets[t].authority.clone())
        });
        set_forwarded(
            &mut parts.headers,
            self.trusted.contains(peer.ip()),
            peer.ip(),
            ip,
            client_host,
            parts.extensions.get::<crate::tls::ArrivedOverTls>().is_some(),
        );
        // After the hop-by-hop headers went: a client's `Connection` cannot remove these.
        parts.headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        if let Some(t) = trace {
            t.forward(&mut parts.headers);
        }
        if let Some(authority) = h2_authority {
            parts.headers.remove(header::HOST);
            let absolute = Uri::builder()
                .scheme(upstream.targets[t].scheme.clone())
                .authority(authority)
                .path_and_query(path.as_ref())
                .build();
            match absolute {
                Ok(u) => parts.uri = u,
                Err(_) => return (unforwardable_target(), None),
            }
            parts.version = http::Version::HTTP_2;
        } else {
            if let Some(uri) = uri {
                parts.uri = uri;
            }
            parts.version = http::Version::HTTP_11;
        }
        // Upstream login: the credential onto the request, and what a retry after a refresh needs.
        // An upgrade gets the credential but is not sent again.
        let (body, login_retry) = match upstream.login.as_deref() {
            Some(login) => {
                let read_bound = self.body_idle_timeout;
                // Boxed, as the rest of the login's path: only upstreams with a login carry it.
                match boxed(|| {
                    crate::upstream_login::prepare(login, worker, idx, upstream, &mut parts, body, read_bound)
                })
                .await
                {
                    Ok((body, retry)) => (body, retry.filter(|_| client_upgrade.is_none())),
                    Err(answer) => return (answer, None),
                }
            }
            None => (OutboundBody::new(body), None),
        };
        let req = Request::from_parts(parts, body);
        let timeout = upstream.request_timeout.min(self.request_timeout);
        let sent_at = upstream_time.is_some().then(Instant::now);
        let result = if let Some(client_side) = client_upgrade {
            tokio::time::timeout(timeout, async {
                // Boxed, here and for HTTP/2: the rare paths' futures (with their handshakes)
                // would otherwise make every request's future, moved several times, larger.
                let mut resp = boxed(|| pool.send_upgrade(req)).await?;
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    *tunnel = Some(Tunnel {
                        client: client_side,
                        upstream: hyper::upgrade::on(&mut resp),
                    });
                } else {
                    crate::telemetry::upgrade("refused");
                    tracing::info!(upstream = %upstream.name, status = resp.status().as_u16(), "upstream refused an upgrade; its answer goes to the client");
                }
                Ok(resp.map(|b| b.map_err(crate::body::BoxError::from).boxed_unsync()))
            })
            .await
            .map_err(|_| crate::upstream_pool::TimedOut)
        } else if h2 {
            tokio::time::timeout(timeout, async {
                Ok(boxed(|| pool.send_h2(req)).await?.map(BodyExt::boxed_unsync))
            })
            .await
            .map_err(|_| crate::upstream_pool::TimedOut)
        } else {
            crate::upstream_pool::within!(timeout, pool.send(req))
                .map(|r| r.map(|resp| resp.map(BodyExt::boxed_unsync)))
        };
        let result = match (login_retry, upstream.login.as_deref()) {
            (Some(retry), Some(login)) => {
                let send_again = |req: Request<OutboundBody>| async move {
                    tokio::time::timeout(timeout, async move {
                        Ok(match h2 {
                            true => boxed(|| pool.send_h2(req)).await?.map(BodyExt::boxed_unsync),
                            false => pool.send(req).await?.map(BodyExt::boxed_unsync),
                        })
                    })
                    .await
                    .map_err(|_| crate::upstream_pool::TimedOut)
                };
                boxed(|| crate::upstream_login::after(login, retry, worker, idx, upstream, result, send_again)).await
            }
            _ => result,
        };
        if let (Some(out), Some(at)) = (upstream_time, sent_at) {
            *out = Some(at.elapsed());
        }
        if upgrade.is_some() && !matches!(result, Ok(Ok(_))) {
            crate::telemetry::upgrade("failed");
        }
        if let Some((id, probe)) = &breaker {
            let outcome = crate::upstream_side::outcome(&result, upstream, client_body_failed);
            boxed(|| crate::upstream_side::after_call(worker, upstream, id, *probe, outcome)).await;
        }
        let target_url = Some(t);
        match result {
            Err(_) => {
                crate::telemetry::upstream_error(&upstream.name, "timeout");
                let msg = format!(
                    "upstream {} did not answer within {} ms",
                    upstream.name,
                    timeout.as_millis()
                );
                (
                    upstream_failure(json_error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", &msg, &[])),
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
                crate::telemetry::upstream_error(&upstream.name, "stalled");
                let msg = format!(
                    "upstream {} read nothing of the request for {} ms",
                    upstream.name,
                    bound.as_millis()
                );
                (
                    upstream_failure(json_error(StatusCode::GATEWAY_TIMEOUT, "upstream_stalled", &msg, &[])),
                    target_url,
                )
            }
            Ok(Err(e)) => {
                let too_large = match &e {
                    UpstreamError::Request(err) => error_chain_has::<crate::upstream_pool::BodyTooLarge>(err),
                    _ => false,
                };
                if let UpstreamError::Request(err) = &e {
                    if client_body_failed(err) {
                        // The client's body broke off or was malformed (a bad chunk) after
                        // the head went upstream: the client's fault, and the upstream never
                        // got the request whole.
                        tracing::debug!(error = %e, "request body from the client failed");
                        crate::telemetry::request_refused("bad_request_body");
                        let mut resp = json_error(
                            StatusCode::BAD_REQUEST,
                            "bad_request_body",
                            "the request body could not be read (malformed chunked encoding, or the body ended early)",
                            &[],
                        );
                        resp.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        return (resp, target_url);
                    }
                }
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
                crate::telemetry::upstream_error(&upstream.name, upstream_error_reason(&e));
                tracing::debug!(upstream = %upstream.name, error = %e, "upstream request failed");
                let msg = format!("upstream {} is unreachable", upstream.name);
                (
                    upstream_failure(json_error(StatusCode::BAD_GATEWAY, "upstream_unreachable", &msg, &[])),
                    target_url,
                )
            }
            Ok(Ok(resp)) => {
                upstream.report_success(t);
                let (mut parts, body) = resp.into_parts();
                let switched = match parts.status {
                    StatusCode::SWITCHING_PROTOCOLS if tunnel.is_some() => parts.headers.get(header::UPGRADE).cloned(),
                    _ => None,
                };
                strip_hop_by_hop(&mut parts.headers);
                if let Some(protocol) = switched {
                    crate::tunnel::restore_headers(&mut parts.headers, protocol);
                }
                if let Some(cookie) = set_cookie {
                    parts.headers.append(header::SET_COOKIE, cookie);
                }
                if let Some(waited) = throttle_wait {
                    parts.extensions.insert(crate::upstream_side::ThrottleWaited(waited));
                }
                (Response::from_parts(parts, body), target_url)
            }
        }
    }
}

/// A response the gateway makes because the upstream gave none: marked so that the cache may
/// serve a stale entry instead (RFC 9111 section 4.2.4).
fn upstream_failure(mut resp: Response<GatewayBody>) -> Response<GatewayBody> {
    resp.extensions_mut().insert(fleetgate_http::cache::UpstreamFailed);
    resp
}

/// The answer to a request whose body could not be read ahead for the pipeline.
fn read_ahead_refusal(e: crate::client_body::ReadAheadError) -> Response<GatewayBody> {
    use crate::client_body::ReadAheadError;
    let mut resp = match e {
        ReadAheadError::Idle(bound) => {
            let msg = format!("no request body bytes arrived for {} ms", bound.as_millis());
            json_error(StatusCode::REQUEST_TIMEOUT, "request_body_timeout", &msg, &[])
        }
        ReadAheadError::Client(e) => {
            tracing::debug!(error = %e, "request body from the client failed");
            crate::telemetry::request_refused("bad_request_body");
            json_error(
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                "the request body could not be read (malformed chunked encoding, or the body ended early)",
                &[],
            )
        }
    };
    // The rest of the body is not going to be read.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The request's `Content-Length` (hyper has checked it: one value, digits only), and whether
/// it was written with leading zeros.
fn content_length(headers: &http::HeaderMap) -> Option<(u64, bool)> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| {
        let digits = v.to_str().ok()?;
        Some((digits.parse::<u64>().ok()?, digits.len() > 1 && digits.starts_with('0')))
    })
}

/// The `reason` label of `fleetgate_upstream_errors_total` for a failed exchange: `connect`
/// (refused, unreachable, connect timeout), `timeout`, `reset` (the connection closed or broke
/// before the response was whole), `protocol` (an unreadable response), `other`.
fn upstream_error_reason(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Connect(_) => "connect",
        UpstreamError::UpstreamStalled(_) => "stalled",
        UpstreamError::ClientBodyIdle(_) => "client_body",
        UpstreamError::Request(err) if err.is_timeout() => "timeout",
        UpstreamError::Request(err) if err.is_parse() || err.is_parse_status() => "protocol",
        UpstreamError::Request(err) if err.is_incomplete_message() || err.is_closed() || err.is_canceled() => "reset",
        UpstreamError::Request(err) if error_chain_has::<std::io::Error>(err) => "reset",
        UpstreamError::Request(_) => "other",
    }
}

/// Whether the request is gRPC (`application/grpc`, `application/grpc+proto`, ...).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// `uri` with its path replaced by `path` (already normal) and its query kept.
fn with_path(uri: &Uri, path: &str) -> Result<Uri, Refusal> {
    let mut pq = String::with_capacity(path.len() + uri.query().map_or(0, |q| q.len() + 1));
    pq.push_str(path);
    if let Some(q) = uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    let mut b = Uri::builder();
    if let Some(s) = uri.scheme() {
        b = b.scheme(s.clone());
    }
    if let Some(a) = uri.authority() {
        b = b.authority(a.clone());
    }
    b.path_and_query(pq).build().map_err(|_| Refusal {
        status: StatusCode::BAD_REQUEST,
        kind: "bad_target",
        message: "the normalised request target is not a valid URI".into(),
    })
}

/// Whether a request to the upstream failed because the client's body did: hyper reports the
/// body's own error as the cause, and the only `hyper::Error` a request body can carry is the
/// one the server side raised while reading the client.
fn client_body_failed(e: &hyper::Error) -> bool {
    std::error::Error::source(e).is_some_and(error_chain_has::<hyper::Error>)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_is_recognised_by_its_content_type() {
        let with = |ct: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC;charset=utf-8"));
        assert!(!with("application/grpc-web"), "gRPC-Web runs over HTTP/1.1 too");
        assert!(!with("application/json"));
        assert!(!is_grpc(&http::HeaderMap::new()));
    }
}
