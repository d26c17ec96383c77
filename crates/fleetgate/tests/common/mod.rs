//! Harness for end-to-end tests: the real `fleetgate` binary, real upstream servers, real sockets.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod counting_upstream;
pub mod raw_upstream;
pub mod stand_in;

pub use fleetgate_testkit::free_port;

/// A running gateway process; SIGKILLed on drop unless stopped.
pub struct Gateway {
    pub child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
}

impl Gateway {
    /// Writes `yaml` (with `{PORT}` and `{ADMIN}` replaced) and starts the binary; waits for
    /// `/readyz`.
    pub fn start(yaml: &str) -> Gateway {
        Self::start_with_env(yaml, &[])
    }

    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        Self::spawn(yaml, env, None)
    }

    /// Like [`start`](Self::start), with the gateway's standard output (its log) in `log`.
    pub fn start_with_log(yaml: &str, log: &std::path::Path) -> Gateway {
        Self::spawn(yaml, &[], Some(log))
    }

    /// With environment variables and, optionally, the log in a file.
    pub fn spawn_with(yaml: &str, env: &[(&str, &str)], log: Option<&std::path::Path>) -> Gateway {
        Self::spawn(yaml, env, log)
    }

    fn spawn(yaml: &str, env: &[(&str, &str)], log: Option<&std::path::Path>) -> Gateway {
        // A free port can be taken by a parallel test between our probe and the gateway's bind;
        // the gateway then refuses to start, and we try again on other ports.
        for _ in 0..3 {
            let port = free_port();
            let admin_port = free_port();
            let text = yaml
                .replace("{PORT}", &port.to_string())
                .replace("{ADMIN}", &admin_port.to_string());
            let config_path = std::env::temp_dir().join(format!("fleetgate-test-{}-{port}.yaml", std::process::id()));
            std::fs::write(&config_path, text).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetgate"));
            cmd.arg("--config")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(match log {
                    Some(path) => Stdio::from(std::fs::File::create(path).expect("create the log file")),
                    None => Stdio::null(),
                })
                .stderr(Stdio::inherit());
            cmd.env("FLEETGATE_WORKERS", "2");
            cmd.env_remove("RUST_LOG");
            for (k, v) in env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().expect("spawn fleetgate");
            let mut gw = Gateway {
                child: Some(child),
                port,
                admin_port,
                config_path,
            };
            if gw.wait_ready(Duration::from_secs(15)) {
                return gw;
            }
        }
        panic!("gateway did not start in 3 attempts");
    }

    /// Waits for `/readyz`; false if the process exited first (e.g. its port was taken).
    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(r) = http_get(self.admin_addr(), "/readyz", &[]) {
                if r.status == 200 {
                    return true;
                }
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("gateway did not become ready within {limit:?}");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    pub fn get(&self, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        http_get(self.addr(), path, headers).expect("request to gateway")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.config_path);
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A minimal blocking HTTP/1.1 client (one request per connection), so tests can also send
/// malformed bytes.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> std::io::Result<Reply> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    raw_request(addr, &req)
}

pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Reply> {
    raw_request_within(addr, bytes, Duration::from_secs(10))
}

/// [`raw_request`] waiting up to `read_timeout` for the answer (requests a throttle holds).
pub fn raw_request_within(addr: SocketAddr, bytes: &[u8], read_timeout: Duration) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(read_timeout))?;
    s.write_all(bytes)?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_reply(&buf)
}

