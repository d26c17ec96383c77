//! The validated configuration: what the gateway consumes. Every value here has been checked;
//! defaults are filled in. Each section's type reads itself from the file (`Deserialize`); see
//! docs/configuration.md for the format.

use crate::fields::{flag, int, listen, millis, ms, nullable, proxies, refuse};
pub use crate::listener_tls::{CertificatePair, TlsListenerConfig};
pub use crate::rewrite::Rewrite;
pub use crate::route::{HeaderCondition, RouteConfig, RouteMatch, RouteTarget};
use crate::store::ConcernOverrides;
pub use crate::store::{ConcernStores, Secret, StoreConfig};
pub use crate::store_url::{redact_url, StoreKind, StoreUrl, UrlSource};
pub use crate::telemetry::{OtlpConfig, OtlpEndpoint, TelemetryConfig};
pub use crate::upstream::{
    HealthCheckConfig, PassiveConfig, Target, UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig,
};
pub use crate::upstream_policy::{AffinityConfig, Balance, RetryConfig};
pub use fleetgate_http::ratelimit::LimitMode;
pub use fleetgate_http::{ConcurrencyLimitConfig, FailurePolicy, KeyPart, MissingKey, RateLimitConfig};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The whole gateway configuration, read from the file's top level as written (unknown fields
/// refused); validation then fills in what is resolved (`stores`, upstream names) and checks
/// what spans fields or sections.
///
/// A top-level section is one field here, marked `#[serde(default, deserialize_with =
/// "nullable")]` (a value resolved from others: `#[serde(skip)]`, filled in validate.rs).
/// Fields are declared in the file's documented order: unknown-field errors list them so.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on (`listen`, default `127.0.0.1:8080`).
    #[serde(default = "default_listen", deserialize_with = "listen::<_, 8080>")]
    pub listen: SocketAddr,
    /// TLS termination (`tls`): a second listener speaking HTTP/1.1 and HTTP/2 (by ALPN) over
    /// TLS; `None` when the section is left out.
    #[serde(default)]
    pub tls: Option<TlsListenerConfig>,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`).
    #[serde(default, deserialize_with = "nullable")]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default, deserialize_with = "nullable")]
    pub log: LogConfig,
    /// Live events (`events`).
    #[serde(default, deserialize_with = "nullable")]
    pub events: EventsConfig,
    /// The store holding shared state (`store`). `REDIS_URL` overrides its URL.
    #[serde(default, deserialize_with = "nullable")]
    pub store: StoreConfig,
    /// `stores` as written: what each concern sets for itself; validation resolves it into
    /// `stores` (and leaves it empty). Not public, so callers outside the crate cannot build a
    /// `Config` field by field: they read one, or take [`Config::default`].
    #[serde(rename = "stores", default, deserialize_with = "nullable")]
    pub(crate) store_overrides: ConcernOverrides,
    /// The store of each concern, fully resolved: `stores.NAME` over `store` (`stores`).
    #[serde(skip)]
    pub stores: ConcernStores,
    /// Limits and timeouts of the client-facing HTTP server.
    #[serde(default, deserialize_with = "nullable")]
    pub server: ServerConfig,
    /// Peers whose `X-Forwarded-For` is honoured (`trusted_proxies`, default none). Bare IPs
    /// become /32 or /128 networks; host bits are cleared.
    #[serde(default, deserialize_with = "proxies")]
    pub trusted_proxies: Vec<IpNet>,
    /// Upstreams by name (`upstreams`).
    #[serde(default, deserialize_with = "nullable")]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Limits applied to every route, before the route's own (top-level `rate_limits`).
    #[serde(rename = "rate_limits", default, deserialize_with = "nullable")]
    pub global_rate_limits: Vec<RateLimitConfig>,
    /// Routes in file order; the first that matches a request wins.
    #[serde(default, deserialize_with = "nullable")]
    pub routes: Vec<RouteConfig>,
    /// Trace export (`telemetry`).
    #[serde(default, deserialize_with = "nullable")]
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    /// The configuration of an empty file: every default, no upstream, no route. Read from an
    /// empty mapping, so that each field's default is written once, on the field.
    fn default() -> Self {
        let empty =
            serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(std::iter::empty::<(&str, ())>());
        Config::deserialize(empty).expect("every top-level field has a default")
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener (`admin.listen`, default `127.0.0.1:9090`).
    #[serde(deserialize_with = "listen::<_, 9090>")]
    pub listen: SocketAddr,
    /// `admin.token`: when set, every admin path but `/healthz` and `/readyz` needs
    /// `Authorization: Bearer TOKEN` (or the dashboard's cookie). Empty means unset. Never
    /// printed (`Debug` shows `***`).
    #[serde(deserialize_with = "crate::store::secret")]
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            token: None,
        }
    }
}

/// Live events (`events`): every completed request becomes one event, published fleet-wide
/// through the store (`GET /events`, `GET /dashboard`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Whether events are made and published (`events.enabled`, default `true`).
    #[serde(deserialize_with = "flag::<_, true>")]
    pub enabled: bool,
    /// Events waiting to be published, at most (`events.buffer`, default 8192); beyond it
    /// they are dropped and counted, never waited for.
    #[serde(deserialize_with = "int::<_, 16, 1048576, 8192, _>")]
    pub buffer: usize,
    /// Most events written to the store in one batch (`events.batch`, default 256).
    #[serde(deserialize_with = "int::<_, 1, 10000, 256, _>")]
    pub batch: usize,
    /// About how many events the fleet's stream keeps for subscribers resuming after a
    /// disconnect (`events.stream_max_len`, default 100000).
    #[serde(deserialize_with = "int::<_, 100, 100000000, 100000, _>")]
    pub stream_max_len: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            buffer: 8192,
            batch: 256,
            stream_max_len: 100_000,
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Minimum level (`log.level`, default `info`). `RUST_LOG`, when set, overrides it at run
    /// time.
    pub level: LogLevel,
    /// How each completed request is logged (`log.access_log`, default `text`): `text` (or
    /// `true`), `json` (one JSON object per line), `off` (or `false`).
    pub access_log: AccessLog,
}

/// The access log's form (`log.access_log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// One line per request through the text logger (target `fleetgate::access`).
    #[default]
    Text,
    /// One JSON object per line on standard output, written when the response is over.
    Json,
}

