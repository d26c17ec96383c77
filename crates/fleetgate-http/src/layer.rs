//! Any stage (or a pipeline of them) as a tower [`Layer`](tower::Layer), for axum, hyper or any
//! tower service, on any store driver: the same decisions, headers, refusals and failure
//! policies as in the gateway.
//!
//! ```no_run
//! use fleetgate_http::{KeyPart, RateLimitConfig, RateLimits, StageLayer, StoreCtx};
//! use fleetgate_store::{Keyspace, RateLimit, Store};
//! # fn demo(store: Store) -> Result<(), fleetgate_http::StageError> {
//! let limit = RateLimitConfig::new("per-key", vec![KeyPart::Header("x-api-key".into())],
//!     RateLimit::gcra("100/1m").unwrap());
//! let stage = RateLimits::for_route(&Keyspace::new("myapp").unwrap(), "api", &[limit], &[])?;
//! let layer = StageLayer::new(stage, StoreCtx::new(store, "instance-1"), "api");
//! // axum::Router::new().route(...).layer(layer)
//! # Ok(()) }
//! ```
//!
//! The client's address comes from an `axum::extract::ConnectInfo<SocketAddr>` request
//! extension (serve with `into_make_service_with_connect_info`), or a plain `SocketAddr`
//! extension; behind a proxy, [`StageLayer::trusted_proxies`] makes the layer read
//! `X-Forwarded-For` the way the gateway does. A request whose address is unknown is refused
//! with 500 and a log line (counting every such client in one bucket would let one client spend
//! everyone's budget), unless [`StageLayer::unknown_client_as`] names an address for them.
//!
//! Idempotency keys as a layer ([`crate::Idempotency`]): the layer tees the service's response
//! into the store; the request body must be in the request's extensions as a
//! [`BufferedBody`](crate::body_fields::BufferedBody) (read it ahead, up to
//! `max_request_bytes`, in a layer before this one), or a request with a body gets 500.
//!
//! ```no_run
//! use fleetgate_http::{Idempotency, IdempotencyConfig, StageLayer, StoreCtx};
//! use fleetgate_store::{Keyspace, Store};
//! # fn demo(store: Store) {
//! let config = IdempotencyConfig { required: true, ..IdempotencyConfig::default() };
//! let stage = Idempotency::new(&Keyspace::new("myapp").unwrap(), "orders", &config);
//! let layer = StageLayer::new(stage, StoreCtx::new(store, "instance-1"), "orders");
//! // axum::Router::new().route("/orders", post(create)).layer(layer)
//! # }
//! ```
//!
//! For fleet-wide limits that fall back to this instance's share, keep the fleet size current
//! with [`crate::fleet::run_heartbeat`] on the [`StoreCtx`]'s `live_instances`.

use crate::body::{Finish, Finishing, StageBody};
use crate::client_ip::TrustedProxies;
use crate::context::{Completion, RequestCtx};
use crate::idempotency::tee::Tee;
use crate::refusal::json_error;
use crate::stage::{Flow, Stage};
use crate::store_ctx::{StageStore, StoreCtx};
use bytes::Bytes;
use fleetgate_store::Store;
use http::{Request, Response, StatusCode};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

struct Shared<S, D> {
    stage: S,
    store: StoreCtx<D>,
    route: String,
    trusted: TrustedProxies,
    unknown_client: Option<IpAddr>,
}

/// A tower layer running `S` before the inner service, and its response and complete phases
/// after it.
pub struct StageLayer<S, D = Store> {
    shared: Arc<Shared<S, D>>,
}

