//! Protocols end to end with the real binary over real sockets: h2c with prior knowledge (curl
//! and h2load as clients), the same limits and head checks as HTTP/1.1, HTTP/2 floods (rapid
//! reset, CONTINUATION) that end only their own connection, WebSocket pass-through with a real
//! echo upstream and client (tokio-tungstenite), and gRPC-style calls with trailers over HTTP/2
//! both ways. Every wait is bounded; assertions are about outcomes, never durations.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const BASE: &str =
    "listen: 127.0.0.1:{PORT}\nadmin:\n  listen: 127.0.0.1:{ADMIN}\nlog:\n  level: warn\n  access_log: false\n";

fn metrics(gw: &Gateway) -> String {
    http_get(gw.admin_addr(), "/metrics", &[]).expect("admin answers").body
}

/// Runs a client tool; a missing one fails the test with the install command.
fn tool(bin: &str, package: &str, args: &[&str]) -> std::process::Output {
    match Command::new(bin).args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("{bin} is needed ({e}): apt-get install -y {package}"),
    }
}

fn curl_h2(args: &[&str]) -> (String, String) {
    let mut all = vec!["-s", "--http2-prior-knowledge", "--max-time", "10"];
    all.extend_from_slice(args);
    let out = tool("curl", "curl", &all);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn h2c_with_prior_knowledge_gets_the_forwarding_and_rate_limit_headers_of_http1() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n    rate_limits:\n      - name: per-ip\n        key: ip\n        rate: 100/1m\n",
        up.url()
    ));
    let url = format!("http://127.0.0.1:{}/headers", gw.port);
    let (out, err) = curl_h2(&["-D", "-", "-H", "x-forwarded-for: 6.6.6.6", &url]);
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {out} {err}"));
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("ratelimit-policy: \"per-ip\";q=100;w=60"), "{head}");
    assert!(lower.contains("ratelimit: \"per-ip\";r=99;"), "{head}");
    let seen: serde_json::Value = serde_json::from_str(body).expect("the upstream's JSON");
    let authority = format!("127.0.0.1:{}", gw.port);
    // :authority becomes the upstream's Host and X-Forwarded-Host; the client's claim is
    // replaced by the peer, as over HTTP/1.1.
    assert_eq!(seen["host"], authority.as_str());
    assert_eq!(seen["x-forwarded-host"], authority.as_str());
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["path"], "/headers");
}

#[test]
fn h2c_requests_are_checked_and_normalised_like_http1() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}server:\n  max_header_bytes: 8192\nupstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    match: {{ path_prefix: /public }}\n    upstream: u\n",
        up.url()
    ));
    let base = format!("http://127.0.0.1:{}", gw.port);
    let (out, _) = curl_h2(&["-w", "\n%{http_code}", &format!("{base}/public/a%2Fb")]);
    assert!(out.ends_with("\n400"), "{out}");
    assert!(out.contains("\"path_encoded_slash\""), "{out}");
    // `..` is resolved before routing: this is /headers, which no route serves.
    let (out, _) = curl_h2(&[
        "--path-as-is",
        "-w",
        "\n%{http_code}",
        &format!("{base}/public/../headers"),
    ]);
    assert!(out.ends_with("\n404"), "{out}");
    let (out, _) = curl_h2(&["-w", "\n%{http_code}", &format!("{base}/public/%61")]);
    assert!(out.ends_with("\n200"), "{out}");
    // A header list over server.max_header_bytes (8192 here): 431, and the gateway serves on.
    let big = format!("x-big: {}", "a".repeat(12_000));
    let (out, _) = curl_h2(&["-w", "\n%{http_code}", "-H", &big, &format!("{base}/public/x")]);
    assert!(out.ends_with("\n431"), "{out}");
    let (out, _) = curl_h2(&["-w", "\n%{http_code}", &format!("{base}/public/x")]);
    assert!(out.ends_with("\n200"), "{out}");

    // Host and :authority disagreeing: refused, as an absolute target and Host are.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = gw.addr();
    let status = rt.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("http://{addr}/public/x"))
            .header("host", "other.example")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    });
    assert_eq!(status.0, 400, "{}", status.1);
    assert!(status.1.contains("host_mismatch"), "{}", status.1);
}

