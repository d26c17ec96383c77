//! One in-process gcra decision against governor's keyed check, on one thread.
//!
//! Both walk the same pseudo-random order over 10,000 keys. Ours: `MemoryStore` through the seam
//! (`StoreDriver::rate`, ready at once, polled with `now_or_never`), keys built once with
//! `Keyspace::key`. Governor: `DefaultKeyedRateLimiter<u64>` keyed by the key's index (its
//! cheapest key). Both limits are 10,000/s with a burst of 10,000, never exhausted here, so every
//! decision admits and writes state. `scripts/bench store` measures the same on 1 and 2 threads.

use criterion::{criterion_group, criterion_main, Criterion};
use fleetgate_store::{Concern, Keyspace, MemoryStore, RateLimit, StoreDriver};
use futures_util::FutureExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::hint::black_box;
use std::num::NonZeroU32;

const KEYS: usize = 10_000;

fn order() -> Vec<usize> {
    let mut order: Vec<usize> = (0..KEYS).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..KEYS).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

fn gcra_keyed(c: &mut Criterion) {
    let ks = Keyspace::new("bench").unwrap();
    let keys: Vec<_> = (0..KEYS)
        .map(|i| ks.key(Concern::RateLimit, "gcra", format!("client-{i}").as_bytes()))
        .collect();
    let ids: Vec<u64> = (0..KEYS as u64).collect();
    let order = order();

    let mut group = c.benchmark_group("gcra_keyed_1t");
    let store = MemoryStore::new();
    let limit = RateLimit::gcra("10000/1s").unwrap();
    let mut next = 0;
    group.bench_function("fleetgate_memory", |b| {
        b.iter(|| {
            let i = order[next];
            next = (next + 1) % KEYS;
            let d = store.rate(&keys[i], &limit, 1).now_or_never().unwrap().unwrap();
            black_box(d.allowed)
        })
    });

    let governor: DefaultKeyedRateLimiter<u64> =
        RateLimiter::keyed(Quota::per_second(NonZeroU32::new(10_000).unwrap()));
    let mut next = 0;
    group.bench_function("governor_keyed_u64", |b| {
        b.iter(|| {
            let i = order[next];
            next = (next + 1) % KEYS;
            black_box(governor.check_key(&ids[i]).is_ok())
        })
    });
    group.finish();
}

criterion_group!(benches, gcra_keyed);
criterion_main!(benches);
