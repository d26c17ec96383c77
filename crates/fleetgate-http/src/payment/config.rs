//! A route's x402 payment gate (`payment:`), and how the configuration file writes it.

use crate::failure::FailurePolicy;
use crate::key::{self, error_at};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// When a verified payment is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SettleMode {
    /// Settle, then proxy (`before_response`, the default).
    #[default]
    BeforeResponse,
    /// Proxy, then settle only when the upstream answered below 500 (`after_response`).
    AfterResponse,
}

/// One offered way to pay (an entry of `accepts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub scheme: String,
    /// CAIP-2 network id, e.g. `eip155:84532`.
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    /// Atomic units of the asset, a canonical decimal string (no sign, exponent or leading zero).
    pub amount: String,
    /// How long an authorization may stay valid (`max_timeout`, default 60 s).
    pub max_timeout: Duration,
    /// Scheme-specific data, passed to clients as written (`extra`, e.g. the EIP-712 domain).
    pub extra: serde_json::Value,
}

/// The payment gate of one route.
///
/// Deserializes from `{ facilitator, facilitator_token, facilitator_timeout, accepts, settle,
/// session, description, mime_type, on_store_error }` (unknown fields refused; errors follow
/// [`crate::key::FIELD_MARK`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Written")]
pub struct PaymentConfig {
    /// Base URL of the facilitator: `POST {facilitator}/verify` and `{facilitator}/settle`.
    pub facilitator: String,
    /// Bearer token sent to the facilitator (`facilitator_token`, usually `${VAR}`).
    pub facilitator_token: Option<String>,
    /// Bound on each facilitator call (`facilitator_timeout`, default 5 s).
    pub facilitator_timeout: Duration,
    /// What the route accepts (at least one).
    pub accepts: Vec<Offer>,
    pub settle: SettleMode,
    /// A settled payment opens a session this long (`session`); `None`: no sessions.
    pub session: Option<Duration>,
    /// `resource.description` of the 402 answer (`description`, default empty).
    pub description: String,
    /// `resource.mimeType` of the 402 answer (`mime_type`, default empty).
    pub mime_type: String,
    /// What to do when the store fails (`on_store_error`, default `closed`).
    pub on_store_error: FailurePolicy,
}

/// `payment:` as the file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(deserialize_with = "facilitator_url")]
    facilitator: String,
    #[serde(default)]
    facilitator_token: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    facilitator_timeout: Option<Duration>,
    accepts: Vec<WrittenOffer>,
    #[serde(default, deserialize_with = "settle")]
    settle: SettleMode,
    #[serde(default, deserialize_with = "duration")]
    session: Option<Duration>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    on_store_error: Option<FailurePolicy>,
}

/// One entry of `accepts` as the file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenOffer {
    #[serde(deserialize_with = "word")]
    scheme: String,
    #[serde(deserialize_with = "word")]
    network: String,
    #[serde(deserialize_with = "word")]
    asset: String,
    #[serde(deserialize_with = "word")]
    pay_to: String,
    #[serde(deserialize_with = "amount")]
    amount: String,
    #[serde(default, deserialize_with = "duration")]
    max_timeout: Option<Duration>,
    #[serde(default)]
    extra: Option<serde_json::Value>,
}

impl TryFrom<Written> for PaymentConfig {
    type Error = String;
    fn try_from(w: Written) -> Result<Self, String> {
        if w.accepts.is_empty() {
            return Err(key::marked(
                ".accepts",
                "no way to pay is offered; accepted: a list of at least one { scheme, network, asset, pay_to, amount }",
            ));
        }
        if let Some(t) = &w.facilitator_token {
            if t.is_empty() || t.chars().any(|c| c.is_control() || !c.is_ascii() || c == ' ') {
                return Err(key::marked(
                    ".facilitator_token",
                    "the token is empty or holds spaces, control or non-ASCII characters; accepted: a bearer token (printable ASCII), e.g. ${FACILITATOR_TOKEN}",
                ));
            }
        }
        let accepts = w
            .accepts
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                let extra = o.extra.unwrap_or(serde_json::Value::Object(Default::default()));
                if !extra.is_object() {
                    return Err(key::marked(
                        &format!(".accepts[{i}].extra"),
                        "extra is not a mapping; accepted: a mapping, e.g. { name: USDC, version: \"2\" }",
                    ));
                }
                Ok(Offer {
                    scheme: o.scheme,
                    network: o.network,
                    asset: o.asset,
                    pay_to: o.pay_to,
                    amount: o.amount,
                    max_timeout: o.max_timeout.unwrap_or(Duration::from_secs(60)),
                    extra,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(PaymentConfig {
            facilitator: w.facilitator,
            facilitator_token: w.facilitator_token,
            facilitator_timeout: w.facilitator_timeout.unwrap_or(Duration::from_secs(5)),
            accepts,
            settle: w.settle,
            session: w.session,
            description: w.description.unwrap_or_default(),
            mime_type: w.mime_type.unwrap_or_default(),
            on_store_error: w.on_store_error.unwrap_or(FailurePolicy::Closed),
        })
    }
}

/// `http://host[:port][/path]`, without a query; the trailing `/` removed.
fn facilitator_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    let t = text.trim();
    let refuse = |why: &str| {
        error_at(
            "",
            format!(
                "{t:?} {why}; accepted: an http:// URL of the facilitator without query, e.g. http://127.0.0.1:4020"
            ),
        )
    };
    let uri: http::Uri = t.parse().map_err(|_| refuse("is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(refuse(
            "is https, which the facilitator client does not speak yet (put a local TLS-originating proxy in front)",
        )),
        _ => return Err(refuse("is not an http:// URL")),
    }
    if uri.authority().is_none() || uri.query().is_some() {
        return Err(refuse("has no host, or has a query"));
    }
    Ok(t.trim_end_matches('/').to_string())
}

