//! Request framing end to end, in raw bytes: Content-Length and Transfer-Encoding together,
//! repeated or malformed framing headers, obs-fold, bare LF, bad chunk lines, pipelining.
//!
//! The upstream is a raw TCP stand-in ([`RawUpstream`]) that records exactly what arrives. For
//! every case, either the gateway refuses with a 4xx and the upstream sees nothing of that
//! request, or the upstream sees one request framed as the gateway read it: the same body
//! bytes and a single unambiguous framing header. A request whose body turns out malformed
//! after its head went upstream is answered 4xx and never arrives upstream complete.

mod common;

use common::raw_upstream::{RawUpstream, Seen};
use common::Gateway;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const BASE: &str = "listen: 127.0.0.1:{PORT}\nadmin:\n  listen: 127.0.0.1:{ADMIN}\nlog:\n  level: error\n";

/// One response as the client read it.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (Content-Length or chunked body); None at EOF or on a read timeout.
fn read_response(r: &mut BufReader<TcpStream>) -> Option<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if resp.header("transfer-encoding").is_some() {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..n]);
        }
    } else {
        let n: usize = resp.header("content-length").map_or(Some(0), |v| v.parse().ok())?;
        resp.body = vec![0; n];
        r.read_exact(&mut resp.body).ok()?;
    }
    Some(resp)
}

/// Writes `bytes` on a new connection and reads up to `max` responses. Also says whether the
/// gateway then closed the connection: EOF before `max` responses, or, with `probe_close`, EOF
/// right after them (a connection left open makes the probe wait for the read timeout).
fn exchange(gw: &Gateway, bytes: &[u8], max: usize, half_close: bool, probe_close: bool) -> (Vec<Resp>, bool) {
    let mut s = TcpStream::connect(gw.addr()).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    while out.len() < max {
        match read_response(&mut r) {
            Some(resp) => out.push(resp),
            None => return (out, true),
        }
    }
    if !probe_close {
        return (out, false);
    }
    let mut byte = [0u8; 1];
    let closed = matches!(r.read(&mut byte), Ok(0));
    (out, closed)
}

struct Harness {
    gw: Gateway,
    up: RawUpstream,
    sentinels: usize,
}

impl Harness {
    fn start() -> Harness {
        let up = RawUpstream::start();
        let gw = Gateway::start(&format!(
            "{BASE}upstreams:\n  raw:\n    targets: [{}]\nroutes:\n  - name: all\n    upstream: raw\n",
            up.url()
        ));
        Harness { gw, up, sentinels: 0 }
    }

    /// Records of requests for `path` (the request target, which each case makes unique).
    fn seen_for(&self, path: &str) -> Vec<Seen> {
        self.up.seen().into_iter().filter(|s| s.target == path).collect()
    }

    /// A well-formed request on its own connection, waited for at the upstream: everything the
    /// gateway sent before it on the same pool has been read by then.
    fn sentinel(&mut self) {
        self.sentinels += 1;
        let path = format!("/sentinel-{}", self.sentinels);
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (resps, _) = exchange(&self.gw, req.as_bytes(), 1, false, false);
        assert_eq!(resps.first().map(|r| r.status), Some(200), "sentinel {path}");
        assert_eq!(self.seen_for(&path).len(), 1, "sentinel {path} seen once");
    }

    /// The case is forwarded: 200, and the upstream saw it once, cleanly framed, with `body`.
    /// With `closes`, the gateway must also close the connection after answering.
    fn forwarded(&mut self, case: &str, path: &str, raw: &[u8], body: &[u8], closes: bool) -> Seen {
        let (resps, closed) = exchange(&self.gw, raw, 1, false, closes);
        assert_eq!(closed, closes, "{case}: connection closed after the answer");
        let resp = resps.first().unwrap_or_else(|| panic!("{case}: no response"));
        assert_eq!(resp.status, 200, "{case}: {:?}", String::from_utf8_lossy(&resp.body));
        let seen = self.seen_for(path);
        assert_eq!(seen.len(), 1, "{case}: the upstream saw {seen:?}");
        let s = seen.into_iter().next().unwrap();
        s.assert_clean();
        assert_eq!(
            String::from_utf8_lossy(&s.body),
            String::from_utf8_lossy(body),
            "{case}: body upstream"
        );
        s
    }

    /// The case is refused with a 4xx and nothing of it reaches the upstream.
    fn refused(&mut self, case: &str, path: &str, raw: &[u8]) -> u16 {
        let (resps, _) = exchange(&self.gw, raw, 1, false, false);
        let status = resps.first().map(|r| r.status);
        assert!(
            matches!(status, Some(400..=499)),
            "{case}: expected a 4xx, got {status:?} {:?}",
            resps.first().map(|r| String::from_utf8_lossy(&r.body).into_owned())
        );
        self.sentinel();
        let seen = self.seen_for(path);
        assert!(seen.is_empty(), "{case}: refused, yet the upstream saw {seen:?}");
        status.unwrap()
    }

