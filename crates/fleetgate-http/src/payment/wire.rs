//! The x402 wire format: what the gate sends (the 402 answer, v2 and v1), what it reads (a
//! payment in `PAYMENT-SIGNATURE` for v2 or `X-PAYMENT` for v1: base64 of JSON, decoded
//! strictly), and the facilitator's answers.
//!
//! Strict means: at most [`MAX_PAYMENT_HEADER`] bytes, standard base64 with padding, JSON with
//! no unknown or duplicate fields at the levels the gate reads, the version the header implies,
//! amounts and times as canonical decimal strings (no sign, exponent, point or leading zero).
//! Only the `exact` scheme's EIP-3009 payload (`signature` and `authorization`) is read: the
//! gate needs its payer, nonce and validity window for the replay marker.

use super::config::Offer;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest payment header accepted, in bytes of base64.
pub const MAX_PAYMENT_HEADER: usize = 8 * 1024;

/// `PAYMENT-REQUIRED` (v2: the requirements, base64).
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// `PAYMENT-SIGNATURE` (v2: the payment, base64).
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// `PAYMENT-RESPONSE` (v2: the settlement, base64).
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// `X-PAYMENT` (v1: the payment, base64).
pub const X_PAYMENT: &str = "x-payment";
/// `X-PAYMENT-RESPONSE` (v1: the settlement, base64).
pub const X_PAYMENT_RESPONSE: &str = "x-payment-response";

/// Which protocol version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn number(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }
    /// The header the settlement result goes in.
    pub fn response_header(self) -> &'static str {
        match self {
            Version::V1 => X_PAYMENT_RESPONSE,
            Version::V2 => PAYMENT_RESPONSE,
        }
    }
}

/// Whether `s` is a canonical unsigned decimal: `0`, or digits not starting with `0`, at most
/// 78 of them (2^256 has 78 digits).
pub fn is_canonical_amount(s: &str) -> bool {
    !s.is_empty() && s.len() <= 78 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// The v1 name of a CAIP-2 network, where v1 named it differently.
pub fn v1_network(caip2: &str) -> &str {
    match caip2 {
        "eip155:8453" => "base",
        "eip155:84532" => "base-sepolia",
        "eip155:43114" => "avalanche",
        "eip155:43113" => "avalanche-fuji",
        "eip155:137" => "polygon",
        "eip155:80002" => "polygon-amoy",
        other => other,
    }
}

/// An offer as v2 writes it (`PaymentRequirements`).
pub fn requirements_v2(o: &Offer) -> Value {
    json!({
        "scheme": o.scheme,
        "network": o.network,
        "asset": o.asset,
        "amount": o.amount,
        "payTo": o.pay_to,
        "maxTimeoutSeconds": o.max_timeout.as_secs().max(1),
        "extra": o.extra,
    })
}

/// The resource a 402 answer is about.
pub struct Resource<'a> {
    pub url: &'a str,
    pub description: &'a str,
    pub mime_type: &'a str,
}

/// An offer as v1 writes it.
pub fn requirements_v1(o: &Offer, r: &Resource<'_>) -> Value {
    json!({
        "scheme": o.scheme,
        "network": v1_network(&o.network),
        "maxAmountRequired": o.amount,
        "asset": o.asset,
        "payTo": o.pay_to,
        "resource": r.url,
        "description": r.description,
        "mimeType": r.mime_type,
        "maxTimeoutSeconds": o.max_timeout.as_secs().max(1),
        "extra": o.extra,
    })
}

