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

#[derive(Debug, Deserialize)]
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
