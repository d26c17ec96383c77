//! [`ConfigError`]: one message naming the file, the line and column, the field and why, with
//! what is accepted; and the translation of parser errors into it.

use crate::env::ColumnMap;
use crate::locate::{Locator, Place};
use crate::snippet::{secret_value_start, snippet};
use crate::store_url::redact_url;
use crate::validate::Invalid;
use fleetgate_http::key::FIELD_MARK;
use serde_saphyr::{Error as YamlError, Location};
use std::fmt;

/// What went wrong, broadly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// A `${VAR}` reference could not be substituted.
    Env,
    /// The text is not well-formed YAML.
    Syntax,
    /// Well-formed YAML that does not fit the schema: unknown field, missing field, wrong type.
    Schema,
    /// A value of the right type that is not acceptable (bad address, unknown upstream...).
    Invalid,
}

/// Why a configuration was refused: one error, naming the file, the line and column (when
/// known), the field path (e.g. `routes[0].rate_limits[1].rate`), why, and what is accepted.
///
/// `Display` prints `FILE:LINE:COLUMN: FIELD: MESSAGE`, then the offending line of the file
/// with a caret under the column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ErrorKind,
    file: String,
    line: Option<u32>,
    column: Option<u32>,
    path: Option<String>,
    message: String,
    snippet: Option<String>,
}

