//! # fleetgate-http
//!
//! fleetgate's concerns as a library, usable without the gateway binary: the per-request
//! [`RequestCtx`], the [`Stage`] abstraction and its composition into pipelines, one module per
//! concern, and any stage as a tower layer ([`StageLayer`]) over any store driver.
//!
//! | module | concern |
//! |---|---|
//! | [`ratelimit`] | rate limits (gcra, sliding and fixed windows), refunded when a later limit refuses |
//! | [`concurrency`] | requests in flight, with leased permits |
//! | [`payment`] | the x402 payment gate: verified once, settled once, never usable twice, payment sessions |
//! | [`idempotency`] | Idempotency-Key: an unsafe request runs once across the fleet; a retry gets the stored response, 409 while in flight, 422 for another request |
//! | [`session`] | gateway sessions: a cookie any instance honours, identity kept in the store, sliding TTL |
//! | [`forward_auth`] | forward auth: an auth service asked once per credential for the fleet (cached verdicts, single flight) |
//! | [`events`] | live events: each completed request published fleet-wide, read by subscribers exactly once |
//! | [`throttle`] | the outbound throttle: calls to a metered upstream paced fleet-wide (callers wait), also a tower layer for clients |
//! | [`breaker`] | fleet-wide circuit breakers: a trip on one instance holds on all (store plus pub/sub) |
//! | [`dedup`] | in-flight dedup: identical requests share one upstream call across the fleet; a completed answer kept for a window |
//! | [`headers`] | request and response header rules (set, add, remove) |
//! | [`cache`] | the shared HTTP cache (RFC 9111): stored in the store, served by every instance |
//! | [`upstream_login`] | log in to an upstream once for the fleet, share the credential, re-login once on a refusal |
//!
//! Every store call of every concern goes through [`StoreCtx::decide`], which applies the
//! concern's failure policy ([`FailurePolicy`]: open, closed, or local with this instance's
//! share of the fleet).
#![forbid(unsafe_code)]

pub mod body;
pub mod body_fields;
pub mod breaker;
pub mod cache;
pub mod client_ip;
pub mod concurrency;
pub mod context;
pub mod dedup;
pub mod error;
pub mod events;
pub mod failure;
pub mod fleet;
pub mod forward_auth;
pub mod headers;
pub mod idempotency;
pub mod identity;
pub mod key;
pub mod layer;
mod limit_key;
pub mod metrics;
pub mod payment;
pub mod rate_headers;
pub mod ratelimit;
pub mod refusal;
pub mod session;
pub mod stage;
pub mod store_ctx;
pub mod throttle;
pub mod upstream_login;

pub use breaker::{BreakerConfig, Breakers};
pub use cache::{Cache, CacheConfig};
pub use client_ip::TrustedProxies;
pub use concurrency::{Concurrency, ConcurrencyLimitConfig, ConcurrencyLimiter};
pub use context::{ArrivedOverTls, Completion, Principal, RequestCtx};
pub use dedup::{Dedup, DedupConfig};
pub use error::StageError;
pub use events::{EventSink, EventStage};
pub use failure::FailurePolicy;
pub use forward_auth::{AuthClient, ForwardAuth, ForwardAuthConfig};
pub use headers::{HeaderRules, RequestHeaders, ResponseHeaders};
pub use idempotency::{Idempotency, IdempotencyConfig};
pub use key::{KeyPart, MissingKey};
pub use layer::{StageLayer, StageService};
pub use limit_key::LimitScope;
pub use payment::{FacilitatorClient, Payment, PaymentConfig};
pub use ratelimit::{RateLimitConfig, RateLimiter, RateLimits};
pub use refusal::Refusal;
pub use session::Session;
pub use stage::{Flow, Stage, Then};
pub use store_ctx::{Decided, StageStore, StoreCtx};
pub use throttle::{Throttle, ThrottleConfig, ThrottleLayer};
