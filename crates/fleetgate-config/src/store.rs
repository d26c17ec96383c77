//! The store settings (`store`, `stores`): one [`StoreConfig`] type for the base store and for
//! each concern's, resolved in one step ([`resolve`]).

use crate::error::USERNAME_ACCEPTED;
use crate::fields::{flag, int, key_prefix, ms, nullable, refuse, ttl, Ms, Prefix, TtlMs};
use crate::store_url::{StoreKind, StoreUrl, UrlSource};
use crate::validate::{invalid, Invalid};
use fleetgate_store::{BreakerSettings, Keyspace, RedisOptions, TlsFiles, WaitReplicas};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// The store holding shared state: `store`, or one concern's store (`stores.NAME` over
/// `store`).
///
/// `Debug` never shows a password: the URL is redacted and `password` and
/// `sentinel_password` print as `***`. Log [`StoreConfig::redacted_url`], never `url`.
#[derive(Clone, Debug, Deserialize)]
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
    #[serde(rename = "key_prefix", deserialize_with = "key_prefix")]
    pub keyspace: Keyspace,
    /// Bound on every store call (`timeout_ms`, default 50 ms).
    #[serde(rename = "timeout_ms", deserialize_with = "ms::<_, 50>")]
    pub timeout: Duration,
    /// Bound on establishing one connection (`store.connect_timeout_ms`, default 1000 ms).
    #[serde(rename = "connect_timeout_ms", deserialize_with = "ms::<_, 1000>")]
    pub connect_timeout: Duration,
    /// Multiplexed connections per worker thread (`store.pool_size`, default 1, 1..=64).
    #[serde(deserialize_with = "int::<_, 1, 64, 1, _>")]
    pub pool_size: usize,
    /// First delay between reconnection attempts (`store.reconnect_min_ms`, default 50 ms).
    #[serde(rename = "reconnect_min_ms", deserialize_with = "ms::<_, 50>")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts (`store.reconnect_max_ms`, default 500 ms,
    /// at least `reconnect_min`).
    #[serde(rename = "reconnect_max_ms", deserialize_with = "ms::<_, 500>")]
    pub reconnect_max: Duration,
    /// ACL user name (`store.username`), overriding the URL's; `None`: the URL's, if any.
    #[serde(deserialize_with = "user_name")]
    pub username: Option<String>,
    /// Password (`store.password`), overriding the URL's; `None`: the URL's, if any. A secret:
    /// never log it.
    #[serde(deserialize_with = "secret")]
    pub password: Option<Secret>,
    /// ACL user name for the sentinels themselves (`store.sentinel_username`).
    #[serde(deserialize_with = "user_name")]
    pub sentinel_username: Option<String>,
    /// Password for the sentinels themselves (`store.sentinel_password`). A secret.
    #[serde(deserialize_with = "secret")]
    pub sentinel_password: Option<Secret>,
    /// TLS files (`store.tls`); `Some` turns TLS on for `redis-sentinel://` and
    /// `redis-cluster://`, and sets the CA and client certificate for `rediss://`. Never set
    /// with `redis://` or `memory://` (refused by validation). Every file named was a readable
    /// PEM file when the configuration was validated. `tls:` alone is `tls: {}`.
    #[serde(deserialize_with = "crate::tls::tls")]
    pub tls: Option<TlsFiles>,
    /// When to stop calling a failing store and how often to probe it (`store.breaker`).
    #[serde(deserialize_with = "breaker")]
    pub breaker: BreakerSettings,
    /// DANGEROUS: delete every key under the key prefix when the gateway starts
    /// (`store.flush_on_startup`, default `false`).
    #[serde(deserialize_with = "flag::<_, false>")]
    pub flush_on_startup: bool,
    /// TTL for stored values that have no TTL of their own (`default_ttl_ms`, default 1 day).
    #[serde(rename = "default_ttl_ms", deserialize_with = "ttl::<_, 86_400_000>")]
    pub default_ttl: Duration,
    /// Wait for replicas to acknowledge every claim (`store.markers_wait_replicas`: `{
    /// replicas, timeout }`, default none). Redis, Sentinel and TLS Redis only.
    #[serde(deserialize_with = "wait_replicas")]
    pub markers_wait_replicas: Option<WaitReplicas>,
    /// Most rate decisions on one key sent in one call while an earlier call on that key is in
    /// flight (`store.rate_batch_max`, default 64, 1..=1024; 1: every decision its own call).
    #[serde(deserialize_with = "int::<_, 1, 1024, 64, _>")]
    pub rate_batch_max: usize,
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
            markers_wait_replicas: None,
            rate_batch_max: d.rate_batch_max,
        }
    }
}

