//! Header rules per route (`request_headers`, `response_headers`): `set` replaces every value
//! of a header, `add` appends one, `remove` deletes every value. Applied in that order:
//! remove, then set, then add.
//!
//! Two stages: [`RequestHeaders`] edits the request on the way in (it is the last stage in, so
//! limits and other stages see the client's headers), [`ResponseHeaders`] edits the response on
//! the way out (it is the last stage out, so it also sees the headers other stages added, such
//! as RateLimit). A route without rules has neither, at the cost of one branch per phase.
//!
//! What cannot be edited, and why (refused when the file is read):
//! - hop-by-hop and framing headers (`connection`, `keep-alive`, `proxy-connection`, `te`,
//!   `trailer`, `transfer-encoding`, `upgrade`, `content-length`): they describe one connection
//!   or the body's framing, which the gateway manages on each side;
//! - `host` may only be `set` in `request_headers` (the upstream then sees that Host); adding
//!   a second Host or removing it would make the request invalid.

use crate::context::RequestCtx;
use crate::key::{is_token, FIELD_MARK};
use crate::stage::{Flow, Stage};
use crate::store_ctx::StageStore;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// Headers no rule may touch (see the module documentation).
const UNEDITABLE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// One side's rules, checked: names valid and editable, values header-safe, a name in at most
/// one of `set`, `add` and `remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Replace every value of the header with this one.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append this value.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Delete every value.
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the rules: remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// The rules as written: `{ set: {name: value}, add: {name: value}, remove: [name] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default)]
    set: Option<Pairs>,
    #[serde(default)]
    add: Option<Pairs>,
    #[serde(default)]
    remove: Option<Vec<String>>,
}

