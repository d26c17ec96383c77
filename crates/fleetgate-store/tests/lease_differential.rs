//! Differential test for lease mode: the reserve and give-back scripts against the pure
//! functions they mirror (`algo::gcra::{reserve, give_back}`,
//! `algo::fixed_window::{reserve, give_back}`, `algo::sliding_window::{reserve, give_back}`),
//! with exact charges interleaved.
//!
//! As in `tests/differential.rs`: the scripts get the test-only clock argument (`now` in µs,
//! replacing `TIME`), each step runs in one MULTI/EXEC with a read of the state and PERSIST
//! (the server would otherwise expire keys on its real time, unrelated to the `now` given), and
//! every output must be equal: the reservation (granted, lease end, remaining, reset, time, the
//! receipt's mark), the give-back's answer, and the stored state.

use fleetgate_store::algo::{fixed_window, gcra, sliding_window};
use fleetgate_store::{Algorithm, LeaseReceipt, RateLimit};
use fleetgate_testkit::RedisServer;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use redis::Value;
use std::sync::atomic::{AtomicU64, Ordering};

const SCRIPTS: [(&str, &str); 5] = [
    (
        "reserve",
        concat!(
            include_str!("../src/redis/scripts/now.lua"),
            include_str!("../src/redis/scripts/sliding_log.lua"),
            include_str!("../src/redis/scripts/reserve.lua")
        ),
    ),
    (
        "give_back",
        concat!(
            include_str!("../src/redis/scripts/now.lua"),
            include_str!("../src/redis/scripts/sliding_log.lua"),
            include_str!("../src/redis/scripts/give_back.lua")
        ),
    ),
    (
        "gcra",
        concat!(
            include_str!("../src/redis/scripts/now.lua"),
            include_str!("../src/redis/scripts/gcra.lua")
        ),
    ),
    (
        "fixed_window",
        concat!(
            include_str!("../src/redis/scripts/now.lua"),
            include_str!("../src/redis/scripts/fixed_window.lua")
        ),
    ),
    (
        "sliding_window",
        concat!(
            include_str!("../src/redis/scripts/now.lua"),
            include_str!("../src/redis/scripts/sliding_log.lua"),
            include_str!("../src/redis/scripts/sliding_window.lua")
        ),
    ),
];

const CASES: u32 = 64;

#[derive(Debug, Clone)]
enum Op {
    Reserve { gap: u64, want: u64, lease: u64 },
    GiveBack { gap: u64, pick: Index, unused: u64 },
    Charge { gap: u64, cost: u64 },
}

fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..3,
        3 => 0u64..5_000,
        3 => 0u64..2_000_000,
        1 => 0u64..200_000_000_000,
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let want = prop_oneof![8 => 0u64..20, 1 => Just(u64::MAX)];
    let lease = prop_oneof![3 => 0u64..2_000_000, 1 => 0u64..(1u64 << 49)];
    let op = prop_oneof![
        3 => (gap(), want, lease).prop_map(|(gap, want, lease)| Op::Reserve { gap, want, lease }),
        1 => (gap(), any::<Index>(), 0u64..25).prop_map(|(gap, pick, unused)| Op::GiveBack { gap, pick, unused }),
        1 => (gap(), 0u64..6).prop_map(|(gap, cost)| Op::Charge { gap, cost }),
    ];
    proptest::collection::vec(op, 1..100)
}

fn limit(algorithm: Algorithm) -> impl Strategy<Value = RateLimit> {
    let period = prop_oneof![
        (1u64..5_000).prop_map(|n| format!("{n}ms")),
        (1u64..600).prop_map(|n| format!("{n}s")),
        (1u64..48).prop_map(|n| format!("{n}h")),
    ];
    let burst = match algorithm {
        Algorithm::Gcra => (1i64..60).prop_map(Some).boxed(),
        _ => Just(None).boxed(),
    };
    (1u64..40, period, burst).prop_filter_map("limit within bounds", move |(count, period, burst)| {
        RateLimit::parse(algorithm, &format!("{count}/{period}"), burst).ok()
    })
}

enum Model {
    Gcra(Option<u64>),
    Fixed(Option<fixed_window::WindowCount>),
    Sliding(sliding_window::SlidingLog),
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Nil => None,
        Value::BulkString(b) => Some(String::from_utf8(b.clone()).unwrap()),
        other => panic!("expected a string, got {other:?}"),
    }
}

