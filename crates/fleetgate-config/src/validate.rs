//! From the file as written ([`crate::raw`]) to the validated [`Config`], stopping at the first
//! problem with its location, field path, why, and what is accepted.

use crate::duration::{parse_duration, DURATION_ACCEPTED, MAX_DURATION};
use crate::error::{
    accepted_for, Invalid, CERT_FILE_ACCEPTED, KEY_FILE_ACCEPTED, LISTEN_ACCEPTED, MS_ACCEPTED, STORE_URL_ACCEPTED,
    TARGETS_ACCEPTED, TTL_ACCEPTED, USERNAME_ACCEPTED,
};
use crate::model::*;
use crate::raw::*;
use fleetgate_store::{Algorithm, BreakerSettings, Keyspace, RateLimit, TlsFiles};
use ipnet::IpNet;
use serde_saphyr::Location;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

type R<T> = Result<T, Invalid>;

const SCOPE_ACCEPTED: &str = "1 to 64 characters from A-Z a-z 0-9 . _ - (no ':', braces or spaces)";
const MAX_MS: i64 = 7 * 24 * 3600 * 1000;
const TTL_MAX_MS: i64 = 365 * 24 * 3600 * 1000;
const MAX_CONNECTIONS: i64 = 1_000_000;
const UPSTREAM_BODY_IDLE_DEFAULT: Duration = Duration::from_secs(60);
const UPSTREAM_WRITE_DEFAULT: Duration = Duration::from_secs(60);

