//! `redis_gcra`: Redis-driver gcra decisions per second over 10,000 keys, against the ceiling
//! `redis-benchmark` reaches with EVALSHA of the same script on the same server.
//!
//! * Server: a fresh `redis-server` on a free loopback port (`fleetgate_testkit::RedisServer`).
//! * Ours: `RedisStore` (timeout 1 s) driven by many concurrent tasks on a multi-thread tokio
//!   runtime, each awaiting one `StoreDriver::rate` at a time over its own permutation of the
//!   keys. The defaults come from `fleetgate-bench redis-sweep` (see [`default_setup`]).
//! * Peer: `redis-benchmark -c 50 -P 32 -r 10000` sending `EVALSHA <sha of gcra.lua> 1
//!   bench:rate:gcra:{__rand_int__} ...` with the arguments our driver sends, after `SCRIPT LOAD`
//!   of the very file the driver compiles in. Its key is the same shape as ours with a 12-digit
//!   number where ours has a 32-hex-digit hash.
//! * Limit: 10,000/s per key, burst 10,000 (the in-process bench's): never exhausted at these
//!   rates, so every call runs the script's admitting path (TIME, GET, SET PX).
//! * Both sides run in alternating rounds; `INFO commandstats` is read around every round to
//!   check that each counted request was an EVALSHA the server executed without error.

use crate::store_memory::{permutation, store_keys, KEYS};
use fleetgate_store::{RateLimit, RedisOptions, RedisStore, StoreDriver, StoreKey};
use fleetgate_testkit::RedisServer;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// As the driver loads it: the shared clock prelude, then the script (the prelude defines
// `decision_now`; the bare file fails with "nonexistent global variable").
pub(crate) const GCRA_LUA: &str = concat!(
    include_str!("../../fleetgate-store/src/redis/scripts/now.lua"),
    include_str!("../../fleetgate-store/src/redis/scripts/gcra.lua")
);
pub(crate) const LIMIT: &str = "10000/1s";
const ROUNDS: u32 = 2;
pub(crate) const ROUND: Duration = Duration::from_millis(1250);
pub(crate) const WARM: Duration = Duration::from_millis(300);

/// How the driver is loaded.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// tokio worker threads.
    pub workers: usize,
    /// `RedisOptions::pool_size`: multiplexed connections.
    pub pool: usize,
    /// Concurrent tasks, each with one decision in flight.
    pub tasks: usize,
}

/// The driver's best setup on the 2-core machine, chosen with `fleetgate-bench redis-sweep` and
/// repeated `FLEETGATE_BENCH_REDIS=W,P,T scripts/bench store` runs (ratios to redis-benchmark):
/// * one multiplexed connection (`pool_size: 1`) with 256 tasks in flight: 0.94–0.99;
///   64 tasks: 0.57–0.90; 512 tasks: 0.94–1.0 (no better than 256);
/// * `pool_size: 2` measured 0.94–0.96 with one worker but 0.62–0.79 with two: more
///   connections only split the same traffic into smaller pipelined writes;
/// * tokio workers: redis-server needs a whole core, so a client worker per remaining core
///   (one here) was steady; a second worker (2,1,256) swung between 0.64 and 1.0 as the
///   scheduler put it on redis-server's core.
pub fn default_setup() -> Setup {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Setup {
        workers: cores.saturating_sub(1).max(1),
        pool: 1,
        tasks: 256,
    }
}

/// `FLEETGATE_BENCH_REDIS=WORKERS,POOL,TASKS` overrides [`default_setup`] (for tuning).
pub(crate) fn setup_from_env() -> Option<Setup> {
    let text = std::env::var("FLEETGATE_BENCH_REDIS").ok()?;
    let v: Vec<usize> = text.split(',').map(|p| p.trim().parse().ok()).collect::<Option<_>>()?;
    match v[..] {
        [workers, pool, tasks] if workers > 0 && pool > 0 && tasks > 0 => Some(Setup { workers, pool, tasks }),
        _ => panic!("FLEETGATE_BENCH_REDIS={text:?}: expected WORKERS,POOL,TASKS"),
    }
}

