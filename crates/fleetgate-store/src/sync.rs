//! What every worker thread touches on every decision: a spin lock, counters striped per
//! thread, and a map keyed by already-uniform key digests.
//!
//! These exist because a decision is a few nanoseconds of work on state shared by all workers:
//! a parking mutex's release is a second atomic read-modify-write (a fifth of an in-process
//! decision's cost when measured), a counter every thread adds to moves its cache line between
//! cores on every request, and SipHash of a digest that xxh3 already spread is wasted work.

use spinning_top::{guard::SpinlockGuard, Spinlock};
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A spin lock. A decision holds it for a few nanoseconds; a waiter that has spun for a while
/// yields its thread to the OS, so a holder that was preempted (or one sweeping a large map) is
/// not fought for a whole time slice. Not padded: what every worker locks on every decision (a
/// shard) puts itself on its own cache line with `#[repr(align(128))]`; one per key would not
/// be worth the memory.
#[derive(Default)]
pub(crate) struct SpinMutex<T>(Spinlock<T>);

/// Spins before a waiter starts yielding its thread.
const SPINS_BEFORE_YIELD: u32 = 64;

impl<T> SpinMutex<T> {
    pub fn new(value: T) -> Self {
        SpinMutex(Spinlock::new(value))
    }

    #[inline]
    pub fn lock(&self) -> SpinlockGuard<'_, T> {
        if let Some(guard) = self.0.try_lock() {
            return guard;
        }
        self.lock_contended()
    }

    #[cold]
    fn lock_contended(&self) -> SpinlockGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            // Wait with plain reads (no cache-line ownership taken) until the lock looks free.
            while self.0.is_locked() {
                if spins < SPINS_BEFORE_YIELD {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if let Some(guard) = self.0.try_lock() {
                return guard;
            }
        }
    }
}

/// Stripes of a [`StripedCounter`]: threads beyond this many share stripes (still correct).
const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// A counter each thread adds to on its own cache line; a read sums the stripes.
#[derive(Default)]
pub(crate) struct StripedCounter([Stripe; STRIPES]);

impl StripedCounter {
    #[inline]
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0[stripe()].0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// This thread's stripe, assigned round-robin the first time it counts.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

/// A key's 128-bit digest as two words: 8-byte aligned (a `u128` is 16-byte aligned, which would
/// pad a gcra slot from 24 to 32 bytes). Only the low word is hashed: the digest is already
/// uniform (xxh3-128), and the high word picks the shard.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest {
    lo: u64,
    hi: u64,
}

impl From<u128> for Digest {
    #[inline]
    fn from(d: u128) -> Self {
        Digest {
            lo: d as u64,
            hi: (d >> 64) as u64,
        }
    }
}

impl std::hash::Hash for Digest {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.lo);
    }
}

/// Keys are already uniformly hashed, so the map's hasher only passes the digest's low word on.
#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub(crate) type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<DigestHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_sums_every_thread() {
        let c = std::sync::Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(i + 1);
                    }
                    c.add(0);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 1000 * (1..=20).sum::<u64>());
    }

    #[test]
    fn spin_mutex_excludes() {
        let m = std::sync::Arc::new(SpinMutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*m.lock(), 40_000);
    }

    #[test]
    fn digest_map_keys_by_the_whole_digest() {
        let mut m = DigestMap::default();
        // Same low word, different high words: two keys.
        m.insert(Digest::from(1u128), "a");
        m.insert(Digest::from(1u128 | (7u128 << 64)), "b");
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&Digest::from(1u128)), Some(&"a"));
    }
}
