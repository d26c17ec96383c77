//! The store settings (`store`, `stores`): one [`StoreConfig`] type for the base store and for
//! each concern's, store URLs parsed once ([`StoreUrl`]) and redacted in one place
//! ([`redact_url`]).

use crate::error::{CERT_FILE_ACCEPTED, KEY_FILE_ACCEPTED, STORE_URL_ACCEPTED, USERNAME_ACCEPTED};
use crate::fields::{int, nullable, refuse, via, Ms, Prefix, TtlMs};
use fleetgate_store::{BreakerSettings, Keyspace, RedisOptions, TlsFiles};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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

    /// Whether a store of this kind can use `store.tls`.
    fn takes_tls(self) -> bool {
        !matches!(self, StoreKind::Memory | StoreKind::Redis)
    }

    fn no_tls_why(self) -> &'static str {
        if self == StoreKind::Memory {
            "is the in-process store, which has no connection to secure (for TLS, use a rediss:// URL)"
        } else {
            "is plain redis://, which never uses TLS (for TLS, use rediss:// instead)"
        }
    }
}

/// Where `store.url` came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UrlSource {
    /// Not given: the default `memory://`.
    #[default]
    Default,
    /// `store.url` in the file (after `${VAR}` substitution).
    File,
    /// The `REDIS_URL` environment variable, which overrides the file.
    RedisUrlEnv,
}

/// A checked store URL. Derefs to the URL as written (trimmed), which may hold a password;
/// `Display` and `Debug` show it redacted ([`redact_url`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreUrl {
    text: String,
    kind: StoreKind,
    source: UrlSource,
}

impl StoreUrl {
    /// Checks a store URL's shape; the message never shows a password.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let text = url.trim();
        let shown = redact_url(text);
        let bad = |why: &str| format!("{shown:?}{why}; accepted: {STORE_URL_ACCEPTED}");
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(bad(" is not a store URL"));
        };
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "memory" => StoreKind::Memory,
            "redis" => StoreKind::Redis,
            "rediss" => StoreKind::RedisTls,
            "redis-sentinel" => StoreKind::RedisSentinel,
            "redis-cluster" => StoreKind::RedisCluster,
            other => {
                let other = format!("{other}://");
                return Err(format!(
                    "unknown store URL scheme {other:?} in {shown:?}; accepted: {STORE_URL_ACCEPTED}"
                ));
            }
        };
        let url = StoreUrl {
            text: text.to_string(),
            kind,
            source: UrlSource::File,
        };
        if kind == StoreKind::Memory {
            return match rest.is_empty() {
                true => Ok(url),
                false => Err(bad(": the in-process store takes nothing after memory://")),
            };
        }
        let bad = |why: &str| bad(&format!(": {why}"));
        let (before_query, query) = rest.split_once('?').map_or((rest, None), |(b, q)| (b, Some(q)));
        let (authority, db) = before_query
            .split_once('/')
            .map_or((before_query, None), |(a, d)| (a, Some(d)));
        if before_query[authority.len()..].contains('@') || query.is_some_and(|q| q.contains('@')) {
            return Err(bad(
                "a '@' after the host: a password holding '/' or '?' must be percent-encoded (%2F, %3F), or set it in the `password` field instead",
            ));
        }
        let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if hosts.is_empty() {
            return Err(bad("no host"));
        }
        if hosts.contains(',') && matches!(kind, StoreKind::Redis | StoreKind::RedisTls) {
            return Err(bad(
                "redis:// and rediss:// take one host; use redis-sentinel:// or redis-cluster:// for several",
            ));
        }
        for h in hosts.split(',') {
            crate::upstream::host_port(h).map_err(|why| bad(&why))?;
        }
        if let Some(db) = db.filter(|d| !d.is_empty()) {
            if db.parse::<u16>().is_err() {
                return Err(bad("the database after '/' must be a number, e.g. /0"));
            }
            if kind == StoreKind::RedisCluster {
                return Err(bad("Redis Cluster has no database numbers"));
            }
        }
        let has_master = query.is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.strip_prefix("master=").is_some_and(|m| !m.is_empty()))
        });
        if kind == StoreKind::RedisSentinel && !has_master {
            return Err(bad("redis-sentinel:// needs ?master=NAME"));
        }
        Ok(url)
    }

    /// Where the URL came from.
    pub fn source(&self) -> UrlSource {
        self.source
    }

    /// The kind of store the URL names.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The URL as written; may hold a password.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Default for StoreUrl {
    fn default() -> Self {
        StoreUrl {
            text: "memory://".to_string(),
            kind: StoreKind::Memory,
            source: UrlSource::Default,
        }
    }
}

