//! An open-loop, constant-rate HTTP/1.1 load generator (the role wrk2 plays), for latency at a
//! fixed rate. wrk is closed-loop: each connection sends its next request when the previous
//! answer arrives, so a slow server slows the load down and its stalls go unmeasured
//! (coordinated omission).
//!
//! * Schedule: request `i` is due at `start + i / rate`. A pacer thread (a plain OS thread that
//!   sleeps between due times, so its wake-up error is the kernel's timer slack, tens of µs,
//!   not tokio's 1 ms timer wheel) hands each due slot, with its due time, to a queue; above
//!   10,000 req/s it wakes every 100 µs and hands out all the slots due by then.
//! * Connections: `connections` keep-alive HTTP/1.1 connections (hyper's client `conn::http1`,
//!   one request at a time each), driven by one current-thread tokio runtime. Whichever
//!   connection is free takes the next slot; when all are busy, slots wait in the queue.
//! * Latency = answer fully read − due time. Time a request spent waiting for a free connection,
//!   or behind a late pacer, counts: a stall of the server shows up in every request that was
//!   due during it.
//! * Bounded: the pacer stops at `start + duration`; answers still missing `GRACE` later are
//!   counted as lost, with the latency they had reached by then (a lower bound).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long answers are awaited after the last due time.
const GRACE: Duration = Duration::from_secs(2);
/// The pacer's shortest sleep: it wakes at most once per GRAIN and then hands out every slot
/// due by then (each is still timed from its own due time).
const GRAIN: Duration = Duration::from_micros(100);

/// One answered (or lost) request: when it was due, relative to `start`, and its latency.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub due_ns: u64,
    pub latency_ns: u64,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Run {
    /// Every due request that was answered with 200, or lost (see `lost`), in no special order.
    pub samples: Vec<Sample>,
    /// Requests due (the schedule).
    pub due: u64,
    /// Answers other than 200 (not in `samples`).
    pub non_200: u64,
    /// Connection or protocol errors (not in `samples`).
    pub errors: u64,
    /// Requests without an answer by the end of the grace period (in `samples`, lower bound).
    pub lost: u64,
    /// How late the pacer handed slots out: 99th percentile and maximum, in µs.
    pub pacer_late_p99_us: u64,
    pub pacer_late_max_us: u64,
}

