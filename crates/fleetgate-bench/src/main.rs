//! `fleetgate-bench`: the benchmarks behind `scripts/bench`.
//!
//! Every figure is printed as one JSON object per line:
//! `{"name": ..., "value": ..., "unit": ..., "peer": ..., "peer_value": ..., "ratio": ...}`,
//! where `ratio` is ours divided by the peer's, measured in the same run (DESIGN.md,
//! "Benchmarks"). Progress and diagnostics go to stderr, so stdout holds only the figures.
//!
//! Subcommands:
//! * `store`: the store benchmarks (in-process gcra vs governor, Redis driver vs
//!   redis-benchmark, lease mode on Redis vs redis-benchmark and vs the in-process store,
//!   memory of one million keys).
//! * `gateway FLEETGATE_BINARY`: the gateway benchmarks (fleetgate vs nginx as rate-limiting
//!   reverse proxies, latency added at a fixed rate, latency while the Redis store is stalled);
//!   see [`gateway`].
//! * `upstream FLEETGATE_BINARY`: the outbound throttle on Redis (`throttle_overhead`,
//!   `throttle_accuracy`); see `gateway::upstream`.
//! * `cache FLEETGATE_BINARY`: cache hits through fleetgate's shared cache on the in-process
//!   and the Redis store vs Varnish (`cache_hit_memory`, `cache_hit_redis`); see
//!   `gateway::cache`.
//! * `payment FLEETGATE_BINARY`: payment sessions and idempotent replays on Redis against
//!   `gateway_redis_limit` (`payment_verified_cached`, `idempotency_replay`); see
//!   `gateway::payment`.
//! * `gateway-tls FLEETGATE_BINARY`: only `gateway_tls_memory_limit` (HTTPS through
//!   fleetgate's TLS listener vs nginx terminating TLS).
//! * `load HOST:PORT RATE SECONDS`: the gateway bench's open-loop generator on its own (64
//!   keep-alive connections, `GET /` at RATE per second); prints the latency percentiles and
//!   the worst latency of the requests due in each 100 ms (a diagnosis aid).
//! * `gcra THREADS...`: only the in-process gcra comparison (a tuning aid).
//! * `bare-proxy LISTEN UPSTREAM [WORKERS]`: a proxy on tokio with no hyper, as a floor for the
//!   gateway comparison (see [`bare_proxy`]; a diagnosis aid).
//! * `redis-sweep`: tries pool sizes, task counts and worker threads for the Redis driver, to
//!   choose the defaults used by `store` (a tuning aid, not part of `scripts/bench store`).
//! * `__memory-child N` (hidden): run by `store` in a fresh process; prints the resident-memory
//!   growth in bytes after inserting N live gcra keys.

mod bare_proxy;
mod gateway;
mod lease_bench;
mod memory;
mod redis_bench;
mod report;
mod store_memory;

use std::process::ExitCode;

const USAGE: &str =
    "usage: fleetgate-bench store | redis-sweep | gateway FLEETGATE_BINARY | gateway-tls FLEETGATE_BINARY | upstream FLEETGATE_BINARY | cache FLEETGATE_BINARY | payment FLEETGATE_BINARY | load HOST:PORT RATE SECONDS | bare-proxy LISTEN UPSTREAM [WORKERS]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("store") => run_store(),
        Some("gateway") => match args.get(1) {
            Some(binary) => gateway::run(std::path::Path::new(binary)),
            None => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("payment") => match args.get(1) {
            Some(binary) => gateway::run_payment(std::path::Path::new(binary)),
            None => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("upstream") => match args.get(1) {
            Some(binary) => gateway::run_upstream(std::path::Path::new(binary)),
            None => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("cache") => match args.get(1) {
            Some(binary) => gateway::run_cache(std::path::Path::new(binary)),
            None => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("gateway-tls") => match args.get(1) {
            Some(binary) => gateway::run_tls(std::path::Path::new(binary)),
            None => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("load") => {
            let addr = args.get(1).and_then(|a| a.parse().ok());
            let rate = args.get(2).and_then(|r| r.parse().ok());
            let secs = args.get(3).and_then(|s| s.parse().ok());
            match (addr, rate, secs) {
                (Some(addr), Some(rate), Some(secs)) => gateway::load(addr, rate, secs),
                _ => {
                    eprintln!("{USAGE}");
                    ExitCode::from(2)
                }
            }
        }
        Some("bare-proxy") => {
            let listen = args.get(1).and_then(|a| a.parse().ok());
            let upstream = args.get(2).and_then(|a| a.parse().ok());
            let workers = match args.get(3) {
                None => Some(2),
                Some(w) => w.parse().ok(),
            };
            match (listen, upstream, workers) {
                (Some(listen), Some(upstream), Some(workers)) => bare_proxy::run(listen, upstream, workers),
                _ => {
                    eprintln!("{USAGE}");
                    ExitCode::from(2)
                }
            }
        }
        Some("gcra") => {
            // A tuning aid: only the in-process gcra comparison, at the given thread counts.
            for threads in args[1..].iter().filter_map(|t| t.parse().ok()) {
                report_gcra_keyed(threads);
            }
            ExitCode::SUCCESS
        }
        Some("lease") => {
            // A tuning aid: only the lease-mode figures.
            let (lease, ceiling, in_process) = lease_bench::lease_gcra();
            report::ratio(
                "lease_gcra",
                lease,
                "decisions/s",
                "redis-benchmark EVALSHA gcra.lua -P 32 -c 50",
                ceiling,
            );
            report::ratio(
                "lease_gcra_vs_memory",
                lease,
                "decisions/s",
                "in-process store, same tasks and loop",
                in_process,
            );
            ExitCode::SUCCESS
        }
        Some("redis-sweep") => {
            redis_bench::sweep();
            ExitCode::SUCCESS
        }
        Some(memory::CHILD_COMMAND) => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(memory::KEYS);
            memory::child(n);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `memory_gcra_keyed_{threads}t`: the in-process store against governor.
fn report_gcra_keyed(threads: usize) {
    let (ours, peer) = store_memory::gcra_keyed(threads);
    report::ratio(
        &format!("memory_gcra_keyed_{threads}t"),
        ours,
        "decisions/s",
        "governor keyed (DefaultKeyedRateLimiter<u64>)",
        peer,
    );
}

fn run_store() -> ExitCode {
    for threads in [1, 2] {
        report_gcra_keyed(threads);
    }
    let (ours, peer) = redis_bench::gcra();
    report::ratio(
        "redis_gcra",
        ours,
        "decisions/s",
        "redis-benchmark EVALSHA gcra.lua -P 32 -c 50",
        peer,
    );
    let (lease, ceiling, in_process) = lease_bench::lease_gcra();
    report::ratio(
        "lease_gcra",
        lease,
        "decisions/s",
        "redis-benchmark EVALSHA gcra.lua -P 32 -c 50",
        ceiling,
    );
    report::ratio(
        "lease_gcra_vs_memory",
        lease,
        "decisions/s",
        "in-process store, same tasks and loop",
        in_process,
    );
    let mb = memory::measure();
    report::alone("memory_1m_keys", mb, "MB");
    ExitCode::SUCCESS
}
