//! Limits charge only what they admit and fall back sanely, end to end with the real binary:
//! refunds when a later limit refuses, a local share never below the cost, permits that a
//! timed-out call may have taken given back, refused permit renewals counted, keys that never
//! collide across scopes or algorithms, and IPv6 clients counted by /64.

mod common;

use common::*;
use fleetgate_store::{Concern, Keyspace};
use fleetgate_testkit::{FaultProxy, RedisServer};
use std::time::{Duration, Instant};

fn head(store_url: &str, prefix: &str) -> String {
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: error\n  access_log: false\nstore:\n  url: {store_url}\n  key_prefix: {prefix}\n  timeout_ms: 50\n"
    )
}

fn with_key(gw: &Gateway, path: &str, key: &str) -> u16 {
    gw.get(path, &[("x-key", key.as_bytes())]).status
}

fn metrics(gw: &Gateway) -> String {
    http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body
}

/// Route-wide 10/1h and per-key 2/1h, declared as two route limits (`/both`) and as a global
/// limit plus a route limit (`/mixed`). One key sends 5: 2 pass, 3 are refused by the per-key
/// limit, and none of those 3 may use the route-wide budget: 10 other keys then get 8.
fn refunds_scenario(store_url: &str, prefix: &str) {
    let cfg = format!(
        "{}rate_limits:\n  - {{ name: fleet-wide, key: route, rate: 10/1h, algorithm: sliding_window }}\nroutes:\n  - name: both\n    match: {{ path_prefix: /both }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - {{ name: route-wide, key: global, rate: 10/1h }}\n      - {{ name: per-key, key: header:x-key, rate: 2/1h, algorithm: fixed_window }}\n  - name: mixed\n    match: {{ path_prefix: /mixed }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - {{ name: per-key, key: header:x-key, rate: 2/1h, algorithm: sliding_window }}\n",
        head(store_url, prefix)
    );
    let gw = Gateway::start(&cfg);
    for path in ["/both", "/mixed"] {
        let first: Vec<u16> = (0..2).map(|_| with_key(&gw, path, "noisy")).collect();
        assert_eq!(first, [200, 200], "{path}");
        let refused = gw.get(path, &[("x-key", b"noisy")]);
        assert_eq!(refused.status, 429, "{path}");
        if path == "/both" {
            // The refused request's headers tell the state after the refund: 8 left of the
            // route-wide 10, not 7.
            let state = refused.header("ratelimit").unwrap_or_default().to_string();
            assert!(state.contains("\"route-wide\";r=8"), "{state}");
            assert!(state.contains("\"per-key\";r=0"), "{state}");
        }
        for _ in 0..2 {
            assert_eq!(with_key(&gw, path, "noisy"), 429, "{path}");
        }
        let others: Vec<u16> = (0..10).map(|i| with_key(&gw, path, &format!("k{i}"))).collect();
        let admitted = others.iter().filter(|s| **s == 200).count();
        println!("{store_url} {path}: other keys admitted {admitted} of 10 (wanted 8)");
        assert_eq!(admitted, 8, "{path}: {others:?}");
    }
    let m = metrics(&gw);
    assert!(m.contains("outcome=\"refunded\""), "refunds are counted: {m}");
}

#[test]
fn a_refused_request_is_charged_to_no_limit_in_process() {
    refunds_scenario("memory://", "refunds");
}

#[test]
fn a_refused_request_is_charged_to_no_limit_on_redis() {
    let redis = RedisServer::start();
    refunds_scenario(&redis.url(), "refunds");
}

