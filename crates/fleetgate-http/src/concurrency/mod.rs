//! Concurrency limits as a stage: a permit per request in flight for each limit of the route,
//! held in the context's guards until the response body ends or the client leaves.

mod config;
mod limiter;

pub use config::ConcurrencyLimitConfig;
pub(crate) use limiter::{release_in_background, Holder as PermitHolder};
pub use limiter::{ConcurrencyLimiter, PermitGuard};

use crate::context::RequestCtx;
use crate::error::StageError;
use crate::stage::{Flow, Stage};
use crate::store_ctx::StageStore;
use fleetgate_store::Keyspace;
use http::request::Parts;

/// The concurrency limits of one route.
pub struct Concurrency {
    limiters: Vec<ConcurrencyLimiter>,
}

impl Concurrency {
    /// `None` when there are no limits, so a route without them has no stage.
    pub fn new(limiters: Vec<ConcurrencyLimiter>) -> Option<Self> {
        (!limiters.is_empty()).then_some(Concurrency { limiters })
    }

    /// Route `route`'s concurrency limits, with keys under `keyspace`.
    pub fn for_route(
        keyspace: &Keyspace,
        route: &str,
        limits: &[ConcurrencyLimitConfig],
    ) -> Result<Option<Self>, StageError> {
        let limiters = limits.iter().map(|c| ConcurrencyLimiter::new(keyspace, route, c));
        Ok(Self::new(limiters.collect::<Result<_, _>>()?))
    }
}

impl<D: StageStore> Stage<D> for Concurrency {
    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        for limiter in &self.limiters {
            match limiter.acquire(cx.store, req, cx.client_ip, cx.route).await {
                Ok(Some(guard)) => cx.guards.push(Box::new(guard)),
                Ok(None) => {}
                // The permits taken so far go back when the context's guards are dropped.
                Err(refusal) => return Flow::Answer(refusal.response(cx.route)),
            }
        }
        Flow::Continue
    }

    /// No way out of its own.
    fn response_now<B: Send>(&self, _cx: &mut RequestCtx<'_, D>, _resp: &mut http::Response<B>) -> bool {
        true
    }
}
