//! The validated configuration: what the gateway consumes. Every value here has been checked;
//! defaults are filled in. See docs/configuration.md for the file format.

pub use fleetgate_http::{ConcurrencyLimitConfig, FailurePolicy, KeyPart, MissingKey, RateLimitConfig};
use fleetgate_store::{BreakerSettings, Keyspace, RedisOptions, TlsFiles};
use ipnet::IpNet;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address the proxy listens on (`listen`, default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// The store holding shared state (`store`). `REDIS_URL` overrides its URL.
    pub store: StoreConfig,
    /// The store of each concern, fully resolved: `stores.NAME` over `store` (`stores`).
    pub stores: ConcernStores,
    /// Limits and timeouts of the client-facing HTTP server.
    pub server: ServerConfig,
    /// Peers whose `X-Forwarded-For` is honoured (`trusted_proxies`, default none). Bare IPs
    /// become /32 or /128 networks; host bits are cleared.
    pub trusted_proxies: Vec<IpNet>,
    /// Upstreams by name (`upstreams`).
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Limits applied to every route, before the route's own (top-level `rate_limits`).
    pub global_rate_limits: Vec<RateLimitConfig>,
    /// Routes in file order; the first that matches a request wins.
    pub routes: Vec<RouteConfig>,
}

impl Default for Config {
    /// The configuration of an empty file: every default, no upstream, no route.
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            stores: ConcernStores::default(),
            server: ServerConfig::default(),
            trusted_proxies: Vec::new(),
            upstreams: BTreeMap::new(),
            global_rate_limits: Vec::new(),
            routes: Vec::new(),
        }
    }
}

impl Config {
    /// The upstream called `name`.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.get(name)
    }

    /// Whether `peer` (the TCP peer address) is a trusted proxy, so that its
    /// `X-Forwarded-For` may be honoured. IPv4-mapped IPv6 peers are compared as IPv4.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }

    /// The first route matching a request, with its index.
    pub fn route_for(&self, method: &str, host: Option<&str>, path: &str) -> Option<(usize, &RouteConfig)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches(method, host, path))
    }
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin listener (`admin.listen`, default `127.0.0.1:9090`).
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Minimum level (`log.level`, default `info`). `RUST_LOG`, when set, overrides it at run
    /// time.
    pub level: LogLevel,
    /// Whether each completed request is logged (`log.access_log`, default `true`).
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            access_log: true,
        }
    }
}

/// A log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation (default).
    Info,
    /// Problems that the gateway works around.
    Warn,
    /// Failures.
    Error,
}

impl LogLevel {
    /// The accepted spellings, for error messages.
    pub const ACCEPTED: &'static str = "trace, debug, info, warn, error";

    /// The level as written in the file (and as `tracing` filters spell it).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" => LogLevel::Error,
            _ => return None,
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kind of store `store.url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// `memory://`: in-process, nothing else to run (health reports `off`).
    Memory,
    /// `redis://`: one Redis server, plain TCP.
    Redis,
    /// `rediss://`: one Redis server over TLS.
    RedisTls,
    /// `redis-sentinel://`: a Sentinel-managed primary.
    RedisSentinel,
    /// `redis-cluster://`: a Redis Cluster.
    RedisCluster,
}

impl StoreKind {
    /// The URL scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
            StoreKind::RedisTls => "rediss",
            StoreKind::RedisSentinel => "redis-sentinel",
            StoreKind::RedisCluster => "redis-cluster",
        }
    }
}

/// Where `store.url` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UrlSource {
    /// Not given: the default `memory://`.
    Default,
    /// `store.url` in the file (after `${VAR}` substitution).
    File,
    /// The `REDIS_URL` environment variable, which overrides the file.
    RedisUrlEnv,
}

