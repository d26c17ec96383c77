//! Store URLs (`store.url`, `stores.NAME.url`, `REDIS_URL`): parsed once into a [`StoreUrl`],
//! and redacted in one place ([`redact_url`]).

use crate::error::STORE_URL_ACCEPTED;
use crate::fields::refuse;
use serde::{Deserialize, Deserializer};
use std::fmt;

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
    pub(crate) fn takes_tls(self) -> bool {
        !matches!(self, StoreKind::Memory | StoreKind::Redis)
    }

    pub(crate) fn no_tls_why(self) -> &'static str {
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
    pub(crate) source: UrlSource,
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