fn loc<T>(s: &S<T>) -> Option<Location> {
    Some(s.referenced)
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn line_of(l: &Location) -> String {
    if l.line() > 0 {
        format!(" (line {})", l.line())
    } else {
        String::new()
    }
}

/// A whole number in `min..=max`, or the default.
fn int(v: &Option<S<i64>>, default: i64, path: &str, min: i64, max: i64) -> R<i64> {
    let Some(v) = v else { return Ok(default) };
    if v.value < min || v.value > max {
        let field = path.rsplit('.').next().unwrap_or(path);
        let accepted = accepted_for(field)
            .map(str::to_string)
            .unwrap_or_else(|| format!("a whole number from {min} to {max}"));
        return Err(Invalid::new(
            loc(v),
            path,
            format!("{} is out of range; accepted: {accepted}", v.value),
        ));
    }
    Ok(v.value)
}

fn millis(v: &Option<S<i64>>, default: i64, path: &str) -> R<Duration> {
    millis_or(v, Duration::from_millis(default as u64), path)
}

fn millis_or(v: &Option<S<i64>>, default: Duration, path: &str) -> R<Duration> {
    let Some(s) = v else { return Ok(default) };
    if s.value < 1 || s.value > MAX_MS {
        return Err(Invalid::new(
            loc(s),
            path,
            format!("{} ms is out of range; accepted: {MS_ACCEPTED}", s.value),
        ));
    }
    Ok(Duration::from_millis(s.value as u64))
}

/// A duration written like `500ms` or `30s`, 1 ms to 7 days, or the default.
fn duration(v: &Option<S<String>>, default: Duration, path: &str) -> R<Duration> {
    let Some(s) = v else { return Ok(default) };
    let d = parse_duration(&s.value)
        .map_err(|why| Invalid::new(loc(s), path, format!("{why}; accepted: {DURATION_ACCEPTED}")))?;
    if d < Duration::from_millis(1) || d > MAX_DURATION {
        return Err(Invalid::new(
            loc(s),
            path,
            format!("{} is out of range; accepted: {DURATION_ACCEPTED}", s.value.trim()),
        ));
    }
    Ok(d)
}

fn socket_addr(v: &Option<S<String>>, default: SocketAddr, path: &str) -> R<SocketAddr> {
    let Some(s) = v else { return Ok(default) };
    s.value.trim().parse::<SocketAddr>().map_err(|_| {
        let why = if s.value.trim().is_empty() {
            "an address is required".to_string()
        } else if !s.value.contains(':') {
            format!("{:?} has no port", s.value)
        } else {
            format!(
                "{:?} is not an IP address and port (host names are not accepted)",
                s.value
            )
        };
        Invalid::new(loc(s), path, format!("{why}; accepted: {LISTEN_ACCEPTED}"))
    })
}

fn scope_name(s: &S<String>, path: &str, what: &str) -> R<String> {
    Keyspace::check_scope(&s.value).map_err(|_| {
        Invalid::new(
            loc(s),
            path,
            format!("{what} {:?} is not accepted; accepted: {SCOPE_ACCEPTED}", s.value),
        )
    })?;
    Ok(s.value.clone())
}

/// Validates the file and applies the `REDIS_URL` override (`redis_url`, when non-empty).
pub(crate) fn validate(raw: RawConfig, redis_url: Option<String>) -> Result<Config, ValidationFailure> {
    let RawConfig {
        listen,
        admin,
        log,
        store,
        stores,
        server,
        trusted_proxies,
        upstreams,
        rate_limits,
        routes,
    } = raw;
    let d = Config::default();
    let listen = socket_addr(&listen, d.listen, "listen")?;
    let admin_cfg = match &admin {
        Some(a) => AdminConfig {
            listen: socket_addr(&a.listen, d.admin.listen, "admin.listen")?,
        },
        None => AdminConfig::default(),
    };
    if admin_cfg.listen == listen && listen.port() != 0 {
        let at = admin.as_ref().and_then(|a| a.listen.as_ref()).map(|l| l.referenced);
        return Err(Invalid::new(
            at,
            "admin.listen",
            format!(
                "{} is also `listen`; the admin listener needs its own address; accepted: another IP:PORT, e.g. 127.0.0.1:9090",
                admin_cfg.listen
            ),
        )
        .into());
    }
    let log = validate_log(log)?;
    let (store, stores) = validate_stores(store, stores, redis_url)?;
    let server = validate_server(server)?;
    let trusted_proxies = validate_proxies(trusted_proxies)?;
    let upstreams = validate_upstreams(upstreams)?;
    let global_rate_limits = validate_rate_limits(rate_limits, "rate_limits")?;
    let routes = validate_routes(routes, &upstreams)?;
    Ok(Config {
        listen,
        admin: admin_cfg,
        log,
        store,
        stores,
        server,
        trusted_proxies,
        upstreams,
        global_rate_limits,
        routes,
    })
}

/// A validation failure: in the file, or in the `REDIS_URL` override.
pub(crate) enum ValidationFailure {
    File(Invalid),
    RedisUrlEnv(String),
}

impl From<Invalid> for ValidationFailure {
    fn from(i: Invalid) -> Self {
        ValidationFailure::File(i)
    }
}

fn validate_log(log: Option<RawLog>) -> R<LogConfig> {
    let mut out = LogConfig::default();
    let Some(log) = log else { return Ok(out) };
    if let Some(level) = &log.level {
        out.level = LogLevel::parse(level.value.trim()).ok_or_else(|| {
            Invalid::new(
                loc(level),
                "log.level",
                format!("unknown level {:?}; accepted: {}", level.value, LogLevel::ACCEPTED),
            )
        })?;
    }
    if let Some(a) = &log.access_log {
        out.access_log = a.value;
    }
    Ok(out)
}

/// The base store and every concern's resolved store, with the `REDIS_URL` override applied to
/// `store.url` (and so to every concern without its own `url`).
fn validate_stores(
    store: Option<RawStore>,
    stores: Option<RawStores>,
    redis_url: Option<String>,
) -> Result<(StoreConfig, ConcernStores), ValidationFailure> {
    let mut out = StoreConfig::default();
    let mut url_loc = None;
    let mut tls_loc = None;
    if let Some(store) = &store {
        if let Some(url) = &store.url {
            out.kind = store_kind(&url.value).map_err(|why| Invalid::new(loc(url), "store.url", why))?;
            out.url = url.value.trim().to_string();
            out.url_source = UrlSource::File;
            url_loc = Some(url.referenced);
        }
        if let Some(p) = &store.key_prefix {
            out.keyspace = key_prefix(p, "store.key_prefix")?;
        }
        out.timeout = millis(&store.timeout_ms, 50, "store.timeout_ms")?;
        out.connect_timeout = millis(&store.connect_timeout_ms, 1000, "store.connect_timeout_ms")?;
        out.pool_size = int(&store.pool_size, 1, "store.pool_size", 1, 64)? as usize;
        let d = StoreConfig::default();
        out.reconnect_min = millis_or(&store.reconnect_min_ms, d.reconnect_min, "store.reconnect_min_ms")?;
        out.reconnect_max = millis_or(&store.reconnect_max_ms, d.reconnect_max, "store.reconnect_max_ms")?;
        ordered(
            (&store.reconnect_min_ms, out.reconnect_min, "store.reconnect_min_ms"),
            (&store.reconnect_max_ms, out.reconnect_max, "store.reconnect_max_ms"),
        )?;
        out.username = user_name(&store.username, "store.username")?;
        out.password = secret(&store.password);
        out.sentinel_username = user_name(&store.sentinel_username, "store.sentinel_username")?;
        out.sentinel_password = secret(&store.sentinel_password);
        if let Some(tls) = &store.tls {
            out.tls = Some(validate_tls(tls, "store.tls")?);
            tls_loc = Some(tls.referenced);
        }
        if let Some(b) = &store.breaker {
            out.breaker = validate_breaker(b, "store.breaker")?;
        }
        if let Some(f) = &store.flush_on_startup {
            out.flush_on_startup = f.value;
        }
        out.default_ttl = ttl(&store.default_ttl_ms, "store.default_ttl_ms")?;
    }
    if let Some(url) = redis_url {
        out.kind = store_kind(&url).map_err(|why| {
            ValidationFailure::RedisUrlEnv(format!(
                "(from the REDIS_URL environment variable, which overrides the file) {why}"
            ))
        })?;
        out.url = url.trim().to_string();
        out.url_source = UrlSource::RedisUrlEnv;
    }
    if out.tls.is_some() && !uses_tls(out.kind) {
        let shown = out.redacted_url();
        let why = no_tls_why(out.kind);
        let accepted = "accepted: a rediss:// URL (e.g. rediss://host:6380), redis-sentinel:// or redis-cluster:// (store.tls turns TLS on for them), or no store.tls";
        return Err(match (out.url_source, url_loc) {
            // The URL in the file: blame it, it is what needs changing.
            (UrlSource::File, Some(at)) => Invalid::new(
                Some(at),
                "store.url",
                format!("{shown:?} {why}, but store.tls is set; {accepted}"),
            ),
            (source, _) => {
                let from = if source == UrlSource::RedisUrlEnv {
                    " (from the REDIS_URL environment variable)"
                } else {
                    " (the default: store.url is not set)"
                };
                Invalid::new(
                    tls_loc,
                    "store.tls",
                    format!("store.tls is set, but the store URL {shown:?}{from} {why}; {accepted}"),
                )
                .at_key()
            }
        }
        .into());
    }
    let stores = stores.unwrap_or_default();
    let resolve = |raw: &Option<RawConcernStore>, name: &str| resolve_concern(&out, raw.as_ref(), name);
    let concerns = ConcernStores {
        rate_limits: resolve(&stores.rate_limits, "rate_limits")?,
        sessions: resolve(&stores.sessions, "sessions")?,
        markers: resolve(&stores.markers, "markers")?,
        cache: resolve(&stores.cache, "cache")?,
        events: resolve(&stores.events, "events")?,
    };
    Ok((out, concerns))
}

/// Whether a store of this kind can use `store.tls`.
fn uses_tls(kind: StoreKind) -> bool {
    !matches!(kind, StoreKind::Memory | StoreKind::Redis)
}

fn no_tls_why(kind: StoreKind) -> &'static str {
    if kind == StoreKind::Memory {
        "is the in-process store, which has no connection to secure (for TLS, use a rediss:// URL)"
    } else {
        "is plain redis://, which never uses TLS (for TLS, use rediss:// instead)"
    }
}

