//! Safe, namespaced keys: `{prefix}:{concern}:{scope}:{{hash}}`.
//!
//! Identifiers (API keys, IPs, cookies: any bytes, any length) are hashed with BLAKE3 and
//! truncated to 128 bits, so keys hold no personal data, have a bounded length and cannot inject
//! separators. The hash sits in a Redis Cluster hash tag (`{...}`), so every key a decision
//! touches for one identifier lands in one slot. The hash covers the key's head (prefix,
//! concern, scope) as well as the identifier: the same identifier under two limits (every
//! `key: global` limit has the same one) hashes to two slots, so a cluster spreads them instead
//! of piling every route's global limit onto one node. One prefix per deployment or
//! environment.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod recent;

/// What a key is for; its name appears in the key so operators can scan one concern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Concern {
    RateLimit,
    Concurrency,
    Session,
    Marker,
    Idempotency,
    Verification,
    ResponseCache,
    Dedup,
    Breaker,
    Lock,
    UpstreamAuth,
    LoginFailures,
    Instance,
    Events,
}

impl Concern {
    pub fn as_str(self) -> &'static str {
        match self {
            Concern::RateLimit => "rate",
            Concern::Concurrency => "permits",
            Concern::Session => "session",
            Concern::Marker => "marker",
            Concern::Idempotency => "idem",
            Concern::Verification => "verify",
            Concern::ResponseCache => "cache",
            Concern::Dedup => "dedup",
            Concern::Breaker => "breaker",
            Concern::Lock => "lock",
            Concern::UpstreamAuth => "auth",
            Concern::LoginFailures => "login",
            Concern::Instance => "instance",
            Concern::Events => "events",
        }
    }
}

/// Why a prefix or scope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not accepted: use 1 to 64 characters from A-Z a-z 0-9 . _ - (no ':', braces or spaces)")]
pub struct KeyError {
    pub what: &'static str,
    pub value: String,
}

fn check_segment(what: &'static str, value: &str) -> Result<(), KeyError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(KeyError {
            what,
            value: value.to_string(),
        })
    }
}

/// A store key, with a 128-bit digest computed once so drivers can index it without rehashing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreKey {
    text: Arc<str>,
    digest: u128,
}

