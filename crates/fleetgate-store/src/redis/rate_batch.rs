//! Hot-key batching of rate decisions (`store.rate_batch_max`): while one decision on a key is
//! in flight, the decisions that arrive for the same key and limit queue up, and go as one
//! script call when it returns (`gcra_batch.lua`, `fixed_window_batch.lua`,
//! `sliding_window_batch.lua`). The script decides them in arrival order at one instant of
//! server time, each exactly as the single script would have were the calls run back to back,
//! so a batch admits exactly what the same calls one by one would: the limit stays exact.
//!
//! What it saves: one EVALSHA (its dispatch, one TIME, the key's read and write) per decision
//! beyond the first of a batch, on redis-server, and one command and reply per decision in the
//! driver. What it costs: a decision that finds its key's call in flight waits for that call to
//! return before its batch is sent (at most one store round trip more; each call is bounded by
//! `store.timeout_ms` as always). A key with one decision at a time never waits: its call goes
//! at once. Keys are never mixed in one call, so a batch is valid on Redis Cluster (one slot).
//!
//! Whoever holds a key's turn (the first caller, then the task that sends the queued batches)
//! hands it on when done, also when its future is dropped: a queue is never left without a
//! sender. A waiter whose sender went away (its runtime shut down) gets `Unavailable`.

use crate::keyspace::StoreKey;
use crate::rate::{RateDecision, RateLimit};
use crate::{StoreError, StoreResult};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Decisions queued behind a key's call in flight.
struct Queue {
    /// The key itself (the map is indexed by its digest; a digest collision goes alone).
    key: StoreKey,
    limit: RateLimit,
    waiting: Vec<Waiter>,
}

pub(super) struct Waiter {
    pub cost: u64,
    reply: oneshot::Sender<StoreResult<RateDecision>>,
}

impl Waiter {
    pub fn answer(self, decision: StoreResult<RateDecision>) {
        let _ = self.reply.send(decision);
    }
}

/// A caller's turn on a key: send alone (and hand the turn on after), wait for a batch, or
/// (another limit on the same key, or a full queue) send alone without joining.
pub(super) enum Turn {
    Lead,
    Wait(oneshot::Receiver<StoreResult<RateDecision>>),
    Alone,
}

/// The keys with a call in flight, and what queued behind each (one per connection set),
/// indexed by the key's digest: a call with nothing queued allocates nothing.
pub(super) struct RateBatches {
    max: usize,
    keys: parking_lot::Mutex<HashMap<u128, Queue>>,
}

impl RateBatches {
    /// `max`: most decisions in one call (1: no batching).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(RateBatches {
            max: max.max(1),
            keys: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.max > 1
    }

    pub fn join(&self, key: &StoreKey, limit: &RateLimit, cost: u64) -> Turn {
        let mut keys = self.keys.lock();
        match keys.get_mut(&key.digest()) {
            None => {
                let queue = Queue {
                    key: key.clone(),
                    limit: *limit,
                    waiting: Vec::new(),
                };
                keys.insert(key.digest(), queue);
                Turn::Lead
            }
            Some(q) if q.limit == *limit && q.waiting.len() < self.max && q.key == *key => {
                let (reply, rx) = oneshot::channel();
                q.waiting.push(Waiter { cost, reply });
                Turn::Wait(rx)
            }
            Some(_) => Turn::Alone,
        }
    }

    /// The key's queue, taken whole, and the key freed (its sender is gone).
    pub fn abandon(&self, key: &StoreKey) -> Vec<Waiter> {
        self.keys
            .lock()
            .remove(&key.digest())
            .map(|q| q.waiting)
            .unwrap_or_default()
    }

    /// After a call on `key`: what queued meanwhile (the key stays in flight for it), or
    /// nothing, and the key is free again.
    pub fn next(&self, key: &StoreKey) -> Vec<Waiter> {
        let mut keys = self.keys.lock();
        match keys.get_mut(&key.digest()) {
            Some(q) if !q.waiting.is_empty() => std::mem::take(&mut q.waiting),
            _ => {
                keys.remove(&key.digest());
                Vec::new()
            }
        }
    }
}

/// The answer of a waiter whose batch was never sent.
pub(super) fn abandoned() -> StoreError {
    StoreError::Unavailable("the batched store call was abandoned (shutting down)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: u64) -> RateLimit {
        RateLimit::gcra(&format!("{n}/s")).unwrap()
    }

    fn key(id: &str) -> StoreKey {
        crate::Keyspace::new("t")
            .unwrap()
            .key(crate::Concern::RateLimit, "l", id.as_bytes())
    }

    #[test]
    fn the_first_leads_the_next_wait_and_the_key_frees_when_nothing_queued() {
        let b = RateBatches::new(2);
        assert!(matches!(b.join(&key("k"), &limit(10), 1), Turn::Lead));
        assert!(matches!(b.join(&key("k"), &limit(10), 2), Turn::Wait(_)));
        assert!(matches!(b.join(&key("k"), &limit(10), 3), Turn::Wait(_)));
        // Full: the third waiter goes alone; another limit on the key goes alone too.
        assert!(matches!(b.join(&key("k"), &limit(10), 4), Turn::Alone));
        assert!(matches!(b.join(&key("k"), &limit(11), 1), Turn::Alone));
        // Another key leads its own.
        assert!(matches!(b.join(&key("other"), &limit(10), 1), Turn::Lead));
        let queued: Vec<u64> = b.next(&key("k")).into_iter().map(|w| w.cost).collect();
        assert_eq!(queued, vec![2, 3]);
        // Still in flight (the batch runs): a new caller queues behind it.
        assert!(matches!(b.join(&key("k"), &limit(10), 5), Turn::Wait(_)));
        assert_eq!(b.next(&key("k")).len(), 1);
        assert!(b.next(&key("k")).is_empty());
        assert!(
            matches!(b.join(&key("k"), &limit(10), 1), Turn::Lead),
            "the key is free again"
        );
    }
}