/// The store holding shared state: `store`, or one concern's store (`stores.NAME` over
/// `store`).
///
/// `Debug` never shows a password: the URL is redacted and `password` and
/// `sentinel_password` print as `***`. Log [`StoreConfig::redacted_url`], never `url`.
#[derive(Clone)]
pub struct StoreConfig {
    /// The store URL (`store.url`, default `memory://`; `REDIS_URL` overrides it; a concern's
    /// own `stores.NAME.url` overrides both for that concern). May hold a password: log
    /// [`StoreConfig::redacted_url`] instead.
    pub url: String,
    /// The kind of store the URL names.
    pub kind: StoreKind,
    /// Where the URL came from.
    pub url_source: UrlSource,
    /// The key namespace (`key_prefix`, default `fleetgate`).
    pub keyspace: Keyspace,
    /// Bound on every store call (`timeout_ms`, default 50 ms).
    pub timeout: Duration,
    /// Bound on establishing one connection (`store.connect_timeout_ms`, default 1000 ms).
    pub connect_timeout: Duration,
    /// Multiplexed connections per worker thread (`store.pool_size`, default 1, 1..=64).
    pub pool_size: usize,
    /// First delay between reconnection attempts (`store.reconnect_min_ms`, default 50 ms).
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts (`store.reconnect_max_ms`, default 500 ms,
    /// at least `reconnect_min`).
    pub reconnect_max: Duration,
    /// ACL user name (`store.username`), overriding the URL's; `None`: the URL's, if any.
    pub username: Option<String>,
    /// Password (`store.password`), overriding the URL's; `None`: the URL's, if any. A secret:
    /// never log it.
    pub password: Option<String>,
    /// ACL user name for the sentinels themselves (`store.sentinel_username`).
    pub sentinel_username: Option<String>,
    /// Password for the sentinels themselves (`store.sentinel_password`). A secret.
    pub sentinel_password: Option<String>,
    /// TLS files (`store.tls`); `Some` turns TLS on for `redis-sentinel://` and
    /// `redis-cluster://`, and sets the CA and client certificate for `rediss://`. Never set
    /// with `redis://` or `memory://` (refused by validation). Every file named was a readable
    /// PEM file when the configuration was validated.
    pub tls: Option<TlsFiles>,
    /// When to stop calling a failing store and how often to probe it (`store.breaker`).
    pub breaker: BreakerSettings,
    /// DANGEROUS: delete every key under the key prefix when the gateway starts
    /// (`store.flush_on_startup`, default `false`).
    pub flush_on_startup: bool,
    /// TTL for stored values that have no TTL of their own (`default_ttl_ms`, default 1 day).
    pub default_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let d = RedisOptions::default();
        StoreConfig {
            url: "memory://".to_string(),
            kind: StoreKind::Memory,
            url_source: UrlSource::Default,
            keyspace: default_keyspace(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(1000),
            pool_size: 1,
            reconnect_min: d.reconnect_min,
            reconnect_max: d.reconnect_max,
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            tls: None,
            breaker: BreakerSettings::default(),
            flush_on_startup: false,
            default_ttl: Duration::from_millis(DEFAULT_TTL_MS),
        }
    }
}

/// Prints the redacted URL and `***` for passwords.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |o: &Option<String>| o.as_ref().map(|_| "***");
        f.debug_struct("StoreConfig")
            .field("url", &self.redacted_url())
            .field("kind", &self.kind)
            .field("url_source", &self.url_source)
            .field("keyspace", &self.keyspace)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_size", &self.pool_size)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("username", &self.username)
            .field("password", &hide(&self.password))
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &hide(&self.sentinel_password))
            .field("tls", &self.tls)
            .field("breaker", &self.breaker)
            .field("flush_on_startup", &self.flush_on_startup)
            .field("default_ttl", &self.default_ttl)
            .finish()
    }
}

/// Field by field (`BreakerSettings` has no `PartialEq`: its fields are compared).
impl PartialEq for StoreConfig {
    fn eq(&self, other: &Self) -> bool {
        let breaker = |b: &BreakerSettings| (b.threshold, b.min_backoff, b.max_backoff);
        self.url == other.url
            && self.kind == other.kind
            && self.url_source == other.url_source
            && self.keyspace == other.keyspace
            && self.timeout == other.timeout
            && self.connect_timeout == other.connect_timeout
            && self.pool_size == other.pool_size
            && self.reconnect_min == other.reconnect_min
            && self.reconnect_max == other.reconnect_max
            && self.username == other.username
            && self.password == other.password
            && self.sentinel_username == other.sentinel_username
            && self.sentinel_password == other.sentinel_password
            && self.tls == other.tls
            && breaker(&self.breaker) == breaker(&other.breaker)
            && self.flush_on_startup == other.flush_on_startup
            && self.default_ttl == other.default_ttl
    }
}

