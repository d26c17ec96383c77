//! The upstream side, fleet-wide: three real gateway processes on one real Redis in front of
//! a stand-in upstream that records when each call arrived. The throttle paces the fleet's
//! calls (callers wait, nobody is refused), a breaker tripped through one instance holds on
//! the others, and with Redis gone each instance paces and breaks for itself, then goes back
//! to the fleet's state without a restart.

mod common;

use common::counting_upstream::CountingUpstream;
use common::*;
use fleetgate_testkit::RedisServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(redis_url: &str, upstream: &CountingUpstream, side: &str) -> String {
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\n  access_log: false\nstore:\n  url: {redis_url}\n  key_prefix: upside\n  timeout_ms: 200\nupstreams:\n  metered:\n    targets: [{}]\n{side}routes:\n  - name: m\n    match: {{ path_prefix: /m }}\n    upstream: metered\n",
        upstream.url()
    )
}

/// A GET that waits up to 40 s for its answer (the throttle holds it).
fn patient_get(addr: SocketAddr, path: &str) -> Reply {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    raw_request_within(addr, req.as_bytes(), Duration::from_secs(40)).expect("request to gateway")
}

/// `total` concurrent GETs spread round-robin over `addrs`; their statuses.
fn concurrent(addrs: &[SocketAddr], total: usize) -> Vec<u16> {
    let addrs = Arc::new(addrs.to_vec());
    let handles: Vec<_> = (0..total)
        .map(|i| {
            let addrs = addrs.clone();
            std::thread::spawn(move || patient_get(addrs[i % addrs.len()], "/m").status)
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Waits (bounded) until every gateway counts `n` live instances.
fn wait_fleet(gateways: &[&Gateway], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for gw in gateways {
        loop {
            let live = http_get(gw.admin_addr(), "/healthz", &[])
                .map(|r| r.json()["live_instances"].as_u64().unwrap_or(0))
                .unwrap_or(0);
            if live == n {
                break;
            }
            assert!(Instant::now() < deadline, "the fleet never counted {n} instances");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn metrics(gw: &Gateway) -> String {
    http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body
}

#[test]
fn three_instances_keep_one_pace_and_every_caller_gets_through() {
    let redis = RedisServer::start();
    let upstream = CountingUpstream::start();
    let side = "    throttle:\n      rate: 5/s\n      burst: 1\n      max_wait: 30s\n";
    let cfg = config(&redis.url(), &upstream, side);
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    let statuses = concurrent(&[a.addr(), b.addr(), c.addr()], 60);
    assert_eq!(
        count(&statuses, 200),
        60,
        "every caller waits for its slot: {statuses:?}"
    );
    assert_eq!(upstream.count(), 60);
    // gcra at 5/s with burst 1: within any 1 s, at most 5 spaced calls plus the burst's 1.
    // Three instances pacing alone would send 15 a second.
    let most = upstream.most_within(Duration::from_secs(1));
    println!("throttle: 60 calls over 3 instances, at most {most} within any 1 s (allowed 6 = 5/s + burst 1)");
    assert!(most <= 6, "the fleet sent {most} calls within 1 s");
    let waits: f64 = [&a, &b, &c]
        .iter()
        .map(|g| metric_sum(&metrics(g), "fleetgate_throttle_waits_total"))
        .sum();
    assert!(waits >= 50.0, "most calls waited and were counted: {waits}");
}

#[test]
fn a_wait_beyond_max_wait_is_refused_at_once_with_retry_after() {
    let redis = RedisServer::start();
    let upstream = CountingUpstream::start();
    let side = "    throttle:\n      rate: 1/10s\n      max_wait: 1s\n";
    let gw = Gateway::start(&config(&redis.url(), &upstream, side));
    assert_eq!(gw.get("/m", &[]).status, 200);
    let refused = gw.get("/m", &[]);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error"], "throttle_wait_too_long");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "retry-after {retry}");
    assert_eq!(upstream.count(), 1, "the refused call never reached the upstream");
}

#[test]
fn a_breaker_tripped_through_one_instance_holds_on_the_others() {
    let redis = RedisServer::start();
    let upstream = CountingUpstream::start();
    let side = "    breaker:\n      failures: 1\n      cooldown: 1s\n";
    let cfg = config(&redis.url(), &upstream, side);
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    // Each instance has met the breaker closed: from now on only the trip notice tells B and C.
    for gw in [&a, &b, &c] {
        assert_eq!(gw.get("/m", &[]).status, 200);
    }
    upstream.answer(429, Some("3"));
    let first = a.get("/m", &[]);
    assert_eq!(first.status, 429, "the tripping call gets the upstream's answer");
    let tripped = Instant::now();
    assert_eq!(upstream.count(), 4);
    // 150 ms later, B and C no longer call it.
    std::thread::sleep(Duration::from_millis(150));
    for gw in [&b, &c] {
        let r = gw.get("/m", &[]);
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"], "breaker_open");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=3).contains(&retry), "the upstream's Retry-After 3 holds: {retry}");
    }
    assert_eq!(
        upstream.count(),
        4,
        "B and C called the upstream while its breaker was open"
    );
    let listed = http_get(b.admin_addr(), "/breakers", &[]).unwrap().json();
    let open = listed["open"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{listed}");
    assert_eq!(open[0]["upstream"], "metered");
    assert!(open[0]["remaining_ms"].as_u64().unwrap() > 0);
    // After the Retry-After's 3 s (longer than the 1 s cooldown), they call it again.
    upstream.answer(200, None);
    std::thread::sleep(Duration::from_millis(3300).saturating_sub(tripped.elapsed()));
    assert_eq!(c.get("/m", &[]).status, 200, "C's probe reaches the upstream");
    assert_eq!(b.get("/m", &[]).status, 200);
    assert_eq!(upstream.count(), 6);
    let trips: f64 = [&a, &b, &c]
        .iter()
        .map(|g| metric_sum(&metrics(g), "fleetgate_breaker_trips_total"))
        .sum();
    assert_eq!(trips, 1.0, "one trip, made by A, held by all");
    assert!(http_get(b.admin_addr(), "/breakers", &[]).unwrap().json()["open"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn with_redis_down_each_instance_paces_and_breaks_for_itself_then_recovers() {
    let mut redis = RedisServer::start();
    let upstream = CountingUpstream::start();
    let side = "    throttle:\n      rate: 6/s\n      burst: 3\n      max_wait: 30s\n    breaker:\n      failures: 1\n      cooldown: 20s\n";
    let cfg = config(&redis.url(), &upstream, side);
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    wait_fleet(&[&a, &b, &c], 3);
    redis.kill();
    for gw in [&a, &b, &c] {
        wait_store(gw, "down");
    }
    // A alone paces at 6/s over 3 instances = 2/s, burst 3 / 3 = 1: at most 3 within 1 s.
    let statuses = concurrent(&[a.addr()], 8);
    assert_eq!(count(&statuses, 200), 8, "{statuses:?}");
    let most = upstream.most_within(Duration::from_secs(1));
    println!("redis down: A alone sent at most {most} calls within 1 s (its share: 2/s, burst 1)");
    assert!(most <= 3, "A did not pace at its share: {most} within 1 s");
    assert!(metric_sum(&metrics(&a), "outcome=\"fallback_local\"") >= 8.0);
    // A breaks for itself: its trip cannot reach B.
    upstream.answer(500, None);
    assert_eq!(a.get("/m", &[]).status, 500);
    let before = upstream.count();
    assert_eq!(a.get("/m", &[]).status, 503, "A's breaker is open");
    assert_eq!(upstream.count(), before);
    upstream.answer(200, None);
    assert_eq!(
        b.get("/m", &[]).status,
        200,
        "B's breaker is its own while the store is down"
    );
    assert_eq!(upstream.count(), before + 1);
    // Redis back (empty): the throttle decides in the store again, no restart.
    redis.restart();
    for gw in [&a, &b, &c] {
        wait_store(gw, "ok");
    }
    let allowed = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("fleetgate_throttle_decisions_total") && l.contains("outcome=\"allowed\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let allowed_before = allowed(&metrics(&c));
    let statuses = concurrent(&[b.addr(), c.addr()], 6);
    assert_eq!(count(&statuses, 200), 6, "{statuses:?}");
    let allowed_after = allowed(&metrics(&c));
    assert!(
        allowed_after >= allowed_before + 3.0,
        "C's throttle decides in the store again: {allowed_before} -> {allowed_after}"
    );
}
