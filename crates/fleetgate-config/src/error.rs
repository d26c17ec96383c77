//! [`ConfigError`]: one message naming the file, the line and column, the field and why, with
//! what is accepted; and the translation of parser errors into it.

use crate::env::ColumnMap;
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

/// A validation failure before it is tied to a file: where, which field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub loc: Option<Location>,
    pub path: String,
    pub message: String,
    /// `loc` is a mapping value's; point at its key instead when the value is a block mapping
    /// starting on a later line (where a person looks for `tls:`, not its first entry).
    pub at_key: bool,
}

impl Invalid {
    pub(crate) fn new(loc: Option<Location>, path: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            loc: loc.filter(|l| l.line() > 0),
            path: path.into(),
            message: message.into(),
            at_key: false,
        }
    }

    /// See [`Invalid::at_key`].
    pub(crate) fn at_key(mut self) -> Self {
        self.at_key = true;
        self
    }
}

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

    pub(crate) fn invalid(&self, inv: Invalid) -> ConfigError {
        let (mut line, mut col) = inv.loc.map_or((0, 0), |l| (l.line(), l.column()));
        if inv.at_key {
            if let Some((l, c)) = self.key_of_block_value(line, col, last_field(&inv.path)) {
                (line, col) = (l, c);
            }
        }
        self.error(ErrorKind::Invalid, line, col, Some(inv.path), inv.message)
    }

    /// For a block mapping value starting at `line`/`col` (substituted text) on its own line,
    /// the line and column of its key `key:` above it. Nothing is substituted before a key at
    /// the start of a line, so its column is the same in both texts.
    fn key_of_block_value(&self, line: u64, col: u64, key: &str) -> Option<(u64, u64)> {
        let line_no = u32::try_from(line).ok().filter(|l| *l > 0)?;
        let orig_col = self.columns.original_column(line_no, col);
        let lines: Vec<&str> = self.original.lines().collect();
        let text = lines.get(line_no as usize - 1)?;
        let before: String = text
            .chars()
            .take(usize::try_from(orig_col.checked_sub(1)?).ok()?)
            .collect();
        if !before.trim().is_empty() {
            return None;
        }
        let indent = before.chars().count();
        for l in (1..line_no as usize).rev() {
            let t = lines[l - 1];
            let trimmed = t.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let key_indent = t.chars().count() - trimmed.chars().count();
            if key_indent >= indent {
                return None;
            }
            let after_dash = trimmed.strip_prefix("- ").map(str::trim_start).unwrap_or(trimmed);
            let rest = after_dash.strip_prefix(key)?;
            if !rest.trim_start().starts_with(':') {
                return None;
            }
            let column = t.chars().count() - after_dash.chars().count() + 1;
            return Some((l as u64, column as u64));
        }
        None
    }

    /// An error about a value that did not come from the file (`REDIS_URL`).
    pub(crate) fn env_error(&self, path: &str, message: String) -> ConfigError {
        ConfigError {
            kind: ErrorKind::Invalid,
            file: self.file.to_string(),
            line: None,
            column: None,
            path: Some(path.to_string()),
            message,
            snippet: None,
        }
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
        let token: String = redact_urls(token).chars().take(80).collect();
        (!token.is_empty()).then_some(token)
    }

    /// Turns a parser or schema error into one clear message.
    pub(crate) fn yaml_error(&self, err: &YamlError, raw_path: Option<&serde_path_to_error::Path>) -> ConfigError {
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
            YamlError::SerdeMissingField { field, location } => {
                let (l, c) = mapping_start(self.original, &self.columns, location);
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

/// The path as `routes[0].rate_limits[1].rate`, without the segments that `Spanned` adds.
fn clean_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    let mut prev: Option<String> = None;
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                prev = None;
            }
            Segment::Map { key } => {
                // `Spanned<T>` shows up as a `value` field; user-named keys (upstream names,
                // header names) directly follow `upstreams` and `headers`.
                let user_key = matches!(prev.as_deref(), Some("upstreams" | "headers"));
                if key == "value" && !user_key {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
                prev = Some(if user_key { String::new() } else { key.clone() });
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
                prev = None;
            }
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
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(64).collect();
    let b: Vec<char> = b.chars().take(64).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// What a field accepts, for messages about it.
pub(crate) fn accepted_for(field: &str) -> Option<&'static str> {
    Some(match field {
        "listen" => LISTEN_ACCEPTED,
        "admin" => "a mapping with `listen`",
        "log" => "a mapping with `level` and `access_log`",
        "level" => "trace, debug, info, warn, error",
        "access_log" | "strip_prefix" => "true or false",
        "store" => "a mapping with `url`, `key_prefix`, `timeout_ms`, `connect_timeout_ms`, `pool_size`, `reconnect_min_ms`, `reconnect_max_ms`, `username`, `password`, `sentinel_username`, `sentinel_password`, `tls`, `breaker`, `flush_on_startup`, `default_ttl_ms`",
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
    accepted_for(last_field(path))
}
pub(crate) const TARGETS_ACCEPTED: &str =
    "a non-empty list of http://HOST[:PORT] URLs, e.g. [http://127.0.0.1:3000] (port defaults to 80)";

/// Where the block mapping that holds the key at `loc` starts: parsers report a missing field
/// at the mapping's last key, while a person looks for the mapping's first line. Flow mappings
/// (`{ ... }`) and anything unexpected keep `loc`. Returns (line, column) in the substituted
/// text's terms (columns are left as reported).
fn mapping_start(original: &str, columns: &ColumnMap, loc: &Location) -> (u64, u64) {
    let (line, col) = (loc.line(), loc.column());
    let keep = (line, col);
    let Ok(line_no) = u32::try_from(line) else { return keep };
    if line_no == 0 || col == 0 {
        return keep;
    }
    let lines: Vec<&str> = original.lines().collect();
    let orig_col = columns.original_column(line_no, col);
    let key_indent = (orig_col - 1) as usize;
    // (indentation of the first key on the line, whether a `- ` came before it)
    let indent_of = |text: &str| -> (usize, bool) {
        let mut n = 0;
        let mut dash = false;
        let mut chars = text.chars().peekable();
        while let Some(&c) = chars.peek() {
            if c == ' ' {
                n += 1;
                chars.next();
            } else if c == '-' {
                chars.next();
                if chars.peek() == Some(&' ') {
                    dash = true;
                    n += 1;
                } else {
                    break;
                }
            } else {
                break;
            }
        }
        (n, dash)
    };
    match lines.get(line_no as usize - 1) {
        Some(text) if indent_of(text).0 == key_indent => {}
        _ => return keep,
    }
    let mut best = line_no as usize;
    let mut l = line_no as usize;
    while l >= 1 {
        let text = lines[l - 1];
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            l -= 1;
            continue;
        }
        let (indent, dash) = indent_of(text);
        if indent < key_indent {
            break;
        }
        if indent == key_indent {
            best = l;
            if dash {
                break;
            }
        }
        l -= 1;
    }
    if best == line_no as usize {
        return keep;
    }
    // Nothing is substituted before a key at the line's indentation, so the column is the
    // same in both texts.
    (best as u64, orig_col)
}

/// `line` with the password of every `scheme://user:password@host` URL replaced by `***`, so
/// that an error about a store URL never shows its password. The user info of a URL is taken
/// to run up to the last `@` of the line: a password may hold `,`, `]`, `}`, `/` or spaces, and
/// hiding too much is preferred to showing a secret.
fn redact_urls(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let tail = &rest[i + 3..];
        out.push_str(&rest[..i + 3]);
        rest = match tail.rfind('@') {
            Some(at) => {
                let userinfo = &tail[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":***@");
                    }
                    None => {
                        out.push_str(userinfo);
                        out.push('@');
                    }
                }
                &tail[at + 1..]
            }
            None => tail,
        };
    }
    out.push_str(rest);
    out
}