impl ConfigError {
    /// What went wrong, broadly.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The file name as given to [`crate::load`] or [`crate::parse`].
    pub fn file(&self) -> &str {
        &self.file
    }
    /// The 1-based line, when known.
    pub fn line(&self) -> Option<u32> {
        self.line
    }
    /// The 1-based column (in characters), when known.
    pub fn column(&self) -> Option<u32> {
        self.column
    }
    /// The field path, e.g. `routes[0].rate_limits[1].rate`, when the error concerns a field.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
    /// Why, and what is accepted (without the file, line and field).
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn io(file: &str, err: &std::io::Error) -> Self {
        ConfigError {
            kind: ErrorKind::Io,
            file: file.to_string(),
            line: None,
            column: None,
            path: None,
            message: format!("cannot read the configuration file: {err}"),
            snippet: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n{snippet}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The original text of a file and how to map locations in the substituted text back to it.
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub original: &'a str,
    pub columns: ColumnMap,
}

impl Source<'_> {
    /// An error at `line`/`column` of the substituted text (0 = unknown).
    pub(crate) fn error(
        &self,
        kind: ErrorKind,
        line: u64,
        column: u64,
        path: Option<String>,
        message: String,
    ) -> ConfigError {
        let (line, column) = if line == 0 {
            (None, None)
        } else {
            let l = u32::try_from(line).unwrap_or(u32::MAX);
            let c = if column == 0 {
                None
            } else {
                Some(self.columns.original_column(l, column))
            };
            (Some(l), c.map(|c| u32::try_from(c).unwrap_or(u32::MAX)))
        };
        let snippet = line.and_then(|l| snippet(self.original, l, column));
        ConfigError {
            kind,
            file: self.file.to_string(),
            line,
            column,
            path: path.filter(|p| !p.is_empty()),
            message,
            snippet,
        }
    }

    /// An error at an original-text position (substitution errors).
    pub(crate) fn error_at_original(&self, kind: ErrorKind, line: u32, column: u64, message: String) -> ConfigError {
        let column = u32::try_from(column).ok();
        ConfigError {
            kind,
            file: self.file.to_string(),
            line: Some(line),
            column,
            path: None,
            message,
            snippet: snippet(self.original, line, column),
        }
    }

    /// A refusal from [`crate::validate`], at the place of its `at` path.
    pub(crate) fn invalid(&self, inv: Invalid, loc: &Locator) -> ConfigError {
        let place = Some(inv.at.as_str())
            .filter(|at| !at.is_empty())
            .and_then(|at| loc.find(at));
        let at = match place {
            Some(Place {
                key: Some(k), value, ..
            }) if inv.at_key && k.line() != value.line() => k,
            Some(p) => p.value,
            None => Location::UNKNOWN,
        };
        self.error(ErrorKind::Invalid, at.line(), at.column(), Some(inv.path), inv.message)
    }

    /// The scalar text at a location of the substituted text, read from the original text
    /// (so substituted secrets are not echoed), for "found `...`" in messages.
    fn token_at(&self, loc: &Location) -> Option<String> {
        let line_no = u32::try_from(loc.line()).ok()?;
        let col = self.columns.original_column(line_no, loc.column());
        let line = self.original.lines().nth(line_no.checked_sub(1)? as usize)?;
        let skip = usize::try_from(col.checked_sub(1)?).ok()?;
        if let Some(at) = secret_value_start(line) {
            // Never quote a secret's value.
            if line.char_indices().nth(skip).map_or(line.len(), |(b, _)| b) >= at {
                return None;
            }
        }
        let rest: String = line.chars().skip(skip).collect();
        let token: &str = if let Some(q) = rest.strip_prefix('"') {
            q.split('"').next().unwrap_or(q)
        } else if let Some(q) = rest.strip_prefix('\'') {
            q.split('\'').next().unwrap_or(q)
        } else {
            // Up to a flow indicator or comment, keeping `${...}` references whole.
            let mut end = rest.len();
            let mut in_ref = false;
            let mut prev = ' ';
            for (i, c) in rest.char_indices() {
                match c {
                    '{' if prev == '$' => in_ref = true,
                    '}' if in_ref => in_ref = false,
                    ',' | ']' | '}' if !in_ref => {
                        end = i;
                        break;
                    }
                    '#' if prev == ' ' => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
                prev = c;
            }
            rest[..end].trim()
        };
        let token: String = redact_url(token).chars().take(80).collect();
        (!token.is_empty()).then_some(token)
    }

    /// Turns a parser or schema error into one clear message.
    pub(crate) fn yaml_error(
        &self,
        err: &YamlError,
        raw_path: Option<&serde_path_to_error::Path>,
        locator: &Locator,
    ) -> ConfigError {
        let err = innermost(err);
        let loc = err.location().filter(|l| l.line() > 0);
        let mut path = raw_path.map(clean_path).filter(|p| !p.is_empty());
        let (line, col) = loc.map_or((0, 0), |l| (l.line(), l.column()));
        let full_path = path.clone().unwrap_or_default();
        let accepted = |path: &str| {
            accepted_at(path)
                .map(|a| format!("; accepted: {a}"))
                .unwrap_or_default()
        };
        let (kind, message) = match err {
            YamlError::SerdeUnknownField { field, expected, .. } => {
                let hint = closest(field, expected)
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                let list = if expected.is_empty() {
                    "none".to_string()
                } else {
                    expected.join(", ")
                };
                let shared = if is_concern_store(path.as_deref().unwrap_or_default()) {
                    " (credentials, TLS, breaker, pool and reconnect settings and flush_on_startup are shared by every concern: set them under `store`)"
                } else {
                    ""
                };
                (
                    ErrorKind::Schema,
                    format!("unknown field `{field}`; {hint}accepted fields here: {list}{shared}"),
                )
            }
            // A refusal from a value's own `Deserialize` (see [`FIELD_MARK`]): at the field it
            // names, found in the file.
            YamlError::Message { msg, location } if msg.starts_with(FIELD_MARK) => {
                let (field, message) = msg[1..].split_once(FIELD_MARK).unwrap_or(("", msg));
                let full = format!("{full_path}{field}");
                let at = locator.find(&full).map_or(*location, |p| p.value);
                let accepted = accepted_at(&full).unwrap_or("a value in range");
                let message = message.replace(crate::fields::ACCEPTED_HERE, accepted);
                return self.error(ErrorKind::Invalid, at.line(), at.column(), Some(full), message);
            }
            YamlError::SerdeMissingField { field, location } => {
                // Parsers report a missing field at the mapping's last key, while a person
                // looks for its first.
                let first = locator.find(path.as_deref().unwrap_or_default()).and_then(|p| p.first_key);
                let at = first.filter(|k| k.line() != location.line()).unwrap_or(*location);
                let (l, c) = (at.line(), at.column());
                let parent = path.take().unwrap_or_default();
                let full = if parent.is_empty() {
                    field.to_string()
                } else {
                    format!("{parent}.{field}")
                };
                let message = format!("missing required field `{field}`{}", accepted(&full));
                return self.error(ErrorKind::Schema, l, c, Some(full), message);
            }
            YamlError::SerdeUnknownVariant { variant, expected, .. } => (
                ErrorKind::Schema,
                format!("unknown value `{variant}`; accepted: {}", expected.join(", ")),
            ),
            YamlError::SerdeInvalidType { unexpected, expected, .. }
            | YamlError::SerdeInvalidValue { unexpected, expected, .. } => (
                ErrorKind::Schema,
                format!(
                    "wrong type: found {unexpected}, expected {}{}",
                    human_expected(expected),
                    accepted(&full_path)
                ),
            ),
            YamlError::InvalidScalar { ty, location } => {
                let found = self
                    .token_at(location)
                    .map(|t| format!(", found `{t}`"))
                    .unwrap_or_default();
                (ErrorKind::Schema, format!("expected {}{found}{}", human_type(ty), accepted(&full_path)))
            }
            YamlError::InvalidBooleanStrict { .. } => {
                (ErrorKind::Schema, "expected true or false".to_string())
            }
            YamlError::Unexpected { expected, .. } => (
                ErrorKind::Schema,
                format!("wrong type: expected {}{}", human_expected(expected), accepted(&full_path)),
            ),
            YamlError::NullIntoString { .. } => (
                ErrorKind::Schema,
                format!("a value is required here, found nothing (null){}", accepted(&full_path)),
            ),
            YamlError::DuplicateMappingKey { key, .. } => (
                ErrorKind::Syntax,
                match key {
                    Some(k) => format!("`{k}` is given twice in the same mapping; each key may appear once"),
                    None => "a key is given twice in the same mapping; each key may appear once".to_string(),
                },
            ),
            YamlError::MultipleDocuments { .. } => (
                ErrorKind::Syntax,
                "the file holds more than one YAML document (a `---` separator); put the whole configuration in one document".to_string(),
            ),
            YamlError::Budget { .. } => (
                ErrorKind::Syntax,
                "the document is too large or expands too many aliases to be a configuration".to_string(),
            ),
            YamlError::InvalidUtf8Input => (ErrorKind::Syntax, "the file is not valid UTF-8".to_string()),
            YamlError::Eof { .. } => (ErrorKind::Syntax, "YAML syntax error: unexpected end of the file".to_string()),
            other => {
                let text = other.to_string();
                let text = strip_location_suffix(&text);
                (ErrorKind::Syntax, format!("YAML syntax error: {text}"))
            }
        };
        // Syntax errors concern the text, not a field.
        let path = if kind == ErrorKind::Syntax { None } else { path };
        self.error(kind, line, col, path, message)
    }
}

/// Whether `err` is a value's refusal (see [`FIELD_MARK`]) rather than a syntax or schema error.
pub(crate) fn is_refusal(err: &YamlError) -> bool {
    matches!(innermost(err), YamlError::Message { msg, .. } if msg.starts_with(FIELD_MARK))
}

/// The error under alias and snippet wrappers.
fn innermost(err: &YamlError) -> &YamlError {
    let mut e = err.without_snippet();
    for _ in 0..8 {
        match e {
            YamlError::AliasError { error, .. } => e = error.without_snippet(),
            _ => break,
        }
    }
    e
}

fn strip_location_suffix(text: &str) -> &str {
    let first = text.lines().next().unwrap_or(text);
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    }
}

/// The path as `routes[0].rate_limits[1].rate`.
fn clean_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => out.push_str(&format!("{}{key}", if out.is_empty() { "" } else { "." })),
            Segment::Enum { variant } => out.push_str(&format!("{}{variant}", if out.is_empty() { "" } else { "." })),
            Segment::Unknown => {}
        }
    }
    out
}

