//! In-flight dedup end to end: the real binary (three instances on one real Redis), an upstream
//! that counts its calls, answers slowly and numbers every answer (so clients that got the same
//! answer got one call's), and an SSE upstream that holds its second event until the test lets
//! it go.

mod common;

use bytes::Bytes;
use common::stand_in::StandIn;
use common::*;
use fleetgate_testkit::RedisServer;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The upstream stand-in. `POST /complete...` counts the call, waits `delay_ms`, then answers
/// `call=N body=BODY` (`POST /fail`: the same as a 503; `POST /empty`: 204 with `x-call: N`); `GET /sse` sends `data: one`, waits (up to 10 s) for `release`, then
/// `data: two` and ends.
struct Slow {
    port: u16,
    calls: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
    _server: StandIn,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

impl Slow {
    fn start(delay_ms: u64) -> Slow {
        let calls = Arc::new(AtomicUsize::new(0));
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let release = Arc::new(tokio::sync::Notify::new());
        let (c, d, r) = (calls.clone(), delay.clone(), release.clone());
        let server = StandIn::start(move |req| {
            let (c, d, r) = (c.clone(), d.clone(), r.clone());
            async move { answer(req, &c, &d, &r).await }
        });
        Slow {
            port: server.port,
            calls,
            release,
            _server: server,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until the upstream has had `n` calls.
    fn wait_calls(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.calls() < n {
            assert!(
                Instant::now() < deadline,
                "upstream calls stayed at {} (< {n})",
                self.calls()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    calls: &AtomicUsize,
    delay: &AtomicU64,
    release: &Arc<tokio::sync::Notify>,
) -> Response<Body> {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    if req.uri().path() == "/sse" {
        let waiter = release.clone();
        let stream = futures_util::stream::unfold(0u8, move |step| {
            let waiter = waiter.clone();
            async move {
                match step {
                    0 => Some((
                        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from("data: one\n\n"))),
                        1,
                    )),
                    1 => {
                        let _ = tokio::time::timeout(Duration::from_secs(10), waiter.notified()).await;
                        Some((Ok(Frame::data(Bytes::from("data: two\n\n"))), 2))
                    }
                    _ => None,
                }
            }
        });
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap();
    }
    let req_path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(delay.load(Ordering::SeqCst))).await;
    let text = format!("call={n} body={}", String::from_utf8_lossy(&body));
    if req_path == "/empty" {
        let mut resp = Response::new(BodyExt::boxed(Full::new(Bytes::new())));
        *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
        resp.headers_mut().insert("x-call", n.into());
        return resp;
    }
    let mut resp = Response::new(BodyExt::boxed(Full::new(Bytes::from(text))));
    if req_path == "/fail" {
        *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
    }
    resp
}

fn config(store: &str, upstream_port: u16, dedup: &str) -> String {
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\n  access_log: false\nstore:\n  url: {store}\n  key_prefix: dedup\n  timeout_ms: 300\nupstreams:\n  backend:\n    targets: [http://127.0.0.1:{upstream_port}]\nroutes:\n  - name: closed\n    match: {{ path_prefix: /closed }}\n    upstream: backend\n    dedup: {{ on_store_error: closed }}\n  - name: llm\n    match: {{ path_prefix: / }}\n    upstream: backend\n    dedup:\n{dedup}"
    )
}

/// One POST with `body` (one connection), waiting up to 20 s for the answer.
fn post(gw: &Gateway, path: &str, body: &str) -> Reply {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw_request_within(gw.addr(), req.as_bytes(), Duration::from_secs(20)).expect("answer")
}

fn role(r: &Reply) -> &str {
    r.header("x-dedup").unwrap_or("none")
}

#[test]
fn thirty_identical_posts_over_three_instances_reach_the_upstream_once() {
    let redis = RedisServer::start();
    let up = Slow::start(1500);
    let cfg = config(
        &redis.url(),
        up.port,
        "      key: [method, path, body]\n      window: 10s\n",
    );
    let gws = Arc::new([Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)]);
    let barrier = Arc::new(std::sync::Barrier::new(30));
    let clients: Vec<_> = (0..30)
        .map(|i| {
            let (gws, barrier) = (gws.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post(&gws[i % 3], "/v1/complete", r#"{"prompt":"hello"}"#)
            })
        })
        .collect();
    let replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(up.calls(), 1, "one upstream call for the fleet");
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.body, r#"call=1 body={"prompt":"hello"}"#,
            "every client got the one answer"
        );
        assert!(["leader", "follower", "replay"].contains(&role(r)), "{r:?}");
    }
    assert_eq!(replies.iter().filter(|r| role(r) == "leader").count(), 1);
    let leader = replies.iter().find(|r| role(r) == "leader").unwrap();
    assert_eq!(leader.header("cache-status"), Some("fleetgate-dedup; fwd=miss"));
    let follower = replies.iter().find(|r| role(r) != "leader").unwrap();
    assert_eq!(follower.header("cache-status"), Some("fleetgate-dedup; hit"));
    // The roles are counted per instance, and every client is counted once.
    let counted: f64 = gws
        .iter()
        .map(|g| {
            let m = http_get(g.admin_addr(), "/metrics", &[]).expect("metrics").body;
            ["leader", "follower", "replay"]
                .iter()
                .map(|role| metric_sum(&m, &format!("fleetgate_dedup_total{{route=\"llm\",role=\"{role}\"}}")))
                .sum::<f64>()
        })
        .sum();
    assert_eq!(counted, 30.0);
}

