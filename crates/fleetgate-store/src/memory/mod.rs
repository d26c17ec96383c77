//! The in-process driver (the default): one binary, nothing else to run.
//!
//! Keys live in 64 shards, each a spin lock over hash maps keyed by the key's
//! precomputed 128-bit digest, so a decision costs one uncontended lock and one probe. gcra state,
//! the hottest and most numerous kind, has its own map holding only the TAT (which is also its
//! expiry): 24 bytes a slot instead of 48, which halves the memory of a million keys and the cache
//! lines a decision touches. Every other entry carries its expiry; a shard sweeps expired entries
//! whenever it has doubled since its last sweep, so memory stays bounded under endless new keys
//! without a background thread.

mod entries;
mod stream;

use crate::algo::{fixed_window, gcra, sliding_window};
use crate::clock::{Clock, MonotonicClock};
use crate::error::StoreError;
use crate::keyspace::StoreKey;
use crate::rate::{Algorithm, LeaseReceipt, RateCharge, RateDecision, RateLimit, Reservation};
use crate::seam::*;
use crate::stream::{StreamFrom, StreamId, StreamRead};
use bytes::Bytes;
use entries::{Digest, Entry, Shard, Value};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::{ready, Future};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

const SHARDS: usize = 64;
/// Messages a slow subscriber may fall behind before it loses the oldest.
const CHANNEL_CAPACITY: usize = 4096;
/// A lock's entry (holder and fencing counter) never expires: tokens must only grow, and an
/// expired counter would restart at 1. The holder's lease is checked against `held_until`.
/// One small entry per lock name (a fixed set, not per request).
const NEVER: u64 = u64::MAX;

