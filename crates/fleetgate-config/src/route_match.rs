//! `match.headers` and `match.query`: conditions on a request's headers and query parameters,
//! beside `path_prefix`, `host` and `methods` (crate::route).

use crate::fields::refuse_at;
use fleetgate_http::key::is_token;
use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// What a header must be for a route to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCondition {
    /// One of the header's values is exactly this (case-sensitive).
    Equals(String),
    /// The header is sent (any value).
    Present,
    /// The header is not sent.
    Absent,
}

/// A condition as written: a text or number (exact value) or a boolean (present / absent).
enum Written {
    Flag(bool),
    Text(String),
}

impl<'de> Deserialize<'de> for Written {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Written;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a text (the exact value), true (sent) or false (not sent)")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Written, E> {
                Ok(Written::Flag(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Written, E> {
                Ok(Written::Text(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Written, E> {
                Ok(Written::Text(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Written, E> {
                Ok(Written::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

const VALUE_ACCEPTED: &str = "printable ASCII, spaces and tabs";

fn value_ok(v: &str) -> bool {
    !v.chars().any(|c| (c.is_control() && c != '\t') || !c.is_ascii())
}

/// `match.headers`.
pub(crate) fn headers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(http::HeaderName, HeaderCondition)>, D::Error> {
    let map = Option::<BTreeMap<String, Written>>::deserialize(d)?.unwrap_or_default();
    let mut out = Vec::new();
    for (name, w) in map {
        let field = format!(".{name}");
        let lower = name.to_ascii_lowercase();
        let header = is_token(&lower)
            .then(|| http::HeaderName::from_bytes(lower.as_bytes()).ok())
            .flatten()
            .ok_or_else(|| {
                refuse_at::<D::Error>(
                    &field,
                    format!(
                        "{name:?} is not a header name; accepted: letters, digits and !#$%&'*+-.^_`|~, e.g. x-tenant"
                    ),
                )
            })?;
        if out.iter().any(|(h, _)| *h == header) {
            return Err(refuse_at(
                &field,
                format!("{lower} is given twice (header names are case-insensitive); accepted: each header once"),
            ));
        }
        let cond = match w {
            Written::Flag(true) => HeaderCondition::Present,
            Written::Flag(false) => HeaderCondition::Absent,
            Written::Text(v) if value_ok(&v) => HeaderCondition::Equals(v),
            Written::Text(_) => {
                return Err(refuse_at(
                    &field,
                    format!("the value holds control or non-ASCII characters; accepted: {VALUE_ACCEPTED}"),
                ))
            }
        };
        out.push((header, cond));
    }
    Ok(out)
}

/// `match.query`.
pub(crate) fn query<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    let map = Option::<BTreeMap<String, Written>>::deserialize(d)?.unwrap_or_default();
    let mut out = Vec::new();
    for (name, w) in map {
        let field = format!(".{name}");
        if name.is_empty() || !value_ok(&name) {
            return Err(refuse_at(
                &field,
                format!("{name:?} is not a query parameter name; accepted: a non-empty name of {VALUE_ACCEPTED}"),
            ));
        }
        match w {
            Written::Text(v) if value_ok(&v) => out.push((name, v)),
            Written::Text(_) => {
                return Err(refuse_at(&field, format!("the value holds control or non-ASCII characters; accepted: {VALUE_ACCEPTED}")))
            }
            Written::Flag(_) => {
                return Err(refuse_at(&field, "a query condition is an exact value; accepted: a text, e.g. { version: \"2\" } (write \"true\" in quotes for the word)"))
            }
        }
    }
    Ok(out)
}

/// Whether every header condition holds.
pub(crate) fn headers_hold(conditions: &[(http::HeaderName, HeaderCondition)], headers: &http::HeaderMap) -> bool {
    conditions.iter().all(|(name, cond)| match cond {
        HeaderCondition::Present => headers.contains_key(name),
        HeaderCondition::Absent => !headers.contains_key(name),
        HeaderCondition::Equals(want) => headers.get_all(name).iter().any(|v| v.as_bytes() == want.as_bytes()),
    })
}

/// Whether every query condition holds for the query `query` (`None`: no query).
pub(crate) fn query_holds(conditions: &[(String, String)], query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    conditions.iter().all(|(name, want)| {
        form_urlencoded::parse(query.as_bytes()).any(|(n, v)| n == name.as_str() && v == want.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_compared_decoded() {
        let c = vec![("v".to_string(), "a b".to_string())];
        assert!(query_holds(&c, Some("x=1&v=a%20b")));
        assert!(query_holds(&c, Some("v=a+b")));
        assert!(!query_holds(&c, Some("v=ab")));
        assert!(!query_holds(&c, None));
    }

    #[test]
    fn header_conditions() {
        let mut h = http::HeaderMap::new();
        h.append("x-tenant", http::HeaderValue::from_static("other"));
        h.append("x-tenant", http::HeaderValue::from_static("acme"));
        let name = http::HeaderName::from_static("x-tenant");
        let eq = |v: &str| vec![(name.clone(), HeaderCondition::Equals(v.into()))];
        assert!(headers_hold(&eq("acme"), &h), "any of the values");
        assert!(!headers_hold(&eq("ACME"), &h), "values are case-sensitive");
        assert!(headers_hold(&[(name.clone(), HeaderCondition::Present)], &h));
        assert!(!headers_hold(&[(name.clone(), HeaderCondition::Absent)], &h));
        assert!(headers_hold(
            &[(name, HeaderCondition::Absent)],
            &http::HeaderMap::new()
        ));
    }
}