/// Whether `path` is a field of one `stores.NAME` entry (`stores.sessions.url`).
fn is_concern_store(path: &str) -> bool {
    path.strip_prefix("stores.")
        .is_some_and(|rest| rest.split('.').count() == 2)
}

fn last_field(path: &str) -> &str {
    let last = path.rsplit('.').next().unwrap_or(path);
    last.split('[').next().unwrap_or(last)
}

fn human_type(ty: &str) -> &'static str {
    match ty {
        "bool" => "true or false",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
            "a whole number"
        }
        "f32" | "f64" => "a number",
        "char" => "a single character",
        _ => "a value of another type",
    }
}

fn human_expected(expected: &str) -> String {
    let e = expected.trim();
    if e.contains("mapping") || e.starts_with("struct") || e.starts_with("a map") {
        "a mapping (`key: value` entries)".to_string()
    } else if e.contains("sequence") || e.starts_with("a list") {
        "a list (`- item` lines or `[a, b]`)".to_string()
    } else if e.contains("string") || e.contains("scalar") {
        "a single value, not a list or mapping".to_string()
    } else if e.contains("i64") || e.contains("integer") {
        "a whole number".to_string()
    } else if e.contains("bool") {
        "true or false".to_string()
    } else {
        e.to_string()
    }
}

/// The closest accepted name, for "did you mean".
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over the first 64 characters (names are short; input may not be).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let cut = |s: &str| s.char_indices().nth(64).map_or(s.len(), |(i, _)| i);
    strsim::levenshtein(&a[..cut(a)], &b[..cut(b)])
}