/// The body of a 402 answer (and, base64, the v2 `PAYMENT-REQUIRED` header).
pub fn payment_required(version: Version, error: &str, offers: &[Offer], r: &Resource<'_>) -> Value {
    match version {
        Version::V2 => json!({
            "x402Version": 2,
            "error": error,
            "resource": {"url": r.url, "description": r.description, "mimeType": r.mime_type},
            "accepts": offers.iter().map(requirements_v2).collect::<Vec<_>>(),
        }),
        Version::V1 => json!({
            "x402Version": 1,
            "error": error,
            "accepts": offers.iter().map(|o| requirements_v1(o, r)).collect::<Vec<_>>(),
        }),
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The EIP-3009 authorization inside an `exact` payload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authorization {
    pub from: String,
    pub to: String,
    pub value: String,
    pub valid_after: String,
    pub valid_before: String,
    pub nonce: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactPayload {
    pub signature: String,
    pub authorization: Authorization,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceV2 {
    pub url: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub mime_type: Option<String>,
}

/// What a v2 client says it accepted (`PaymentRequirements`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Accepted {
    pub scheme: String,
    pub network: String,
    pub asset: String,
    pub amount: String,
    pub pay_to: String,
    pub max_timeout_seconds: u64,
    #[serde(default)]
    pub extra: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PayloadV2 {
    x402_version: u8,
    #[serde(default)]
    #[allow(dead_code)]
    resource: Option<ResourceV2>,
    accepted: Accepted,
    payload: ExactPayload,
    #[serde(default)]
    #[allow(dead_code)]
    extensions: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PayloadV1 {
    x402_version: u8,
    scheme: String,
    network: String,
    payload: ExactPayload,
}

/// A payment as decoded from its header.
#[derive(Debug, Clone)]
pub struct Payment {
    pub version: Version,
    pub scheme: String,
    pub network: String,
    /// v2 only: what the client says it accepted.
    pub accepted: Option<Accepted>,
    pub payload: ExactPayload,
    /// The JSON as sent, for the facilitator and the verdict cache.
    pub raw: Value,
    /// `validAfter` and `validBefore`, unix seconds.
    pub valid_after: u64,
    pub valid_before: u64,
}

impl Payment {
    /// The payer (the authorization's `from`).
    pub fn payer(&self) -> &str {
        &self.payload.authorization.from
    }
}

/// Why a payment header was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the payment header is longer than {MAX_PAYMENT_HEADER} bytes")]
    TooLarge,
    #[error("the payment header is not standard base64 (with padding)")]
    NotBase64,
    #[error("the payment is not valid JSON of the expected shape: {0}")]
    NotJson(String),
    #[error("the payment says x402Version {found}, but {header} carries version {expected}")]
    WrongVersion {
        found: u8,
        expected: u8,
        header: &'static str,
    },
    #[error("{field} {value:?} is not a canonical decimal (no sign, exponent, point or leading zeros)")]
    NotCanonical { field: &'static str, value: String },
    #[error("both PAYMENT-SIGNATURE and X-PAYMENT are present, or one is sent twice")]
    Ambiguous,
}

/// Decodes the payment a request carries in `header` (its version), strictly.
pub fn decode(version: Version, header: &[u8]) -> Result<Payment, Malformed> {
    if header.len() > MAX_PAYMENT_HEADER {
        return Err(Malformed::TooLarge);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(header)
        .map_err(|_| Malformed::NotBase64)?;
    let not_json = |e: serde_json::Error| Malformed::NotJson(e.to_string());
    let raw: Value = serde_json::from_slice(&bytes).map_err(not_json)?;
    let (found, scheme, network, accepted, payload) = match version {
        Version::V2 => {
            let p: PayloadV2 = serde_json::from_slice(&bytes).map_err(not_json)?;
            let (s, n) = (p.accepted.scheme.clone(), p.accepted.network.clone());
            (p.x402_version, s, n, Some(p.accepted), p.payload)
        }
        Version::V1 => {
            let p: PayloadV1 = serde_json::from_slice(&bytes).map_err(not_json)?;
            (p.x402_version, p.scheme, p.network, None, p.payload)
        }
    };
    if found != version.number() {
        return Err(Malformed::WrongVersion {
            found,
            expected: version.number(),
            header: match version {
                Version::V1 => "X-PAYMENT",
                Version::V2 => "PAYMENT-SIGNATURE",
            },
        });
    }
    let canonical = |field: &'static str, value: &str| {
        if is_canonical_amount(value) {
            Ok(())
        } else {
            Err(Malformed::NotCanonical {
                field,
                value: value.chars().take(80).collect(),
            })
        }
    };
    let a = &payload.authorization;
    canonical("authorization.value", &a.value)?;
    canonical("authorization.validAfter", &a.valid_after)?;
    canonical("authorization.validBefore", &a.valid_before)?;
    if let Some(acc) = &accepted {
        canonical("accepted.amount", &acc.amount)?;
    }
    let secs = |field: &'static str, v: &str| {
        v.parse::<u64>().map_err(|_| Malformed::NotCanonical {
            field,
            value: v.chars().take(80).collect(),
        })
    };
    let valid_after = secs("authorization.validAfter", &a.valid_after)?;
    let valid_before = secs("authorization.validBefore", &a.valid_before)?;
    Ok(Payment {
        version,
        scheme,
        network,
        accepted,
        payload,
        raw,
        valid_after,
        valid_before,
    })
}

/// The payment of a request: from `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1); `None` when
/// there is neither.
pub fn from_headers(headers: &http::HeaderMap) -> Option<Result<Payment, Malformed>> {
    let mut v2 = headers.get_all(PAYMENT_SIGNATURE).iter();
    let mut v1 = headers.get_all(X_PAYMENT).iter();
    let (a, b) = (v2.next(), v1.next());
    if v2.next().is_some() || v1.next().is_some() || (a.is_some() && b.is_some()) {
        return Some(Err(Malformed::Ambiguous));
    }
    match (a, b) {
        (Some(h), None) => Some(decode(Version::V2, h.as_bytes())),
        (None, Some(h)) => Some(decode(Version::V1, h.as_bytes())),
        _ => None,
    }
}

/// The payer a request declares, unverified: for `key: payer` (rate limits run before the gate).
pub fn declared_payer(headers: &http::HeaderMap) -> Option<String> {
    match from_headers(headers)? {
        Ok(p) => Some(p.payer().to_ascii_lowercase()),
        Err(_) => None,
    }
}

/// Why a well-formed payment does not match what the route offers (402, the facilitator never
/// asked).
pub fn matching<'o>(p: &Payment, offers: &'o [Offer]) -> Result<&'o Offer, String> {
    let addr_eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let net_eq = |o: &Offer| match p.version {
        Version::V2 => o.network == p.network,
        Version::V1 => o.network == p.network || v1_network(&o.network) == p.network,
    };
    let by_scheme: Vec<&Offer> = offers.iter().filter(|o| o.scheme == p.scheme).collect();
    if by_scheme.is_empty() {
        return Err(format!("scheme {:?} is not accepted here", p.scheme));
    }
    let by_net: Vec<&Offer> = by_scheme.into_iter().filter(|o| net_eq(o)).collect();
    if by_net.is_empty() {
        return Err(format!("network {:?} is not accepted here", p.network));
    }
    let a = &p.payload.authorization;
    let mut why = String::new();
    for o in by_net {
        if let Some(acc) = &p.accepted {
            if !addr_eq(&acc.asset, &o.asset) {
                why = format!("asset {:?} is not accepted here", acc.asset);
                continue;
            }
            if !addr_eq(&acc.pay_to, &o.pay_to) {
                why = format!("recipient {:?} does not match the offered payTo", acc.pay_to);
                continue;
            }
            if acc.amount != o.amount {
                why = format!("amount {} does not match the offered {}", acc.amount, o.amount);
                continue;
            }
        }
        if !addr_eq(&a.to, &o.pay_to) {
            why = format!("the authorization pays {:?}, not the offered payTo", a.to);
            continue;
        }
        if a.value != o.amount {
            why = format!("the authorization is for {}, not the offered {}", a.value, o.amount);
            continue;
        }
        return Ok(o);
    }
    Err(why)
}

/// The facilitator's answer to `/verify`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyAnswer {
    pub is_valid: bool,
    #[serde(default)]
    pub invalid_reason: Option<String>,
    #[serde(default)]
    pub payer: Option<String>,
}

/// The facilitator's answer to `/settle` (passed on to the client, base64, as received).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleAnswer {
    pub success: bool,
    #[serde(default)]
    pub error_reason: Option<String>,
    #[serde(default)]
    pub payer: Option<String>,
    #[serde(default)]
    pub transaction: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn offer() -> Offer {
        Offer {
            scheme: "exact".into(),
            network: "eip155:84532".into(),
            asset: "0xAsset".into(),
            pay_to: "0xPayTo".into(),
            amount: "10000".into(),
            max_timeout: Duration::from_secs(60),
            extra: json!({"name": "USDC", "version": "2"}),
        }
    }

    fn v2(amount: &str, to: &str) -> Value {
        json!({
            "x402Version": 2,
            "accepted": {"scheme": "exact", "network": "eip155:84532", "asset": "0xasset", "amount": amount,
                          "payTo": to, "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}},
            "payload": {"signature": "0xsig", "authorization": {"from": "0xPayer", "to": to, "value": amount,
                          "validAfter": "0", "validBefore": "2000000000", "nonce": "0x01"}}
        })
    }

    fn enc(v: &Value) -> Vec<u8> {
        b64(v.to_string().as_bytes()).into_bytes()
    }

    #[test]
    fn a_good_payment_decodes_and_matches() {
        let p = decode(Version::V2, &enc(&v2("10000", "0xpayto"))).unwrap();
        assert_eq!(p.payer(), "0xPayer");
        assert_eq!(p.valid_before, 2_000_000_000);
        assert!(matching(&p, &[offer()]).is_ok());
    }

    #[test]
    fn bad_input_is_refused_precisely() {
        assert_eq!(decode(Version::V2, b"***").unwrap_err(), Malformed::NotBase64);
        assert!(matches!(
            decode(Version::V2, &b64(b"not json").into_bytes()),
            Err(Malformed::NotJson(_))
        ));
        assert!(matches!(
            decode(Version::V2, &vec![b'A'; MAX_PAYMENT_HEADER + 4]),
            Err(Malformed::TooLarge)
        ));
        let mut extra = v2("10000", "0xpayto");
        extra["surprise"] = json!(1);
        assert!(matches!(decode(Version::V2, &enc(&extra)), Err(Malformed::NotJson(_))));
        let mut wrong = v2("10000", "0xpayto");
        wrong["x402Version"] = json!(1);
        assert!(matches!(
            decode(Version::V2, &enc(&wrong)),
            Err(Malformed::WrongVersion { .. })
        ));
        for bad in ["-10000", "1e4", "010000", "10000.0", "+10000"] {
            assert!(
                matches!(
                    decode(Version::V2, &enc(&v2(bad, "0xpayto"))),
                    Err(Malformed::NotCanonical { .. })
                ),
                "{bad}"
            );
        }
        // Whitespace and URL-safe base64 are not standard base64.
        let mut spaced = enc(&v2("10000", "0xpayto"));
        spaced.insert(4, b' ');
        assert!(matches!(decode(Version::V2, &spaced), Err(Malformed::NotBase64)));
        // A duplicate field.
        let dup = br#"{"x402Version":2,"x402Version":2}"#;
        assert!(matches!(
            decode(Version::V2, &b64(dup).into_bytes()),
            Err(Malformed::NotJson(_))
        ));
    }

    #[test]
    fn mismatches_name_the_reason() {
        let p = decode(Version::V2, &enc(&v2("9999", "0xpayto"))).unwrap();
        assert!(matching(&p, &[offer()]).unwrap_err().contains("amount"));
        let p = decode(Version::V2, &enc(&v2("10000", "0xother"))).unwrap();
        assert!(matching(&p, &[offer()]).unwrap_err().contains("recipient"));
        let mut net = v2("10000", "0xpayto");
        net["accepted"]["network"] = json!("eip155:1");
        let p = decode(Version::V2, &enc(&net)).unwrap();
        assert!(matching(&p, &[offer()]).unwrap_err().contains("network"));
    }

    #[test]
    fn v1_payments_use_v1_network_names() {
        let v1 = json!({"x402Version": 1, "scheme": "exact", "network": "base-sepolia",
            "payload": {"signature": "0xsig", "authorization": {"from": "0xPayer", "to": "0xpayto", "value": "10000",
                          "validAfter": "0", "validBefore": "2000000000", "nonce": "0x01"}}});
        let p = decode(Version::V1, &enc(&v1)).unwrap();
        assert!(matching(&p, &[offer()]).is_ok());
        let r = Resource {
            url: "http://h/paid",
            description: "d",
            mime_type: "",
        };
        let body = payment_required(Version::V1, "x", &[offer()], &r);
        assert_eq!(body["accepts"][0]["maxAmountRequired"], "10000");
        assert_eq!(body["accepts"][0]["network"], "base-sepolia");
    }
}
