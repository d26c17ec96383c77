//! Fault injection with real processes: Redis killed under load, paused, restarted empty,
//! unreachable at start, answering errors, and slowed or cut by a TCP proxy. Checked each
//! time: no 5xx for `open` and `local` limits, `closed` limits answer 503 at once, no instance
//! exits, `/healthz` follows the store, and limits are exact again after recovery without a
//! restart. Durations are printed as observations; the assertions are about outcomes.

mod common;

use common::*;
use fleetgate_store::{Concern, Keyspace};
use fleetgate_testkit::{FaultProxy, RedisServer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(store_url: &str, exact_rate: &str) -> String {
    let route = |name: &str, rate: &str, policy: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - name: all\n        key: global\n        rate: {rate}\n        on_store_error: {policy}\n")
    };
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: error\n  access_log: false\nstore:\n  url: {store_url}\n  key_prefix: faults\n  timeout_ms: 50\nroutes:\n{}{}{}{}",
        route("open", "100000/1h", "open"),
        route("local", "100000/1h", "local"),
        route("closed", "100000/1h", "closed"),
        route("exact", exact_rate, "local"),
    )
}

/// Background load on /open and /local; collects their statuses until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<u16>>>,
}

impl Load {
    fn start(gw: &Gateway) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, addr) = (stop.clone(), gw.addr());
        let handle = std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                for path in ["/open", "/local"] {
                    statuses.push(http_get(addr, path, &[]).map(|r| r.status).unwrap_or(0));
                }
            }
            statuses
        });
        Load {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<u16> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// The closed route answers 503 (not a hang, not a 500) while the store is out.
fn closed_answers_503(gw: &Gateway) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let r = gw.get("/closed", &[]);
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"], "store_unavailable");
    }
    slowest
}

/// After recovery the limit is exact again, as soon as `/healthz` says so: the `closed` route
/// answers 200 on fresh connections (so on every worker) and exactly `n` of 3n requests pass.
/// No waiting for streaks of successes first: healthz `ok` is the promise.
fn exact_again(gw: &Gateway, n: usize) {
    wait_store(gw, "ok");
    let closed = drive(&[gw], "/closed", 40, 4);
    assert_eq!(
        count(&closed, 200),
        40,
        "closed limit right after healthz said ok: {closed:?}"
    );
    let statuses = drive(&[gw], "/exact", 3 * n, 4);
    assert_eq!(count(&statuses, 200), n, "{statuses:?}");
}

fn alive(gw: &mut Gateway) {
    let status = gw.child.as_mut().unwrap().try_wait().unwrap();
    assert!(status.is_none(), "gateway exited: {status:?}");
}

#[test]
fn redis_killed_under_load_then_restarted_empty() {
    let mut redis = RedisServer::start();
    let mut gw = Gateway::start(&config(&redis.url(), "5/1h"));
    assert_eq!(store_health(&gw), "ok");
    let load = Load::start(&gw);
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    let down_after = wait_store(&gw, "down");
    let slowest_closed = closed_answers_503(&gw);
    std::thread::sleep(Duration::from_millis(500));
    redis.restart();
    let ok_after = wait_store(&gw, "ok");
    std::thread::sleep(Duration::from_millis(300));
    let statuses = load.finish();
    println!("kill: /healthz down after {down_after:?}, ok {ok_after:?} after restart; slowest closed 503 {slowest_closed:?}; {} requests under load", statuses.len());
    assert!(statuses.len() > 20);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "open/local never fail: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    alive(&mut gw);
    exact_again(&gw, 5);
    let metrics = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
    assert!(
        metrics.contains("outcome=\"fallback_local\""),
        "fallback is visible in metrics"
    );
    assert!(metrics.contains("fleetgate_store_errors_total"));
}

#[test]
fn paused_redis_is_a_stall_not_a_hang() {
    let redis = RedisServer::start();
    let mut gw = Gateway::start(&config(&redis.url(), "5/1h"));
    let load = Load::start(&gw);
    std::thread::sleep(Duration::from_millis(200));
    redis.pause();
    let down_after = wait_store(&gw, "down");
    let slowest_closed = closed_answers_503(&gw);
    std::thread::sleep(Duration::from_millis(500));
    redis.resume();
    let ok_after = wait_store(&gw, "ok");
    let statuses = load.finish();
    println!("pause: /healthz down after {down_after:?}, ok {ok_after:?} after resume; slowest closed 503 {slowest_closed:?} (timeout 50 ms)");
    assert!(statuses.iter().all(|s| *s == 200), "open/local never fail");
    // A stalled store costs at most about one timeout per request, never the stall itself.
    assert!(slowest_closed < Duration::from_millis(50) * 20, "{slowest_closed:?}");
    alive(&mut gw);
    exact_again(&gw, 5);
}

#[test]
fn latency_and_cut_connections_through_a_tcp_proxy() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr());
    let mut gw = Gateway::start(&config(&proxy.url(), "5/1h"));
    assert_eq!(gw.get("/exact", &[]).status, 200);
    let load = Load::start(&gw);
    // Latency above the store timeout: every call times out, then the breaker fails fast.
    proxy.set_latency(Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(300));
    closed_answers_503(&gw);
    proxy.set_latency(Duration::ZERO);
    proxy.cut();
    proxy.set_refuse(true);
    std::thread::sleep(Duration::from_millis(300));
    closed_answers_503(&gw);
    proxy.set_refuse(false);
    let ok_after = wait_store(&gw, "ok");
    let statuses = load.finish();
    println!(
        "proxy: store ok {ok_after:?} after connections were allowed again; {} requests under load",
        statuses.len()
    );
    assert!(statuses.iter().all(|s| *s == 200), "open/local never fail");
    alive(&mut gw);
    // The 1 request before the faults counts: 4 more pass. (Same Redis, state kept.)
    exact_again(&gw, 4);
}

