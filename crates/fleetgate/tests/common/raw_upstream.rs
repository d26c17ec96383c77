//! A raw TCP stand-in for an upstream: no HTTP library, so tests see exactly the bytes the
//! gateway sends. It reads requests with a strict HTTP/1.1 parser (CRLF only, no obs-fold, at
//! most one framing header, `chunked` alone), records each one with whatever it found wrong,
//! and answers `200` with the body `"{index} {method} {target} {body length}"`. A request it
//! cannot frame is recorded with its problems and the connection is closed.

use parking_lot::Mutex;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request as the upstream read it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The bytes of this request as received (head and body, framing included).
    pub raw: Vec<u8>,
    pub method: String,
    pub target: String,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body after de-chunking.
    pub body: Vec<u8>,
    /// False if the connection ended (or the framing was unreadable) before the request did.
    pub complete: bool,
    /// Everything that made the request ambiguous or malformed.
    pub problems: Vec<String>,
}

impl Seen {
    /// Every value of header `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of header `name`; panics if it is absent or repeated.
    pub fn one(&self, name: &str) -> &str {
        match self.all(name).as_slice() {
            [v] => v,
            other => panic!("expected one {name} header, found {other:?} in {:?}", self.headers),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    /// A well framed, complete request: one framing header at most, and no problems.
    pub fn assert_clean(&self) {
        assert!(self.complete, "incomplete request upstream: {self:?}");
        assert!(
            self.problems.is_empty(),
            "upstream saw problems {:?} in {self:?}",
            self.problems
        );
        let framing = self.all("content-length").len() + self.all("transfer-encoding").len();
        assert!(framing <= 1, "more than one framing header: {:?}", self.headers);
    }
}

pub struct RawUpstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl RawUpstream {
    pub fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the raw upstream");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        RawUpstream { port, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request recorded so far, in the order they were read.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }

    /// Waits (up to 5 s) until `n` requests are recorded; returns them all.
    pub fn wait_for(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "upstream recorded {} of {n} requests: {seen:?}",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port)));
    }
}

/// Reads bytes from a connection on demand, keeping what was consumed for the record.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl Conn {
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next `n` bytes, or None at EOF.
    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() - self.pos < n {
            if !self.fill() {
                return None;
            }
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Some(out)
    }

    /// Up to and including the next `\n` (bounded at 64 KiB), or None at EOF.
    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|b| *b == b'\n') {
                let out = self.buf[self.pos..self.pos + i + 1].to_vec();
                self.pos += i + 1;
                return Some(out);
            }
            if self.buf.len() - self.pos > 64 * 1024 || !self.fill() {
                return None;
            }
        }
    }
}

