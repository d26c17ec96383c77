//! `scripts/bench cache`: cache hits through fleetgate's shared cache (`cache:` on a route)
//! against Varnish serving the same object from its own cache, in one run.
//!
//! * The object: `GET /` from an nginx upstream, `200 ok` with `Cache-Control: public,
//!   max-age=3600`, so every proxy stores it once and serves every later request from its
//!   cache.
//! * `cache_hit_memory`: wrk req/s through fleetgate on the in-process store, over Varnish's.
//!   Target at least 0.9.
//! * `cache_hit_redis`: the same with the Redis store (each hit reads the entry from Redis),
//!   over the same Varnish figure. Target at least 0.5.
//!
//! Rounds are interleaved (wrk -t2 -c64, 5 s each, medians). Before the rounds each side must
//! answer a second request from its cache (fleetgate's `Cache-Status` says `hit`, Varnish's
//! `Age` is present), and after them the upstream must have seen at most 1 in 1000 of the
//! requests (stub_status; a store call past its timeout passes through under `open`): a side
//! that forwards its hits would not be measuring a cache. The cache outcomes of each fleetgate
//! side are printed.

use super::procs::{command, loopback, read_or_empty, stop, wait_for, Fleetgate, Nginx, Scratch, EVENTS_OFF};
use super::{cpus, median, start_redis, wrk, ROUND, ROUNDS, WARM};
use crate::report;
use fleetgate_testkit::free_port;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ExitCode, Stdio};
use std::time::Duration;

/// Upstream requests allowed during the rounds, per million requests served: a store call
/// that takes longer than the store's timeout (a loaded machine) passes through under
/// `on_store_error: open`, as it should; a side that did not cache would forward them all.
const FORWARDED_PER_MILLION: f64 = 1000.0;

pub fn run(fleetgate_bin: &Path) -> ExitCode {
    let cpus = cpus();
    let scratch = Scratch::new();
    let upstream = Nginx::cacheable_upstream(&scratch, free_port(), cpus.load);
    let redis = start_redis(&cpus);
    let varnish = Varnish::start(&scratch, upstream.port, cpus.proxy);
    let fg_memory = start_fleetgate(
        fleetgate_bin,
        &scratch,
        "fleetgate-cache-memory",
        "memory://",
        upstream.port,
        &cpus,
    );
    let fg_redis = start_fleetgate(
        fleetgate_bin,
        &scratch,
        "fleetgate-cache-redis",
        &redis.url(),
        upstream.port,
        &cpus,
    );

    for (name, port) in [
        ("varnish", varnish.port),
        ("fleetgate memory", fg_memory.port),
        ("fleetgate redis", fg_redis.port),
    ] {
        let (_, first) = head(port);
        let (status, second) = head(port);
        let hit = if name == "varnish" {
            header(&second, "age").is_some()
        } else {
            header(&second, "cache-status").is_some_and(|v| v.contains("hit"))
        };
        assert!(
            status == 200 && hit,
            "{name}: the second GET / was not a cache hit:\nfirst:\n{first}\nsecond:\n{second}"
        );
    }
    let before = upstream_requests(upstream.port);
    let sides = [
        ("varnish", varnish.port),
        ("memory", fg_memory.port),
        ("redis", fg_redis.port),
    ];
    for (name, port) in sides {
        let w = wrk::run(port, WARM, cpus.load);
        eprintln!("cache: warm-up {name}: {:.0} req/s", w.rps);
    }
    let mut rps: [Vec<f64>; 3] = Default::default();
    let mut served = 0;
    for round in 0..ROUNDS {
        for k in 0..sides.len() {
            let side = (round + k) % sides.len();
            let (name, port) = sides[side];
            let w = wrk::run(port, ROUND, cpus.load);
            eprintln!("cache: round {}: {name}: {:.0} req/s", round + 1, w.rps);
            rps[side].push(w.rps);
            served += w.requests;
        }
    }
    let forwarded = upstream_requests(upstream.port) - before;
    for (name, fg) in [("memory", &fg_memory), ("redis", &fg_redis)] {
        let outcome = |o: &str| fg.metric_sum("fleetgate_cache_total", &format!("outcome=\"{o}\""));
        eprintln!(
            "cache: fleetgate {name}: {} hits, {} misses, {} bypassed, {} store errors",
            outcome("hit"),
            outcome("miss"),
            outcome("bypass"),
            outcome("store_error")
        );
    }
    eprintln!("cache: the upstream saw {forwarded} of {served} requests during the rounds");
    assert!(
        forwarded as f64 <= served as f64 * FORWARDED_PER_MILLION / 1e6,
        "the upstream saw {forwarded} of {served} requests during the rounds: a side is not serving from its cache"
    );
    let [v, m, r] = rps.each_mut().map(|s| median(s));
    let peer = format!(
        "{} serving the same object from its cache (malloc storage), same run",
        varnish.version
    );
    report::ratio("cache_hit_memory", m, "req/s", &peer, v);
    report::ratio("cache_hit_redis", r, "req/s", &peer, v);
    ExitCode::SUCCESS
}

