//! End to end, as a client sees it: the real binary, real upstreams, real sockets.

mod common;

use common::*;
use std::time::{Duration, Instant};

const BASE: &str = "listen: 127.0.0.1:{PORT}\nadmin:\n  listen: 127.0.0.1:{ADMIN}\nlog:\n  level: warn\n";

#[test]
fn quickstart_turns_200s_into_a_429_with_headers() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart.yaml")).unwrap();
    let text = text
        .replace("127.0.0.1:8080", "127.0.0.1:{PORT}")
        .replace("127.0.0.1:9090", "127.0.0.1:{ADMIN}");
    let gw = Gateway::start(&text);
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let r = gw.get("/", &[]);
        statuses.push(r.status);
        last = Some(r);
    }
    let first_429 = statuses.iter().position(|s| *s == 429).expect("a 429 after the limit");
    assert!(
        first_429 >= 1 && statuses[..first_429].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    let limited = last.unwrap();
    assert_eq!(limited.status, 429);
    let retry: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!(retry >= 1);
    assert!(
        limited.header("ratelimit").unwrap().contains(";r=0;t="),
        "{:?}",
        limited.headers
    );
    assert!(
        limited.header("ratelimit-policy").unwrap().contains(";q="),
        "{:?}",
        limited.headers
    );
    let body = limited.json();
    assert_eq!(body["error"], "rate_limited");
    assert!(body["limit"].is_string());
}

#[test]
fn allowed_responses_carry_ratelimit_headers_and_several_limits_apply() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  backend:\n    targets: [{}]\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: backend\n    rate_limits:\n      - name: per-key\n        key: header:x-api-key\n        rate: 3/1m\n      - name: per-ip\n        key: ip\n        rate: 5/1m\n        algorithm: sliding_window\n",
        up.url()
    ));
    let r = gw.get("/api/x", &[("x-api-key", b"k1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "upstream:a");
    assert_eq!(
        r.header("ratelimit-policy").unwrap(),
        "\"per-key\";q=3;w=60, \"per-ip\";q=5;w=60"
    );
    assert!(
        r.header("ratelimit").unwrap().starts_with("\"per-key\";r=2;t="),
        "{:?}",
        r.header("ratelimit")
    );
    for _ in 0..2 {
        assert_eq!(gw.get("/api/x", &[("x-api-key", b"k1")]).status, 200);
    }
    let r = gw.get("/api/x", &[("x-api-key", b"k1")]);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["limit"], "per-key");
    // Another key has its own bucket, but the per-ip limit (5) is shared by both.
    // (A request refused by per-key never reached per-ip, so it spent nothing there.)
    assert_eq!(gw.get("/api/x", &[("x-api-key", b"k2")]).status, 200);
    assert_eq!(gw.get("/api/x", &[("x-api-key", b"k3")]).status, 200);
    let r = gw.get("/api/x", &[("x-api-key", b"k4")]);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["limit"], "per-ip");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[test]
fn missing_key_is_shared_or_refused_as_configured_and_odd_bytes_are_fine() {
    let gw = Gateway::start(&format!(
        "{BASE}routes:\n  - name: shared\n    match: {{ path_prefix: /shared }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - name: k\n        key: header:x-api-key\n        rate: 2/1m\n  - name: strict\n    match: {{ path_prefix: /strict }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - name: k\n        key: cookie:sid\n        rate: 2/1m\n        on_missing_key: refuse\n"
    ));
    assert_eq!(gw.get("/shared", &[]).status, 200);
    assert_eq!(gw.get("/shared", &[]).status, 200);
    assert_eq!(
        gw.get("/shared", &[]).status,
        429,
        "requests without the header share one bucket"
    );
    let r = gw.get("/strict", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "missing_key");
    assert_eq!(gw.get("/strict", &[("cookie", b"a=1; sid=xyz")]).status, 200);
    // Non-UTF-8 header bytes still make a bounded key.
    assert_eq!(gw.get("/shared", &[("x-api-key", &[0xff, 0xfe, 0x80])]).status, 200);
    assert_eq!(
        gw.get("/shared", &[("x-api-key", "k".repeat(6000).as_bytes())]).status,
        200
    );
}

#[test]
fn forwards_with_x_forwarded_headers_and_strips_prefix() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  backend:\n    targets: [{}]\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: backend\n    strip_prefix: true\n",
        up.url()
    ));
    let r = gw.get("/api/headers?q=1", &[("x-forwarded-for", b"6.6.6.6")]);
    assert_eq!(r.status, 200, "{}", r.body);
    let h = r.json();
    assert_eq!(h["path"], "/headers?q=1");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted client cannot spoof X-Forwarded-For"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "127.0.0.1");
    assert_eq!(gw.get("/other", &[]).status, 404);
}

