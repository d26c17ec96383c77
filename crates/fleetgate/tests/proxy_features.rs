//! Proxy features end to end, the real binary over real sockets: header rules, path rewrites,
//! matching on headers and query, cookie affinity across instances, retries on connect failure
//! within a budget, and least-request balancing.

mod common;

use common::raw_upstream::RawUpstream;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BASE: &str = "listen: 127.0.0.1:{PORT}\nadmin:\n  listen: 127.0.0.1:{ADMIN}\nlog:\n  level: error\n";

/// `METHOD path` with extra header lines (each ending in CRLF) and a body, on its own
/// connection.
fn send(gw: &Gateway, method: &str, path: &str, extra: &str, body: &str) -> Reply {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_request(gw.addr(), req.as_bytes()).unwrap()
}

fn get(gw: &Gateway, path: &str, extra: &str) -> Reply {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n");
    raw_request(gw.addr(), req.as_bytes()).unwrap()
}

fn metrics(gw: &Gateway) -> String {
    http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body
}

fn all_headers<'a>(r: &'a Reply, name: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn header_rules_edit_what_the_upstream_and_the_client_see() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: fixed\n    match: {{ path_prefix: /fixed }}\n    respond: {{ status: 200, body: ok, headers: {{ x-internal: secret, x-kept: kept }} }}\n    response_headers: {{ remove: [x-internal], add: {{ x-kept: also }} }}\n  - name: web\n    upstream: b\n    rate_limits:\n      - {{ name: all, key: global, rate: 1000/1m }}\n    request_headers:\n      set: {{ x-gateway: fleetgate, host: internal.example }}\n      add: {{ x-added: gw }}\n      remove: [x-debug]\n    response_headers:\n      set: {{ x-frame-options: DENY }}\n      add: {{ x-extra: \"1\" }}\n      remove: [ratelimit-policy]\n",
        up.url()
    ));
    let r = get(
        &gw,
        "/page",
        "X-Gateway: client\r\nX-Added: client\r\nX-Debug: 1\r\nX-Other: o\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = &up.wait_for(1)[0];
    assert_eq!(seen.all("x-gateway"), ["fleetgate"], "set replaces the client's value");
    assert_eq!(seen.all("x-added"), ["client", "gw"], "add appends");
    assert!(!seen.has("x-debug"), "remove deletes: {:?}", seen.headers);
    assert_eq!(seen.one("x-other"), "o", "other headers pass");
    assert_eq!(seen.one("host"), "internal.example", "host can be set");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-extra"), Some("1"));
    assert!(
        r.header("ratelimit-policy").is_none(),
        "response rules run last, after the limits added their headers: {r:?}"
    );
    assert!(r.header("ratelimit").is_some(), "only what was named is removed: {r:?}");

    let fixed = get(&gw, "/fixed", "");
    assert_eq!(fixed.status, 200);
    assert!(fixed.header("x-internal").is_none(), "{fixed:?}");
    assert_eq!(all_headers(&fixed, "x-kept"), ["kept", "also"]);
    assert!(fixed.header("x-frame-options").is_none(), "rules are per route");
}

#[test]
fn rewrites_replace_a_prefix_or_apply_a_regex_and_keep_the_query() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: v1\n    match: {{ path_prefix: /api/v1 }}\n    upstream: b\n    rewrite: {{ prefix: /internal/v2 }}\n  - name: users\n    match: {{ path_prefix: /u }}\n    upstream: b\n    rewrite: {{ regex: \"^/u/(?P<id>[0-9]+)/(.*)$\", replace: \"/users/$${{id}}/$2\" }}\n",
        up.url()
    ));
    for (path, want) in [
        ("/api/v1/items?page=2&q=a%20b", "/internal/v2/items?page=2&q=a%20b"),
        ("/api/v1", "/internal/v2"),
        ("/api/v1?x=1", "/internal/v2?x=1"),
        ("/u/42/profile?full=1", "/users/42/profile?full=1"),
        ("/u/abc", "/u/abc"),
    ] {
        let before = up.count();
        assert_eq!(get(&gw, path, "").status, 200, "{path}");
        let seen = up.wait_for(before + 1);
        assert_eq!(seen[before].target, want, "{path}");
    }
}