impl Eq for StoreConfig {}

pub(crate) const DEFAULT_KEY_PREFIX: &str = "fleetgate";
pub(crate) const DEFAULT_TTL_MS: u64 = 86_400_000;

pub(crate) fn default_keyspace() -> Keyspace {
    Keyspace::new(DEFAULT_KEY_PREFIX).expect("the default key prefix is valid")
}

/// `url` with its password replaced by `***`: [`fleetgate_store::redis::url::redact`], then,
/// for URLs that it reads differently (a password holding `/` or `?`), everything before the
/// last `@` is taken as the user info. Hiding too much is preferred to showing a secret.
pub(crate) fn redact_url(url: &str) -> String {
    let shown = fleetgate_store::redis::url::redact(url);
    let Some((scheme, rest)) = shown.split_once("://") else {
        return shown;
    };
    let Some((userinfo, hosts)) = rest.rsplit_once('@') else {
        return shown;
    };
    match userinfo.split_once(':') {
        Some((user, pass)) if pass != "***" => format!("{scheme}://{user}:***@{hosts}"),
        _ => shown,
    }
}

impl StoreConfig {
    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Whether this is the in-process store.
    pub fn is_memory(&self) -> bool {
        self.kind == StoreKind::Memory
    }

    /// Connection options for the Redis driver: every field from this configuration.
    pub fn redis_options(&self) -> RedisOptions {
        RedisOptions {
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            pool_size: self.pool_size,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
            breaker: self.breaker,
            tls: self.tls.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            sentinel_username: self.sentinel_username.clone(),
            sentinel_password: self.sentinel_password.clone(),
        }
    }
}

/// The store of each concern (`stores`), each fully resolved: the concern's own `url`,
/// `key_prefix`, `timeout_ms` and `default_ttl_ms` when given, everything else (credentials,
/// TLS, breaker, pool and reconnect settings, `flush_on_startup`) from `store`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConcernStores {
    /// Rate and concurrency limits (`stores.rate_limits`).
    pub rate_limits: StoreConfig,
    /// Sessions (`stores.sessions`).
    pub sessions: StoreConfig,
    /// Replay markers and idempotency keys (`stores.markers`).
    pub markers: StoreConfig,
    /// Response cache and dedup (`stores.cache`).
    pub cache: StoreConfig,
    /// Live events (`stores.events`).
    pub events: StoreConfig,
}

impl ConcernStores {
    /// The concern names, as written under `stores`.
    pub const NAMES: [&'static str; 5] = ["rate_limits", "sessions", "markers", "cache", "events"];

    /// Every concern with its name, in [`ConcernStores::NAMES`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &StoreConfig)> {
        Self::NAMES.into_iter().zip([
            &self.rate_limits,
            &self.sessions,
            &self.markers,
            &self.cache,
            &self.events,
        ])
    }

    /// The concern called `name` (one of [`ConcernStores::NAMES`]).
    pub fn get(&self, name: &str) -> Option<&StoreConfig> {
        self.iter().find(|(n, _)| *n == name).map(|(_, s)| s)
    }
}

/// Limits and timeouts of the client-facing HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest request head (request line and headers) accepted; larger gets 431
    /// (`server.max_header_bytes`, default 16384, 1024..=1048576).
    pub max_header_bytes: usize,
    /// Largest request body accepted; larger gets 413 (`server.max_body_bytes`, default
    /// 10485760 = 10 MiB).
    pub max_body_bytes: u64,
    /// Bound on a whole request, upstream included (`server.request_timeout_ms`, default 30 s).
    pub request_timeout: Duration,
    /// How long an idle client keep-alive connection is kept (`server.idle_timeout_ms`,
    /// default 60 s).
    pub idle_timeout: Duration,
    /// Bound on draining in-flight requests at shutdown (`server.drain_timeout_ms`, default
    /// 10 s).
    pub drain_timeout: Duration,
    /// Longest wait for the next bytes of a client's request body (`server.body_idle_timeout`,
    /// default 60 s); past it the request is refused with 408 and its connection closed.
    pub body_idle_timeout: Duration,
    /// Longest time a write to a client may make no progress (`server.write_timeout`,
    /// default 60 s); past it the connection is closed.
    pub write_timeout: Duration,
    /// Open client connections per instance, all workers together (`server.max_connections`,
    /// default 10000); a connection beyond it is closed as soon as it is accepted.
    pub max_connections: usize,
}