/// Field by field. `BreakerSettings` has no `PartialEq`, and `Debug` shows every field but
/// the secrets (and the URL's password): equal `Debug` texts, URLs and secrets are equal configs.
impl PartialEq for StoreConfig {
    fn eq(&self, o: &Self) -> bool {
        let secrets = |s: &Self| {
            (
                s.url.as_str().to_string(),
                s.password.clone(),
                s.sentinel_password.clone(),
            )
        };
        secrets(self) == secrets(o) && format!("{self:?}") == format!("{o:?}")
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
            password: self.password.as_deref().map(str::to_string),
            sentinel_username: self.sentinel_username.clone(),
            sentinel_password: self.sentinel_password.as_deref().map(str::to_string),
            markers_wait_replicas: self.markers_wait_replicas,
            rate_batch_max: self.rate_batch_max,
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
pub(crate) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()).map(Secret))
}

/// A secret (a password) as written: derefs to the text; `Debug` shows `"***"`. A newtype
/// rather than a crate: the one need is that printing the configuration never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt("***", f)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Breaker {
    #[serde(deserialize_with = "int::<_, 1, 1000, 3, _>")]
    failures: u32,
    #[serde(deserialize_with = "ms::<_, 100>")]
    min_backoff_ms: Duration,
    #[serde(deserialize_with = "ms::<_, 1000>")]
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

/// `store.markers_wait_replicas` as the file writes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenWait {
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default)]
    timeout: Option<String>,
}