/// The in-process store. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Shard]>,
    clock: Arc<dyn Clock>,
    channels: Mutex<HashMap<Arc<str>, broadcast::Sender<Message>>>,
    streams: stream::Streams,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_clock(Arc::new(MonotonicClock::default()))
    }

    /// A store that reads time from `clock` (tests pass a [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Shard::default()).collect(),
                clock,
                channels: Mutex::new(HashMap::new()),
                streams: stream::Streams::default(),
            }),
        }
    }

    #[inline]
    fn shard(&self, key: &StoreKey) -> &Shard {
        &self.inner.shards[(key.digest() >> 64) as usize % SHARDS]
    }

    /// Live (unexpired) entries; expired ones not yet swept are not counted.
    pub fn len(&self) -> usize {
        let now = self.inner.clock.now_us();
        self.inner.shards.iter().map(|s| s.lock().live_count(now)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` holds live (unexpired) state of any kind.
    pub fn holds(&self, key: &StoreKey) -> bool {
        let now = self.inner.clock.now_us();
        self.shard(key).lock().live(key.digest(), now).is_some()
    }

    /// The rate decision, synchronously: the in-process driver never waits.
    #[inline]
    pub fn rate_now(&self, key: &StoreKey, limit: &RateLimit, cost: u64) -> Result<RateDecision, StoreError> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        let wrong_type = || StoreError::WrongType(key.to_string());
        match limit.algorithm() {
            Algorithm::Gcra => {
                let digest = key.digest();
                // The hot path: one probe into the gcra map, the state updated in place.
                if let Some(stored) = shard.tats.get_mut(&Digest::from(digest)) {
                    let tat = (*stored > now).then_some(*stored);
                    let (decision, new_tat) = gcra::decide(tat, now, limit, cost);
                    if let Some(t) = new_tat {
                        *stored = t;
                    }
                    return Ok(decision);
                }
                let tat = shard.tat_elsewhere(digest, now).map_err(|()| wrong_type())?;
                let (decision, new_tat) = gcra::decide(tat, now, limit, cost);
                if let Some(t) = new_tat {
                    shard.insert_tat(digest, t, now);
                }
                Ok(decision)
            }
            Algorithm::FixedWindow => {
                let state = match shard.live(key.digest(), now) {
                    Some(Entry {
                        value: Value::Window(w),
                        ..
                    }) => Some(*w),
                    Some(_) => return Err(wrong_type()),
                    None => None,
                };
                let (decision, new_state, ttl) = fixed_window::decide(state, now, limit, cost);
                if let Some(w) = new_state {
                    shard.insert(
                        key.digest(),
                        Entry {
                            expires_at: now + ttl,
                            value: Value::Window(w),
                        },
                        now,
                    );
                }
                Ok(decision)
            }
            Algorithm::SlidingWindow => {
                let mut log = match shard.live(key.digest(), now) {
                    Some(Entry {
                        value: Value::Log(l), ..
                    }) => std::mem::take(&mut **l),
                    Some(_) => return Err(wrong_type()),
                    None => Default::default(),
                };
                let (decision, ttl) = sliding_window::decide(&mut log, now, limit, cost);
                if ttl == 0 {
                    shard.remove(key.digest());
                } else {
                    shard.insert(
                        key.digest(),
                        Entry {
                            expires_at: now + ttl,
                            value: Value::Log(Box::new(log)),
                        },
                        now,
                    );
                }
                Ok(decision)
            }
        }
    }

    /// The refund, synchronously: gives back `charge` with the algorithm's pure `refund`.
    pub fn refund_now(&self, key: &StoreKey, limit: &RateLimit, charge: &RateCharge) -> StoreResult<bool> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        let digest = key.digest();
        let wrong_type = || StoreError::WrongType(key.to_string());
        match limit.algorithm() {
            Algorithm::Gcra => {
                if let Some(stored) = shard.tats.get_mut(&Digest::from(digest)) {
                    let tat = (*stored > now).then_some(*stored);
                    // A TAT not after now is a full bucket: the map treats it as absent.
                    return Ok(gcra::refund(tat, now, limit, charge).map(|t| *stored = t).is_some());
                }
                let tat = shard.tat_elsewhere(digest, now).map_err(|()| wrong_type())?;
                match gcra::refund(tat, now, limit, charge) {
                    Some(t) if t > now => shard.insert_tat(digest, t, now),
                    Some(_) => shard.remove(digest),
                    None => return Ok(false),
                }
                Ok(true)
            }
            Algorithm::FixedWindow => match shard.live(digest, now) {
                Some(Entry {
                    value: Value::Window(w),
                    ..
                }) => Ok(fixed_window::refund(Some(*w), limit, charge).map(|n| *w = n).is_some()),
                Some(_) => Err(wrong_type()),
                None => Ok(false),
            },
            Algorithm::SlidingWindow => {
                let (changed, empty) = match shard.live(digest, now) {
                    Some(Entry {
                        value: Value::Log(log), ..
                    }) => (sliding_window::refund(log, charge), log.entries.is_empty()),
                    Some(_) => return Err(wrong_type()),
                    None => return Ok(false),
                };
                if empty {
                    shard.remove(digest);
                }
                Ok(changed)
            }
        }
    }

    /// The reservation, synchronously (lease mode): the algorithm's pure `reserve`.
    pub fn reserve_now(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        want: u64,
        lease: Duration,
    ) -> StoreResult<Reservation> {
        let now = self.inner.clock.now_us();
        let lease_us = lease.as_micros().min(u128::from(crate::rate::MAX_CAPACITY_US)) as u64;
        let mut shard = self.shard(key).lock();
        let digest = key.digest();
        let wrong_type = || StoreError::WrongType(key.to_string());
        match limit.algorithm() {
            Algorithm::Gcra => {
                if let Some(stored) = shard.tats.get_mut(&Digest::from(digest)) {
                    let tat = (*stored > now).then_some(*stored);
                    let (r, new_tat) = gcra::reserve(tat, now, limit, want, lease_us);
                    if let Some(t) = new_tat {
                        *stored = t;
                    }
                    return Ok(r);
                }
                let tat = shard.tat_elsewhere(digest, now).map_err(|()| wrong_type())?;
                let (r, new_tat) = gcra::reserve(tat, now, limit, want, lease_us);
                if let Some(t) = new_tat {
                    shard.insert_tat(digest, t, now);
                }
                Ok(r)
            }
            Algorithm::FixedWindow => {
                let state = match shard.live(digest, now) {
                    Some(Entry {
                        value: Value::Window(w),
                        ..
                    }) => Some(*w),
                    Some(_) => return Err(wrong_type()),
                    None => None,
                };
                let (r, new_state, ttl) = fixed_window::reserve(state, now, limit, want, lease_us);
                if let Some(w) = new_state {
                    shard.insert(
                        digest,
                        Entry {
                            expires_at: now + ttl,
                            value: Value::Window(w),
                        },
                        now,
                    );
                }
                Ok(r)
            }
            Algorithm::SlidingWindow => {
                let mut log = match shard.live(digest, now) {
                    Some(Entry {
                        value: Value::Log(l), ..
                    }) => std::mem::take(&mut **l),
                    Some(_) => return Err(wrong_type()),
                    None => Default::default(),
                };
                let (r, ttl) = sliding_window::reserve(&mut log, now, limit, want, lease_us);
                if ttl == 0 {
                    shard.remove(digest);
                } else {
                    shard.insert(
                        digest,
                        Entry {
                            expires_at: now + ttl,
                            value: Value::Log(Box::new(log)),
                        },
                        now,
                    );
                }
                Ok(r)
            }
        }
    }

    /// The give-back, synchronously (lease mode): the algorithm's pure `give_back`.
    pub fn give_back_now(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        receipt: &LeaseReceipt,
        unused: u64,
    ) -> StoreResult<bool> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        let digest = key.digest();
        let wrong_type = || StoreError::WrongType(key.to_string());
        match limit.algorithm() {
            Algorithm::Gcra => {
                if let Some(stored) = shard.tats.get_mut(&Digest::from(digest)) {
                    let tat = (*stored > now).then_some(*stored);
                    return Ok(gcra::give_back(tat, now, limit, receipt, unused)
                        .map(|t| *stored = t)
                        .is_some());
                }
                let tat = shard.tat_elsewhere(digest, now).map_err(|()| wrong_type())?;
                match gcra::give_back(tat, now, limit, receipt, unused) {
                    Some(t) if t > now => shard.insert_tat(digest, t, now),
                    Some(_) => shard.remove(digest),
                    None => return Ok(false),
                }
                Ok(true)
            }
            Algorithm::FixedWindow => match shard.live(digest, now) {
                Some(Entry {
                    value: Value::Window(w),
                    ..
                }) => Ok(fixed_window::give_back(Some(*w), receipt, unused)
                    .map(|n| *w = n)
                    .is_some()),
                Some(_) => Err(wrong_type()),
                None => Ok(false),
            },
            Algorithm::SlidingWindow => {
                let (changed, empty) = match shard.live(digest, now) {
                    Some(Entry {
                        value: Value::Log(log), ..
                    }) => (sliding_window::give_back(log, receipt, unused), log.entries.is_empty()),
                    Some(_) => return Err(wrong_type()),
                    None => return Ok(false),
                };
                if empty {
                    shard.remove(digest);
                }
                Ok(changed)
            }
        }
    }

    fn acquire_permit_now(
        &self,
        key: &StoreKey,
        permit: &str,
        max: u64,
        lease: Duration,
    ) -> StoreResult<PermitDecision> {
        let now = self.inner.clock.now_us();
        let expiry = now + lease.as_micros() as u64;
        let mut shard = self.shard(key).lock();
        let mut leases = match shard.live(key.digest(), now) {
            Some(Entry {
                value: Value::Permits(p),
                ..
            }) => std::mem::take(&mut **p),
            Some(_) => return Err(StoreError::WrongType(key.to_string())),
            None => Vec::new(),
        };
        leases.retain(|(_, until)| *until > now);
        let granted = if let Some(held) = leases.iter_mut().find(|(id, _)| &**id == permit) {
            held.1 = expiry;
            true
        } else if (leases.len() as u64) < max {
            leases.push((permit.into(), expiry));
            true
        } else {
            false
        };
        let in_use = leases.len() as u64;
        match leases.iter().map(|l| l.1).max() {
            Some(last) => shard.insert(
                key.digest(),
                Entry {
                    expires_at: last,
                    value: Value::Permits(Box::new(leases)),
                },
                now,
            ),
            None => {
                shard.remove(key.digest());
            }
        }
        Ok(PermitDecision { granted, in_use, max })
    }

    fn release_permit_now(&self, key: &StoreKey, permit: &str) -> StoreResult<bool> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        match shard.live(key.digest(), now) {
            Some(Entry {
                value: Value::Permits(p),
                ..
            }) => {
                let before = p.len();
                p.retain(|(id, until)| &**id != permit && *until > now);
                let released = p.len() < before;
                if p.is_empty() {
                    shard.remove(key.digest());
                }
                Ok(released)
            }
            Some(_) => Err(StoreError::WrongType(key.to_string())),
            None => Ok(false),
        }
    }

    fn claim_now(&self, key: &StoreKey, value: Bytes, ttl: Duration) -> StoreResult<ClaimOutcome> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        match shard.live(key.digest(), now) {
            Some(Entry {
                value: Value::Bytes(held),
                ..
            }) => Ok(ClaimOutcome::Held(Bytes::copy_from_slice(held))),
            Some(_) => Err(StoreError::WrongType(key.to_string())),
            None => {
                let entry = Entry {
                    expires_at: now + ttl_us(ttl),
                    value: Value::Bytes(value.to_vec().into_boxed_slice()),
                };
                shard.insert(key.digest(), entry, now);
                Ok(ClaimOutcome::Won)
            }
        }
    }

    /// Whether `key` holds exactly `token`, then `replace` (under the shard's lock).
    fn if_holds(
        &self,
        key: &StoreKey,
        token: &[u8],
        replace: impl FnOnce(&mut entries::ShardMap, u64),
    ) -> StoreResult<bool> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        let holds = match shard.live(key.digest(), now) {
            Some(Entry {
                value: Value::Bytes(held),
                ..
            }) => &**held == token,
            Some(_) => return Err(StoreError::WrongType(key.to_string())),
            None => false,
        };
        if holds {
            replace(&mut shard, now);
        }
        Ok(holds)
    }

    fn complete_claim_now(&self, key: &StoreKey, token: &[u8], value: Bytes, ttl: Duration) -> StoreResult<bool> {
        self.if_holds(key, token, |shard, now| {
            let entry = Entry {
                expires_at: now + ttl_us(ttl),
                value: Value::Bytes(value.to_vec().into_boxed_slice()),
            };
            shard.insert(key.digest(), entry, now);
        })
    }

    fn release_claim_now(&self, key: &StoreKey, token: &[u8]) -> StoreResult<bool> {
        self.if_holds(key, token, |shard, _| {
            shard.remove(key.digest());
        })
    }

    fn get_now(&self, key: &StoreKey) -> StoreResult<Option<Bytes>> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        match shard.live(key.digest(), now) {
            Some(Entry {
                value: Value::Bytes(b), ..
            }) => Ok(Some(Bytes::copy_from_slice(b))),
            Some(_) => Err(StoreError::WrongType(key.to_string())),
            None => Ok(None),
        }
    }

    fn get_extend_now(&self, key: &StoreKey, ttl: Duration) -> StoreResult<Option<Bytes>> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        match shard.live(key.digest(), now) {
            Some(Entry {
                value: Value::Bytes(b),
                expires_at,
            }) => {
                *expires_at = now + ttl_us(ttl);
                Ok(Some(Bytes::copy_from_slice(b)))
            }
            Some(_) => Err(StoreError::WrongType(key.to_string())),
            None => Ok(None),
        }
    }

    fn set_now(&self, key: &StoreKey, value: Bytes, ttl: Duration) {
        let now = self.inner.clock.now_us();
        let entry = Entry {
            expires_at: now + ttl_us(ttl),
            value: Value::Bytes(value.to_vec().into_boxed_slice()),
        };
        self.shard(key).lock().insert(key.digest(), entry, now);
    }

    fn delete_now(&self, key: &StoreKey) -> bool {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        let live = shard.live(key.digest(), now).is_some();
        shard.remove(key.digest());
        live
    }

    fn lock_now(&self, key: &StoreKey, owner: &str, ttl: Duration) -> StoreResult<Option<LockGrant>> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        let mut state = match shard.live(key.digest(), now) {
            Some(Entry {
                value: Value::Lock(l), ..
            }) => std::mem::take(&mut **l),
            Some(_) => return Err(StoreError::WrongType(key.to_string())),
            None => Default::default(),
        };
        let held_by_other = state.holder.as_deref().is_some_and(|h| h != owner) && state.held_until > now;
        let grant = if held_by_other {
            None
        } else {
            if state.holder.as_deref() != Some(owner) || state.held_until <= now {
                state.fence += 1;
                state.holder = Some(owner.into());
            }
            state.held_until = now + ttl_us(ttl);
            Some(LockGrant { fence: state.fence })
        };
        shard.insert(
            key.digest(),
            Entry {
                expires_at: NEVER,
                value: Value::Lock(Box::new(state)),
            },
            now,
        );
        Ok(grant)
    }

    fn unlock_now(&self, key: &StoreKey, owner: &str) -> StoreResult<bool> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        match shard.live(key.digest(), now) {
            Some(Entry {
                value: Value::Lock(l), ..
            }) => {
                let held = l.holder.as_deref() == Some(owner) && l.held_until > now;
                if held {
                    l.holder = None;
                    l.held_until = 0;
                }
                Ok(held)
            }
            Some(_) => Err(StoreError::WrongType(key.to_string())),
            None => Ok(false),
        }
    }

    fn sender(&self, channel: &str) -> broadcast::Sender<Message> {
        let mut channels = self.inner.channels.lock();
        if let Some(tx) = channels.get(channel) {
            return tx.clone();
        }
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        channels.insert(channel.into(), tx.clone());
        tx
    }

    /// Delivers to local subscribers only (also used by the Redis driver as its local bus).
    pub fn publish_now(&self, channel: &str, payload: Bytes) {
        let tx = self.inner.channels.lock().get(channel).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(Message {
                channel: channel.into(),
                payload,
            });
        }
    }

    pub fn subscribe_now(&self, channel: &str) -> Subscription {
        Subscription::new(self.sender(channel).subscribe())
    }
}

fn ttl_us(ttl: Duration) -> u64 {
    (ttl.as_micros() as u64).max(1)
}

impl StoreDriver for MemoryStore {
    fn rate(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        cost: u64,
    ) -> impl Future<Output = StoreResult<RateDecision>> + Send {
        ready(self.rate_now(key, limit, cost))
    }
    fn refund(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        charge: &RateCharge,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        ready(self.refund_now(key, limit, charge))
    }
    fn reserve(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        want: u64,
        lease: Duration,
    ) -> impl Future<Output = StoreResult<Reservation>> + Send {
        ready(self.reserve_now(key, limit, want, lease))
    }
    fn give_back(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        receipt: &LeaseReceipt,
        unused: u64,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        ready(self.give_back_now(key, limit, receipt, unused))
    }
    fn acquire_permit(
        &self,
        key: &StoreKey,
        permit: &str,
        max: u64,
        lease: Duration,
    ) -> impl Future<Output = StoreResult<PermitDecision>> + Send {
        ready(self.acquire_permit_now(key, permit, max, lease))
    }
    fn release_permit(&self, key: &StoreKey, permit: &str) -> impl Future<Output = StoreResult<bool>> + Send {
        ready(self.release_permit_now(key, permit))
    }
    fn claim(
        &self,
        key: &StoreKey,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<ClaimOutcome>> + Send {
        ready(self.claim_now(key, value, ttl))
    }
    fn complete_claim(
        &self,
        key: &StoreKey,
        token: &[u8],
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        ready(self.complete_claim_now(key, token, value, ttl))
    }
    fn release_claim(&self, key: &StoreKey, token: &[u8]) -> impl Future<Output = StoreResult<bool>> + Send {
        ready(self.release_claim_now(key, token))
    }
    fn get(&self, key: &StoreKey) -> impl Future<Output = StoreResult<Option<Bytes>>> + Send {
        ready(self.get_now(key))
    }
    fn get_extend(&self, key: &StoreKey, ttl: Duration) -> impl Future<Output = StoreResult<Option<Bytes>>> + Send {
        ready(self.get_extend_now(key, ttl))
    }
    fn set(&self, key: &StoreKey, value: Bytes, ttl: Duration) -> impl Future<Output = StoreResult<()>> + Send {
        self.set_now(key, value, ttl);
        ready(Ok(()))
    }
    fn delete(&self, key: &StoreKey) -> impl Future<Output = StoreResult<bool>> + Send {
        ready(Ok(self.delete_now(key)))
    }
    fn lock(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<Option<LockGrant>>> + Send {
        ready(self.lock_now(key, owner, ttl))
    }
    fn unlock(&self, key: &StoreKey, owner: &str) -> impl Future<Output = StoreResult<bool>> + Send {
        ready(self.unlock_now(key, owner))
    }
    fn publish(&self, channel: &str, payload: Bytes) -> impl Future<Output = StoreResult<()>> + Send {
        self.publish_now(channel, payload);
        ready(Ok(()))
    }
    fn subscribe(&self, channel: &str) -> impl Future<Output = StoreResult<Subscription>> + Send {
        ready(Ok(self.subscribe_now(channel)))
    }
    fn stream_append(
        &self,
        key: &StoreKey,
        payloads: &[Bytes],
        max_len: u64,
    ) -> impl Future<Output = StoreResult<Vec<StreamId>>> + Send {
        ready(Ok(self.inner.streams.append(key.as_str(), payloads, max_len)))
    }
    async fn stream_read(
        &self,
        key: &StoreKey,
        from: StreamFrom,
        count: usize,
        block: Duration,
    ) -> StoreResult<StreamRead> {
        Ok(self.inner.streams.read(key.as_str(), from, count, block).await)
    }
    fn health(&self) -> impl Future<Output = StoreHealth> + Send {
        ready(StoreHealth::Off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keyspace::{Concern, Keyspace};

    #[test]
    fn expired_keys_are_reclaimed_under_endless_new_keys() {
        let clock = ManualClock::new(1_000_000);
        let store = MemoryStore::with_clock(Arc::new(clock.clone()));
        let ks = Keyspace::new("t").unwrap();
        let limit = RateLimit::gcra("10/1s").unwrap();
        for round in 0..20u64 {
            for i in 0..10_000u64 {
                let key = ks.key(Concern::RateLimit, "r", &(round * 10_000 + i).to_le_bytes());
                store.rate_now(&key, &limit, 1).unwrap();
            }
            clock.advance(Duration::from_secs(2));
        }
        let stored: usize = store.inner.shards.iter().map(|s| s.lock().stored()).sum();
        // 200,000 keys were created; only about the last two rounds' worth may remain.
        assert!(stored <= 40_000, "{stored} entries kept");
        assert_eq!(store.len(), 0);
    }

    /// gcra state sits in its own map; every other call must still see it as a value of another
    /// type, and it must survive such calls unchanged.
    #[test]
    fn gcra_state_behaves_as_one_keyspace_with_other_values() {
        let clock = ManualClock::new(1_000_000);
        let store = MemoryStore::with_clock(Arc::new(clock.clone()));
        let key = StoreKey::raw("t:g");
        let gcra = RateLimit::gcra("5/1s").unwrap();
        let remaining = |store: &MemoryStore| store.rate_now(&key, &gcra, 1).unwrap().remaining;
        assert_eq!(remaining(&store), 4);
        assert_eq!(remaining(&store), 3);
        let wrong = |r: StoreResult<()>| matches!(r, Err(StoreError::WrongType(_)));
        assert!(wrong(store.get_now(&key).map(drop)));
        assert!(wrong(
            store
                .claim_now(&key, Bytes::from_static(b"c"), Duration::from_secs(1))
                .map(drop)
        ));
        let window = RateLimit::parse(Algorithm::FixedWindow, "5/1s", None).unwrap();
        assert!(wrong(store.rate_now(&key, &window, 1).map(drop)));
        let sliding = RateLimit::parse(Algorithm::SlidingWindow, "5/1s", None).unwrap();
        assert!(wrong(store.rate_now(&key, &sliding, 1).map(drop)));
        assert!(wrong(
            store.acquire_permit_now(&key, "p", 1, Duration::from_secs(1)).map(drop)
        ));
        assert!(wrong(store.release_permit_now(&key, "p").map(drop)));
        assert!(wrong(store.lock_now(&key, "o", Duration::from_secs(1)).map(drop)));
        assert!(wrong(store.unlock_now(&key, "o").map(drop)));
        // Unchanged by all of the above, and still one live key.
        assert_eq!(remaining(&store), 2);
        assert_eq!(store.len(), 1);
        // Expires with its TAT (3 units of 200 ms each from now).
        clock.advance(Duration::from_millis(599));
        assert_eq!(store.len(), 1);
        clock.advance(Duration::from_millis(1));
        assert_eq!(store.len(), 0);
        assert_eq!(store.get_now(&key).unwrap(), None);
        // SET replaces it; DELETE removes it and reports that it was live.
        assert_eq!(remaining(&store), 4);
        store.set_now(&key, Bytes::from_static(b"v"), Duration::from_secs(10));
        assert!(wrong(store.rate_now(&key, &gcra, 1).map(drop)));
        assert_eq!(store.get_now(&key).unwrap().as_deref(), Some(&b"v"[..]));
        assert!(store.delete_now(&key));
        assert_eq!(remaining(&store), 4);
        assert!(store.delete_now(&key));
        assert!(!store.delete_now(&key));
        assert_eq!(remaining(&store), 4);
        assert_eq!(store.len(), 1);
    }

    /// Fencing tokens only grow: the counter outlives any idle time (it used to be dropped 7 days
    /// after the last lease, and the next holder got token 1 again).
    #[test]
    fn fence_keeps_growing_after_a_long_idle_time() {
        let clock = ManualClock::at_wall_clock();
        let store = MemoryStore::with_clock(Arc::new(clock.clone()));
        let key = StoreKey::raw("t:lock");
        let ttl = Duration::from_secs(10);
        let first = store.lock_now(&key, "a", ttl).unwrap().unwrap().fence;
        assert!(store.unlock_now(&key, "a").unwrap());
        let second = store.lock_now(&key, "b", ttl).unwrap().unwrap().fence;
        assert!(second > first);
        clock.advance(Duration::from_secs(30 * 86_400));
        // Other keys come and go meanwhile, and sweeps run.
        let limit = RateLimit::gcra("10/1s").unwrap();
        for i in 0..5_000u64 {
            store.rate_now(&StoreKey::raw(format!("t:r{i}")), &limit, 1).unwrap();
        }
        clock.advance(Duration::from_secs(2));
        for i in 0..5_000u64 {
            store.rate_now(&StoreKey::raw(format!("t:s{i}")), &limit, 1).unwrap();
        }
        let third = store.lock_now(&key, "c", ttl).unwrap().unwrap().fence;
        assert!(third > second, "fence went from {second} to {third} after 30 idle days");
    }

    /// A smaller limit on a key that a larger one filled (a changed config, or two versions in
    /// a rolling deploy) refuses with nothing remaining; `remaining` used to underflow.
    #[test]
    fn smaller_limit_on_a_fuller_key_reports_nothing_remaining() {
        let store = MemoryStore::with_clock(Arc::new(ManualClock::at_wall_clock()));
        for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::FixedWindow] {
            let key = StoreKey::raw(format!("t:shrink:{algorithm}"));
            let large = RateLimit::parse(algorithm, "10/1d", None).unwrap();
            let small = RateLimit::parse(algorithm, "2/1d", None).unwrap();
            assert!(store.rate_now(&key, &large, 8).unwrap().allowed);
            for cost in [1, 3] {
                let d = store.rate_now(&key, &small, cost).unwrap();
                assert!(!d.allowed && d.remaining == 0, "{algorithm}, cost {cost}: {d:?}");
            }
        }
    }

    #[test]
    fn wrong_type_leaves_state_untouched() {
        let store = MemoryStore::new();
        let key = StoreKey::raw("t:x");
        store.set_now(&key, Bytes::from_static(b"v"), Duration::from_secs(10));
        let err = store.rate_now(&key, &RateLimit::gcra("1/s").unwrap(), 1).unwrap_err();
        assert!(matches!(err, StoreError::WrongType(_)));
        assert_eq!(store.get_now(&key).unwrap().as_deref(), Some(&b"v"[..]));
    }
}
