//! One budget across instances: three real gateway processes on one Redis, driven concurrently
//! round-robin as a load balancer would. When demand exceeds a limit, the fleet admits exactly
//! the limit.

mod common;

use common::*;
use fleetgate_testkit::RedisServer;
use std::time::{Duration, Instant};

fn fleet_config(redis: &RedisServer, limits: &str) -> String {
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\n  access_log: false\nstore:\n  url: {}\n  key_prefix: fleet\n  timeout_ms: 500\nroutes:\n{limits}",
        redis.url()
    )
}

fn route(name: &str, algorithm: &str, rate: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - name: all\n        key: global\n        rate: {rate}\n        algorithm: {algorithm}\n"
    )
}

#[test]
fn three_instances_admit_exactly_the_limit_for_every_algorithm() {
    let redis = RedisServer::start();
    // Slow refills so that, within the test, the limit is the burst or the window's N exactly.
    let routes = [
        route("gcra", "gcra", "40/1h"),
        route("sliding", "sliding_window", "40/1h"),
        route("fixed", "fixed_window", "40/1d"),
    ]
    .concat();
    let cfg = fleet_config(&redis, &routes);
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    for name in ["gcra", "sliding", "fixed"] {
        let statuses = drive(&[&a, &b, &c], &format!("/{name}"), 150, 12);
        let (ok, limited) = (count(&statuses, 200), count(&statuses, 429));
        println!("fleet {name}: observed {ok} admitted, allowed 40 (3 instances, 150 requests, {limited} refused)");
        assert_eq!(ok, 40, "{name}: {statuses:?}");
        assert_eq!(ok + limited, 150, "{name}: every other answer is a 429");
    }
}

#[test]
fn gcra_refills_are_shared_across_instances() {
    let redis = RedisServer::start();
    // 10 per second with a burst of 5: over about 1.5 s of demand the fleet may admit
    // 5 + elapsed/100ms, whichever instance the requests land on.
    let cfg = fleet_config(&redis, &format!("{}        burst: 5\n", route("r", "gcra", "10/1s")));
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    let started = Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_millis(1500) {
        statuses.extend(drive(&[&a, &b, &c], "/r", 30, 6));
    }
    let elapsed = started.elapsed();
    let ok = count(&statuses, 200) as u128;
    let bound = 5 + elapsed.as_millis() / 100;
    println!("fleet gcra refill: observed {ok} admitted over {elapsed:?}, allowed at most {bound}");
    assert!(ok <= bound, "admitted {ok} > {bound}");
    // Three separate in-memory limiters would have admitted about three times the bound.
    assert!(ok >= 5 + (elapsed.as_millis() / 100) / 2, "refills too slow: {ok}");
}

