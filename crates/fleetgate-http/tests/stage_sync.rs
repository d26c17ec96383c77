//! A pipeline run without waiting as far as its stages allow (`request_sync`, then
//! `request_from` for the rest, which again runs as plain calls the stages after a wait that
//! can decide now; the same on the way out) runs every stage exactly once, in the same order
//! and with the same outcome as the plain async phases, whichever stages can decide
//! now and wherever one answers. And the rate limits decided as plain calls keep their counts:
//! a limit of N admits exactly N whether its decisions were made now or awaited.

use fleetgate_http::{pipeline, stages, Flow, KeyPart, RateLimitConfig, RateLimits, RequestCtx, Stage, StoreCtx};
use fleetgate_store::{Algorithm, Keyspace, MemoryStore, RateLimit, Store};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

type Log = Arc<Mutex<Vec<String>>>;

/// A stage that logs each phase it runs; decides now on the way in when `now_in`, on the way
/// out when `now_out`, and answers 429 when `answers`.
struct Probe {
    name: &'static str,
    now_in: bool,
    now_out: bool,
    answers: bool,
    log: Log,
}

impl Probe {
    fn decide(&self, how: &str) -> Flow {
        self.log.lock().unwrap().push(format!("in {} {how}", self.name));
        if self.answers {
            let mut r = Response::new(bytes::Bytes::new());
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            Flow::Answer(r)
        } else {
            Flow::Continue
        }
    }
}

impl Stage<Store> for Probe {
    async fn request(&self, _cx: &mut RequestCtx<'_, Store>, _req: &mut Parts) -> Flow {
        tokio::task::yield_now().await;
        self.decide("awaited")
    }

    fn request_now(&self, _cx: &mut RequestCtx<'_, Store>, _req: &mut Parts) -> Option<Flow> {
        self.now_in.then(|| self.decide("now"))
    }

    async fn response<B: Send>(&self, _cx: &mut RequestCtx<'_, Store>, _resp: &mut Response<B>) {
        tokio::task::yield_now().await;
        self.log.lock().unwrap().push(format!("out {} awaited", self.name));
    }

    fn response_now<B: Send>(&self, _cx: &mut RequestCtx<'_, Store>, _resp: &mut Response<B>) -> bool {
        if self.now_out {
            self.log.lock().unwrap().push(format!("out {} now", self.name));
        }
        self.now_out
    }
}

type Four = stages![Probe, Probe, Probe, Probe];

/// Probes a, b, c, d; bit i of `now_in`/`now_out` says whether probe i decides now; `answers`
/// names the probe that answers (4: none); `present` bit i whether probe i is configured.
fn probes(now_in: u8, now_out: u8, answers: usize, present: u8, log: &Log) -> [Option<Probe>; 4] {
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];
    std::array::from_fn(|i| {
        (present & (1 << i) != 0).then(|| Probe {
            name: NAMES[i],
            now_in: now_in & (1 << i) != 0,
            now_out: now_out & (1 << i) != 0,
            answers: answers == i,
            log: log.clone(),
        })
    })
}

fn four(now_in: u8, now_out: u8, answers: usize, present: u8, log: &Log) -> Four {
    let [a, b, c, d] = probes(now_in, now_out, answers, present, log);
    pipeline![a, b, c, d]
}

fn parts() -> Parts {
    Request::new(()).into_parts().0
}

/// The stage names in the order the log has them, without how they ran.
fn order(log: &Log) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect()
}

/// The same four probes with the middle two as one nested pipeline (a stage that is itself
/// a chain, as a library user may compose them).
type Nested = stages![Probe, stages![Probe, Probe], Probe];

fn nested(now_in: u8, now_out: u8, answers: usize, present: u8, log: &Log) -> Nested {
    let [a, b, c, d] = probes(now_in, now_out, answers, present, log);
    pipeline![a, Some(pipeline![b, c]), d]
}

#[tokio::test]
async fn a_pipeline_run_partly_now_runs_every_stage_once_in_order() {
    assert_eq!(<Four as Stage<Store>>::STAGES, 4);
    every_mix(four).await;
}

#[tokio::test]
async fn a_nested_pipeline_run_partly_now_runs_every_stage_once_in_order() {
    assert_eq!(<Nested as Stage<Store>>::STAGES, 4);
    every_mix(nested).await;
}