/// Whether a key names a secret (`password`, `sentinel_password`, and near misses such as a
/// mistyped `pasword`, whose value is still someone's password).
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("passw")
        || k.contains("secret")
        || k.contains("pwd")
        || k.contains("token")
        || edit_distance(&k, "password") <= 2
        || edit_distance(&k, "sentinel_password") <= 3
}

/// Where, in bytes, the value of the first secret key on `line` starts (`password: VALUE`,
/// also in flow mappings and quoted), if any: from there on the line is not shown.
fn secret_value_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b':' {
            continue;
        }
        if bytes.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
            continue;
        }
        let before = &line[..i];
        let key = before
            .rsplit(|c: char| c.is_whitespace() || matches!(c, '{' | ',' | '[' | '-' | '?'))
            .next()
            .unwrap_or(before)
            .trim_matches(|c| c == '"' || c == '\'');
        if !key.is_empty() && is_secret_key(key) {
            return Some(i + 1);
        }
    }
    None
}

/// `line` as it may be shown: secret values replaced by `***` (the rest of the line after a
/// secret key is dropped), and URL passwords hidden.
fn shown_line(line: &str) -> String {
    let line = match secret_value_start(line) {
        Some(at) => format!("{} ***", &line[..at]),
        None => line.to_string(),
    };
    redact_urls(&line)
}