#[test]
fn different_bodies_are_separate_calls_and_the_window_replays_then_ends() {
    let redis = RedisServer::start();
    let up = Slow::start(300);
    let cfg = config(&redis.url(), up.port, "      window: 1s\n      max_body: 64\n");
    let gws = Arc::new([Gateway::start(&cfg), Gateway::start(&cfg)]);
    let (g1, g2) = (gws.clone(), gws.clone());
    let a = std::thread::spawn(move || post(&g1[0], "/v1/complete", "a"));
    let b = std::thread::spawn(move || post(&g2[1], "/v1/complete", "b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(up.calls(), 2, "different bodies: separate calls");
    assert_ne!(a.body, b.body);
    assert_eq!((role(&a), role(&b)), ("leader", "leader"));
    // Within the window, from the other instance: the stored answer.
    let again = post(&gws[1], "/v1/complete", "a");
    assert_eq!((again.status, role(&again)), (200, "replay"), "{again:?}");
    assert_eq!(again.body, a.body);
    assert_eq!(up.calls(), 2);
    // After the window: a new call.
    std::thread::sleep(Duration::from_millis(1500));
    let later = post(&gws[0], "/v1/complete", "a");
    assert_eq!(role(&later), "leader", "{later:?}");
    assert_eq!(up.calls(), 3);
    assert_ne!(later.body, a.body);
    // A body over max_body passes through, every time.
    let big = "x".repeat(100);
    for _ in 0..2 {
        let r = post(&gws[0], "/v1/complete", &big);
        assert_eq!((r.status, role(&r)), (200, "fallthrough"), "{r:?}");
        assert_eq!(
            r.header("cache-status"),
            Some("fleetgate-dedup; fwd=bypass; detail=body")
        );
    }
    assert_eq!(up.calls(), 5);
}

#[test]
fn followers_of_a_killed_leader_fall_through_and_share_one_new_call() {
    let redis = RedisServer::start();
    let up = Slow::start(2500);
    let cfg = config(&redis.url(), up.port, "      lease: 500ms\n      max_wait: 15s\n");
    let leader = Gateway::start(&cfg);
    let others = Arc::new([Gateway::start(&cfg), Gateway::start(&cfg)]);
    let leader_addr = leader.addr();
    let lead = std::thread::spawn(move || {
        let req = "POST /v1/complete HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\nq";
        raw_request_within(leader_addr, req.as_bytes(), Duration::from_secs(20))
    });
    up.wait_calls(1);
    let followers: Vec<_> = (0..6)
        .map(|i| {
            let others = others.clone();
            std::thread::spawn(move || post(&others[i % 2], "/v1/complete", "q"))
        })
        .collect();
    // The followers are waiting (the call takes 2.5 s); the leader's instance dies mid-call.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(up.calls(), 1, "followers wait for the leader");
    drop(leader);
    assert!(lead.join().unwrap().is_err(), "the leader's client lost its connection");
    let replies: Vec<Reply> = followers.into_iter().map(|f| f.join().unwrap()).collect();
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "call=2 body=q", "one new call, shared: {r:?}");
    }
    assert_eq!(up.calls(), 2, "the leader's call and one more");
    assert_eq!(replies.iter().filter(|r| role(r) == "leader").count(), 1);
}