#[test]
fn routes_match_on_header_values_presence_and_query() {
    let gw = Gateway::start(&format!(
        "{BASE}routes:\n  - name: acme\n    match: {{ path_prefix: /web, headers: {{ x-tenant: acme }} }}\n    respond: {{ body: acme }}\n  - name: beta\n    match: {{ path_prefix: /web, query: {{ channel: beta }} }}\n    respond: {{ body: beta }}\n  - name: debug\n    match: {{ path_prefix: /web, headers: {{ x-debug: true }} }}\n    respond: {{ body: debug }}\n  - name: rest\n    respond: {{ body: rest }}\n"
    ));
    let body = |path: &str, extra: &str| get(&gw, path, extra).body;
    assert_eq!(body("/web/x", "X-Tenant: acme\r\n"), "acme");
    assert_eq!(body("/web/x", "x-tenant: other\r\n"), "rest", "an exact value");
    assert_eq!(
        body("/web/x", "X-Tenant: ACME\r\n"),
        "rest",
        "values are case-sensitive"
    );
    assert_eq!(body("/web/x?a=1&channel=beta", ""), "beta");
    assert_eq!(body("/web/x?channel=b%65ta", ""), "beta", "compared decoded");
    assert_eq!(body("/web/x?channel=stable", ""), "rest");
    assert_eq!(body("/web/x", "X-Debug: anything\r\n"), "debug", "presence");
    assert_eq!(
        body("/web/x?channel=beta", "X-Tenant: acme\r\n"),
        "acme",
        "first match in order wins"
    );
    assert_eq!(body("/other", "X-Tenant: acme\r\n"), "rest", "with the path too");
}

/// The target named by a body `upstream:NAME`.
fn target_of(r: &Reply) -> String {
    r.body
        .strip_prefix("upstream:")
        .unwrap_or_else(|| panic!("{r:?}"))
        .to_string()
}

/// `name=value` of a Set-Cookie header for `cookie`.
fn cookie_pair(r: &Reply, cookie: &str) -> Option<String> {
    all_headers(r, "set-cookie")
        .into_iter()
        .find(|c| c.starts_with(&format!("{cookie}=")))
        .map(|c| c.split(';').next().unwrap().to_string())
}

#[test]
fn an_affinity_cookie_from_one_instance_is_honoured_by_the_others() {
    let targets: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let urls: Vec<String> = targets.iter().map(|t| t.url()).collect();
    let yaml = format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}]\n    affinity: {{ cookie: fg_target, ttl: 1h }}\n    health_check: {{ path: /health, interval_ms: 50, unhealthy_threshold: 1 }}\nroutes:\n  - name: all\n    upstream: b\n",
        urls.join(", ")
    );
    let gws: Vec<Gateway> = (0..3).map(|_| Gateway::start(&yaml)).collect();
    let first = get(&gws[0], "/", "");
    assert_eq!(first.status, 200);
    let pair = cookie_pair(&first, "fg_target").unwrap_or_else(|| panic!("no cookie: {first:?}"));
    let set = all_headers(&first, "set-cookie").join(" | ");
    assert!(set.contains("Max-Age=3600") && set.contains("HttpOnly"), "{set}");
    let pinned = target_of(&first);
    let cookie = format!("Cookie: other=1; {pair}\r\n");
    for gw in &gws {
        for _ in 0..6 {
            let r = get(gw, "/", &cookie);
            assert_eq!(target_of(&r), pinned, "every instance sends the cookie's target");
            assert!(
                cookie_pair(&r, "fg_target").is_none(),
                "no new cookie while it holds: {r:?}"
            );
        }
    }
    // Without the cookie, round robin spreads requests over the targets.
    let spread: std::collections::HashSet<String> = (0..6).map(|_| target_of(&get(&gws[1], "/", ""))).collect();
    assert_eq!(spread.len(), 3, "{spread:?}");
    // An unknown id is balanced and the cookie set anew.
    let r = get(&gws[2], "/", "Cookie: fg_target=0000000000000000\r\n");
    assert!(cookie_pair(&r, "fg_target").is_some(), "{r:?}");
    // The pinned target goes down: the cookie's requests are balanced elsewhere and re-pinned.
    let idx = ["a", "b", "c"].iter().position(|n| *n == pinned).unwrap();
    targets[idx].set_healthy(false);
    let gauge = format!(
        "fleetgate_upstream_target_healthy{{upstream=\"b\",target=\"127.0.0.1:{}\"}} 0",
        targets[idx].port
    );
    for gw in &gws {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !metrics(gw).contains(&gauge) {
            assert!(Instant::now() < deadline, "the health check never marked {pinned} down");
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = get(gw, "/", &cookie);
        assert_eq!(r.status, 200);
        assert_ne!(target_of(&r), pinned, "a down target is not used");
        let renewed = cookie_pair(&r, "fg_target").unwrap_or_else(|| panic!("the cookie is set again: {r:?}"));
        assert_ne!(renewed, pair);
        let again = get(gw, "/", &format!("Cookie: {renewed}\r\n"));
        assert_eq!(target_of(&again), target_of(&r), "the new cookie holds");
    }
}

