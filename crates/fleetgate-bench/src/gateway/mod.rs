//! `scripts/bench gateway`: fleetgate as a rate-limiting reverse proxy against nginx, on
//! loopback, in one run.
//!
//! One upstream for everything: an nginx answering `200 ok` (2 bytes), one worker, started here
//! with its own prefix and config (never the system's nginx service).
//!
//! * `gateway_memory_limit`: wrk req/s through fleetgate with one rate limit (`key: ip`,
//!   100000000/100s: never reached) on the in-process store. Peer: nginx as a reverse proxy to
//!   the same upstream with `limit_req` on (never reached), keep-alive to the upstream,
//!   access_log off.
//! * `gateway_redis_limit`: the same with `store.url` on a redis-server started here (every other
//!   store setting at its default). Every round is checked: fleetgate allowed at least as many
//!   requests as wrk counted and counted no store error and no local fallback, so every request
//!   was decided by Redis. Every request has the same key (one client address): concurrent
//!   decisions go to Redis in hot-key batches (`store.rate_batch_max`), and the log prints the
//!   decisions per EVALSHA.
//! * `gateway_p99_added_ms`: p99 latency through fleetgate (in-process store) minus p99 calling
//!   the upstream directly, both at half of fleetgate's `gateway_memory_limit` rate, with the
//!   open-loop generator in [`openloop`] (latency from the due time: coordinated omission
//!   counted), 64 connections, `OPEN_ROUNDS` rounds of 3.5 s per target in rotated order (the
//!   first 0.5 s of each not counted); each p99 is the median of the rounds' p99s. nginx is run
//!   the same way and printed to stderr, for scale.
//! * `gateway_store_outage_p99_ms` and `gateway_store_outage_opening_max_ms`: fleetgate on a
//!   Redis store (`timeout_ms: 50`, limit with `on_store_error: local`) at a fixed 1000 req/s
//!   while that redis-server is SIGSTOPped: the p99 of the requests due once the store breaker
//!   has opened, and the worst latency of those due between the pause and the opening.
//!
//! wrk: `-t2 -c64`, 1 s warm-up per target, then `ROUNDS` rounds of 5 s; in each round every
//! target runs once, in an order rotated from round to round, so that background noise falls on
//! all of them alike. Each throughput is the **median** of its rounds. Every round also prints
//! the CPU time (user and system, from /proc) the proxy under test spent per request, and on the
//! Redis side redis-server's: where a lower throughput comes from. A round in which wrk saw a
//! non-2xx answer or a socket error, or in which the in-process side decided fewer requests
//! than wrk counted, aborts the bench.
//!
//! Each proxy accepts as it does by default: fleetgate one SO_REUSEPORT listener per worker,
//! nginx one shared listener.
//!
//! CPU placement (`FLEETGATE_BENCH_GATEWAY_CPUS`), the same for fleetgate and nginx:
//! * `shared` (default): nothing pinned. Both proxies run one worker per core (2 on the 2-core
//!   machine: `FLEETGATE_WORKERS=2`, `worker_processes 2`), as each would by default in
//!   production, and share both cores with wrk (2 threads), the upstream and redis-server under
//!   the scheduler. The figure is what the whole machine serves; a proxy that needs less CPU
//!   per request leaves more to wrk and the upstream, which is part of what is compared.
//! * `split`: the proxy under test alone on CPU 1 with one worker (`FLEETGATE_WORKERS=1`,
//!   `worker_processes 1`); wrk, the upstream, redis-server and this process (the open-loop
//!   generator) on CPU 0. Per-core cost of the proxy, provided CPU 0 keeps up (the log prints
//!   the direct upstream rate from CPU 0 for comparison).

mod cache;
mod h2load;
mod openloop;
mod payment;
mod procs;
mod tls;
mod upstream;
mod wrk;

pub use cache::run as run_cache;
pub use payment::run as run_payment;
pub use upstream::run as run_upstream;