fn parse_reply(buf: &[u8]) -> std::io::Result<Reply> {
    let text = String::from_utf8_lossy(buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok(Reply { status, headers, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A test upstream on its own runtime thread. Paths:
/// `/slow` sleeps 2 s; `/hold` waits until `release()`; `/health` answers 200 or 500
/// (see `set_healthy`); `/headers` echoes request headers as JSON; `/upload` answers
/// `received N`; `/echo` answers the request body; `/chunks` answers 50 chunks `chunk-N;`
/// written over about 50 ms (chunked encoding); `/close` answers with `Connection: close` and
/// closes; anything else answers `upstream:<name>`. Dropping it closes every connection.
pub struct Upstream {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    release: Arc<tokio::sync::Notify>,
    _server: stand_in::StandIn,
}

impl Upstream {
    pub fn start(name: &str) -> Upstream {
        Upstream::start_on(name, 0)
    }

    /// Like [`start`](Self::start), on a given port (0: any free port).
    pub fn start_on(name: &str, port: u16) -> Upstream {
        // A port just given up by a dropped upstream frees once its thread has closed it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if port != 0 && Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("bind the test upstream on port {port}: {e}"),
            }
        };
        let hits = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let release = Arc::new(tokio::sync::Notify::new());
        let (name, h, he, re) = (name.to_string(), hits.clone(), healthy.clone(), release.clone());
        let server = stand_in::StandIn::on(listener, move |req: Request<Incoming>| {
            let (name, h, he, re) = (name.clone(), h.clone(), he.clone(), re.clone());
            async move { answer(&name, &h, &he, &re, req).await }
        });
        Upstream {
            port: server.port,
            hits,
            healthy,
            release,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::SeqCst);
    }
    /// Waits (up to 5 s) until `n` requests reached this upstream.
    pub fn wait_for_hits(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.hits.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "upstream saw {} of {n} requests",
                self.hits.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn release(&self) {
        self.release.notify_waiters();
    }
}

type UpstreamBody = BoxBody<Bytes, std::convert::Infallible>;

fn full(body: impl Into<Bytes>) -> UpstreamBody {
    Full::new(body.into()).boxed()
}

async fn answer(
    name: &str,
    hits: &AtomicUsize,
    healthy: &AtomicBool,
    release: &tokio::sync::Notify,
    req: Request<Incoming>,
) -> Response<UpstreamBody> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let code = if healthy.load(Ordering::SeqCst) { 200 } else { 500 };
        return Response::builder().status(code).body(full("health")).unwrap();
    }
    hits.fetch_add(1, Ordering::SeqCst);
    match path.as_str() {
        "/slow" => tokio::time::sleep(Duration::from_secs(2)).await,
        "/hold" => release.notified().await,
        "/headers" => {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let mut obj = map;
            obj.insert("path".into(), req.uri().to_string().into());
            return Response::new(full(serde_json::Value::Object(obj).to_string()));
        }
        "/upload" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
            return Response::new(full(format!("received {body}")));
        }
        "/login" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            if text.contains("\"pass\":\"right\"") || text.split('&').any(|p| p == "pass=right") {
                return Response::new(full("welcome"));
            }
            return Response::builder()
                .status(401)
                .body(full(format!("denied: {text}")))
                .unwrap();
        }
        "/echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Response::new(full(body));
        }
        "/chunks" => {
            let chunks = futures_util::stream::unfold(0u32, |i| async move {
                if i == 50 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                let frame = hyper::body::Frame::data(Bytes::from(format!("chunk-{i};")));
                Some((Ok::<_, std::convert::Infallible>(frame), i + 1))
            });
            return Response::new(StreamBody::new(chunks).boxed());
        }
        "/close" => {
            return Response::builder()
                .header("connection", "close")
                .body(full(format!("upstream:{name}")))
                .unwrap();
        }
        _ => {}
    }
    Response::new(full(format!("upstream:{name}")))
}

/// Sends `total` GETs for `path` from `threads` client threads, spread round-robin over the
/// gateways as a load balancer would; returns every status in order of completion.
pub fn drive(gateways: &[&Gateway], path: &str, total: usize, threads: usize) -> Vec<u16> {
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr()).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(parking_lot::Mutex::new(Vec::with_capacity(total)));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (addrs, next, statuses, path) = (addrs.clone(), next.clone(), statuses.clone(), path.to_string());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return;
                }
                let status = http_get(addrs[i % addrs.len()], &path, &[])
                    .map(|r| r.status)
                    .unwrap_or(0);
                statuses.lock().push(status);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let out = statuses.lock().clone();
    out
}

pub fn count(statuses: &[u16], code: u16) -> usize {
    statuses.iter().filter(|s| **s == code).count()
}

/// What `/healthz` says of the store (`ok`, `down`, `off`), or "" when it does not answer.
pub fn store_health(gw: &Gateway) -> String {
    http_get(gw.admin_addr(), "/healthz", &[])
        .map(|r| r.json()["store"].as_str().unwrap_or("?").to_string())
        .unwrap_or_default()
}

/// Polls `/healthz` (up to 15 s) until the store reads `want`; returns how long it took.
pub fn wait_store(gw: &Gateway, want: &str) -> Duration {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if store_health(gw) == want {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("/healthz never reported store {want}");
}

/// The sum of every Prometheus sample whose line contains `needle`.
pub fn metric_sum(metrics: &str, needle: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