fn start_fleetgate(
    bin: &Path,
    scratch: &Scratch,
    name: &str,
    store_url: &str,
    upstream_port: u16,
    cpus: &super::Cpus,
) -> Fleetgate {
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        "listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin} }}
log: {{ level: error, access_log: false }}
store: {{ url: \"{store_url}\" }}
{EVENTS_OFF}upstreams:
  up: {{ targets: [\"http://127.0.0.1:{upstream_port}\"] }}
routes:
  - name: bench
    upstream: up
    cache: {{}}
"
    );
    Fleetgate::start_config(bin, scratch, name, &config, cpus.workers, cpus.proxy)
}

/// `GET /` with the response's head: (status, head text).
fn head(port: u16) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .expect("send GET /");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Requests the upstream nginx has served (its `stub_status`, which counts itself too).
fn upstream_requests(port: u16) -> u64 {
    let (status, body) = super::procs::http_get(port, "/nginx_status").expect("GET /nginx_status");
    assert_eq!(status, 200, "upstream stub_status");
    // "Active connections: 1 \nserver accepts handled requests\n 1 1 1 \n..."
    body.lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or_else(|| panic!("unreadable stub_status: {body}"))
}

/// A varnishd in the foreground with the object's upstream as its only backend and the
/// built-in VCL (which caches a `max-age` response).
struct Varnish {
    child: Child,
    port: u16,
    version: String,
}

impl Varnish {
    fn start(scratch: &Scratch, backend_port: u16, cpus: Option<&str>) -> Varnish {
        let port = free_port();
        let dir = scratch.dir.join("varnish");
        std::fs::create_dir_all(&dir).expect("create the varnish work directory");
        let log = dir.join("varnishd.log");
        let out = std::fs::File::create(&log).expect("create the varnish log");
        let err = out.try_clone().expect("clone the log handle");
        let version = std::process::Command::new("varnishd")
            .arg("-V")
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
                // "varnishd (varnish-7.1.1 revision 7cee...)"
                let line = text.lines().next()?;
                let inner = line.split_once('(').map_or(line, |(_, rest)| rest);
                Some(inner.split(" revision").next().unwrap_or(inner).trim().to_string())
            })
            .unwrap_or_else(|| panic!("varnishd not found; install it with: apt-get install -y varnish"));
        let child = command(Path::new("varnishd"), cpus)
            .arg("-F")
            .args(["-j", "none"])
            .arg("-a")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-b")
            .arg(format!("127.0.0.1:{backend_port}"))
            .arg("-n")
            .arg(&dir)
            .args(["-s", "malloc,64m"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start varnishd ({e}); install it with: apt-get install -y varnish"));
        let mut v = Varnish { child, port, version };
        wait_for(&mut v.child, port, "/", 200, "varnishd", || read_or_empty(&log));
        v
    }
}

impl Drop for Varnish {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
