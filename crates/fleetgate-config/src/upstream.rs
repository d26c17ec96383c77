//! Upstreams (`upstreams`): where requests go, with their timeouts and health checks.

use crate::error::TARGETS_ACCEPTED;
use crate::fields::{int, millis, ms, nullable, refuse};
pub use crate::upstream_tls::{UpstreamProtocol, UpstreamTlsConfig};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// One upstream: a set of equivalent targets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The upstream's name (its key under `upstreams`).
    #[serde(skip)]
    pub name: String,
    /// Where requests go (`targets`, at least one).
    #[serde(deserialize_with = "targets")]
    pub targets: Vec<Target>,
    /// Bound on connecting to a target (`connect_timeout_ms`, default 1000 ms).
    #[serde(
        rename = "connect_timeout_ms",
        default = "millis::<1000>",
        deserialize_with = "ms::<_, 1000>"
    )]
    pub connect_timeout: Duration,
    /// Bound on waiting for the response headers (`request_timeout_ms`, default 30 s).
    #[serde(
        rename = "request_timeout_ms",
        default = "millis::<30_000>",
        deserialize_with = "ms::<_, 30_000>"
    )]
    pub request_timeout: Duration,
    /// How long a pooled idle connection is kept (`idle_timeout_ms`, default 90 s).
    #[serde(
        rename = "idle_timeout_ms",
        default = "millis::<90_000>",
        deserialize_with = "ms::<_, 90_000>"
    )]
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of a response body (`body_idle_timeout`, default 60 s);
    /// past it the response to the client is cut off (never completed as if whole).
    #[serde(default = "millis::<60_000>", deserialize_with = "crate::duration::dur::<_, 60_000>")]
    pub body_idle_timeout: Duration,
    /// Longest time writing a request to a target may make no progress (`write_timeout`,
    /// default 60 s); past it the connection is closed.
    #[serde(default = "millis::<60_000>", deserialize_with = "crate::duration::dur::<_, 60_000>")]
    pub write_timeout: Duration,
    /// Active health checks (`health_check`); `None`: no active checks.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection on connection failures (`passive`).
    #[serde(default, deserialize_with = "nullable")]
    pub passive: PassiveConfig,
    /// TLS to the `https://` targets (`tls`): CA file, client certificate, server name. The
    /// defaults (system roots, the target's host as the name) apply when it is left out.
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
    /// The HTTP version spoken to the targets (`protocol`, default `auto`).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How a target is chosen (`balance`: `round_robin` or `least_request`).
    #[serde(default, deserialize_with = "nullable")]
    pub balance: crate::upstream_policy::Balance,
    /// Cookie affinity to the target that answered first (`affinity`).
    #[serde(default)]
    pub affinity: Option<crate::upstream_policy::AffinityConfig>,
    /// Retries of idempotent requests on connect failures (`retries`).
    #[serde(default)]
    pub retries: Option<crate::upstream_policy::RetryConfig>,
    /// A fleet-wide pace for calls to this upstream (`throttle`): callers wait, not 429.
    #[serde(default)]
    pub throttle: Option<fleetgate_http::ThrottleConfig>,
    /// Fleet-wide circuit breakers, per target or per key (`breaker`).
    #[serde(default)]
    pub breaker: Option<fleetgate_http::BreakerConfig>,
    /// One login for the fleet, its credential injected into every request (`login`).
    #[serde(default)]
    pub login: Option<fleetgate_http::upstream_login::LoginConfig>,
}

/// One upstream target, `http://HOST:PORT` or `https://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Whether the target is `https://` (TLS, `upstreams.NAME.tls`).
    pub tls: bool,
    /// Host name or IP address, lowercase, without brackets.
    pub host: String,
    /// Port (80 for http, 443 for https when the URL gives none).
    pub port: u16,
    /// `host:port`, with IPv6 addresses in brackets: the value for the `Host` header and for
    /// connecting.
    pub authority: String,
}

impl Target {
    /// `http://host:port` or `https://host:port`.
    pub fn url(&self) -> String {
        self.to_string()
    }

    /// `http://HOST[:PORT][/]` or `https://...`; the message says why not.
    fn parse(text: &str) -> Result<Target, String> {
        let shown = crate::store_url::redact_url(text.trim());
        let t = shown.as_str();
        let Some((scheme, rest)) = t.split_once("://") else {
            return Err(format!("{t:?} is not a URL"));
        };
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            other => return Err(format!("{t:?}: scheme {other:?} is not supported")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(format!(
                "{t:?}: a target is only scheme, host and port, without path or query"
            ));
        }
        if authority.contains('@') {
            return Err(format!("{t:?}: user info in a target is not supported"));
        }
        let (host, port) = host_port(authority).map_err(|why| format!("{t:?}: {why}"))?;
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        let authority = match host.contains(':') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        };
        Ok(Target {
            tls,
            host,
            port,
            authority,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Target::parse(&String::deserialize(d)?).map_err(|why| refuse(format!("{why}; accepted: {TARGETS_ACCEPTED}")))
    }
}

fn targets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Target>, D::Error> {
    let targets = Vec::<Target>::deserialize(d)?;
    if targets.is_empty() {
        return Err(refuse(format!("no targets; accepted: {TARGETS_ACCEPTED}")));
    }
    Ok(targets)
}

/// `host[:port]`, `[v6][:port]`: the host lowercase, without brackets.
pub(crate) fn host_port(hp: &str) -> Result<(String, Option<u16>), String> {
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
        (h, port)
    } else {
        hp.rsplit_once(':').map_or((hp, None), |(h, p)| (h, Some(p)))
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
    let port = match port.map(|p| (p, p.parse::<u16>())) {
        None => None,
        Some((_, Ok(n))) if n > 0 => Some(n),
        Some((p, _)) => return Err(format!("port {p:?} is not a number from 1 to 65535")),
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Active health checks of an upstream's targets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path requested with GET (`path`, starts with `/`); a 2xx answer is healthy.
    #[serde(deserialize_with = "check_path")]
    pub path: String,
    /// Time between checks of one target (`interval_ms`, default 5000 ms).
    #[serde(
        rename = "interval_ms",
        default = "millis::<5000>",
        deserialize_with = "ms::<_, 5000>"
    )]
    pub interval: Duration,
    /// Bound on one check (`timeout_ms`, default 1000 ms).
    #[serde(
        rename = "timeout_ms",
        default = "millis::<1000>",
        deserialize_with = "ms::<_, 1000>"
    )]
    pub timeout: Duration,
    /// Consecutive failures that mark a target down (`unhealthy_threshold`, default 2).
    #[serde(default = "two", deserialize_with = "int::<_, 1, 1000, 2, _>")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark a target up again (`healthy_threshold`, default 1).
    #[serde(default = "one", deserialize_with = "int::<_, 1, 1000, 1, _>")]
    pub healthy_threshold: u32,
}

fn one() -> u32 {
    1
}

fn two() -> u32 {
    2
}

fn check_path<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let p = String::deserialize(d)?;
    if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse(format!(
            "{p:?} is not a path; accepted: a path starting with / and without spaces, e.g. /healthz"
        )));
    }
    Ok(p)
}

/// Passive ejection: a target failing to connect repeatedly is taken out for a while.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveConfig {
    /// Consecutive connection failures that eject a target (`failures`, default 3).
    #[serde(deserialize_with = "int::<_, 1, 1000, 3, _>")]
    pub failures: u32,
    /// How long an ejected target stays out (`eject_ms`, default 10000 ms).
    #[serde(rename = "eject_ms", deserialize_with = "ms::<_, 10_000>")]
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