#[test]
fn large_bodies_and_chunked_answers_pass_through_whole() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: b\n",
        up.url()
    ));
    // 3 MiB each way: far more than any socket or hyper buffer, so both directions stream.
    let body: String = (0..3 * 1024 * 1024).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw_request(gw.addr(), req.as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "the echoed body differs from the one sent");
    // An answer written in 50 chunks over time arrives whole, and so does the next one on the
    // same pooled connections.
    let expected: String = (0..50).map(|i| format!("chunk-{i};")).collect();
    for _ in 0..3 {
        let r = gw.get("/chunks", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, expected.as_str()));
    }
    for _ in 0..10 {
        let r = gw.get("/", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "upstream:a"));
    }
}

#[test]
fn upstream_closing_its_connections_costs_no_request() {
    let up = Upstream::start("a");
    let port = up.port;
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: b\n",
        up.url()
    ));
    // The upstream closes after each answer: no dead connection is reused.
    for i in 0..10 {
        let r = gw.get("/close", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "upstream:a"), "request {i}");
    }
    // Idle pooled connections, then the upstream restarts: every one of them is dead.
    for _ in 0..10 {
        assert_eq!(gw.get("/", &[]).status, 200);
    }
    drop(up);
    let up = Upstream::start_on("restarted", port);
    for i in 0..10 {
        let r = gw.get("/", &[]);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "upstream:restarted"),
            "request {i} after the restart"
        );
    }
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 10);
}

#[test]
fn trusted_proxies_let_x_forwarded_for_choose_the_client() {
    let gw = Gateway::start(&format!(
        "{BASE}trusted_proxies: [127.0.0.1/32]\nroutes:\n  - name: r\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - name: per-ip\n        key: ip\n        rate: 1/1m\n"
    ));
    assert_eq!(gw.get("/", &[("x-forwarded-for", b"198.51.100.1")]).status, 200);
    assert_eq!(gw.get("/", &[("x-forwarded-for", b"198.51.100.1")]).status, 429);
    assert_eq!(
        gw.get("/", &[("x-forwarded-for", b"198.51.100.2")]).status,
        200,
        "each client IP has its own bucket"
    );
}

#[test]
fn unreachable_upstream_is_502_and_slow_is_504_with_json() {
    let up = Upstream::start("slow");
    let dead = free_port();
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  dead:\n    targets: [http://127.0.0.1:{dead}]\n  slow:\n    targets: [{}]\n    request_timeout_ms: 300\nroutes:\n  - name: dead\n    match: {{ path_prefix: /dead }}\n    upstream: dead\n  - name: slow\n    match: {{ path_prefix: /slow }}\n    upstream: slow\n",
        up.url()
    ));
    let r = gw.get("/dead", &[]);
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unreachable");
    let started = Instant::now();
    let r = gw.get("/slow", &[]);
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "the timeout, not the upstream, ended it"
    );
}

#[test]
fn bad_requests_get_400_431_and_413() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}server:\n  max_header_bytes: 8192\n  max_body_bytes: 1000\nupstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: b\n",
        up.url()
    ));
    let r = raw_request(gw.addr(), b"GARBAGE\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let r = raw_request(gw.addr(), big.as_bytes()).unwrap();
    assert_eq!(r.status, 431);
    let body = "x".repeat(2000);
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw_request(gw.addr(), req.as_bytes()).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    // Chunked bodies are limited while streaming.
    let chunk = "y".repeat(600);
    let req = format!("POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n");
    let r = raw_request(gw.addr(), req.as_bytes()).unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    let small =
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789".to_string();
    let r = raw_request(gw.addr(), small.as_bytes()).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "received 10"));
}

#[test]
fn concurrency_permit_is_released_when_the_response_ends() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: b\n    concurrency_limits:\n      - name: one\n        key: global\n        max: 1\n",
        up.url()
    ));
    let addr = gw.addr();
    let holder = std::thread::spawn(move || http_get(addr, "/hold", &[]).unwrap());
    up.wait_for_hits(1);
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "concurrency_limited");
    up.release();
    assert_eq!(holder.join().unwrap().status, 200);
    // The permit comes back when the first response's body ends.
    wait_until_allowed(&gw, "/x", "permit never released");
}