#[test]
fn a_follower_past_max_wait_calls_the_upstream_itself() {
    let redis = RedisServer::start();
    let up = Slow::start(2000);
    let cfg = config(&redis.url(), up.port, "      max_wait: 300ms\n");
    let gws = Arc::new([Gateway::start(&cfg), Gateway::start(&cfg)]);
    let g = gws.clone();
    let lead = std::thread::spawn(move || post(&g[0], "/v1/complete", "z"));
    up.wait_calls(1);
    let (g1, g2) = (gws.clone(), gws.clone());
    let remote = std::thread::spawn(move || post(&g1[1], "/v1/complete", "z"));
    let local = std::thread::spawn(move || post(&g2[0], "/v1/complete", "z"));
    let (remote, local) = (remote.join().unwrap(), local.join().unwrap());
    let lead = lead.join().unwrap();
    assert_eq!((lead.status, role(&lead)), (200, "leader"));
    for r in [&remote, &local] {
        assert_eq!((r.status, role(r)), (200, "fallthrough"), "{r:?}");
        assert_eq!(
            r.header("cache-status"),
            Some("fleetgate-dedup; fwd=bypass; detail=max_wait")
        );
        assert_ne!(r.body, lead.body, "its own call");
    }
    assert_eq!(up.calls(), 3);
}

#[test]
fn with_redis_down_open_passes_through_and_closed_refuses() {
    let mut redis = RedisServer::start();
    let up = Slow::start(0);
    let gw = Gateway::start(&config(&redis.url(), up.port, "      on_store_error: open\n"));
    assert_eq!(role(&post(&gw, "/v1/complete", "r")), "leader");
    redis.kill();
    for i in 0..3 {
        let r = post(&gw, "/v1/complete", &format!("r{i}"));
        assert_eq!((r.status, role(&r)), (200, "fallthrough"), "open: {r:?}");
        assert!(r.body.starts_with("call="), "{r:?}");
        let r = post(&gw, "/closed", "r");
        assert_eq!(r.status, 503, "closed: {r:?}");
        assert!(r.body.contains("store_unavailable"), "{r:?}");
    }
}

/// Reads a streamed answer until `want` has arrived (bounded), returning what was read.
fn read_until(s: &mut TcpStream, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in {:?}",
            String::from_utf8_lossy(&buf)
        );
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&buf).to_string()
}

#[test]
fn an_sse_answer_is_fanned_out_to_followers_as_it_streams() {
    let redis = RedisServer::start();
    let up = Slow::start(0);
    let gw = Gateway::start(&config(&redis.url(), up.port, "      key: [method, path]\n"));
    let open = || {
        let mut s = TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        s.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n")
            .unwrap();
        s
    };
    let mut leader = open();
    let first = read_until(&mut leader, "data: one");
    assert!(first.to_ascii_lowercase().contains("x-dedup: leader"), "{first}");
    let mut followers: Vec<TcpStream> = (0..3).map(|_| open()).collect();
    for f in &mut followers {
        // The upstream holds its second event until released: this event came live.
        let got = read_until(f, "data: one");
        assert!(got.to_ascii_lowercase().contains("x-dedup: follower"), "{got}");
        assert!(!got.contains("data: two"));
    }
    up.release.notify_one();
    read_until(&mut leader, "data: two");
    for f in &mut followers {
        read_until(f, "data: two");
    }
    assert_eq!(
        up.calls(),
        1,
        "one upstream call for the leader and its three followers"
    );
}