impl<S, D> Clone for StageLayer<S, D> {
    fn clone(&self) -> Self {
        StageLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Stage<D>, D: StageStore> StageLayer<S, D> {
    /// `stage` on `store`, for requests of the route (or service) named `route` (it appears in
    /// refusal bodies).
    pub fn new(stage: S, store: StoreCtx<D>, route: &str) -> Self {
        StageLayer {
            shared: Arc::new(Shared {
                stage,
                store,
                route: route.to_string(),
                trusted: TrustedProxies::default(),
                unknown_client: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared<S, D>)) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => f(shared),
            // Already cloned: configuration belongs before the layer is used.
            None => tracing::warn!("StageLayer configured after it was cloned; the setting is ignored"),
        }
        self
    }

    /// Peers in these networks are proxies: the client is read from `X-Forwarded-For`.
    pub fn trusted_proxies(self, trusted: TrustedProxies) -> Self {
        self.edit(|s| s.trusted = trusted)
    }

    /// Requests whose address is unknown count as coming from `ip` instead of being refused.
    pub fn unknown_client_as(self, ip: IpAddr) -> Self {
        self.edit(|s| s.unknown_client = Some(ip))
    }
}

impl<Svc, S, D> tower::Layer<Svc> for StageLayer<S, D> {
    type Service = StageService<Svc, S, D>;
    fn layer(&self, inner: Svc) -> Self::Service {
        StageService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`StageLayer`].
pub struct StageService<Svc, S, D = Store> {
    inner: Svc,
    shared: Arc<Shared<S, D>>,
}

impl<Svc: Clone, S, D> Clone for StageService<Svc, S, D> {
    fn clone(&self) -> Self {
        StageService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// The TCP peer of a request, as axum or a plain hyper server records it.
fn peer<B>(req: &Request<B>) -> Option<IpAddr> {
    if let Some(info) = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    req.extensions().get::<SocketAddr>().map(|a| a.ip())
}

impl<Svc, S, D, ReqBody, ResBody> tower::Service<Request<ReqBody>> for StageService<Svc, S, D>
where
    Svc: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send,
    S: Stage<D>,
    D: StageStore,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<StageBody<ResBody>>;
    type Error = Svc::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The readied service handles this request; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some(ip) = peer(&req)
                .map(|p| shared.trusted.client_ip(p, req.headers()))
                .or(shared.unknown_client)
            else {
                tracing::error!(route = %shared.route, "request refused: its client address is unknown (serve with into_make_service_with_connect_info, or set unknown_client_as)");
                let answer = json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "client_unknown",
                    "the service cannot tell which client sent this request",
                    &[],
                );
                let (head, body) = answer.into_parts();
                return Ok(Response::from_parts(
                    head,
                    StageBody::Answer {
                        body: Some(body),
                        finish: None,
                    },
                ));
            };
            let (mut parts, body) = req.into_parts();
            let mut cx = RequestCtx::new(&shared.store, ip, &shared.route);
            let mut request_line = None;
            if S::COMPLETES {
                cx.started = Some(std::time::Instant::now());
                request_line = Some((parts.method.clone(), parts.uri.path().to_string()));
            }
            let mut answered_by_stage = false;
            // Plain calls for the stages that need no wait; a future only from the first
            // that must wait on.
            let flow = match shared.stage.request_sync(&mut cx, &mut parts) {
                Ok(flow) => flow,
                Err(done) => shared.stage.request_from(&mut cx, &mut parts, done).await,
            };
            let mut resp = match flow {
                Flow::Answer(answer) => {
                    answered_by_stage = true;
                    answer.map(|b| StageBody::Answer {
                        body: Some(b),
                        finish: None,
                    })
                }
                Flow::Continue => inner
                    .call(Request::from_parts(parts, body))
                    .await?
                    .map(|b| StageBody::Service {
                        body: Finishing::new(
                            crate::cache::Tee::passthrough(Tee::passthrough(b)),
                            Finish::new(Vec::new(), None),
                        ),
                    }),
            };
            if let Err(done) = shared.stage.response_sync(&mut cx, &mut resp) {
                shared.stage.response_from(&mut cx, &mut resp, done).await;
            }
            let fill = cx.cache_fill.take();
            if let Some(answer) = cx.answer_instead.take() {
                resp = answer.map(|b| StageBody::Answer {
                    body: Some(b),
                    finish: None,
                });
                cx.idempotency = None; // an idempotency claim is released, not completed
            } else if let (Some(fill), StageBody::Service { body }) = (fill, resp.body_mut()) {
                // The cache stores the service's body as it streams.
                body.inner_mut().fill(fill);
            }
            if let (Some(claim), StageBody::Service { body }) = (cx.idempotency.take(), resp.body_mut()) {
                // The response is kept for replays when its body has ended.
                claim.arm(body.inner_mut().inner_mut());
            }
            let complete = request_line.map(|(method, path)| {
                let completion = Completion {
                    status: resp.status().as_u16(),
                    client_ip: cx.client_ip,
                    principal: cx.principal.take(),
                    started: cx.started,
                    body_finished: false,
                    method,
                    path,
                    upstream: None,
                    answered_by_stage,
                    bytes: 0,
                };
                let stage = shared.clone();
                let run: Box<dyn FnOnce(&Completion) + Send> = Box::new(move |done| stage.stage.complete(done));
                (run, completion)
            });
            let finish = Finish::new(std::mem::take(&mut cx.guards), complete);
            match resp.body_mut() {
                StageBody::Service { body } => body.set_finish(finish),
                StageBody::Answer { finish: f, .. } => *f = Some(finish),
            }
            Ok(resp)
        })
    }
}
