//! Routes (`routes`): which requests a route takes, what answers them, and its limits.

use crate::fields::{flag, int, nullable, refuse, route_name};
use fleetgate_http::key::is_token;
use fleetgate_http::HeaderRules;
use fleetgate_http::{
    ConcurrencyLimitConfig, DedupConfig, ForwardAuthConfig, IdempotencyConfig, PaymentConfig, RateLimitConfig,
};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

/// One route, read from the file as written (unknown fields refused); validation then resolves
/// `upstream` or `respond` into [`RouteConfig::target`] and checks what spans fields.
///
/// A concern's route-level section is one field here, marked
/// `#[serde(default, deserialize_with = "nullable")]`, whose type reads and checks itself
/// (e.g. `rate_limits`); it needs a line in validate.rs only for a check spanning fields or
/// sections. Fields are declared in the file's documented order: unknown-field errors list
/// them so. Outside the crate a route is read, not built field by field (`upstream` and
/// `respond` as written are not public).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name (`name`), used in metrics and store keys.
    #[serde(deserialize_with = "route_name")]
    pub name: String,
    /// Which requests this route takes (`match`); the default matches everything.
    #[serde(rename = "match", default, deserialize_with = "nullable")]
    pub matcher: RouteMatch,
    /// `upstream` as written; validation moves it into `target`.
    #[serde(default)]
    pub(crate) upstream: Option<String>,
    /// `respond` as written; validation moves it into `target`.
    #[serde(default)]
    pub(crate) respond: Option<Respond>,
    /// What answers: an upstream or a fixed response (`upstream` or `respond`, exactly one).
    #[serde(skip, default = "unresolved")]
    pub target: RouteTarget,
    /// Whether `match.path_prefix` is removed from the path before proxying (`strip_prefix`,
    /// default `false`). Only allowed with a `path_prefix`.
    #[serde(default, deserialize_with = "flag::<_, false>")]
    pub strip_prefix: bool,
    /// How the path is rewritten before proxying (`rewrite`): a new prefix for
    /// `match.path_prefix`, or a regex and its replacement. Not with `strip_prefix`.
    #[serde(default)]
    pub rewrite: Option<crate::rewrite::Rewrite>,
    /// Header rules for the request sent upstream (`request_headers`).
    #[serde(default, deserialize_with = "fleetgate_http::headers::request_rules")]
    pub request_headers: HeaderRules,
    /// Header rules for the response sent to the client (`response_headers`).
    #[serde(default, deserialize_with = "fleetgate_http::headers::response_rules")]
    pub response_headers: HeaderRules,
    // The concerns' sections.
    /// The route's rate limits, checked in order after the global ones (`rate_limits`).
    #[serde(default, deserialize_with = "nullable")]
    pub rate_limits: Vec<RateLimitConfig>,
    /// The route's concurrency limits (`concurrency_limits`).
    #[serde(default, deserialize_with = "nullable")]
    pub concurrency_limits: Vec<ConcurrencyLimitConfig>,
    /// The route's x402 payment gate (`payment`); `None`: free.
    #[serde(default, deserialize_with = "nullable")]
    pub payment: Option<PaymentConfig>,
    /// The route's forward auth and gateway sessions (`forward_auth`); `None`: none.
    #[serde(default, deserialize_with = "nullable")]
    pub forward_auth: Option<ForwardAuthConfig>,
    /// The route's Idempotency-Key handling (`idempotency`); `None`: none.
    #[serde(default, deserialize_with = "nullable")]
    pub idempotency: Option<IdempotencyConfig>,
    /// The route's shared HTTP cache (`cache`); `None`: not cached.
    #[serde(default, deserialize_with = "cache_section")]
    pub cache: Option<fleetgate_http::CacheConfig>,
    /// The route's in-flight dedup (`dedup`); `None`: none.
    #[serde(default, deserialize_with = "nullable")]
    pub dedup: Option<DedupConfig>,
}

/// `cache:` written with nothing (or `{}`) turns the cache on with its defaults.
fn cache_section<'de, D: Deserializer<'de>>(d: D) -> Result<Option<fleetgate_http::CacheConfig>, D::Error> {
    fleetgate_http::CacheConfig::deserialize(d).map(Some)
}

/// The target before validation has resolved it (never seen outside the crate).
fn unresolved() -> RouteTarget {
    RouteTarget::Upstream(String::new())
}

/// `respond`: a fixed answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Respond {
    #[serde(default = "ok", deserialize_with = "int::<_, 100, 599, 200, _>")]
    status: u16,
    #[serde(default)]
    body: Option<String>,
    #[serde(default, deserialize_with = "headers")]
    headers: Vec<(String, String)>,
}

fn ok() -> u16 {
    200
}

impl From<Respond> for RouteTarget {
    fn from(r: Respond) -> Self {
        RouteTarget::Respond {
            status: r.status,
            body: r.body.unwrap_or_default(),
            headers: r.headers,
        }
    }
}

/// Response headers in file order; names lowercase, values header-safe.
fn headers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    struct Headers(Vec<(String, String)>);
    impl<'de> Deserialize<'de> for Headers {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(Headers(Vec::new()))
        }
    }
    impl<'de> Visitor<'de> for Headers {
        type Value = Headers;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of names to values")
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
            while let Some(name) = map.next_key::<String>()? {
                self.0.push(map.next_value_seed(Header(name))?);
            }
            Ok(self)
        }
    }
    Ok(Option::<Headers>::deserialize(d)?.map_or_else(Vec::new, |h| h.0))
}

/// One header's value, checked with its name (a bad name is reported at the value).
struct Header(String);