#[test]
fn a_leader_whose_client_leaves_is_taken_over_by_one_waiter() {
    let redis = RedisServer::start();
    let up = Slow::start(1500);
    let cfg = config(&redis.url(), up.port, "      lease: 2s\n");
    let gws = Arc::new([Gateway::start(&cfg), Gateway::start(&cfg)]);
    let mut leader = TcpStream::connect(gws[0].addr()).unwrap();
    leader
        .write_all(b"POST /v1/complete HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nw")
        .unwrap();
    up.wait_calls(1);
    let followers: Vec<_> = (0..4)
        .map(|_| {
            let gws = gws.clone();
            std::thread::spawn(move || post(&gws[1], "/v1/complete", "w"))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(leader);
    let replies: Vec<Reply> = followers.into_iter().map(|f| f.join().unwrap()).collect();
    for r in &replies {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "call=2 body=w", "one new call, shared: {r:?}");
    }
    assert_eq!(up.calls(), 2);
}

#[test]
fn followers_of_a_leader_answered_5xx_call_the_upstream_themselves() {
    let redis = RedisServer::start();
    let up = Slow::start(800);
    let cfg = config(&redis.url(), up.port, "      window: 10s\n");
    let gws = Arc::new([Gateway::start(&cfg), Gateway::start(&cfg)]);
    let g = gws.clone();
    let lead = std::thread::spawn(move || post(&g[0], "/fail", "f"));
    up.wait_calls(1);
    let followers: Vec<_> = (0..4)
        .map(|i| {
            let gws = gws.clone();
            std::thread::spawn(move || post(&gws[i % 2], "/fail", "f"))
        })
        .collect();
    let lead = lead.join().unwrap();
    assert_eq!((lead.status, role(&lead)), (503, "leader"), "{lead:?}");
    for f in followers {
        let r = f.join().unwrap();
        assert_eq!(role(&r), "fallthrough", "{r:?}");
        assert_eq!(
            r.header("cache-status"),
            Some("fleetgate-dedup; fwd=bypass; detail=leader_failed")
        );
    }
    assert_eq!(up.calls(), 5, "a 5xx is not shared");
}

/// Commands Redis has run so far (`INFO commandstats`, summed), over a plain connection.
fn redis_calls(redis: &RedisServer) -> u64 {
    let mut s = TcpStream::connect(redis.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"INFO commandstats\r\n").unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    // A bulk reply: `$LEN`, then the text; read until it is all there.
    while Instant::now() < deadline {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        let Some((len, rest)) = text[1..].split_once("\r\n") else {
            continue;
        };
        if rest.len() >= len.parse::<usize>().unwrap_or(0) {
            break;
        }
    }
    text.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn waiters_on_one_instance_share_one_wait_and_the_access_log_has_their_role() {
    let redis = RedisServer::start();
    let up = Slow::start(1000);
    let log = std::env::temp_dir().join(format!("fleetgate-dedup-access-{}.log", std::process::id()));
    // Live events off: they are store calls of their own, per request.
    let cfg = config(&redis.url(), up.port, "      window: 10s\n")
        .replace("access_log: false", "access_log: json\nevents:\n  enabled: false");
    let gw = Arc::new(Gateway::start_with_log(&cfg, &log));
    // What the instance does by itself (heartbeats) over the same time.
    let idle = redis_calls(&redis);
    std::thread::sleep(Duration::from_millis(1000));
    let idle = redis_calls(&redis) - idle;
    let before = redis_calls(&redis);
    let barrier = Arc::new(std::sync::Barrier::new(40));
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let (gw, barrier) = (gw.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                post(&gw, "/v1/complete", "same")
            })
        })
        .collect();
    let replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let calls = (redis_calls(&redis) - before).saturating_sub(2 * idle);
    assert_eq!(up.calls(), 1);
    assert!(replies.iter().all(|r| r.status == 200 && r.body == "call=1 body=same"));
    // One driver talks to the store (a read, the claim, a read, then keeping the answer): far
    // below one call per client (the instance's own calls, at most two idle seconds' worth,
    // are not counted).
    assert!(
        calls < 20,
        "{calls} store calls for 40 identical requests on one instance"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains("\"dedup\""))
            .map(str::to_string)
            .collect();
        if lines.len() >= 40 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lines.len(), 40, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains(r#""dedup":"leader""#)).count(), 1);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(r#""dedup":"follower""#) || l.contains(r#""dedup":"replay""#))
            .count(),
        39
    );
    let _ = std::fs::remove_file(&log);
}