impl std::ops::Deref for StoreUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl PartialEq<str> for StoreUrl {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for StoreUrl {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.text))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.text), f)
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(url) => StoreUrl::parse(&url).map_err(refuse),
            None => Ok(StoreUrl::default()),
        }
    }
}

/// `text` with the password of every `scheme://user:password@host` URL in it replaced by
/// `***`: URLs alone, and lines of the file in error snippets. The user info is taken to run up
/// to the last `@` (a password may hold `@`, `/`, `,`, `]`, spaces...): hiding too much is
/// preferred to showing a secret.
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let tail = &rest[i + 3..];
        out.push_str(&rest[..i + 3]);
        rest = match tail.rfind('@') {
            Some(at) => {
                match tail[..at].split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:***@")),
                    None => out.push_str(&tail[..=at]),
                }
                &tail[at + 1..]
            }
            None => tail,
        };
    }
    out.push_str(rest);
    out
}

/// The store holding shared state: `store`, or one concern's store (`stores.NAME` over
/// `store`).
///
/// `Debug` never shows a password: the URL is redacted and `password` and
/// `sentinel_password` print as `***`. Log [`StoreConfig::redacted_url`], never `url`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The store URL (`store.url`, default `memory://`; `REDIS_URL` overrides it; a concern's
    /// own `stores.NAME.url` overrides both for that concern). May hold a password: log
    /// [`StoreConfig::redacted_url`] instead.
    pub url: StoreUrl,
    /// The kind of store the URL names.
    #[serde(skip)]
    pub kind: StoreKind,
    /// Where the URL came from.
    #[serde(skip)]
    pub url_source: UrlSource,
    /// The key namespace (`key_prefix`, default `fleetgate`).
    #[serde(rename = "key_prefix", deserialize_with = "via::<_, Prefix, _>")]
    pub keyspace: Keyspace,
    /// Bound on every store call (`timeout_ms`, default 50 ms).
    #[serde(rename = "timeout_ms", deserialize_with = "via::<_, Ms, _>")]
    pub timeout: Duration,
    /// Bound on establishing one connection (`store.connect_timeout_ms`, default 1000 ms).
    #[serde(rename = "connect_timeout_ms", deserialize_with = "via::<_, Ms, _>")]
    pub connect_timeout: Duration,
    /// Multiplexed connections per worker thread (`store.pool_size`, default 1, 1..=64).
    #[serde(deserialize_with = "int::<_, 1, 64, _>")]
    pub pool_size: usize,
    /// First delay between reconnection attempts (`store.reconnect_min_ms`, default 50 ms).
    #[serde(rename = "reconnect_min_ms", deserialize_with = "via::<_, Ms, _>")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts (`store.reconnect_max_ms`, default 500 ms,
    /// at least `reconnect_min`).
    #[serde(rename = "reconnect_max_ms", deserialize_with = "via::<_, Ms, _>")]
    pub reconnect_max: Duration,
    /// ACL user name (`store.username`), overriding the URL's; `None`: the URL's, if any.
    #[serde(deserialize_with = "user_name")]
    pub username: Option<String>,
    /// Password (`store.password`), overriding the URL's; `None`: the URL's, if any. A secret:
    /// never log it.
    #[serde(deserialize_with = "secret")]
    pub password: Option<String>,
    /// ACL user name for the sentinels themselves (`store.sentinel_username`).
    #[serde(deserialize_with = "user_name")]
    pub sentinel_username: Option<String>,
    /// Password for the sentinels themselves (`store.sentinel_password`). A secret.
    #[serde(deserialize_with = "secret")]
    pub sentinel_password: Option<String>,
    /// TLS files (`store.tls`); `Some` turns TLS on for `redis-sentinel://` and
    /// `redis-cluster://`, and sets the CA and client certificate for `rediss://`. Never set
    /// with `redis://` or `memory://` (refused by validation). Every file named was a readable
    /// PEM file when the configuration was validated. `tls:` alone is `tls: {}`.
    #[serde(deserialize_with = "tls")]
    pub tls: Option<TlsFiles>,
    /// When to stop calling a failing store and how often to probe it (`store.breaker`).
    #[serde(deserialize_with = "breaker")]
    pub breaker: BreakerSettings,
    /// DANGEROUS: delete every key under the key prefix when the gateway starts
    /// (`store.flush_on_startup`, default `false`).
    pub flush_on_startup: bool,
    /// TTL for stored values that have no TTL of their own (`default_ttl_ms`, default 1 day).
    #[serde(rename = "default_ttl_ms", deserialize_with = "via::<_, TtlMs, _>")]
    pub default_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let d = RedisOptions::default();
        StoreConfig {
            url: StoreUrl::default(),
            kind: StoreKind::Memory,
            url_source: UrlSource::Default,
            keyspace: Keyspace::new("fleetgate").expect("the default key prefix is valid"),
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
            default_ttl: Duration::from_secs(86_400),
        }
    }
}

