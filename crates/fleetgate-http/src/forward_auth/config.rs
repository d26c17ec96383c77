//! A route's forward auth (`forward_auth:`) and its gateway session (`forward_auth.session`),
//! and how the configuration file writes them.

use crate::failure::FailurePolicy;
use crate::key::{self, error_at, is_token};
use crate::payment::config::duration;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Most names `request_headers` or `upstream_headers` may list.
const MAX_HEADERS: usize = 32;

/// Headers that describe a connection or a message's framing: never credentials, never
/// identity, never copied.
const NOT_COPIED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
];

/// The forward auth of one route.
///
/// Deserializes from `{ url, request_headers, upstream_headers, cache_ttl, deny_ttl, timeout,
/// cache_key, session, on_store_error }` (unknown fields refused; errors follow
/// [`crate::key::FIELD_MARK`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Written")]
pub struct ForwardAuthConfig {
    /// The auth service's check URL (`url`): `GET url` for every request without a session.
    pub url: String,
    /// Request headers sent to the auth service (`request_headers`, lowercase; default
    /// `[authorization, cookie]`); the verdict cache hashes their values.
    pub request_headers: Vec<String>,
    /// Headers copied from an allowing answer onto the upstream request (`upstream_headers`,
    /// lowercase; default none). Copies the client sent are always removed first.
    pub upstream_headers: Vec<String>,
    /// How long an allowing verdict is cached for the fleet (`cache_ttl`, default 1m).
    pub cache_ttl: Duration,
    /// How long a 4xx denial is cached (`deny_ttl`, default 10s or `cache_ttl` if shorter); a
    /// 3xx (a redirect naming the original URL) is not cached.
    pub deny_ttl: Duration,
    /// Bound on each auth service call (`timeout`, default 2s).
    pub timeout: Duration,
    /// Secret keying the hash of the credentials in the cache keys (`cache_key`, usually
    /// `${VAR}`; default none: keyed by the route's name only).
    pub cache_key: Option<String>,
    /// A gateway session after an allowed check (`session`); `None`: no sessions.
    pub session: Option<SessionConfig>,
    /// What to do when the store fails (`on_store_error`, default `closed`).
    pub on_store_error: FailurePolicy,
}

/// A gateway session: after an allowed check, a cookie whose random id names the identity
/// headers kept in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The cookie's name (`cookie`, default `fg_session`).
    pub cookie: String,
    /// Idle lifetime (`ttl`, default 30m): every request that uses the session extends it.
    pub ttl: Duration,
    /// A path that ends the session (`logout_path`, exact match; default none).
    pub logout_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(deserialize_with = "auth_url")]
    url: String,
    #[serde(default, deserialize_with = "header_names")]
    request_headers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "header_names")]
    upstream_headers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "duration")]
    cache_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    deny_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    cache_key: Option<String>,
    #[serde(default)]
    session: Option<WrittenSession>,
    #[serde(default)]
    on_store_error: Option<FailurePolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenSession {
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    ttl: Option<Duration>,
    #[serde(default)]
    logout_path: Option<String>,
}

impl TryFrom<Written> for ForwardAuthConfig {
    type Error = String;
    fn try_from(w: Written) -> Result<Self, String> {
        let request_headers = w
            .request_headers
            .unwrap_or_else(|| vec!["authorization".into(), "cookie".into()]);
        let upstream_headers = w.upstream_headers.unwrap_or_default();
        let cache_ttl = w.cache_ttl.unwrap_or(Duration::from_secs(60));
        let deny_ttl = w.deny_ttl.unwrap_or(Duration::from_secs(10).min(cache_ttl));
        if deny_ttl > cache_ttl {
            return Err(key::marked(
                ".deny_ttl",
                format!(
                    "deny_ttl ({} ms) is longer than cache_ttl ({} ms); accepted: a duration up to cache_ttl, since a denial should be retried sooner than an allowance is re-checked",
                    deny_ttl.as_millis(),
                    cache_ttl.as_millis()
                ),
            ));
        }
        let timeout = w.timeout.unwrap_or(Duration::from_secs(2));
        if timeout > Duration::from_secs(60) {
            return Err(key::marked(
                ".timeout",
                "the timeout is longer than 60s; accepted: a duration from 1ms to 60s (default 2s)",
            ));
        }
        if let Some(k) = &w.cache_key {
            if k.len() < 16 {
                return Err(key::marked(
                    ".cache_key",
                    "the cache key is shorter than 16 characters; accepted: a secret of at least 16 characters, the same on every instance, e.g. ${FORWARD_AUTH_CACHE_KEY}",
                ));
            }
        }
        let session = w.session.map(session).transpose()?;
        Ok(ForwardAuthConfig {
            url: w.url,
            request_headers,
            upstream_headers,
            cache_ttl,
            deny_ttl,
            timeout,
            cache_key: w.cache_key,
            session,
            on_store_error: w.on_store_error.unwrap_or(FailurePolicy::Closed),
        })
    }
}