#[test]
fn an_empty_answer_is_shared_and_kept_too() {
    let redis = RedisServer::start();
    let up = Slow::start(600);
    let cfg = config(&redis.url(), up.port, "      window: 10s\n");
    let gws = Arc::new([Gateway::start(&cfg), Gateway::start(&cfg)]);
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let gws = gws.clone();
            std::thread::spawn(move || post(&gws[i % 2], "/empty", "e"))
        })
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!((r.status, r.header("x-call")), (204, Some("1")), "{r:?}");
    }
    let later = post(&gws[1], "/empty", "e");
    assert_eq!(
        (later.status, role(&later), later.header("x-call")),
        (204, "replay", Some("1"))
    );
    assert_eq!(up.calls(), 1);
}

#[test]
fn on_the_in_process_store_one_instance_dedups_and_replays() {
    let up = Slow::start(500);
    let gw = Arc::new(Gateway::start(&config("memory://", up.port, "      window: 10s\n")));
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || post(&gw, "/v1/complete", "m"))
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap().body, "call=1 body=m");
    }
    let again = post(&gw, "/v1/complete", "m");
    assert_eq!((role(&again), again.body.as_str()), ("replay", "call=1 body=m"));
    assert_eq!(up.calls(), 1);
}

#[test]
fn an_answer_over_max_response_is_not_kept_and_followers_call_themselves() {
    let redis = RedisServer::start();
    let up = Slow::start(600);
    let cfg = config(&redis.url(), up.port, "      max_response: 8\n");
    let gws = Arc::new([Gateway::start(&cfg), Gateway::start(&cfg)]);
    let g = gws.clone();
    let lead = std::thread::spawn(move || post(&g[0], "/v1/complete", "long enough"));
    up.wait_calls(1);
    let g = gws.clone();
    let follower = std::thread::spawn(move || post(&g[1], "/v1/complete", "long enough"));
    let (lead, follower) = (lead.join().unwrap(), follower.join().unwrap());
    assert_eq!((lead.status, lead.body.as_str()), (200, "call=1 body=long enough"));
    assert_eq!(role(&follower), "fallthrough", "{follower:?}");
    assert_eq!(follower.body, "call=2 body=long enough");
    assert_eq!(up.calls(), 2);
}

#[test]
fn an_sse_answer_is_streamed_to_followers_on_other_instances_too() {
    let redis = RedisServer::start();
    let up = Slow::start(0);
    let cfg = config(&redis.url(), up.port, "      key: [method, path]\n");
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg)];
    let open = |gw: &Gateway| {
        let mut s = TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        s.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n")
            .unwrap();
        s
    };
    let mut leader = open(&gws[0]);
    let first = read_until(&mut leader, "data: one");
    assert!(first.to_ascii_lowercase().contains("x-dedup: leader"), "{first}");
    let mut followers: Vec<TcpStream> = (0..3).map(|_| open(&gws[1])).collect();
    for f in &mut followers {
        // The upstream holds its second event until released: the first came live, through
        // the store, to the other instance.
        let got = read_until(f, "data: one");
        assert!(got.to_ascii_lowercase().contains("x-dedup: follower"), "{got}");
        assert!(!got.contains("data: two"));
    }
    up.release.notify_one();
    read_until(&mut leader, "data: two");
    for f in &mut followers {
        read_until(f, "data: two");
    }
    assert_eq!(
        up.calls(),
        1,
        "one upstream call for the leader and its followers elsewhere"
    );
}

#[test]
fn a_stream_whose_leader_dies_ends_broken_for_followers_elsewhere_never_hangs() {
    let redis = RedisServer::start();
    let up = Slow::start(0);
    let cfg = config(&redis.url(), up.port, "      key: [method, path]\n      lease: 500ms\n");
    let (leader_gw, other) = (Gateway::start(&cfg), Gateway::start(&cfg));
    let open = |gw: &Gateway| {
        let mut s = TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        s.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        s
    };
    let mut leader = open(&leader_gw);
    read_until(&mut leader, "data: one");
    let mut follower = open(&other);
    read_until(&mut follower, "data: one");
    drop(leader_gw);
    // The follower's stream ends (the leader's lock expires with its instance) without the
    // event the upstream never sent, and without chunked encoding's last chunk: broken, as the
    // leader's own stream was.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rest = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = loop {
        assert!(
            Instant::now() < deadline,
            "the follower's stream hung: {:?}",
            String::from_utf8_lossy(&rest)
        );
        match follower.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        ended && !rest.contains("data: two") && !rest.contains("0\r\n\r\n"),
        "{rest:?}"
    );
    assert_eq!(up.calls(), 1);
}