/// `store.markers_wait_replicas`: `{ replicas: 1..=16 (default 1), timeout: 1ms..=5s (default
/// 10ms) }`; null: no wait.
fn wait_replicas<'de, D: Deserializer<'de>>(d: D) -> Result<Option<WaitReplicas>, D::Error> {
    let Some(w) = Option::<WrittenWait>::deserialize(d)? else {
        return Ok(None);
    };
    let replicas = match w.replicas.unwrap_or(1) {
        n @ 1..=16 => n as u32,
        n => {
            return Err(refuse(format!(
                "replicas: {n} is out of range; accepted: 1 to 16 replicas that must acknowledge each claim"
            )))
        }
    };
    let timeout = match w.timeout.as_deref() {
        None => Duration::from_millis(10),
        Some(t) => {
            let text = t.trim();
            let parsed = if let Some(n) = text.strip_suffix("ms") {
                n.parse::<u64>().ok().map(Duration::from_millis)
            } else {
                text.strip_suffix('s')
                    .and_then(|n| n.parse::<u64>().ok())
                    .map(Duration::from_secs)
            };
            match parsed {
                Some(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(5) => d,
                _ => {
                    return Err(refuse(format!(
                    "timeout: {t:?} is not accepted; accepted: 1ms to 5s, e.g. 10ms (0, waiting forever, is refused)"
                )))
                }
            }
        }
    };
    Ok(Some(WaitReplicas { replicas, timeout }))
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
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConcernOverrides {
    rate_limits: Option<ConcernStore>,
    sessions: Option<ConcernStore>,
    markers: Option<ConcernStore>,
    cache: Option<ConcernStore>,
    events: Option<ConcernStore>,
}

/// One `stores.NAME` entry: what a concern may set for itself; the rest comes from `store`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConcernStore {
    url: Option<StoreUrl>,
    key_prefix: Option<Prefix>,
    timeout_ms: Option<Ms>,
    default_ttl_ms: Option<TtlMs>,
}

/// The one resolution step: `REDIS_URL` over `store.url`, then each concern over `store`;
/// store URLs are checked against `store.tls`.
pub(crate) fn resolve(
    mut base: StoreConfig,
    written: ConcernOverrides,
    redis_url: Option<&str>,
) -> Result<(StoreConfig, ConcernStores), Invalid> {
    base.url_source = base.url.source;
    if let Some(env) = redis_url {
        base.url = StoreUrl::parse(env).map_err(|why| {
            let why = format!("(from the REDIS_URL environment variable, which overrides the file) {why}");
            // Not in the file: no place to show.
            Invalid {
                at: String::new(),
                ..invalid("store.url", why)
            }
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
            return Err(invalid(
                "store.url",
                format!("{shown:?} {why}, but store.tls is set; {accepted}"),
            ));
        }
        let from = match base.url_source {
            UrlSource::RedisUrlEnv => " (from the REDIS_URL environment variable)",
            _ => " (the default: store.url is not set)",
        };
        let message = format!("store.tls is set, but the store URL {shown:?}{from} {why}; {accepted}");
        return Err(Invalid {
            at_key: true,
            ..invalid("store.tls", message)
        });
    }
    let no_wait = |kind: StoreKind| {
        match kind {
        StoreKind::Memory => Some("is the in-process store, which has no replicas"),
        StoreKind::RedisCluster => Some("is a Redis Cluster, where a claim's WAIT would only reach its own shard's replicas through the cluster client; use a primary with replicas (redis:// or redis-sentinel://)"),
        _ => None,
    }
    };
    if base.markers_wait_replicas.is_some() {
        if let Some(why) = no_wait(base.kind) {
            return Err(invalid(
                "store.markers_wait_replicas",
                format!("store.markers_wait_replicas is set, but the store {:?} {why}; accepted: a redis://, rediss:// or redis-sentinel:// store, or no markers_wait_replicas", base.url),
            ));
        }
    }
    let concern = |name: &str, written: Option<ConcernStore>| {
        let mut out = base.clone();
        let Some(w) = written else { return Ok(out) };
        if let Some(url) = w.url {
            (out.kind, out.url, out.url_source) = (url.kind(), url, UrlSource::File);
            if out.tls.is_some() && !out.kind.takes_tls() {
                return Err(invalid(
                    format!("stores.{name}.url"),
                    format!(
                        "{:?} {}, but store.tls is set and applies to every concern; accepted: a rediss:// URL here (or redis-sentinel://, redis-cluster://), or no store.tls",
                        out.url,
                        out.kind.no_tls_why(),
                    ),
                ));
            }
        }
        out.keyspace = w.key_prefix.map_or(out.keyspace, |p| p.0);
        out.timeout = w.timeout_ms.map_or(out.timeout, |m| m.0);
        out.default_ttl = w.default_ttl_ms.map_or(out.default_ttl, |m| m.0);
        Ok(out)
    };
    let stores = ConcernStores {
        rate_limits: concern("rate_limits", written.rate_limits)?,
        sessions: concern("sessions", written.sessions)?,
        markers: concern("markers", written.markers)?,
        cache: concern("cache", written.cache)?,
        events: concern("events", written.events)?,
    };
    if let (Some(_), Some(why)) = (stores.markers.markers_wait_replicas, no_wait(stores.markers.kind)) {
        return Err(invalid(
            "stores.markers.url",
            format!("store.markers_wait_replicas is set, but the markers' store {:?} {why}; accepted: a redis://, rediss:// or redis-sentinel:// store", stores.markers.url),
        ));
    }
    Ok((base, stores))
}
