//! The throttle as a tower layer for outbound clients: wrap a hyper, reqwest or any tower
//! client service, and every call waits for its fleet-wide slot before it is sent.
//!
//! ```
//! use fleetgate_http::throttle::{Throttle, ThrottleConfig, ThrottleLayer};
//! use fleetgate_http::StoreCtx;
//! use fleetgate_store::{Keyspace, MemoryStore};
//! use std::sync::Arc;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // One cursor for every instance that shares the store (a RedisStore in production).
//! let config = ThrottleConfig::new("5/s".parse().unwrap());
//! let throttle = Throttle::new(&Keyspace::new("myapp").unwrap(), "metered-api", &config).unwrap();
//! let ctx = StoreCtx::new(MemoryStore::new(), "instance-1");
//! let client = tower::service_fn(|req: http::Request<()>| async move {
//!     // Here the real call: hyper_util's Client, reqwest, ...
//!     Ok::<_, std::convert::Infallible>(format!("called {}", req.uri()))
//! });
//! let mut paced = ThrottleLayer::new(Arc::new(throttle), ctx).layer(client);
//! let started = std::time::Instant::now();
//! for _ in 0..3 {
//!     let req = http::Request::get("http://api.example/v1").body(()).unwrap();
//!     let answer = paced.ready().await.unwrap().call(req).await.unwrap();
//!     assert_eq!(answer, "called http://api.example/v1");
//! }
//! // 5/s with burst 1: the calls went 200 ms apart.
//! assert!(started.elapsed() >= std::time::Duration::from_millis(390));
//! # }
//! ```
//!
//! A call refused because its wait would exceed `max_wait` fails with
//! [`ThrottleError::Refused`] (its [`response`](super::ThrottleRefusal::response) is the 503 the
//! gateway gives). A concurrency permit is held until the inner service's future resolves.

use super::{Throttle, ThrottleRefusal};
use crate::store_ctx::{StageStore, StoreCtx};
use fleetgate_store::Store;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Wraps a service so that each call first waits for the throttle.
pub struct ThrottleLayer<D = Store> {
    throttle: Arc<Throttle>,
    ctx: StoreCtx<D>,
}

impl<D: Clone> Clone for ThrottleLayer<D> {
    fn clone(&self) -> Self {
        ThrottleLayer {
            throttle: self.throttle.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

impl<D: StageStore> ThrottleLayer<D> {
    pub fn new(throttle: Arc<Throttle>, ctx: StoreCtx<D>) -> Self {
        ThrottleLayer { throttle, ctx }
    }
}

impl<S, D: StageStore> tower::Layer<S> for ThrottleLayer<D> {
    type Service = ThrottleService<S, D>;
    fn layer(&self, inner: S) -> Self::Service {
        ThrottleService {
            inner,
            throttle: self.throttle.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

/// A service whose calls wait for the throttle (see [`ThrottleLayer`]).
pub struct ThrottleService<S, D = Store> {
    inner: S,
    throttle: Arc<Throttle>,
    ctx: StoreCtx<D>,
}

impl<S: Clone, D: Clone> Clone for ThrottleService<S, D> {
    fn clone(&self) -> Self {
        ThrottleService {
            inner: self.inner.clone(),
            throttle: self.throttle.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

/// A throttled call's error: refused by the throttle, or the inner service's own.
#[derive(Debug)]
pub enum ThrottleError<E> {
    Refused(ThrottleRefusal),
    Inner(E),
}

impl<E: std::fmt::Display> std::fmt::Display for ThrottleError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThrottleError::Refused(r) => r.fmt(f),
            ThrottleError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ThrottleError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ThrottleError::Refused(r) => Some(r),
            ThrottleError::Inner(e) => Some(e),
        }
    }
}

impl<S, D, Req> tower::Service<Req> for ThrottleService<S, D>
where
    S: tower::Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    Req: Send + 'static,
    D: StageStore,
{
    type Response = S::Response;
    type Error = ThrottleError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ThrottleError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The service made ready is the one called (tower's clone-and-swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (throttle, ctx) = (self.throttle.clone(), self.ctx.clone());
        Box::pin(async move {
            let pass = throttle.acquire(&ctx).await.map_err(ThrottleError::Refused)?;
            let result = inner.call(req).await.map_err(ThrottleError::Inner);
            drop(pass);
            result
        })
    }
}
