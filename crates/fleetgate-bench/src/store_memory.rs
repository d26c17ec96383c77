//! `memory_gcra_keyed_{1,2}t`: in-process gcra decisions per second over 10,000 keys, against
//! governor's keyed limiter on the same keys and thread count.
//!
//! * Ours: `MemoryStore` called through the seam the gateway uses, `StoreDriver::rate`, whose
//!   future is ready at once and is polled with `now_or_never`. Keys are `StoreKey`s built once
//!   with `Keyspace::key` outside the timed loop (as the gateway builds one per request before it
//!   asks; that cost is not part of the decision).
//! * Peer: `governor::DefaultKeyedRateLimiter<u64>` (DashMap state, quanta clock), keyed by the
//!   key's index as a `u64`: the cheapest key governor can have, so the comparison does not
//!   charge governor for hashing strings.
//! * Limit: 10,000/s per key with a burst of 10,000 on both. At the rates reached here (about ten
//!   to fifteen million decisions per second spread over 10,000 keys, so one or two thousand per
//!   key per second) the quota is never exhausted: every decision is an admission that writes state,
//!   on both sides. The bench checks this and aborts if any decision was a denial.
//! * Each thread walks its own fixed pseudo-random permutation of the keys; ours and the peer
//!   get the same permutations. Ours and the peer run in alternating slices so that noise from
//!   other work on the machine falls on both alike.

use fleetgate_store::{Concern, Keyspace, MemoryStore, RateLimit, StoreDriver, StoreKey};
use futures_util::FutureExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

pub const KEYS: usize = 10_000;
/// Per-key limit (both limiters): 10,000 per second, burst 10,000.
const PER_SECOND: u32 = 10_000;
/// Alternating slices per side; each side gets SLICES × SLICE of measured time.
const SLICES: u32 = 5;
const SLICE: Duration = Duration::from_millis(500);
/// Decisions between two looks at the stop flag.
const BATCH: usize = 256;

/// A pseudo-random permutation of 0..n (xorshift Fisher–Yates), fixed by `seed`.
pub fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// The benchmark keys, built once: the same identifiers for every driver.
pub fn store_keys(n: usize) -> Vec<StoreKey> {
    let ks = Keyspace::new("bench").expect("valid prefix");
    (0..n as u64)
        .map(|i| ks.key(Concern::RateLimit, "gcra", format!("client-{i}").as_bytes()))
        .collect()
}

/// Runs `work` on `threads` threads for `slice`; returns (decisions, admissions, seconds).
fn timed<W>(threads: usize, slice: Duration, work: &W) -> (u64, u64, f64)
where
    W: Fn(usize, &AtomicBool) -> (u64, u64) + Sync,
{
    let stop = AtomicBool::new(false);
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, barrier) = (&stop, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    work(t, stop)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(slice);
        stop.store(true, Ordering::Relaxed);
        let mut total = (0, 0);
        for h in handles {
            let (n, ok) = h.join().expect("bench thread");
            total.0 += n;
            total.1 += ok;
        }
        (total.0, total.1, start.elapsed().as_secs_f64())
    })
}

/// Returns (ours, governor's) decisions per second with `threads` OS threads.
pub fn gcra_keyed(threads: usize) -> (f64, f64) {
    let keys = store_keys(KEYS);
    let ids: Vec<u64> = (0..KEYS as u64).collect();
    let orders: Vec<Vec<u32>> = (0..threads).map(|t| permutation(KEYS, t as u64 + 1)).collect();

    let store = MemoryStore::new();
    let limit = RateLimit::gcra(&format!("{PER_SECOND}/1s")).expect("valid limit");
    let quota = Quota::per_second(NonZeroU32::new(PER_SECOND).expect("non-zero"));
    // Keyed by u64; see the module comment.
    let governor: DefaultKeyedRateLimiter<u64> = RateLimiter::keyed(quota);

    let ours = |t: usize, stop: &AtomicBool| {
        let order = &orders[t];
        let (mut n, mut ok) = (0u64, 0u64);
        loop {
            for chunk in order.chunks(BATCH) {
                for &i in chunk {
                    let d = store
                        .rate(&keys[i as usize], &limit, 1)
                        .now_or_never()
                        .expect("the in-process store decides at once")
                        .expect("in-process gcra decision");
                    ok += u64::from(d.allowed);
                }
                n += chunk.len() as u64;
                if stop.load(Ordering::Relaxed) {
                    return (n, ok);
                }
            }
        }
    };
    let peer = |t: usize, stop: &AtomicBool| {
        let order = &orders[t];
        let (mut n, mut ok) = (0u64, 0u64);
        loop {
            for chunk in order.chunks(BATCH) {
                for &i in chunk {
                    ok += u64::from(governor.check_key(&ids[i as usize]).is_ok());
                }
                n += chunk.len() as u64;
                if stop.load(Ordering::Relaxed) {
                    return (n, ok);
                }
            }
        }
    };

    // Warm-up: every key present in both, code and caches warm.
    let warm = Duration::from_millis(200);
    timed(threads, warm, &ours);
    timed(threads, warm, &peer);

    let mut totals = [(0u64, 0u64, 0f64); 2];
    for _ in 0..SLICES {
        for (side, work) in [&ours as &(dyn Fn(usize, &AtomicBool) -> (u64, u64) + Sync), &peer]
            .into_iter()
            .enumerate()
        {
            let (n, ok, secs) = timed(threads, SLICE, &work);
            totals[side].0 += n;
            totals[side].1 += ok;
            totals[side].2 += secs;
        }
    }
    for (name, (n, ok, _)) in ["fleetgate", "governor"].iter().zip(totals) {
        assert_eq!(
            n,
            ok,
            "{name}: {} of {n} decisions were denials; the limit must never be exhausted here",
            n - ok
        );
    }
    let rate = |(n, _, secs): (u64, u64, f64)| n as f64 / secs;
    eprintln!(
        "memory_gcra_keyed_{threads}t: fleetgate {} decisions in {:.2}s, governor {} in {:.2}s",
        totals[0].0, totals[0].2, totals[1].0, totals[1].2
    );
    (rate(totals[0]), rate(totals[1]))
}