/// One concern's store: `stores.NAME` over the base `store`.
fn resolve_concern(base: &StoreConfig, raw: Option<&RawConcernStore>, name: &str) -> R<StoreConfig> {
    let mut out = base.clone();
    let Some(raw) = raw else { return Ok(out) };
    let path = format!("stores.{name}");
    if let Some(url) = &raw.url {
        let upath = join(&path, "url");
        out.kind = store_kind(&url.value).map_err(|why| Invalid::new(loc(url), &upath, why))?;
        out.url = url.value.trim().to_string();
        out.url_source = UrlSource::File;
        if out.tls.is_some() && !uses_tls(out.kind) {
            return Err(Invalid::new(
                loc(url),
                upath,
                format!(
                    "{:?} {}, but store.tls is set and applies to every concern; accepted: a rediss:// URL here (or redis-sentinel://, redis-cluster://), or no store.tls",
                    out.redacted_url(),
                    no_tls_why(out.kind),
                ),
            ));
        }
    }
    if let Some(p) = &raw.key_prefix {
        out.keyspace = key_prefix(p, &join(&path, "key_prefix"))?;
    }
    out.timeout = millis_or(&raw.timeout_ms, base.timeout, &join(&path, "timeout_ms"))?;
    if raw.default_ttl_ms.is_some() {
        out.default_ttl = ttl(&raw.default_ttl_ms, &join(&path, "default_ttl_ms"))?;
    }
    Ok(out)
}

fn key_prefix(p: &S<String>, path: &str) -> R<Keyspace> {
    Keyspace::new(&p.value).map_err(|_| {
        Invalid::new(
            loc(p),
            path,
            format!("key prefix {:?} is not accepted; accepted: {SCOPE_ACCEPTED}", p.value),
        )
    })
}

/// A TTL in milliseconds, 1 ms to 365 days (default one day).
fn ttl(v: &Option<S<i64>>, path: &str) -> R<Duration> {
    let Some(s) = v else {
        return Ok(Duration::from_millis(DEFAULT_TTL_MS));
    };
    if s.value < 1 || s.value > TTL_MAX_MS {
        return Err(Invalid::new(
            loc(s),
            path,
            format!("{} ms is out of range; accepted: {TTL_ACCEPTED}", s.value),
        ));
    }
    Ok(Duration::from_millis(s.value as u64))
}

/// A user name; empty (e.g. `${REDIS_USER:-}` with the variable unset) is not set.
fn user_name(v: &Option<S<String>>, path: &str) -> R<Option<String>> {
    let Some(s) = v else { return Ok(None) };
    if s.value.is_empty() {
        return Ok(None);
    }
    if s.value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Invalid::new(
            loc(s),
            path,
            format!(
                "user name {:?} holds spaces or control characters; accepted: {USERNAME_ACCEPTED}",
                s.value
            ),
        ));
    }
    Ok(Some(s.value.clone()))
}

/// A password, taken as written; empty is not set. Never echoed in a message.
fn secret(v: &Option<S<String>>) -> Option<String> {
    v.as_ref().map(|s| s.value.clone()).filter(|s| !s.is_empty())
}

/// `low <= high` for a pair of millisecond fields; blames the maximum when it is written, else
/// the minimum.
fn ordered(low: (&Option<S<i64>>, Duration, &str), high: (&Option<S<i64>>, Duration, &str)) -> R<()> {
    let ((lo_raw, lo, lo_path), (hi_raw, hi, hi_path)) = (low, high);
    if lo <= hi {
        return Ok(());
    }
    let name = |p: &str| p.rsplit('.').next().unwrap_or(p).to_string();
    let (lo_name, hi_name) = (name(lo_path), name(hi_path));
    let (lo, hi) = (lo.as_millis(), hi.as_millis());
    match (hi_raw, lo_raw) {
        (Some(h), _) => {
            let lo_from = match lo_raw {
                Some(l) => line_of(&l.referenced),
                None => " (the default)".to_string(),
            };
            Err(Invalid::new(
                loc(h),
                hi_path,
                format!(
                    "{hi_name} {hi} is below {lo_name} {lo}{lo_from}; accepted: a whole number of milliseconds from {lo_name} ({lo}) to 604800000"
                ),
            ))
        }
        (None, l) => Err(Invalid::new(
            l.as_ref().and_then(loc),
            lo_path,
            format!(
                "{lo_name} {lo} is above {hi_name} {hi} (the default); accepted: at most {hi} ms, or also set {hi_name} to {lo} or more"
            ),
        )),
    }
}