#[test]
fn h2load_through_the_gateway_is_held_to_the_same_limit() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n    rate_limits:\n      - name: all\n        key: global\n        rate: 150/1h\n",
        up.url()
    ));
    let url = format!("http://127.0.0.1:{}/x", gw.port);
    // 4 connections, 10 streams each at a time: 200 requests, of which the limit admits 150.
    let out = tool("h2load", "nghttp2-client", &["-n", "200", "-c", "4", "-m", "10", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("status codes: 150 2xx, 0 3xx, 50 4xx, 0 5xx"),
        "h2load said:\n{text}"
    );
    assert!(text.contains("Application protocol: h2c"), "{text}");
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 150);
}

/// A raw h2c connection that sends `frames` after the preface and SETTINGS, and returns the
/// error code of the GOAWAY that the gateway answers with (None: closed without one).
fn goaway_after(addr: std::net::SocketAddr, frames: &[u8]) -> Option<u32> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend_from_slice(frames);
    // The gateway may close while we still write: that is one of the outcomes.
    let _ = s.write_all(&out);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Frames so far: look for a GOAWAY (type 7).
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            if buf[at + 3] == 7 && len >= 8 {
                let p = &buf[at + 9..];
                return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            at += 9 + len;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET /` on `http` with `:authority: 127.0.0.1` (static table and one literal).
fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 9];
    b.extend_from_slice(b"127.0.0.1");
    b
}

const ENHANCE_YOUR_CALM: u32 = 0xb;

#[test]
fn h2_floods_end_only_their_connection_with_a_log_line_and_a_metric() {
    let up = Upstream::start("a");
    let log = std::env::temp_dir().join(format!("fleetgate-h2-flood-{}.log", std::process::id()));
    let gw = Gateway::start_with_log(
        &format!(
            "{BASE}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n",
            up.url()
        ),
        &log,
    );
    // Rapid reset: 100 streams opened and cancelled at once, before the gateway takes them.
    let mut resets = Vec::new();
    for i in 0..100u32 {
        let id = 2 * i + 1;
        resets.extend(frame(1, 0x4 | 0x1, id, &get_block()));
        resets.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    assert_eq!(goaway_after(gw.addr(), &resets), Some(ENHANCE_YOUR_CALM));
    // CONTINUATION flood: one header block spread over 200 frames that never ends.
    let mut continuations = frame(1, 0x1, 1, &get_block());
    for _ in 0..200 {
        continuations.extend(frame(9, 0, 1, &[0x00, 3, b'x', b'-', b'a', 1, b'b']));
    }
    assert_eq!(goaway_after(gw.addr(), &continuations), Some(ENHANCE_YOUR_CALM));
    // Every other connection keeps serving, HTTP/2 and HTTP/1.1.
    let (out, _) = curl_h2(&["-w", "\n%{http_code}", &format!("http://127.0.0.1:{}/x", gw.port)]);
    assert!(out.ends_with("\n200"), "{out}");
    assert_eq!(gw.get("/x", &[]).status, 200);
    let m = metrics(&gw);
    assert_eq!(
        metric_sum(&m, "fleetgate_h2_connection_errors_total{reason=\"flood\"}"),
        2.0,
        "{m}"
    );
    // The log says what happened, once per flood (the writer is asynchronous: bounded wait).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines = text.matches("HTTP/2 client connection closed: flood").count();
        if lines == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "flood log lines: {lines}\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&log);
}

/// A WebSocket echo server (tokio-tungstenite) on its own thread; returns its URL.
fn ws_echo_upstream() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            break;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    });
    format!("http://127.0.0.1:{port}")
}

fn ws_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_websocket_passes_through_counted_once_and_holds_its_permit_until_it_closes() {
    let echo = ws_echo_upstream();
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  ws:\n    targets: [{echo}]\nroutes:\n  - name: ws\n    upstream: ws\n    rate_limits:\n      - name: upgrades\n        key: header:x-user\n        rate: 3/1h\n    concurrency_limits:\n      - name: one\n        key: global\n        max: 1\n",
    ));
    let url = format!("ws://127.0.0.1:{}/chat", gw.port);
    let ws_request = || {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("x-user", http::HeaderValue::from_static("ws"));
        req
    };
    let rt = ws_runtime();
    // Three WebSockets, one after another, each with many messages: the limit of 3 counts the
    // three upgrade requests, not the messages.
    for round in 0..3 {
        let (mut ws, resp) = rt
            .block_on(tokio_tungstenite::connect_async(ws_request()))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(resp.status(), 101);
        for i in 0..10 {
            let text = format!("round {round} message {i}");
            rt.block_on(ws.send(Message::text(text.clone()))).unwrap();
            let echoed = rt.block_on(ws.next()).expect("an echo").expect("a message");
            assert_eq!(echoed.into_text().unwrap().as_str(), text);
        }
        if round == 0 {
            // While the tunnel is open, its permit is held: another request is refused (from
            // another user, so that the rate limit counts only the upgrades).
            let r = gw.get("/chat", &[("x-user", b"other")]);
            assert_eq!(r.status, 429, "{}", r.body);
            assert_eq!(r.json()["error"], "concurrency_limited");
        }
        rt.block_on(ws.close(None)).unwrap();
        // Read to the end (the close handshake is done), then hang up as a browser does.
        while let Some(Ok(_)) = rt.block_on(ws.next()) {}
        drop(ws);
        // The permit comes back when the tunnel closes (bounded wait: the tunnel task ends
        // asynchronously).
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric_sum(&metrics(&gw), "fleetgate_upgrades_open") != 0.0 {
            assert!(Instant::now() < deadline, "the tunnel never closed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    match rt.block_on(tokio_tungstenite::connect_async(ws_request())) {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("a fourth upgrade should be rate limited: {other:?}"),
    }
    let m = metrics(&gw);
    assert_eq!(
        metric_sum(&m, "fleetgate_upgrades_total{outcome=\"opened\"}"),
        3.0,
        "{m}"
    );
}

#[test]
fn an_upstream_that_refuses_the_upgrade_has_its_answer_passed_on() {
    // A plain HTTP/1.1 server: it answers the upgrade request with an ordinary 200.
    let up = Upstream::start("plain");
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n",
        up.url()
    ));
    let rt = ws_runtime();
    match rt.block_on(tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/ws",
        gw.port
    ))) {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.body().as_deref(), Some(&b"upstream:plain"[..]));
        }
        other => panic!("the upgrade should fail with the upstream's answer: {other:?}"),
    }
    // The gateway goes on serving, and counted the refusal.
    assert_eq!(gw.get("/x", &[]).status, 200);
    let m = metrics(&gw);
    assert_eq!(
        metric_sum(&m, "fleetgate_upgrades_total{outcome=\"refused\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "fleetgate_upgrades_total{outcome=\"opened\"}"),
        0.0,
        "{m}"
    );
}

#[test]
fn an_idle_tunnel_is_closed_after_the_idle_bound() {
    let echo = ws_echo_upstream();
    let gw = Gateway::start(&format!(
        "{BASE}server:\n  idle_timeout_ms: 300\nupstreams:\n  ws:\n    targets: [{echo}]\nroutes:\n  - name: ws\n    upstream: ws\n",
    ));
    let rt = ws_runtime();
    let (mut ws, _) = rt
        .block_on(tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/", gw.port)))
        .unwrap();
    rt.block_on(ws.send(Message::text("hello"))).unwrap();
    assert!(rt.block_on(ws.next()).expect("an echo").is_ok());
    // Then nothing is sent: the gateway ends the tunnel (a bounded wait for the end).
    let ended = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
    });
    assert!(ended.is_ok(), "the idle tunnel stayed open");
    assert_eq!(metric_sum(&metrics(&gw), "fleetgate_upgrades_open"), 0.0);
}

/// What the gRPC-like upstream saw of each call.
#[derive(Debug, Clone)]
struct Seen {
    version: http::Version,
    te: Option<String>,
    authority: Option<String>,
    xff: Option<String>,
}

/// A gRPC-like upstream: HTTP/2 only (prior knowledge), echoes the body and ends with the
/// trailers `grpc-status: 0` and `grpc-message: echoed N bytes`.
fn grpc_upstream() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(String::from);
                            log.lock().unwrap().push(Seen {
                                version: req.version(),
                                te: header("te"),
                                authority: req.uri().authority().map(|a| a.to_string()),
                                xff: header("x-forwarded-for"),
                            });
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            trailers.insert(
                                "grpc-message",
                                http::HeaderValue::from_str(&format!("echoed {} bytes", body.len())).unwrap(),
                            );
                            let frames = futures_util::stream::iter(vec![
                                Ok::<_, std::convert::Infallible>(Frame::data(body)),
                                Ok(Frame::trailers(trailers)),
                            ]);
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(StreamBody::new(frames))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

#[test]
fn grpc_calls_go_over_http2_both_ways_and_their_trailers_reach_the_client() {
    let (url, seen) = grpc_upstream();
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  g:\n    targets: [{url}]\nroutes:\n  - name: grpc\n    upstream: g\n    rate_limits:\n      - name: calls\n        key: global\n        rate: 5/1h\n",
    ));
    let addr = gw.addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        // Six calls on one connection: five within the limit, the sixth refused.
        for i in 0..6u8 {
            // A length-prefixed gRPC message: flag 0, length 3, payload.
            let msg = Bytes::from(vec![0, 0, 0, 0, 3, b'a', b'b', b'0' + i]);
            let req = Request::post(format!("http://{addr}/echo.Echo/Say"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(msg.clone()))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status();
            let collected = resp.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            out.push((status, msg, collected.to_bytes(), trailers));
        }
        out
    });
    for (status, sent, body, trailers) in &results[..5] {
        assert_eq!(*status, 200);
        assert_eq!(body, sent, "the message comes back whole");
        let trailers = trailers.as_ref().expect("trailers reach the client");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "echoed 8 bytes");
    }
    assert_eq!(results[5].0, 429, "the sixth call is over the limit");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "{seen:?}");
    let authority = format!("127.0.0.1:{}", gw.port);
    for s in &seen {
        assert_eq!(s.version, http::Version::HTTP_2);
        assert_eq!(s.te.as_deref(), Some("trailers"));
        assert_eq!(s.authority.as_deref(), Some(authority.as_str()));
        assert_eq!(s.xff.as_deref(), Some("127.0.0.1"));
    }
}

#[test]
fn curl_shows_the_grpc_trailers() {
    let (url, _) = grpc_upstream();
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  g:\n    targets: [{url}]\nroutes:\n  - name: grpc\n    upstream: g\n",
    ));
    let (_, verbose) = curl_h2(&[
        "-v",
        "-o",
        "/dev/null",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        "hello",
        &format!("http://127.0.0.1:{}/echo.Echo/Say", gw.port),
    ]);
    let lower = verbose.to_ascii_lowercase();
    assert!(lower.contains("< grpc-status: 0"), "{verbose}");
    assert!(lower.contains("< grpc-message: echoed 5 bytes"), "{verbose}");
}

#[test]
fn a_client_that_sends_nothing_or_half_a_preface_is_closed_after_the_idle_bound() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}server:\n  idle_timeout_ms: 300\nupstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n",
        up.url()
    ));
    for sent in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
        s.write_all(sent).unwrap();
        // Bounded: a gateway that never closes fails the read with a timeout instead.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).map_err(|e| e.kind());
        assert!(
            matches!(n, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
            "sent {sent:?}: still open ({n:?})"
        );
    }
    assert_eq!(gw.get("/x", &[]).status, 200);
}