/// Retries `GET path` every 20 ms until it answers 200 (while it answers 429); fails with
/// `why` after 5 s, and at once on any other status.
fn wait_until_allowed(gw: &Gateway, path: &str, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = gw.get(path, &[]);
        if r.status == 200 {
            return;
        }
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(Instant::now() < deadline, "{why}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrency_permit_is_released_when_the_client_goes_away() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: b\n    concurrency_limits:\n      - name: one\n        key: global\n        max: 1\n",
        up.url()
    ));
    // A client takes the only permit with a request the upstream holds, then hangs up.
    let mut client = std::net::TcpStream::connect(gw.addr()).unwrap();
    std::io::Write::write_all(&mut client, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    up.wait_for_hits(1);
    assert_eq!(
        gw.get("/x", &[]).status,
        429,
        "the permit is held while the client waits"
    );
    drop(client);
    // The upstream still holds that request, but nobody waits for it: the permit comes back.
    wait_until_allowed(&gw, "/x", "permit never released after the client left");
    up.release();
}

#[test]
fn active_health_checks_steer_traffic_away_from_a_failing_target() {
    let good = Upstream::start("good");
    let bad = Upstream::start("bad");
    bad.set_healthy(false);
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}, {}]\n    health_check:\n      path: /health\n      interval_ms: 100\n      unhealthy_threshold: 1\nroutes:\n  - name: r\n    upstream: b\n",
        good.url(),
        bad.url()
    ));
    // Wait until the health checks marked the bad target down (as /healthz reports it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = http_get(gw.admin_addr(), "/healthz", &[]).unwrap().json();
        if h["upstreams"]["b"]["healthy_targets"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the bad target was never marked down: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = bad.hits.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(gw.get("/x", &[]).body, "upstream:good");
    }
    assert_eq!(bad.hits.load(std::sync::atomic::Ordering::SeqCst), before);
    let health = http_get(gw.admin_addr(), "/healthz", &[]).unwrap().json();
    assert_eq!(health["upstreams"]["b"]["healthy_targets"], 1);
}

#[test]
fn passive_ejection_after_connection_failures() {
    let good = Upstream::start("good");
    let dead = free_port();
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}, http://127.0.0.1:{dead}]\n    passive:\n      failures: 2\n      eject_ms: 60000\nroutes:\n  - name: r\n    upstream: b\n",
        good.url()
    ));
    let statuses: Vec<u16> = (0..20).map(|_| gw.get("/x", &[]).status).collect();
    let failures = statuses.iter().filter(|s| **s == 502).count();
    assert_eq!(failures, 2, "the dead target is ejected after 2 failures: {statuses:?}");
}

#[test]
fn admin_endpoints_report_health_readiness_and_metrics() {
    let gw = Gateway::start(&format!(
        "{BASE}routes:\n  - name: r\n    respond: {{ status: 201, body: made }}\n"
    ));
    let r = gw.get("/", &[]);
    assert_eq!((r.status, r.body.as_str()), (201, "made"));
    let h = http_get(gw.admin_addr(), "/healthz", &[]).unwrap();
    assert_eq!(h.status, 200);
    let j = h.json();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["store"], "off");
    assert_eq!(http_get(gw.admin_addr(), "/readyz", &[]).unwrap().status, 200);
    let m = http_get(gw.admin_addr(), "/metrics", &[]).unwrap();
    assert!(
        m.body
            .contains("fleetgate_requests_total{route=\"r\",status=\"201\"} 1"),
        "{}",
        m.body
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let up = Upstream::start("a");
    let mut gw = Gateway::start(&format!(
        "{BASE}server:\n  drain_timeout_ms: 5000\nupstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: b\n",
        up.url()
    ));
    let addr = gw.addr();
    let inflight = std::thread::spawn(move || http_get(addr, "/slow", &[]).unwrap());
    up.wait_for_hits(1);
    let status = gw.terminate();
    assert!(status.success(), "exit status {status:?}");
    let r = inflight.join().unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "upstream:a"),
        "the in-flight request finished"
    );
    assert!(http_get(addr, "/", &[]).is_err(), "no longer accepting");
}

#[test]
fn redis_store_shares_one_budget_between_two_instances() {
    let redis = fleetgate_testkit::RedisServer::start();
    let cfg = format!(
        "{BASE}store:\n  url: {}\n  key_prefix: e2e\nroutes:\n  - name: r\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - name: g\n        key: global\n        rate: 10/1h\n",
        redis.url()
    );
    let a = Gateway::start(&cfg);
    let b = Gateway::start(&cfg);
    let mut ok = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        if gw.get("/", &[]).status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "two instances admit the limit once, not twice");
    let j = http_get(a.admin_addr(), "/healthz", &[]).unwrap().json();
    assert_eq!(j["store"], "ok");
}