/// A mapping of header names to values, in file order.
struct Pairs(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of header names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    out.push((name, map.next_value::<String>()?));
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn refuse_at<E: serde::de::Error>(field: &str, message: impl fmt::Display) -> E {
    E::custom(format_args!("{FIELD_MARK}{field}{FIELD_MARK}{message}"))
}

const NAME_ACCEPTED: &str = "letters, digits and !#$%&'*+-.^_`|~, e.g. x-gateway";

/// Checks one name for the rule list `list` (`set`, `add`, `remove`).
fn name<E: serde::de::Error>(field: &str, list: &str, text: &str, request: bool) -> Result<HeaderName, E> {
    let lower = text.trim().to_ascii_lowercase();
    if !is_token(&lower) {
        return Err(refuse_at(
            field,
            format!("{text:?} is not a header name; accepted: {NAME_ACCEPTED}"),
        ));
    }
    if UNEDITABLE.contains(&lower.as_str()) {
        return Err(refuse_at(field, format!(
            "{lower} cannot be edited: it is hop-by-hop or framing, managed by the gateway on each connection; accepted: any other header name"
        )));
    }
    if lower == "host" && !(request && list == "set") {
        let why = if request {
            "host can only be set (one value), not added or removed"
        } else {
            "host is a request header"
        };
        return Err(refuse_at(field, format!("{why}; accepted: request_headers.set.host")));
    }
    HeaderName::from_bytes(lower.as_bytes()).map_err(|_| {
        refuse_at(
            field,
            format!("{text:?} is not a header name; accepted: {NAME_ACCEPTED}"),
        )
    })
}

fn value<E: serde::de::Error>(field: &str, text: &str) -> Result<HeaderValue, E> {
    if text.chars().any(|c| (c.is_control() && c != '\t') || !c.is_ascii()) {
        return Err(refuse_at(
            field,
            "the header value holds control or non-ASCII characters; accepted: printable ASCII, spaces and tabs",
        ));
    }
    HeaderValue::from_str(text).map_err(|_| {
        refuse_at(
            field,
            "the header value is not accepted; accepted: printable ASCII, spaces and tabs",
        )
    })
}

fn check<'de, D: Deserializer<'de>>(d: D, request: bool) -> Result<HeaderRules, D::Error> {
    let Some(w) = Option::<Written>::deserialize(d)? else {
        return Ok(HeaderRules::default());
    };
    let mut rules = HeaderRules::default();
    let mut seen: Vec<(HeaderName, &'static str)> = Vec::new();
    let mut note = |n: &HeaderName, list: &'static str, field: &str| -> Result<(), D::Error> {
        if let Some((_, first)) = seen.iter().find(|(m, _)| m == n) {
            return Err(refuse_at(field, format!(
                "{n} is already in `{first}`; accepted: each header in one of set, add and remove (set replaces, so set then add is add after set: write both values under add)"
            )));
        }
        seen.push((n.clone(), list));
        Ok(())
    };
    for (list, pairs, out) in [("set", w.set, &mut rules.set), ("add", w.add, &mut rules.add)] {
        for (n, v) in pairs.map_or_else(Vec::new, |p| p.0) {
            let field = format!(".{list}.{n}");
            let hn = name::<D::Error>(&field, list, &n, request)?;
            let hv = value::<D::Error>(&field, &v)?;
            note(&hn, list, &field)?;
            out.push((hn, hv));
        }
    }
    for (i, n) in w.remove.unwrap_or_default().iter().enumerate() {
        let field = format!(".remove[{i}]");
        let hn = name::<D::Error>(&field, "remove", n, request)?;
        note(&hn, "remove", &field)?;
        rules.remove.push(hn);
    }
    if rules.is_empty() {
        return Err(D::Error::custom(format_args!(
            "{FIELD_MARK}{FIELD_MARK}no rules; accepted: at least one of set, add and remove, or leave the section out"
        )));
    }
    Ok(rules)
}

/// `request_headers` (an empty set of rules when left out).
pub fn request_rules<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderRules, D::Error> {
    check(d, true)
}

/// `response_headers` (an empty set of rules when left out).
pub fn response_rules<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderRules, D::Error> {
    check(d, false)
}

/// Edits the request's headers on the way in.
pub struct RequestHeaders(HeaderRules);

impl RequestHeaders {
    /// The stage, or `None` when there are no rules.
    pub fn for_route(rules: &HeaderRules) -> Option<Self> {
        (!rules.is_empty()).then(|| RequestHeaders(rules.clone()))
    }
}

impl<D: StageStore> Stage<D> for RequestHeaders {
    async fn request(&self, _cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        self.0.apply(&mut req.headers);
        Flow::Continue
    }

    fn request_now(&self, _cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Option<Flow> {
        self.0.apply(&mut req.headers);
        Some(Flow::Continue)
    }

    fn response_now<B: Send>(&self, _cx: &mut RequestCtx<'_, D>, _resp: &mut Response<B>) -> bool {
        true
    }
}

/// Edits the response's headers on the way out (every response of the route: the upstream's,
/// a `respond`, and the gateway's own refusals and errors).
pub struct ResponseHeaders(HeaderRules);

impl ResponseHeaders {
    /// The stage, or `None` when there are no rules.
    pub fn for_route(rules: &HeaderRules) -> Option<Self> {
        (!rules.is_empty()).then(|| ResponseHeaders(rules.clone()))
    }
}

impl<D: StageStore> Stage<D> for ResponseHeaders {
    async fn request(&self, _cx: &mut RequestCtx<'_, D>, _req: &mut Parts) -> Flow {
        Flow::Continue
    }

    async fn response<B: Send>(&self, _cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) {
        self.0.apply(resp.headers_mut());
    }

    fn request_now(&self, _cx: &mut RequestCtx<'_, D>, _req: &mut Parts) -> Option<Flow> {
        Some(Flow::Continue)
    }

    fn response_now<B: Send>(&self, _cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) -> bool {
        self.0.apply(resp.headers_mut());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_then_set_then_add() {
        let rules = HeaderRules {
            set: vec![(HeaderName::from_static("x-a"), HeaderValue::from_static("1"))],
            add: vec![(HeaderName::from_static("x-b"), HeaderValue::from_static("2"))],
            remove: vec![HeaderName::from_static("x-c")],
        };
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("old"));
        h.append("x-a", HeaderValue::from_static("older"));
        h.append("x-b", HeaderValue::from_static("kept"));
        h.append("x-c", HeaderValue::from_static("gone"));
        rules.apply(&mut h);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["1"]);
        assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["kept", "2"]);
        assert!(h.get("x-c").is_none());
    }
}
