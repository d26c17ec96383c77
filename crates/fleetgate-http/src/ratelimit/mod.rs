//! Rate limits as a stage: every limit of a route, most specific first (the route's own, then
//! the global ones). A request refused by one limit is charged to none: the limits that had
//! admitted it are refunded. Allowed and refused responses carry the RateLimit headers.

mod config;
mod limiter;

pub use config::{LimitMode, RateLimitConfig, DEFAULT_MAX_BATCH};
pub use limiter::{Charge, RateLimiter};

use crate::context::RequestCtx;
use crate::error::StageError;
use crate::limit_key::LimitScope;
use crate::rate_headers::RateHeaders;
use crate::refusal::Refusal;
use crate::stage::{Flow, Stage};
use crate::store_ctx::StageStore;
use fleetgate_store::Keyspace;
use http::request::Parts;
use http::Response;

impl RateLimitConfig {
    /// A limit named `name` counting by `key`, with the file's defaults: cost 1,
    /// `on_store_error: local`, `on_missing_key: shared`, IPv6 clients by their /64.
    pub fn new(name: &str, key: Vec<crate::KeyPart>, limit: fleetgate_store::RateLimit) -> Self {
        RateLimitConfig {
            name: name.to_string(),
            key,
            limit,
            cost: 1,
            on_store_error: crate::FailurePolicy::Local,
            on_missing_key: crate::MissingKey::Shared,
            ipv6_prefix: 64,
            mode: LimitMode::Exact,
            count_statuses: Vec::new(),
            body_limit: crate::body_fields::DEFAULT_BODY_LIMIT,
        }
    }
}

/// The rate limits of one route, in the order they are checked.
pub struct RateLimits {
    limiters: Vec<RateLimiter>,
    /// No limit leases: on the in-process store every one decides without waiting.
    all_exact: bool,
}

impl RateLimits {
    /// The limits in the order given (most specific first); `None` when there are none, so a
    /// route without limits has no stage.
    pub fn new(limiters: Vec<RateLimiter>) -> Option<Self> {
        let all_exact = limiters.iter().all(|l| l.lease().is_none());
        (!limiters.is_empty()).then_some(RateLimits { limiters, all_exact })
    }

    /// Route `route`'s own limits, then the global ones, with keys under `keyspace`.
    pub fn for_route(
        keyspace: &Keyspace,
        route: &str,
        own: &[RateLimitConfig],
        global: &[RateLimitConfig],
    ) -> Result<Option<Self>, StageError> {
        let own = own
            .iter()
            .map(|c| RateLimiter::new(keyspace, LimitScope::Route(route), c));
        let global = global.iter().map(|c| RateLimiter::new(keyspace, LimitScope::Global, c));
        Ok(Self::new(own.chain(global).collect::<Result<_, _>>()?))
    }

    /// The limiters, in order.
    pub fn limiters(&self) -> &[RateLimiter] {
        &self.limiters
    }
}

impl RateLimits {
    /// Takes limit `i`'s outcome: `Ok` goes on, keeping the charge when a later limit could
    /// still refuse (none for the last one, so a single limit never allocates) or when only
    /// some statuses count (the way out settles it); `Err` is the refusal that stops the loop.
    fn take<'a>(
        &self,
        i: usize,
        limiter: &'a RateLimiter,
        outcome: Result<Option<Charge>, Refusal>,
        charged: &mut Vec<(&'a RateLimiter, Charge)>,
    ) -> Result<(), Refusal> {
        match outcome? {
            Some(charge) if i + 1 < self.limiters.len() || limiter.counts_some_statuses() => {
                charged.push((limiter, charge));
            }
            _ => {}
        }
        Ok(())
    }

    /// The answer to `limiter`'s refusal. When earlier admissions were given back, the headers
    /// were rebuilt from the refunds, and the refusing limit's own are added again.
    fn refused<D: StageStore>(
        cx: &mut RequestCtx<'_, D>,
        limiter: &RateLimiter,
        refusal: Refusal,
        refunded: bool,
    ) -> Flow {
        if let (true, Refusal::Limited { decision, .. }) = (refunded, &refusal) {
            limiter.push_headers(&mut cx.rate_headers, decision);
        }
        Flow::Answer(refusal.response(cx.route))
    }

