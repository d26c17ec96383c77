//! A route's in-flight dedup (`dedup:`), and how the configuration file writes it.

use crate::failure::FailurePolicy;
use crate::key::{self, error_at, is_token};
use crate::payment::config::duration;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Most `header:NAME` parts a key may list.
const MAX_HEADERS: usize = 16;
/// Largest `max_body` and `max_response`: 64 MiB (both are held in memory).
pub const MAX_SIZE: usize = 64 << 20;

/// One part of what makes two requests identical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupKeyPart {
    /// `method`.
    Method,
    /// `path`: the path and the query.
    Path,
    /// `body`: the whole request body (read ahead up to `max_body`).
    Body,
    /// `header:NAME` (lowercase): the header's values, in order.
    Header(String),
}

/// The dedup of one route.
///
/// Deserializes from `{ key, window, max_wait, lease, max_body, max_response, on_store_error }`
/// (unknown fields refused; errors follow [`crate::key::FIELD_MARK`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Written")]
pub struct DedupConfig {
    /// What makes two requests identical (`key`, default `[method, path, body]`).
    pub key: Vec<DedupKeyPart>,
    /// How long a completed response is served to identical requests (`window`, default 10s).
    pub window: Duration,
    /// Longest a follower waits for its leader before calling the upstream itself (`max_wait`,
    /// default 30s).
    pub max_wait: Duration,
    /// The leader's lock lease (`lease`, default 5s), renewed while its call lasts: when the
    /// leader's instance dies, followers notice within about this long.
    pub lease: Duration,
    /// Largest request body deduplicated (`max_body`, default 1 MiB); a longer one passes
    /// through (`X-Dedup: fallthrough`).
    pub max_body: usize,
    /// Largest response shared with followers and stored (`max_response`, default 1 MiB).
    pub max_response: usize,
    /// What to do when the store fails (`on_store_error`, default `open`: pass through).
    pub on_store_error: FailurePolicy,
}

impl DedupConfig {
    /// Whether the key hashes the request body (the gateway then reads it ahead).
    pub fn reads_body(&self) -> bool {
        self.key.contains(&DedupKeyPart::Body)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default, deserialize_with = "key_parts")]
    key: Option<Vec<DedupKeyPart>>,
    #[serde(default, deserialize_with = "duration")]
    window: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max_wait: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    lease: Option<Duration>,
    #[serde(default, deserialize_with = "size")]
    max_body: Option<usize>,
    #[serde(default, deserialize_with = "size")]
    max_response: Option<usize>,
    #[serde(default)]
    on_store_error: Option<FailurePolicy>,
}

impl TryFrom<Written> for DedupConfig {
    type Error = String;
    fn try_from(w: Written) -> Result<Self, String> {
        let lease = w.lease.unwrap_or(Duration::from_secs(5));
        if lease < Duration::from_millis(100) || lease > Duration::from_secs(600) {
            return Err(key::marked(
                ".lease",
                "the lease is outside 100ms to 10m; accepted: a duration from 100ms to 10m (default 5s)",
            ));
        }
        let on_store_error = w.on_store_error.unwrap_or(FailurePolicy::Open);
        if on_store_error == FailurePolicy::Local {
            return Err(key::marked(
                ".on_store_error",
                "local is not a dedup policy (there is no share of a fleet to decide on); accepted: open (pass through, the default) or closed (503)",
            ));
        }
        Ok(DedupConfig {
            key: w
                .key
                .unwrap_or_else(|| vec![DedupKeyPart::Method, DedupKeyPart::Path, DedupKeyPart::Body]),
            window: w.window.unwrap_or(Duration::from_secs(10)),
            max_wait: w.max_wait.unwrap_or(Duration::from_secs(30)),
            lease,
            max_body: w.max_body.unwrap_or(1 << 20),
            max_response: w.max_response.unwrap_or(1 << 20),
            on_store_error,
        })
    }
}

