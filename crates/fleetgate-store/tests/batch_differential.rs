//! Differential test of the hot-key batch scripts (`*_batch.lua`, `store.rate_batch_max`):
//! a batch of decisions on one key in one call must answer, and leave behind, exactly what the
//! single-decision script does for the same costs called back to back at the same instant.
//! gcra and fixed_window batches answer with the instant and the state they started from, and
//! the driver derives each decision with the pure function (`decide_many`): the test does the
//! same, so what it compares is what the driver returns.
//! Random limits, random batches of costs (refusals and huge costs included), time moving on
//! between batches; key A takes each batch in one call, key B the same costs one call each.
//! Every reply, the stored state (DUMP) and its TTL must be equal.
//!
//! The scripts run on a real redis-server with their test-only clock argument. Each step runs
//! in one MULTI/EXEC, which freezes the server's time for the transaction: both keys' calls,
//! their DUMPs and PTTLs, then PERSIST (the test's clock has nothing to do with the server's,
//! on which keys would otherwise expire; see tests/differential.rs).

use fleetgate_store::algo::{fixed_window, gcra};
use fleetgate_store::{Algorithm, RateDecision, RateLimit};
use fleetgate_testkit::RedisServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use redis::Value;
use std::sync::atomic::{AtomicU64, Ordering};

const NOW: &str = include_str!("../src/redis/scripts/now.lua");
const LOG: &str = include_str!("../src/redis/scripts/sliding_log.lua");

/// The single and the batch script of `algorithm`, assembled as the driver's scripts.rs does.
fn scripts(algorithm: Algorithm) -> (String, String) {
    let src =
        |f: &str| std::fs::read_to_string(format!("{}/src/redis/scripts/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    match algorithm {
        Algorithm::Gcra => (
            format!("{NOW}{}", src("gcra.lua")),
            format!("{NOW}{}", src("gcra_batch.lua")),
        ),
        Algorithm::FixedWindow => (
            format!("{NOW}{}", src("fixed_window.lua")),
            format!("{NOW}{}", src("fixed_window_batch.lua")),
        ),
        Algorithm::SlidingWindow => (
            format!("{NOW}{LOG}{}", src("sliding_window.lua")),
            format!(
                "{NOW}{LOG}local function decide_one(ARGV)\n{}end\n{}",
                src("sliding_window.lua"),
                src("sliding_window_batch.lua")
            ),
        ),
    }
}

const CASES: u32 = 48;

fn cost() -> impl Strategy<Value = u64> {
    prop_oneof![
        20 => 0u64..8,
        1 => Just(u64::MAX),
        1 => (1u64 << 53)..(1u64 << 60),
    ]
}

fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..3,
        3 => 0u64..50_000,
        2 => 0u64..5_000_000,
    ]
}

/// Steps: a time gap, then one batch of 1 to 12 costs.
fn steps() -> impl Strategy<Value = Vec<(u64, Vec<u64>)>> {
    proptest::collection::vec((gap(), proptest::collection::vec(cost(), 1..12)), 1..40)
}

