//! The processes of the gateway benchmark: nginx instances with their own prefix and config
//! (never the system's nginx service), fleetgate, and a tiny HTTP/1.1 client for readiness
//! checks and /metrics. Every process is stopped when its handle is dropped (SIGTERM, then
//! SIGKILL after a bound), and every wait is bounded.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_BOUND: Duration = Duration::from_secs(10);
const STOP_BOUND: Duration = Duration::from_secs(5);

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A scratch directory for configs, prefixes and logs, removed when dropped.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("fleetgate-bench-gateway-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` on 127.0.0.1:port with `Connection: close`; (status, body) or None.
/// `n` GETs of `path` on one keep-alive connection (a new one if the server closes it); their
/// statuses, 0 for a request that got no answer.
pub fn get_many(port: u16, path: &str, n: usize) -> Vec<u16> {
    use std::io::{BufRead, BufReader, Read, Write};
    let connect = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
        Some(BufReader::new(s))
    };
    let mut conn = connect();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let status = (|| {
            let reader = conn.as_mut()?;
            let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
            reader.get_mut().write_all(req.as_bytes()).ok()?;
            let mut line = String::new();
            reader.read_line(&mut line).ok()?;
            let status: u16 = line.get(9..12)?.parse().ok()?;
            let mut length = 0usize;
            loop {
                line.clear();
                reader.read_line(&mut line).ok()?;
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((k, v)) = header.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().ok()?;
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).ok()?;
            Some(status)
        })();
        if status.is_none() {
            conn = connect();
        }
        out.push(status.unwrap_or(0));
    }
    out
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// (user, system) CPU seconds used so far by the processes `pids` (all their threads), from
/// /proc/PID/stat; a process that is gone counts 0.
pub fn cpu_seconds(pids: &[u32]) -> (f64, f64) {
    let mut total = (0.0, 0.0);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (in parentheses): utime is the 12th, stime the 13th,
        // in clock ticks (USER_HZ, 100 per second on Linux).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        total.0 += ticks(11) / 100.0;
        total.1 += ticks(12) / 100.0;
    }
    total
}

/// Sends `signal` (a name such as TERM) to `pid` with kill(1).
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM, wait up to [`STOP_BOUND`], then SIGKILL.
pub fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    signal(child.id(), "TERM");
    let deadline = Instant::now() + STOP_BOUND;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A command, run under `taskset -c CPUS` when `cpus` is given (taskset execs it: same pid).