impl<'de> serde::de::DeserializeSeed<'de> for Header {
    type Value = (String, String);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let (name, value) = (self.0, String::deserialize(d)?);
        let lower = name.to_ascii_lowercase();
        if !is_token(&lower) {
            return Err(refuse(format!(
                "{name:?} is not a header name; accepted: letters, digits and !#$%&'*+-.^_`|~, e.g. content-type"
            )));
        }
        if value.chars().any(|c| (c.is_control() && c != '\t') || !c.is_ascii()) {
            return Err(refuse(
                "the header value holds control or non-ASCII characters; accepted: printable ASCII, spaces and tabs",
            ));
        }
        Ok((lower, value))
    }
}

impl RouteConfig {
    /// The upstream this route proxies to, if it proxies.
    pub fn upstream(&self) -> Option<&str> {
        match &self.target {
            RouteTarget::Upstream(name) => Some(name),
            RouteTarget::Respond { .. } => None,
        }
    }

    /// The path to send upstream for a request `path` (a query may follow it): `path` itself,
    /// or with `match.path_prefix` removed when `strip_prefix` is set. The result always starts
    /// with `/` (`/api` stripped from `/api` gives `/`, from `/api/x?q=1` gives `/x?q=1`, from
    /// `/api?q=1` gives `/?q=1`).
    /// With `rewrite`, the rewritten path (see [`crate::rewrite::Rewrite::apply`]).
    pub fn upstream_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        if let Some(rewrite) = &self.rewrite {
            return rewrite.apply(self.matcher.path_prefix.as_deref(), path);
        }
        let Some(prefix) = self.matcher.path_prefix.as_deref().filter(|_| self.strip_prefix) else {
            return Cow::Borrowed(path);
        };
        match path.strip_prefix(prefix.trim_end_matches('/')) {
            Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
            Some(rest) => Cow::Owned(format!("/{rest}")),
            None => Cow::Borrowed(path),
        }
    }
}

/// Which requests a route takes. Every given condition must hold; an empty match takes
/// every request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    /// Path prefix, at a segment boundary: `/api` takes `/api`, `/api/` and `/api/x`, not
    /// `/apix`; a prefix ending in `/` takes paths starting with it; `/` takes every path.
    #[serde(deserialize_with = "path_prefix")]
    pub path_prefix: Option<String>,
    /// Exact host, lowercase, compared with the request's host without its port and case
    /// insensitively.
    #[serde(deserialize_with = "host")]
    pub host: Option<String>,
    /// Accepted methods, uppercase; empty: any method.
    #[serde(deserialize_with = "methods")]
    pub methods: Vec<String>,
    /// Header conditions (`headers`): name → exact value (any of the header's values equal to
    /// it), `true` (present) or `false` (absent). Names compared case-insensitively.
    #[serde(deserialize_with = "crate::route_match::headers")]
    pub headers: Vec<(http::HeaderName, HeaderCondition)>,
    /// Query conditions (`query`): name → exact value, compared after percent-decoding
    /// (`+` is a space); any parameter of that name with that value matches.
    #[serde(deserialize_with = "crate::route_match::query")]
    pub query: Vec<(String, String)>,
}

pub use crate::route_match::HeaderCondition;

fn path_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let Some(p) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    if !p.starts_with('/')
        || p.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(refuse(format!(
            "{p:?} is not a path prefix; accepted: a path starting with / without spaces, '?' or '#', e.g. /api"
        )));
    }
    Ok(Some(p))
}

fn host<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let Some(h) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let lower = h.trim().to_ascii_lowercase();
    let host = lower
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(&lower);
    let name_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !name_ok && host.parse::<IpAddr>().is_err() {
        return Err(refuse(format!("{h:?} is not a host; accepted: a host name or IP address without port, e.g. api.example.com (matched case-insensitively, the request's port ignored)")));
    }
    Ok(Some(host.to_string()))
}

fn methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Method(String);
    impl<'de> Deserialize<'de> for Method {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let m = String::deserialize(d)?;
            let upper = m.trim().to_ascii_uppercase();
            if !is_token(&upper) {
                return Err(refuse(format!("{m:?} is not an HTTP method; accepted: method names such as GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")));
            }
            Ok(Method(upper))
        }
    }
    let mut out: Vec<String> = Vec::new();
    for Method(m) in nullable::<_, Vec<Method>>(d)? {
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

impl RouteMatch {
    /// Whether a request matches. `host` is the request's `Host` (or URI authority), with or
    /// without a port; `path` is the request path without the query.
    pub fn matches(&self, method: &str, host: Option<&str>, path: &str) -> bool {
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == method);
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(host)) => strip_port(host).eq_ignore_ascii_case(want),
            (Some(_), None) => false,
        };
        let path_ok = self.path_prefix.as_deref().is_none_or(|p| path_has_prefix(path, p));
        method_ok && host_ok && path_ok
    }

    /// Whether a request matches, its headers and query (`None`: no `?`) included.
    pub fn matches_request(
        &self,
        method: &str,
        host: Option<&str>,
        path: &str,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> bool {
        self.matches(method, host, path)
            && (self.headers.is_empty() || crate::route_match::headers_hold(&self.headers, headers))
            && (self.query.is_empty() || crate::route_match::query_holds(&self.query, query))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port or [v6]
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// What answers a route's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Proxy to the named upstream (`upstream: NAME`); the name is known to be defined.
    Upstream(String),
    /// Answer directly (`respond`).
    Respond {
        /// Status code, 100..=599 (default 200).
        status: u16,
        /// Body (default empty).
        body: String,
        /// Headers in file order; names lowercase, values checked for header-safe characters.
        headers: Vec<(String, String)>,
    },
}