impl Run {
    /// Latencies (ns) of the samples due in `[from_ns, to_ns)`, sorted.
    pub fn latencies(&self, from_ns: u64, to_ns: u64) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .samples
            .iter()
            .filter(|s| s.due_ns >= from_ns && s.due_ns < to_ns)
            .map(|s| s.latency_ns)
            .collect();
        v.sort_unstable();
        v
    }

    /// Samples sorted by due time.
    pub fn by_due(&self) -> Vec<Sample> {
        let mut v = self.samples.clone();
        v.sort_unstable_by_key(|s| s.due_ns);
        v
    }

    /// Whether every due request got a 200 in time.
    pub fn clean(&self) -> bool {
        self.non_200 == 0 && self.errors == 0 && self.lost == 0
    }

    pub fn summary(&self) -> String {
        format!(
            "{} due, {} answered 200, {} other status, {} errors, {} lost; pacer late p99 {} µs, max {} µs",
            self.due,
            self.samples.len() as u64 - self.lost,
            self.non_200,
            self.errors,
            self.lost,
            self.pacer_late_p99_us,
            self.pacer_late_max_us
        )
    }
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted values; 0 when empty.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// p50 / p99 / p99.9 / max of sorted latencies, for the log.
pub fn describe(sorted: &[u64]) -> String {
    format!(
        "n={} p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        sorted.len(),
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99)),
        ms(percentile(sorted, 0.999)),
        ms(sorted.last().copied().unwrap_or(0))
    )
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One request on `sender`; the status once the body has been read.
async fn request(sender: &mut Sender, host: &str) -> Result<u16, hyper::Error> {
    sender.ready().await?;
    let req = http::Request::get("/")
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .expect("static request");
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

#[derive(Default)]
struct Tally {
    samples: Vec<Sample>,
    non_200: u64,
    errors: u64,
    /// Due times (ns) of requests sent and not answered yet.
    in_flight: Vec<u64>,
}

/// Sends `rate` requests per second to `GET http://addr/` from `start` (which must be at least
/// a few ms away: the connections are opened first) for `duration`.
pub fn run(addr: SocketAddr, rate: f64, start: Instant, duration: Duration, connections: usize) -> Run {
    assert!(rate > 0.0, "rate must be positive");
    let interval_ns = 1e9 / rate;
    let due_total = (duration.as_secs_f64() * rate).floor() as u64;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let host = addr.to_string();
    let tally = Arc::new(Mutex::new(Tally::default()));

    runtime.block_on(async {
        let mut senders = Vec::with_capacity(connections);
        for _ in 0..connections {
            senders.push(
                connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("open-loop generator: connect to {addr}: {e}")),
            );
        }
        let (tx, rx) = mpsc::unbounded_channel::<u64>();
        let queue = Arc::new(tokio::sync::Mutex::new(rx));
        let mut tasks = Vec::with_capacity(connections);
        for mut sender in senders {
            let (queue, tally, host) = (queue.clone(), tally.clone(), host.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().await.recv().await;
                    let Some(due_ns) = next else { return };
                    let due = start + Duration::from_nanos(due_ns);
                    tally.lock().unwrap().in_flight.push(due_ns);
                    let outcome = request(&mut sender, &host).await;
                    let latency_ns = Instant::now().saturating_duration_since(due).as_nanos() as u64;
                    {
                        let mut t = tally.lock().unwrap();
                        if let Some(i) = t.in_flight.iter().position(|&d| d == due_ns) {
                            t.in_flight.swap_remove(i);
                        }
                        match outcome {
                            Ok(200) => t.samples.push(Sample { due_ns, latency_ns }),
                            Ok(_) => t.non_200 += 1,
                            Err(_) => t.errors += 1,
                        }
                    }
                    if outcome.is_err() || sender.is_closed() {
                        match connect(addr).await {
                            Ok(s) => sender = s,
                            Err(_) => {
                                tally.lock().unwrap().errors += 1;
                                return;
                            }
                        }
                    }
                }
            }));
        }

        // The pacer: an OS thread, so that its wake-ups are not rounded to tokio's 1 ms ticks.
        let pacer = std::thread::Builder::new()
            .name("openloop-pacer".into())
            .spawn(move || {
                let mut late_us: Vec<u64> = Vec::with_capacity(due_total as usize);
                let due_ns = |i: u64| (i as f64 * interval_ns) as u64;
                let mut i = 0;
                while i < due_total {
                    // Sleep until the next due time, but wake at most once per GRAIN: at high
                    // rates each wake-up hands out every slot due by then, so the pacer costs
                    // few context switches and wakes the runtime at most 1/GRAIN per second.
                    let due = start + Duration::from_nanos(due_ns(i));
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep((due - now).max(GRAIN));
                    }
                    let now = Instant::now();
                    let now_ns = now.saturating_duration_since(start).as_nanos() as u64;
                    while i < due_total && due_ns(i) <= now_ns {
                        late_us.push((now_ns - due_ns(i)) / 1000);
                        if tx.send(due_ns(i)).is_err() {
                            return late_us;
                        }
                        i += 1;
                    }
                }
                late_us.sort_unstable();
                late_us
            })
            .expect("spawn the pacer thread");

        let deadline = start + duration + GRACE;
        let all = futures_util::future::join_all(tasks.iter_mut());
        let finished = tokio::time::timeout_at(deadline.into(), all).await.is_ok();
        if !finished {
            for task in &tasks {
                task.abort();
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        let late_us = tokio::task::spawn_blocking(move || pacer.join().expect("pacer thread"))
            .await
            .expect("join the pacer");
        // Never taken from the queue (only when the run did not finish in time).
        let mut queued = Vec::new();
        if !finished {
            let mut rx = queue.lock().await;
            while let Ok(due_ns) = rx.try_recv() {
                queued.push(due_ns);
            }
        }
        let mut t = tally.lock().unwrap();
        let mut run = Run {
            due: due_total,
            pacer_late_p99_us: percentile(&late_us, 0.99),
            pacer_late_max_us: late_us.last().copied().unwrap_or(0),
            ..Run::default()
        };
        if !finished {
            // Lost: still in flight, or never taken from the queue. Their latency so far.
            let now_ns = Instant::now().saturating_duration_since(start).as_nanos() as u64;
            let mut missing: Vec<u64> = std::mem::take(&mut t.in_flight);
            missing.extend(queued);
            run.lost = missing.len() as u64;
            t.samples.extend(missing.into_iter().map(|due_ns| Sample {
                due_ns,
                latency_ns: now_ns.saturating_sub(due_ns),
            }));
        }
        run.samples = std::mem::take(&mut t.samples);
        run.non_200 = t.non_200;
        run.errors = t.errors;
        run
    })
}
