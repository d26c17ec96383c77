//! A concurrency limit's parameters.

use crate::{FailurePolicy, KeyPart, MissingKey};
use std::time::Duration;

/// One concurrency limit on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyLimitConfig {
    /// Name, unique among the route's concurrency limits; a valid store scope.
    pub name: String,
    /// What the permits are per.
    pub key: Vec<KeyPart>,
    /// Most requests in flight at once per key (`max`, >= 1).
    pub max: u64,
    /// Permit lease, so that a crashed instance's permits expire (`lease_ms`, default 60 s).
    pub lease: Duration,
    /// What to do when the store fails (`on_store_error`, default `local`).
    pub on_store_error: FailurePolicy,
    /// What to do with a request lacking the header or cookie of the key.
    pub on_missing_key: MissingKey,
    /// Leading bits of an IPv6 client address an `ip` key counts (`ipv6_prefix`, default 64).
    pub ipv6_prefix: u8,
}
