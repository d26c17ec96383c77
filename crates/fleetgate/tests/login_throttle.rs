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
