//! A rate limit's parameters, and how the configuration file writes them.

use crate::failure;
use crate::key::{self, error_at};
use crate::{FailurePolicy, KeyPart, MissingKey};
use fleetgate_store::{Algorithm, LimitError, Rate, RateLimit};
use serde::{Deserialize, Deserializer};

/// One rate limit, global or on a route.
///
/// Deserializes from `{ name, key, rate, burst, algorithm, cost, on_store_error,
/// on_missing_key, ipv6_prefix }` (unknown fields refused; errors follow
/// [`crate::key::FIELD_MARK`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Written")]
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

/// The limit as the file writes it: `rate`, `burst` and `algorithm` become one [`RateLimit`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(deserialize_with = "key::limit_name")]
    name: String,
    #[serde(deserialize_with = "key::key")]
    key: Vec<KeyPart>,
    #[serde(deserialize_with = "rate")]
    rate: Rate,
    #[serde(default)]
    burst: Option<i64>,
    #[serde(default, deserialize_with = "algorithm")]
    algorithm: Option<Algorithm>,
    #[serde(default)]
    cost: Option<i64>,
    #[serde(default = "failure::default_local", deserialize_with = "failure::local")]
    on_store_error: FailurePolicy,
    #[serde(default)]
    on_missing_key: MissingKey,
    #[serde(default = "key::default_ipv6_prefix", deserialize_with = "key::ipv6_prefix")]
    ipv6_prefix: u8,
}

fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
    String::deserialize(d)?.parse().map_err(|e| error_at("", e))
}

fn algorithm<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Algorithm>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    text.trim().parse().map(Some).map_err(|e| error_at("", e))
}

impl TryFrom<Written> for RateLimitConfig {
    type Error = String;
    fn try_from(w: Written) -> Result<Self, String> {
        let (algorithm, cost) = (w.algorithm.unwrap_or(Algorithm::Gcra), w.cost.unwrap_or(1));
        let limit = RateLimit::new(algorithm, w.rate, w.burst).map_err(|e| {
            let burst_is_wrong = matches!(
                e,
                LimitError::BadBurst(_) | LimitError::BurstNotSupported(_) | LimitError::TooLarge(..)
            );
            key::marked(
                if burst_is_wrong && w.burst.is_some() {
                    ".burst"
                } else {
                    ".rate"
                },
                e,
            )
        })?;
        let capacity = limit.capacity();
        let cost = u64::try_from(cost).ok().filter(|c| *c <= capacity).ok_or_else(|| {
            key::marked(
                ".cost",
                format!(
                    "cost {} is outside 0 to {capacity} (the limit's capacity: burst for gcra, N for the window algorithms), so it could never pass; accepted: a whole number from 0 to {capacity}",
                    cost
                ),
            )
        })?;
        Ok(RateLimitConfig {
            name: w.name,
            key: w.key,
            limit,
            cost,
            on_store_error: w.on_store_error,
            on_missing_key: w.on_missing_key,
            ipv6_prefix: w.ipv6_prefix,
        })
    }
}
