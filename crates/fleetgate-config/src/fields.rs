//! The file's leaf values: newtypes that validate inside `Deserialize`, so that a refused value
//! is reported where it was written, and the functions that read them into the model's field
//! types, a value written null (`timeout_ms: ${T:-}` with T unset) being the field's default.
//!
//! Every refusal is marked with [`fleetgate_http::key::FIELD_MARK`] like the limit types'
//! (see [`crate::error`]): a marked message is a validation failure, not a syntax error.

use crate::error::{LISTEN_ACCEPTED, MS_ACCEPTED, TTL_ACCEPTED};
use fleetgate_http::key::{FIELD_MARK, NAME_ACCEPTED};
use fleetgate_store::Keyspace;
use ipnet::IpNet;
use serde::de::{Deserializer, Error};
use serde::Deserialize;
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A refusal of the value being read.
pub(crate) fn refuse<E: Error>(message: impl Display) -> E {
    refuse_at("", message)
}

/// A refusal of the field at `field` below the value being read (`.cert_file`, `[1]`).
pub(crate) fn refuse_at<E: Error>(field: &str, message: impl Display) -> E {
    E::custom(format_args!("{FIELD_MARK}{field}{FIELD_MARK}{message}"))
}

/// Stands for "what the field accepts" in a message; filled in from [`crate::error::accepted_at`]
/// once the field's path is known.
pub(crate) const ACCEPTED_HERE: &str = "\u{2}";

/// A section or list that may be written empty (`server:` with nothing after it).
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// A whole number of milliseconds, 1 ms to `MAX_DAYS` days: 7 for `*_ms` fields ([`Ms`]), 365
/// for TTLs ([`TtlMs`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Millis<const MAX_DAYS: i64>(pub Duration);

pub(crate) type Ms = Millis<7>;
pub(crate) type TtlMs = Millis<365>;

impl<'de, const MAX_DAYS: i64> Deserialize<'de> for Millis<MAX_DAYS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ms = i64::deserialize(d)?;
        if !(1..=MAX_DAYS * 24 * 3600 * 1000).contains(&ms) {
            let accepted = if MAX_DAYS == 7 { MS_ACCEPTED } else { TTL_ACCEPTED };
            return Err(refuse(format!("{ms} ms is out of range; accepted: {accepted}")));
        }
        Ok(Millis(Duration::from_millis(ms as u64)))
    }
}

/// A `*_ms` field (`DEFAULT` ms when written null, as when left out: `timeout_ms: ${T:-}`).
pub(crate) fn ms<'de, D: Deserializer<'de>, const DEFAULT: u64>(d: D) -> Result<Duration, D::Error> {
    Ok(Option::<Ms>::deserialize(d)?.map_or(millis::<DEFAULT>(), |m| m.0))
}

/// A TTL field (`DEFAULT` ms when written null).
pub(crate) fn ttl<'de, D: Deserializer<'de>, const DEFAULT: u64>(d: D) -> Result<Duration, D::Error> {
    Ok(Option::<TtlMs>::deserialize(d)?.map_or(millis::<DEFAULT>(), |m| m.0))
}

/// A whole number from `MIN` to `MAX` (`DEFAULT` when written null), converted to the field's
/// type.
pub(crate) fn int<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64, const DEFAULT: i64, T: TryFrom<i64>>(
    d: D,
) -> Result<T, D::Error> {
    let n = Option::<i64>::deserialize(d)?.unwrap_or(DEFAULT);
    (MIN..=MAX)
        .contains(&n)
        .then(|| T::try_from(n).ok())
        .flatten()
        .ok_or_else(|| refuse(format!("{n} is out of range; accepted: {ACCEPTED_HERE}")))
}

/// `IP:PORT`.
pub(crate) struct Listen(SocketAddr);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.trim().parse().map(Listen).map_err(|_| {
            let why = if s.trim().is_empty() {
                "an address is required".to_string()
            } else if !s.contains(':') {
                format!("{s:?} has no port")
            } else {
                format!("{s:?} is not an IP address and port (host names are not accepted)")
            };
            refuse(format!("{why}; accepted: {LISTEN_ACCEPTED}"))
        })
    }
}

/// A listen address (`127.0.0.1:PORT` when written null).
pub(crate) fn listen<'de, D: Deserializer<'de>, const PORT: u16>(d: D) -> Result<SocketAddr, D::Error> {
    let default = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, PORT));
    Ok(Option::<Listen>::deserialize(d)?.map_or(default, |l| l.0))
}

/// `true` or `false` (`DEFAULT` when written null).
pub(crate) fn flag<'de, D: Deserializer<'de>, const DEFAULT: bool>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(DEFAULT))
}

/// A key prefix (`key_prefix`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prefix(pub Keyspace);

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = String::deserialize(d)?;
        Keyspace::new(&p)
            .map(Prefix)
            .map_err(|_| refuse(format!("key prefix {p:?} is not accepted; accepted: {NAME_ACCEPTED}")))
    }
}

/// `key_prefix` (default `fleetgate`).
pub(crate) fn key_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Keyspace, D::Error> {
    Ok(match Option::<Prefix>::deserialize(d)? {
        Some(p) => p.0,
        None => Keyspace::new("fleetgate").expect("the default key prefix is valid"),
    })
}

/// A route's name: a valid store scope.
pub(crate) fn route_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    Keyspace::check_scope(&name).map_err(|_| {
        refuse(format!(
            "route name {name:?} is not accepted; accepted: {NAME_ACCEPTED}"
        ))
    })?;
    Ok(name)
}

/// A trusted proxy: a network, or one address (a /32 or /128); host bits are cleared.
pub(crate) struct Proxy(IpNet);

impl<'de> Deserialize<'de> for Proxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let text = s.trim();
        match (text.parse::<IpNet>(), text.parse::<IpAddr>()) {
            (Ok(net), _) => Ok(Proxy(net.trunc())),
            (_, Ok(ip)) => Ok(Proxy(IpNet::from(ip))),
            _ => Err(refuse(format!("{s:?} is not a CIDR or IP address; accepted: IPv4 or IPv6 addresses or networks, e.g. 127.0.0.1, 10.0.0.0/8, ::1, fd00::/8"))),
        }
    }
}

pub(crate) fn proxies<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let list: Vec<Proxy> = nullable(d)?;
    Ok(list.into_iter().map(|p| p.0).collect())
}

/// Defaults of duration fields, in milliseconds.
pub(crate) fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}