#[derive(Default)]
struct Seen {
    granted: u64,
    refused: u64,
    given_back: u64,
    not_taken: u64,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn run_case(
    conn: &mut redis::Connection,
    shas: &[String],
    seen: &mut Seen,
    limit: RateLimit,
    start: u64,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let algorithm = limit.algorithm();
    let key = format!("leasediff:{algorithm}:{{{}}}", NEXT.fetch_add(1, Ordering::Relaxed));
    let total_key = format!("{key}:n");
    let keys: Vec<&str> = match algorithm {
        Algorithm::SlidingWindow => vec![&key, &total_key],
        _ => vec![&key],
    };
    let (name, param) = match algorithm {
        Algorithm::Gcra => ("gcra", limit.interval_us()),
        Algorithm::FixedWindow => ("fixed_window", limit.period_us()),
        Algorithm::SlidingWindow => ("sliding_window", limit.period_us()),
    };
    let mut model = match algorithm {
        Algorithm::Gcra => Model::Gcra(None),
        Algorithm::FixedWindow => Model::Fixed(None),
        Algorithm::SlidingWindow => Model::Sliding(Default::default()),
    };
    let mut receipts: Vec<LeaseReceipt> = Vec::new();
    let mut now = start;
    for (step, op) in ops.iter().enumerate() {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let expected: Vec<i64>;
        let mut new_receipt = None;
        match op {
            Op::Reserve { gap, want, lease } => {
                now += gap;
                let r = match &mut model {
                    Model::Gcra(tat) => {
                        let (r, s) = gcra::reserve(*tat, now, &limit, *want, *lease);
                        if s.is_some() {
                            *tat = s;
                        }
                        r
                    }
                    Model::Fixed(state) => {
                        let (r, s, _) = fixed_window::reserve(*state, now, &limit, *want, *lease);
                        if s.is_some() {
                            *state = s;
                        }
                        r
                    }
                    Model::Sliding(log) => sliding_window::reserve(log, now, &limit, *want, *lease).0,
                };
                if r.granted > 0 {
                    seen.granted += 1;
                } else {
                    seen.refused += 1;
                }
                new_receipt = r.receipt;
                expected = vec![
                    r.granted as i64,
                    r.lease_until_us as i64,
                    r.remaining as i64,
                    r.reset_after.as_micros() as i64,
                    r.at_us as i64,
                ];
                pipe.cmd("EVALSHA")
                    .arg(&shas[0])
                    .arg(keys.len())
                    .arg(&keys)
                    .arg(name)
                    .arg(param)
                    .arg(limit.capacity())
                    .arg(*want)
                    .arg(*lease)
                    .arg(now);
            }
            Op::GiveBack { gap, pick, unused } => {
                now += gap;
                if receipts.is_empty() {
                    continue;
                }
                let receipt = receipts.swap_remove(pick.index(receipts.len()));
                let changed = match &mut model {
                    Model::Gcra(tat) => match gcra::give_back(*tat, now, &limit, &receipt, *unused) {
                        Some(t) => {
                            *tat = (t > now).then_some(t);
                            true
                        }
                        None => false,
                    },
                    Model::Fixed(state) => match fixed_window::give_back(*state, &receipt, *unused) {
                        Some(s) => {
                            *state = Some(s);
                            true
                        }
                        None => false,
                    },
                    Model::Sliding(log) => sliding_window::give_back(log, &receipt, *unused),
                };
                if changed {
                    seen.given_back += 1;
                } else {
                    seen.not_taken += 1;
                }
                expected = vec![changed as i64];
                pipe.cmd("EVALSHA")
                    .arg(&shas[1])
                    .arg(keys.len())
                    .arg(&keys)
                    .arg(name)
                    .arg(param)
                    .arg(*unused)
                    .arg(receipt.granted)
                    .arg(receipt.mark)
                    .arg(now);
            }
            Op::Charge { gap, cost } => {
                now += gap;
                let d = match &mut model {
                    Model::Gcra(tat) => {
                        let (d, s) = gcra::decide(*tat, now, &limit, *cost);
                        if s.is_some() {
                            *tat = s;
                        }
                        pipe.cmd("EVALSHA")
                            .arg(&shas[2])
                            .arg(1)
                            .arg(&key)
                            .arg(limit.interval_us())
                            .arg(limit.capacity())
                            .arg(*cost)
                            .arg(limit.period_us())
                            .arg(now);
                        d
                    }
                    Model::Fixed(state) => {
                        let (d, s, _) = fixed_window::decide(*state, now, &limit, *cost);
                        if s.is_some() {
                            *state = s;
                        }
                        pipe.cmd("EVALSHA")
                            .arg(&shas[3])
                            .arg(1)
                            .arg(&key)
                            .arg(limit.period_us())
                            .arg(limit.capacity())
                            .arg(*cost)
                            .arg(now);
                        d
                    }
                    Model::Sliding(log) => {
                        let (d, _) = sliding_window::decide(log, now, &limit, *cost);
                        pipe.cmd("EVALSHA")
                            .arg(&shas[4])
                            .arg(2)
                            .arg(&keys)
                            .arg(limit.period_us())
                            .arg(limit.capacity())
                            .arg(*cost)
                            .arg(now);
                        d
                    }
                };
                expected = vec![d.allowed as i64, d.remaining as i64];
            }
        }
        match algorithm {
            Algorithm::Gcra => pipe.cmd("GET").arg(&key),
            Algorithm::FixedWindow => pipe.cmd("HMGET").arg(&key).arg("w").arg("n"),
            Algorithm::SlidingWindow => pipe.cmd("LRANGE").arg(&key).arg(0).arg(-1).cmd("GET").arg(&total_key),
        };
        for k in &keys {
            pipe.cmd("PERSIST").arg(*k).ignore();
        }
        let replies: Vec<Value> = pipe
            .query(conn)
            .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
        let what = format!("step {step} ({op:?}, now {now}, limit {limit:?})");
        let reply: Vec<i64> = match &replies[0] {
            Value::Array(items) => items.iter().map(int).collect(),
            // The rate scripts answer "allowed remaining reset_us retry_us now_us".
            Value::BulkString(b) => std::str::from_utf8(b)
                .unwrap()
                .split(' ')
                .map(|n| n.parse().unwrap())
                .collect(),
            v => vec![int(v)],
        };
        prop_assert_eq!(&reply[..expected.len()], &expected[..], "{}", what);
        if let Some(r) = new_receipt {
            prop_assert_eq!(reply.len(), 6, "{}", what);
            prop_assert_eq!(reply[5], r.mark as i64, "{}: receipt mark", what);
            receipts.push(r);
        }
        match (&model, &replies[1]) {
            (Model::Gcra(tat), v) => {
                // A TAT not after now is a full bucket, whether stored or not.
                let live = |t: Option<u64>| t.filter(|t| *t > now);
                let got = text(v).map(|t| t.parse::<u64>().unwrap());
                prop_assert_eq!(live(got), live(*tat), "{}: TAT", what);
            }
            (Model::Fixed(state), Value::Array(wn)) => {
                let got: Vec<Option<String>> = wn.iter().map(text).collect();
                let want = match state {
                    Some(s) => vec![Some(s.window.to_string()), Some(s.count.to_string())],
                    None => vec![None, None],
                };
                prop_assert_eq!(got, want, "{}: window", what);
            }
            (Model::Sliding(log), Value::Array(entries)) => {
                let got: Vec<String> = entries.iter().map(|e| text(e).unwrap()).collect();
                let want: Vec<String> = log.entries.iter().map(|(t, c)| format!("{t}:{c}")).collect();
                prop_assert_eq!(got, want, "{}: log", what);
                let want_total = (!log.entries.is_empty()).then(|| log.total.to_string());
                prop_assert_eq!(text(&replies[2]), want_total, "{}: total", what);
            }
            (_, other) => return Err(TestCaseError::fail(format!("{what}: unexpected reply {other:?}"))),
        }
    }
    Ok(())
}

fn differential(algorithm: Algorithm) {
    let server = RedisServer::start();
    let mut conn = redis::Client::open(server.url()).unwrap().get_connection().unwrap();
    let shas: Vec<String> = SCRIPTS
        .iter()
        .map(|(_, source)| redis::cmd("SCRIPT").arg("LOAD").arg(*source).query(&mut conn).unwrap())
        .collect();
    let conn = std::cell::RefCell::new(conn);
    let seen = std::cell::RefCell::new(Seen::default());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (limit(algorithm), 1_700_000_000_000_000u64..4_500_000_000_000_000, ops());
    let result = runner.run(&strategy, |(limit, start, ops)| {
        run_case(
            &mut conn.borrow_mut(),
            &shas,
            &mut seen.borrow_mut(),
            limit,
            start,
            &ops,
        )
    });
    if let Err(e) = result {
        panic!("{algorithm}: the lease scripts and the pure functions differ: {e}");
    }
    let seen = seen.into_inner();
    for (what, n) in [
        ("reservations that granted units", seen.granted),
        ("reservations that granted none", seen.refused),
        ("give-backs that changed state", seen.given_back),
        ("give-backs that changed nothing", seen.not_taken),
    ] {
        assert!(n >= 20, "{algorithm}: only {n} {what} in {CASES} sequences");
    }
}

#[test]
fn gcra_lease_scripts_match_the_pure_functions() {
    differential(Algorithm::Gcra);
}

#[test]
fn fixed_window_lease_scripts_match_the_pure_functions() {
    differential(Algorithm::FixedWindow);
}

#[test]
fn sliding_window_lease_scripts_match_the_pure_functions() {
    differential(Algorithm::SlidingWindow);
}
