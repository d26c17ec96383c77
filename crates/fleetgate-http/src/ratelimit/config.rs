//! A rate limit's parameters.

use crate::{FailurePolicy, KeyPart, MissingKey};
use fleetgate_store::RateLimit;

/// One rate limit, global or on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Name, unique within its route (or among the global limits); a valid store scope.
    pub name: String,
    /// What a bucket is per: the parts are joined into one identifier (at least one part).
    pub key: Vec<KeyPart>,
    /// Algorithm, rate and burst, validated by the store crate.
    pub limit: RateLimit,
    /// Units each request takes (`cost`, default 1), from 0 to the limit's capacity.
    pub cost: u64,
    /// What to do when the store fails (`on_store_error`, default `local`).
    pub on_store_error: FailurePolicy,
    /// What to do with a request lacking the header or cookie of the key (`on_missing_key`,
    /// default `shared`).
    pub on_missing_key: MissingKey,
    /// How many leading bits of an IPv6 client address an `ip` key counts (`ipv6_prefix`,
    /// default 64: one host rotating addresses within its /64 stays one client).
    pub ipv6_prefix: u8,
}