/// Default of `server.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_header_bytes: 16384,
            max_body_bytes: 10 * 1024 * 1024,
            request_timeout: Duration::from_millis(30_000),
            idle_timeout: Duration::from_millis(60_000),
            drain_timeout: Duration::from_millis(10_000),
            body_idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// One upstream: a set of equivalent targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The upstream's name (its key under `upstreams`).
    pub name: String,
    /// Where requests go (`targets`, at least one).
    pub targets: Vec<Target>,
    /// Bound on connecting to a target (`connect_timeout_ms`, default 1000 ms).
    pub connect_timeout: Duration,
    /// Bound on waiting for the response headers (`request_timeout_ms`, default 30 s).
    pub request_timeout: Duration,
    /// How long a pooled idle connection is kept (`idle_timeout_ms`, default 90 s).
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of a response body (`body_idle_timeout`, default 60 s);
    /// past it the response to the client is cut off (never completed as if whole).
    pub body_idle_timeout: Duration,
    /// Longest time writing a request to a target may make no progress (`write_timeout`,
    /// default 60 s); past it the connection is closed.
    pub write_timeout: Duration,
    /// Active health checks (`health_check`); `None`: no active checks.
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection on connection failures (`passive`).
    pub passive: PassiveConfig,
}

/// One upstream target, `http://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host name or IP address, lowercase, without brackets.
    pub host: String,
    /// Port (80 when the URL gives none).
    pub port: u16,
    /// `host:port`, with IPv6 addresses in brackets: the value for the `Host` header and for
    /// connecting.
    pub authority: String,
}

impl Target {
    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// Active health checks of an upstream's targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Path requested with GET (`path`, starts with `/`); a 2xx answer is healthy.
    pub path: String,
    /// Time between checks of one target (`interval_ms`, default 5000 ms).
    pub interval: Duration,
    /// Bound on one check (`timeout_ms`, default 1000 ms).
    pub timeout: Duration,
    /// Consecutive failures that mark a target down (`unhealthy_threshold`, default 2).
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark a target up again (`healthy_threshold`, default 1).
    pub healthy_threshold: u32,
}

/// Passive ejection: a target failing to connect repeatedly is taken out for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Consecutive connection failures that eject a target (`failures`, default 3).
    pub failures: u32,
    /// How long an ejected target stays out (`eject_ms`, default 10000 ms).
    pub eject: Duration,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            failures: 3,
            eject: Duration::from_millis(10_000),
        }
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Unique name (`name`), used in metrics and store keys.
    pub name: String,
    /// Which requests this route takes (`match`); the default matches everything.
    pub matcher: RouteMatch,
    /// What answers: an upstream or a fixed response.
    pub target: RouteTarget,
    /// Whether `match.path_prefix` is removed from the path before proxying (`strip_prefix`,
    /// default `false`). Only allowed with a `path_prefix`.
    pub strip_prefix: bool,
    /// The route's rate limits, checked in order after the global ones (`rate_limits`).
    pub rate_limits: Vec<RateLimitConfig>,
    /// The route's concurrency limits (`concurrency_limits`).
    pub concurrency_limits: Vec<ConcurrencyLimitConfig>,
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
    pub fn upstream_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        let Some(prefix) = self.matcher.path_prefix.as_deref() else {
            return Cow::Borrowed(path);
        };
        if !self.strip_prefix {
            return Cow::Borrowed(path);
        }
        match path.strip_prefix(prefix.trim_end_matches('/')) {
            Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
            Some(rest) => Cow::Owned(format!("/{rest}")),
            None => Cow::Borrowed(path),
        }
    }
}