fn validate_breaker(b: &RawBreaker, path: &str) -> R<BreakerSettings> {
    let d = BreakerSettings::default();
    let (min_path, max_path) = (join(path, "min_backoff_ms"), join(path, "max_backoff_ms"));
    let out = BreakerSettings {
        threshold: int(&b.failures, i64::from(d.threshold), &join(path, "failures"), 1, 1000)? as u32,
        min_backoff: millis_or(&b.min_backoff_ms, d.min_backoff, &min_path)?,
        max_backoff: millis_or(&b.max_backoff_ms, d.max_backoff, &max_path)?,
    };
    ordered(
        (&b.min_backoff_ms, out.min_backoff, &min_path),
        (&b.max_backoff_ms, out.max_backoff, &max_path),
    )?;
    Ok(out)
}

fn validate_tls(tls: &S<Option<RawTls>>, path: &str) -> R<TlsFiles> {
    let mut out = TlsFiles::default();
    let Some(t) = &tls.value else { return Ok(out) };
    let pair = "accepted: both cert_file and key_file (a client certificate and its private key), or neither";
    match (&t.cert_file, &t.key_file) {
        (Some(c), None) => {
            return Err(Invalid::new(
                loc(c),
                join(path, "cert_file"),
                format!("cert_file is set without key_file; {pair}"),
            ))
        }
        (None, Some(k)) => {
            return Err(Invalid::new(
                loc(k),
                join(path, "key_file"),
                format!("key_file is set without cert_file; {pair}"),
            ))
        }
        _ => {}
    }
    if let Some(f) = &t.ca_file {
        out.ca_file = Some(pem_file(f, &join(path, "ca_file"), Pem::Certificate)?);
    }
    if let Some(f) = &t.cert_file {
        out.cert_file = Some(pem_file(f, &join(path, "cert_file"), Pem::Certificate)?);
    }
    if let Some(f) = &t.key_file {
        out.key_file = Some(pem_file(f, &join(path, "key_file"), Pem::PrivateKey)?);
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pem {
    Certificate,
    PrivateKey,
}

/// Largest TLS file read, in bytes (a CA bundle is a few hundred KiB).
const PEM_MAX_BYTES: u64 = 4 << 20;

/// A readable PEM file holding what `want` says. The file's contents never appear in a message.
fn pem_file(s: &S<String>, path: &str, want: Pem) -> R<PathBuf> {
    use std::io::Read;
    let accepted = match want {
        Pem::Certificate => CERT_FILE_ACCEPTED,
        Pem::PrivateKey => KEY_FILE_ACCEPTED,
    };
    let bad = |why: String| Invalid::new(loc(s), path, format!("{why}; accepted: {accepted}"));
    let name = &s.value;
    if name.trim().is_empty() {
        return Err(bad("no file is named".to_string()));
    }
    let file = PathBuf::from(name);
    let opened = std::fs::File::open(&file).map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::NotFound => format!("file {name:?} does not exist"),
            std::io::ErrorKind::PermissionDenied => format!("file {name:?} is not readable (permission denied)"),
            _ => format!("file {name:?} cannot be opened: {e}"),
        })
    })?;
    let meta = opened
        .metadata()
        .map_err(|e| bad(format!("file {name:?} cannot be read: {e}")))?;
    if meta.is_dir() {
        return Err(bad(format!("{name:?} is a directory, not a file")));
    }
    if !meta.is_file() {
        return Err(bad(format!("{name:?} is not a regular file")));
    }
    let mut bytes = Vec::new();
    opened
        .take(PEM_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("file {name:?} cannot be read: {e}")))?;
    if bytes.len() as u64 > PEM_MAX_BYTES {
        return Err(bad(format!(
            "file {name:?} is larger than {} MiB, too large for a PEM file",
            PEM_MAX_BYTES >> 20
        )));
    }
    let text = String::from_utf8_lossy(&bytes);
    let begins: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("-----BEGIN ") && l.ends_with("-----"))
        .collect();
    if begins.is_empty() {
        return Err(bad(format!(
            "file {name:?} is not PEM (it has no `-----BEGIN ...-----` line)"
        )));
    }
    let found = match want {
        Pem::Certificate => begins
            .iter()
            .any(|l| *l == "-----BEGIN CERTIFICATE-----" || *l == "-----BEGIN TRUSTED CERTIFICATE-----"),
        Pem::PrivateKey => begins.iter().any(|l| l.ends_with("PRIVATE KEY-----")),
    };
    if !found {
        let what = match want {
            Pem::Certificate => "no certificate",
            Pem::PrivateKey => "no private key",
        };
        return Err(bad(format!("file {name:?} holds {what}")));
    }
    Ok(file)
}

