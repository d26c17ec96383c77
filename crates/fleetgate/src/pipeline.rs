//! Each route's pipeline: the stages its configuration asks for, in the fixed order of the way
//! in (the way out is the reverse). A stage the route does not configure is `None` and costs
//! one branch per phase.
//!
//! Adding a concern: its module in `fleetgate-http` (the stage and its configuration type),
//! its field in the route's configuration, and one line in [`RoutePipeline`] and [`assemble`]
//! each, at its place in the order.

use crate::build::BuildError;
use fleetgate_config::{Config, RouteConfig};
use fleetgate_http::{
    AuthClient, Cache, Concurrency, Dedup, EventSink, EventStage, FacilitatorClient, ForwardAuth, Idempotency, Payment,
    RateLimits, RequestHeaders, ResponseHeaders, Session,
};
use fleetgate_store::Keyspace;
use std::sync::Arc;

/// The stages of a route, in order: normalise and identify happen before routing (they decide
/// the route), then events (its complete phase runs last), the gateway session and forward
/// auth, rate limits (most specific first), then concurrency, the payment gate, idempotency
/// keys, the shared cache, then dedup (DESIGN.md, "The request pipeline").
pub type RoutePipeline = fleetgate_http::stages![
    EventStage, // one live event per completed request (`events.enabled`); first, so
    // the gateway finds it at `.0`
    ResponseHeaders, // `response_headers`: early in, so late out (sees every header added)
    Session,         // `forward_auth.session`: a gateway session skips the auth call
    ForwardAuth,     // `forward_auth`: before the limits, so `key: header:x-user-id` is verified
    RateLimits,      // the route's own limits, then the global ones
    Concurrency,     // permits held until the response is over
    Payment,         // x402: 402, or a payment verified and settled once for the fleet
    Idempotency,     // Idempotency-Key: run once, replay the stored response, 409, 422
    Cache,           // `cache`: the shared HTTP cache; answers hits, stores what may be stored
    Dedup,           // `dedup`: identical requests in flight share one upstream call
    RequestHeaders,  // `request_headers`: last in (the stages before see the client's headers)
];

/// Compiles `route`'s configuration into its pipeline.
pub fn assemble(
    config: &Config,
    keyspace: &Keyspace,
    route: &RouteConfig,
    facilitator: &Arc<dyn FacilitatorClient>,
    auth: &Arc<dyn AuthClient>,
    events: Option<&EventSink>,
) -> Result<RoutePipeline, BuildError> {
    let r = route.name.as_str();
    let fail = |e: fleetgate_http::StageError| BuildError::new(format!("route {r}: {e}"));
    let (session, forward_auth) =
        fleetgate_http::forward_auth::for_route(keyspace, r, route.forward_auth.as_ref(), auth);
    Ok(fleetgate_http::pipeline![
        events.map(|sink| EventStage::for_route(sink, r)),
        ResponseHeaders::for_route(&route.response_headers),
        session,
        forward_auth,
        RateLimits::for_route(keyspace, r, &route.rate_limits, &config.global_rate_limits).map_err(fail)?,
        Concurrency::for_route(keyspace, r, &route.concurrency_limits).map_err(fail)?,
        Payment::for_route(keyspace, r, route.payment.as_ref(), facilitator),
        Idempotency::for_route(keyspace, r, route.idempotency.as_ref()),
        Cache::for_route(keyspace, r, route.cache.as_ref())
            .map(|c| c.with_refresh(crate::cache_refresh::LoopbackRefresh::shared(config.listen))),
        Dedup::for_route(keyspace, r, route.dedup.as_ref()),
        RequestHeaders::for_route(&route.request_headers),
    ])
}

/// Gives every lease-mode limit's unspent units back to the fleet (at shutdown, once requests
/// have drained); the units given back.
pub async fn give_back_leases(routes: &[crate::route::Route], store: &fleetgate_store::Store) -> u64 {
    let mut given = 0;
    for route in routes {
        if let Some(limits) = &route.pipeline.1 .1 .1 .1 .0 {
            for limiter in limits.limiters() {
                given += limiter.give_back(store).await;
            }
        }
    }
    given
}
