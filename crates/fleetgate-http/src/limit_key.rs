//! What a limit counts by: its key parts turned into a store key per request, the shared
//! anonymous identity or a refusal for a request that lacks them, and where the limit is
//! declared (its key scope).

use crate::error::StageError;
use crate::identity::{identify, Identity};
use crate::key::{KeyPart, MissingKey};
use crate::metrics::DecisionMetrics;
use crate::refusal::Refusal;
use fleetgate_store::{Concern, Keyspace, ScopedKeys, StoreKey};
use http::request::Parts;
use std::net::IpAddr;

/// Identity used for requests lacking a key's header or cookie under `on_missing_key: shared`.
const ANONYMOUS: &[u8] = b"\x01anonymous";

/// Where a limit is declared. Its key scope names the kind, so a route called `global` never
/// shares keys with the global limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope<'a> {
    /// Top-level `rate_limits`, checked on every route.
    Global,
    /// A route's own limits.
    Route(&'a str),
}

impl LimitScope<'_> {
    /// The `route` label of the limit's metrics and error bodies.
    pub fn label(&self) -> &str {
        match self {
            LimitScope::Global => "global",
            LimitScope::Route(r) => r,
        }
    }

    /// `global/{name}/{kind}` or `route/{route}/{name}/{kind}`. `kind` is the algorithm (or
    /// `permits`): two versions of a limit with different algorithms, as in a rolling deploy,
    /// use different keys instead of meeting each other's values (WRONGTYPE, or a counter read
    /// as another algorithm's state).
    pub(crate) fn key_scope(&self, name: &str, kind: &str) -> String {
        match self {
            LimitScope::Global => format!("global/{name}/{kind}"),
            LimitScope::Route(route) => format!("route/{route}/{name}/{kind}"),
        }
    }
}

/// A limit's key: what it counts by, and what it does for a request that lacks it.
#[derive(Clone)]
pub(crate) struct LimitKey {
    /// `{prefix}:{concern}:{scope}:`, built once.
    keys: ScopedKeys,
    parts: Vec<KeyPart>,
    on_missing_key: MissingKey,
    /// IPv6 clients are counted by this many leading bits.
    ipv6_prefix: u8,
}

/// `ip` with every bit past `prefix` cleared, for IPv6 (IPv4, and IPv4-mapped IPv6, unchanged).
pub(crate) fn ip_for_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match crate::client_ip::canonical(ip) {
        IpAddr::V6(v6) if prefix < 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        other => other,
    }
}

impl LimitKey {
    pub(crate) fn new(
        keyspace: &Keyspace,
        concern: Concern,
        scope: &str,
        parts: Vec<KeyPart>,
        on_missing_key: MissingKey,
        ipv6_prefix: u8,
    ) -> Self {
        LimitKey {
            keys: keyspace.scoped(concern, scope),
            parts,
            on_missing_key,
            ipv6_prefix,
        }
    }

    /// The request's store key for the limit `name`: its key parts, the shared anonymous
    /// identity, or a refusal (counted in `metrics`), as `on_missing_key` says.
    pub(crate) fn store_key(
        &self,
        name: &str,
        metrics: &DecisionMetrics,
        req: &Parts,
        ip: IpAddr,
        route: &str,
    ) -> Result<StoreKey, Refusal> {
        let id = match identify(&self.parts, req, ip_for_key(ip, self.ipv6_prefix), route) {
            Identity::Found(id) => id,
            Identity::Missing(_) if self.on_missing_key == MissingKey::Shared => ANONYMOUS.to_vec(),
            Identity::Missing(what) => {
                metrics.missing_key_refused.increment(1);
                return Err(Refusal::MissingKey {
                    limit: name.to_string(),
                    what,
                });
            }
        };
        Ok(self.keys.key(&id))
    }
}

/// Checks the parameters every limit shares: a name that can be part of a store key, a key
/// with at least one part, an IPv6 prefix of at most 128 bits.
pub(crate) fn check_common(name: &str, key_parts: usize, ipv6_prefix: u8) -> Result<(), StageError> {
    Keyspace::check_scope(name).map_err(|e| StageError::BadName {
        what: "limit",
        name: name.to_string(),
        why: e.to_string(),
    })?;
    if key_parts == 0 {
        return Err(StageError::EmptyKey {
            limit: name.to_string(),
        });
    }
    if ipv6_prefix > 128 {
        return Err(StageError::OutOfRange {
            limit: name.to_string(),
            field: "ipv6_prefix",
            value: u64::from(ipv6_prefix),
            accepted: "0 to 128".into(),
        });
    }
    Ok(())
}
