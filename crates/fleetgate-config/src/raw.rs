//! The file as written: serde types mirroring the YAML, with source locations on the values that
//! validation may refuse. Unknown fields are refused everywhere.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::fmt;
use std::marker::PhantomData;

/// A value with the place it was written.
pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub listen: Option<S<String>>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub log: Option<RawLog>,
    #[serde(default)]
    pub store: Option<RawStore>,
    #[serde(default)]
    pub stores: Option<RawStores>,
    #[serde(default)]
    pub server: Option<RawServer>,
    #[serde(default)]
    pub trusted_proxies: Option<Vec<S<String>>>,
    #[serde(default)]
    pub upstreams: Option<Entries<S<RawUpstream>>>,
    #[serde(default)]
    pub rate_limits: Option<Vec<S<RawRateLimit>>>,
    #[serde(default)]
    pub routes: Option<Vec<S<RawRoute>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    #[serde(default)]
    pub listen: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    #[serde(default)]
    pub level: Option<S<String>>,
    #[serde(default)]
    pub access_log: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    #[serde(default)]
    pub url: Option<S<String>>,
    #[serde(default)]
    pub key_prefix: Option<S<String>>,
    #[serde(default)]
    pub timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub connect_timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub pool_size: Option<S<i64>>,
    #[serde(default)]
    pub reconnect_min_ms: Option<S<i64>>,
    #[serde(default)]
    pub reconnect_max_ms: Option<S<i64>>,
    #[serde(default)]
    pub username: Option<S<String>>,
    #[serde(default)]
    pub password: Option<S<String>>,
    #[serde(default)]
    pub sentinel_username: Option<S<String>>,
    #[serde(default)]
    pub sentinel_password: Option<S<String>>,
    /// `tls:` with nothing after it is `Some` (TLS with the defaults), like `tls: {}`.
    #[serde(default, deserialize_with = "present")]
    pub tls: Option<S<Option<RawTls>>>,
    #[serde(default)]
    pub breaker: Option<RawBreaker>,
    #[serde(default)]
    pub flush_on_startup: Option<S<bool>>,
    #[serde(default)]
    pub default_ttl_ms: Option<S<i64>>,
}

/// Never shows the passwords (the URL and `password` fields hold secrets).
impl fmt::Debug for RawStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawStore")
            .field("url", &self.url.as_ref().map(|u| crate::model::redact_url(&u.value)))
            .field("key_prefix", &self.key_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &self.sentinel_password.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// A field that is `Some` whenever it is written, even as `field:` with no value (null).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    #[serde(default)]
    pub ca_file: Option<S<String>>,
    #[serde(default)]
    pub cert_file: Option<S<String>>,
    #[serde(default)]
    pub key_file: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    #[serde(default)]
    pub failures: Option<S<i64>>,
    #[serde(default)]
    pub min_backoff_ms: Option<S<i64>>,
    #[serde(default)]
    pub max_backoff_ms: Option<S<i64>>,
}

/// `stores`: per-concern overrides of `store`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStores {
    #[serde(default)]
    pub rate_limits: Option<RawConcernStore>,
    #[serde(default)]
    pub sessions: Option<RawConcernStore>,
    #[serde(default)]
    pub markers: Option<RawConcernStore>,
    #[serde(default)]
    pub cache: Option<RawConcernStore>,
    #[serde(default)]
    pub events: Option<RawConcernStore>,
}

/// One `stores.NAME` entry: what a concern may set for itself; the rest comes from `store`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConcernStore {
    #[serde(default)]
    pub url: Option<S<String>>,
    #[serde(default)]
    pub key_prefix: Option<S<String>>,
    #[serde(default)]
    pub timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub default_ttl_ms: Option<S<i64>>,
}

