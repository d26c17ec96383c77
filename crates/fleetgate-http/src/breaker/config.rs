//! A circuit breaker's parameters (`upstreams.NAME.breaker`), and how the file writes them.

use crate::failure;
use crate::key::{error_at, is_token};
use crate::FailurePolicy;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Default longest cooldown an upstream's Retry-After may ask for (`max_cooldown`).
pub const DEFAULT_MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// One fleet-wide breaker per target (the default) or per key.
///
/// Deserializes from `{ failures, cooldown, max_cooldown, key, on_store_error }` (unknown
/// fields refused; errors follow [`crate::key::FIELD_MARK`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures (5xx, 429, timeouts, refused connections) that open it
    /// (`failures`, 1 to 1000, default 5), counted by each instance.
    #[serde(default = "five", deserialize_with = "failures")]
    pub failures: u32,
    /// How long it stays open (`cooldown`, a duration, default 30s), or the upstream's
    /// Retry-After when that is longer.
    #[serde(default = "default_cooldown", deserialize_with = "cooldown")]
    pub cooldown: Duration,
    /// The longest cooldown a Retry-After can ask for (`max_cooldown`, default 1h): longer
    /// ones are capped to it (and counted).
    #[serde(default = "default_max_cooldown", deserialize_with = "cooldown")]
    pub max_cooldown: Duration,
    /// What a breaker is per (`key`, default `target`): `target`, `header:NAME`,
    /// `cookie:NAME`, or a list of these. Without `target` in it, all targets share the
    /// breaker of a key.
    #[serde(default = "default_key", deserialize_with = "key")]
    pub key: Vec<BreakerKeyPart>,
    /// What to do when the store fails (`on_store_error`, default `local`: break for this
    /// instance alone).
    #[serde(default = "failure::default_local", deserialize_with = "failure::local")]
    pub on_store_error: FailurePolicy,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cooldown: default_cooldown(),
            max_cooldown: DEFAULT_MAX_COOLDOWN,
            key: default_key(),
            on_store_error: FailurePolicy::Local,
        }
    }
}

/// One part of a breaker's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BreakerKeyPart {
    /// The target the request goes to (`target`).
    Target,
    /// A request header's value (`header:NAME`, name lowercase).
    Header(String),
    /// A cookie's value (`cookie:NAME`).
    Cookie(String),
}

impl BreakerKeyPart {
    pub const ACCEPTED: &'static str =
        "target, header:NAME, cookie:NAME, or a list of these (e.g. [header:x-account, header:x-model])";

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.trim().split_once(':') {
            None if text.trim() == "target" => BreakerKeyPart::Target,
            Some(("header", n)) if is_token(n) => BreakerKeyPart::Header(n.to_ascii_lowercase()),
            Some(("cookie", n)) if is_token(n) => BreakerKeyPart::Cookie(n.to_string()),
            _ => return None,
        })
    }
}

impl fmt::Display for BreakerKeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakerKeyPart::Target => f.write_str("target"),
            BreakerKeyPart::Header(n) => write!(f, "header:{n}"),
            BreakerKeyPart::Cookie(n) => write!(f, "cookie:{n}"),
        }
    }
}

fn five() -> u32 {
    5
}

fn default_cooldown() -> Duration {
    Duration::from_secs(30)
}

fn default_max_cooldown() -> Duration {
    DEFAULT_MAX_COOLDOWN
}

fn default_key() -> Vec<BreakerKeyPart> {
    vec![BreakerKeyPart::Target]
}

fn failures<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = Option::<i64>::deserialize(d)?.unwrap_or(5);
    u32::try_from(n).ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
        error_at(
            "",
            format!("{n} is out of range; accepted: a whole number from 1 to 1000 (default 5)"),
        )
    })
}

fn cooldown<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(default_cooldown());
    };
    crate::payment::parse_duration(&text).map_err(|why| {
        error_at(
            "",
            format!("{why}; accepted: a whole number and a unit (ms, s, m, h or d) from 1ms to 7d, e.g. 30s"),
        )
    })
}

fn key<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BreakerKeyPart>, D::Error> {
    struct V;
    fn part<E: de::Error>(text: &str, at: &str, seen: &[BreakerKeyPart]) -> Result<BreakerKeyPart, E> {
        let p = BreakerKeyPart::parse(text).ok_or_else(|| {
            error_at(
                at,
                format!(
                    "unknown breaker key part {text:?}; accepted: {}",
                    BreakerKeyPart::ACCEPTED
                ),
            )
        })?;
        if seen.contains(&p) {
            return Err(error_at(
                at,
                format!("key part {text:?} is listed twice; accepted: each part once"),
            ));
        }
        Ok(p)
    }
    impl<'de> Visitor<'de> for V {
        type Value = Vec<BreakerKeyPart>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a breaker key form (target, header:NAME, cookie:NAME) or a list of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![part(v, "", &[])?])
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(default_key())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(text) = seq.next_element::<String>()? {
                let p = part(&text, &format!("[{}]", out.len()), &out)?;
                out.push(p);
            }
            if out.is_empty() {
                return Err(error_at(
                    "",
                    format!("the key lists no part; accepted: {}", BreakerKeyPart::ACCEPTED),
                ));
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}
