//! A route's shared HTTP cache (`cache:`) as the configuration file writes it.

use crate::failure::FailurePolicy;
use crate::key::marked;
use crate::payment::config::duration;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Largest `max_entry_bytes` accepted (a store value is one Redis string).
pub const MAX_ENTRY_BYTES_LIMIT: u64 = 64 * 1024 * 1024;

/// The shared cache of one route.
///
/// Deserializes from `{ max_entry_bytes, heuristic, keep_stale, max_ttl, coalesce,
/// coalesce_wait, local_ttl, local_max_bytes, on_store_error }`
/// (unknown fields refused; errors follow [`crate::key::FIELD_MARK`]). `cache: {}` (or
/// `cache:` with nothing) takes every default.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Largest response body stored (`max_entry_bytes`, default 1 MiB); larger ones pass
    /// through unstored.
    pub max_entry_bytes: u64,
    /// Heuristic freshness (`heuristic`, a fraction from 0 to 1 of the time since
    /// `Last-Modified`; default none: a response without explicit freshness is stored only to
    /// be revalidated).
    pub heuristic: Option<f32>,
    /// How long an entry is kept past its freshness and stale windows, to be revalidated
    /// (`keep_stale`, default 10m).
    pub keep_stale: Duration,
    /// Longest an entry lives in the store, whatever its freshness (`max_ttl`, default 7d).
    pub max_ttl: Duration,
    /// Whether identical misses share one upstream call across the fleet (`coalesce`,
    /// default `true`): the first fetches, the others wait for its entry.
    pub coalesce: bool,
    /// Longest a request waits for another's fill before going upstream itself
    /// (`coalesce_wait`, default 5s, at most 60s).
    pub coalesce_wait: Duration,
    /// The in-process tier in front of a shared store (`local_ttl`, default none: off): values
    /// this instance read are served from its memory for at most this long, which is then the
    /// bound on serving what another instance invalidated (at most 60s).
    pub local_ttl: Option<Duration>,
    /// Memory bound of the in-process tier (`local_max_bytes`, default 64 MiB).
    pub local_max_bytes: u64,
    /// What to do when the store fails (`on_store_error`, default `open`: pass through
    /// uncached; `closed`: 503).
    pub on_store_error: FailurePolicy,
}

/// `heuristic` is a checked fraction from 0 to 1, never NaN.
impl Eq for CacheConfig {}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entry_bytes: 1024 * 1024,
            heuristic: None,
            keep_stale: Duration::from_secs(600),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            coalesce: true,
            coalesce_wait: Duration::from_secs(5),
            local_ttl: None,
            local_max_bytes: 64 * 1024 * 1024,
            on_store_error: FailurePolicy::Open,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default)]
    max_entry_bytes: Option<u64>,
    #[serde(default)]
    heuristic: Option<f64>,
    #[serde(default, deserialize_with = "duration")]
    keep_stale: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max_ttl: Option<Duration>,
    #[serde(default)]
    coalesce: Option<bool>,
    #[serde(default, deserialize_with = "duration")]
    coalesce_wait: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    local_ttl: Option<Duration>,
    #[serde(default)]
    local_max_bytes: Option<u64>,
    #[serde(default)]
    on_store_error: Option<FailurePolicy>,
}

impl<'de> Deserialize<'de> for CacheConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Some(w) = Option::<Written>::deserialize(d)? else {
            return Ok(CacheConfig::default());
        };
        CacheConfig::try_from(w).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<Written> for CacheConfig {
    type Error = String;
    fn try_from(w: Written) -> Result<Self, String> {
        let defaults = CacheConfig::default();
        let max_entry_bytes = w.max_entry_bytes.unwrap_or(defaults.max_entry_bytes);
        if max_entry_bytes == 0 || max_entry_bytes > MAX_ENTRY_BYTES_LIMIT {
            return Err(marked(
                ".max_entry_bytes",
                format!("{max_entry_bytes} is out of range; accepted: a whole number of bytes from 1 to {MAX_ENTRY_BYTES_LIMIT} (64 MiB), e.g. 1048576"),
            ));
        }
        let heuristic = match w.heuristic {
            None => None,
            Some(f) if (0.0..=1.0).contains(&f) => Some(f as f32),
            Some(f) => {
                return Err(marked(
                    ".heuristic",
                    format!(
                    "{f} is out of range; accepted: a fraction from 0 to 1 of the time since Last-Modified, e.g. 0.1"
                ),
                ))
            }
        };
        let on_store_error = match w.on_store_error {
            None => FailurePolicy::Open,
            Some(FailurePolicy::Local) => {
                return Err(marked(
                    ".on_store_error",
                    "local is not accepted for the cache; accepted: open (pass through uncached) or closed (503)",
                ))
            }
            Some(p) => p,
        };
        let max_ttl = w.max_ttl.unwrap_or(defaults.max_ttl);
        let coalesce_wait = w.coalesce_wait.unwrap_or(defaults.coalesce_wait);
        if w.local_ttl.is_some_and(|t| t > Duration::from_secs(60)) {
            return Err(marked(
                ".local_ttl",
                "longer than 60s; accepted: a duration from 1ms to 60s: it bounds how long an instance serves what another has invalidated",
            ));
        }
        if w.local_max_bytes == Some(0) {
            return Err(marked(
                ".local_max_bytes",
                "0 is out of range; accepted: a whole number of bytes above 0, e.g. 67108864 (64 MiB)",
            ));
        }
        if coalesce_wait > Duration::from_secs(60) {
            return Err(marked(
                ".coalesce_wait",
                "longer than 60s; accepted: a duration from 1ms to 60s (default 5s): past it, a waiting request goes upstream itself",
            ));
        }
        Ok(CacheConfig {
            max_entry_bytes,
            heuristic,
            keep_stale: w.keep_stale.unwrap_or(defaults.keep_stale),
            max_ttl,
            coalesce: w.coalesce.unwrap_or(true),
            local_ttl: w.local_ttl,
            local_max_bytes: w.local_max_bytes.unwrap_or(defaults.local_max_bytes),
            coalesce_wait,
            on_store_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<CacheConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c, CacheConfig::default());
        assert_eq!(c.max_entry_bytes, 1 << 20);
        assert_eq!(c.on_store_error, FailurePolicy::Open);
        assert_eq!(parse("null").unwrap(), CacheConfig::default());
    }

    #[test]
    fn values_and_refusals() {
        let c = parse(r#"{"max_entry_bytes": 100, "heuristic": 0.1, "keep_stale": "1m", "on_store_error": "closed"}"#)
            .unwrap();
        assert_eq!(c.max_entry_bytes, 100);
        assert_eq!(c.heuristic, Some(0.1));
        assert_eq!(c.keep_stale, Duration::from_secs(60));
        assert_eq!(c.on_store_error, FailurePolicy::Closed);
        assert!(parse(r#"{"max_entry_bytes": 0}"#)
            .unwrap_err()
            .contains("max_entry_bytes"));
        assert!(parse(r#"{"heuristic": 2}"#).unwrap_err().contains("heuristic"));
        assert!(parse(r#"{"on_store_error": "local"}"#)
            .unwrap_err()
            .contains("on_store_error"));
        assert!(parse(r#"{"ttl": "1m"}"#).unwrap_err().contains("unknown field"));
    }
}
