//! The in-process driver's storage: shards of digest-keyed entries, each with its expiry.

use crate::algo::{fixed_window::WindowCount, sliding_window::SlidingLog};
use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys are already uniformly hashed (xxh3-128), so the map's hasher only folds the digest.
#[derive(Default)]
pub(super) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

pub(super) type DigestMap<V> = HashMap<u128, V, BuildHasherDefault<DigestHasher>>;

/// A lock's holder and fencing counter.
#[derive(Debug, Default)]
pub(super) struct LockState {
    pub holder: Option<Box<str>>,
    pub held_until: u64,
    pub fence: u64,
}

/// What a key holds. Large variants are boxed so that the common gcra entry stays small.
pub(super) enum Value {
    Tat(u64),
    Window(WindowCount),
    Log(Box<SlidingLog>),
    Permits(Box<Vec<(Box<str>, u64)>>),
    Bytes(Box<[u8]>),
    Lock(Box<LockState>),
}

pub(super) struct Entry {
    /// Monotonic microseconds; the entry is gone from this instant on.
    pub expires_at: u64,
    pub value: Value,
}

pub(super) struct ShardMap {
    pub map: DigestMap<Entry>,
    /// Sweep expired entries when the map reaches this size.
    sweep_at: usize,
}

const MIN_SWEEP: usize = 1024;

impl ShardMap {
    /// The entry for `digest` if it has not expired; an expired one is removed.
    pub fn live(&mut self, digest: u128, now: u64) -> Option<&mut Entry> {
        let expired = match self.map.get(&digest) {
            Some(e) => e.expires_at <= now,
            None => return None,
        };
        if expired {
            self.map.remove(&digest);
            return None;
        }
        self.map.get_mut(&digest)
    }

    /// Inserts or replaces; sweeps first when the shard has doubled since its last sweep, which
    /// keeps memory within about twice the live entries at an amortised O(1) cost.
    pub fn insert(&mut self, digest: u128, entry: Entry, now: u64) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, e| e.expires_at > now);
            self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP);
        }
        self.map.insert(digest, entry);
    }
}

/// One shard, on its own cache line.
#[repr(align(128))]
pub(super) struct Shard(Mutex<ShardMap>);

impl Default for Shard {
    fn default() -> Self {
        Shard(Mutex::new(ShardMap {
            map: DigestMap::default(),
            sweep_at: MIN_SWEEP,
        }))
    }
}

impl Shard {
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, ShardMap> {
        self.0.lock()
    }
}
