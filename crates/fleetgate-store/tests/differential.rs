//! Differential test: the Redis driver's Lua scripts against the pure functions in `algo` they
//! mirror. The same random sequences of charges and refunds (random limits, costs, time steps,
//! the clock sometimes stepping back) go through both, and every output must be equal: the
//! decision (allowed, remaining, reset-after, retry-after, the charge's time), the refund's
//! answer, the stored state, and the TTL the script gives it.
//!
//! The scripts run on a real redis-server with their test-only clock argument (an extra ARGV,
//! `now` in microseconds, that replaces `TIME`; the driver never sends it). `now` starts near
//! today's epoch in microseconds and reaches about 2112, so the scripts' Lua numbers (doubles,
//! exact to 2^53) work with values as large as real ones.
//!
//! Each step runs in one MULTI/EXEC, which freezes the server's time for the transaction: the
//! script, then reads of the state and its PTTL, then PERSIST. Without PERSIST, the server would
//! expire keys on its own (real) time, which in this test has nothing to do with the `now` the
//! scripts are given; a state that outlives its expiry is exactly as good as no state in every
//! script (a TAT in the past, an old window, log entries out of the window), as in the pure
//! functions, so keeping it changes no decision.

use fleetgate_store::algo::{fixed_window, gcra, sliding_window};
use fleetgate_store::{Algorithm, RateCharge, RateDecision, RateLimit};
use fleetgate_testkit::RedisServer;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use redis::Value;
use std::sync::atomic::{AtomicU64, Ordering};

// As the driver loads them: the shared clock prelude, then the script.
const SCRIPTS: [(&str, &str); 4] = [
    (
        "gcra",
        concat!(
            include_str!("../src/redis/scripts/now.lua"),
            include_str!("../src/redis/scripts/gcra.lua")
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
    (
        "fixed_window",
        concat!(
            include_str!("../src/redis/scripts/now.lua"),
            include_str!("../src/redis/scripts/fixed_window.lua")
        ),
    ),
    (
        "refund",
        concat!(
            include_str!("../src/redis/scripts/now.lua"),
            include_str!("../src/redis/scripts/sliding_log.lua"),
            include_str!("../src/redis/scripts/refund.lua")
        ),
    ),
];

/// Sequences per algorithm: enough to cover edge cases in a few seconds.
const CASES: u32 = 64;

#[derive(Debug, Clone)]
enum Op {
    /// Time moves by `gap` µs (back when `back`), then `cost` units are asked for, under the
    /// case's second limit when `other` (a changed config sharing the key).
    Charge {
        gap: u64,
        back: bool,
        other: bool,
        cost: u64,
    },
    /// Time moves by `gap` µs, then one outstanding charge (picked by `pick`) is refunded.
    Refund { gap: u64, pick: Index },
}

fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..3,
        3 => 0u64..5_000,
        3 => 0u64..2_000_000,
        1 => 0u64..200_000_000_000,
    ]
}

fn cost() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => 0u64..12,
        1 => Just(u64::MAX),
        1 => (1u64 << 53)..(1u64 << 60),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (gap(), prop::bool::weighted(0.05), prop::bool::weighted(0.1), cost())
            .prop_map(|(gap, back, other, cost)| Op::Charge { gap, back, other, cost }),
        1 => (gap(), any::<Index>()).prop_map(|(gap, pick)| Op::Refund { gap, pick }),
    ];
    proptest::collection::vec(op, 1..120)
}

/// Valid limits of `algorithm`, from a millisecond to about 8 years of capacity.
fn limit(algorithm: Algorithm) -> impl Strategy<Value = RateLimit> {
    let period = prop_oneof![
        (1u64..5_000).prop_map(|n| format!("{n}ms")),
        (1u64..600).prop_map(|n| format!("{n}s")),
        (1u64..48).prop_map(|n| format!("{n}h")),
        (1u64..3_000).prop_map(|n| format!("{n}d")),
    ];
    let burst = match algorithm {
        Algorithm::Gcra => (1i64..60).prop_map(Some).boxed(),
        _ => Just(None).boxed(),
    };
    (1u64..40, period, burst).prop_filter_map("limit within bounds", move |(count, period, burst)| {
        RateLimit::parse(algorithm, &format!("{count}/{period}"), burst).ok()
    })
}