/// The numbered line `line` of `text` with a caret under `column`.
fn snippet(text: &str, line: u32, column: Option<u32>) -> Option<String> {
    let content = text.lines().nth(line.checked_sub(1)? as usize)?;
    let shown: String = shown_line(content)
        .chars()
        .take(200)
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect();
    let number = line.to_string();
    let pad = " ".repeat(number.len());
    let mut out = format!("{pad} |\n{number} | {}", shown.trim_end());
    if let Some(col) = column {
        let col = col.max(1) as usize;
        // The column in the shown line: hidden secrets before it change its position.
        let before: String = content.chars().take(col - 1).collect();
        let col = match secret_value_start(content) {
            // At or after a hidden value: on its `***`.
            Some(at) if before.len() >= at => redact_urls(&content[..at]).chars().count() + 2,
            _ if before.chars().count() == col - 1 => redact_urls(&before).chars().count() + 1,
            _ => col,
        };
        if col <= shown.chars().count() + 1 {
            let lead: String = shown
                .chars()
                .take(col - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("\n{pad} | {lead}^"));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_points_at_the_column() {
        let s = snippet("a: 1\n  rate: 0/s\n", 2, Some(9)).unwrap();
        assert_eq!(s, "  |\n2 |   rate: 0/s\n  |         ^");
        assert!(snippet("a\n", 5, None).is_none());
        assert!(snippet("a\n", 0, None).is_none());
    }

    #[test]
    fn snippets_hide_url_passwords() {
        assert_eq!(
            redact_urls("  url: redis://u:secret@h:1/0 # x"),
            "  url: redis://u:***@h:1/0 # x"
        );
        assert_eq!(
            redact_urls("x: [\"rediss://:p@a\", http://b]"),
            "x: [\"rediss://:***@a\", http://b]"
        );
        assert_eq!(redact_urls("no url :// here"), "no url :// here");
        assert_eq!(redact_urls("x:\u{3000}redis://a:b@c"), "x:\u{3000}redis://a:***@c");
        let s = snippet("store:\n  url: redis://u:pw@h\n", 2, Some(8)).unwrap();
        assert!(!s.contains("pw"), "{s}");
    }

    #[test]
    fn snippets_hide_secret_values_and_keep_the_caret() {
        let s = snippet(
            "store: { url: \"redis://:longsecret@h\", timeout_ms: x }\n",
            1,
            Some(52),
        )
        .unwrap();
        assert!(!s.contains("longsecret"), "{s}");
        assert_eq!(
            s,
            "  |\n1 | store: { url: \"redis://:***@h\", timeout_ms: x }\n  |                                             ^"
        );
        assert_eq!(shown_line("  password: hunter2 # x"), "  password: ***");
        assert_eq!(
            shown_line("  - \"sentinel_password\":  a b"),
            "  - \"sentinel_password\": ***"
        );
        assert_eq!(shown_line("store: { pasword: hunter2, x: 1 }"), "store: { pasword: ***");
        assert_eq!(shown_line("  passive: { failures: 3 }"), "  passive: { failures: 3 }");
        assert_eq!(shown_line("  url: redis://u:p ss,w@h"), "  url: redis://u:***@h");
        let s = snippet("store:\n  password: [hunter2]\n", 2, Some(13)).unwrap();
        assert_eq!(s, "  |\n2 |   password: ***\n  |             ^");
    }

    #[test]
    fn only_secret_keys_are_hidden() {
        for key in [
            "password",
            "sentinel_password",
            "Password",
            "pasword",
            "sentinel_pasword",
            "db_secret",
            "api-token",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        // Every other field name of the schema is shown.
        for key in [
            "listen",
            "admin",
            "log",
            "level",
            "access_log",
            "store",
            "stores",
            "url",
            "key_prefix",
            "timeout_ms",
            "connect_timeout_ms",
            "pool_size",
            "reconnect_min_ms",
            "reconnect_max_ms",
            "username",
            "sentinel_username",
            "tls",
            "ca_file",
            "cert_file",
            "key_file",
            "breaker",
            "failures",
            "min_backoff_ms",
            "max_backoff_ms",
            "flush_on_startup",
            "default_ttl_ms",
            "rate_limits",
            "sessions",
            "markers",
            "cache",
            "events",
            "server",
            "max_header_bytes",
            "max_body_bytes",
            "request_timeout_ms",
            "idle_timeout_ms",
            "drain_timeout_ms",
            "trusted_proxies",
            "upstreams",
            "targets",
            "health_check",
            "path",
            "interval_ms",
            "unhealthy_threshold",
            "healthy_threshold",
            "passive",
            "eject_ms",
            "routes",
            "name",
            "match",
            "path_prefix",
            "host",
            "methods",
            "upstream",
            "respond",
            "status",
            "body",
            "headers",
            "strip_prefix",
            "concurrency_limits",
            "key",
            "rate",
            "burst",
            "algorithm",
            "cost",
            "on_store_error",
            "on_missing_key",
            "ipv6_prefix",
            "max",
            "lease_ms",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn closest_suggests_near_names() {
        assert_eq!(closest("rtae", &["name", "rate", "burst"]), Some("rate"));
        assert_eq!(closest("algoritm", &["algorithm", "cost"]), Some("algorithm"));
        assert_eq!(closest("zzzzzz", &["name", "rate"]), None);
    }
}