#[test]
fn concurrency_limit_holds_fleet_wide() {
    let redis = RedisServer::start();
    let up = Upstream::start("u");
    let cfg = format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\nstore:\n  url: {}\nupstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n    concurrency_limits:\n      - name: two\n        key: global\n        max: 2\n",
        redis.url(),
        up.url()
    );
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    let addrs = [a.addr(), b.addr(), c.addr()];
    let holders: Vec<_> = (0..6)
        .map(|i| std::thread::spawn(move || http_get(addrs[i % 3], "/hold", &[]).unwrap().status))
        .collect();
    // Wait until the admitted requests reached the upstream and the other four were answered
    // (refused): only then is the count of requests in the upstream final.
    up.wait_for_hits(2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while holders.iter().filter(|h| h.is_finished()).count() < 4 {
        assert!(
            Instant::now() < deadline,
            "the requests over the limit were never answered; {} reached the upstream; {}",
            up.hits.load(std::sync::atomic::Ordering::SeqCst),
            [&a, &b, &c]
                .map(|g| http_get(g.admin_addr(), "/metrics", &[])
                    .unwrap()
                    .body
                    .lines()
                    .filter(|l| (l.contains("concurrency") || l.contains("store_errors"))
                        && !l.ends_with(" 0")
                        && !l.starts_with('#'))
                    .collect::<Vec<_>>()
                    .join("\n"))
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let in_upstream = up.hits.load(std::sync::atomic::Ordering::SeqCst);
    up.release();
    let statuses: Vec<u16> = holders.into_iter().map(|h| h.join().unwrap()).collect();
    println!("fleet concurrency: observed {in_upstream} in flight, allowed 2; statuses {statuses:?}");
    assert_eq!(in_upstream, 2);
    assert_eq!(count(&statuses, 200), 2);
    assert_eq!(count(&statuses, 429), 4);
}

#[test]
fn instances_count_each_other_through_heartbeats() {
    let redis = RedisServer::start();
    let cfg = fleet_config(&redis, &route("r", "gcra", "10/1s"));
    let (a, _b, _c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let h = http_get(a.admin_addr(), "/healthz", &[]).unwrap().json();
        if h["live_instances"] == 3 {
            assert!(h["instance"].as_str().is_some_and(|s| !s.is_empty()));
            break;
        }
        assert!(Instant::now() < deadline, "live_instances never reached 3: {h}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lease_route(name: &str, algorithm: &str, rate: &str, max_batch: u64) -> String {
    format!(
        "{}        mode: lease\n        lease: {{ max_batch: {max_batch} }}\n",
        route(name, algorithm, rate)
    )
}

#[test]
fn lease_mode_never_admits_more_than_the_limit_across_three_instances() {
    let redis = RedisServer::start();
    // Batches of up to 10 units reserved per instance, spent locally. Over demand of 3x the
    // limit, the fleet admits at most the limit (zero overshoot by construction) and, since
    // batches shrink to one unit as the budget nears 0, close to all of it.
    let routes = [
        lease_route("gcra", "gcra", "60/1h", 10),
        lease_route("fixed", "fixed_window", "60/1d", 10),
        lease_route("sliding", "sliding_window", "60/1h", 10),
    ]
    .concat();
    let cfg = fleet_config(&redis, &routes);
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    for name in ["gcra", "fixed", "sliding"] {
        let statuses = drive(&[&a, &b, &c], &format!("/{name}"), 180, 12);
        let (ok, limited) = (count(&statuses, 200), count(&statuses, 429));
        println!(
            "fleet lease {name}: observed {ok} admitted, allowed 60 (3 instances, 180 requests, {limited} refused)"
        );
        assert!(ok <= 60, "{name}: lease mode overshot: {ok} admitted of 60");
        // Under-admission is bounded by the units the instances still hold (at most one batch
        // each): 3 x 10.
        assert!(ok >= 60 - 30, "{name}: {ok} admitted, more than 3 batches short of 60");
        assert_eq!(ok + limited, 180, "{name}: every other answer is a 429");
    }
    // The reservations were made in Redis: every instance's decisions are on one budget.
    let reserved = redis.command(&["KEYS", "fleet:rate:route/*"]);
    assert!(reserved.contains("route/gcra/all/gcra"), "{reserved}");
    assert!(reserved.contains("route/sliding/all/sliding"), "{reserved}");
}

#[test]
fn a_hot_key_hammered_on_three_instances_is_batched_and_stays_exact() {
    // Hot-key batching (store.rate_batch_max, default on): 48 clients on one key over three
    // instances. The fleet admits exactly the limit, in fewer script calls than decisions.
    let redis = RedisServer::start();
    let routes = [
        route("gcra", "gcra", "200/1h"),
        route("fixed", "fixed_window", "200/1d"),
    ]
    .concat();
    let cfg = fleet_config(&redis, &routes);
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    for name in ["gcra", "fixed"] {
        let before = redis.command_calls("evalsha");
        let statuses = drive(&[&a, &b, &c], &format!("/{name}"), 900, 48);
        let calls = redis.command_calls("evalsha") - before;
        let (ok, limited) = (count(&statuses, 200), count(&statuses, 429));
        println!(
            "fleet hot key {name}: {ok} admitted of 200 allowed, {limited} refused, {calls} EVALSHA for 900 decisions"
        );
        assert_eq!(ok, 200, "{name}: {statuses:?}");
        let mut others = std::collections::BTreeMap::new();
        for s in statuses.iter().filter(|s| **s != 200 && **s != 429) {
            *others.entry(*s).or_insert(0) += 1;
        }
        assert_eq!(
            ok + limited,
            900,
            "{name}: every other answer is a 429; the others, by status (0: no answer): {others:?}"
        );
        assert!(
            calls < 900,
            "{name}: {calls} script calls for 900 decisions: no batch formed"
        );
    }
    // With batching off, one call per decision (the figure above is the batching's doing).
    let off = fleet_config(&redis, &route("off", "gcra", "200/1h"))
        .replace("timeout_ms: 500", "timeout_ms: 500\n  rate_batch_max: 1");
    let off = Gateway::start(&off);
    let before = redis.command_calls("evalsha");
    let statuses = drive(&[&off], "/off", 300, 24);
    assert_eq!(count(&statuses, 200), 200);
    // At least one call per decision (the instances' own periodic calls come on top).
    let calls = redis.command_calls("evalsha") - before;
    assert!(
        calls >= 300,
        "rate_batch_max: 1 sends every decision alone, yet {calls} calls for 300"
    );
}

#[test]
fn a_hot_key_during_a_redis_pause_admits_nothing_extra_and_recovers() {
    // Decisions queued behind a call that hangs (redis-server SIGSTOPped) fail with it and
    // follow the limit's policy (closed: 503); none is admitted twice or invented, and after
    // the pause the fleet never admits more than the limit in all.
    let redis = RedisServer::start();
    let routes = "  - name: hot\n    match: { path_prefix: /hot }\n    respond: { status: 200, body: ok }\n    rate_limits:\n      - name: all\n        key: global\n        rate: 300/1h\n        on_store_error: closed\n";
    // The fleet's 500 ms store timeout: a loaded machine answered some calls after 100 ms,
    // and under `closed` those were 503s after the pause, where the test expects none.
    let cfg = fleet_config(&redis, routes);
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    let first = drive(&[&a, &b, &c], "/hot", 100, 24);
    assert_eq!(count(&first, 200), 100);
    redis.pause();
    let during = drive(&[&a, &b, &c], "/hot", 60, 24);
    redis.resume();
    assert_eq!(count(&during, 503), 60, "closed while the store hangs: {during:?}");
    // Back: each instance's breaker may refuse for a moment (each has its own); every
    // instance must answer again, one admission each, before the budget check.
    for g in [&a, &b, &c] {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut back = false;
        while !back && Instant::now() < deadline {
            back = drive(&[g], "/hot", 1, 1) == [200];
            if !back {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert!(back, "an instance answers again after the pause");
    }
    // Calls sent while the server was stopped ran when it resumed (their requests had been
    // answered 503): each charged at most its decisions, so the fleet's total stays within the
    // limit, and at most the 60 refused during the pause are missing from it.
    let rest = drive(&[&a, &b, &c], "/hot", 400, 48);
    let ok = count(&rest, 200);
    println!(
        "fleet hot key after a pause: {ok} admitted of the 197 left, {} refused",
        count(&rest, 429)
    );
    assert!(ok <= 197, "more than the limit: 100 + 3 + {ok} > 300");
    assert!(
        ok >= 197 - 60,
        "{ok} admitted: the pause cost more than its 60 decisions"
    );
    assert_eq!(ok + count(&rest, 429), 400, "every other answer is a 429: {rest:?}");
    for g in [&a, &b, &c] {
        assert_eq!(http_get(g.admin_addr(), "/healthz", &[]).unwrap().status, 200);
    }
}
