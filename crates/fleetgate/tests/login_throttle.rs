//! The login-failure throttle (`count_statuses`): three instances on one Redis; only answers
//! with the listed statuses count, failures spread over instances add up, and once the budget
//! is spent the next request is refused (429) before it is served.

mod common;

use common::*;
use fleetgate_testkit::RedisServer;

#[test]
fn failures_spread_over_three_instances_add_up_and_successes_do_not_count() {
    let redis = RedisServer::start();
    let cfg = format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\n  access_log: false\nstore:\n  url: {}\n  key_prefix: login\n  timeout_ms: 500\nrate_limits:\n  - name: login-failures\n    key: header:x-user\n    rate: 5/15m\n    count_statuses: [401, 403]\nroutes:\n  - name: fail\n    match: {{ path_prefix: /fail }}\n    respond: {{ status: 401, body: wrong password }}\n  - name: forbidden\n    match: {{ path_prefix: /forbidden }}\n    respond: {{ status: 403, body: no }}\n  - name: ok\n    match: {{ path_prefix: /ok }}\n    respond: {{ status: 200, body: welcome }}\n",
        redis.url()
    );
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    let as_user = |gw: &Gateway, path: &str, user: &str| gw.get(path, &[("x-user", user.as_bytes())]).status;
    // Successes never count: far more than the budget, over every instance.
    for i in 0..12 {
        assert_eq!(as_user(&gws[i % 3], "/ok", "alice"), 200, "success {i}");
    }
    // Five failures (401 and 403 both count), one instance after another.
    let failures = ["/fail", "/fail", "/forbidden", "/fail", "/fail"];
    for (i, path) in failures.iter().enumerate() {
        let want = if *path == "/fail" { 401 } else { 403 };
        assert_eq!(as_user(&gws[i % 3], path, "alice"), want, "failure {i} is answered");
    }
    // The sixth, on any instance, is refused before it is served; so is a success now.
    for gw in &gws {
        assert_eq!(as_user(gw, "/fail", "alice"), 429);
        assert_eq!(as_user(gw, "/ok", "alice"), 429, "the budget is spent for every answer");
    }
    // Another user is unaffected.
    assert_eq!(as_user(&gws[1], "/fail", "bob"), 401);
    assert_eq!(as_user(&gws[2], "/ok", "bob"), 200);
}

/// `POST path` with `body` of `content_type` to `gw`, through a raw connection.
fn post(gw: &Gateway, path: &str, content_type: &str, body: &str) -> Reply {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_request(gw.addr(), req.as_bytes()).expect("POST through the gateway")
}

/// A login endpoint throttled per user name read from the body (`json:user`, `form:user`):
/// five failures (the upstream's 401) for one user spread over three instances, then the
/// sixth, on any instance, is refused without reaching the upstream; another user is
/// unaffected; the upstream gets every body whole; a body that is not JSON falls back to the
/// missing-key rule (here `refuse`: 400).
#[test]
fn failed_logins_counted_by_a_body_field_add_up_across_the_fleet() {
    let redis = RedisServer::start();
    let upstream = Upstream::start("auth");
    let cfg = format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\n  access_log: false\nstore:\n  url: {}\n  key_prefix: body-login\n  timeout_ms: 500\nupstreams:\n  auth:\n    targets: [{}]\nroutes:\n  - name: login\n    match: {{ path_prefix: /login }}\n    upstream: auth\n    rate_limits:\n      - {{ name: per-user, key: json:user, rate: 5/15m, count_statuses: [401], on_missing_key: refuse }}\n  - name: form-login\n    match: {{ path_prefix: /form }}\n    upstream: auth\n    rewrite: {{ prefix: /login }}\n    rate_limits:\n      - {{ name: per-user, key: form:user, rate: 2/15m, count_statuses: [401], body_limit: 64 }}\n",
        redis.url(),
        upstream.url()
    );
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    let json = "application/json";
    let wrong = r#"{"user":"alice","pass":"wrong"}"#;
    for i in 0..5 {
        let r = post(&gws[i % 3], "/login", json, wrong);
        assert_eq!(r.status, 401, "failure {i}: {r:?}");
        assert_eq!(r.body, format!("denied: {wrong}"), "the upstream got the body whole");
    }
    let reached = upstream.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(reached, 5);
    for (i, gw) in gws.iter().enumerate() {
        let r = post(gw, "/login", json, r#"{"user":"alice","pass":"right"}"#);
        assert_eq!(r.status, 429, "instance {i}: alice's budget is spent: {r:?}");
    }
    assert_eq!(
        upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
        reached,
        "refused logins never reach the upstream"
    );
    // Another user, in a differently ordered body, is counted apart.
    let bob = post(&gws[1], "/login", json, r#"{"pass":"right","user":"bob"}"#);
    assert_eq!((bob.status, bob.body.as_str()), (200, "welcome"));
    // Not JSON, or no user field: the missing-key rule (refuse) answers 400 at the gateway.
    for body in ["user=alice&pass=wrong", r#"{"name":"alice"}"#] {
        let r = post(&gws[2], "/login", json, body);
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    // form:user, two failures allowed; a body over body_limit (64 bytes) is not read, so it
    // counts in the shared anonymous bucket instead of carol's.
    for (i, gw) in gws.iter().enumerate().take(2) {
        let r = post(gw, "/form", "application/x-www-form-urlencoded", "user=carol&pass=no");
        assert_eq!(r.status, 401, "form failure {i}: {r:?}");
    }
    let r = post(
        &gws[2],
        "/form",
        "application/x-www-form-urlencoded",
        "user=carol&pass=right",
    );
    assert_eq!(r.status, 429, "carol's form budget is spent: {r:?}");
    let long = format!("user=carol&pass=right&pad={}", "x".repeat(100));
    let r = post(&gws[0], "/form", "application/x-www-form-urlencoded", &long);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "welcome"),
        "over the cap: not carol's bucket, body sent whole"
    );
}