    /// The head is fine but the body turns out malformed after it went upstream: the client
    /// gets a 4xx if it gets an answer at all, and the upstream never sees the request whole.
    fn cut_off(&mut self, case: &str, path: &str, raw: &[u8], half_close: bool) {
        let (resps, _) = exchange(&self.gw, raw, 1, half_close, false);
        if let Some(r) = resps.first() {
            assert!(
                (400..=499).contains(&r.status),
                "{case}: expected a 4xx, got {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        } else {
            assert!(half_close, "{case}: no answer although the client kept its side open");
        }
        self.sentinel();
        let seen = self.seen_for(path);
        assert!(
            seen.iter().all(|s| !s.complete),
            "{case}: a malformed body reached the upstream as a whole request: {seen:?}"
        );
    }
}

#[test]
fn well_framed_and_tolerated_requests_arrive_framed_as_read() {
    let mut h = Harness::start();
    let s = h.forwarded(
        "content-length",
        "/cl",
        b"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"hello",
        false,
    );
    assert_eq!(s.one("content-length"), "5");
    let s = h.forwarded(
        "chunked",
        "/te",
        b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"hello world",
        false,
    );
    assert_eq!(s.one("transfer-encoding"), "chunked");
    // A body on a GET is still a body: dropping it would leave the upstream reading a
    // different request than the gateway did.
    h.forwarded(
        "chunked GET",
        "/get-te",
        b"GET /get-te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"hello",
        false,
    );
    h.forwarded(
        "content-length GET",
        "/get-cl",
        b"GET /get-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"hello",
        false,
    );
    h.forwarded(
        "Chunked in upper case",
        "/te-case",
        b"POST /te-case HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"hello",
        false,
    );
    // The same Content-Length twice is one length (RFC 9112 section 6.3): one header upstream.
    let s = h.forwarded(
        "duplicate equal content-length",
        "/cl-dup",
        b"POST /cl-dup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"hello",
        false,
    );
    assert_eq!(s.one("content-length"), "5");
    // Leading zeros are a valid length; upstream gets it in its plain spelling.
    let s = h.forwarded(
        "content-length with leading zeros",
        "/cl-zeros",
        b"POST /cl-zeros HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\n\r\nhello",
        b"hello",
        false,
    );
    assert_eq!(s.one("content-length"), "5");
    // Transfer-Encoding wins over Content-Length and the length is dropped (RFC 9112 section
    // 6.3), in either order; the body is the chunked one.
    for (i, head) in [
        "Content-Length: 3\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 3",
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/cl-te-{i}");
        let raw = format!("POST {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n");
        let s = h.forwarded("CL and TE", &path, raw.as_bytes(), b"SMUGGLED", true);
        assert!(!s.has("content-length"), "{:?}", s.headers);
        assert_eq!(s.one("transfer-encoding"), "chunked");
    }
    // Bare LF line endings in the head are read as line ends; upstream gets CRLF (checked by
    // assert_clean).
    h.forwarded(
        "bare LF head",
        "/lf",
        b"POST /lf HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello",
        b"hello",
        false,
    );
    // Chunk extensions, leading zeros in sizes and trailers: the data is what counts.
    h.forwarded(
        "chunk extensions, zero-padded sizes, trailer",
        "/ext",
        b"POST /ext HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0005;name=\"v\"\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"hello",
        false,
    );
}

#[test]
fn ambiguous_framing_is_refused_before_anything_goes_upstream() {
    let mut h = Harness::start();
    let cases: &[(&str, &str)] = &[
        ("different content-lengths", "Content-Length: 5\r\nContent-Length: 6"),
        ("content-length list", "Content-Length: 5, 5"),
        ("signed content-length", "Content-Length: +5"),
        ("hex content-length", "Content-Length: 0x5"),
        ("negative content-length", "Content-Length: -1"),
        ("chunked then identity", "Transfer-Encoding: chunked, identity"),
        ("xchunked", "Transfer-Encoding: xchunked"),
        ("chunked not last", "Transfer-Encoding: chunked, gzip"),
        ("identity before chunked", "Transfer-Encoding: identity, chunked"),
        ("gzip before chunked", "Transfer-Encoding: gzip, chunked"),
        ("chunked twice in one line", "Transfer-Encoding: chunked, chunked"),
        (
            "two transfer-encoding lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        ),
        (
            "gzip line then chunked line",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        ),
        ("obs-fold in transfer-encoding", "Transfer-Encoding:\r\n chunked"),
        ("obs-fold in another header", "X-Folded: a\r\n b"),
        ("space before the colon", "Transfer-Encoding : chunked"),
        ("tab in the name", "Transfer-Encoding\t: chunked"),
        ("bare CR in a value", "X-A: a\rb"),
    ];
    for (i, (case, headers)) in cases.iter().enumerate() {
        let path = format!("/refused-{i}");
        let raw = format!("POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        h.refused(case, &path, raw.as_bytes());
    }
    // Transfer-Encoding in HTTP/1.0, which has no chunked coding.
    h.refused(
        "transfer-encoding in HTTP/1.0",
        "/refused-http10",
        b"POST /refused-http10 HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
}

#[test]
fn malformed_chunked_bodies_never_reach_the_upstream_whole() {
    let mut h = Harness::start();
    let head = |path: &str| format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let cases: Vec<(&str, String)> = vec![
        (
            "chunk size overflows 64 bits",
            "1FFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("chunk size not hex", "5z\r\nhello\r\n0\r\n\r\n".into()),
        ("bare LF after the chunk size", "5\nhello\r\n0\r\n\r\n".into()),
        ("chunk data longer than its size", "5\r\nhelloEXTRA\r\n0\r\n\r\n".into()),
        (
            "chunk extensions over 16 KiB",
            format!("1;x={}\r\na\r\n0\r\n\r\n", "e".repeat(40 * 1024)),
        ),
    ];
    for (i, (case, body)) in cases.iter().enumerate() {
        let path = format!("/cut-{i}");
        let raw = format!("{}{body}", head(&path));
        h.cut_off(case, &path, raw.as_bytes(), false);
    }
    // A huge declared chunk that never comes: the client gives up (half-closes).
    let path = "/cut-huge";
    let raw = format!("{}FFFFFFFFFF\r\nonly a little", head(path));
    h.cut_off("huge chunk size, then the client stops", path, raw.as_bytes(), true);
}

#[test]
fn pipelined_requests_are_answered_in_order_and_each_reaches_the_upstream_once() {
    let mut h = Harness::start();
    let raw = b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n\
POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /p3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /p4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (resps, closed) = exchange(&h.gw, raw, 4, false, true);
    let answers: Vec<(u16, String)> = resps
        .iter()
        .map(|r| {
            // The upstream answers "{index} {method} {target} {body length}".
            let text = String::from_utf8_lossy(&r.body);
            (
                r.status,
                text.split_once(' ')
                    .map(|(_, rest)| rest.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        answers,
        [
            (200, "GET /p1 0".to_string()),
            (200, "POST /p2 5".to_string()),
            (200, "POST /p3 3".to_string()),
            (200, "GET /p4 0".to_string()),
        ]
    );
    assert!(closed, "Connection: close on the last one ends the connection");
    for (path, body) in [("/p1", ""), ("/p2", "hello"), ("/p3", "abc"), ("/p4", "")] {
        let seen = h.seen_for(path);
        assert_eq!(seen.len(), 1, "{path} upstream: {seen:?}");
        seen[0].assert_clean();
        assert_eq!(String::from_utf8_lossy(&seen[0].body), body);
    }

    // A malformed request in the middle of a pipeline: the ones before it are answered, it
    // gets a 4xx, and nothing after it is read (its framing says nothing reliable about where
    // the next request starts).
    let raw = b"GET /q1 HTTP/1.1\r\nHost: x\r\n\r\n\
POST /q2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab\
GET /q3 HTTP/1.1\r\nHost: x\r\n\r\n";
    let (resps, closed) = exchange(&h.gw, raw, 3, false, true);
    let statuses: Vec<u16> = resps.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400], "{resps:?}");
    assert!(closed);
    h.sentinel();
    assert_eq!(h.seen_for("/q1").len(), 1);
    assert!(h.seen_for("/q2").is_empty());
    assert!(
        h.seen_for("/q3").is_empty(),
        "nothing after the malformed request is read"
    );

    // A request smuggled behind CL+TE: the gateway reads the chunked body (empty), drops the
    // length and closes after answering, so the hidden request is never read.
    let raw = b"POST /s1 HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let (resps, closed) = exchange(&h.gw, raw, 2, false, true);
    assert_eq!(resps.iter().map(|r| r.status).collect::<Vec<_>>(), [200], "{resps:?}");
    assert!(closed, "the connection closes after a CL+TE request");
    h.sentinel();
    let s1 = h.seen_for("/s1");
    assert_eq!(s1.len(), 1);
    s1[0].assert_clean();
    assert!(s1[0].body.is_empty());
    assert!(h.seen_for("/smuggled").is_empty());
}