#[test]
fn one_access_log_line_per_request_unless_turned_off() {
    let dir = std::env::temp_dir();
    let routes = "routes:\n  - name: hello\n    respond: { status: 200, body: hi }\n";
    let on = dir.join(format!("fleetgate-access-on-{}.log", std::process::id()));
    let gw = Gateway::start_with_log(
        &format!("listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: info\n{routes}"),
        &on,
    );
    assert_eq!(gw.get("/first?q=1", &[]).status, 200);
    assert_eq!(gw.get("/nowhere-else", &[]).status, 200);
    // The log is written by a background thread: wait for both lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&on).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains("fleetgate::access"))
            .map(str::to_string)
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 2, "one line per request: {lines:?}");
    for (line, path) in lines.iter().zip(["/first", "/nowhere-else"]) {
        for field in [
            "method=GET",
            &format!("path={path}"),
            "status=200",
            "route=\"hello\"",
            "micros=",
        ] {
            assert!(line.contains(field), "{field} missing from {line:?}");
        }
    }
    drop(gw);
    let _ = std::fs::remove_file(&on);

    let off = dir.join(format!("fleetgate-access-off-{}.log", std::process::id()));
    let gw = Gateway::start_with_log(
        &format!("listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: info\n  access_log: false\n{routes}"),
        &off,
    );
    assert_eq!(gw.get("/first", &[]).status, 200);
    // A graceful stop writes "fleetgate stopped" after every request's log line would have been.
    let mut gw = gw;
    assert!(gw.terminate().success());
    let text = std::fs::read_to_string(&off).unwrap_or_default();
    assert!(text.contains("fleetgate stopped"), "the log is complete: {text:?}");
    assert!(text.contains("fleetgate started"), "the log itself is on: {text:?}");
    assert!(
        !text.contains("fleetgate::access"),
        "no access line when turned off: {text:?}"
    );
    drop(gw);
    let _ = std::fs::remove_file(&off);
}

/// Reads until the peer closes or errors; `true` if the gateway ended the connection (EOF or
/// reset) before the generous `limit` this side waits.
fn closed_by_peer(stream: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn idle_and_slow_clients_are_disconnected_after_the_idle_timeout() {
    use std::io::Write;
    use std::net::TcpStream;
    let gw = Gateway::start(&format!(
        "{BASE}server:\n  idle_timeout_ms: 200\nroutes:\n  - name: r\n    respond: {{ status: 200, body: ok }}\n"
    ));
    // Connects and never sends a byte.
    let mut silent = TcpStream::connect(gw.addr()).unwrap();
    // Sends half a request head and stalls (slowloris).
    let mut slow = TcpStream::connect(gw.addr()).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    // Gets an answer on a keep-alive connection, then goes quiet.
    let mut quiet = TcpStream::connect(gw.addr()).unwrap();
    quiet.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 17];
    std::io::Read::read_exact(&mut quiet, &mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK\r\n");
    // 10 s is only this side's safety bound: the gateway closes each well before it.
    assert!(
        closed_by_peer(&mut silent, Duration::from_secs(10)),
        "a silent connection stays open"
    );
    assert!(
        closed_by_peer(&mut slow, Duration::from_secs(10)),
        "an unfinished head keeps its connection"
    );
    assert!(
        closed_by_peer(&mut quiet, Duration::from_secs(10)),
        "an idle keep-alive connection stays open"
    );
    // The gateway still serves new connections.
    assert_eq!(gw.get("/", &[]).status, 200);
}

#[test]
fn check_validates_without_starting() {
    let dir = std::env::temp_dir();
    let good = dir.join(format!("fg-check-good-{}.yaml", std::process::id()));
    std::fs::write(&good, "routes:\n  - name: r\n    respond: { status: 200, body: ok }\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = dir.join(format!("fg-check-bad-{}.yaml", std::process::id()));
    std::fs::write(&bad, "routes:\n  - name: r\n    respond: { status: 200, body: ok }\n    rate_limits:\n      - name: l\n        key: ip\n        rate: 10/5y\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 7") || err.contains(":7:"), "{err}");
    assert!(err.contains("rate"), "{err}");
    let _ = std::fs::remove_file(good);
    let _ = std::fs::remove_file(bad);
}

#[test]
fn a_long_request_keeps_its_permit_past_the_lease() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: b\n    concurrency_limits:\n      - name: one\n        key: global\n        max: 1\n        lease_ms: 300\n",
        up.url()
    ));
    let addr = gw.addr();
    let holder = std::thread::spawn(move || http_get(addr, "/hold", &[]).unwrap());
    up.wait_for_hits(1);
    // Three renewals later (each one every lease / 2) the first request still holds the only
    // permit: more than a whole lease has passed since it took it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
        let renewed = metric_sum(
            &m,
            "fleetgate_concurrency_permit_renewals_total{route=\"r\",limit=\"one\",outcome=\"renewed\"}",
        );
        if renewed >= 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the permit was never renewed three times: {m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gw.get("/x", &[]).status, 429);
    up.release();
    assert_eq!(holder.join().unwrap().status, 200);
}