use crate::redis_bench::pin;
use crate::report;
use fleetgate_testkit::{free_port, RedisServer};
use procs::{loopback, Fleetgate, FleetgateSetup, Nginx, Scratch};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(5);
const WARM: Duration = Duration::from_secs(1);
/// Open-loop rounds per target (rotated order) and their length; the first `OPEN_WARM` of each
/// is not counted. The figure is the median of the rounds' p99s.
const OPEN_ROUNDS: usize = 5;
const OPEN_ROUND: Duration = Duration::from_millis(3500);
const OPEN_WARM: Duration = Duration::from_millis(500);
const OPEN_CONNECTIONS: usize = 64;
/// Outage: fixed rate, store timeout, when the pause starts and how long the run lasts.
const OUTAGE_RATE: f64 = 1000.0;
const OUTAGE_TIMEOUT_MS: u64 = 50;
const OUTAGE_PAUSE_AT: Duration = Duration::from_millis(1500);
const OUTAGE_RUN: Duration = Duration::from_millis(5500);
/// The breaker counts as open from the first request due after the pause that starts a run of
/// this many consecutive requests each answered in under half the store timeout.
const OPEN_RUN: usize = 20;

/// The peer, after nginx's version.
const PEER: &str = "proxy_pass, limit_req (never reached), keepalive 64 to the upstream";

