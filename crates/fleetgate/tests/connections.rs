//! Connections under slow, stalled and early peers, end to end with the real binary: bounds on
//! the bodies and on writes each way, the per-instance cap on client connections, and pooling
//! only upstream connections that are done both ways. Upstreams are raw TCP stand-ins here,
//! for byte-level control of what they send and when they stop reading. Every wait is bounded;
//! the assertions are about outcomes and ordering, never about how long something took.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const BASE: &str =
    "listen: 127.0.0.1:{PORT}\nadmin:\n  listen: 127.0.0.1:{ADMIN}\nlog:\n  level: warn\n  access_log: false\n";

/// A raw TCP upstream: each accepted connection is handed to `handler` on its own thread.
/// Dropping it stops accepting and tells the handlers, through `stopped`, to let go.
struct StandIn {
    port: u16,
    stopped: Arc<AtomicBool>,
}

impl StandIn {
    fn start(handler: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stopped = Arc::new(AtomicBool::new(false));
        let (stop, handler) = (stopped.clone(), Arc::new(handler));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let (stop, handler) = (stop.clone(), handler.clone());
                        std::thread::spawn(move || handler(stream, &stop));
                    }
                    // Nothing to accept: look again shortly (this is the accept loop's pace,
                    // not a synchronisation).
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        StandIn { port, stopped }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// Waits up to `limit` for `stop`, in small steps; true if it was set.
fn hold(stop: &AtomicBool, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Reads one request head (up to the blank line); its request line.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    text.lines().next().map(str::to_string)
}

/// How a client's read ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The gateway closed the connection (EOF or reset).
    Closed,
    /// This side's bound passed with the connection still open.
    StillOpen,
}

/// Reads until the connection ends or `limit` passes; everything read, and how it ended.
fn read_to_end(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, End) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, End::StillOpen);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (out, End::Closed),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return (out, End::StillOpen)
            }
            Err(_) => return (out, End::Closed),
        }
    }
}

/// Splits a response into status, head text and body bytes.
fn split_response(bytes: &[u8]) -> (u16, String, Vec<u8>) {
    let at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..at]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, bytes[at + 4..].to_vec())
}

