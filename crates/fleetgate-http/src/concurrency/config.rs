//! A concurrency limit's parameters, and how the configuration file writes them.

use crate::failure;
use crate::key::{self, error_at};
use crate::{FailurePolicy, KeyPart, MissingKey};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// One concurrency limit on a route.
///
/// Deserializes from `{ name, key, max, lease_ms, on_store_error, on_missing_key,
/// ipv6_prefix }` (unknown fields refused; errors follow [`crate::key::FIELD_MARK`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitConfig {
    /// Name, unique among the route's concurrency limits; a valid store scope.
    #[serde(deserialize_with = "key::limit_name")]
    pub name: String,
    /// What the permits are per.
    #[serde(deserialize_with = "key::key")]
    pub key: Vec<KeyPart>,
    /// Most requests in flight at once per key (`max`, >= 1).
    #[serde(deserialize_with = "max")]
    pub max: u64,
    /// Permit lease, so that a crashed instance's permits expire (`lease_ms`, default 60 s).
    #[serde(rename = "lease_ms", default = "default_lease", deserialize_with = "lease_ms")]
    pub lease: Duration,
    /// What to do when the store fails (`on_store_error`, default `local`).
    #[serde(default = "failure::default_local", deserialize_with = "failure::local")]
    pub on_store_error: FailurePolicy,
    /// What to do with a request lacking the header or cookie of the key.
    #[serde(default)]
    pub on_missing_key: MissingKey,
    /// Leading bits of an IPv6 client address an `ip` key counts (`ipv6_prefix`, default 64).
    #[serde(default = "key::default_ipv6_prefix", deserialize_with = "key::ipv6_prefix")]
    pub ipv6_prefix: u8,
}

fn max<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| error_at("", format!("{n} is out of range; accepted: a whole number >= 1")))
}

fn default_lease() -> Duration {
    Duration::from_secs(60)
}

/// A lease in whole milliseconds, 1 ms to 7 days, like every `*_ms` field of the file (null:
/// the default).
fn lease_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let ms = Option::<i64>::deserialize(d)?.unwrap_or(60_000);
    u64::try_from(ms)
        .ok()
        .filter(|ms| (1..=604_800_000).contains(ms))
        .map(Duration::from_millis)
        .ok_or_else(|| {
            error_at(
                "",
                format!(
                    "{ms} ms is out of range; accepted: a whole number of milliseconds from 1 to 604800000 (7 days)"
                ),
            )
        })
}
