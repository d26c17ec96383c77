//! `lease_gcra`: gcra decisions per second in lease mode on the Redis store over 10,000 keys,
//! against the ceiling `redis-benchmark` reaches with EVALSHA of the gcra script on the same
//! server (the figure every script-per-decision limiter is bound by), and against the
//! in-process store driven by the same loop (`lease_gcra_vs_memory`, the moonshot: 0.8).
//!
//! * Server, keys and load: as `redis_gcra` (a fresh `redis-server` pinned to CPU 0, 10,000
//!   keys, the driver's default setup of 256 tasks on one tokio worker). Limit: 10,000/s per
//!   key with a burst of 40,000 (every decision admits): a gcra lease lasts at most a quarter
//!   of the burst's capacity, so this burst allows the default 1 s lease (with `redis_gcra`'s
//!   burst of 10,000 it would be 250 ms). Why the lease matters: the reservations a fleet
//!   needs per second are about keys / (0.75 × lease) whatever the traffic (each key's batch
//!   is its rate × 0.75 × lease), 13,000/s here; when the store cannot serve that many,
//!   batches shrink to one unit and lease mode is as slow as exact mode, or slower.
//!   `FLEETGATE_BENCH_LEASE_BURST=N` sets another burst (e.g. 10000).
//! * Ours: one `LeasedLimit` (default settings but `max_batch` 1,000) over a `RedisStore`;
//!   each task awaits `LeasedLimit::decide` over its own permutation of the keys. Most decisions
//!   spend leased units without a store call; refills run in spawned tasks.
//! * In-process: `MemoryStore` through `StoreDriver::rate`, the same tasks and loop.
//! * Every task yields to the scheduler every 64 decisions on both sides (a decision that does
//!   not wait never yields by itself, and refills and the other tasks must run).
//! * Peer: `redis-benchmark -c 50 -P 32` EVALSHA gcra.lua, as in `redis_gcra`; the three run in
//!   alternating rounds. The store calls ours made are read from `INFO commandstats`.

use crate::redis_bench::{
    connection, default_setup, open, pin, pin_apart, redis_benchmark, runtime, setup_from_env, GCRA_LUA, LIMIT, ROUND,
    WARM,
};
use crate::store_memory::{permutation, store_keys, KEYS};
use fleetgate_store::lease::{LeaseSettings, LeasedLimit};
use fleetgate_store::{MemoryStore, RateDecision, RateLimit, StoreDriver, StoreError, StoreKey};
use fleetgate_testkit::RedisServer;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: u32 = 2;
const YIELD_EVERY: u32 = 64;

/// Runs `tasks` tasks calling `decide` over the keys for `measure` after `WARM`; returns
/// (decisions, seconds). Panics on a store error or a denial: neither is a decision here.
async fn drive<D, F>(decide: D, keys: &Arc<Vec<StoreKey>>, tasks: usize, measure: Duration) -> (u64, f64)
where
    D: Fn(StoreKey) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<RateDecision, StoreError>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (decide, keys) = (decide.clone(), keys.clone());
            let (done, stop, failure) = (done.clone(), stop.clone(), failure.clone());
            let order = permutation(keys.len(), 1000 + t as u64);
            tokio::spawn(async move {
                let mut n = 0u32;
                for &i in order.iter().cycle() {
                    n += 1;
                    if n.is_multiple_of(YIELD_EVERY) {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                    match decide(keys[i as usize].clone()).await {
                        Ok(d) if d.allowed => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(d) => {
                            *failure.lock().unwrap() = Some(format!("denied: {d:?}"));
                            return;
                        }
                        Err(e) => {
                            *failure.lock().unwrap() = Some(e.to_string());
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    // Lease mode needs a moment for the batches to follow the rate up (slow start).
    tokio::time::sleep(WARM * 10).await;
    let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(measure).await;
    let (c1, secs) = (done.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("bench task");
    }
    if let Some(e) = failure.lock().unwrap().take() {
        panic!("lease benchmark decision failed: {e}");
    }
    (c1 - c0, secs)
}

fn evalsha_calls(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO commandstats");
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split([':', ',']).find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Returns (lease mode on Redis, redis-benchmark's EVALSHA ceiling, in-process store)
/// decisions per second.
pub fn lease_gcra() -> (f64, f64, f64) {
    let setup = setup_from_env().unwrap_or_else(default_setup);
    let server = RedisServer::start();
    let mut conn = connection(&server);
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(GCRA_LUA)
        .query(&mut conn)
        .expect("SCRIPT LOAD gcra.lua");
    let burst = std::env::var("FLEETGATE_BENCH_LEASE_BURST")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(40_000);
    let limit = RateLimit::parse(fleetgate_store::Algorithm::Gcra, LIMIT, Some(burst)).expect("valid limit");
    let keys = Arc::new(store_keys(KEYS));
    let restore = pin_apart(&server);
    let rt = runtime(setup.workers);
    let redis = rt.block_on(open(&server.url(), setup.pool));
    let settings = LeaseSettings {
        max_batch: 1_000,
        ..Default::default()
    };
    let leased = LeasedLimit::new(limit, settings).expect("gcra leases");
    let memory = MemoryStore::new();

    let probe = redis_benchmark(&server, &sha, &limit, 100_000);
    let n = ((probe * ROUND.as_secs_f64()) as u64).max(100_000);
    let (mut ours, mut peer, mut local) = ((0u64, 0f64), (0u64, 0f64), (0u64, 0f64));
    for _ in 0..ROUNDS {
        let calls0 = evalsha_calls(&mut conn);
        let decided = |s: fleetgate_store::lease::LeaseStats| s.spent_local + s.exact_admitted;
        let decided0 = decided(leased.stats());
        let (l, r) = (leased.clone(), redis.clone());
        let (done, secs) = rt.block_on(drive(
            move |k: StoreKey| {
                let (l, r) = (l.clone(), r.clone());
                async move { l.decide(&r, &k, 1).await }
            },
            &keys,
            setup.tasks,
            ROUND,
        ));
        let calls = evalsha_calls(&mut conn) - calls0;
        let all = decided(leased.stats()) - decided0;
        ours = (ours.0 + done, ours.1 + secs);
        eprintln!(
            "lease_gcra round: lease mode {:.0}/s, {:.1} decisions per store call (warm-up included)",
            done as f64 / secs,
            all as f64 / calls.max(1) as f64
        );

        let m = memory.clone();
        let (done, secs) = rt.block_on(drive(
            move |k: StoreKey| {
                let m = m.clone();
                async move { m.rate(&k, &limit, 1).await }
            },
            &keys,
            setup.tasks,
            ROUND,
        ));
        local = (local.0 + done, local.1 + secs);
        eprintln!("lease_gcra round: in-process store {:.0}/s", done as f64 / secs);

        let rps = redis_benchmark(&server, &sha, &limit, n);
        peer = (peer.0 + n, peer.1 + n as f64 / rps);
        eprintln!("lease_gcra round: redis-benchmark {rps:.0}/s");
    }
    let stats = leased.stats();
    eprintln!("lease_gcra: {stats:?} ({setup:?})");
    drop(redis);
    drop(rt);
    if let Some(all) = restore {
        pin(std::process::id(), &all);
    }
    (ours.0 as f64 / ours.1, peer.0 as f64 / peer.1, local.0 as f64 / local.1)
}
