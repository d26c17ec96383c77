//! An outbound throttle's parameters (`upstreams.NAME.throttle`), and how the file writes them.

use crate::failure;
use crate::key::error_at;
use crate::FailurePolicy;
use fleetgate_store::Rate;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Default `max_wait`: a caller waits at most this long for its slot.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

/// A fleet-wide pace for calls to one upstream: callers wait for their slot, they are not
/// refused (unless the wait would exceed `max_wait`).
///
/// Deserializes from `{ rate, burst, concurrency, max_wait, on_store_error }` (unknown fields
/// refused; errors follow [`crate::key::FIELD_MARK`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Calls per period across the fleet (`rate`, `N/PERIOD`, N >= 1), spaced evenly.
    #[serde(deserialize_with = "rate")]
    pub rate: Rate,
    /// Calls that may go at once after a quiet spell (`burst`, default 1: evenly spaced).
    #[serde(default = "one", deserialize_with = "burst")]
    pub burst: u64,
    /// Calls in flight at once across the fleet (`concurrency`, >= 1; none: no bound), with
    /// leased permits so that a crashed instance's permits expire.
    #[serde(default, deserialize_with = "concurrency")]
    pub concurrency: Option<u64>,
    /// Longest wait for a slot (`max_wait`, a duration, default 10s); a caller whose wait would
    /// be longer gets 503 with Retry-After at once.
    #[serde(default = "default_max_wait", deserialize_with = "max_wait")]
    pub max_wait: Duration,
    /// What to do when the store fails (`on_store_error`, default `local`: this instance paces
    /// at the rate divided by the live instances).
    #[serde(default = "failure::default_local", deserialize_with = "failure::local")]
    pub on_store_error: FailurePolicy,
}

impl ThrottleConfig {
    /// A throttle of `rate` with the defaults (burst 1, no concurrency bound, max_wait 10 s,
    /// `local` on store errors).
    pub fn new(rate: Rate) -> Self {
        ThrottleConfig {
            rate,
            burst: 1,
            concurrency: None,
            max_wait: DEFAULT_MAX_WAIT,
            on_store_error: FailurePolicy::Local,
        }
    }
}

fn one() -> u64 {
    1
}

fn default_max_wait() -> Duration {
    DEFAULT_MAX_WAIT
}

fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
    String::deserialize(d)?.parse().map_err(|e| {
        error_at(
            "",
            format!("{e} (a throttle's rate is at least 1 call per period: a rate of 0 would never let a call go)"),
        )
    })
}

fn burst<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = Option::<i64>::deserialize(d)?.unwrap_or(1);
    u64::try_from(n)
        .ok()
        .filter(|n| (1..=100_000).contains(n))
        .ok_or_else(|| {
            error_at(
                "",
                format!(
                    "{n} is out of range; accepted: a whole number from 1 to 100000 (default 1: calls evenly spaced)"
                ),
            )
        })
}

fn concurrency<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<i64>::deserialize(d)? else {
        return Ok(None);
    };
    u64::try_from(n)
        .ok()
        .filter(|n| (1..=1_000_000).contains(n))
        .map(Some)
        .ok_or_else(|| {
            error_at(
                "",
                format!(
                    "{n} is out of range; accepted: a whole number from 1 to 1000000, or no concurrency (no bound)"
                ),
            )
        })
}

fn max_wait<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(DEFAULT_MAX_WAIT);
    };
    let d = crate::payment::parse_duration(&text).map_err(|why| {
        error_at(
            "",
            format!("{why}; accepted: a whole number and a unit (ms, s, m, h or d) from 1ms to 1h, e.g. 500ms, 10s"),
        )
    })?;
    if d > Duration::from_secs(3600) {
        return Err(error_at(
            "",
            format!("{} is longer than 1h; accepted: a duration from 1ms to 1h, e.g. 10s (a caller holds its connection while it waits)", text.trim()),
        ));
    }
    Ok(d)
}
