//! How an upstream's target is chosen and retried (`upstreams.NAME.balance`, `affinity`,
//! `retries`).

use crate::fields::{int, refuse};
use fleetgate_http::key::is_token;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// `balance`: how a target is chosen among the available ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each target in turn (`round_robin`, the default).
    #[default]
    RoundRobin,
    /// Two targets drawn at random, the one with fewer requests in flight on this instance
    /// (`least_request`).
    LeastRequest,
}

/// `affinity`: a cookie that names the target which answered a client first, so that its
/// later requests reach that target through any instance (nothing shared between them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    /// The cookie's name (`cookie`, required).
    #[serde(deserialize_with = "cookie_name")]
    pub cookie: String,
    /// The cookie's lifetime (`ttl`, a duration; none: until the browser closes).
    #[serde(default, deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
    /// Whether the cookie is marked `Secure` (`secure`, default `false`).
    #[serde(default, deserialize_with = "crate::fields::flag::<_, false>")]
    pub secure: bool,
}

fn cookie_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    if !is_token(&name) {
        return Err(refuse(format!(
            "{name:?} is not a cookie name; accepted: letters, digits and !#$%&'*+-.^_`|~, e.g. fg_target"
        )));
    }
    Ok(name)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::duration::optional(d)
}

/// `retries`: a request that could not connect to its target is sent to another, when it is
/// idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), within a budget.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Targets tried at most, the first included (`attempts`, 2 to 10, default 2).
    #[serde(default = "two", deserialize_with = "int::<_, 2, 10, 2, _>")]
    pub attempts: u32,
    /// Retries allowed as a share of the requests of the last 10 s (`budget`, `N%` from 0% to
    /// 100%, default 20%).
    #[serde(rename = "budget", default = "twenty", deserialize_with = "percent")]
    pub budget_percent: u32,
    /// Retries allowed per second on top of the budget (`min_per_second`, 0 to 10000, default
    /// 10), so that a quiet upstream can still retry.
    #[serde(default = "ten", deserialize_with = "int::<_, 0, 10_000, 10, _>")]
    pub min_per_second: u32,
}

fn two() -> u32 {
    2
}
fn ten() -> u32 {
    10
}
fn twenty() -> u32 {
    20
}

fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(20);
    };
    text.trim()
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<u32>().ok())
        .filter(|n| *n <= 100)
        .ok_or_else(|| {
            refuse(format!(
                "{text:?} is not a percentage; accepted: a whole number from 0 to 100 and %, e.g. 20%"
            ))
        })
}