/// Prints the redacted URL and `***` for passwords.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hide = |o: &Option<String>| o.as_ref().map(|_| "***");
        f.debug_struct("StoreConfig")
            .field("url", &self.url)
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
    fn eq(&self, o: &Self) -> bool {
        let breaker = |b: &BreakerSettings| (b.threshold, b.min_backoff, b.max_backoff);
        let connection = |s: &Self| {
            (
                s.timeout,
                s.connect_timeout,
                s.pool_size,
                s.reconnect_min,
                s.reconnect_max,
            )
        };
        let credentials = |s: &Self| {
            (
                s.username.clone(),
                s.password.clone(),
                s.sentinel_username.clone(),
                s.sentinel_password.clone(),
            )
        };
        (&self.url, self.kind, self.url_source, &self.keyspace) == (&o.url, o.kind, o.url_source, &o.keyspace)
            && connection(self) == connection(o)
            && credentials(self) == credentials(o)
            && (&self.tls, breaker(&self.breaker)) == (&o.tls, breaker(&o.breaker))
            && (self.flush_on_startup, self.default_ttl) == (o.flush_on_startup, o.default_ttl)
    }
}

impl Eq for StoreConfig {}

impl StoreConfig {
    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        self.url.to_string()
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

/// A user name; empty (e.g. `${REDIS_USER:-}` with the variable unset) is not set.
fn user_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = Option::<String>::deserialize(d)?.filter(|n| !n.is_empty());
    if let Some(n) = name
        .as_ref()
        .filter(|n| n.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(refuse(format!(
            "user name {n:?} holds spaces or control characters; accepted: {USERNAME_ACCEPTED}"
        )));
    }
    Ok(name)
}

/// A password, taken as written; empty is not set. Never echoed in a message.
fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Breaker {
    #[serde(deserialize_with = "int::<_, 1, 1000, _>")]
    failures: u32,
    #[serde(deserialize_with = "via::<_, Ms, _>")]
    min_backoff_ms: Duration,
    #[serde(deserialize_with = "via::<_, Ms, _>")]
    max_backoff_ms: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        let d = BreakerSettings::default();
        Breaker {
            failures: d.threshold,
            min_backoff_ms: d.min_backoff,
            max_backoff_ms: d.max_backoff,
        }
    }
}

/// `store.breaker` (the order of its backoffs is checked with the file's places).
fn breaker<'de, D: Deserializer<'de>>(d: D) -> Result<BreakerSettings, D::Error> {
    let b: Breaker = nullable(d)?;
    Ok(BreakerSettings {
        threshold: b.failures,
        min_backoff: b.min_backoff_ms,
        max_backoff: b.max_backoff_ms,
    })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Tls {
    #[serde(deserialize_with = "certificate")]
    ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "certificate")]
    cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "private_key")]
    key_file: Option<PathBuf>,
}

/// `store.tls`: written (even empty) turns TLS on; a client certificate comes with its key.
fn tls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TlsFiles>, D::Error> {
    let t: Tls = nullable(d)?;
    let pair = "accepted: both cert_file and key_file (a client certificate and its private key), or neither";
    let mark = fleetgate_http::key::FIELD_MARK;
    match (&t.cert_file, &t.key_file) {
        (Some(_), None) => Err(serde::de::Error::custom(format!(
            "{mark}.cert_file{mark}cert_file is set without key_file; {pair}"
        ))),
        (None, Some(_)) => Err(serde::de::Error::custom(format!(
            "{mark}.key_file{mark}key_file is set without cert_file; {pair}"
        ))),
        _ => Ok(Some(TlsFiles {
            ca_file: t.ca_file,
            cert_file: t.cert_file,
            key_file: t.key_file,
        })),
    }
}

fn certificate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    pem_file(&String::deserialize(d)?, true).map(Some).map_err(refuse)
}

fn private_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    pem_file(&String::deserialize(d)?, false).map(Some).map_err(refuse)
}

/// Largest TLS file read, in bytes (a CA bundle is a few hundred KiB).
const PEM_MAX_BYTES: u64 = 4 << 20;

