//! A route's idempotency keys (`idempotency:`), and how the configuration file writes it.

use crate::failure::FailurePolicy;
use crate::key::{self, error_at, KeyPart};
use crate::payment::config::duration;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Largest `max_request_bytes` and `max_response_bytes`: both are held in memory (and the
/// response in the store).
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

/// The idempotency keys of one route.
///
/// Deserializes from `{ ttl, required, key, in_flight_ttl, max_key_length, max_request_bytes,
/// max_response_bytes, on_store_error }` (unknown fields refused; errors follow
/// [`crate::key::FIELD_MARK`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Written")]
pub struct IdempotencyConfig {
    /// How long a completed response is replayed (`ttl`, default 24 h).
    pub ttl: Duration,
    /// Whether an unsafe request without `Idempotency-Key` gets 400 (`required`, default false).
    pub required: bool,
    /// Whose key it is (`key`, a key form as for limits); `None`: the principal a stage set
    /// (payer, session, authenticated identity), else the client IP.
    pub key: Option<Vec<KeyPart>>,
    /// How long a claim lasts while its request runs (`in_flight_ttl`, default 1 m): a gateway
    /// that dies mid-request frees the key after this.
    pub in_flight_ttl: Duration,
    /// Longest key, in characters of the decoded sf-string (`max_key_length`, default 255).
    pub max_key_length: usize,
    /// Largest request body fingerprinted (`max_request_bytes`, default 1 MiB): a larger one
    /// gets 413.
    pub max_request_bytes: usize,
    /// Largest response body kept for replays (`max_response_bytes`, default 1 MiB): a larger
    /// one is passed through and not kept (the claim is released).
    pub max_response_bytes: usize,
    /// What to do when the store fails (`on_store_error`, default `closed`).
    pub on_store_error: FailurePolicy,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            ttl: Duration::from_secs(24 * 3600),
            required: false,
            key: None,
            in_flight_ttl: Duration::from_secs(60),
            max_key_length: 255,
            max_request_bytes: 1024 * 1024,
            max_response_bytes: 1024 * 1024,
            on_store_error: FailurePolicy::Closed,
        }
    }
}

/// `idempotency:` as the file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default, deserialize_with = "duration")]
    ttl: Option<Duration>,
    #[serde(default)]
    required: Option<bool>,
    #[serde(default, deserialize_with = "optional_key")]
    key: Option<Vec<KeyPart>>,
    #[serde(default, deserialize_with = "duration")]
    in_flight_ttl: Option<Duration>,
    #[serde(default)]
    max_key_length: Option<i64>,
    #[serde(default, deserialize_with = "byte_size")]
    max_request_bytes: Option<usize>,
    #[serde(default, deserialize_with = "byte_size")]
    max_response_bytes: Option<usize>,
    #[serde(default)]
    on_store_error: Option<FailurePolicy>,
}

impl TryFrom<Written> for IdempotencyConfig {
    type Error = String;
    fn try_from(w: Written) -> Result<Self, String> {
        let d = IdempotencyConfig::default();
        let max_key_length = match w.max_key_length {
            None => d.max_key_length,
            Some(n @ 1..=1024) => n as usize,
            Some(n) => {
                return Err(key::marked(
                    ".max_key_length",
                    format!("{n} is out of range; accepted: 1 to 1024 characters (default 255)"),
                ))
            }
        };
        if let Some(parts) = &w.key {
            if parts.iter().any(KeyPart::reads_body) {
                return Err(key::marked(
                    ".key",
                    "a body field cannot scope idempotency keys (the body is what the key protects); accepted: ip, header:NAME, cookie:NAME, payer, route, global",
                ));
            }
        }
        let config = IdempotencyConfig {
            ttl: w.ttl.unwrap_or(d.ttl),
            required: w.required.unwrap_or(d.required),
            key: w.key,
            in_flight_ttl: w.in_flight_ttl.unwrap_or(d.in_flight_ttl),
            max_key_length,
            max_request_bytes: w.max_request_bytes.unwrap_or(d.max_request_bytes),
            max_response_bytes: w.max_response_bytes.unwrap_or(d.max_response_bytes),
            on_store_error: w.on_store_error.unwrap_or(d.on_store_error),
        };
        if config.in_flight_ttl > config.ttl {
            return Err(key::marked(
                ".in_flight_ttl",
                "in_flight_ttl is longer than ttl; accepted: a claim shorter than (or as long as) the time a completed response is kept",
            ));
        }
        Ok(config)
    }
}

fn optional_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<KeyPart>>, D::Error> {
    key::key(d).map(Some)
}

/// A size like `1MiB`, `64KiB`, `512B` or a plain number of bytes (1 byte to 16 MiB).
fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(i64),
        Text(String),
    }
    let Some(written) = Option::<Size>::deserialize(d)? else {
        return Ok(None);
    };
    let accepted = "accepted: bytes as a number or with a unit (B, KiB, MiB), from 1 byte to 16MiB, e.g. 64KiB";
    let bytes = match &written {
        Size::Number(n) => usize::try_from(*n).ok(),
        Size::Text(t) => parse_size(t),
    };
    let shown = match &written {
        Size::Number(n) => n.to_string(),
        Size::Text(t) => format!("{t:?}"),
    };
    match bytes {
        Some(b) if (1..=MAX_BYTES).contains(&b) => Ok(Some(b)),
        Some(_) => Err(error_at("", format!("{shown} is out of range; {accepted}"))),
        None => Err(error_at("", format!("{shown} is not a size; {accepted}"))),
    }
}

fn parse_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => return None,
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(v: serde_json::Value) -> Result<IdempotencyConfig, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_fields() {
        let c = read(serde_json::json!({})).unwrap();
        assert_eq!(c, IdempotencyConfig::default());
        let c = read(
            serde_json::json!({"ttl": "1h", "required": true, "key": "header:x-api-key",
            "in_flight_ttl": "30s", "max_key_length": 64, "max_request_bytes": "64KiB",
            "max_response_bytes": 4096, "on_store_error": "open"}),
        )
        .unwrap();
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert!(c.required);
        assert_eq!(c.key, Some(vec![KeyPart::Header("x-api-key".into())]));
        assert_eq!(c.in_flight_ttl, Duration::from_secs(30));
        assert_eq!(c.max_key_length, 64);
        assert_eq!(c.max_request_bytes, 64 * 1024);
        assert_eq!(c.max_response_bytes, 4096);
        assert_eq!(c.on_store_error, FailurePolicy::Open);
    }

    #[test]
    fn bad_values_are_refused_with_reasons() {
        let cases = [
            (serde_json::json!({"max_key_length": 0}), "out of range"),
            (serde_json::json!({"max_request_bytes": "2GiB"}), "not a size"),
            (serde_json::json!({"max_response_bytes": "32MiB"}), "out of range"),
            (serde_json::json!({"ttl": "1x"}), "not a duration"),
            (
                serde_json::json!({"ttl": "1m", "in_flight_ttl": "2m"}),
                "longer than ttl",
            ),
            (serde_json::json!({"key": "json:id"}), "body field"),
            (serde_json::json!({"key": "nope"}), "unknown key part"),
            (serde_json::json!({"replay": true}), "unknown field"),
        ];
        for (v, want) in cases {
            let e = read(v.clone()).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