fn key_parts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<DedupKeyPart>>, D::Error> {
    let Some(written) = Option::<Vec<String>>::deserialize(d)? else {
        return Ok(None);
    };
    if written.is_empty() {
        return Err(error_at(
            "",
            "the key is empty; accepted: a list of method, path, body and header:NAME",
        ));
    }
    let mut parts = Vec::with_capacity(written.len());
    for (i, text) in written.iter().enumerate() {
        let part = match text.trim() {
            "method" => DedupKeyPart::Method,
            "path" => DedupKeyPart::Path,
            "body" => DedupKeyPart::Body,
            other => match other.strip_prefix("header:") {
                Some(name) if is_token(&name.to_ascii_lowercase()) => {
                    DedupKeyPart::Header(name.to_ascii_lowercase())
                }
                Some(_) => {
                    return Err(error_at(
                        &format!("[{i}]"),
                        format!("{text:?} does not name a header; accepted: header:NAME with NAME an HTTP token such as x-user-id"),
                    ))
                }
                None => {
                    return Err(error_at(
                        &format!("[{i}]"),
                        format!("{text:?} is not a key part; accepted: method, path, body, header:NAME"),
                    ))
                }
            },
        };
        if parts.contains(&part) {
            return Err(error_at(&format!("[{i}]"), format!("{text:?} is listed twice")));
        }
        parts.push(part);
    }
    if parts.iter().filter(|p| matches!(p, DedupKeyPart::Header(_))).count() > MAX_HEADERS {
        return Err(error_at(
            "",
            format!("too many header parts; accepted: at most {MAX_HEADERS} header:NAME parts"),
        ));
    }
    Ok(Some(parts))
}

/// A size: a whole number of bytes, or with a unit (`KiB`, `MiB`, `KB`, `MB`, `B`), from 1 byte
/// to [`MAX_SIZE`].
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Int(u64),
        Text(String),
    }
    let Some(written) = Option::<Size>::deserialize(d).map_err(|_| {
        D::Error::custom(key::marked(
            "",
            "not a size; accepted: bytes as a whole number, or with a unit, e.g. 65536, 64KiB, 1MiB",
        ))
    })?
    else {
        return Ok(None);
    };
    let bytes = match written {
        Size::Int(n) => Some(n),
        Size::Text(t) => parse_size(&t),
    };
    match bytes.filter(|n| (1..=MAX_SIZE as u64).contains(n)) {
        Some(n) => Ok(Some(n as usize)),
        None => Err(error_at(
            "",
            "not a size from 1 byte to 64MiB; accepted: bytes as a whole number, or with a unit (B, KB, KiB, MB, MiB), e.g. 65536, 64KiB, 1MiB",
        )),
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: serde_json::Value) -> Result<DedupConfig, String> {
        serde_json::from_value(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = read(serde_json::json!({})).expect("defaults");
        assert_eq!(
            c.key,
            vec![DedupKeyPart::Method, DedupKeyPart::Path, DedupKeyPart::Body]
        );
        assert_eq!(c.window, Duration::from_secs(10));
        assert_eq!(c.max_wait, Duration::from_secs(30));
        assert_eq!(c.lease, Duration::from_secs(5));
        assert_eq!((c.max_body, c.max_response), (1 << 20, 1 << 20));
        assert_eq!(c.on_store_error, FailurePolicy::Open);
        assert!(c.reads_body());
    }

    #[test]
    fn fields_are_read() {
        let c = read(serde_json::json!({"key": ["method", "header:X-Model"], "window": "2s", "max_body": "64KiB", "max_response": 1000, "on_store_error": "closed"}))
            .expect("read");
        assert_eq!(
            c.key,
            vec![DedupKeyPart::Method, DedupKeyPart::Header("x-model".into())]
        );
        assert_eq!(
            (c.window, c.max_body, c.max_response),
            (Duration::from_secs(2), 65536, 1000)
        );
        assert!(!c.reads_body());
        assert_eq!(c.on_store_error, FailurePolicy::Closed);
    }

    #[test]
    fn bad_input_names_the_field() {
        for (yaml, field, why) in [
            (serde_json::json!({"key": ["method", "bdy"]}), "[1]", "not a key part"),
            (serde_json::json!({"key": ["path", "path"]}), "[1]", "listed twice"),
            (serde_json::json!({"key": ["header:"]}), "[0]", "does not name a header"),
            (serde_json::json!({"key": []}), "", "empty"),
            (serde_json::json!({"max_body": "1GiB"}), "", "64MiB"),
            (serde_json::json!({"max_body": "lots"}), "", "accepted"),
            (serde_json::json!({"lease": "10ms"}), ".lease", "100ms"),
            (
                serde_json::json!({"on_store_error": "local"}),
                ".on_store_error",
                "not a dedup policy",
            ),
        ] {
            let e = read(yaml.clone()).expect_err("refused");
            assert!(e.contains(&format!("\u{1}{field}\u{1}")), "{yaml}: {e}");
            assert!(e.contains(why), "{yaml}: {e}");
        }
        assert!(read(serde_json::json!({"windw": "1s"}))
            .expect_err("unknown")
            .contains("unknown field"));
    }
}