/// A readable PEM file holding a certificate (or a private key). The file's contents never
/// appear in a message.
fn pem_file(name: &str, certificate: bool) -> Result<PathBuf, String> {
    use std::io::Read;
    let accepted = if certificate {
        CERT_FILE_ACCEPTED
    } else {
        KEY_FILE_ACCEPTED
    };
    let bad = |why: String| format!("{why}; accepted: {accepted}");
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
    let found = begins.iter().any(|l| match certificate {
        true => *l == "-----BEGIN CERTIFICATE-----" || *l == "-----BEGIN TRUSTED CERTIFICATE-----",
        false => l.ends_with("PRIVATE KEY-----"),
    });
    if !found {
        let what = if certificate {
            "no certificate"
        } else {
            "no private key"
        };
        return Err(bad(format!("file {name:?} holds {what}")));
    }
    Ok(file)
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

/// `stores` as written: what each concern sets for itself.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConcernOverrides {
    rate_limits: Option<ConcernStore>,
    sessions: Option<ConcernStore>,
    markers: Option<ConcernStore>,
    cache: Option<ConcernStore>,
    events: Option<ConcernStore>,
}

/// One `stores.NAME` entry: what a concern may set for itself; the rest comes from `store`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConcernStore {
    url: Option<StoreUrl>,
    key_prefix: Option<Prefix>,
    timeout_ms: Option<Ms>,
    default_ttl_ms: Option<TtlMs>,
}

/// Why the stores were refused: (path, path to locate, message, point at the key).
pub(crate) type StoreError = (String, String, String, bool);

/// The one resolution step: `REDIS_URL` over `store.url`, then each concern over `store`;
/// store URLs are checked against `store.tls`.
pub(crate) fn resolve(
    mut base: StoreConfig,
    written: ConcernOverrides,
    redis_url: Option<&str>,
) -> Result<(StoreConfig, ConcernStores), StoreError> {
    let err = |path: &str, message: String| (path.to_string(), path.to_string(), message, false);
    base.url_source = base.url.source;
    if let Some(env) = redis_url {
        base.url = StoreUrl::parse(env).map_err(|why| {
            let why = format!("(from the REDIS_URL environment variable, which overrides the file) {why}");
            ("store.url".to_string(), String::new(), why, false)
        })?;
        base.url.source = UrlSource::RedisUrlEnv;
        base.url_source = UrlSource::RedisUrlEnv;
    }
    base.kind = base.url.kind();
    if base.tls.is_some() && !base.kind.takes_tls() {
        let (shown, why) = (&base.url, base.kind.no_tls_why());
        let accepted = "accepted: a rediss:// URL (e.g. rediss://host:6380), redis-sentinel:// or redis-cluster:// (store.tls turns TLS on for them), or no store.tls";
        if base.url_source == UrlSource::File {
            // The URL in the file: blame it, it is what needs changing.
            return Err(err(
                "store.url",
                format!("{shown:?} {why}, but store.tls is set; {accepted}"),
            ));
        }
        let from = match base.url_source {
            UrlSource::RedisUrlEnv => " (from the REDIS_URL environment variable)",
            _ => " (the default: store.url is not set)",
        };
        let message = format!("store.tls is set, but the store URL {shown:?}{from} {why}; {accepted}");
        return Err(("store.tls".into(), "store.tls".into(), message, true));
    }
    let concern = |name: &str, written: Option<ConcernStore>| {
        let mut out = base.clone();
        let Some(w) = written else { return Ok(out) };
        if let Some(url) = w.url {
            (out.kind, out.url, out.url_source) = (url.kind(), url, UrlSource::File);
            if out.tls.is_some() && !out.kind.takes_tls() {
                return Err(err(
                    &format!("stores.{name}.url"),
                    format!(
                        "{:?} {}, but store.tls is set and applies to every concern; accepted: a rediss:// URL here (or redis-sentinel://, redis-cluster://), or no store.tls",
                        out.url,
                        out.kind.no_tls_why(),
                    ),
                ));
            }
        }
        out.keyspace = w.key_prefix.map_or(out.keyspace, Into::into);
        out.timeout = w.timeout_ms.map_or(out.timeout, Into::into);
        out.default_ttl = w.default_ttl_ms.map_or(out.default_ttl, Into::into);
        Ok(out)
    };
    let stores = ConcernStores {
        rate_limits: concern("rate_limits", written.rate_limits)?,
        sessions: concern("sessions", written.sessions)?,
        markers: concern("markers", written.markers)?,
        cache: concern("cache", written.cache)?,
        events: concern("events", written.events)?,
    };
    Ok((base, stores))
}