fn session(w: WrittenSession) -> Result<SessionConfig, String> {
    let cookie = w.cookie.unwrap_or_else(|| "fg_session".into());
    if !is_token(&cookie) || cookie.len() > 64 {
        return Err(key::marked(
            ".session.cookie",
            format!("{cookie:?} is not a cookie name; accepted: 1 to 64 token characters (letters, digits, ! # $ % & ' * + - . ^ _ ` | ~), e.g. fg_session"),
        ));
    }
    if let Some(p) = &w.logout_path {
        if !p.starts_with('/') || p.contains(['?', '#']) || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(key::marked(
                ".session.logout_path",
                format!(
                    "{p:?} is not a path; accepted: a path starting with / without query or spaces, e.g. /app/logout"
                ),
            ));
        }
    }
    Ok(SessionConfig {
        cookie,
        ttl: w.ttl.unwrap_or(Duration::from_secs(30 * 60)),
        logout_path: w.logout_path,
    })
}

/// `http://host[:port]/path[?query]`.
fn auth_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    let t = text.trim();
    let refuse = |why: &str| {
        error_at(
            "",
            format!("{t:?} {why}; accepted: an http:// URL of the auth service's check endpoint, e.g. http://127.0.0.1:4100/check"),
        )
    };
    let uri: http::Uri = t.parse().map_err(|_| refuse("is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(refuse(
                "is https, which the auth client does not speak yet (put a local TLS-originating proxy in front)",
            ))
        }
        _ => return Err(refuse("is not an http:// URL")),
    }
    if uri.authority().is_none() {
        return Err(refuse("has no host"));
    }
    Ok(t.to_string())
}

/// A list of header names: HTTP tokens, lowercased, no framing headers, at most
/// [`MAX_HEADERS`], no repeats.
fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let Some(names) = Option::<Vec<String>>::deserialize(d)? else {
        return Ok(None);
    };
    if names.len() > MAX_HEADERS {
        return Err(error_at(
            "",
            format!(
                "{} names is too many; accepted: at most {MAX_HEADERS} header names",
                names.len()
            ),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        let lower = n.trim().to_ascii_lowercase();
        if !is_token(&lower) {
            return Err(error_at(
                &format!("[{i}]"),
                format!("{n:?} is not a header name; accepted: an HTTP token such as x-user-id"),
            ));
        }
        if NOT_COPIED.contains(&lower.as_str()) {
            return Err(error_at(
                &format!("[{i}]"),
                format!("{lower} describes the connection or the message's framing, not who the client is; accepted: any other header name"),
            ));
        }
        if out.contains(&lower) {
            return Err(error_at(&format!("[{i}]"), format!("{lower} is listed twice")));
        }
        out.push(lower);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: serde_json::Value) -> Result<ForwardAuthConfig, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = read(json!({"url": "http://127.0.0.1:4100/check"})).unwrap();
        assert_eq!(c.request_headers, ["authorization", "cookie"]);
        assert!(c.upstream_headers.is_empty());
        assert_eq!(c.cache_ttl, Duration::from_secs(60));
        assert_eq!(c.deny_ttl, Duration::from_secs(10));
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.on_store_error, FailurePolicy::Closed);
        assert!(c.session.is_none());
        let c = read(json!({"url": "http://h/c", "cache_ttl": "5s", "session": {}})).unwrap();
        assert_eq!(c.deny_ttl, Duration::from_secs(5), "never longer than cache_ttl");
        let s = c.session.unwrap();
        assert_eq!((s.cookie.as_str(), s.ttl), ("fg_session", Duration::from_secs(1800)));
    }

    #[test]
    fn bad_values_are_refused_with_reasons() {
        let cases = [
            (json!({"url": "https://h/c"}), "https"),
            (json!({"url": "ftp://h/c"}), "not an http"),
            (
                json!({"url": "http://h/c", "upstream_headers": ["x user"]}),
                "not a header name",
            ),
            (json!({"url": "http://h/c", "request_headers": ["host"]}), "framing"),
            (
                json!({"url": "http://h/c", "upstream_headers": ["x-a", "X-A"]}),
                "listed twice",
            ),
            (
                json!({"url": "http://h/c", "cache_ttl": "10s", "deny_ttl": "1m"}),
                "longer than cache_ttl",
            ),
            (json!({"url": "http://h/c", "timeout": "2m"}), "longer than 60s"),
            (json!({"url": "http://h/c", "cache_key": "short"}), "at least 16"),
            (
                json!({"url": "http://h/c", "session": {"cookie": "a b"}}),
                "not a cookie name",
            ),
            (
                json!({"url": "http://h/c", "session": {"logout_path": "logout"}}),
                "not a path",
            ),
            (
                json!({"url": "http://h/c", "session": {"ttl": "forever"}}),
                "not a duration",
            ),
            (json!({"url": "http://h/c", "session": {"path": "/"}}), "unknown field"),
            (json!({"url": "http://h/c", "methods": ["GET"]}), "unknown field"),
        ];
        for (v, want) in cases {
            let e = read(v.clone()).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