fn word<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() || text.len() > 256 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(error_at(
            "",
            format!("{text:?} is empty, too long or holds spaces; accepted: 1 to 256 characters without spaces"),
        ));
    }
    Ok(text)
}

/// Atomic units as a canonical decimal string (YAML numbers are refused: write it quoted).
fn amount<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if !super::wire::is_canonical_amount(&text) || text == "0" {
        return Err(error_at(
            "",
            format!("{text:?} is not an amount; accepted: atomic units of the asset as a quoted decimal string above 0, without sign, exponent, point or leading zeros, e.g. \"10000\""),
        ));
    }
    Ok(text)
}

fn settle<'de, D: Deserializer<'de>>(d: D) -> Result<SettleMode, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(SettleMode::default());
    };
    match text.trim() {
        "before_response" => Ok(SettleMode::BeforeResponse),
        "after_response" => Ok(SettleMode::AfterResponse),
        other => Err(error_at(
            "",
            format!("unknown settle mode {other:?}; accepted: before_response (settle, then proxy) or after_response (proxy, then settle when the upstream answered below 500)"),
        )),
    }
}

/// A duration like `500ms`, `30s`, `10m` (1 ms to 7 days; null: the default).
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    parse_duration(&text).map(Some).map_err(|why| {
        error_at(
            "",
            format!(
                "{why}; accepted: a whole number and a unit (ms, s, m, h or d) from 1ms to 7d, e.g. 500ms, 30s, 10m"
            ),
        )
    })
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?} is not a duration")),
    };
    let ms = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .filter(|ms| (1..=7 * 86_400_000).contains(ms))
        .ok_or_else(|| format!("{text:?} is out of range"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: serde_json::Value) -> Result<PaymentConfig, String> {
        serde_json::from_value(yaml).map_err(|e| e.to_string())
    }

    fn offer() -> serde_json::Value {
        serde_json::json!({"scheme": "exact", "network": "eip155:84532", "asset": "0xA", "pay_to": "0xB", "amount": "10000"})
    }

    #[test]
    fn defaults_and_fields() {
        let c = read(serde_json::json!({"facilitator": "http://127.0.0.1:4020/", "accepts": [offer()]})).unwrap();
        assert_eq!(c.facilitator, "http://127.0.0.1:4020");
        assert_eq!(c.on_store_error, FailurePolicy::Closed);
        assert_eq!(c.settle, SettleMode::BeforeResponse);
        assert_eq!(c.accepts[0].max_timeout, Duration::from_secs(60));
        assert_eq!(c.facilitator_timeout, Duration::from_secs(5));
        assert!(c.session.is_none());
    }

    #[test]
    fn bad_values_are_refused_with_reasons() {
        for amount in ["-1", "1e5", "010", "0", "1.5", "", "+1"] {
            let mut o = offer();
            o["amount"] = amount.into();
            let e = read(serde_json::json!({"facilitator": "http://h:1", "accepts": [o]})).unwrap_err();
            assert!(e.contains("is not an amount"), "{amount}: {e}");
        }
        let e = read(serde_json::json!({"facilitator": "https://h", "accepts": [offer()]})).unwrap_err();
        assert!(e.contains("https"), "{e}");
        let e = read(serde_json::json!({"facilitator": "http://h:1", "accepts": []})).unwrap_err();
        assert!(e.contains("no way to pay"), "{e}");
        let e = read(serde_json::json!({"facilitator": "http://h:1", "accepts": [offer()], "settle": "later"}))
            .unwrap_err();
        assert!(e.contains("unknown settle mode"), "{e}");
        let e =
            read(serde_json::json!({"facilitator": "http://h:1", "accepts": [offer()], "session": "10x"})).unwrap_err();
        assert!(e.contains("not a duration"), "{e}");
        let e = read(serde_json::json!({"facilitator": "http://h:1", "accepts": [offer()], "price": 1})).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