/// A port with nothing listening: connecting is refused.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[test]
fn idempotent_requests_are_retried_on_another_target_when_connecting_fails() {
    let live = Upstream::start("live");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}, {}]\n    passive: {{ failures: 1000 }}\n    retries: {{ attempts: 2, budget: 100% }}\nroutes:\n  - name: all\n    upstream: b\n",
        dead_url(),
        live.url()
    ));
    // Round robin: every other request tries the dead target first.
    for i in 0..10 {
        let r = get(&gw, "/", "");
        assert_eq!((r.status, r.body.as_str()), (200, "upstream:live"), "GET {i}");
    }
    for i in 0..4 {
        let r = send(&gw, "PUT", "/", "", "put-body");
        assert_eq!(r.status, 200, "PUT {i}: {r:?}");
    }
    let m = metrics(&gw);
    let ok = metric_sum(&m, "fleetgate_upstream_retries_total{upstream=\"b\",outcome=\"ok\"}");
    assert_eq!(ok, 7.0, "5 GETs and 2 PUTs went to the dead target first:\n{m}");
    // POST is not idempotent: not retried, so half of them fail.
    let statuses: Vec<u16> = (0..10).map(|_| send(&gw, "POST", "/", "", "x").status).collect();
    assert_eq!(count(&statuses, 502), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 200), 5, "{statuses:?}");
    let after = metric_sum(
        &metrics(&gw),
        "fleetgate_upstream_retries_total{upstream=\"b\",outcome=\"ok\"}",
    );
    assert_eq!(after, ok, "no POST was retried");
}

#[test]
fn retries_stop_when_the_budget_is_spent() {
    let live = Upstream::start("live");
    // No share of requests, 1 retry per second: 10 retries in the 10 s window.
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}, {}]\n    passive: {{ failures: 1000 }}\n    retries: {{ attempts: 2, budget: 0%, min_per_second: 1 }}\nroutes:\n  - name: all\n    upstream: b\n",
        dead_url(),
        live.url()
    ));
    let statuses: Vec<u16> = (0..40).map(|_| get(&gw, "/", "").status).collect();
    let m = metrics(&gw);
    let metric = |outcome: &str| {
        metric_sum(
            &m,
            &format!("fleetgate_upstream_retries_total{{upstream=\"b\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(metric("ok"), 10.0, "{m}");
    assert_eq!(metric("budget_exhausted"), 10.0, "{m}");
    assert_eq!(count(&statuses, 502), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 200), 30, "{statuses:?}");
}

/// Sends `n` requests to `/hold` one after the other, each once the previous one has reached
/// a target, and returns how many reached the slow target (which holds them until released).
/// The fast target answers at once, and each of its answers is read before the next request.
fn spread_over_slow_and_fast(balance: &str, n: usize) -> usize {
    let slow = Upstream::start("slow");
    let fast = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}, {}]\n    balance: {balance}\nroutes:\n  - name: all\n    upstream: b\n",
        slow.url(),
        fast.url()
    ));
    let fast_done = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::new();
    for i in 0..n {
        let (addr, done) = (gw.addr(), fast_done.clone());
        let before = slow.hits.load(Ordering::SeqCst) + done.load(Ordering::SeqCst);
        held.push(std::thread::spawn(move || {
            let r = http_get(addr, "/hold", &[]).expect("request");
            if !r.body.starts_with("upstream:") {
                done.fetch_add(1, Ordering::SeqCst);
            }
            r.status
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while slow.hits.load(Ordering::SeqCst) + fast_done.load(Ordering::SeqCst) == before {
            assert!(Instant::now() < deadline, "request {i} reached no target");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let slow_hits = slow.hits.load(Ordering::SeqCst);
    assert_eq!(slow_hits + fast.count(), n);
    // A held request may be between being counted and waiting: release until all are back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held.iter().all(|h| h.is_finished()) {
        assert!(Instant::now() < deadline, "held requests did not come back");
        slow.release();
        std::thread::sleep(Duration::from_millis(10));
    }
    for h in held {
        let status = h.join().unwrap();
        assert_eq!(status, 200);
    }
    slow_hits
}

#[test]
fn least_request_sends_fewer_requests_to_a_slow_target_than_round_robin() {
    let rr = spread_over_slow_and_fast("round_robin", 20);
    let lr = spread_over_slow_and_fast("least_request", 20);
    assert_eq!(rr, 10, "round robin alternates");
    assert!(
        lr <= 3,
        "least request avoids the target with requests in flight: {lr} of 20 (round robin: {rr})"
    );
}