/// Checks a store URL's shape; the message never shows a password.
fn store_kind(url: &str) -> Result<StoreKind, String> {
    let url = url.trim();
    let shown = redact_url(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{shown:?} is not a store URL; accepted: {STORE_URL_ACCEPTED}"));
    };
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "memory" => StoreKind::Memory,
        "redis" => StoreKind::Redis,
        "rediss" => StoreKind::RedisTls,
        "redis-sentinel" => StoreKind::RedisSentinel,
        "redis-cluster" => StoreKind::RedisCluster,
        other => {
            return Err(format!(
                "unknown store URL scheme {:?} in {shown:?}; accepted: {STORE_URL_ACCEPTED}",
                format!("{other}://")
            ))
        }
    };
    if kind == StoreKind::Memory {
        if !rest.is_empty() {
            return Err(format!(
                "{shown:?}: the in-process store takes nothing after memory://; accepted: {STORE_URL_ACCEPTED}"
            ));
        }
        return Ok(kind);
    }
    let bad = |why: &str| format!("{shown:?}: {why}; accepted: {STORE_URL_ACCEPTED}");
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, db) = match before_query.split_once('/') {
        Some((a, d)) => (a, Some(d)),
        None => (before_query, None),
    };
    if before_query[authority.len()..].contains('@') || query.is_some_and(|q| q.contains('@')) {
        return Err(bad(
            "a '@' after the host: a password holding '/' or '?' must be percent-encoded (%2F, %3F), or set it in the `password` field instead",
        ));
    }
    let hosts = match authority.rsplit_once('@') {
        Some((_, h)) => h,
        None => authority,
    };
    if hosts.is_empty() {
        return Err(bad("no host"));
    }
    let host_list: Vec<&str> = hosts.split(',').collect();
    if host_list.len() > 1 && matches!(kind, StoreKind::Redis | StoreKind::RedisTls) {
        return Err(bad(
            "redis:// and rediss:// take one host; use redis-sentinel:// or redis-cluster:// for several",
        ));
    }
    for h in &host_list {
        check_host_port(h).map_err(|why| bad(&why))?;
    }
    if let Some(db) = db {
        if !db.is_empty() && db.parse::<u16>().is_err() {
            return Err(bad("the database after '/' must be a number, e.g. /0"));
        }
        if !db.is_empty() && kind == StoreKind::RedisCluster {
            return Err(bad("Redis Cluster has no database numbers"));
        }
    }
    if kind == StoreKind::RedisSentinel {
        let has_master = query
            .map(|q| {
                q.split('&')
                    .any(|kv| kv.strip_prefix("master=").is_some_and(|m| !m.is_empty()))
            })
            .unwrap_or(false);
        if !has_master {
            return Err(bad("redis-sentinel:// needs ?master=NAME"));
        }
    }
    Ok(kind)
}

/// `host[:port]`, `[v6][:port]`.
fn check_host_port(hp: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return Err(format!("{hp:?} has an unclosed '['"));
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{h:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{hp:?}: expected ':' after ']'"))?,
            ),
        };
        (h.to_string(), port)
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hp.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{hp:?} has no host"));
    }
    if !hp.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

fn validate_server(server: Option<RawServer>) -> R<ServerConfig> {
    let mut out = ServerConfig::default();
    let Some(s) = server else { return Ok(out) };
    out.max_header_bytes = int(&s.max_header_bytes, 16384, "server.max_header_bytes", 1024, 1 << 20)? as usize;
    out.max_body_bytes = int(&s.max_body_bytes, 10 << 20, "server.max_body_bytes", 0, i64::MAX)? as u64;
    out.request_timeout = millis(&s.request_timeout_ms, 30_000, "server.request_timeout_ms")?;
    out.idle_timeout = millis(&s.idle_timeout_ms, 60_000, "server.idle_timeout_ms")?;
    out.drain_timeout = millis(&s.drain_timeout_ms, 10_000, "server.drain_timeout_ms")?;
    out.body_idle_timeout = duration(&s.body_idle_timeout, out.body_idle_timeout, "server.body_idle_timeout")?;
    out.write_timeout = duration(&s.write_timeout, out.write_timeout, "server.write_timeout")?;
    out.max_connections = int(
        &s.max_connections,
        DEFAULT_MAX_CONNECTIONS as i64,
        "server.max_connections",
        1,
        MAX_CONNECTIONS,
    )? as usize;
    Ok(out)
}

fn validate_proxies(list: Option<Vec<S<String>>>) -> R<Vec<IpNet>> {
    let mut out = Vec::new();
    for (i, item) in list.unwrap_or_default().iter().enumerate() {
        let text = item.value.trim();
        let net = match text.parse::<IpNet>() {
            Ok(n) => n.trunc(),
            Err(_) => match text.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(Invalid::new(
                        loc(item),
                        format!("trusted_proxies[{i}]"),
                        format!(
                            "{:?} is not a CIDR or IP address; accepted: IPv4 or IPv6 addresses or networks, e.g. 127.0.0.1, 10.0.0.0/8, ::1, fd00::/8",
                            item.value
                        ),
                    ))
                }
            },
        };
        out.push(net);
    }
    Ok(out)
}