pub(crate) fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub(crate) async fn open(url: &str, pool: usize) -> RedisStore {
    let options = RedisOptions {
        pool_size: pool,
        timeout: Duration::from_secs(1),
        ..Default::default()
    };
    RedisStore::connect(url, options)
        .await
        .expect("connect to the benchmark redis-server")
}

/// Drives `store` with `tasks` concurrent tasks; returns decisions per second measured over
/// `measure` after `warm`. Panics on any store error: a failed call is not a decision.
async fn drive(
    store: &RedisStore,
    keys: &Arc<Vec<StoreKey>>,
    limit: RateLimit,
    tasks: usize,
    measure: Duration,
) -> (u64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (store, keys) = (store.clone(), keys.clone());
            let (done, stop, failure) = (done.clone(), stop.clone(), failure.clone());
            let order = permutation(keys.len(), 1000 + t as u64);
            tokio::spawn(async move {
                for &i in order.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match store.rate(&keys[i as usize], &limit, 1).await {
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
    tokio::time::sleep(WARM).await;
    let (c0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(measure).await;
    let (c1, secs) = (done.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("bench task");
    }
    if let Some(e) = failure.lock().unwrap().take() {
        panic!("redis driver call failed during the benchmark: {e}");
    }
    (c1 - c0, secs)
}

pub(crate) fn connection(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the benchmark redis-server")
}

/// (calls, rejected + failed calls) of EVALSHA so far.
fn evalsha_stats(conn: &mut redis::Connection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO commandstats");
    let Some(line) = info.lines().find(|l| l.starts_with("cmdstat_evalsha:")) else {
        return (0, 0);
    };
    let field = |name: &str| -> u64 {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("rejected_calls") + field("failed_calls"))
}

/// Sets the CPU affinity of `pid` (all its threads) with `taskset`; false if that failed.
pub(crate) fn pin(pid: u32, cpus: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Gives redis-server the first CPU and this process (the driver, and redis-benchmark, which
/// inherits it) the others, as when they run on separate machines: left to the scheduler on 2
/// cores, the client sometimes shares redis-server's core and both figures swing by 40%.
/// Returns the affinity to restore, if pinned.
pub(crate) fn pin_apart(server: &RedisServer) -> Option<String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pid = server.pid()?;
    if cores < 2 {
        return None;
    }
    let all = format!("0-{}", cores - 1);
    let client = format!("1-{}", cores - 1);
    if pin(pid, "0") && pin(std::process::id(), &client) {
        eprintln!("redis_gcra: redis-server on CPU 0, client and redis-benchmark on CPU {client}");
        Some(all)
    } else {
        eprintln!("redis_gcra: could not pin with taskset (util-linux); running unpinned");
        None
    }
}

/// CPU seconds (user + system) this process has used so far.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds (user + system) the server has used so far.
fn server_cpu(conn: &mut redis::Connection) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query(conn).expect("INFO cpu");
    info.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            matches!(k, "used_cpu_sys" | "used_cpu_user").then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// Runs redis-benchmark for `n` requests; returns its requests per second.
pub(crate) fn redis_benchmark(server: &RedisServer, sha: &str, limit: &RateLimit, n: u64) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["-c", "50", "-P", "32", "-r", &KEYS.to_string()])
        .args(["-n", &n.to_string(), "--csv"])
        .args(["EVALSHA", sha, "1", "bench:rate:gcra:{__rand_int__}"])
        .arg(limit.interval_us().to_string())
        .arg(limit.capacity().to_string())
        .arg("1")
        .arg(limit.period_us().to_string())
        .output()
        .unwrap_or_else(|e| panic!("run redis-benchmark ({e}); install it with: apt-get install -y redis-tools"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "redis-benchmark failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // --csv: a header line, then `"EVALSHA ...","<rps>","<avg ms>",...`.
    stdout
        .lines()
        .filter(|l| l.starts_with("\"EVALSHA"))
        .find_map(|l| {
            let fields: Vec<&str> = l.split("\",\"").collect();
            fields.get(1)?.trim_matches('"').parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("no EVALSHA figure in redis-benchmark output: {stdout}"))
}

/// Returns (ours, redis-benchmark's) decisions per second.
pub fn gcra() -> (f64, f64) {
    let setup = setup_from_env().unwrap_or_else(default_setup);
    let server = RedisServer::start();
    let mut conn = connection(&server);
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(GCRA_LUA)
        .query(&mut conn)
        .expect("SCRIPT LOAD gcra.lua");
    let limit = RateLimit::gcra(LIMIT).expect("valid limit");
    let keys = Arc::new(store_keys(KEYS));
    let restore = pin_apart(&server);
    let rt = runtime(setup.workers);
    let store = rt.block_on(open(&server.url(), setup.pool));

    // Calibrate redis-benchmark's request count to last about one round.
    let probe = redis_benchmark(&server, &sha, &limit, 100_000);
    let n = ((probe * ROUND.as_secs_f64()) as u64).max(100_000);

    let (mut ours_n, mut ours_secs, mut peer_n, mut peer_secs) = (0u64, 0f64, 0u64, 0f64);
    for _ in 0..ROUNDS {
        let (calls0, bad0) = evalsha_stats(&mut conn);
        let cpu0 = server_cpu(&mut conn);
        let own0 = own_cpu();
        let (done, secs) = rt.block_on(drive(&store, &keys, limit, setup.tasks, ROUND));
        let (calls1, bad1) = evalsha_stats(&mut conn);
        let cpu1 = server_cpu(&mut conn);
        let own1 = own_cpu();
        assert_eq!(bad1, bad0, "the server refused or failed EVALSHA calls");
        assert!(calls1 - calls0 >= done, "fewer EVALSHA calls than decisions");
        ours_n += done;
        ours_secs += secs;
        eprintln!(
            "redis_gcra round: fleetgate {:.0}/s, server CPU {:.2} us per call, client CPU {:.2} us per decision",
            done as f64 / secs,
            (cpu1 - cpu0) * 1e6 / (calls1 - calls0) as f64,
            (own1 - own0) * 1e6 / (calls1 - calls0) as f64
        );

        let rps = redis_benchmark(&server, &sha, &limit, n);
        let (calls2, bad2) = evalsha_stats(&mut conn);
        let cpu2 = server_cpu(&mut conn);
        assert_eq!(bad2, bad1, "redis-benchmark's EVALSHA calls were refused or failed");
        // It counts the first n replies; the last pipelines may carry up to 50 × 32 more.
        assert!(calls2 - calls1 >= n, "redis-benchmark ran fewer than {n} EVALSHA calls");
        peer_n += n;
        peer_secs += n as f64 / rps;
        eprintln!(
            "redis_gcra round: redis-benchmark {rps:.0}/s, server CPU {:.2} us per call",
            (cpu2 - cpu1) * 1e6 / (calls2 - calls1) as f64
        );
    }
    eprintln!(
        "redis_gcra: fleetgate {ours_n} decisions in {ours_secs:.2}s ({setup:?}), redis-benchmark {peer_n} in {peer_secs:.2}s"
    );
    drop(store);
    drop(rt);
    if let Some(all) = restore {
        pin(std::process::id(), &all);
    }
    (ours_n as f64 / ours_secs, peer_n as f64 / peer_secs)
}

/// Tries a grid of setups for the driver (one redis-server, 1 s each) and prints the figures.
pub fn sweep() {
    let server = RedisServer::start();
    let limit = RateLimit::gcra(LIMIT).expect("valid limit");
    let keys = Arc::new(store_keys(KEYS));
    let mut conn = connection(&server);
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(GCRA_LUA)
        .query(&mut conn)
        .expect("SCRIPT LOAD gcra.lua");
    let ceiling = redis_benchmark(&server, &sha, &limit, 200_000);
    eprintln!("redis-benchmark ceiling: {ceiling:.0} decisions/s");
    for workers in [1, 2] {
        let rt = runtime(workers);
        for pool in [1, 2, 4] {
            let store = rt.block_on(open(&server.url(), pool));
            for tasks in [16, 64, 256, 1024] {
                let (n, secs) = rt.block_on(drive(&store, &keys, limit, tasks, Duration::from_secs(1)));
                let rate = n as f64 / secs;
                eprintln!(
                    "workers {workers} pool {pool} tasks {tasks}: {rate:.0} decisions/s ({:.3} of ceiling)",
                    rate / ceiling
                );
            }
        }
    }
}