fn limit(algorithm: Algorithm) -> impl Strategy<Value = RateLimit> {
    let period = prop_oneof![
        (1u64..5_000).prop_map(|n| format!("{n}ms")),
        (1u64..600).prop_map(|n| format!("{n}s")),
        (1u64..48).prop_map(|n| format!("{n}h")),
    ];
    let burst = match algorithm {
        Algorithm::Gcra => (1i64..30).prop_map(Some).boxed(),
        _ => Just(None).boxed(),
    };
    (1u64..30, period, burst).prop_filter_map("limit within bounds", move |(count, period, burst)| {
        RateLimit::parse(algorithm, &format!("{count}/{period}"), burst).ok()
    })
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

/// The single call's arguments (its clock last) and the batch's shared ones, as the driver
/// sends them (`rate_one` and `rate_many`).
fn single_args(limit: &RateLimit, cost: u64, now: u64) -> Vec<u64> {
    match limit.algorithm() {
        Algorithm::Gcra => vec![limit.interval_us(), limit.capacity(), cost, limit.period_us(), now],
        _ => vec![limit.period_us(), limit.capacity(), cost, now],
    }
}

fn batch_shared(limit: &RateLimit) -> Vec<u64> {
    match limit.algorithm() {
        Algorithm::Gcra => vec![limit.interval_us(), limit.capacity(), limit.period_us()],
        _ => vec![limit.period_us(), limit.capacity()],
    }
}

/// A decision as the single script writes it: "allowed remaining reset_us retry_us now_us".
fn reply_of(d: &RateDecision, now: u64) -> String {
    format!(
        "{} {} {} {} {now}",
        d.allowed as u8,
        d.remaining,
        d.reset_after.as_micros(),
        d.retry_after.as_micros()
    )
}

struct Seen {
    admitted: u64,
    refused: u64,
    batches_mixed: u64,
}

fn run_case(
    conn: &mut redis::Connection,
    shas: &(String, String),
    seen: &mut Seen,
    limit: &RateLimit,
    start: u64,
    steps: &[(u64, Vec<u64>)],
) -> Result<(), TestCaseError> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (a, b) = (format!("{{a{n}}}"), format!("{{b{n}}}"));
    let keys = |k: &str| -> Vec<String> {
        match limit.algorithm() {
            Algorithm::SlidingWindow => vec![k.to_string(), format!("{k}:n")],
            _ => vec![k.to_string()],
        }
    };
    let (ka, kb) = (keys(&a), keys(&b));
    let mut now = start;
    for (gap, costs) in steps {
        now += gap;
        let mut pipe = redis::pipe();
        pipe.atomic();
        // The server's clock before and after (it moves between a transaction's commands).
        pipe.cmd("TIME");
        let mut batch = redis::cmd("EVALSHA");
        batch
            .arg(&shas.1)
            .arg(ka.len())
            .arg(&ka)
            .arg(batch_shared(limit))
            .arg(now)
            .arg(costs);
        pipe.add_command(batch);
        // Each key's state read right after its own writes (see the TTL comparison below).
        for k in &ka {
            pipe.cmd("DUMP").arg(k).cmd("PTTL").arg(k);
        }
        for &cost in costs {
            let mut one = redis::cmd("EVALSHA");
            one.arg(&shas.0)
                .arg(kb.len())
                .arg(&kb)
                .arg(single_args(limit, cost, now));
            pipe.add_command(one);
        }
        for k in &kb {
            pipe.cmd("DUMP").arg(k).cmd("PTTL").arg(k);
        }
        pipe.cmd("TIME");
        for k in ka.iter().chain(&kb) {
            pipe.cmd("PERSIST").arg(k).ignore();
        }
        let all: Vec<Value> = pipe.query(conn).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let server_us = |v: &Value| -> i64 {
            let t: Vec<String> = redis::from_redis_value(v.clone()).unwrap();
            t[0].parse::<i64>().unwrap() * 1_000_000 + t[1].parse::<i64>().unwrap()
        };
        // Whole milliseconds the server's clock moved during the step, plus one for rounding.
        let drift_ms = (server_us(&all[all.len() - 1]) - server_us(&all[0])) / 1000 + 1;
        let replies = &all[1..all.len() - 1];
        let batched = match limit.algorithm() {
            Algorithm::SlidingWindow => text(&replies[0]),
            algorithm => {
                let reply = text(&replies[0]);
                let nums: Vec<u64> = reply.split(' ').map(|n| n.parse().unwrap()).collect();
                prop_assert_eq!(nums.len(), 2, "{}", reply);
                let (at, state) = (nums[0], nums[1]);
                prop_assert_eq!(at, now);
                let decisions = match algorithm {
                    Algorithm::Gcra => gcra::decide_many(Some(state), at, limit, costs),
                    _ => fixed_window::decide_many(
                        Some(fixed_window::WindowCount {
                            window: at / limit.period_us(),
                            count: state,
                        }),
                        at,
                        limit,
                        costs,
                    ),
                };
                decisions.iter().map(|d| reply_of(d, at)).collect::<Vec<_>>().join(" ")
            }
        };
        let state_a = &replies[1..1 + 2 * ka.len()];
        let singles: Vec<String> = replies[1 + 2 * ka.len()..1 + 2 * ka.len() + costs.len()]
            .iter()
            .map(text)
            .collect();
        let state_b = &replies[1 + 2 * ka.len() + costs.len()..];
        prop_assert_eq!(&batched, &singles.join(" "), "costs {:?} at {}", costs, now);
        let allowed: Vec<bool> = singles.iter().map(|r| r.starts_with("1 ")).collect();
        seen.admitted += allowed.iter().filter(|a| **a).count() as u64;
        seen.refused += allowed.iter().filter(|a| !**a).count() as u64;
        if allowed.iter().any(|a| *a) && allowed.iter().any(|a| !*a) {
            seen.batches_mixed += 1;
        }
        // DUMP and PTTL of each key. The TTLs may differ by as much as the server's clock moved
        // during the step (both keys' expiries are set from it, at different commands), never
        // more.
        for (x, y) in state_a.chunks(2).zip(state_b.chunks(2)) {
            prop_assert_eq!(&x[0], &y[0], "state after costs {:?} at {}", costs, now);
            let ttl = |v: &Value| match v {
                Value::Int(n) => *n,
                other => panic!("PTTL answered {other:?}"),
            };
            let (ta, tb) = (ttl(&x[1]), ttl(&y[1]));
            prop_assert!(
                (ta - tb).abs() <= drift_ms && (ta < 0) == (tb < 0),
                "TTL {} (batch) against {} (one by one), the clock moved {} ms, after costs {:?} at {}",
                ta,
                tb,
                drift_ms,
                costs,
                now
            );
        }
    }
    Ok(())
}

fn differential(algorithm: Algorithm) {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let (single, batch) = scripts(algorithm);
    let load = |conn: &mut redis::Connection, s: &str| -> String {
        redis::cmd("SCRIPT").arg("LOAD").arg(s).query(conn).unwrap()
    };
    let shas = (load(&mut conn, &single), load(&mut conn, &batch));
    let conn = std::cell::RefCell::new(conn);
    let seen = std::cell::RefCell::new(Seen {
        admitted: 0,
        refused: 0,
        batches_mixed: 0,
    });
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        limit(algorithm),
        1_700_000_000_000_000u64..4_500_000_000_000_000,
        steps(),
    );
    let result = runner.run(&strategy, |(limit, start, steps)| {
        run_case(
            &mut conn.borrow_mut(),
            &shas,
            &mut seen.borrow_mut(),
            &limit,
            start,
            &steps,
        )
    });
    if let Err(e) = result {
        panic!("{algorithm}: the batch script and the single one differ: {e}");
    }
    let seen = seen.into_inner();
    for (what, n) in [
        ("admitted decisions", seen.admitted),
        ("refusals", seen.refused),
        ("batches both admitting and refusing", seen.batches_mixed),
    ] {
        assert!(n >= 20, "{algorithm}: only {n} {what} in {CASES} sequences");
    }
}

#[test]
fn gcra_batch_answers_as_the_single_script_called_back_to_back() {
    differential(Algorithm::Gcra);
}

#[test]
fn fixed_window_batch_answers_as_the_single_script_called_back_to_back() {
    differential(Algorithm::FixedWindow);
}

#[test]
fn sliding_window_batch_answers_as_the_single_script_called_back_to_back() {
    differential(Algorithm::SlidingWindow);
}