/// What a field accepts, for messages about it.
pub(crate) fn accepted_for(field: &str) -> Option<&'static str> {
    Some(match field {
        "listen" => LISTEN_ACCEPTED,
        "admin" => "a mapping with `listen` and `token`",
        "token" => "a string (the admin bearer token; `${ADMIN_TOKEN}` keeps it out of the file); empty means no token",
        "events" => "a mapping with `enabled`, `buffer`, `batch`, `stream_max_len`",
        "enabled" => "true or false",
        "buffer" => "a whole number from 16 to 1048576 (events waiting to be published)",
        "batch" => "a whole number from 1 to 10000 (events per store write)",
        "stream_max_len" => "a whole number from 100 to 100000000 (events the fleet's stream keeps)",
        "log" => "a mapping with `level` and `access_log`",
        "level" => "trace, debug, info, warn, error",
        "access_log" => "text, json, off (true is text, false is off)",
        "strip_prefix" => "true or false",
        "telemetry" => "a mapping with `otlp`",
        "otlp" => "a mapping with `endpoint` and optional `service_name`",
        "endpoint" => crate::telemetry::ENDPOINT_ACCEPTED,
        "service_name" => crate::telemetry::SERVICE_NAME_ACCEPTED,
        "store" => "a mapping with `url`, `key_prefix`, `timeout_ms`, `connect_timeout_ms`, `pool_size`, `reconnect_min_ms`, `reconnect_max_ms`, `username`, `password`, `sentinel_username`, `sentinel_password`, `tls`, `breaker`, `flush_on_startup`, `default_ttl_ms`, `markers_wait_replicas`, `rate_batch_max`",
        "stores" => STORES_ACCEPTED,
        "reconnect_min_ms" | "reconnect_max_ms" | "min_backoff_ms" | "max_backoff_ms" => MS_ACCEPTED,
        "default_ttl_ms" => TTL_ACCEPTED,
        "username" | "sentinel_username" => USERNAME_ACCEPTED,
        "password" | "sentinel_password" => "a string (quote it when it holds YAML-special characters; `${VAR}` keeps it out of the file)",
        "tls" => "a mapping with optional `ca_file`, `cert_file` and `key_file` (paths of PEM files); `tls: {}` turns TLS on with the system's CA roots",
        "ca_file" | "cert_file" => CERT_FILE_ACCEPTED,
        "key_file" => KEY_FILE_ACCEPTED,
        "breaker" => "a mapping with optional `failures` (1 to 1000), `min_backoff_ms`, `max_backoff_ms`",
        "flush_on_startup" => "true or false",
        "url" => STORE_URL_ACCEPTED,
        "key_prefix" => "1 to 64 characters from A-Z a-z 0-9 . _ -",
        "pool_size" => "a whole number from 1 to 64",
        "rate_batch_max" => "a whole number from 1 to 1024 (1: every rate decision its own store call)",
        "server" => "a mapping with `max_header_bytes`, `max_body_bytes`, `request_timeout_ms`, `idle_timeout_ms`, `drain_timeout_ms`, `body_idle_timeout`, `write_timeout`, `max_connections`",
        "max_header_bytes" => "a whole number of bytes from 1024 to 1048576",
        "max_body_bytes" => "a whole number of bytes, 0 or more",
        "timeout_ms" | "connect_timeout_ms" | "request_timeout_ms" | "idle_timeout_ms"
        | "drain_timeout_ms" | "interval_ms" | "eject_ms" | "lease_ms" => MS_ACCEPTED,
        "body_idle_timeout" | "write_timeout" => crate::duration::DURATION_ACCEPTED,
        "max_connections" => "a whole number from 1 to 1000000",
        "trusted_proxies" => "a list of CIDRs or IP addresses, e.g. [127.0.0.1/32, 10.0.0.0/8, ::1]",
        "upstreams" => "a mapping of upstream names to upstreams, e.g. backend: { targets: [http://127.0.0.1:3000] }",
        "targets" => TARGETS_ACCEPTED,
        "health_check" => "a mapping with `path` and optionally `interval_ms`, `timeout_ms`, `unhealthy_threshold`, `healthy_threshold`",
        "path" | "path_prefix" => "a path starting with /, e.g. /healthz",
        "unhealthy_threshold" | "healthy_threshold" | "failures" => "a whole number from 1 to 1000",
        "passive" => "a mapping with `failures` and `eject_ms`",
        "rate_limits" => "a list of limits, each with name, key, rate and optionally burst, algorithm, cost, on_store_error, on_missing_key, ipv6_prefix",
        "concurrency_limits" => "a list of limits, each with name, key, max and optionally lease_ms, on_store_error, on_missing_key, ipv6_prefix",
        "ipv6_prefix" => "a whole number of bits from 1 to 128 (default 64)",
        "routes" => "a list of routes, each with name, match, and upstream or respond",
        "name" => "1 to 64 characters from A-Z a-z 0-9 . _ -",
        "match" => "a mapping with optional `path_prefix`, `host`, `methods`",
        "host" => "a host name or IP address without port, e.g. api.example.com",
        "methods" => "a list of HTTP methods, e.g. [GET, POST]",
        "upstream" => "the name of an upstream defined under `upstreams`",
        "respond" => "a mapping with `status` (100 to 599), `body`, `headers`",
        "status" => "a whole number from 100 to 599",
        "body" => "a string",
        "headers" => "a mapping of header names to values, e.g. { content-type: text/plain }",
        "key" => "ip, header:NAME, cookie:NAME, route, global, or a list of these (e.g. [ip, header:x-api-key])",
        "rate" => "N/PERIOD, PERIOD = [count](ms|s|m|h|d), e.g. 2/s, 100/1m, 5000/1h",
        "burst" => "a whole number >= 1 (gcra only; default: the rate's N)",
        "algorithm" => "gcra, sliding_window, fixed_window",
        "cost" => "a whole number from 0 to the limit's capacity",
        "on_store_error" => "open, closed, local",
        "on_missing_key" => "shared, refuse",
        "max" => "a whole number >= 1",
        "certificates" => crate::listener_tls::CERTIFICATES_ACCEPTED,
        "reload_interval" => crate::duration::DURATION_ACCEPTED,
        "server_name" => "a DNS name (e.g. api.internal) or an IP address, as in the target's certificate",
        "insecure_skip_verify" => "true or false (true only for tests: any certificate is accepted)",
        "protocol" => crate::upstream_tls::PROTOCOL_ACCEPTED,
        _ => return None,
    })
}