fn validate_upstreams(ups: Option<Entries<S<RawUpstream>>>) -> R<BTreeMap<String, UpstreamConfig>> {
    let mut out = BTreeMap::new();
    for (name, up) in ups.map(|e| e.0).unwrap_or_default() {
        let path = format!("upstreams.{name}");
        if Keyspace::check_scope(&name).is_err() {
            return Err(Invalid::new(
                loc(&up),
                &path,
                format!("upstream name {name:?} is not accepted; accepted: {SCOPE_ACCEPTED}"),
            ));
        }
        let up = up.value;
        let tpath = join(&path, "targets");
        if up.targets.value.is_empty() {
            return Err(Invalid::new(
                loc(&up.targets),
                &tpath,
                format!("no targets; accepted: {TARGETS_ACCEPTED}"),
            ));
        }
        let mut targets = Vec::new();
        for (i, t) in up.targets.value.iter().enumerate() {
            let target = parse_target(&t.value).map_err(|why| {
                Invalid::new(
                    loc(t),
                    format!("{tpath}[{i}]"),
                    format!("{why}; accepted: {TARGETS_ACCEPTED}"),
                )
            })?;
            targets.push(target);
        }
        let health_check = match &up.health_check {
            None => None,
            Some(h) => {
                let hp = join(&path, "health_check");
                let p = &h.value.path;
                if !p.value.starts_with('/') || p.value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(Invalid::new(
                        loc(p),
                        join(&hp, "path"),
                        format!(
                            "{:?} is not a path; accepted: a path starting with / and without spaces, e.g. /healthz",
                            p.value
                        ),
                    ));
                }
                Some(HealthCheckConfig {
                    path: p.value.clone(),
                    interval: millis(&h.value.interval_ms, 5000, &join(&hp, "interval_ms"))?,
                    timeout: millis(&h.value.timeout_ms, 1000, &join(&hp, "timeout_ms"))?,
                    unhealthy_threshold: int(
                        &h.value.unhealthy_threshold,
                        2,
                        &join(&hp, "unhealthy_threshold"),
                        1,
                        1000,
                    )? as u32,
                    healthy_threshold: int(&h.value.healthy_threshold, 1, &join(&hp, "healthy_threshold"), 1, 1000)?
                        as u32,
                })
            }
        };
        let passive = match &up.passive {
            None => PassiveConfig::default(),
            Some(p) => {
                let pp = join(&path, "passive");
                PassiveConfig {
                    failures: int(&p.failures, 3, &join(&pp, "failures"), 1, 1000)? as u32,
                    eject: millis(&p.eject_ms, 10_000, &join(&pp, "eject_ms"))?,
                }
            }
        };
        out.insert(
            name.clone(),
            UpstreamConfig {
                name,
                targets,
                connect_timeout: millis(&up.connect_timeout_ms, 1000, &join(&path, "connect_timeout_ms"))?,
                request_timeout: millis(&up.request_timeout_ms, 30_000, &join(&path, "request_timeout_ms"))?,
                idle_timeout: millis(&up.idle_timeout_ms, 90_000, &join(&path, "idle_timeout_ms"))?,
                body_idle_timeout: duration(
                    &up.body_idle_timeout,
                    UPSTREAM_BODY_IDLE_DEFAULT,
                    &join(&path, "body_idle_timeout"),
                )?,
                write_timeout: duration(&up.write_timeout, UPSTREAM_WRITE_DEFAULT, &join(&path, "write_timeout"))?,
                health_check,
                passive,
            },
        );
    }
    Ok(out)
}

/// `http://HOST[:PORT][/]`.
fn parse_target(text: &str) -> Result<Target, String> {
    let raw = text.trim();
    let shown = redact_url(raw);
    let t = shown.as_str();
    let Some((scheme, rest)) = t.split_once("://") else {
        return Err(format!("{t:?} is not a URL"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => return Err(format!("{t:?}: https targets are not supported yet")),
        other => return Err(format!("{t:?}: scheme {other:?} is not supported")),
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "{t:?}: a target is only scheme, host and port, without path or query"
        ));
    }
    if authority.contains('@') {
        return Err(format!("{t:?}: user info in a target is not supported"));
    }
    let (host, port) = check_host_port(authority).map_err(|why| format!("{t:?}: {why}"))?;
    let port = port.unwrap_or(80);
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Target { host, port, authority })
}

fn validate_routes(
    routes: Option<Vec<S<RawRoute>>>,
    upstreams: &BTreeMap<String, UpstreamConfig>,
) -> R<Vec<RouteConfig>> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, (usize, Location)> = HashMap::new();
    for (i, route) in routes.unwrap_or_default().into_iter().enumerate() {
        let path = format!("routes[{i}]");
        let route_loc = route.referenced;
        let r = route.value;
        let name = scope_name(&r.name, &join(&path, "name"), "route name")?;
        if let Some((j, first)) = seen.get(&name) {
            return Err(Invalid::new(
                loc(&r.name),
                join(&path, "name"),
                format!(
                    "route name {name:?} is already used by routes[{j}]{}; accepted: a name unique among routes",
                    line_of(first)
                ),
            ));
        }
        seen.insert(name.clone(), (i, r.name.referenced));
        let matcher = validate_match(r.matcher.as_ref(), &join(&path, "match"))?;
        let target = match (&r.upstream, &r.respond) {
            (Some(u), Some(resp)) => {
                return Err(Invalid::new(
                    loc(resp),
                    &path,
                    format!(
                        "route {name:?} has both `upstream`{} and `respond`{}; accepted: exactly one of them",
                        line_of(&u.referenced),
                        line_of(&resp.referenced)
                    ),
                ))
            }
            (None, None) => {
                return Err(Invalid::new(
                    Some(route_loc),
                    &path,
                    format!(
                        "route {name:?} has neither `upstream` nor `respond`; accepted: exactly one of `upstream: NAME` ({}) or `respond: {{ status: 200, body: \"ok\" }}`",
                        defined_upstreams(upstreams)
                    ),
                ))
            }
            (Some(u), None) => {
                if !upstreams.contains_key(&u.value) {
                    return Err(Invalid::new(
                        loc(u),
                        join(&path, "upstream"),
                        format!("upstream {:?} is not defined; accepted: {}", u.value, defined_upstreams(upstreams)),
                    ));
                }
                RouteTarget::Upstream(u.value.clone())
            }
            (None, Some(resp)) => validate_respond(resp, &join(&path, "respond"))?,
        };
        let strip_prefix = match &r.strip_prefix {
            Some(s) if s.value && matcher.path_prefix.is_none() => {
                return Err(Invalid::new(
                    loc(s),
                    join(&path, "strip_prefix"),
                    "strip_prefix: true needs match.path_prefix; accepted: false, or add a path_prefix",
                ))
            }
            Some(s) => s.value,
            None => false,
        };
        let rate_limits = validate_rate_limits(r.rate_limits, &join(&path, "rate_limits"))?;
        let concurrency_limits = validate_concurrency(r.concurrency_limits, &join(&path, "concurrency_limits"))?;
        out.push(RouteConfig {
            name,
            matcher,
            target,
            strip_prefix,
            rate_limits,
            concurrency_limits,
        });
    }
    Ok(out)
}

