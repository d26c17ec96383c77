//! [`Store`]: either driver behind one type, chosen by URL. Dispatch is a `match`, not a
//! virtual call, so the in-process path stays as fast as calling [`MemoryStore`] directly.

use crate::error::StoreError;
use crate::keyspace::StoreKey;
use crate::memory::MemoryStore;
use crate::rate::{LeaseReceipt, RateCharge, RateDecision, RateLimit, Reservation};
use crate::redis::{url::redact, RedisOptions, RedisStore};
use crate::seam::*;
use crate::stream::{StreamFrom, StreamId, StreamRead};
use bytes::Bytes;
use std::time::Duration;

/// The store a gateway runs on.
#[derive(Clone)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl Store {
    /// Builds the store for `url`: `memory://`, `redis://...`, `rediss://...`,
    /// `redis-sentinel://...` or `redis-cluster://...`.
    /// Redis connections are made lazily, so an unreachable server does not fail this call.
    pub fn open(url: &str, options: RedisOptions) -> Result<Store, StoreError> {
        let health = crate::redis::HealthGroup::new(options.breaker);
        Self::open_in(url, options, &health)
    }

    /// Like [`open`](Self::open), joining `health`: the instance's one view of this store's
    /// health, shared by every worker's connections and `/healthz` (ignored by `memory://`).
    pub fn open_in(
        url: &str,
        options: RedisOptions,
        health: &std::sync::Arc<crate::redis::HealthGroup>,
    ) -> Result<Store, StoreError> {
        let scheme = url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("memory") => Ok(Store::Memory(MemoryStore::new())),
            Some("redis" | "rediss" | "redis-sentinel" | "redis-cluster") => Ok(Store::Redis(RedisStore::open_in(url, options, health)?)),
            _ => Err(StoreError::Config(format!(
                "{}: unknown store URL scheme; accepted: memory://, redis://[user:pass@]host:port[/db], rediss://..., redis-sentinel://h1:26379,h2:26379[/db]?master=NAME, redis-cluster://h1:7000,h2:7001",
                redact(url)
            ))),
        }
    }

    /// Connects (and loads scripts) ahead of the first decision; never fails.
    pub async fn warm_up(&self) {
        if let Store::Redis(r) = self {
            r.warm_up().await;
        }
    }

    /// Waits until calls go to the store again (its breaker closed), at most `bound`. The
    /// in-process store is always usable.
    pub async fn wait_usable(&self, bound: Duration) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.wait_usable(bound).await,
        }
    }

    /// Whether this is the in-process store (health `off`).
    pub fn is_memory(&self) -> bool {
        matches!(self, Store::Memory(_))
    }
}

/// The Redis side is boxed: its futures (redis-rs's, with timeouts and retries) run to
/// kilobytes, and inline they would size every future that holds a store call, including the
/// in-process store's and every stage's, which are moved (copied) on their way into hyper. One
/// allocation per Redis call costs far less than its round trip.
macro_rules! dispatch {
    ($self:ident, $d:ident => $call:expr) => {
        match $self {
            Store::Memory($d) => $call.await,
            Store::Redis($d) => Box::pin($call).await,
        }
    };
}

impl StoreDriver for Store {
    async fn rate(&self, key: &StoreKey, limit: &RateLimit, cost: u64) -> StoreResult<RateDecision> {
        dispatch!(self, d => d.rate(key, limit, cost))
    }
    async fn refund(&self, key: &StoreKey, limit: &RateLimit, charge: &RateCharge) -> StoreResult<bool> {
        dispatch!(self, d => d.refund(key, limit, charge))
    }
    async fn reserve(&self, key: &StoreKey, limit: &RateLimit, want: u64, lease: Duration) -> StoreResult<Reservation> {
        dispatch!(self, d => d.reserve(key, limit, want, lease))
    }
    async fn give_back(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        receipt: &LeaseReceipt,
        unused: u64,
    ) -> StoreResult<bool> {
        dispatch!(self, d => d.give_back(key, limit, receipt, unused))
    }
    async fn acquire_permit(
        &self,
        key: &StoreKey,
        permit: &str,
        max: u64,
        lease: Duration,
    ) -> StoreResult<PermitDecision> {
        dispatch!(self, d => d.acquire_permit(key, permit, max, lease))
    }
    async fn release_permit(&self, key: &StoreKey, permit: &str) -> StoreResult<bool> {
        dispatch!(self, d => d.release_permit(key, permit))
    }
    async fn claim(&self, key: &StoreKey, value: Bytes, ttl: Duration) -> StoreResult<ClaimOutcome> {
        dispatch!(self, d => d.claim(key, value, ttl))
    }
    async fn complete_claim(&self, key: &StoreKey, token: &[u8], value: Bytes, ttl: Duration) -> StoreResult<bool> {
        dispatch!(self, d => d.complete_claim(key, token, value, ttl))
    }
    async fn release_claim(&self, key: &StoreKey, token: &[u8]) -> StoreResult<bool> {
        dispatch!(self, d => d.release_claim(key, token))
    }
    async fn get(&self, key: &StoreKey) -> StoreResult<Option<Bytes>> {
        dispatch!(self, d => d.get(key))
    }
    async fn get_extend(&self, key: &StoreKey, ttl: Duration) -> StoreResult<Option<Bytes>> {
        dispatch!(self, d => d.get_extend(key, ttl))
    }
    async fn set(&self, key: &StoreKey, value: Bytes, ttl: Duration) -> StoreResult<()> {
        dispatch!(self, d => d.set(key, value, ttl))
    }
    async fn delete(&self, key: &StoreKey) -> StoreResult<bool> {
        dispatch!(self, d => d.delete(key))
    }
    async fn lock(&self, key: &StoreKey, owner: &str, ttl: Duration) -> StoreResult<Option<LockGrant>> {
        dispatch!(self, d => d.lock(key, owner, ttl))
    }
    async fn unlock(&self, key: &StoreKey, owner: &str) -> StoreResult<bool> {
        dispatch!(self, d => d.unlock(key, owner))
    }
    async fn publish(&self, channel: &str, payload: Bytes) -> StoreResult<()> {
        dispatch!(self, d => d.publish(channel, payload))
    }
    async fn subscribe(&self, channel: &str) -> StoreResult<Subscription> {
        dispatch!(self, d => d.subscribe(channel))
    }
    async fn stream_append(&self, key: &StoreKey, payloads: &[Bytes], max_len: u64) -> StoreResult<Vec<StreamId>> {
        dispatch!(self, d => d.stream_append(key, payloads, max_len))
    }
    async fn stream_read(
        &self,
        key: &StoreKey,
        from: StreamFrom,
        count: usize,
        block: Duration,
    ) -> StoreResult<StreamRead> {
        dispatch!(self, d => d.stream_read(key, from, count, block))
    }
    async fn health(&self) -> StoreHealth {
        dispatch!(self, d => d.health())
    }
}