pub(crate) const LISTEN_ACCEPTED: &str =
    "IP:PORT, e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080 (port 0 picks a free port)";
pub(crate) const STORE_URL_ACCEPTED: &str = "memory://, redis://[user:pass@]host[:port][/db], rediss://... (TLS), redis-sentinel://h1:26379,h2:26379[/db]?master=NAME, redis-cluster://h1:7000,h2:7001";
pub(crate) const MS_ACCEPTED: &str = "a whole number of milliseconds from 1 to 604800000 (7 days)";
pub(crate) const TTL_ACCEPTED: &str = "a whole number of milliseconds from 1 to 31536000000 (365 days)";
pub(crate) const USERNAME_ACCEPTED: &str = "a Redis ACL user name, without spaces or control characters";
pub(crate) const CERT_FILE_ACCEPTED: &str =
    "the path of a readable PEM file holding a certificate (`-----BEGIN CERTIFICATE-----`)";
pub(crate) const KEY_FILE_ACCEPTED: &str =
    "the path of a readable PEM file holding a private key (`-----BEGIN ... PRIVATE KEY-----`)";
pub(crate) const STORES_ACCEPTED: &str = "a mapping with optional `rate_limits`, `sessions`, `markers`, `cache`, `events`, each a mapping with optional `url`, `key_prefix`, `timeout_ms`, `default_ttl_ms`";
pub(crate) const CONCERN_STORE_ACCEPTED: &str = "a mapping with optional `url`, `key_prefix`, `timeout_ms`, `default_ttl_ms` (everything else is shared from `store`)";

/// What the field at `path` accepts: as [`accepted_for`] its last name, except under `stores`,
/// whose concern names (`rate_limits`...) mean something else elsewhere.
pub(crate) fn accepted_at(path: &str) -> Option<&'static str> {
    if let Some(rest) = path.strip_prefix("stores.") {
        if !rest.contains('.') {
            return Some(CONCERN_STORE_ACCEPTED);
        }
    }
    if path == "tls" {
        return Some("a mapping with `listen` and `certificates` (a list of { cert_file, key_file }), and optionally `reload_interval`");
    }
    if path.starts_with("upstreams.") && path.ends_with(".tls") {
        return Some(
            "a mapping with optional `ca_file`, `cert_file`, `key_file`, `server_name`, `insecure_skip_verify`",
        );
    }
    accepted_for(last_field(path))
}
pub(crate) const TARGETS_ACCEPTED: &str =
    "a non-empty list of http://HOST[:PORT] or https://HOST[:PORT] URLs, e.g. [http://127.0.0.1:3000] (port defaults to 80 for http, 443 for https)";
