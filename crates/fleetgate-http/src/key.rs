//! What a limit counts by ([`KeyPart`]) and what it does with a request that lacks it
//! ([`MissingKey`]); and the conventions the limit types' `Deserialize` impls share.
//!
//! ## Errors
//! Every error these impls raise starts with [`FIELD_MARK`], the path of the field it is about
//! relative to the value being read (empty: the value itself; `.burst`; `[1]`), and
//! [`FIELD_MARK`] again, then the message (why, and what is accepted). A reader such as the
//! configuration crate uses the relative path to name and locate the field; the format of the
//! file stays its business.

use crate::body_fields::{BodyField, BodyFormat};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// Brackets the relative field path at the start of an error message (see the module docs).
pub const FIELD_MARK: char = '\u{1}';

/// What a name (of a limit, route, upstream) accepts: a valid store scope.
pub const NAME_ACCEPTED: &str = "1 to 64 characters from A-Z a-z 0-9 . _ - (no ':', braces or spaces)";

/// An error about the field at `field` (relative path, see the module docs).
pub(crate) fn error_at<E: de::Error>(field: &str, message: impl fmt::Display) -> E {
    E::custom(marked(field, message))
}

/// The text of an error about the field at `field`.
pub(crate) fn marked(field: &str, message: impl fmt::Display) -> String {
    format!("{FIELD_MARK}{field}{FIELD_MARK}{message}")
}

/// A limit's name: a valid store scope.
pub(crate) fn limit_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    fleetgate_store::Keyspace::check_scope(&name).map_err(|_| {
        error_at(
            "",
            format!("limit name {name:?} is not accepted; accepted: {NAME_ACCEPTED}"),
        )
    })?;
    Ok(name)
}

/// IPv6 clients are counted by /64 unless a limit says otherwise: a host commonly holds a
/// whole /64 and can rotate addresses within it.
pub(crate) fn default_ipv6_prefix() -> u8 {
    64
}

/// `ipv6_prefix`: 1 to 128 bits (null: the default).
pub(crate) fn ipv6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let bits = Option::<i64>::deserialize(d)?.unwrap_or(64);
    u8::try_from(bits)
        .ok()
        .filter(|b| (1..=128).contains(b))
        .ok_or_else(|| {
            error_at(
                "",
                format!("{bits} is out of range; accepted: a whole number of bits from 1 to 128 (default 64)"),
            )
        })
}

/// One part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The client IP: the TCP peer, or `X-Forwarded-For` from a trusted proxy (`ip`).
    Ip,
    /// A request header's value (`header:NAME`); the name is lowercase.
    Header(String),
    /// A cookie's value (`cookie:NAME`); the name as written (cookie names are case-sensitive).
    Cookie(String),
    /// The route: one bucket per route (`route`).
    Route,
    /// One bucket for everything (`global`).
    Global,
    /// The payer (`payer`): of the request's payment session cookie, else the payer its x402
    /// payment header declares (rate limits run before the payment gate verifies it).
    Payer,
    /// A field of the request body (`json:FIELD`, `form:FIELD`), read up to the limit's
    /// `body_limit` (see [`crate::body_fields`]).
    Body(crate::body_fields::BodyField),
}

impl KeyPart {
    /// The accepted forms, for error messages.
    pub const ACCEPTED: &'static str =
        "ip, header:NAME, cookie:NAME, route, global, payer, json:FIELD, form:FIELD, or a list of these (e.g. [ip, header:x-api-key])";

    /// Whether a request can lack this part (headers, cookies and body fields can be absent).
    pub fn can_be_missing(&self) -> bool {
        matches!(
            self,
            KeyPart::Header(_) | KeyPart::Cookie(_) | KeyPart::Payer | KeyPart::Body(_)
        )
    }

    /// Whether this part is read from the request body (the gateway then reads the body first).
    pub fn reads_body(&self) -> bool {
        matches!(self, KeyPart::Body(_))
    }

    /// Reads one form as the file writes it (surrounding spaces allowed).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.trim().split_once(':') {
            None => match text.trim() {
                "ip" => KeyPart::Ip,
                "route" => KeyPart::Route,
                "global" => KeyPart::Global,
                "payer" => KeyPart::Payer,
                _ => return None,
            },
            Some(("header", n)) if is_token(n) => KeyPart::Header(n.to_ascii_lowercase()),
            Some(("cookie", n)) if is_token(n) => KeyPart::Cookie(n.to_string()),
            Some(("json", n)) => KeyPart::Body(BodyField::parse(BodyFormat::Json, n)?),
            Some(("form", n)) => KeyPart::Body(BodyField::parse(BodyFormat::Form, n)?),
            Some(_) => return None,
        })
    }
}

/// Whether `s` is an HTTP token (RFC 9110): what header names and methods are made of.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Ip => f.write_str("ip"),
            KeyPart::Header(n) => write!(f, "header:{n}"),
            KeyPart::Cookie(n) => write!(f, "cookie:{n}"),
            KeyPart::Route => f.write_str("route"),
            KeyPart::Global => f.write_str("global"),
            KeyPart::Payer => f.write_str("payer"),
            KeyPart::Body(field) => match field.format {
                BodyFormat::Json => write!(f, "json:{}", field.name),
                BodyFormat::Form => write!(f, "form:{}", field.name),
            },
        }
    }
}

/// A limit's `key`: one form, or a non-empty list of distinct forms.
pub(crate) fn key<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KeyPart>, D::Error> {
    struct V;
    fn part<E: de::Error>(text: &str, at: &str, seen: &[KeyPart]) -> Result<KeyPart, E> {
        let part = KeyPart::parse(text).ok_or_else(|| {
            error_at(
                at,
                format!("unknown key part {text:?}; accepted: {}", KeyPart::ACCEPTED),
            )
        })?;
        if seen.contains(&part) {
            return Err(error_at(
                at,
                format!("key part {text:?} is listed twice; accepted: each part once"),
            ));
        }
        Ok(part)
    }
    impl<'de> Visitor<'de> for V {
        type Value = Vec<KeyPart>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key form (ip, header:NAME, cookie:NAME, route, global, payer, json:FIELD, form:FIELD) or a list of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![part(v, "", &[])?])
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
                    format!("the key lists no part; accepted: {}", KeyPart::ACCEPTED),
                ));
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// What a limit does with a request that lacks the header or cookie its key names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MissingKey {
    /// Count all such requests in one shared anonymous bucket (the default).
    #[default]
    Shared,
    /// Refuse them with 400.
    Refuse,
}

impl MissingKey {
    /// The accepted spellings, for error messages.
    pub const ACCEPTED: &'static str = "shared, refuse";

    /// The policy as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            MissingKey::Shared => "shared",
            MissingKey::Refuse => "refuse",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "shared" => MissingKey::Shared,
            "refuse" => MissingKey::Refuse,
            _ => return None,
        })
    }
}

impl fmt::Display for MissingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy as written (surrounding spaces allowed); the error names what is accepted.
pub(crate) fn policy<E: de::Error, T>(text: String, parse: fn(&str) -> Option<T>, accepted: &str) -> Result<T, E> {
    parse(text.trim()).ok_or_else(|| error_at("", format!("unknown policy {text:?}; accepted: {accepted}")))
}

/// Null is the default, `shared`.
impl<'de> Deserialize<'de> for MissingKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = Option::<String>::deserialize(d)?;
        written.map_or(Ok(MissingKey::Shared), |t| {
            policy(t, MissingKey::parse, MissingKey::ACCEPTED)
        })
    }
}
