//! The optional in-process tier (`local_ttl`): store values this instance read or wrote kept
//! in its memory for at most `local_ttl`, so that hits on a shared store skip the round trip.
//!
//! Staleness is bounded: what another instance invalidates or refreshes is served from here
//! for at most `local_ttl` after this instance last read it (this instance's own writes and
//! invalidations update the tier at once). Only values are kept, never absence (a miss always
//! asks the store), and never locks or markers. Memory is bounded by `local_max_bytes`: when
//! full, expired values go first, then everything.

use bytes::Bytes;
use fleetgate_store::StoreKey;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct LocalTier {
    ttl: Duration,
    max_bytes: usize,
    values: Mutex<Values>,
}

#[derive(Default)]
struct Values {
    map: HashMap<StoreKey, (Instant, Bytes)>,
    bytes: usize,
}

impl LocalTier {
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        LocalTier {
            ttl,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            values: Mutex::new(Values::default()),
        }
    }

    /// The value of `key` if read or written here less than `ttl` ago.
    pub fn get(&self, key: &StoreKey) -> Option<Bytes> {
        let mut v = self.values.lock();
        let (at, value) = v.map.get(key)?;
        if at.elapsed() < self.ttl {
            return Some(value.clone());
        }
        let len = value.len();
        v.map.remove(key);
        v.bytes -= len;
        None
    }

    /// Keeps `value` for `key` (a value over a quarter of the bound is not kept).
    pub fn put(&self, key: &StoreKey, value: Bytes) {
        if value.len() > self.max_bytes / 4 {
            self.remove(key);
            return;
        }
        let mut v = self.values.lock();
        if let Some((_, old)) = v.map.remove(key) {
            v.bytes -= old.len();
        }
        if v.bytes + value.len() > self.max_bytes {
            let ttl = self.ttl;
            v.map.retain(|_, (at, _)| at.elapsed() < ttl);
            v.bytes = v.map.values().map(|(_, b)| b.len()).sum();
            if v.bytes + value.len() > self.max_bytes {
                v.map.clear();
                v.bytes = 0;
            }
        }
        v.bytes += value.len();
        v.map.insert(key.clone(), (Instant::now(), value));
    }

    pub fn remove(&self, key: &StoreKey) {
        let mut v = self.values.lock();
        if let Some((_, old)) = v.map.remove(key) {
            v.bytes -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expire_and_memory_is_bounded() {
        let tier = LocalTier::new(Duration::from_millis(50), 100);
        let (a, b) = (StoreKey::raw("a"), StoreKey::raw("b"));
        tier.put(&a, Bytes::from_static(b"0123456789"));
        assert_eq!(tier.get(&a).as_deref(), Some(&b"0123456789"[..]));
        tier.put(&b, Bytes::from(vec![0u8; 30]));
        assert!(tier.get(&b).is_none(), "over a quarter of the bound: not kept");
        for i in 0..20 {
            tier.put(&StoreKey::raw(format!("k{i}")), Bytes::from(vec![0u8; 20]));
            assert!(tier.values.lock().bytes <= 100);
        }
        tier.remove(&StoreKey::raw("k19"));
        assert!(tier.get(&StoreKey::raw("k19")).is_none());
        tier.put(&a, Bytes::from_static(b"x"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(tier.get(&a).is_none(), "expired after ttl");
    }
}