impl fmt::Debug for RawConcernStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawConcernStore")
            .field("url", &self.url.as_ref().map(|u| crate::model::redact_url(&u.value)))
            .field("key_prefix", &self.key_prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("default_ttl_ms", &self.default_ttl_ms)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    #[serde(default)]
    pub max_header_bytes: Option<S<i64>>,
    #[serde(default)]
    pub max_body_bytes: Option<S<i64>>,
    #[serde(default)]
    pub request_timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub idle_timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub drain_timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub body_idle_timeout: Option<S<String>>,
    #[serde(default)]
    pub write_timeout: Option<S<String>>,
    #[serde(default)]
    pub max_connections: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub targets: S<Vec<S<String>>>,
    #[serde(default)]
    pub connect_timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub request_timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub idle_timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub body_idle_timeout: Option<S<String>>,
    #[serde(default)]
    pub write_timeout: Option<S<String>>,
    #[serde(default)]
    pub health_check: Option<S<RawHealthCheck>>,
    #[serde(default)]
    pub passive: Option<RawPassive>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub path: S<String>,
    #[serde(default)]
    pub interval_ms: Option<S<i64>>,
    #[serde(default)]
    pub timeout_ms: Option<S<i64>>,
    #[serde(default)]
    pub unhealthy_threshold: Option<S<i64>>,
    #[serde(default)]
    pub healthy_threshold: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassive {
    #[serde(default)]
    pub failures: Option<S<i64>>,
    #[serde(default)]
    pub eject_ms: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: S<String>,
    #[serde(default, rename = "match")]
    pub matcher: Option<RawMatch>,
    #[serde(default)]
    pub upstream: Option<S<String>>,
    #[serde(default)]
    pub respond: Option<S<RawRespond>>,
    #[serde(default)]
    pub strip_prefix: Option<S<bool>>,
    #[serde(default)]
    pub rate_limits: Option<Vec<S<RawRateLimit>>>,
    #[serde(default)]
    pub concurrency_limits: Option<Vec<S<RawConcurrencyLimit>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    #[serde(default)]
    pub path_prefix: Option<S<String>>,
    #[serde(default)]
    pub host: Option<S<String>>,
    #[serde(default)]
    pub methods: Option<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    #[serde(default)]
    pub status: Option<S<i64>>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub headers: Option<Entries<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub name: S<String>,
    pub key: S<KeySpec>,
    pub rate: S<String>,
    #[serde(default)]
    pub burst: Option<S<i64>>,
    #[serde(default)]
    pub algorithm: Option<S<String>>,
    #[serde(default)]
    pub cost: Option<S<i64>>,
    #[serde(default)]
    pub on_store_error: Option<S<String>>,
    #[serde(default)]
    pub on_missing_key: Option<S<String>>,
    #[serde(default)]
    pub ipv6_prefix: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConcurrencyLimit {
    pub name: S<String>,
    pub key: S<KeySpec>,
    pub max: S<i64>,
    #[serde(default)]
    pub lease_ms: Option<S<i64>>,
    #[serde(default)]
    pub on_store_error: Option<S<String>>,
    #[serde(default)]
    pub on_missing_key: Option<S<String>>,
    #[serde(default)]
    pub ipv6_prefix: Option<S<i64>>,
}

/// A limit's `key`: one form or a list of forms. Items of a list keep their own location.
#[derive(Debug)]
pub(crate) struct KeySpec {
    pub items: Vec<(String, Option<Location>)>,
    pub was_list: bool,
}

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeySpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key form (ip, header:NAME, cookie:NAME, route, global) or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeySpec, E> {
                Ok(KeySpec {
                    items: vec![(v.to_string(), None)],
                    was_list: false,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeySpec, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<S<String>>()? {
                    items.push((item.value, Some(item.referenced)));
                }
                Ok(KeySpec { items, was_list: true })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A mapping with string keys, kept in file order (duplicates are refused by the parser).
#[derive(Debug)]
pub(crate) struct Entries<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Vis<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = Entries<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        deserializer.deserialize_map(Vis(PhantomData))
    }
}
