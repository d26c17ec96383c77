//! Lease mode across simulated instances: K [`LeasedLimit`]s share one in-process store on a
//! [`ManualClock`]; random arrivals (random instance, cost and time step), random crashes (an
//! instance dropped without giving its units back), graceful stops (units given back) and
//! restarts. Every admitted unit is recorded at the instant it was admitted.
//!
//! * Zero overshoot: gcra, replaying the fleet's admissions in order through the pure gcra
//!   admits every one (so no interval `[t0, t1]` holds more than `burst + (t1 - t0)/interval`);
//!   fixed_window, no aligned window holds more than N; sliding_window, no window of length T
//!   holds more than N.
//! * Under-admission is bounded: when the fleet refuses a request of `cost` units in a window,
//!   the window's admissions are more than `N - cost - incarnations × max_batch`, where
//!   `incarnations` counts the instances (restarts included) alive during the window. For gcra
//!   the same holds over a run shorter than one lease and one emission interval (no lease
//!   expires and nothing refills: the burst is the budget), less the unit the first lease holds
//!   back while the bucket is full; for sliding_window over a run shorter than one lease and
//!   one window (nothing leaves the log).
//!
//! A smaller run drives instances against a real redis-server (its clock, real time).

use fleetgate_store::algo::gcra;
use fleetgate_store::lease::{LeaseError, LeaseSettings, LeasedLimit};
use fleetgate_store::*;
use fleetgate_testkit::RedisServer;
use futures_util::FutureExt;
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Event {
    /// `gap` µs pass, then instance `at` gets a request of `cost` units.
    Request { gap: u64, at: usize, cost: u64 },
    /// Instance `at` dies without giving back.
    Crash { at: usize },
    /// Instance `at` stops, giving its units back.
    Stop { at: usize },
    /// Instance `at` starts again (if down).
    Start { at: usize },
}

fn events(max_gap: u64) -> impl Strategy<Value = Vec<Event>> {
    // Bursts (small steps, the budget under pressure) and pauses.
    let gap = prop_oneof![3 => 0..(max_gap / 50).max(1), 1 => 0..max_gap];
    let event = prop_oneof![
        40 => (gap, 0usize..8, 1u64..4).prop_map(|(gap, at, cost)| Event::Request { gap, at, cost }),
        1 => (0usize..8).prop_map(|at| Event::Crash { at }),
        1 => (0usize..8).prop_map(|at| Event::Stop { at }),
        2 => (0usize..8).prop_map(|at| Event::Start { at }),
    ];
    proptest::collection::vec(event, 1..400)
}

/// What one simulated run did.
struct Run {
    /// (time, cost) of every admission, in order.
    admitted: Vec<(u64, u64)>,
    /// (time, cost) of every refusal.
    refused: Vec<(u64, u64)>,
    /// (start time, incarnation id) of every instance start; ends are not needed for an upper
    /// count of the incarnations alive in a window.
    lives: Vec<(u64, Option<u64>)>,
    start: u64,
    end: u64,
}

impl Run {
    /// Incarnations alive at some point of `[from, to)`.
    fn incarnations(&self, from: u64, to: u64) -> u64 {
        self.lives
            .iter()
            .filter(|(born, died)| *born < to && died.is_none_or(|d| d >= from))
            .count() as u64
    }
}

