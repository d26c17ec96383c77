//! Tower layers: the gateway's rate limits for any tower or axum service, on the same store
//! seam (in-process or Redis), with the same headers, refusals and failure policies.
//!
//! ```no_run
//! use fleetgate::layer::RateLimitLayer;
//! use fleetgate_store::{Keyspace, RateLimit, Store};
//! # fn demo(store: Store) {
//! let layer = RateLimitLayer::new(store, Keyspace::new("myapp").unwrap(), "api", "per-key",
//!     vec![fleetgate_config::KeyPart::Header("x-api-key".into())],
//!     RateLimit::gcra("100/1m").unwrap());
//! // axum::Router::new().route(...).layer(layer)
//! # }
//! ```
//! The client IP for `ip` keys comes from an `axum::extract::ConnectInfo<SocketAddr>` or a plain
//! `SocketAddr` request extension, else 0.0.0.0.

use crate::gateway::rejection_response_as;
use crate::policy::{LimitScope, RateLimiter, StoreCtx};
use crate::ratelimit_headers::RateHeaders;
use crate::telemetry::StoreMetrics;
use fleetgate_config::{FailurePolicy, KeyPart, MissingKey};
use fleetgate_store::{Keyspace, MemoryStore, RateLimit, Store};
use http::{Request, Response};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};

struct Shared {
    limiter: RateLimiter,
    ctx: StoreCtx,
    route: String,
}

/// A tower [`Layer`](tower::Layer) enforcing one rate limit.
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// One limit named `name` under `route` (both appear in keys, headers and metrics), counted
    /// per `key`; cost 1, `on_store_error: local`, `on_missing_key: shared`.
    pub fn new(store: Store, keyspace: Keyspace, route: &str, name: &str, key: Vec<KeyPart>, limit: RateLimit) -> Self {
        Self::with_policies(
            store,
            keyspace,
            route,
            name,
            key,
            limit,
            1,
            FailurePolicy::Local,
            MissingKey::Shared,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn with_policies(
        store: Store,
        keyspace: Keyspace,
        route: &str,
        name: &str,
        key: Vec<KeyPart>,
        limit: RateLimit,
        cost: u64,
        on_store_error: FailurePolicy,
        on_missing_key: MissingKey,
    ) -> Self {
        let config = fleetgate_config::RateLimitConfig {
            name: name.to_string(),
            key,
            limit,
            cost,
            on_store_error,
            on_missing_key,
            ipv6_prefix: 64,
        };
        let limiter = RateLimiter::new(&keyspace, LimitScope::Route(route), &config);
        let ctx = StoreCtx {
            store,
            local: MemoryStore::new(),
            metrics: Arc::new(StoreMetrics::new()),
            live_instances: Arc::new(AtomicU64::new(1)),
        };
        RateLimitLayer {
            shared: Arc::new(Shared {
                limiter,
                ctx,
                route: route.to_string(),
            }),
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    shared: Arc<Shared>,
}

fn client_ip<B>(req: &Request<B>) -> IpAddr {
    if let Some(info) = req.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return info.0.ip();
    }
    req.extensions()
        .get::<SocketAddr>()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for RateLimitService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
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
            let ip = client_ip(&req);
            let (parts, body) = req.into_parts();
            let mut headers = RateHeaders::default();
            let checked = shared
                .limiter
                .check(&shared.ctx, &parts, ip, &shared.route, &mut headers)
                .await;
            let mut resp = match checked {
                Ok(_) => inner.call(Request::from_parts(parts, body)).await?,
                Err(rejection) => rejection_response_as(&shared.route, rejection, ResBody::from),
            };
            headers.write(resp.headers_mut());
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    #[tokio::test]
    async fn limits_a_plain_tower_service() {
        let layer = RateLimitLayer::new(
            Store::Memory(MemoryStore::new()),
            Keyspace::new("lib").unwrap(),
            "api",
            "per-key",
            vec![KeyPart::Header("x-api-key".into())],
            RateLimit::gcra("2/1m").unwrap(),
        );
        let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new("hello".to_string()))
        }));
        let req = || Request::builder().header("x-api-key", "k").body(()).unwrap();
        for remaining in [1, 0] {
            let resp = svc.clone().oneshot(req()).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.body(), "hello");
            assert!(resp.headers()["ratelimit"]
                .to_str()
                .unwrap()
                .contains(&format!("r={remaining}")));
        }
        let resp = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(resp.status(), 429);
        assert!(resp.headers().contains_key("retry-after"));
        assert!(resp.body().contains("\"rate_limited\""));
        let other = Request::builder().header("x-api-key", "other").body(()).unwrap();
        assert_eq!(svc.oneshot(other).await.unwrap().status(), 200);
    }
}