/// Burst 10, cost 5, three instances, Redis killed: each instance's local share is 10/3
/// rounded down, but never below the cost, so each still admits one request (instead of
/// refusing all six).
#[test]
fn the_local_share_is_never_below_the_cost() {
    let mut redis = RedisServer::start();
    let cfg = format!(
        "{}routes:\n  - name: heavy\n    match: {{ path_prefix: /heavy }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - {{ name: all, key: global, rate: 10/1h, burst: 10, cost: 5, on_store_error: local }}\n",
        head(&redis.url(), "share")
    );
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    // Wait until every instance counts the fleet (heartbeats), so the share is 1/3.
    let deadline = Instant::now() + Duration::from_secs(10);
    for gw in &gws {
        loop {
            let live = http_get(gw.admin_addr(), "/healthz", &[]).unwrap().json()["live_instances"].as_u64();
            if live == Some(3) {
                break;
            }
            assert!(Instant::now() < deadline, "instances never saw each other: {live:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    redis.kill();
    for gw in &gws {
        wait_store(gw, "down");
    }
    for (i, gw) in gws.iter().enumerate() {
        let statuses: Vec<u16> = (0..2).map(|_| gw.get("/heavy", &[]).status).collect();
        assert_eq!(statuses, [200, 429], "instance {i}");
    }
}

/// A permit whose acquire timed out at the gateway may still have been taken on the server;
/// it is given back instead of blocking its slot for the whole lease.
#[test]
fn a_permit_taken_after_its_call_timed_out_is_given_back() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(redis.addr());
    let cfg = format!(
        "{}routes:\n  - name: one\n    match: {{ path_prefix: /one }}\n    respond: {{ status: 200, body: ok }}\n    concurrency_limits:\n      - {{ name: single, key: global, max: 1, lease_ms: 60000, on_store_error: closed }}\n",
        head(&proxy.url(), "ghost")
    );
    let gw = Gateway::start(&cfg);
    assert_eq!(gw.get("/one", &[]).status, 200);
    let key = Keyspace::new("ghost")
        .unwrap()
        .key(Concern::Concurrency, "route/one/single/permits", b"g\0");
    // Slower than the 50 ms timeout: the acquire times out at the gateway (503, closed), but
    // the script still runs on the server when its bytes arrive.
    proxy.set_latency(Duration::from_millis(150));
    assert_eq!(gw.get("/one", &[]).status, 503);
    proxy.set_latency(Duration::ZERO);
    // Bytes sent while the latency held (the acquire, then its give-back) still arrive late,
    // and a call sent now would queue behind them; the fault is over once they are delivered.
    assert!(
        proxy.wait_drained(Duration::from_secs(5)),
        "the fault proxy never drained"
    );
    wait_store(&gw, "ok");
    // The permit the timed-out call took is released: the set empties well within the lease.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = redis.command(&["ZCARD", key.as_str()]);
        if held.trim() == ":0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a ghost permit still holds the slot: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = gw.get("/one", &[]);
    assert_eq!(last.status, 200, "{last:?}");
}

/// A renewal refused because the lease was lost and every slot is taken is counted and logged;
/// the request itself completes.
#[test]
fn a_refused_permit_renewal_is_counted_and_the_request_completes() {
    let redis = RedisServer::start();
    let upstream = Upstream::start("u");
    let cfg = format!(
        "{}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: hold\n    match: {{ path_prefix: /hold }}\n    upstream: u\n    concurrency_limits:\n      - {{ name: single, key: global, max: 1, lease_ms: 200 }}\n",
        head(&redis.url(), "renew"),
        upstream.url()
    );
    let gw = Gateway::start(&cfg);
    let addr = gw.addr();
    let held = std::thread::spawn(move || http_get(addr, "/hold", &[]).map(|r| r.status));
    upstream.wait_for_hits(1);
    let key = Keyspace::new("renew")
        .unwrap()
        .key(Concern::Concurrency, "route/hold/single/permits", b"g\0");
    // As if the lease had run out while the store was away and another holder took the slot.
    redis.command(&["DEL", key.as_str()]);
    redis.command(&["ZADD", key.as_str(), "99999999999999999", "someone-else"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&gw)
        .contains("fleetgate_concurrency_permit_renewals_total{route=\"hold\",limit=\"single\",outcome=\"refused\"}")
    {
        assert!(Instant::now() < deadline, "no refused renewal counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    upstream.release();
    assert_eq!(
        held.join().unwrap().unwrap(),
        200,
        "the request completes without its permit"
    );
}

/// Keys never collide: a route named `global` has keys of its own, apart from the global
/// limits; two versions of one limit with different algorithms (a rolling deploy) each decide
/// on the store without meeting the other's values.
#[test]
fn scopes_and_algorithms_never_share_keys() {
    let redis = RedisServer::start();
    let limit = |algorithm: &str| {
        format!(
            "{}rate_limits:\n  - {{ name: x, key: global, rate: 100/1h, algorithm: {algorithm} }}\nroutes:\n  - name: global\n    match: {{ path_prefix: /g }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - {{ name: x, key: global, rate: 100/1h, algorithm: {algorithm} }}\n",
            head(&redis.url(), "scopes")
        )
    };
    let old = Gateway::start(&limit("gcra"));
    let new = Gateway::start(&limit("sliding_window"));
    for gw in [&old, &new] {
        for _ in 0..3 {
            assert_eq!(gw.get("/g", &[]).status, 200);
        }
        let m = metrics(gw);
        assert_eq!(
            metric_sum(&m, "fleetgate_store_errors_total"),
            0.0,
            "no store error: {m}"
        );
        assert_eq!(
            metric_sum(&m, "outcome=\"fallback_local"),
            0.0,
            "every decision on the store: {m}"
        );
        assert_eq!(metric_sum(&m, "outcome=\"allowed\""), 6.0, "{m}");
    }
    let keys = redis.command(&["KEYS", "scopes:rate:*"]);
    for scope in [
        "scopes:rate:route/global/x/gcra:",
        "scopes:rate:global/x/gcra:",
        "scopes:rate:route/global/x/sliding_window:",
        "scopes:rate:global/x/sliding_window:",
    ] {
        assert!(keys.contains(scope), "{scope} in {keys}");
    }
}

/// IPv6 clients are counted by /64 by default: one host rotating addresses within its /64 is
/// one client; `ipv6_prefix: 128` counts each address.
#[test]
fn ipv6_clients_are_counted_by_their_64() {
    let cfg = format!(
        "{}trusted_proxies: [127.0.0.1]\nroutes:\n  - name: by64\n    match: {{ path_prefix: /by64 }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - {{ name: ip, key: ip, rate: 2/1h }}\n  - name: by128\n    match: {{ path_prefix: /by128 }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - {{ name: ip, key: ip, rate: 2/1h, ipv6_prefix: 128 }}\n",
        head("memory://", "v6")
    );
    let gw = Gateway::start(&cfg);
    let from = |path: &str, ip: &str| gw.get(path, &[("x-forwarded-for", ip.as_bytes())]).status;
    let same_64 = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"];
    let statuses: Vec<u16> = same_64.iter().map(|ip| from("/by64", ip)).collect();
    assert_eq!(statuses, [200, 200, 429], "one /64 is one client");
    assert_eq!(from("/by64", "2001:db8:1:3::1"), 200, "another /64 is another client");
    // IPv4 (and IPv4-mapped IPv6) clients keep their full address.
    assert_eq!(from("/by64", "192.0.2.1"), 200);
    assert_eq!(from("/by64", "192.0.2.2"), 200);
    let statuses: Vec<u16> = same_64.iter().map(|ip| from("/by128", ip)).collect();
    assert_eq!(statuses, [200, 200, 200], "ipv6_prefix: 128 counts each address");
}
