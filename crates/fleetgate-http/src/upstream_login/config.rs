//! An upstream's login (`upstreams.NAME.login:`), and how the configuration file writes it.

use super::seal::SealKey;
use crate::failure::FailurePolicy;
use crate::key::{error_at, is_token, marked};
use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// Where the credential is read from in the login's answer (`capture`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// The value of the `Set-Cookie` named so (`{ cookie: sid }`).
    Cookie(String),
    /// The value of a response header (`{ header: x-token }`).
    Header(HeaderName),
    /// A string (or number) at a dotted path of a JSON answer (`{ json: token }`,
    /// `{ json: data.access_token }`).
    Json(Vec<String>),
}

/// How the credential goes onto each proxied request (`inject`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inject {
    /// As the cookie named so, beside the client's own cookies (`{ cookie: sid }`).
    Cookie(String),
    /// As a request header, `{}` in `format` replaced by the credential (`{ header:
    /// authorization, format: "Bearer {}" }`; default format `{}`). Replaces the client's.
    Header { name: HeaderName, format: String },
}

/// One upstream's login, checked.
///
/// Deserializes from `{ method, path, headers, body, capture, inject, refresh_on, timeout, ttl,
/// retry_body_limit, encryption_key, backoff, max_backoff, on_store_error }` (unknown fields
/// refused; errors follow [`crate::key::FIELD_MARK`]). `Debug` never shows `body`, `headers`'
/// values nor the key: they hold secrets.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Written")]
pub struct LoginConfig {
    /// The login request's method (`method`, default POST).
    pub method: Method,
    /// The login request's path and query on the upstream (`path`, starts with `/`).
    pub path: String,
    /// The login request's headers (`headers`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The login request's body (`body`, usually with `${VAR}` references; default empty).
    pub body: String,
    pub capture: Capture,
    pub inject: Inject,
    /// Upstream statuses that mean "the credential is no longer good" (`refresh_on`, default
    /// `[401]`): one re-login for the fleet, and the request is sent again once.
    pub refresh_on: Vec<u16>,
    /// Bound on the login request (`timeout`, default 10 s).
    pub timeout: Duration,
    /// How long a credential is used before logging in again (`ttl`, default 1 h).
    pub ttl: Duration,
    /// Largest request body kept to send again after a refresh (`retry_body_limit`, bytes,
    /// default 65536); a request with a larger or unknown-length body is not sent again.
    pub retry_body_limit: u64,
    /// Seals the credential in the store (`encryption_key`: 32 bytes as 64 hex digits or
    /// base64, usually `${FLEETGATE_LOGIN_KEY}`); `None`: stored as it is.
    pub encryption_key: Option<SealKey>,
    /// Wait after a failed login before the next try (`backoff`, default 5 s), doubling with
    /// each consecutive failure up to `max_backoff` (default 5 m).
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// What to do when the store fails (`on_store_error`: `local`, the default, logs in for
    /// this instance alone; `closed` answers 503).
    pub on_store_error: FailurePolicy,
}

impl fmt::Debug for LoginConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("LoginConfig")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &header_names)
            .field("body", &"<redacted>")
            .field("capture", &self.capture)
            .field("inject", &self.inject)
            .field("refresh_on", &self.refresh_on)
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .field("retry_body_limit", &self.retry_body_limit)
            .field("encryption_key", &self.encryption_key.as_ref().map(|_| "<redacted>"))
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("on_store_error", &self.on_store_error)
            .finish()
    }
}

impl LoginConfig {
    /// A login of `method path` capturing and injecting as given, every other field at its
    /// default (for library users; the gateway reads the file).
    pub fn new(method: Method, path: &str, capture: Capture, inject: Inject) -> Self {
        LoginConfig {
            method,
            path: path.to_string(),
            headers: Vec::new(),
            body: String::new(),
            capture,
            inject,
            refresh_on: vec![401],
            timeout: Duration::from_secs(10),
            ttl: Duration::from_secs(3600),
            retry_body_limit: DEFAULT_RETRY_BODY_LIMIT,
            encryption_key: None,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            on_store_error: FailurePolicy::Local,
        }
    }