fn simulate(limit: RateLimit, k: usize, hint: usize, max_batch: u64, events: &[Event]) -> Run {
    let clock = ManualClock::at_wall_clock();
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let key = Keyspace::new("sim").unwrap().key(Concern::RateLimit, "lease", b"hot");
    let settings = LeaseSettings {
        max_batch,
        // The hint may be below the fleet's size (a stale count): exactness must not depend on it.
        instances: hint.clamp(1, k) as u64,
        // Deterministic: refills run in the request that needs them.
        background_refill: false,
        ..Default::default()
    };
    let make = || LeasedLimit::with_clock(limit, settings, Arc::new(clock.clone())).unwrap();
    let start = clock.now_us();
    // Each instance: its limit and its index in `lives`.
    let mut instances: Vec<Option<(LeasedLimit, usize)>> = Vec::new();
    let mut lives = Vec::new();
    for _ in 0..k {
        lives.push((start, None));
        instances.push(Some((make(), lives.len() - 1)));
    }
    let (mut admitted, mut refused) = (Vec::new(), Vec::new());
    for e in events {
        let now = clock.now_us();
        match *e {
            Event::Request { gap, at, cost } => {
                clock.advance(Duration::from_micros(gap));
                let now = clock.now_us();
                if let Some((l, _)) = &instances[at % k] {
                    let d = l
                        .decide(&store, &key, cost)
                        .now_or_never()
                        .expect("the in-process store never waits")
                        .expect("the in-process store never fails");
                    if d.allowed {
                        admitted.push((now, cost));
                    } else {
                        refused.push((now, cost));
                    }
                }
            }
            Event::Crash { at } => {
                if let Some((_, life)) = instances[at % k].take() {
                    lives[life].1 = Some(now);
                }
            }
            Event::Stop { at } => {
                if let Some((l, life)) = instances[at % k].take() {
                    l.give_back_all(&store).now_or_never().unwrap().unwrap();
                    lives[life].1 = Some(now);
                }
            }
            Event::Start { at } => {
                if instances[at % k].is_none() {
                    lives.push((now, None));
                    instances[at % k] = Some((make(), lives.len() - 1));
                }
            }
        }
    }
    Run {
        admitted,
        refused,
        lives,
        start,
        end: clock.now_us(),
    }
}

fn gcra_limit() -> impl Strategy<Value = RateLimit> {
    (1u64..100, 50u64..5_000, 1i64..100).prop_filter_map("valid", |(n, ms, burst)| {
        RateLimit::parse(Algorithm::Gcra, &format!("{n}/{ms}ms"), Some(burst)).ok()
    })
}

fn fixed_limit() -> impl Strategy<Value = RateLimit> {
    (1u64..100, 1u64..3_000).prop_filter_map("valid", |(n, ms)| {
        RateLimit::parse(Algorithm::FixedWindow, &format!("{n}/{ms}ms"), None).ok()
    })
}

fn sliding_limit() -> impl Strategy<Value = RateLimit> {
    (1u64..100, 1u64..3_000).prop_filter_map("valid", |(n, ms)| {
        RateLimit::parse(Algorithm::SlidingWindow, &format!("{n}/{ms}ms"), None).ok()
    })
}

/// No half-open window of the limit's length holds more than N admitted units.
fn assert_sliding_conforms(limit: &RateLimit, run: &Run) -> Result<(), TestCaseError> {
    let window = limit.period_us();
    let (mut j, mut in_window) = (0, 0);
    for i in 0..run.admitted.len() {
        let from = run.admitted[i].0;
        while j < run.admitted.len() && run.admitted[j].0 < from + window {
            in_window += run.admitted[j].1;
            j += 1;
        }
        prop_assert!(
            in_window <= limit.capacity(),
            "{} admitted in the window from +{} us of {:?}",
            in_window,
            from - run.start,
            limit
        );
        in_window -= run.admitted[i].1;
    }
    Ok(())
}

