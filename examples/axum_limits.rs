//! An axum service with fleet-wide limits from fleetgate-http, without the gateway binary.
//!
//! Every instance of this service pointed at one Redis shares the limits: `/api` allows 5
//! requests a minute per `x-api-key` across the whole fleet, and at most 2 in flight per key;
//! `/health` is not limited. If Redis goes away, the limits fall back to this instance's share
//! of the fleet (`on_store_error: local`), kept current by the fleet heartbeat.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 LISTEN=127.0.0.1:3000 \
//!     cargo run -p fleetgate-http --example axum_limits
//! curl -i -H 'x-api-key: k1' http://127.0.0.1:3000/api/hello
//! ```
//! Without `REDIS_URL` the limits are in-process (one instance).

use axum::routing::get;
use axum::Router;
use fleetgate_http::{
    fleet, pipeline, stages, Concurrency, ConcurrencyLimitConfig, FailurePolicy, KeyPart, MissingKey, RateLimitConfig,
    RateLimits, StageLayer, StoreCtx,
};
use fleetgate_store::{Keyspace, RateLimit, RedisOptions, Store};
use std::net::SocketAddr;
use std::time::Duration;

/// The limits of `/api`, checked in this order.
type ApiLimits = stages![RateLimits, Concurrency];

/// The service, with its limits on `store`. `instance` names this instance in the fleet.
pub fn app(store: Store, instance: &str) -> Result<Router, Box<dyn std::error::Error>> {
    let keyspace = Keyspace::new("axum-example")?;
    let key = vec![KeyPart::Header("x-api-key".into())];
    let rate = RateLimitConfig::new("per-key", key.clone(), RateLimit::gcra("5/1m")?);
    let permits = ConcurrencyLimitConfig {
        name: "in-flight".into(),
        key,
        max: 2,
        lease: Duration::from_secs(30),
        on_store_error: FailurePolicy::Local,
        on_missing_key: MissingKey::Refuse,
        ipv6_prefix: 64,
    };
    let stages: ApiLimits = pipeline![
        RateLimits::for_route(&keyspace, "api", &[rate], &[])?,
        Concurrency::for_route(&keyspace, "api", &[permits])?,
    ];
    let ctx = StoreCtx::new(store.clone(), instance);
    // The fleet size, for the `local` policy's share while Redis is away.
    tokio::spawn(fleet::run_heartbeat(
        store,
        keyspace,
        instance.to_string(),
        ctx.live_instances.clone(),
    ));
    let api = Router::new()
        .route("/api/{*rest}", get(|| async { "hello from the api\n" }))
        .layer(StageLayer::new(stages, ctx, "api"));
    Ok(Router::new().route("/health", get(|| async { "ok\n" })).merge(api))
}

/// Serves `app` on `listener` until the process ends, with each request's peer address (the
/// limits' `ip` keys and trusted proxies need it).
pub async fn serve(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Store::open(&url, RedisOptions::default())?,
        _ => Store::open("memory://", RedisOptions::default())?,
    };
    store.warm_up().await;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let instance = format!("axum-example-{}", std::process::id());
    println!("listening on {}", listener.local_addr()?);
    serve(listener, app(store, &instance)?).await?;
    Ok(())
}