impl StoreKey {
    /// Wraps a raw key. Prefer [`Keyspace::key`], which validates and hashes.
    pub fn raw(text: impl Into<Arc<str>>) -> Self {
        let text = text.into();
        let digest = xxhash_rust::xxh3::xxh3_128(text.as_bytes());
        StoreKey { text, digest }
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
    pub fn digest(&self) -> u128 {
        self.digest
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}
impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Builds keys and channel names under one deployment prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: Arc<str>,
}

impl Keyspace {
    pub fn new(prefix: &str) -> Result<Self, KeyError> {
        check_segment("key prefix", prefix)?;
        Ok(Keyspace { prefix: prefix.into() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Checks a scope (route or limit name) once, at configuration time.
    pub fn check_scope(scope: &str) -> Result<(), KeyError> {
        check_segment("scope", scope)
    }

    /// The key for `identifier` under `concern` and `scope`. `scope` is a checked name, or
    /// names joined with `/` (e.g. `route/limit`, unambiguous since names cannot hold `/`);
    /// anything else is hashed rather than trusted. Per request, prefer [`Keyspace::scoped`]
    /// once and [`ScopedKeys::key`] for each identifier.
    pub fn key(&self, concern: Concern, scope: &str, identifier: &[u8]) -> StoreKey {
        self.scoped(concern, scope).key(identifier)
    }

    /// Everything of a key but the identifier's hash, checked and built once (at start-up).
    pub fn scoped(&self, concern: Concern, scope: &str) -> ScopedKeys {
        let composite_ok = scope.len() <= 160 && scope.split('/').all(|part| check_segment("scope", part).is_ok());
        let scope = if composite_ok {
            scope.to_string()
        } else {
            identifier_hash(scope.as_bytes())[..16].to_string()
        };
        ScopedKeys::new(format!("{}:{}:{}:", self.prefix, concern.as_str(), scope))
    }

    /// The pub/sub channel for `topic` (a fixed name chosen by the code, e.g. `events`).
    pub fn channel(&self, topic: &str) -> String {
        format!("{}:chan:{}", self.prefix, topic)
    }
}

/// The keys of one concern and scope: `{prefix}:{concern}:{scope}:` built once.
#[derive(Debug, Clone)]
pub struct ScopedKeys {
    head: String,
    /// Names this head in the per-thread cache of recent keys (clones share it: same head).
    id: u64,
}

impl PartialEq for ScopedKeys {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head
    }
}
impl Eq for ScopedKeys {}

impl ScopedKeys {
    fn new(head: String) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ScopedKeys {
            head,
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The key for `identifier` (any bytes): the head, then the hash of head and identifier as
    /// a hash tag.
    ///
    /// A key is a pure function of head and identifier, so each thread keeps its recent keys
    /// (see [`recent`]): the same client's next request gets its key for a comparison and a
    /// reference count instead of a hash, a formatted string and two allocations.
    pub fn key(&self, identifier: &[u8]) -> StoreKey {
        recent::key(self.id, identifier, || self.build(identifier))
    }

    fn build(&self, identifier: &[u8]) -> StoreKey {
        let mut text = String::with_capacity(self.head.len() + 34);
        text.push_str(&self.head);
        text.push('{');
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.head.as_bytes());
        hasher.update(identifier);
        push_digest(&mut text, &hasher.finalize());
        text.push('}');
        StoreKey::raw(text)
    }
}

/// BLAKE3 of the identifier, truncated to 128 bits, as 32 lowercase hex characters.
pub fn identifier_hash(identifier: &[u8]) -> String {
    let mut out = String::with_capacity(32);
    push_hash(&mut out, identifier);
    out
}

fn push_hash(out: &mut String, identifier: &[u8]) {
    push_digest(out, &blake3::hash(identifier));
}

fn push_digest(out: &mut String, hash: &blake3::Hash) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in &hash.as_bytes()[..16] {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_is_blake3_hex_and_scoped_keys_match_key() {
        let full = blake3::hash(b"alice").to_hex();
        assert_eq!(identifier_hash(b"alice"), &full[..32]);
        let full = blake3::hash(b"p:rate:api/per-key:alice").to_hex();
        let ks = Keyspace::new("p").unwrap();
        let scoped = ks.scoped(Concern::RateLimit, "api/per-key");
        assert_eq!(
            scoped.key(b"alice"),
            ks.key(Concern::RateLimit, "api/per-key", b"alice")
        );
        assert_eq!(
            scoped.key(b"alice").as_str(),
            format!("p:rate:api/per-key:{{{}}}", &full[..32])
        );
    }

    /// Redis Cluster's slot of a key: CRC16 (XMODEM) of its hash tag, mod 16384.
    fn cluster_slot(key: &str) -> u16 {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        let tag = &key.as_bytes()[open + 1..close];
        let mut crc: u16 = 0;
        for &b in tag {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn one_identifier_under_many_scopes_spreads_over_cluster_slots() {
        let ks = Keyspace::new("p").unwrap();
        let slots: std::collections::HashSet<u16> = (0..50)
            .map(|i| {
                cluster_slot(
                    ks.key(Concern::RateLimit, &format!("route/r{i}/all/gcra"), b"g\0")
                        .as_str(),
                )
            })
            .collect();
        // 50 routes' `key: global` limits: with the identifier alone hashed they all shared one
        // slot; now they spread (50 draws from 16384 slots collide rarely).
        assert!(slots.len() >= 45, "{} distinct slots", slots.len());
        // One decision's keys (a key and its `:n` companion) still share a slot.
        let k = ks.key(Concern::RateLimit, "route/r1/all/sliding_window", b"alice");
        assert_eq!(cluster_slot(k.as_str()), cluster_slot(&format!("{k}:n")));
    }

    #[test]
    fn recent_keys_are_the_keys_built_fresh() {
        let ks = Keyspace::new("p").unwrap();
        let a = ks.scoped(Concern::RateLimit, "r/a");
        let b = ks.scoped(Concern::RateLimit, "r/b");
        let a_again = ks.scoped(Concern::RateLimit, "r/a");
        let long = vec![7u8; 300];
        // Many identifiers, twice over and interleaved across heads: every cached answer is the
        // one built from scratch, whatever the cache kept or evicted.
        for round in 0..2 {
            for i in 0..2000u32 {
                let id = i.to_be_bytes();
                for keys in [&a, &b, &a_again] {
                    assert_eq!(keys.key(&id), keys.build(&id), "round {round} id {i}");
                }
            }
        }
        assert_eq!(a.key(&long), a.build(&long));
        assert_eq!(a.key(b""), a.build(b""));
        assert_ne!(a.key(b"x"), b.key(b"x"));
        assert_eq!(a.key(b"x"), a_again.key(b"x"));
        assert_eq!(a, a_again);
    }

    #[test]
    fn key_shape() {
        let ks = Keyspace::new("prod-eu").unwrap();
        let k = ks.key(Concern::RateLimit, "api.per-key", b"alice");
        let parts: Vec<_> = k.as_str().split(':').collect();
        assert_eq!(parts[..3], ["prod-eu", "rate", "api.per-key"]);
        assert!(parts[3].starts_with('{') && parts[3].ends_with('}') && parts[3].len() == 34);
        assert!(!k.as_str().contains("alice"));
    }

    #[test]
    fn refuses_unsafe_prefixes_and_scopes() {
        for bad in ["", "a:b", "{x}", "has space", &"x".repeat(65)] {
            assert!(Keyspace::new(bad).is_err(), "{bad:?}");
            assert!(Keyspace::check_scope(bad).is_err(), "{bad:?}");
        }
        let msg = Keyspace::new("a:b").unwrap_err().to_string();
        assert!(msg.contains("A-Z a-z 0-9"), "{msg}");
    }

    proptest! {
        #[test]
        fn any_identifier_gives_a_bounded_safe_key(id in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let ks = Keyspace::new("fg").unwrap();
            let k = ks.key(Concern::Session, "s", &id);
            prop_assert_eq!(k.as_str().len(), "fg:session:s:{}".len() + 32);
            prop_assert!(k.as_str().is_ascii());
            prop_assert_eq!(k.as_str().matches('{').count(), 1);
        }
    }
}