/// Strips a line's CRLF, noting a bare LF.
fn crlf_line(line: &[u8], problems: &mut Vec<String>) -> String {
    let text = match line.strip_suffix(b"\r\n") {
        Some(t) => t,
        None => {
            problems.push(format!("line not ended by CRLF: {:?}", String::from_utf8_lossy(line)));
            line.strip_suffix(b"\n").unwrap_or(line)
        }
    };
    String::from_utf8_lossy(text).into_owned()
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Seen>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        pos: 0,
        eof: false,
    };
    loop {
        let start = conn.pos;
        let mut problems = Vec::new();
        let Some(first) = conn.line() else {
            if conn.buf.len() > start {
                record_partial(&conn, start, seen, "connection ended inside the head");
            }
            return;
        };
        let request_line = crlf_line(&first, &mut problems);
        let mut parts = request_line.splitn(3, ' ');
        let (method, target) = (
            parts.next().unwrap_or_default().to_string(),
            parts.next().unwrap_or_default().to_string(),
        );
        if parts.next() != Some("HTTP/1.1") {
            problems.push(format!("request line {request_line:?} is not HTTP/1.1"));
        }
        let mut headers = Vec::new();
        loop {
            let Some(line) = conn.line() else {
                record_partial(&conn, start, seen, "connection ended inside the head");
                return;
            };
            let text = crlf_line(&line, &mut problems);
            if text.is_empty() {
                break;
            }
            if text.starts_with(' ') || text.starts_with('\t') {
                problems.push(format!("obs-fold line {text:?}"));
                continue;
            }
            match text.split_once(':') {
                Some((k, v)) if !k.is_empty() && !k.contains(' ') => {
                    headers.push((k.to_string(), v.trim().to_string()))
                }
                _ => problems.push(format!("malformed header line {text:?}")),
            }
        }
        let values = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
                .collect()
        };
        let (cl, te) = (values("content-length"), values("transfer-encoding"));
        if !cl.is_empty() && !te.is_empty() {
            problems.push("both Content-Length and Transfer-Encoding".into());
        }
        if cl.len() > 1 || te.len() > 1 {
            problems.push(format!("repeated framing headers: CL {cl:?} TE {te:?}"));
        }
        if let Some(v) = te.first() {
            if !v.eq_ignore_ascii_case("chunked") {
                problems.push(format!("Transfer-Encoding {v:?} is not just chunked"));
            }
        }
        let length = match cl.first() {
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v.parse::<usize>().ok(),
            Some(v) => {
                problems.push(format!("Content-Length {v:?} is not a number"));
                None
            }
            None => None,
        };
        if !problems.is_empty() {
            // Framing cannot be trusted: record and stop reading this connection.
            push(seen, &conn, start, method, target, headers, Vec::new(), false, problems);
            return;
        }
        let body = if te.is_empty() {
            match conn.take(length.unwrap_or(0)) {
                Some(b) => b,
                None => {
                    let body = conn.buf[conn.pos..].to_vec();
                    push(seen, &conn, start, method, target, headers, body, false, problems);
                    return;
                }
            }
        } else {
            match read_chunked(&mut conn, &mut problems) {
                Some(b) if problems.is_empty() => b,
                other => {
                    push(
                        seen,
                        &conn,
                        start,
                        method,
                        target,
                        headers,
                        other.unwrap_or_default(),
                        false,
                        problems,
                    );
                    return;
                }
            }
        };
        let index = {
            let mut seen = seen.lock();
            seen.push(Seen {
                raw: conn.buf[start..conn.pos].to_vec(),
                method: method.clone(),
                target: target.clone(),
                headers,
                body: body.clone(),
                complete: true,
                problems,
            });
            seen.len() - 1
        };
        let answer = format!("{index} {method} {target} {}", body.len());
        let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}", answer.len());
        if conn.stream.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A chunked body, strictly: hex size, optional extensions, CRLF everywhere. None if the
/// connection ended first or the framing is unreadable (then `problems` says why).
fn read_chunked(conn: &mut Conn, problems: &mut Vec<String>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = conn.line()?;
        let text = crlf_line(&line, problems);
        let size_text = text.split(';').next().unwrap_or_default();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            problems.push(format!("bad chunk size line {text:?}"));
            return None;
        };
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let line = conn.line()?;
                if crlf_line(&line, problems).is_empty() {
                    return Some(body);
                }
            }
        }
        body.extend(conn.take(size)?);
        if conn.take(2)? != b"\r\n" {
            problems.push("chunk data not followed by CRLF".into());
            return None;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn push(
    seen: &Mutex<Vec<Seen>>,
    conn: &Conn,
    start: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    complete: bool,
    problems: Vec<String>,
) {
    seen.lock().push(Seen {
        raw: conn.buf[start..].to_vec(),
        method,
        target,
        headers,
        body,
        complete,
        problems,
    });
}

fn record_partial(conn: &Conn, start: usize, seen: &Mutex<Vec<Seen>>, why: &str) {
    push(
        seen,
        conn,
        start,
        String::new(),
        String::new(),
        Vec::new(),
        Vec::new(),
        false,
        vec![why.to_string()],
    );
}