fn defined_upstreams(upstreams: &BTreeMap<String, UpstreamConfig>) -> String {
    if upstreams.is_empty() {
        "the name of an upstream defined under `upstreams:` (none is defined yet)".to_string()
    } else {
        let names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        format!("one of the defined upstreams: {}", names.join(", "))
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn validate_match(m: Option<&RawMatch>, path: &str) -> R<RouteMatch> {
    let mut out = RouteMatch::default();
    let Some(m) = m else { return Ok(out) };
    if let Some(p) = &m.path_prefix {
        if !p.value.starts_with('/')
            || p.value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
        {
            return Err(Invalid::new(
                loc(p),
                join(path, "path_prefix"),
                format!(
                    "{:?} is not a path prefix; accepted: a path starting with / without spaces, '?' or '#', e.g. /api",
                    p.value
                ),
            ));
        }
        out.path_prefix = Some(p.value.clone());
    }
    if let Some(h) = &m.host {
        let host = h.value.trim().to_ascii_lowercase();
        let host = host
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .map(str::to_string)
            .unwrap_or(host);
        let ok = host.parse::<IpAddr>().is_ok()
            || (!host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
        if !ok {
            return Err(Invalid::new(
                loc(h),
                join(path, "host"),
                format!("{:?} is not a host; accepted: a host name or IP address without port, e.g. api.example.com (matched case-insensitively, the request's port ignored)", h.value),
            ));
        }
        out.host = Some(host);
    }
    for (i, method) in m.methods.iter().flatten().enumerate() {
        let upper = method.value.trim().to_ascii_uppercase();
        if !is_token(&upper) {
            return Err(Invalid::new(
                loc(method),
                format!("{}[{i}]", join(path, "methods")),
                format!("{:?} is not an HTTP method; accepted: method names such as GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS", method.value),
            ));
        }
        if !out.methods.contains(&upper) {
            out.methods.push(upper);
        }
    }
    Ok(out)
}

fn validate_respond(resp: &S<RawRespond>, path: &str) -> R<RouteTarget> {
    let r = &resp.value;
    let status = int(&r.status, 200, &join(path, "status"), 100, 599)? as u16;
    let mut headers = Vec::new();
    for (name, value) in r.headers.iter().flat_map(|h| h.0.iter()) {
        let hpath = format!("{}.{name}", join(path, "headers"));
        let lower = name.to_ascii_lowercase();
        if !is_token(&lower) {
            return Err(Invalid::new(
                loc(value),
                &hpath,
                format!(
                    "{name:?} is not a header name; accepted: letters, digits and !#$%&'*+-.^_`|~, e.g. content-type"
                ),
            ));
        }
        if value
            .value
            .chars()
            .any(|c| (c.is_control() && c != '\t') || !c.is_ascii())
        {
            return Err(Invalid::new(
                loc(value),
                &hpath,
                "the header value holds control or non-ASCII characters; accepted: printable ASCII, spaces and tabs",
            ));
        }
        headers.push((lower, value.value.clone()));
    }
    Ok(RouteTarget::Respond {
        status,
        body: r.body.clone().unwrap_or_default(),
        headers,
    })
}

fn validate_key(key: &S<KeySpec>, path: &str) -> R<Vec<KeyPart>> {
    if key.value.items.is_empty() {
        return Err(Invalid::new(
            loc(key),
            path,
            format!("the key lists no part; accepted: {}", KeyPart::ACCEPTED),
        ));
    }
    let mut out = Vec::new();
    for (i, (text, item_loc)) in key.value.items.iter().enumerate() {
        let ipath = if key.value.was_list {
            format!("{path}[{i}]")
        } else {
            path.to_string()
        };
        let at = item_loc.or(Some(key.referenced));
        let t = text.trim();
        let part = match t.split_once(':') {
            None => match t {
                "ip" => Some(KeyPart::Ip),
                "route" => Some(KeyPart::Route),
                "global" => Some(KeyPart::Global),
                _ => None,
            },
            Some(("header", n)) if is_token(n) => Some(KeyPart::Header(n.to_ascii_lowercase())),
            Some(("cookie", n)) if is_token(n) => Some(KeyPart::Cookie(n.to_string())),
            Some(_) => None,
        };
        let Some(part) = part else {
            return Err(Invalid::new(
                at,
                ipath,
                format!("unknown key part {text:?}; accepted: {}", KeyPart::ACCEPTED),
            ));
        };
        if out.contains(&part) {
            return Err(Invalid::new(
                at,
                ipath,
                format!("key part {text:?} is listed twice; accepted: each part once"),
            ));
        }
        out.push(part);
    }
    Ok(out)
}

fn failure_policy(v: &Option<S<String>>, path: &str) -> R<FailurePolicy> {
    let Some(v) = v else { return Ok(FailurePolicy::Local) };
    FailurePolicy::parse(v.value.trim()).ok_or_else(|| {
        Invalid::new(
            loc(v),
            path,
            format!("unknown policy {:?}; accepted: {}", v.value, FailurePolicy::ACCEPTED),
        )
    })
}

fn missing_key(v: &Option<S<String>>, path: &str) -> R<MissingKey> {
    let Some(v) = v else { return Ok(MissingKey::Shared) };
    MissingKey::parse(v.value.trim()).ok_or_else(|| {
        Invalid::new(
            loc(v),
            path,
            format!("unknown policy {:?}; accepted: {}", v.value, MissingKey::ACCEPTED),
        )
    })
}

fn validate_rate_limits(list: Option<Vec<S<RawRateLimit>>>, path: &str) -> R<Vec<RateLimitConfig>> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, (usize, Location)> = HashMap::new();
    for (i, l) in list.unwrap_or_default().into_iter().enumerate() {
        let lp = format!("{path}[{i}]");
        let l = l.value;
        let name = scope_name(&l.name, &join(&lp, "name"), "limit name")?;
        if let Some((j, first)) = seen.get(&name) {
            return Err(Invalid::new(
                loc(&l.name),
                join(&lp, "name"),
                format!(
                    "limit name {name:?} is already used by {path}[{j}]{}; accepted: a name unique within the list",
                    line_of(first)
                ),
            ));
        }
        seen.insert(name.clone(), (i, l.name.referenced));
        let key = validate_key(&l.key, &join(&lp, "key"))?;
        let algorithm = match &l.algorithm {
            None => Algorithm::Gcra,
            Some(a) => a
                .value
                .trim()
                .parse::<Algorithm>()
                .map_err(|e| Invalid::new(loc(a), join(&lp, "algorithm"), e.to_string()))?,
        };
        let rate = l
            .rate
            .value
            .parse::<fleetgate_store::Rate>()
            .map_err(|e| Invalid::new(loc(&l.rate), join(&lp, "rate"), e.to_string()))?;
        let limit = RateLimit::new(algorithm, rate, l.burst.as_ref().map(|b| b.value)).map_err(|e| {
            use fleetgate_store::LimitError;
            let (at, field) = match (&e, &l.burst) {
                (LimitError::BadBurst(_) | LimitError::BurstNotSupported(_), Some(b)) => (loc(b), "burst"),
                (LimitError::TooLarge(..), Some(b)) => (loc(b), "burst"),
                _ => (loc(&l.rate), "rate"),
            };
            Invalid::new(at, join(&lp, field), e.to_string())
        })?;
        let cost = match &l.cost {
            None => 1,
            Some(c) if c.value < 0 || c.value as u64 > limit.capacity() => {
                return Err(Invalid::new(
                    loc(c),
                    join(&lp, "cost"),
                    format!(
                        "cost {} is outside 0 to {} (the limit's capacity: burst for gcra, N for the window algorithms), so it could never pass; accepted: a whole number from 0 to {}",
                        c.value,
                        limit.capacity(),
                        limit.capacity()
                    ),
                ))
            }
            Some(c) => c.value as u64,
        };
        out.push(RateLimitConfig {
            name,
            key,
            limit,
            cost,
            on_store_error: failure_policy(&l.on_store_error, &join(&lp, "on_store_error"))?,
            on_missing_key: missing_key(&l.on_missing_key, &join(&lp, "on_missing_key"))?,
            ipv6_prefix: int(&l.ipv6_prefix, DEFAULT_IPV6_PREFIX, &join(&lp, "ipv6_prefix"), 1, 128)? as u8,
        });
    }
    Ok(out)
}

/// IPv6 clients are counted by /64 unless a limit says otherwise: a host commonly holds a
/// whole /64 and can rotate addresses within it.
const DEFAULT_IPV6_PREFIX: i64 = 64;

fn validate_concurrency(list: Option<Vec<S<RawConcurrencyLimit>>>, path: &str) -> R<Vec<ConcurrencyLimitConfig>> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, (usize, Location)> = HashMap::new();
    for (i, l) in list.unwrap_or_default().into_iter().enumerate() {
        let lp = format!("{path}[{i}]");
        let l = l.value;
        let name = scope_name(&l.name, &join(&lp, "name"), "limit name")?;
        if let Some((j, first)) = seen.get(&name) {
            return Err(Invalid::new(
                loc(&l.name),
                join(&lp, "name"),
                format!(
                    "limit name {name:?} is already used by {path}[{j}]{}; accepted: a name unique within the list",
                    line_of(first)
                ),
            ));
        }
        seen.insert(name.clone(), (i, l.name.referenced));
        let key = validate_key(&l.key, &join(&lp, "key"))?;
        let max = int(&Some(l.max.clone()), 1, &join(&lp, "max"), 1, i64::MAX)? as u64;
        out.push(ConcurrencyLimitConfig {
            name,
            key,
            max,
            lease: millis(&l.lease_ms, 60_000, &join(&lp, "lease_ms"))?,
            on_store_error: failure_policy(&l.on_store_error, &join(&lp, "on_store_error"))?,
            on_missing_key: missing_key(&l.on_missing_key, &join(&lp, "on_missing_key"))?,
            ipv6_prefix: int(&l.ipv6_prefix, DEFAULT_IPV6_PREFIX, &join(&lp, "ipv6_prefix"), 1, 128)? as u8,
        });
    }
    Ok(out)
}