/// `nginx/1.22.1`, from `nginx -v`.
fn nginx_version() -> String {
    std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stderr).into_owned();
            Some(text.trim().strip_prefix("nginx version: ")?.to_string())
        })
        .unwrap_or_else(|| "nginx".to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Placement {
    Shared,
    Split,
}

pub(crate) struct Cpus {
    placement: Placement,
    /// Affinity of the proxy under test (fleetgate or nginx).
    proxy: Option<&'static str>,
    /// Affinity of wrk, the upstream, redis-server and this process.
    load: Option<&'static str>,
    /// Workers of each proxy.
    workers: usize,
}

fn cpus() -> Cpus {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placement = match std::env::var("FLEETGATE_BENCH_GATEWAY_CPUS").as_deref() {
        Err(_) | Ok("") | Ok("shared") => Placement::Shared,
        Ok("split") => Placement::Split,
        Ok(other) => panic!("FLEETGATE_BENCH_GATEWAY_CPUS={other:?}: expected shared or split"),
    };
    match placement {
        Placement::Shared => Cpus {
            placement,
            proxy: None,
            load: None,
            workers: cores,
        },
        Placement::Split => {
            assert!(cores >= 2, "FLEETGATE_BENCH_GATEWAY_CPUS=split needs 2 CPUs");
            Cpus {
                placement,
                proxy: Some("1"),
                load: Some("0"),
                workers: 1,
            }
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The peer of `scripts/bench upstream` and `payment`: fleetgate on the Redis store at
/// `redis_url` with the never-reached limit (`gateway_redis_limit`'s setup).
fn start_redis_limit(bin: &Path, scratch: &Scratch, redis_url: &str, upstream_port: u16, cpus: &Cpus) -> Fleetgate {
    let setup = FleetgateSetup {
        name: "fleetgate-redis-limit",
        store_url: redis_url.to_string(),
        store_extra: "",
        limit_extra: "",
        limit: None,
        workers: cpus.workers,
    };
    Fleetgate::start(bin, scratch, &setup, upstream_port, cpus.proxy)
}

fn start_redis(cpus: &Cpus) -> RedisServer {
    let redis = RedisServer::start();
    if let (Some(load), Some(pid)) = (cpus.load, redis.pid()) {
        assert!(pin(pid, load), "taskset -a -p -c {load} {pid} failed");
    }
    redis
}

const MEMORY: usize = 0;
const NGINX: usize = 1;
const REDIS: usize = 2;
/// fleetgate on the Redis store with the limit in `mode: lease`.
const LEASE: usize = 3;
/// fleetgate on the Redis store with live events on and one SSE subscriber reading them
/// (`gateway_redis_events`, against [`REDIS`], whose events are off).
const EVENTS: usize = 4;
/// Present when `FLEETGATE_BENCH_BASELINE` names an earlier fleetgate binary: it runs the
/// in-process-store setup beside the binary under test, so a change's cost is a ratio from one
/// run (`gateway_memory_limit_vs_baseline`).
const BASELINE: usize = 5;
const SIDES: [&str; 6] = [
    "fleetgate (memory store)",
    "nginx",
    "fleetgate (redis store)",
    "fleetgate (redis store, lease mode)",
    "fleetgate (redis store, events on, one subscriber)",
    "fleetgate baseline (memory store)",
];

pub fn run(fleetgate_bin: &Path) -> ExitCode {
    let cpus = cpus();
    if let Some(load) = cpus.load {
        assert!(pin(std::process::id(), load), "taskset could not pin this process");
    }
    eprintln!(
        "gateway: placement {:?}: proxies {} with {} worker(s) each; wrk, upstream, redis-server, generator {}",
        cpus.placement,
        cpus.proxy.map_or("unpinned".to_string(), |c| format!("on CPU {c}")),
        cpus.workers,
        cpus.load.map_or("unpinned".to_string(), |c| format!("on CPU {c}")),
    );
    let scratch = Scratch::new();
    let upstream = Nginx::upstream(&scratch, free_port(), cpus.load);
    let peer_h2_port = free_port();
    let peer = Nginx::proxy(
        &scratch,
        free_port(),
        peer_h2_port,
        upstream.port,
        cpus.workers,
        cpus.proxy,
    );
    let redis = start_redis(&cpus);
    let memory_setup = FleetgateSetup {
        name: "fleetgate-memory",
        store_url: "memory://".into(),
        store_extra: "",
        limit_extra: "",
        limit: None,
        workers: cpus.workers,
    };
    let redis_setup = FleetgateSetup {
        name: "fleetgate-redis",
        store_url: redis.url(),
        store_extra: "",
        limit_extra: "",
        limit: None,
        workers: cpus.workers,
    };
    let fg_memory = Fleetgate::start(fleetgate_bin, &scratch, &memory_setup, upstream.port, cpus.proxy);
    let fg_redis = Fleetgate::start(fleetgate_bin, &scratch, &redis_setup, upstream.port, cpus.proxy);
    let lease_setup = FleetgateSetup {
        name: "fleetgate-redis-lease",
        store_url: redis.url(),
        store_extra: "",
        limit_extra: "mode: lease",
        limit: None,
        workers: cpus.workers,
    };
    let fg_lease = Fleetgate::start(fleetgate_bin, &scratch, &lease_setup, upstream.port, cpus.proxy);
    let events_setup = FleetgateSetup {
        name: "fleetgate-redis-events",
        store_url: redis.url(),
        store_extra: "key_prefix: bench-events",
        limit_extra: "",
        limit: None,
        workers: cpus.workers,
    };
    let fg_events = Fleetgate::start_with(
        fleetgate_bin,
        &scratch,
        &events_setup,
        upstream.port,
        cpus.proxy,
        procs::EVENTS_ON,
    );
    let subscriber = fg_events.subscribe_events();
    let baseline_bin = std::env::var_os("FLEETGATE_BENCH_BASELINE").filter(|v| !v.is_empty());
    let baseline_setup = FleetgateSetup {
        name: "fleetgate-baseline",
        ..memory_setup
    };
    let fg_baseline = baseline_bin.as_ref().map(|bin| {
        let bin = Path::new(bin);
        assert!(
            bin.is_file(),
            "FLEETGATE_BENCH_BASELINE={}: no such file",
            bin.display()
        );
        Fleetgate::start(bin, &scratch, &baseline_setup, upstream.port, cpus.proxy)
    });
    let mut ports = vec![fg_memory.port, peer.port, fg_redis.port, fg_lease.port, fg_events.port];
    ports.extend(fg_baseline.as_ref().map(|b| b.port));
    let sides = ports.len();
    eprintln!(
        "gateway: fleetgate pids: memory store {}, redis store {} (for perf -p)",
        fg_memory.pid(),
        fg_redis.pid()
    );

    // Throughput: warm-up, then rotated rounds.
    let direct = wrk::run(upstream.port, WARM, cpus.load);
    eprintln!("gateway: upstream direct (warm-up, {WARM:?}): {:.0} req/s", direct.rps);
    for (side, port) in ports.iter().enumerate() {
        let w = wrk::run(*port, WARM, cpus.load);
        eprintln!("gateway: warm-up {}: {:.0} req/s", SIDES[side], w.rps);
    }
    // CPU per request of the proxy under test (and of redis-server on the Redis side), from
    // /proc: where a lower throughput comes from.
    let mut proxy_pids = vec![
        vec![fg_memory.pid()],
        peer.pids(),
        vec![fg_redis.pid()],
        vec![fg_lease.pid()],
        vec![fg_events.pid()],
    ];
    proxy_pids.extend(fg_baseline.as_ref().map(|b| vec![b.pid()]));
    let redis_pid: Vec<u32> = redis.pid().into_iter().collect();
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); sides];
    let mut cpu_us: Vec<Vec<f64>> = vec![Vec::new(); sides];
    for round in 0..ROUNDS {
        for k in 0..sides {
            let side = (round + k) % sides;
            let allowed = |fg: &Fleetgate| fg.metric_sum("fleetgate_rate_limit_decisions_total", "outcome=\"allowed\"");
            let before = match (side, &fg_baseline) {
                (BASELINE, Some(b)) => allowed(b) as u64,
                (LEASE, _) => allowed(&fg_lease) as u64,
                _ => 0,
            } + match side {
                MEMORY => allowed(&fg_memory) as u64,
                REDIS => allowed(&fg_redis) as u64,
                EVENTS => subscriber.received(),
                _ => 0,
            };
            let events_dropped_before = fg_events.metric_sum("fleetgate_events_dropped_total", "");
            let errors_before = fg_redis.metric_sum("fleetgate_store_errors_total", "");
            let fallback_before = fg_redis.metric_sum("fleetgate_rate_limit_decisions_total", "outcome=\"fallback");
            let evalsha_before = redis.command_calls("evalsha");
            let cpu0 = procs::cpu_seconds(&proxy_pids[side]);
            let redis_cpu0 = procs::cpu_seconds(&redis_pid);
            let w = wrk::run(ports[side], ROUND, cpus.load);
            let cpu1 = procs::cpu_seconds(&proxy_pids[side]);
            let redis_cpu1 = procs::cpu_seconds(&redis_pid);
            let per_request = |a: f64, b: f64| (b - a) * 1e6 / w.requests as f64;
            let (user_us, sys_us) = (per_request(cpu0.0, cpu1.0), per_request(cpu0.1, cpu1.1));
            let redis_us = per_request(redis_cpu0.0 + redis_cpu0.1, redis_cpu1.0 + redis_cpu1.1);
            match side {
                MEMORY | BASELINE => {
                    let fg = if side == MEMORY {
                        &fg_memory
                    } else {
                        fg_baseline.as_ref().unwrap()
                    };
                    let decided = allowed(fg) as u64 - before;
                    assert!(
                        decided >= w.requests,
                        "{} allowed {decided} requests, wrk counted {}",
                        SIDES[side],
                        w.requests
                    );
                }
                REDIS => {
                    let decided = allowed(&fg_redis) as u64 - before;
                    let calls = redis.command_calls("evalsha") - evalsha_before;
                    let errors = fg_redis.metric_sum("fleetgate_store_errors_total", "") - errors_before;
                    let fallbacks = fg_redis.metric_sum("fleetgate_rate_limit_decisions_total", "outcome=\"fallback")
                        - fallback_before;
                    assert!(
                        errors == 0.0 && fallbacks == 0.0,
                        "fleetgate (redis): {errors} store errors and {fallbacks} fallback decisions during the round; log:\n{}",
                        fg_redis.log()
                    );
                    assert!(
                        decided >= w.requests && calls > 0,
                        "fleetgate (redis) allowed {decided} requests with {calls} EVALSHA on redis-server, wrk counted {}",
                        w.requests
                    );
                    // Hot-key batching: decisions per script call (every wrk request has one key).
                    eprintln!(
                        "gateway: round {}: fleetgate (redis): {decided} decisions in {calls} EVALSHA ({:.1} per call)",
                        round + 1,
                        decided as f64 / calls as f64
                    );
                }
                EVENTS => {
                    // Every request of the round reaches the subscriber (the stream is this
                    // instance's alone: its own key prefix); give the publisher a moment.
                    let dropped = fg_events.metric_sum("fleetgate_events_dropped_total", "") - events_dropped_before;
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while subscriber.received() - before < w.requests && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let received = subscriber.received() - before;
                    assert!(
                        dropped == 0.0 && received >= w.requests,
                        "fleetgate (events): the subscriber received {received} events for {} requests ({dropped} dropped); log:\n{}",
                        w.requests,
                        fg_events.log()
                    );
                }
                _ => {}
            }
            eprintln!(
                "gateway: round {}: {}: {:.0} req/s ({} requests in {:.2} s); proxy CPU per request {:.1} µs (user {user_us:.1} + sys {sys_us:.1}){}",
                round + 1,
                SIDES[side],
                w.rps,
                w.requests,
                w.secs,
                user_us + sys_us,
                if side == REDIS { format!(", redis-server {redis_us:.1} µs") } else { String::new() }
            );
            rps[side].push(w.rps);
            cpu_us[side].push(user_us + sys_us);
        }
    }
    let medians: Vec<f64> = rps.iter_mut().map(|v| median(v)).collect();
    let cpu: Vec<f64> = cpu_us.iter_mut().map(|v| median(v)).collect();
    eprintln!(
        "gateway: medians of {ROUNDS} rounds: memory {:.0}, nginx {:.0}, redis {:.0} req/s; proxy CPU per request: memory {:.1} µs, nginx {:.1} µs, redis {:.1} µs",
        medians[MEMORY], medians[NGINX], medians[REDIS], cpu[MEMORY], cpu[NGINX], cpu[REDIS]
    );
    let peer_desc = format!(
        "{} {PEER}, {} worker(s){}",
        nginx_version(),
        cpus.workers,
        if cpus.placement == Placement::Split {
            ", on CPU 1"
        } else {
            ""
        }
    );
    report::ratio(
        "gateway_memory_limit",
        medians[MEMORY],
        "req/s",
        &peer_desc,
        medians[NGINX],
    );
    report::ratio(
        "gateway_redis_limit",
        medians[REDIS],
        "req/s",
        &peer_desc,
        medians[NGINX],
    );
    report::ratio(
        "gateway_redis_lease",
        medians[LEASE],
        "req/s",
        &peer_desc,
        medians[NGINX],
    );
    report::ratio(
        "gateway_redis_lease_vs_memory",
        medians[LEASE],
        "req/s",
        "fleetgate on the in-process store (gateway_memory_limit), same run",
        medians[MEMORY],
    );
    report::ratio(
        "gateway_redis_events",
        medians[EVENTS],
        "req/s",
        "fleetgate on the Redis store with events off (gateway_redis_limit), same run",
        medians[REDIS],
    );
    if let (Some(bin), Some(&base)) = (&baseline_bin, medians.get(BASELINE)) {
        eprintln!(
            "gateway: baseline {}: median {base:.0} req/s, CPU per request {:.1} µs",
            Path::new(bin).display(),
            cpu[BASELINE]
        );
        report::ratio(
            "gateway_memory_limit_vs_baseline",
            medians[MEMORY],
            "req/s",
            &format!("fleetgate baseline {}", Path::new(bin).display()),
            base,
        );
    }
    drop(fg_baseline);
    drop(subscriber);
    drop(fg_events);
    drop(fg_lease);
    drop(fg_redis);
    drop(redis);

    h2_rounds(&fg_memory, peer_h2_port, &cpus, &peer_desc);
    // Its own fleetgate and nginx; the others stay idle meanwhile.
    tls::tls_rounds(fleetgate_bin, &scratch, &cpus, &upstream, &peer_desc);

    // Latency added at half of fleetgate's maximum rate: open-loop rounds on fleetgate, on the
    // upstream directly and (for the log only) on nginx, in rotated order.
    let rate = (medians[MEMORY] / 2.0).floor();
    let targets = [
        ("fleetgate", fg_memory.port),
        ("direct", upstream.port),
        ("nginx", peer.port),
    ];
    let mut p99s: [Vec<f64>; 3] = Default::default();
    for round in 0..OPEN_ROUNDS {
        for k in 0..targets.len() {
            let which = (round + k) % targets.len();
            let (name, port) = targets[which];
            let start = Instant::now() + Duration::from_millis(100);
            let run = openloop::run(loopback(port), rate, start, OPEN_ROUND, OPEN_CONNECTIONS);
            assert!(
                run.non_200 == 0 && run.errors == 0,
                "open loop at {rate} req/s on {name}: {}",
                run.summary()
            );
            let lat = run.latencies(OPEN_WARM.as_nanos() as u64, u64::MAX);
            eprintln!(
                "gateway: open loop {rate:.0} req/s, round {}: {name}: {}; {}",
                round + 1,
                openloop::describe(&lat),
                run.summary()
            );
            p99s[which].push(openloop::ms(openloop::percentile(&lat, 0.99)));
        }
    }
    let [fg_p99, direct_p99, nginx_p99] = p99s.map(|mut v| median(&mut v));
    eprintln!(
        "gateway: open loop {rate:.0} req/s, median p99 of {OPEN_ROUNDS} rounds: fleetgate {fg_p99:.3} ms, direct {direct_p99:.3} ms, nginx {nginx_p99:.3} ms (nginx adds {:.3} ms)",
        nginx_p99 - direct_p99
    );
    report::latency("gateway_p99_added_ms", fg_p99 - direct_p99, "ms");
    drop(fg_memory);
    drop(peer);

    outage(fleetgate_bin, &scratch, &cpus, &upstream);
    lease_overshoot(fleetgate_bin, &scratch, &cpus, &upstream);
    ExitCode::SUCCESS
}

/// Limit of the `lease_overshoot` run: one fixed window of a day, so that the run (seconds)
/// sees one budget.
const OVERSHOOT_LIMIT: u64 = 3000;

/// `lease_overshoot`: three instances on one Redis, each limit in lease mode, driven at 3x the
/// limit together; admitted over allowed, from the instances' own decision counters.
fn lease_overshoot(fleetgate_bin: &Path, scratch: &Scratch, cpus: &Cpus, upstream: &Nginx) {
    let redis = start_redis(cpus);
    let limit = format!("name: budget, key: global, rate: {OVERSHOOT_LIMIT}/1d, algorithm: fixed_window");
    let setup = FleetgateSetup {
        name: "fleetgate-lease-fleet",
        store_url: redis.url(),
        store_extra: "",
        limit_extra: "mode: lease, lease: { max_batch: 100 }",
        limit: Some(&limit),
        workers: 1,
    };
    let fleet: Vec<Fleetgate> = (0..3)
        .map(|_| Fleetgate::start(fleetgate_bin, scratch, &setup, upstream.port, cpus.proxy))
        .collect();
    // 3x the limit, split over the three instances, sent concurrently on keep-alive
    // connections.
    let per_instance = OVERSHOOT_LIMIT;
    let senders: Vec<_> = fleet
        .iter()
        .map(|fg| {
            let port = fg.port;
            std::thread::spawn(move || procs::get_many(port, "/", per_instance as usize))
        })
        .collect();
    let mut statuses = Vec::new();
    for s in senders {
        statuses.extend(s.join().expect("sender thread"));
    }
    let count = |code: u16| statuses.iter().filter(|s| **s == code).count();
    // Admitted: what the limit decided, counted by the instances themselves.
    let admitted: f64 = fleet
        .iter()
        .map(|fg| fg.metric_sum("fleetgate_rate_limit_decisions_total", "outcome=\"allowed\""))
        .sum();
    eprintln!(
        "lease_overshoot: {} requests to 3 instances: {admitted} admitted by the limit {OVERSHOOT_LIMIT}; answers: {} 200, {} 429, {} other",
        statuses.len(),
        count(200),
        count(429),
        statuses.len() - count(200) - count(429),
    );
    report::ratio(
        "lease_overshoot",
        admitted,
        "requests admitted",
        &format!("the limit, {OVERSHOOT_LIMIT} per day, 3 instances at 3x"),
        OVERSHOOT_LIMIT as f64,
    );
}

/// `gateway_h2_memory_limit`: HTTP/2 clients (h2load, h2c with prior knowledge) through
/// fleetgate's plain listener (in-process store, the same limit) against nginx's `http2`
/// listener of the same proxy, same upstream; rotated rounds, medians. Every fleetgate round is
/// checked: the limit decided at least as many requests as h2load counted.
fn h2_rounds(fg: &Fleetgate, peer_h2_port: u16, cpus: &Cpus, peer_desc: &str) {
    let ports = [fg.port, peer_h2_port];
    let names = ["fleetgate h2c (memory store)", "nginx h2c"];
    for (i, port) in ports.iter().enumerate() {
        let w = h2load::run(*port, WARM, cpus.load);
        eprintln!("gateway: h2 warm-up {}: {:.0} req/s", names[i], w.rps);
    }
    let mut rps: [Vec<f64>; 2] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..2 {
            let side = (round + k) % 2;
            let allowed = || fg.metric_sum("fleetgate_rate_limit_decisions_total", "outcome=\"allowed\"") as u64;
            let before = allowed();
            let w = h2load::run(ports[side], ROUND, cpus.load);
            if side == 0 {
                let decided = allowed() - before;
                assert!(
                    decided >= w.requests,
                    "fleetgate (h2) allowed {decided} requests, h2load counted {}",
                    w.requests
                );
            }
            eprintln!(
                "gateway: h2 round {}: {}: {:.0} req/s ({} requests in {:.2} s)",
                round + 1,
                names[side],
                w.rps,
                w.requests,
                w.secs
            );
            rps[side].push(w.rps);
        }
    }
    let [ours, nginx] = rps.map(|mut v| median(&mut v));
    eprintln!("gateway: h2 medians of {ROUNDS} rounds: fleetgate {ours:.0}, nginx {nginx:.0} req/s");
    report::ratio(
        "gateway_h2_memory_limit",
        ours,
        "req/s",
        &format!(
            "{peer_desc}; h2c (listen http2), h2load -c{} -m{} -t{}",
            h2load::CONNECTIONS,
            h2load::STREAMS,
            h2load::THREADS
        ),
        nginx,
    );
}

/// Only `gateway_tls_memory_limit` (`fleetgate-bench gateway-tls FLEETGATE_BINARY`): the
/// upstream, the TLS peer and fleetgate's TLS listener, with the placement of the full run.
pub fn run_tls(fleetgate_bin: &Path) -> ExitCode {
    let cpus = cpus();
    if let Some(load) = cpus.load {
        assert!(pin(std::process::id(), load), "taskset could not pin this process");
    }
    let scratch = Scratch::new();
    let upstream = Nginx::upstream(&scratch, free_port(), cpus.load);
    let peer_desc = format!(
        "{} {PEER}, {} worker(s){}",
        nginx_version(),
        cpus.workers,
        if cpus.placement == Placement::Split {
            ", on CPU 1"
        } else {
            ""
        }
    );
    tls::tls_rounds(fleetgate_bin, &scratch, &cpus, &upstream, &peer_desc);
    ExitCode::SUCCESS
}

/// `gateway_store_outage_*`: a Redis store SIGSTOPped under a fixed load.
fn outage(fleetgate_bin: &Path, scratch: &Scratch, cpus: &Cpus, upstream: &Nginx) {
    let redis = start_redis(cpus);
    let setup = FleetgateSetup {
        name: "fleetgate-outage",
        store_url: redis.url(),
        store_extra: &format!("timeout_ms: {OUTAGE_TIMEOUT_MS}"),
        limit_extra: "on_store_error: local",
        limit: None,
        workers: cpus.workers,
    };
    let fg = Fleetgate::start(fleetgate_bin, scratch, &setup, upstream.port, cpus.proxy);
    let start = Instant::now() + Duration::from_millis(100);
    let (run, paused_ns) = std::thread::scope(|s| {
        let load = s.spawn(|| openloop::run(loopback(fg.port), OUTAGE_RATE, start, OUTAGE_RUN, OPEN_CONNECTIONS));
        let pause_at = start + OUTAGE_PAUSE_AT;
        std::thread::sleep(pause_at.saturating_duration_since(Instant::now()));
        redis.pause();
        let paused_ns = Instant::now().saturating_duration_since(start).as_nanos() as u64;
        let run = load.join().expect("open-loop thread");
        redis.resume();
        (run, paused_ns)
    });
    assert!(
        run.non_200 == 0 && run.errors == 0,
        "outage: fleetgate answered errors at {OUTAGE_RATE} req/s: {}; log:\n{}",
        run.summary(),
        fg.log()
    );
    let fallbacks = fg.metric_sum("fleetgate_rate_limit_decisions_total", "outcome=\"fallback_local\"");
    let timeouts = fg.metric_sum("fleetgate_store_errors_total", "kind=\"timeout\"");
    let unavailable = fg.metric_sum("fleetgate_store_errors_total", "kind=\"unavailable\"");
    let before = run.latencies(OPEN_WARM.as_nanos() as u64, paused_ns);
    let after = run.by_due();
    let after: Vec<_> = after.iter().filter(|s| s.due_ns >= paused_ns).collect();
    let fast = OUTAGE_TIMEOUT_MS * 1_000_000 / 2;
    let open_at = after
        .windows(OPEN_RUN)
        .find(|w| w.iter().all(|s| s.latency_ns < fast))
        .map(|w| w[0].due_ns);
    eprintln!(
        "outage: {OUTAGE_RATE} req/s, redis-server SIGSTOPped {:.1} ms into the run; {}",
        paused_ns as f64 / 1e6,
        run.summary()
    );
    eprintln!("outage: before the pause (store up): {}", openloop::describe(&before));
    eprintln!("outage: fleetgate counted {timeouts} store timeouts, {unavailable} calls refused by the breaker, {fallbacks} local-fallback decisions");
    let end = u64::MAX;
    match open_at {
        Some(open_ns) => {
            let opening = run.latencies(paused_ns, open_ns);
            let open = run.latencies(open_ns, end);
            eprintln!(
                "outage: breaker open (answers fast again) {:.1} ms after the pause",
                (open_ns - paused_ns) as f64 / 1e6
            );
            eprintln!(
                "outage: due between pause and opening: {}",
                openloop::describe(&opening)
            );
            eprintln!("outage: due after the opening: {}", openloop::describe(&open));
            let p99_open = openloop::ms(openloop::percentile(&open, 0.99));
            let p99_up = openloop::ms(openloop::percentile(&before, 0.99));
            eprintln!(
                "outage: p99 added by the stalled store once the breaker is open: {:.3} ms",
                p99_open - p99_up
            );
            report::latency("gateway_store_outage_p99_ms", p99_open, "ms");
            report::latency(
                "gateway_store_outage_opening_max_ms",
                openloop::ms(opening.last().copied().unwrap_or(0)),
                "ms",
            );
        }
        None => {
            // Never fast again: report the whole paused window as it is.
            let paused = run.latencies(paused_ns, end);
            eprintln!(
                "outage: no run of {OPEN_RUN} fast answers after the pause: the breaker never took the store out of the path; {}",
                openloop::describe(&paused)
            );
            report::latency(
                "gateway_store_outage_p99_ms",
                openloop::ms(openloop::percentile(&paused, 0.99)),
                "ms",
            );
            report::latency(
                "gateway_store_outage_opening_max_ms",
                openloop::ms(paused.last().copied().unwrap_or(0)),
                "ms",
            );
        }
    }
}

/// `fleetgate-bench load`: the open-loop generator alone, for diagnosis.
pub fn load(addr: std::net::SocketAddr, rate: f64, secs: f64) -> ExitCode {
    let start = Instant::now() + Duration::from_millis(100);
    let run = openloop::run(addr, rate, start, Duration::from_secs_f64(secs), OPEN_CONNECTIONS);
    let lat = run.latencies(0, u64::MAX);
    eprintln!("{}", openloop::describe(&lat));
    eprintln!("{}", run.summary());
    // The worst latency in each 100 ms of the schedule: when the slow requests were due.
    let by_due = run.by_due();
    for window in by_due.chunk_by(|a, b| a.due_ns / 100_000_000 == b.due_ns / 100_000_000) {
        let worst = window.iter().map(|s| s.latency_ns).max().unwrap_or(0);
        eprintln!(
            "  due {:>6.1} s: {:>5} requests, worst {:.3} ms",
            window[0].due_ns as f64 / 1e9,
            window.len(),
            openloop::ms(worst)
        );
    }
    if run.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