/// Runs every mix of present, now-deciding and answering probes both ways and compares.
async fn every_mix<P: Stage<Store>>(build: fn(u8, u8, usize, u8, &Log) -> P) {
    let store = StoreCtx::new(Store::Memory(MemoryStore::new()), "test");
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let mut checked = 0;
    for present in 0..16u8 {
        for now_in in 0..16u8 {
            for now_out in 0..16u8 {
                for answers in 0..5usize {
                    // The plain async phases: what the pipeline means.
                    let plain_log: Log = Default::default();
                    let plain = build(now_in, now_out, answers, present, &plain_log);
                    let mut cx = RequestCtx::new(&store, ip, "r");
                    let mut req = parts();
                    let plain_flow = plain.request(&mut cx, &mut req).await;
                    let mut resp = Response::new(());
                    plain.response(&mut cx, &mut resp).await;

                    // As far as it goes now, then the rest awaited.
                    let log: Log = Default::default();
                    let p = build(now_in, now_out, answers, present, &log);
                    let mut cx = RequestCtx::new(&store, ip, "r");
                    let mut req = parts();
                    let flow = match p.request_sync(&mut cx, &mut req) {
                        Ok(flow) => flow,
                        Err(done) => {
                            assert!(done < 4, "done {done} of 4 stages, yet something is left");
                            p.request_from(&mut cx, &mut req, done).await
                        }
                    };
                    let mut resp = Response::new(());
                    if let Err(done) = p.response_sync(&mut cx, &mut resp) {
                        p.response_from(&mut cx, &mut resp, done).await;
                    }

                    let case =
                        format!("present {present:04b} now_in {now_in:04b} now_out {now_out:04b} answers {answers}");
                    assert_eq!(order(&log), order(&plain_log), "{case}");
                    let status = |f: &Flow| match f {
                        Flow::Continue => None,
                        Flow::Answer(r) => Some(r.status()),
                    };
                    assert_eq!(status(&flow), status(&plain_flow), "{case}");
                    // Every stage that can decide now ran as a plain call, also after one that
                    // had to wait, and only those that cannot were awaited.
                    for phase in ["in", "out"] {
                        let mask = if phase == "in" { now_in } else { now_out };
                        let lines: Vec<String> = log
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|l| l.starts_with(phase))
                            .cloned()
                            .collect();
                        for line in &lines {
                            let name = line.split(' ').nth(1).unwrap();
                            let i = (name.as_bytes()[0] - b'a') as usize;
                            let can = mask & (1 << i) != 0;
                            assert_eq!(line.ends_with("now"), can, "{case}: {line} ({lines:?})");
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 16 * 16 * 16 * 5);
}

#[tokio::test]
async fn rate_limits_decided_now_admit_exactly_the_limit() {
    let keyspace = Keyspace::new("sync").unwrap();
    let store = StoreCtx::new(Store::Memory(MemoryStore::new()), "test");
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    // Two limits on the in-process store: both decide now; the second refuses after 3, and
    // the first's admissions are refunded when it does.
    let wide = RateLimitConfig::new(
        "wide",
        vec![KeyPart::Ip],
        RateLimit::parse(Algorithm::FixedWindow, "5/60s", None).unwrap(),
    );
    let narrow = RateLimitConfig::new(
        "narrow",
        vec![KeyPart::Ip],
        RateLimit::parse(Algorithm::FixedWindow, "3/60s", None).unwrap(),
    );
    let limits = RateLimits::for_route(&keyspace, "r", &[narrow, wide], &[])
        .unwrap()
        .unwrap();
    let mut admitted = 0;
    for _ in 0..10 {
        let mut cx = RequestCtx::new(&store, ip, "r");
        let mut req = parts();
        let flow = Stage::<Store>::request_now(&limits, &mut cx, &mut req).expect("in-process limits decide now");
        let mut resp = Response::new(());
        assert!(Stage::<Store>::response_now(&limits, &mut cx, &mut resp));
        match flow {
            Flow::Continue => {
                admitted += 1;
                assert!(
                    resp.headers().contains_key("ratelimit"),
                    "an admission carries RateLimit"
                );
            }
            Flow::Answer(r) => assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS),
        }
    }
    assert_eq!(admitted, 3);
    // The wide limit was charged for the 3 admissions only (its refunds of the 7 refusals
    // worked): 2 more fit it on another route that has it alone.
    let wide_alone = RateLimits::for_route(
        &keyspace,
        "r",
        &[RateLimitConfig::new(
            "wide",
            vec![KeyPart::Ip],
            RateLimit::parse(Algorithm::FixedWindow, "5/60s", None).unwrap(),
        )],
        &[],
    )
    .unwrap()
    .unwrap();
    let mut more = 0;
    for _ in 0..5 {
        let mut cx = RequestCtx::new(&store, ip, "r");
        let mut req = parts();
        if let Some(Flow::Continue) = Stage::<Store>::request_now(&wide_alone, &mut cx, &mut req) {
            more += 1;
        }
    }
    assert_eq!(more, 2);
}