/// Reads exactly one response whose body has a Content-Length, within `limit`; the connection
/// stays open.
fn read_one_response(stream: &mut TcpStream, limit: Duration) -> (u16, Vec<u8>) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, head, body) = split_response(&bytes);
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if body.len() >= len {
                return (status, bytes[at + 4..at + 4 + len].to_vec());
            }
        }
        let n = stream.read(&mut buf).expect("the response arrives");
        assert!(n > 0, "closed mid-response: {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// One value from the gateway's /metrics (0 when absent).
fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = gw.get_admin("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

trait AdminGet {
    fn get_admin(&self, path: &str) -> String;
}

impl AdminGet for Gateway {
    fn get_admin(&self, path: &str) -> String {
        http_get(self.admin_addr(), path, &[]).expect("admin answers").body
    }
}

#[test]
fn an_upstream_body_that_stalls_ends_the_client_response_after_the_idle_bound() {
    // Head and 10 of 1000 body bytes, then a stall of 30 s: far past the gateway's 2 s bound.
    let stall_over = Arc::new(AtomicBool::new(false));
    let over = stall_over.clone();
    let up = StandIn::start(move |mut s, stop| {
        if read_head(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
        let _ = s.flush();
        if !hold(stop, Duration::from_secs(30)) {
            over.store(true, Ordering::SeqCst);
        }
    });
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  u:\n    targets: [{}]\n    request_timeout_ms: 2000\n    body_idle_timeout: 2s\nroutes:\n  - name: r\n    upstream: u\n",
        up.url()
    ));
    let mut client = TcpStream::connect(gw.addr()).unwrap();
    client.write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // 15 s is only this side's bound.
    let (bytes, end) = read_to_end(&mut client, Duration::from_secs(15));
    let ended_during_the_stall = !stall_over.load(Ordering::SeqCst);
    let (status, head, body) = split_response(&bytes);
    assert_eq!(status, 200, "{head}");
    assert_eq!(end, End::Closed, "the client is still held after 15 s");
    assert!(ended_during_the_stall, "the client was held until the upstream let go");
    assert_eq!(
        body, b"0123456789",
        "only what the upstream sent, not completed as if whole"
    );
    // The gateway still serves others.
    assert!(gw.get("/x", &[]).status >= 200);
}

#[test]
fn a_client_that_stops_sending_its_body_gets_408_after_the_idle_bound() {
    let up = Upstream::start("a");
    let gw = Gateway::start(&format!(
        "{BASE}server:\n  body_idle_timeout: 1s\nupstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n",
        up.url()
    ));
    let mut client = TcpStream::connect(gw.addr()).unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .unwrap();
    // The default request timeout (30 s) is past this side's 15 s bound: only the body bound
    // can answer in time.
    let (bytes, end) = read_to_end(&mut client, Duration::from_secs(15));
    let (status, head, body) = split_response(&bytes);
    assert_eq!(status, 408, "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "request_body_timeout");
    assert_eq!(end, End::Closed, "the connection is closed after the 408");
    up.wait_for_hits(1);
}

#[test]
fn a_client_that_does_not_read_is_disconnected_after_the_write_timeout() {
    // The upstream offers 256 MiB, far more than every buffer in between, and reports how its
    // writing ended.
    const TOTAL: usize = 256 << 20;
    let (tx, rx) = mpsc::channel::<Result<(), usize>>();
    let tx = parking_lot::Mutex::new(tx);
    let up = StandIn::start(move |mut s, _| {
        if read_head(&mut s).is_none() {
            return;
        }
        let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n").as_bytes());
        let chunk = vec![b'x'; 64 << 10];
        let mut written = 0;
        while written < TOTAL {
            if s.write_all(&chunk).is_err() {
                let _ = tx.lock().send(Err(written));
                return;
            }
            written += chunk.len();
        }
        let _ = tx.lock().send(Ok(()));
    });
    let gw = Gateway::start(&format!(
        "{BASE}server:\n  write_timeout: 1s\nupstreams:\n  u:\n    targets: [{}]\nroutes:\n  - name: r\n    upstream: u\n",
        up.url()
    ));
    let mut client = TcpStream::connect(gw.addr()).unwrap();
    client.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut start = [0u8; 12];
    client.read_exact(&mut start).unwrap();
    assert_eq!(&start, b"HTTP/1.1 200");
    // Now the client reads nothing. The gateway gives up on it, and so on the upstream.
    let outcome = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the upstream is still writing after 15 s: nobody gave up on the client");
    let Err(written) = outcome else {
        panic!("the upstream wrote all {TOTAL} bytes to a client that read none")
    };
    assert!(written < TOTAL);
    let (rest, end) = read_to_end(&mut client, Duration::from_secs(15));
    assert_eq!(end, End::Closed, "the client connection is still open");
    assert!(rest.len() < TOTAL, "the client got the whole body");
}

#[test]
fn an_upstream_that_does_not_read_the_request_body_is_given_up_after_the_write_timeout() {
    let up = StandIn::start(move |mut s, stop| {
        if read_head(&mut s).is_none() {
            return;
        }
        // Reads not one byte of the body, answers nothing.
        hold(stop, Duration::from_secs(30));
    });
    let gw = Gateway::start(&format!(
        "{BASE}server:\n  max_body_bytes: 1073741824\nupstreams:\n  u:\n    targets: [{}]\n    request_timeout_ms: 60000\n    write_timeout: 1s\nroutes:\n  - name: r\n    upstream: u\n",
        up.url()
    ));
    // 256 MiB: more than the socket and hyper buffers on the way hold.
    const TOTAL: usize = 256 << 20;
    let mut client = TcpStream::connect(gw.addr()).unwrap();
    let mut writer = client.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let head = format!("POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {TOTAL}\r\n\r\n");
        writer.write_all(head.as_bytes())?;
        let chunk = vec![b'y'; 64 << 10];
        for _ in 0..TOTAL / chunk.len() {
            writer.write_all(&chunk)?;
        }
        Ok::<(), std::io::Error>(())
    });
    // The request timeout (60 s) is past this side's 15 s bound: only the write bound can
    // answer in time.
    let (bytes, _) = read_to_end(&mut client, Duration::from_secs(15));
    let (status, head, body) = split_response(&bytes);
    assert_eq!(status, 504, "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "upstream_stalled");
    drop(client);
    let _ = sender.join();
}

#[test]
fn connections_past_max_connections_are_closed_at_once_and_counted() {
    let gw = Gateway::start(&format!(
        "{BASE}server:\n  max_connections: 2\nroutes:\n  - name: r\n    respond: {{ status: 200, body: ok }}\n"
    ));
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    // Two keep-alive connections, each proven admitted by an answer.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(gw.addr()).unwrap();
        c.write_all(request).unwrap();
        assert_eq!(
            read_one_response(&mut c, Duration::from_secs(10)),
            (200, b"ok".to_vec())
        );
        held.push(c);
    }
    assert_eq!(metric(&gw, "fleetgate_client_connections"), 2.0);
    // A third is closed without an answer.
    let mut third = TcpStream::connect(gw.addr()).unwrap();
    let _ = third.write_all(request);
    let (bytes, end) = read_to_end(&mut third, Duration::from_secs(10));
    assert_eq!(end, End::Closed, "the third connection is held open");
    assert!(
        bytes.is_empty(),
        "the third connection was answered: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(metric(&gw, "fleetgate_client_connections_refused_total"), 1.0);
    // The held ones still work.
    for c in &mut held {
        c.write_all(request).unwrap();
        assert_eq!(read_one_response(c, Duration::from_secs(10)), (200, b"ok".to_vec()));
    }
    // Once one goes, its slot is free again.
    drop(held.remove(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gw, "fleetgate_client_connections") != 1.0 {
        assert!(Instant::now() < deadline, "the closed connection still counts");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(gw.get("/", &[]).status, 200);
}

#[test]
fn a_connection_answered_before_its_request_body_went_is_not_pooled() {
    // `/early` is answered 413 at once and its body never read (the connection is kept open
    // and silent, as a server still "busy" with it); `/next` is answered normally, keep-alive.
    let nexts = Arc::new(AtomicUsize::new(0));
    let n = nexts.clone();
    let up = StandIn::start(move |mut s, stop| {
        while let Some(line) = read_head(&mut s) {
            if line.starts_with("POST /early ") {
                let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 5\r\n\r\nearly");
                hold(stop, Duration::from_secs(30));
                return;
            }
            n.fetch_add(1, Ordering::SeqCst);
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
                .is_err()
            {
                return;
            }
        }
    });
    // One worker, so that the second request sees the first one's pool; a request timeout that
    // the second request would run into if it waited on the first one's connection.
    let gw = Gateway::start_with_env(
        &format!(
            "{BASE}upstreams:\n  u:\n    targets: [{}]\n    request_timeout_ms: 2000\nroutes:\n  - name: r\n    upstream: u\n",
            up.url()
        ),
        &[("FLEETGATE_WORKERS", "1")],
    );
    let mut uploader = TcpStream::connect(gw.addr()).unwrap();
    uploader
        .write_all(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    uploader.write_all(&[b'z'; 1000]).unwrap();
    // The client got the early answer and has sent 1000 of 1000000 bytes.
    assert_eq!(
        read_one_response(&mut uploader, Duration::from_secs(10)),
        (413, b"early".to_vec())
    );
    let r = gw.get("/next", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "next"), "{r:?}");
    assert_eq!(nexts.load(Ordering::SeqCst), 1);
    // The upload that nobody reads any more is not kept going either.
    let (_, end) = read_to_end(&mut uploader, Duration::from_secs(10));
    assert_eq!(end, End::Closed, "the early-answered client connection stays open");
}