#[test]
fn unreachable_redis_at_start_then_it_appears() {
    let port = free_port();
    let mut gw = Gateway::start(&config(&format!("redis://127.0.0.1:{port}"), "5/1h"));
    assert_eq!(store_health(&gw), "down");
    assert_eq!(gw.get("/local", &[]).status, 200);
    assert_eq!(gw.get("/open", &[]).status, 200);
    assert_eq!(gw.get("/closed", &[]).status, 503);
    let _redis = RedisServer::start_on(port, &[]);
    let ok_after = wait_store(&gw, "ok");
    println!("late redis: store ok {ok_after:?} after it started");
    alive(&mut gw);
    exact_again(&gw, 5);
}

#[test]
fn redis_answering_errors_follows_the_policy() {
    let redis = RedisServer::start();
    let mut gw = Gateway::start(&config(&redis.url(), "5/1h"));
    // WRONGTYPE: someone wrote a hash where the limit's counter lives.
    let key = Keyspace::new("faults")
        .unwrap()
        .key(Concern::RateLimit, "route/exact/all/gcra", b"g\0");
    redis.command(&["HSET", key.as_str(), "x", "y"]);
    for _ in 0..3 {
        assert_eq!(gw.get("/exact", &[]).status, 200, "local policy serves");
    }
    assert_eq!(
        redis.command(&["TYPE", key.as_str()]).trim(),
        "+hash",
        "the foreign value was not overwritten"
    );
    // OOM: writes refused.
    redis.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.command(&["CONFIG", "SET", "maxmemory", "1"]);
    assert_eq!(gw.get("/local", &[]).status, 200);
    assert_eq!(gw.get("/closed", &[]).status, 503);
    redis.command(&["CONFIG", "SET", "maxmemory", "0"]);
    // READONLY: the server became a replica.
    let dead = free_port().to_string();
    redis.command(&["REPLICAOF", "127.0.0.1", &dead]);
    assert_eq!(gw.get("/local", &[]).status, 200);
    assert_eq!(gw.get("/open", &[]).status, 200);
    assert_eq!(gw.get("/closed", &[]).status, 503);
    redis.command(&["REPLICAOF", "NO", "ONE"]);
    let metrics = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
    assert!(
        metrics.contains("fleetgate_store_errors_total{kind=\"server\"}"),
        "{metrics}"
    );
    alive(&mut gw);
    redis.command(&["DEL", key.as_str()]);
    exact_again(&gw, 5);
}

/// One health truth per instance, across a fleet: once each instance's `/healthz` says the
/// store is `ok` again, every worker of every instance decides on the store at once. A
/// `closed` limit answers 200 to every request, and a new key of a `sliding_window` 100/1h
/// admits exactly 100 across the three instances (no local decisions leaking in). The store
/// timeout is 250 ms, not 50: the outage is a killed process (refused connections, seen at
/// once), and a loaded CI machine can take longer than 50 ms to answer one call, which under
/// `closed` is a 503 that says nothing about recovery (seen once: 58 of 60).
#[test]
fn recovery_is_exact_across_three_instances_as_soon_as_healthz_says_ok() {
    let mut redis = RedisServer::start();
    let route = |name: &str, rate: &str, policy: &str, algorithm: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - name: all\n        key: global\n        rate: {rate}\n        algorithm: {algorithm}\n        on_store_error: {policy}\n")
    };
    let cfg = format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: error\n  access_log: false\nstore:\n  url: {}\n  key_prefix: recovery\n  timeout_ms: 250\nroutes:\n{}{}",
        redis.url(),
        route("closed", "100000/1h", "closed", "gcra"),
        route("sliding", "100/1h", "local", "sliding_window"),
    );
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    let fleet: Vec<&Gateway> = gws.iter().collect();
    // Traffic before the outage, so that every worker holds a live connection to lose.
    assert_eq!(count(&drive(&fleet, "/closed", 60, 6), 200), 60);
    redis.kill();
    for gw in &gws {
        wait_store(gw, "down");
    }
    // While down, the closed limit refuses on every instance, and the sliding window decides
    // locally (those local admissions live in each instance's memory, not in the new key).
    assert_eq!(count(&drive(&fleet, "/closed", 30, 6), 503), 30);
    let during = drive(&fleet, "/sliding", 30, 6);
    assert_eq!(count(&during, 200) + count(&during, 429), 30, "{during:?}");
    redis.restart();
    let started = Instant::now();
    for gw in &gws {
        wait_store(gw, "ok");
    }
    println!(
        "fleet recovery: all three healthz ok {:?} after the restart",
        started.elapsed()
    );
    // Right after healthz said ok: every request decides on the store.
    let closed = drive(&fleet, "/closed", 60, 6);
    assert_eq!(count(&closed, 200), 60, "closed limit after recovery: {closed:?}");
    let sliding = drive(&fleet, "/sliding", 150, 6);
    println!(
        "fleet recovery: sliding_window 100/1h admitted {} of 150 after recovery",
        count(&sliding, 200)
    );
    assert_eq!(count(&sliding, 200), 100, "{sliding:?}");
    assert_eq!(count(&sliding, 429), 50, "{sliding:?}");
}