impl AccessLog {
    /// The accepted spellings, for error messages.
    pub const ACCEPTED: &'static str = "text, json, off (true is text, false is off)";

    /// Whether requests are logged at all.
    pub fn is_on(self) -> bool {
        self != AccessLog::Off
    }
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Form;
        impl<'de> serde::de::Visitor<'de> for Form {
            type Value = AccessLog;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(AccessLog::ACCEPTED)
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<AccessLog, E> {
                Ok(if on { AccessLog::Text } else { AccessLog::Off })
            }
            fn visit_str<E: serde::de::Error>(self, w: &str) -> Result<AccessLog, E> {
                match w.trim().to_ascii_lowercase().as_str() {
                    "text" | "true" => Ok(AccessLog::Text),
                    "json" => Ok(AccessLog::Json),
                    "off" | "false" => Ok(AccessLog::Off),
                    _ => Err(refuse(format!(
                        "unknown access log form {w:?}; accepted: {}",
                        AccessLog::ACCEPTED
                    ))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<AccessLog, E> {
                Err(refuse(format!(
                    "{n} is not an access log form; accepted: {}",
                    AccessLog::ACCEPTED
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<AccessLog, E> {
                Err(refuse(format!(
                    "{n} is not an access log form; accepted: {}",
                    AccessLog::ACCEPTED
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<AccessLog, E> {
                Err(refuse(format!(
                    "{n} is not an access log form; accepted: {}",
                    AccessLog::ACCEPTED
                )))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<AccessLog, E> {
                Ok(AccessLog::Text)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<AccessLog, E> {
                Ok(AccessLog::Text)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<AccessLog, D::Error> {
                d.deserialize_any(Form)
            }
        }
        d.deserialize_option(Form)
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            access_log: AccessLog::Text,
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

    fn parse(s: &str) -> Option<Self> {
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

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Some(level) = Option::<String>::deserialize(d)? else {
            return Ok(LogLevel::Info);
        };
        LogLevel::parse(level.trim())
            .ok_or_else(|| refuse(format!("unknown level {level:?}; accepted: {}", LogLevel::ACCEPTED)))
    }
}

/// Limits and timeouts of the client-facing HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Largest request head (request line and headers) accepted; larger gets 431
    /// (`server.max_header_bytes`, default 16384, 1024..=1048576).
    #[serde(deserialize_with = "int::<_, 1024, 1_048_576, 16384, _>")]
    pub max_header_bytes: usize,
    /// Largest request body accepted; larger gets 413 (`server.max_body_bytes`, default
    /// 10485760 = 10 MiB).
    #[serde(deserialize_with = "int::<_, 0, { i64::MAX }, 10_485_760, _>")]
    pub max_body_bytes: u64,
    /// Bound on a whole request, upstream included (`server.request_timeout_ms`, default 30 s).
    #[serde(rename = "request_timeout_ms", deserialize_with = "ms::<_, 30_000>")]
    pub request_timeout: Duration,
    /// How long an idle client keep-alive connection is kept (`server.idle_timeout_ms`,
    /// default 60 s).
    #[serde(rename = "idle_timeout_ms", deserialize_with = "ms::<_, 60_000>")]
    pub idle_timeout: Duration,
    /// Bound on draining in-flight requests at shutdown (`server.drain_timeout_ms`, default
    /// 10 s).
    #[serde(rename = "drain_timeout_ms", deserialize_with = "ms::<_, 10_000>")]
    pub drain_timeout: Duration,
    /// Longest wait for the next bytes of a client's request body (`server.body_idle_timeout`,
    /// default 60 s); past it the request is refused with 408 and its connection closed.
    #[serde(deserialize_with = "crate::duration::dur::<_, 60_000>")]
    pub body_idle_timeout: Duration,
    /// Longest time a write to a client may make no progress (`server.write_timeout`,
    /// default 60 s); past it the connection is closed.
    #[serde(deserialize_with = "crate::duration::dur::<_, 60_000>")]
    pub write_timeout: Duration,
    /// Open client connections per instance, all workers together (`server.max_connections`,
    /// default 10000); a connection beyond it is closed as soon as it is accepted.
    #[serde(deserialize_with = "int::<_, 1, 1_000_000, 10_000, _>")]
    pub max_connections: usize,
}

/// Default of `server.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_header_bytes: 16384,
            max_body_bytes: 10 * 1024 * 1024,
            request_timeout: millis::<30_000>(),
            idle_timeout: millis::<60_000>(),
            drain_timeout: millis::<10_000>(),
            body_idle_timeout: millis::<60_000>(),
            write_timeout: millis::<60_000>(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}