/// The fleet's admissions, replayed through the pure gcra, are all admitted.
fn assert_gcra_conforms(limit: &RateLimit, run: &Run) -> Result<(), TestCaseError> {
    let mut tat = None;
    for (i, &(t, c)) in run.admitted.iter().enumerate() {
        let (d, s) = gcra::decide(tat, t, limit, c);
        prop_assert!(
            d.allowed,
            "admission {} ({} units at +{} us) overshoots {:?}",
            i,
            c,
            t - run.start,
            limit
        );
        tat = s.or(tat);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// gcra: zero overshoot over any interval, whatever the arrivals, crashes and restarts.
    #[test]
    fn gcra_fleet_never_overshoots(
        limit in gcra_limit(), k in 1usize..7, hint in 1usize..7, max_batch in 1u64..40, events in events(50_000),
    ) {
        let run = simulate(limit, k, hint, max_batch, &events);
        assert_gcra_conforms(&limit, &run)?;
    }

    /// gcra over a run shorter than one lease and one emission interval: the burst is the
    /// whole budget; a refusal comes only once all but the incarnations' batches are spent.
    #[test]
    fn gcra_fleet_under_admission_is_bounded(
        n in 1u64..50, burst in 1i64..300, k in 1usize..7, hint in 1usize..7, max_batch in 1u64..40, events in events(2_000),
    ) {
        let limit = RateLimit::parse(Algorithm::Gcra, &format!("{n}/1h"), Some(burst)).unwrap();
        let run = simulate(limit, k, hint, max_batch, &events);
        assert_gcra_conforms(&limit, &run)?;
        prop_assume!(run.end - run.start < 1_000_000);
        let admitted: u64 = run.admitted.iter().map(|a| a.1).sum();
        prop_assert!(admitted <= limit.capacity());
        if let Some(&(t, cost)) = run.refused.first() {
            let before: u64 = run.admitted.iter().filter(|a| a.0 <= t).map(|a| a.1).sum();
            let slack = cost + run.incarnations(run.start, t + 1) * max_batch + 2;
            prop_assert!(
                before + slack > limit.capacity(),
                "refused {} units with {} of {} admitted and {} incarnations of batch {}",
                cost, before, limit.capacity(), run.incarnations(run.start, t + 1), max_batch
            );
        }
    }

    /// fixed_window: never more than N in an aligned window; a refusal in a window comes only
    /// once all but the incarnations' batches of it are spent.
    #[test]
    fn fixed_window_fleet_never_overshoots_and_under_admits_boundedly(
        limit in fixed_limit(), k in 1usize..7, hint in 1usize..7, max_batch in 1u64..40, events in events(50_000),
    ) {
        let run = simulate(limit, k, hint, max_batch, &events);
        let period = limit.period_us();
        let mut per_window: HashMap<u64, u64> = HashMap::new();
        for &(t, c) in &run.admitted {
            *per_window.entry(t / period).or_default() += c;
        }
        for (w, n) in &per_window {
            prop_assert!(*n <= limit.capacity(), "window {} admitted {} of {}", w, n, limit.capacity());
        }
        for &(t, cost) in &run.refused {
            let w = t / period;
            let admitted = per_window.get(&w).copied().unwrap_or(0);
            let lives = run.incarnations(w * period, (w + 1) * period);
            prop_assert!(
                admitted + cost + lives * max_batch > limit.capacity(),
                "window {} refused {} units with {} of {} admitted, {} incarnations of batch {}",
                w, cost, admitted, limit.capacity(), lives, max_batch
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// sliding_window: never more than N in any window of length T, whatever the arrivals,
    /// crashes and restarts (reservations are logged at their lease's end).
    #[test]
    fn sliding_window_fleet_never_overshoots(
        limit in sliding_limit(), k in 1usize..7, hint in 1usize..7, max_batch in 1u64..40, events in events(50_000),
    ) {
        let run = simulate(limit, k, hint, max_batch, &events);
        assert_sliding_conforms(&limit, &run)?;
    }

    /// sliding_window over a run shorter than one lease and one window: no entry leaves the
    /// log and no lease expires, so the log holds every unit admitted or still held; a refusal
    /// comes only once all but the incarnations' batches are spent.
    #[test]
    fn sliding_window_fleet_under_admission_is_bounded(
        n in 1u64..300, k in 1usize..7, hint in 1usize..7, max_batch in 1u64..40, events in events(2_000),
    ) {
        let limit = RateLimit::parse(Algorithm::SlidingWindow, &format!("{n}/1h"), None).unwrap();
        let run = simulate(limit, k, hint, max_batch, &events);
        assert_sliding_conforms(&limit, &run)?;
        prop_assume!(run.end - run.start < 1_000_000);
        let admitted: u64 = run.admitted.iter().map(|a| a.1).sum();
        prop_assert!(admitted <= limit.capacity());
        if let Some(&(t, cost)) = run.refused.first() {
            let before: u64 = run.admitted.iter().filter(|a| a.0 <= t).map(|a| a.1).sum();
            let slack = cost + run.incarnations(run.start, t + 1) * max_batch;
            prop_assert!(
                before + slack > limit.capacity(),
                "refused {} units with {} of {} admitted and {} incarnations of batch {}",
                cost, before, limit.capacity(), run.incarnations(run.start, t + 1), max_batch
            );
        }
    }
}

#[test]
fn bad_lease_settings_are_typed_errors() {
    let gcra = RateLimit::gcra("10/1s").unwrap();
    let zero = LeaseSettings {
        max_batch: 0,
        ..Default::default()
    };
    assert_eq!(LeasedLimit::new(gcra, zero).unwrap_err(), LeaseError::ZeroBatch);
    let nobody = LeaseSettings {
        instances: 0,
        ..Default::default()
    };
    assert_eq!(LeasedLimit::new(gcra, nobody).unwrap_err(), LeaseError::ZeroInstances);
    let short = LeaseSettings {
        max_lease: Some(Duration::from_micros(999)),
        ..Default::default()
    };
    assert!(matches!(
        LeasedLimit::new(gcra, short),
        Err(LeaseError::LeaseTooShort(_))
    ));
    // Every algorithm leases; sliding_window's lease is capped at a quarter of the window.
    let sliding = RateLimit::parse(Algorithm::SlidingWindow, "10/1s", None).unwrap();
    let l = LeasedLimit::new(sliding, LeaseSettings::default()).unwrap();
    assert_eq!(l.lease(), Duration::from_millis(250));
    assert!(LeaseError::ZeroBatch.to_string().contains(">= 1"));
}

/// A busy key is decided mostly without the store; the batch follows the rate and an idle key's
/// batch stays small; stopping gives the unspent units back.
#[test]
fn busy_keys_spend_locally_and_idle_keys_hold_little() {
    let clock = ManualClock::at_wall_clock();
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let ks = Keyspace::new("unit").unwrap();
    let limit = RateLimit::parse(Algorithm::Gcra, "100000/1s", None).unwrap();
    let settings = LeaseSettings {
        max_batch: 500,
        background_refill: false,
        ..Default::default()
    };
    let l = LeasedLimit::with_clock(limit, settings, Arc::new(clock.clone())).unwrap();
    let busy = ks.key(Concern::RateLimit, "lease", b"busy");
    // 20,000 requests at 10,000/s: one every 100 µs.
    for _ in 0..20_000 {
        clock.advance(Duration::from_micros(100));
        let d = l.decide(&store, &busy, 1).now_or_never().unwrap().unwrap();
        assert!(d.allowed);
    }
    let s = l.stats();
    assert_eq!(s.spent_local + s.exact_admitted, 20_000);
    assert!(
        s.reservations * 50 < 20_000,
        "{s:?}: more than one store call per 50 decisions"
    );
    let held = l.held();
    assert!(held > 0 && held <= 500, "the busy key holds {held} units");
    let returned = l.give_back_all(&store).now_or_never().unwrap().unwrap();
    assert!(returned > 0 && returned <= held, "returned {returned} of {held}");
    // After the stop, decisions are exact.
    let before = l.stats().exact_calls;
    assert!(l.decide(&store, &busy, 1).now_or_never().unwrap().unwrap().allowed);
    assert_eq!(l.stats().exact_calls, before + 1);

    // An idle key (one request a second, the lease is 250 ms) is leased one unit at a time,
    // with no refill ahead whose units would expire unspent.
    let l = LeasedLimit::with_clock(limit, settings, Arc::new(clock.clone())).unwrap();
    let idle = ks.key(Concern::RateLimit, "lease", b"idle");
    for _ in 0..5 {
        clock.advance(Duration::from_secs(1));
        assert!(l.decide(&store, &idle, 1).now_or_never().unwrap().unwrap().allowed);
        assert_eq!(l.held(), 0, "the idle key sits on budget");
    }
    let s = l.stats();
    assert_eq!(
        (s.reservations, s.reserved, s.spent_local, s.expired),
        (5, 5, 5, 0),
        "{s:?}"
    );
}

/// A hammered key at the end of its budget: the limit switches to exact decisions, so the last
/// units are admitted and refusals carry the store's retry-after.
#[test]
fn nearly_spent_budget_decides_exactly() {
    let clock = ManualClock::at_wall_clock();
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let key = StoreKey::raw("unit:hammer");
    let limit = RateLimit::parse(Algorithm::FixedWindow, "100/1h", None).unwrap();
    let settings = LeaseSettings {
        max_batch: 10,
        instances: 3,
        background_refill: false,
        ..Default::default()
    };
    let fleet: Vec<LeasedLimit> = (0..3)
        .map(|_| LeasedLimit::with_clock(limit, settings, Arc::new(clock.clone())).unwrap())
        .collect();
    let mut admitted = 0;
    let mut refusal = None;
    for i in 0..300 {
        clock.advance(Duration::from_micros(50));
        let d = fleet[i % 3].decide(&store, &key, 1).now_or_never().unwrap().unwrap();
        if d.allowed {
            admitted += 1;
        } else {
            refusal.get_or_insert(d);
        }
    }
    let held: u64 = fleet.iter().map(|l| l.held()).sum();
    // Every unit is either admitted or held by an instance (which spends it next).
    assert_eq!(admitted + held, 100, "admitted {admitted}, held {held}");
    assert!(held <= 3 * 10);
    let refusal = refusal.expect("the budget ran out");
    assert!(
        refusal.retry_after > Duration::ZERO && refusal.remaining == 0,
        "{refusal:?}"
    );
    let exact: u64 = fleet.iter().map(|l| l.stats().exact_calls).sum();
    assert!(exact > 0, "the nearly spent budget was decided exactly");
}

// ---------------------------------------------------------------------------------------------
// Against a real redis-server: the server's clock, real time.

fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::open(
        &server.url(),
        RedisOptions {
            timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .unwrap()
}

/// K instances (separate connections) hammer one gcra key whose refill is negligible over the
/// run, with crashes and restarts: never more than the burst (plus what the run's length
/// refilled), and the budget is spent down to the incarnations' batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fleet_never_overshoots() {
    let server = RedisServer::start();
    let limit = RateLimit::parse(Algorithm::Gcra, "300/1h", None).unwrap();
    let key = Keyspace::new("fleet").unwrap().key(Concern::RateLimit, "lease", b"hot");
    let (k, max_batch) = (4usize, 16u64);
    let settings = LeaseSettings {
        max_batch,
        instances: k as u64,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let mut incarnations = 0u64;
    let mut admitted = 0u64;
    let mut refused_after = None;
    for round in 0..6u64 {
        // Each round: K fresh instances (the previous ones crashed: dropped without giving back,
        // except the first of each round, which stops and gives back).
        let fleet: Vec<(RedisStore, LeasedLimit)> = (0..k)
            .map(|_| (redis_store(&server), LeasedLimit::new(limit, settings).unwrap()))
            .collect();
        incarnations += k as u64;
        let tasks: Vec<_> = fleet
            .iter()
            .enumerate()
            .map(|(i, (store, l))| {
                let (store, l, key) = (store.clone(), l.clone(), key.clone());
                tokio::spawn(async move {
                    let (mut ok, mut no) = (0u64, 0u64);
                    for j in 0..(40 + 10 * i as u64 + round) {
                        let cost = 1 + (j % 3 == 0) as u64;
                        let d = l.decide(&store, &key, cost).await.expect("store answers");
                        if d.allowed {
                            ok += cost;
                        } else {
                            no += 1;
                        }
                    }
                    (ok, no)
                })
            })
            .collect();
        for t in tasks {
            let (ok, no) = t.await.unwrap();
            admitted += ok;
            if no > 0 && refused_after.is_none() {
                refused_after = Some(admitted);
            }
        }
        let (store, first) = &fleet[0];
        first.give_back_all(store).await.unwrap();
    }
    let elapsed = started.elapsed().as_micros() as u64 + 1_000_000;
    let bound = limit.capacity() + elapsed / limit.interval_us();
    assert!(admitted <= bound, "admitted {admitted} > {bound}");
    // 6 rounds of K instances asking for ~2,000 units: the budget ran out, and by then all but
    // the incarnations' batches were spent.
    assert!(refused_after.is_some(), "the budget never ran out");
    let floor = limit.capacity().saturating_sub(incarnations * max_batch + 2);
    assert!(admitted >= floor, "admitted {admitted} < {floor}");
}

/// Redis restarts empty while leases are out: the fleet admits at most one budget after the
/// restart plus what it had leased before it (measured and printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_leases_out_admits_at_most_one_budget_plus_the_leased() {
    let mut server = RedisServer::start();
    let limit = RateLimit::parse(Algorithm::Gcra, "200/1h", None).unwrap();
    let key = Keyspace::new("restart")
        .unwrap()
        .key(Concern::RateLimit, "lease", b"hot");
    let (k, max_batch) = (4usize, 25u64);
    let settings = LeaseSettings {
        max_batch,
        instances: k as u64,
        // Leases outlast the restart (the default gcra lease is 1 s).
        max_lease: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let fleet: Vec<(RedisStore, LeasedLimit)> = (0..k)
        .map(|_| (redis_store(&server), LeasedLimit::new(limit, settings).unwrap()))
        .collect();
    // Warm the batches up: 120 units through the fleet.
    let mut before = 0;
    for i in 0..120 {
        let (store, l) = &fleet[i % k];
        if l.decide(store, &key, 1).await.unwrap().allowed {
            before += 1;
        }
    }
    let leased: u64 = fleet.iter().map(|(_, l)| l.held()).sum();
    server.restart();
    // After the restart: every instance asks until it is refused (bounded), retrying the
    // store errors of the reconnection.
    let started = std::time::Instant::now();
    let mut after = 0u64;
    let mut errors = 0u64;
    for (store, l) in &fleet {
        let mut refused = 0;
        for _ in 0..2_000 {
            match l.decide(store, &key, 1).await {
                Ok(d) if d.allowed => after += 1,
                Ok(_) => {
                    refused += 1;
                    if refused >= 3 {
                        break;
                    }
                }
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    let refill = (started.elapsed().as_micros() as u64 + 1_000_000) / limit.interval_us();

    let bound = limit.capacity() + refill + leased;
    eprintln!(
        "redis restart with leases out: {before} admitted before, {leased} leased at the restart, \
         {after} admitted after (bound {bound} = budget {} + refill {refill} + leased {leased}), \
         {errors} store errors while reconnecting",
        limit.capacity()
    );
    assert!(leased > 0, "no lease was out at the restart");
    assert!(after <= bound, "admitted {after} after the restart > {bound}");
    // The fleet did get the new budget (less the batches the instances still hold).
    assert!(
        after + (k as u64) * max_batch >= limit.capacity(),
        "admitted only {after} after the restart"
    );
}

/// Store down: the limit spends what it has already leased, then returns the store's error (for
/// the caller's `on_store_error` policy) instead of guessing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_down_spends_what_is_leased_then_reports_the_error() {
    let mut server = RedisServer::start();
    let store = RedisStore::open(
        &server.url(),
        RedisOptions {
            timeout: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .unwrap();
    // gcra with a long lease: nothing expires during the test (a fixed window could end in it).
    let limit = RateLimit::parse(Algorithm::Gcra, "1000/1h", None).unwrap();
    let key = Keyspace::new("down").unwrap().key(Concern::RateLimit, "lease", b"hot");
    let settings = LeaseSettings {
        max_batch: 50,
        max_lease: Some(Duration::from_secs(60)),
        background_refill: false,
        ..Default::default()
    };
    let l = LeasedLimit::new(limit, settings).unwrap();
    // Enough traffic for the batch to grow past one unit.
    for _ in 0..200 {
        assert!(l.decide(&store, &key, 1).await.unwrap().allowed);
    }
    let held = l.held();
    assert!(held > 0, "nothing leased");
    server.kill();
    let mut local = 0;
    let mut error = None;
    for _ in 0..(held + 5) {
        match l.decide(&store, &key, 1).await {
            Ok(d) => {
                assert!(d.allowed);
                local += 1;
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    // Every leased unit was spent (the refills ahead failed against the dead server, quietly),
    // and then the store's error came back.
    assert_eq!(local, held, "spent {local} of the {held} leased before the error");
    let error = error.expect("a dead store is reported once the leased units are gone");
    assert!(error.is_connectivity(), "{error:?}");
}