    /// Whether `status` asks for a re-login.
    pub fn refreshes_on(&self, status: u16) -> bool {
        self.refresh_on.contains(&status)
    }
}

/// `retry_body_limit`'s default: 64 KiB.
pub const DEFAULT_RETRY_BODY_LIMIT: u64 = 64 * 1024;
/// `retry_body_limit`'s largest value: 16 MiB (the body is held in memory for the retry).
pub const MAX_RETRY_BODY_LIMIT: u64 = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default)]
    method: Option<String>,
    path: String,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    body: Option<String>,
    capture: WrittenCapture,
    #[serde(default)]
    inject: Option<WrittenInject>,
    #[serde(default)]
    refresh_on: Option<Vec<i64>>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    ttl: Option<Duration>,
    #[serde(default)]
    retry_body_limit: Option<i64>,
    #[serde(default)]
    encryption_key: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    backoff: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max_backoff: Option<Duration>,
    #[serde(default)]
    on_store_error: Option<FailurePolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenCapture {
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    json: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenInject {
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

const CAPTURE_ACCEPTED: &str =
    "accepted: exactly one of { cookie: NAME }, { header: NAME } or { json: FIELD } (FIELD may be dotted, e.g. data.token)";
const INJECT_ACCEPTED: &str =
    "accepted: { cookie: NAME } or { header: NAME, format: \"Bearer {}\" } (format optional, default \"{}\")";

fn header_name(field: &str, text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.trim().as_bytes()).map_err(|_| {
        marked(
            field,
            format!("{text:?} is not a header name; accepted: letters, digits and !#$%&'*+-.^_`|~, e.g. x-token"),
        )
    })
}

fn cookie_name(field: &str, text: &str) -> Result<String, String> {
    if !is_token(text) {
        return Err(marked(
            field,
            format!("{text:?} is not a cookie name; accepted: letters, digits and !#$%&'*+-.^_`|~, e.g. sid"),
        ));
    }
    Ok(text.to_string())
}

impl TryFrom<WrittenCapture> for Capture {
    type Error = String;
    fn try_from(w: WrittenCapture) -> Result<Self, String> {
        match (w.cookie, w.header, w.json) {
            (Some(c), None, None) => Ok(Capture::Cookie(cookie_name(".capture.cookie", &c)?)),
            (None, Some(h), None) => Ok(Capture::Header(header_name(".capture.header", &h)?)),
            (None, None, Some(j)) => {
                let parts: Vec<String> = j.split('.').map(str::to_string).collect();
                if j.len() > 256 || parts.iter().any(|p| p.is_empty() || p.chars().any(char::is_whitespace)) {
                    return Err(marked(
                        ".capture.json",
                        format!("{j:?} is not a JSON field path; accepted: field names joined by dots, without spaces, e.g. token or data.access_token"),
                    ));
                }
                Ok(Capture::Json(parts))
            }
            _ => Err(marked(".capture", CAPTURE_ACCEPTED)),
        }
    }
}

fn inject(w: Option<WrittenInject>, capture: &Capture) -> Result<Inject, String> {
    let Some(w) = w else {
        // A cookie goes back as that cookie and a header as that header; a JSON field has no
        // obvious place.
        return match capture {
            Capture::Cookie(name) => Ok(Inject::Cookie(name.clone())),
            Capture::Header(name) => Ok(Inject::Header {
                name: name.clone(),
                format: "{}".into(),
            }),
            Capture::Json(_) => Err(marked(
                ".inject",
                format!("a credential captured from JSON needs `inject`; {INJECT_ACCEPTED}"),
            )),
        };
    };
    match (w.cookie, w.header, w.format) {
        (Some(c), None, None) => Ok(Inject::Cookie(cookie_name(".inject.cookie", &c)?)),
        (None, Some(h), format) => {
            let format = format.unwrap_or_else(|| "{}".into());
            if format.matches("{}").count() != 1 || format.chars().any(|c| c.is_control()) {
                return Err(marked(
                    ".inject.format",
                    format!("{format:?} must hold `{{}}` exactly once (where the credential goes) and no control characters; e.g. \"Bearer {{}}\""),
                ));
            }
            Ok(Inject::Header {
                name: header_name(".inject.header", &h)?,
                format,
            })
        }
        (Some(_), None, Some(_)) => Err(marked(
            ".inject.format",
            "format applies to a header only; a cookie's value is the credential as it is",
        )),
        _ => Err(marked(".inject", INJECT_ACCEPTED)),
    }
}

impl TryFrom<Written> for LoginConfig {
    type Error = String;
    fn try_from(w: Written) -> Result<Self, String> {
        let method = match w.method {
            None => Method::POST,
            Some(m) => Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).map_err(|_| {
                marked(
                    ".method",
                    format!("{m:?} is not an HTTP method; accepted: e.g. POST, GET, PUT"),
                )
            })?,
        };
        let path = w.path;
        if !path.starts_with('/')
            || path.chars().any(|c| c.is_whitespace() || c.is_control())
            || path.parse::<http::uri::PathAndQuery>().is_err()
        {
            return Err(marked(
                ".path",
                format!(
                    "{path:?} is not a path; accepted: a path (and query) starting with / without spaces, e.g. /login"
                ),
            ));
        }
        let mut headers = Vec::new();
        for (name, value) in w.headers.unwrap_or_default() {
            let field = format!(".headers.{name}");
            let name = header_name(&field, &name)?;
            let value = HeaderValue::from_str(&value).map_err(|_| {
                marked(&field, "the value holds characters a header cannot carry (line breaks, control characters); accepted: printable text")
            })?;
            headers.push((name, value));
        }
        let capture = Capture::try_from(w.capture)?;
        let inject = inject(w.inject, &capture)?;
        let refresh_on = match w.refresh_on {
            None => vec![401],
            Some(list) => {
                if list.is_empty() {
                    return Err(marked(
                        ".refresh_on",
                        "the list is empty; accepted: statuses from 400 to 599, e.g. [401] (the default)",
                    ));
                }
                list.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        u16::try_from(*s)
                            .ok()
                            .filter(|s| (400..=599).contains(s))
                            .ok_or_else(|| {
                                marked(
                                    &format!(".refresh_on[{i}]"),
                                    format!("{s} is not accepted; accepted: a status from 400 to 599, e.g. 401"),
                                )
                            })
                    })
                    .collect::<Result<Vec<u16>, String>>()?
            }
        };
        let retry_body_limit = match w.retry_body_limit {
            None => DEFAULT_RETRY_BODY_LIMIT,
            Some(n) => u64::try_from(n).ok().filter(|n| *n <= MAX_RETRY_BODY_LIMIT).ok_or_else(|| {
                marked(
                    ".retry_body_limit",
                    format!("{n} is out of range; accepted: bytes from 0 (never send a body again) to {MAX_RETRY_BODY_LIMIT}, default {DEFAULT_RETRY_BODY_LIMIT}"),
                )
            })?,
        };
        let encryption_key = match w.encryption_key {
            None => None,
            Some(text) => Some(SealKey::parse(&text).map_err(|why| marked(".encryption_key", why))?),
        };
        let backoff = w.backoff.unwrap_or(Duration::from_secs(5));
        let max_backoff = w.max_backoff.unwrap_or(Duration::from_secs(300)).max(backoff);
        let on_store_error = match w.on_store_error {
            None | Some(FailurePolicy::Local) => FailurePolicy::Local,
            Some(FailurePolicy::Closed) => FailurePolicy::Closed,
            Some(FailurePolicy::Open) => {
                return Err(marked(
                    ".on_store_error",
                    "open is not accepted for a login (a request sent without the credential would only get the upstream's refusal); accepted: local (the default: each instance logs in for itself) or closed (503)",
                ))
            }
        };
        Ok(LoginConfig {
            method,
            path,
            headers,
            body: w.body.unwrap_or_default(),
            capture,
            inject,
            refresh_on,
            timeout: w.timeout.unwrap_or(Duration::from_secs(10)),
            ttl: w.ttl.unwrap_or(Duration::from_secs(3600)),
            retry_body_limit,
            encryption_key,
            backoff,
            max_backoff,
            on_store_error,
        })
    }
}

/// A duration like `500ms`, `30s`, `10m` (1 ms to 7 days; null: the default).
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
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

fn parse_duration(text: &str) -> Result<Duration, String> {
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
