//! A rate limit's parameters, and how the configuration file writes them.

use crate::failure;
use crate::key::{self, error_at};
use crate::{FailurePolicy, KeyPart, MissingKey};
use fleetgate_store::{Algorithm, LimitError, Rate, RateLimit};
use serde::{Deserialize, Deserializer};

/// One rate limit, global or on a route.
///
/// Deserializes from `{ name, key, rate, burst, algorithm, cost, on_store_error,
/// on_missing_key, ipv6_prefix, mode, lease, count_statuses, body_limit }` (unknown fields refused; errors follow
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
    /// One store call per request, or local spending of leased batches (`mode`, `lease`).
    pub mode: LimitMode,
    /// `count_statuses`: when not empty, only requests answered with one of these statuses
    /// count (a login-failure throttle: `[401, 403]`). Every request is still checked before
    /// the upstream (refused with 429 once the budget is spent); a request is charged then,
    /// and given back in the response phase when its status is not one of these.
    pub count_statuses: Vec<u16>,
    /// `body_limit`: most request-body bytes a `json:` or `form:` key part reads (default
    /// 16 KiB, at most 1 MiB). A longer body gives no value: the missing-key rule applies.
    pub body_limit: usize,
}

/// How a limit decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitMode {
    /// `mode: exact` (the default): one atomic store call per request.
    #[default]
    Exact,
    /// `mode: lease`: units are reserved from the fleet budget in batches of at most
    /// `max_batch` (`lease.max_batch`, default 1000) and spent locally; never overshoots.
    Lease { max_batch: u64 },
}

/// Largest batch a lease takes unless `lease.max_batch` says otherwise.
pub const DEFAULT_MAX_BATCH: u64 = 1000;

/// `lease:` as the file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenLease {
    #[serde(default)]
    max_batch: Option<i64>,
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
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    lease: Option<WrittenLease>,
    #[serde(default)]
    count_statuses: Option<Vec<i64>>,
    #[serde(default)]
    body_limit: Option<i64>,
}

/// `body_limit` as written: bytes, only beside a key that reads the body.
fn body_limit(written: Option<i64>, key: &[KeyPart]) -> Result<usize, String> {
    use crate::body_fields::{DEFAULT_BODY_LIMIT, MAX_BODY_LIMIT};
    let Some(n) = written else {
        return Ok(DEFAULT_BODY_LIMIT);
    };
    if !key.iter().any(KeyPart::reads_body) {
        return Err(key::marked(
            ".body_limit",
            "body_limit is only read beside a key that reads the body; accepted: a json:FIELD or form:FIELD key part with it, or no body_limit",
        ));
    }
    usize::try_from(n).ok().filter(|n| (1..=MAX_BODY_LIMIT).contains(n)).ok_or_else(|| {
        key::marked(
            ".body_limit",
            format!("{n} is out of range; accepted: a whole number of bytes from 1 to {MAX_BODY_LIMIT} (default {DEFAULT_BODY_LIMIT})"),
        )
    })
}

/// `count_statuses` as written: a non-empty list of statuses from 100 to 599.
fn count_statuses(written: Option<Vec<i64>>) -> Result<Vec<u16>, String> {
    let Some(list) = written else {
        return Ok(Vec::new());
    };
    if list.is_empty() {
        return Err(key::marked(
            ".count_statuses",
            "an empty list would count nothing; accepted: a list of HTTP statuses from 100 to 599, e.g. [401, 403], or no count_statuses (count every request)",
        ));
    }
    list.iter()
        .map(|&n| {
            u16::try_from(n).ok().filter(|s| (100..=599).contains(s)).ok_or_else(|| {
                key::marked(
                    ".count_statuses",
                    format!("{n} is not an HTTP status; accepted: a list of HTTP statuses from 100 to 599, e.g. [401, 403]"),
                )
            })
        })
        .collect()
}

/// `mode` and `lease` into a [`LimitMode`] (every algorithm leases).
fn mode(mode: Option<&str>, lease: Option<WrittenLease>) -> Result<LimitMode, String> {
    let accepted =
        "exact (one store call per request) or lease (batches reserved from the fleet budget, spent locally)";
    match mode.map(str::trim) {
        None | Some("exact") => {
            if lease.is_some() {
                return Err(key::marked(
                    ".lease",
                    "lease settings are only read with mode: lease; accepted: mode: lease beside them, or no lease section",
                ));
            }
            Ok(LimitMode::Exact)
        }
        Some("lease") => {
            let max_batch = lease.and_then(|l| l.max_batch).unwrap_or(DEFAULT_MAX_BATCH as i64);
            let max_batch = u64::try_from(max_batch).ok().filter(|b| *b >= 1).ok_or_else(|| {
                key::marked(
                    ".lease.max_batch",
                    format!("max_batch {max_batch} is out of range; accepted: a whole number >= 1, the most units one reservation takes (default {DEFAULT_MAX_BATCH})"),
                )
            })?;
            Ok(LimitMode::Lease { max_batch })
        }
        Some(other) => Err(key::marked(
            ".mode",
            format!("unknown mode {other:?}; accepted: {accepted}"),
        )),
    }
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
        let body_limit = body_limit(w.body_limit, &w.key)?;
        Ok(RateLimitConfig {
            body_limit,
            name: w.name,
            key: w.key,
            limit,
            cost,
            on_store_error: w.on_store_error,
            on_missing_key: w.on_missing_key,
            ipv6_prefix: w.ipv6_prefix,
            count_statuses: {
                let statuses = count_statuses(w.count_statuses)?;
                if !statuses.is_empty() && w.mode.as_deref().map(str::trim) == Some("lease") {
                    return Err(key::marked(
                        ".count_statuses",
                        "count_statuses gives back the requests whose status does not count, which leased units cannot be; accepted: mode: exact with count_statuses",
                    ));
                }
                statuses
            },
            mode: mode(w.mode.as_deref(), w.lease)?,
        })
    }
}