/// Which requests a route takes. Every given condition must hold; an empty match takes
/// every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// Path prefix, at a segment boundary: `/api` takes `/api`, `/api/` and `/api/x`, not
    /// `/apix`; a prefix ending in `/` takes paths starting with it; `/` takes every path.
    pub path_prefix: Option<String>,
    /// Exact host, lowercase, compared with the request's host without its port and case
    /// insensitively.
    pub host: Option<String>,
    /// Accepted methods, uppercase; empty: any method.
    pub methods: Vec<String>,
}

impl RouteMatch {
    /// Whether a request matches. `host` is the request's `Host` (or URI authority), with or
    /// without a port; `path` is the request path without the query.
    pub fn matches(&self, method: &str, host: Option<&str>, path: &str) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            if !strip_port(host).eq_ignore_ascii_case(want) {
                return false;
            }
        }
        if let Some(prefix) = &self.path_prefix {
            if !path_has_prefix(path, prefix) {
                return false;
            }
        }
        true
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
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: Option<&str>, strip: bool) -> RouteConfig {
        RouteConfig {
            name: "r".into(),
            matcher: RouteMatch {
                path_prefix: prefix.map(str::to_string),
                host: None,
                methods: Vec::new(),
            },
            target: RouteTarget::Upstream("u".into()),
            strip_prefix: strip,
            rate_limits: Vec::new(),
            concurrency_limits: Vec::new(),
        }
    }

    #[test]
    fn path_prefix_matches_at_segment_boundaries() {
        let m = |p: &str, path: &str| route(Some(p), false).matcher.matches("GET", None, path);
        assert!(m("/api", "/api"));
        assert!(m("/api", "/api/"));
        assert!(m("/api", "/api/x"));
        assert!(!m("/api", "/apix"));
        assert!(!m("/api", "/"));
        assert!(m("/api/", "/api/x"));
        assert!(!m("/api/", "/api"));
        assert!(m("/", "/anything"));
        assert!(route(None, false).matcher.matches("PUT", None, "/x"));
    }

    #[test]
    fn host_and_methods_match() {
        let m = RouteMatch {
            path_prefix: None,
            host: Some("api.example.com".into()),
            methods: vec!["GET".into(), "POST".into()],
        };
        assert!(m.matches("GET", Some("API.example.com:8080"), "/"));
        assert!(m.matches("POST", Some("api.example.com"), "/"));
        assert!(!m.matches("DELETE", Some("api.example.com"), "/"));
        assert!(!m.matches("GET", Some("other.example.com"), "/"));
        assert!(!m.matches("GET", None, "/"));
        let v6 = RouteMatch {
            host: Some("::1".into()),
            ..RouteMatch::default()
        };
        assert!(v6.matches("GET", Some("[::1]:80"), "/"));
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let r = route(Some("/api"), true);
        assert_eq!(r.upstream_path("/api"), "/");
        assert_eq!(r.upstream_path("/api/x/y"), "/x/y");
        assert_eq!(r.upstream_path("/api/x?q=1"), "/x?q=1");
        assert_eq!(r.upstream_path("/api?q=/a"), "/?q=/a");
        let r = route(Some("/api/"), true);
        assert_eq!(r.upstream_path("/api/x"), "/x");
        assert_eq!(route(Some("/api"), false).upstream_path("/api/x"), "/api/x");
    }

    #[test]
    fn redacted_urls_hide_passwords_however_written() {
        for (url, shown) in [
            ("redis://app:s3cret@h:6379/0", "redis://app:***@h:6379/0"),
            ("rediss://:s3cret@h", "rediss://:***@h"),
            ("redis://a:p@ss@h/0", "redis://a:***@h/0"),
            ("redis://a:se/cr?et@h/0", "redis://a:***@h/0"),
            (
                "redis-sentinel://u:pw@h1:1,h2:2?master=m",
                "redis-sentinel://u:***@h1:1,h2:2?master=m",
            ),
            ("redis://user@h", "redis://user@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("memory://", "memory://"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn trusted_proxies_include_mapped_v4() {
        let cfg = Config {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        assert!(cfg.is_trusted_proxy("10.1.2.3".parse().unwrap()));
        assert!(cfg.is_trusted_proxy("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!cfg.is_trusted_proxy("11.0.0.1".parse().unwrap()));
    }
}