    /// Keeps the charges of `count_statuses` limits for the response phase, which gives back
    /// those whose answer does not count.
    fn keep_status_charges<D: StageStore>(&self, cx: &mut RequestCtx<'_, D>, charged: Vec<(&RateLimiter, Charge)>) {
        for (limiter, charge) in charged {
            if limiter.counts_some_statuses() {
                let index = self.limiters.iter().position(|l| std::ptr::eq(l, limiter)).unwrap_or(0);
                cx.status_charges.push((index, charge));
            }
        }
    }
}

impl<D: StageStore> Stage<D> for RateLimits {
    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        let mut charged: Vec<(&RateLimiter, Charge)> = Vec::new();
        for (i, limiter) in self.limiters.iter().enumerate() {
            let outcome = limiter
                .check(cx.store, req, cx.client_ip, cx.route, &mut cx.rate_headers)
                .await;
            let Err(refusal) = self.take(i, limiter, outcome, &mut charged) else {
                continue;
            };
            let refunded = !charged.is_empty();
            if refunded {
                // The headers then tell the state after the refunds.
                cx.rate_headers = RateHeaders::default();
                for (earlier, charge) in charged {
                    earlier.refund(cx.store, charge, &mut cx.rate_headers).await;
                }
            }
            return Self::refused(cx, limiter, refusal, refunded);
        }
        self.keep_status_charges(cx, charged);
        Flow::Continue
    }

    /// Without waiting when every limit can decide now (exact mode on the in-process store),
    /// or when the route has one limit and it can (or a lease-mode limit with units at hand).
    /// With several limits that might wait, the async phase decides them all: one decided now
    /// and the next found waiting would have to be carried over half done.
    fn request_now(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Option<Flow> {
        let in_process = cx.store.store.memory().is_some();
        if self.limiters.len() > 1 && !(in_process && self.all_exact) {
            return None;
        }
        let mut charged: Vec<(&RateLimiter, Charge)> = Vec::new();
        for (i, limiter) in self.limiters.iter().enumerate() {
            let outcome = limiter.check_now(cx.store, req, cx.client_ip, cx.route, &mut cx.rate_headers)?;
            let Err(refusal) = self.take(i, limiter, outcome, &mut charged) else {
                continue;
            };
            let refunded = !charged.is_empty();
            if refunded {
                cx.rate_headers = RateHeaders::default();
                for (earlier, charge) in charged {
                    // Every charge here was made on the in-process store (the condition
                    // above), so its refund needs no wait either.
                    let done = earlier.refund_now(cx.store, &charge, &mut cx.rate_headers);
                    debug_assert!(done, "an in-process charge is refunded without waiting");
                }
            }
            return Some(Self::refused(cx, limiter, refusal, refunded));
        }
        self.keep_status_charges(cx, charged);
        Some(Flow::Continue)
    }

    /// Without waiting unless a `count_statuses` charge is to be given back on a shared store.
    fn response_now<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) -> bool {
        if !cx.status_charges.is_empty() {
            if cx.store.store.memory().is_none() {
                return false;
            }
            let status = resp.status().as_u16();
            for (index, charge) in std::mem::take(&mut cx.status_charges) {
                let Some(limiter) = self.limiters.get(index) else {
                    continue;
                };
                if !limiter.counts_status(status) {
                    let mut unused = RateHeaders::default();
                    limiter.refund_now(cx.store, &charge, &mut unused);
                }
            }
        }
        std::mem::take(&mut cx.rate_headers).write(resp.headers_mut());
        true
    }

    async fn response<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) {
        // `count_statuses`: a request whose answer is not one of the statuses is given back.
        let status = resp.status().as_u16();
        for (index, charge) in std::mem::take(&mut cx.status_charges) {
            let Some(limiter) = self.limiters.get(index) else {
                continue;
            };
            if !limiter.counts_status(status) {
                let mut unused = RateHeaders::default();
                limiter.refund(cx.store, charge, &mut unused).await;
            }
        }
        std::mem::take(&mut cx.rate_headers).write(resp.headers_mut());
    }
}