/// What the pure functions hold for one key, in the shape the scripts store it.
enum Model {
    Gcra(Option<u64>),
    Fixed(Option<fixed_window::WindowCount>),
    Sliding(sliding_window::SlidingLog),
}

/// The TTL a key must have after a step (PERSIST ran after the previous one).
#[derive(Debug, Clone, Copy)]
enum Ttl {
    Set(u64),
    Gone,
    Unchanged,
}

fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(1000).max(1)
}

struct Lua {
    conn: redis::Connection,
    shas: Vec<String>,
}

impl Lua {
    fn sha(&self, name: &str) -> &str {
        let i = SCRIPTS.iter().position(|(n, _)| *n == name).unwrap();
        &self.shas[i]
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// What the sequences exercised, so that a generator that stopped producing the interesting
/// cases (refusals, refunds that change state) fails the test instead of passing vacuously.
#[derive(Default)]
struct Seen {
    admitted: u64,
    refused: u64,
    refunded: u64,
    refund_noop: u64,
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
        Value::SimpleString(s) => Some(s.clone()),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn run_case(
    lua: &mut Lua,
    seen: &mut Seen,
    limits: [RateLimit; 2],
    start: u64,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let algorithm = limits[0].algorithm();
    let key = format!("diff:{algorithm}:{{{}}}", NEXT.fetch_add(1, Ordering::Relaxed));
    let total_key = format!("{key}:n");
    let keys: Vec<&str> = match algorithm {
        Algorithm::SlidingWindow => vec![&key, &total_key],
        _ => vec![&key],
    };
    let mut model = match algorithm {
        Algorithm::Gcra => Model::Gcra(None),
        Algorithm::FixedWindow => Model::Fixed(None),
        Algorithm::SlidingWindow => Model::Sliding(Default::default()),
    };
    let mut now = start;
    // Charges not yet refunded, with the limit that made them.
    let mut outstanding: Vec<(RateCharge, RateLimit)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let mut pipe = redis::pipe();
        // The server's time before and after the script brackets the time its PX counted from.
        pipe.atomic().cmd("TIME");
        let ttl;
        // What the pure function says, and the script call that must say the same.
        let expected_reply: Vec<i64>;
        let mut charge = None;
        let limit;
        match op {
            Op::Charge { gap, back, other, cost } => {
                limit = limits[*other as usize];
                now = if *back { now.saturating_sub(*gap) } else { now + gap };
                let cost = *cost;
                let (d, t): (RateDecision, Ttl) = match &mut model {
                    Model::Gcra(tat) => {
                        let (d, s) = gcra::decide(*tat, now, &limit, cost);
                        if s.is_some() {
                            *tat = s;
                        }
                        let t = if d.charge.is_some() {
                            Ttl::Set(ceil_ms(d.reset_after.as_micros() as u64))
                        } else {
                            Ttl::Unchanged
                        };
                        (d, t)
                    }
                    Model::Fixed(state) => {
                        let (d, s, ends) = fixed_window::decide(*state, now, &limit, cost);
                        if s.is_some() {
                            *state = s;
                        }
                        let t = if d.charge.is_some() {
                            Ttl::Set(ceil_ms(ends))
                        } else {
                            Ttl::Unchanged
                        };
                        (d, t)
                    }
                    Model::Sliding(log) => {
                        let (d, reset) = sliding_window::decide(log, now, &limit, cost);
                        (d, if reset > 0 { Ttl::Set(ceil_ms(reset)) } else { Ttl::Gone })
                    }
                };
                ttl = t;
                charge = d.charge;
                if d.allowed {
                    seen.admitted += 1;
                } else {
                    seen.refused += 1;
                }
                let us = |x: std::time::Duration| x.as_micros() as i64;
                expected_reply = vec![
                    d.allowed as i64,
                    d.remaining as i64,
                    us(d.reset_after),
                    us(d.retry_after),
                ];
                let (script, args): (&str, Vec<u64>) = match algorithm {
                    Algorithm::Gcra => (
                        "gcra",
                        vec![limit.interval_us(), limit.capacity(), cost, limit.period_us(), now],
                    ),
                    Algorithm::SlidingWindow => {
                        ("sliding_window", vec![limit.period_us(), limit.capacity(), cost, now])
                    }
                    Algorithm::FixedWindow => ("fixed_window", vec![limit.period_us(), limit.capacity(), cost, now]),
                };
                pipe.cmd("EVALSHA")
                    .arg(lua.sha(script))
                    .arg(keys.len())
                    .arg(&keys)
                    .arg(args);
            }
            Op::Refund { gap, pick } => {
                now += gap;
                if outstanding.is_empty() {
                    continue;
                }
                let (c, l) = outstanding.swap_remove(pick.index(outstanding.len()));
                limit = l;
                let (changed, t) = match &mut model {
                    Model::Gcra(tat) => match gcra::refund(*tat, now, &limit, &c) {
                        Some(t) if t > now => {
                            *tat = Some(t);
                            (true, Ttl::Set(ceil_ms(t - now)))
                        }
                        Some(_) => {
                            *tat = None;
                            (true, Ttl::Gone)
                        }
                        None => (false, Ttl::Unchanged),
                    },
                    Model::Fixed(state) => match fixed_window::refund(*state, &limit, &c) {
                        Some(s) => {
                            *state = Some(s);
                            (true, Ttl::Unchanged)
                        }
                        None => (false, Ttl::Unchanged),
                    },
                    Model::Sliding(log) => (sliding_window::refund(log, &c), Ttl::Unchanged),
                };
                ttl = t;
                if changed {
                    seen.refunded += 1;
                } else {
                    seen.refund_noop += 1;
                }
                expected_reply = vec![changed as i64];
                let param = match algorithm {
                    Algorithm::Gcra => limit.interval_us(),
                    _ => limit.period_us(),
                };
                pipe.cmd("EVALSHA")
                    .arg(lua.sha("refund"))
                    .arg(keys.len())
                    .arg(&keys)
                    .arg(algorithm.as_str())
                    .arg(param)
                    .arg(c.cost)
                    .arg(c.at_us)
                    .arg(now);
            }
        }
        match algorithm {
            Algorithm::Gcra => {
                pipe.cmd("GET").arg(&key);
            }
            Algorithm::FixedWindow => {
                pipe.cmd("HMGET").arg(&key).arg("w").arg("n");
            }
            Algorithm::SlidingWindow => {
                pipe.cmd("LRANGE").arg(&key).arg(0).arg(-1);
                pipe.cmd("GET").arg(&total_key);
            }
        }
        for k in &keys {
            pipe.cmd("PEXPIRETIME").arg(*k);
        }
        pipe.cmd("TIME");
        for k in &keys {
            pipe.cmd("PERSIST").arg(*k).ignore();
        }
        let replies: Vec<Value> = pipe
            .query(&mut lua.conn)
            .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
        let what = format!("step {step} ({op:?}, now {now}, limit {limit:?})");

        // The decision (or the refund's answer).
        let server_ms = |v: &Value| -> i64 {
            let t: Vec<Option<String>> = match v {
                Value::Array(items) => items.iter().map(text).collect(),
                other => panic!("TIME reply {other:?}"),
            };
            let secs: i64 = t[0].as_deref().unwrap().parse().unwrap();
            let micros: i64 = t[1].as_deref().unwrap().parse().unwrap();
            secs * 1000 + micros / 1000
        };
        let (before, after) = (server_ms(&replies[0]), server_ms(&replies[replies.len() - 1]));
        let replies = &replies[1..replies.len() - 1];
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
        prop_assert_eq!(&reply[..expected_reply.len()], &expected_reply[..], "{}", what);
        if let Op::Charge { cost, .. } = op {
            prop_assert_eq!(reply.len(), 5, "{}", what);
            if let Some(c) = charge {
                prop_assert_eq!((c.at_us as i64, c.cost), (reply[4], *cost), "{}: receipt", what);
                outstanding.push((c, limit));
            }
            // sliding_window too: a charge is logged at its own time, in time order.
            prop_assert_eq!(reply[4], now as i64, "{}: decision time", what);
        }

        // The stored state.
        let exists = match (&model, &replies[1..]) {
            (Model::Gcra(tat), [v, ..]) => {
                prop_assert_eq!(text(v), tat.map(|t| t.to_string()), "{}: TAT", what);
                tat.is_some()
            }
            (Model::Fixed(state), [Value::Array(wn), ..]) => {
                let got: Vec<Option<String>> = wn.iter().map(text).collect();
                let want = match state {
                    Some(s) => vec![Some(s.window.to_string()), Some(s.count.to_string())],
                    None => vec![None, None],
                };
                prop_assert_eq!(got, want, "{}: window", what);
                state.is_some()
            }
            (Model::Sliding(log), [Value::Array(entries), total, ..]) => {
                let got: Vec<String> = entries.iter().map(|e| text(e).unwrap()).collect();
                let want: Vec<String> = log.entries.iter().map(|(t, c)| format!("{t}:{c}")).collect();
                prop_assert_eq!(got, want, "{}: log", what);
                let want_total = (!log.entries.is_empty()).then(|| log.total.to_string());
                prop_assert_eq!(text(total), want_total, "{}: total", what);
                !log.entries.is_empty()
            }
            (_, other) => return Err(TestCaseError::fail(format!("{what}: unexpected replies {other:?}"))),
        };

        // Every key's TTL: the state's lifetime rounded up to milliseconds, counted from the
        // server's time during the transaction (PEXPIRETIME is absolute: -1 none, -2 no key).
        let reads = if algorithm == Algorithm::SlidingWindow { 2 } else { 1 };
        for (k, v) in keys.iter().zip(&replies[1 + reads..]) {
            let got = int(v);
            match ttl {
                Ttl::Set(ms) => prop_assert!(
                    (before..=after).contains(&(got - ms as i64)),
                    "{}: {} expires at {} ms, not {} ms after a time in [{}, {}]",
                    what,
                    k,
                    got,
                    ms,
                    before,
                    after
                ),
                Ttl::Gone => prop_assert_eq!(got, -2, "{}: {} is gone", what, k),
                Ttl::Unchanged => prop_assert_eq!(got, if exists { -1 } else { -2 }, "{}: {} unchanged", what, k),
            }
        }
    }
    Ok(())
}

fn differential(algorithm: Algorithm) {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let shas = SCRIPTS
        .iter()
        .map(|(_, source)| redis::cmd("SCRIPT").arg("LOAD").arg(*source).query(&mut conn).unwrap())
        .collect();
    let lua = std::cell::RefCell::new(Lua { conn, shas });
    let seen = std::cell::RefCell::new(Seen::default());
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        limit(algorithm),
        limit(algorithm),
        1_700_000_000_000_000u64..4_500_000_000_000_000,
        ops(),
    );
    let result = runner.run(&strategy, |(a, b, start, ops)| {
        run_case(&mut lua.borrow_mut(), &mut seen.borrow_mut(), [a, b], start, &ops)
    });
    if let Err(e) = result {
        panic!("{algorithm}: the script and the pure function differ: {e}");
    }
    let seen = seen.into_inner();
    for (what, n) in [
        ("admitted charges", seen.admitted),
        ("refusals", seen.refused),
        ("refunds that changed state", seen.refunded),
        ("refunds that changed nothing", seen.refund_noop),
    ] {
        assert!(n >= 20, "{algorithm}: only {n} {what} in {CASES} sequences");
    }
}

#[test]
fn gcra_script_matches_the_pure_functions() {
    differential(Algorithm::Gcra);
}

#[test]
fn sliding_window_script_matches_the_pure_functions() {
    differential(Algorithm::SlidingWindow);
}

#[test]
fn fixed_window_script_matches_the_pure_functions() {
    differential(Algorithm::FixedWindow);
}