pub fn command(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Waits until `GET path` on `port` answers `want`; panics with `context()` after the bound or
/// if the child exits.
pub fn wait_for(child: &mut Child, port: u16, path: &str, want: u16, what: &str, context: impl Fn() -> String) {
    let deadline = Instant::now() + START_BOUND;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start ({status}):\n{}", context());
        }
        if matches!(http_get(port, path), Some((s, _)) if s == want) {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{what} did not answer {want} on 127.0.0.1:{port}{path} within {START_BOUND:?}:\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// An nginx master process with its own prefix directory and config.
pub struct Nginx {
    child: Child,
    pub port: u16,
}

/// Settings every nginx of the bench shares: no access log, keep-alive connections that are
/// never closed for having served too many requests (nginx's default closes a client
/// connection after 1000, which would add reconnections to every figure), temp paths in the
/// prefix.
fn http_common(prefix: &Path) -> String {
    let p = prefix.display();
    format!(
        "access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;"
    )
}

fn main_common(prefix: &Path, workers: usize) -> String {
    let p = prefix.display();
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/error.log error;
events {{ worker_connections 4096; }}"
    )
}

impl Nginx {
    /// The upstream: one worker answering `200 ok` (2 bytes) on every path.
    pub fn upstream(scratch: &Scratch, port: u16, cpus: Option<&str>) -> Nginx {
        let prefix = scratch.dir.join("nginx-upstream");
        let conf = format!(
            "{main}
http {{
    {common}
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 \"ok\"; }}
    }}
}}
",
            main = main_common(&prefix, 1),
            common = http_common(&prefix)
        );
        Nginx::start(&prefix, &conf, port, "nginx upstream", cpus)
    }

    /// The object of `scripts/bench cache`: `200 ok` with `Cache-Control: public,
    /// max-age=3600` on every path but `/nginx_status` (its `stub_status`, to count what the
    /// caches in front forwarded).
    pub fn cacheable_upstream(scratch: &Scratch, port: u16, cpus: Option<&str>) -> Nginx {
        let prefix = scratch.dir.join("nginx-cacheable");
        let conf = format!(
            "{main}
http {{
    {common}
    server {{
        listen 127.0.0.1:{port};
        location = /nginx_status {{ stub_status; }}
        location / {{
            add_header Cache-Control \"public, max-age=3600\" always;
            return 200 \"ok\";
        }}
    }}
}}
",
            main = main_common(&prefix, 1),
            common = http_common(&prefix)
        );
        Nginx::start(&prefix, &conf, port, "nginx cacheable upstream", cpus)
    }

    /// The peer: a reverse proxy to `upstream_port` with limit_req on (a limit never reached)
    /// and keep-alive connections to the upstream. HTTP/1.1 on `port`; h2c (prior knowledge,
    /// `listen ... http2` without TLS) on `h2_port`, same server block.
    pub fn proxy(
        scratch: &Scratch,
        port: u16,
        h2_port: u16,
        upstream_port: u16,
        workers: usize,
        cpus: Option<&str>,
    ) -> Nginx {
        let prefix = scratch.dir.join("nginx-proxy");
        let conf = format!(
            "{main}
http {{
    {common}
    limit_req_zone $binary_remote_addr zone=z:10m rate=100000000r/s;
    upstream up {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{h2_port} http2;
        http2_max_concurrent_streams 128;
        location / {{
            limit_req zone=z burst=100000 nodelay;
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
            main = main_common(&prefix, workers),
            common = http_common(&prefix)
        );
        Nginx::start(&prefix, &conf, port, "nginx proxy", cpus)
    }

    /// The TLS peer: the same reverse proxy as [`proxy`](Self::proxy), terminating TLS with
    /// HTTP/2 by ALPN (`listen ... ssl http2`) on `tls_port`, with `cert` and `key`; plain
    /// HTTP/1.1 on `port` (for the readiness check).
    #[allow(clippy::too_many_arguments)]
    pub fn tls_proxy(
        scratch: &Scratch,
        port: u16,
        tls_port: u16,
        upstream_port: u16,
        workers: usize,
        cpus: Option<&str>,
        cert: &Path,
        key: &Path,
    ) -> Nginx {
        let prefix = scratch.dir.join("nginx-tls-proxy");
        let conf = format!(
            "{main}
http {{
    {common}
    limit_req_zone $binary_remote_addr zone=z:10m rate=100000000r/s;
    upstream up {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        http2_max_concurrent_streams 128;
        location / {{
            limit_req zone=z burst=100000 nodelay;
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
            main = main_common(&prefix, workers),
            common = http_common(&prefix),
            cert = cert.display(),
            key = key.display(),
        );
        Nginx::start(&prefix, &conf, port, "nginx TLS proxy", cpus)
    }

    fn start(prefix: &Path, conf: &str, port: u16, what: &str, cpus: Option<&str>) -> Nginx {
        std::fs::create_dir_all(prefix.join("tmp")).expect("create the nginx prefix");
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let error_log = prefix.join("error.log");
        let child = command(Path::new("nginx"), cpus)
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start nginx ({e}); install it with: apt-get install -y nginx wrk redis-server redis-tools")
            });
        let mut nginx = Nginx { child, port };
        wait_for(&mut nginx.child, port, "/", 200, what, || {
            format!("{}\nerror.log:\n{}", conf, read_or_empty(&error_log))
        });
        nginx
    }
}

impl Nginx {
    /// The master and its worker processes.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).unwrap_or_default();
        std::iter::once(master)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master: fast shutdown of the master and its workers.
        stop(&mut self.child);
    }
}

/// Live events off: every setup measures its limit alone unless it turns events on
/// (`Fleetgate::start_with` with [`EVENTS_ON`]).
pub const EVENTS_OFF: &str = "events: { enabled: false }\n";
/// Live events on (the gateway's default), for the `gateway_redis_events` side.
pub const EVENTS_ON: &str = "events: { enabled: true }\n";

/// The bench's limit: decided on every request, never reached.
pub const NEVER_REACHED: &str = "name: never, key: ip, rate: 100000000/100s";

/// What differs between the fleetgate instances of the bench.
pub struct FleetgateSetup<'a> {
    pub name: &'a str,
    /// `memory://` or `redis://127.0.0.1:PORT`.
    pub store_url: String,
    /// Extra `store:` fields, e.g. `timeout_ms: 50`.
    pub store_extra: &'a str,
    /// Extra fields of the rate limit, e.g. `on_store_error: local`.
    pub limit_extra: &'a str,
    /// The rate limit's name, key and rate (`None`: [`NEVER_REACHED`]).
    pub limit: Option<&'a str>,
    pub workers: usize,
}

/// A fleetgate process.
pub struct Fleetgate {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    log: PathBuf,
}

impl Fleetgate {
    pub fn start(
        binary: &Path,
        scratch: &Scratch,
        setup: &FleetgateSetup,
        upstream_port: u16,
        cpus: Option<&str>,
    ) -> Fleetgate {
        Fleetgate::start_with(binary, scratch, setup, upstream_port, cpus, EVENTS_OFF)
    }

    /// [`start`](Self::start) with `sections` (top-level YAML, e.g. a `tls:` section, and
    /// [`EVENTS_OFF`] or [`EVENTS_ON`]) added to the configuration.
    pub fn start_with(
        binary: &Path,
        scratch: &Scratch,
        setup: &FleetgateSetup,
        upstream_port: u16,
        cpus: Option<&str>,
        sections: &str,
    ) -> Fleetgate {
        let port = fleetgate_testkit::free_port();
        let admin_port = fleetgate_testkit::free_port();
        let store_extra = if setup.store_extra.is_empty() {
            String::new()
        } else {
            format!(", {}", setup.store_extra)
        };
        let limit_extra = if setup.limit_extra.is_empty() {
            String::new()
        } else {
            format!(", {}", setup.limit_extra)
        };
        let config = format!(
            "listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin_port} }}
log: {{ level: error, access_log: false }}
store: {{ url: \"{url}\"{store_extra} }}
upstreams:
  up: {{ targets: [\"http://127.0.0.1:{upstream_port}\"] }}
routes:
  - name: bench
    upstream: up
    rate_limits:
      - {{ {limit}{limit_extra} }}
{sections}",
            url = setup.store_url,
            limit = setup.limit.unwrap_or(NEVER_REACHED),
        );
        Fleetgate::start_config(binary, scratch, setup.name, &config, setup.workers, cpus)
    }

    /// A fleetgate process on `config` (the whole file) named `name`; waits until it is ready
    /// and `GET /` answers `200 ok`.
    pub fn start_config(
        binary: &Path,
        scratch: &Scratch,
        name: &str,
        config: &str,
        workers: usize,
        cpus: Option<&str>,
    ) -> Fleetgate {
        let admin_port = config
            .split("admin: { listen: 127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u16>().ok())
            .expect("the config names its admin port as `admin: { listen: 127.0.0.1:PORT }`");
        let port = config
            .strip_prefix("listen: 127.0.0.1:")
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u16>().ok())
            .expect("the config starts with `listen: 127.0.0.1:PORT`");
        let path = scratch.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).expect("write the fleetgate config");
        let log = scratch.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create the fleetgate log");
        let err = out.try_clone().expect("clone the log handle");
        let child = command(binary, cpus)
            .arg("--config")
            .arg(&path)
            .env("FLEETGATE_WORKERS", workers.to_string())
            .env_remove("REDIS_URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} ({e})", binary.display()));
        let mut fg = Fleetgate {
            child,
            port,
            admin_port,
            log,
        };
        let log = fg.log.clone();
        wait_for(&mut fg.child, admin_port, "/readyz", 200, name, || {
            format!("{config}\nlog:\n{}", read_or_empty(&log))
        });
        // One request through the whole path: route, limit, proxy.
        match http_get(port, "/") {
            Some((200, body)) if body == "ok" => {}
            other => panic!("{name}: GET / answered {other:?}, expected 200 ok"),
        }
        fg
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sum of the samples of metric `name` in /metrics whose labels contain `label` (e.g.
    /// `outcome="allowed"`, or "" for all).
    pub fn metric_sum(&self, name: &str, label: &str) -> f64 {
        let (status, body) = http_get(self.admin_port, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics");
        body.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(label))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Subscribes to `GET /events` on the admin listener and reads it until dropped, counting
    /// the events received (one `data:` line each).
    pub fn subscribe_events(&self) -> EventSubscriber {
        EventSubscriber::start(self.admin_port)
    }

    /// The process's log so far (errors only, at `log.level: error`).
    pub fn log(&self) -> String {
        read_or_empty(&self.log)
    }
}

impl Drop for Fleetgate {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// One SSE client of `GET /events`: a thread reading the stream and counting its events.
pub struct EventSubscriber {
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stream: std::net::TcpStream,
}

impl EventSubscriber {
    fn start(admin_port: u16) -> EventSubscriber {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(loopback(admin_port)).expect("connect to the admin listener");
        stream
            .write_all(b"GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
            .expect("send GET /events");
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (count, mut reader) = (received.clone(), stream.try_clone().expect("clone the SSE stream"));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            // `data:` at the start of a line; a line may straddle two reads, so keep the tail.
            let mut carry: Vec<u8> = Vec::new();
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                carry.extend_from_slice(&buf[..n]);
                let seen = carry.windows(6).filter(|w| w == b"\ndata:").count() as u64;
                count.fetch_add(seen, std::sync::atomic::Ordering::Relaxed);
                let keep = carry.len().min(5);
                carry.drain(..carry.len() - keep);
            }
        });
        EventSubscriber { received, stream }
    }

    /// Events received so far.
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for EventSubscriber {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
