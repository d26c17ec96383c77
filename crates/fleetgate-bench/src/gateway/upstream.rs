//! `scripts/bench upstream`: the outbound throttle (`upstreams.*.throttle`) on Redis.
//!
//! * `throttle_overhead`: wrk req/s through fleetgate whose upstream has a throttle that is
//!   never reached (100000000/100s, burst 100000), on a redis-server started here, against
//!   fleetgate with the `gateway_redis_limit` setup (a never-reached rate limit on the same
//!   Redis) in the same run: one store call per request each. `ROUNDS` rounds of 5 s in
//!   rotated order, medians. Target: at least 0.9.
//! * `throttle_accuracy`: three instances (one worker each) with a throttle of
//!   `ACCURACY_RATE`/s on one upstream, saturated by `CALLERS` blocking callers per instance
//!   (each waits for its slot, so the queue never empties); the upstream (a counting stand-in
//!   in this process) counts the calls it receives over 10 s after a 1 s warm-up. The figure is
//!   that observed rate over the declared one. Target: between 0.95 and 1.0.

use super::procs::{http_get, Fleetgate, Nginx, Scratch, EVENTS_OFF};
use super::{cpus, median, start_redis, start_redis_limit, wrk, ROUND, ROUNDS, WARM};
use crate::report;
use fleetgate_testkit::free_port;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCURACY_RATE: u64 = 200;
const ACCURACY_WINDOW: Duration = Duration::from_secs(10);
const CALLERS: usize = 16;

pub fn run(fleetgate_bin: &Path) -> ExitCode {
    let cpus = cpus();
    let scratch = Scratch::new();
    let upstream = Nginx::upstream(&scratch, free_port(), cpus.load);
    let redis = start_redis(&cpus);
    let fg_limit = start_redis_limit(fleetgate_bin, &scratch, &redis.url(), upstream.port, &cpus);
    let throttle = throttled_config(
        &redis.url(),
        upstream.port,
        "rate: 100000000/100s, burst: 100000, max_wait: 1s",
    );
    let fg_throttle = Fleetgate::start_config(
        fleetgate_bin,
        &scratch,
        "fleetgate-redis-throttle",
        &throttle,
        cpus.workers,
        cpus.proxy,
    );
    let sides = [("gateway_redis_limit", &fg_limit), ("throttle", &fg_throttle)];
    for (name, fg) in sides {
        let w = wrk::run(fg.port, WARM, cpus.load);
        eprintln!("upstream: warm-up {name}: {:.0} req/s", w.rps);
    }
    let mut rps: [Vec<f64>; 2] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..2 {
            let side = (round + k) % 2;
            let (name, fg) = sides[side];
            let fallback_before = fg.metric_sum("fleetgate_throttle_decisions_total", "outcome=\"fallback");
            let w = wrk::run(fg.port, ROUND, cpus.load);
            let fallbacks = fg.metric_sum("fleetgate_throttle_decisions_total", "outcome=\"fallback") - fallback_before;
            assert!(
                fallbacks == 0.0,
                "{name}: {fallbacks} throttle decisions fell back to the local store"
            );
            eprintln!("upstream: round {}: {name}: {:.0} req/s", round + 1, w.rps);
            rps[side].push(w.rps);
        }
    }
    let allowed = fg_throttle.metric_sum("fleetgate_throttle_decisions_total", "outcome=\"allowed\"");
    assert!(allowed > 0.0, "the throttle decided nothing in the store");
    let (limit, throttled) = (median(&mut rps[0]), median(&mut rps[1]));
    report::ratio(
        "throttle_overhead",
        throttled,
        "req/s",
        "fleetgate gateway_redis_limit (a never-reached rate limit on the same Redis), same run",
        limit,
    );
    drop(fg_throttle);
    drop(fg_limit);

    accuracy(fleetgate_bin, &scratch, &redis.url());
    ExitCode::SUCCESS
}

fn throttled_config(redis_url: &str, upstream_port: u16, throttle: &str) -> String {
    let (port, admin) = (free_port(), free_port());
    format!(
        "listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin} }}
log: {{ level: error, access_log: false }}
store: {{ url: \"{redis_url}\" }}
{EVENTS_OFF}upstreams:
  up:
    targets: [\"http://127.0.0.1:{upstream_port}\"]
    throttle: {{ {throttle} }}
routes:
  - name: bench
    upstream: up
"
    )
}

fn accuracy(fleetgate_bin: &Path, scratch: &Scratch, redis_url: &str) {
    let counter = CountingUpstream::start();
    let fleet: Vec<Fleetgate> = (0..3)
        .map(|i| {
            let config = throttled_config(
                redis_url,
                counter.port,
                &format!("rate: {ACCURACY_RATE}/s, max_wait: 5s"),
            );
            Fleetgate::start_config(
                fleetgate_bin,
                scratch,
                &format!("fleetgate-accuracy-{i}"),
                &config,
                1,
                None,
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = fleet
        .iter()
        .flat_map(|fg| (0..CALLERS).map(move |_| fg.port))
        .map(|port| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = http_get(port, "/");
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (counter.calls(), Instant::now());
    std::thread::sleep(ACCURACY_WINDOW);
    let (c1, t1) = (counter.calls(), Instant::now());
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        let _ = c.join();
    }
    let observed = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    eprintln!(
        "upstream: accuracy: the upstream saw {} calls in {:.2} s from 3 instances x {CALLERS} callers: {observed:.1}/s, declared {ACCURACY_RATE}/s",
        c1 - c0,
        (t1 - t0).as_secs_f64()
    );
    report::ratio(
        "throttle_accuracy",
        observed,
        "calls/s",
        "the declared rate",
        ACCURACY_RATE as f64,
    );
}

/// An HTTP/1.1 keep-alive stand-in that answers `200 ok` and counts the requests it read.
struct CountingUpstream {
    port: u16,
    calls: Arc<AtomicU64>,
}

impl CountingUpstream {
    fn start() -> CountingUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the counting upstream");
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let c = c.clone();
                std::thread::spawn(move || serve(stream, &c));
            }
        });
        CountingUpstream { port, calls }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// Reads requests without bodies (the bench sends GETs) and answers each.
fn serve(mut stream: std::net::TcpStream, calls: &AtomicU64) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            calls.fetch_add(1, Ordering::Relaxed);
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
