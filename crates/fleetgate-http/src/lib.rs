//! # fleetgate-http
//!
//! fleetgate's concerns as a library, usable without the gateway binary: the per-request
//! context, the stage pipeline, one module per concern, and each concern as a tower layer.
#![forbid(unsafe_code)]

pub mod concurrency;
pub mod failure;
pub mod key;
pub mod ratelimit;

pub use concurrency::ConcurrencyLimitConfig;
pub use failure::FailurePolicy;
pub use key::{KeyPart, MissingKey};
pub use ratelimit::RateLimitConfig;
