//! The in-process driver's storage: shards of digest-keyed entries, each with its expiry.

use crate::algo::{fixed_window::WindowCount, sliding_window::SlidingLog};
pub(super) use crate::sync::Digest;
use crate::sync::{DigestMap, SpinMutex};
use spinning_top::guard::SpinlockGuard;

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
    // Boxed on purpose: keeps `Value` at 24 bytes (a bare `Vec` would make it 32).
    #[allow(clippy::box_collection)]
    Permits(Box<Vec<(Box<str>, u64)>>),
    Bytes(Box<[u8]>),
    Lock(Box<LockState>),
}

pub(super) struct Entry {
    /// Monotonic microseconds; the entry is gone from this instant on.
    pub expires_at: u64,
    pub value: Value,
}

/// One shard's entries. gcra state, the hot and most numerous kind, sits in its own map as the
/// bare TAT (which is also its expiry): a 24-byte slot instead of 48. A digest is in at most one
/// of the two maps.
pub(super) struct ShardMap {
    /// gcra: the theoretical arrival time (µs); the state is gone once it is not after now.
    pub tats: DigestMap<u64>,
    /// Every other kind of value.
    map: DigestMap<Entry>,
    /// Sweep expired entries when the maps together reach this size.
    sweep_at: usize,
}

const MIN_SWEEP: usize = 1024;

impl ShardMap {
    /// The entry for `digest` if it has not expired; an expired one is removed. A live gcra state
    /// is returned as a [`Value::Tat`] entry (moved to the general map), so that callers see it
    /// as a value of another type, as before the maps were split.
    pub fn live(&mut self, digest: u128, now: u64) -> Option<&mut Entry> {
        let digest = Digest::from(digest);
        if !self.tats.is_empty() {
            if let Some(t) = self.tats.remove(&digest) {
                if t > now {
                    self.map.insert(
                        digest,
                        Entry {
                            expires_at: t,
                            value: Value::Tat(t),
                        },
                    );
                }
            }
        }
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

    /// The gcra state for `digest` from the general map (where [`live`](Self::live) moves it):
    /// `Ok(Some(tat))` if live, `Ok(None)` if absent or expired (an expired entry is removed),
    /// `Err(())` if a live value of another type holds the key.
    pub fn tat_elsewhere(&mut self, digest: u128, now: u64) -> Result<Option<u64>, ()> {
        let digest = Digest::from(digest);
        match self.map.get(&digest) {
            None => Ok(None),
            Some(e) if e.expires_at <= now => {
                self.map.remove(&digest);
                Ok(None)
            }
            Some(Entry {
                value: Value::Tat(t), ..
            }) => Ok(Some(*t)),
            Some(_) => Err(()),
        }
    }

    /// Entries stored, expired or not.
    pub fn stored(&self) -> usize {
        self.tats.len() + self.map.len()
    }

    /// Live entries.
    pub fn live_count(&self, now: u64) -> usize {
        self.tats.values().filter(|t| **t > now).count() + self.map.values().filter(|e| e.expires_at > now).count()
    }

    /// Sweeps first when the shard has doubled since its last sweep, which keeps memory within
    /// about twice the live entries at an amortised O(1) cost.
    fn make_room(&mut self, now: u64) {
        if self.stored() >= self.sweep_at {
            self.tats.retain(|_, t| *t > now);
            self.map.retain(|_, e| e.expires_at > now);
            self.sweep_at = (self.stored() * 2).max(MIN_SWEEP);
        }
    }

    /// Inserts or replaces (a value of any type, gcra state included).
    pub fn insert(&mut self, digest: u128, entry: Entry, now: u64) {
        let digest = Digest::from(digest);
        self.make_room(now);
        if !self.tats.is_empty() {
            self.tats.remove(&digest);
        }
        self.map.insert(digest, entry);
    }

    /// Stores a gcra state (whose expiry is the TAT itself), replacing any value.
    pub fn insert_tat(&mut self, digest: u128, tat: u64, now: u64) {
        let digest = Digest::from(digest);
        self.make_room(now);
        if !self.map.is_empty() {
            self.map.remove(&digest);
        }
        self.tats.insert(digest, tat);
    }

    /// Removes whatever `digest` holds.
    pub fn remove(&mut self, digest: u128) {
        let digest = Digest::from(digest);
        self.tats.remove(&digest);
        self.map.remove(&digest);
    }
}

/// One shard: its map behind a spin lock (see [`SpinMutex`]: a decision holds it for one probe
/// and one write), on its own cache line.
#[repr(align(128))]
pub(super) struct Shard(SpinMutex<ShardMap>);

impl Default for Shard {
    fn default() -> Self {
        Shard(SpinMutex::new(ShardMap {
            tats: DigestMap::default(),
            map: DigestMap::default(),
            sweep_at: MIN_SWEEP,
        }))
    }
}

impl Shard {
    #[inline]
    pub fn lock(&self) -> SpinlockGuard<'_, ShardMap> {
        self.0.lock()
    }
}
