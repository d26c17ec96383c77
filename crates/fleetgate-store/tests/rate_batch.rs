//! Hot-key batching (`store.rate_batch_max`) through the Redis driver, on a redis-server this
//! test starts: concurrent decisions on one key are exact (the limit admits exactly its
//! capacity, every remaining count is given once), they go in fewer calls than decisions when
//! batching is on and in one call each when it is off, and a paused server fails every queued
//! decision within the bound, after which the key works again.

use fleetgate_store::*;
use fleetgate_testkit::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn key(id: &str) -> StoreKey {
    Keyspace::new("batch")
        .unwrap()
        .key(Concern::RateLimit, "t", id.as_bytes())
}

fn options(timeout_ms: u64, batch: usize) -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_millis(timeout_ms),
        rate_batch_max: batch,
        ..Default::default()
    }
}

/// `n` decisions of cost 1 on one key, all started at once; the decisions and the EVALSHA
/// calls they took.
async fn hammer(
    server: &RedisServer,
    store: &RedisStore,
    id: &str,
    limit: RateLimit,
    n: usize,
) -> (Vec<RateDecision>, u64) {
    let before = server.command_calls("evalsha");
    let store = Arc::new(store.clone());
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            let key = key(id);
            tokio::spawn(async move { store.rate(&key, &limit, 1).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().expect("every decision is answered"));
    }
    (out, server.command_calls("evalsha") - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_on_one_key_are_exact_and_share_calls() {
    let server = RedisServer::start();
    for algorithm in [Algorithm::Gcra, Algorithm::FixedWindow, Algorithm::SlidingWindow] {
        let limit = RateLimit::parse(algorithm, "150/1h", None).unwrap();
        let store = RedisStore::connect(&server.url(), options(2000, 64)).await.unwrap();
        let id = format!("hot-{algorithm}");
        let (decisions, calls) = hammer(&server, &store, &id, limit, 400).await;
        let allowed: Vec<&RateDecision> = decisions.iter().filter(|d| d.allowed).collect();
        assert_eq!(allowed.len(), 150, "{algorithm}: exactly the capacity is admitted");
        // Every count from 149 down to 0 is handed out once: no two decisions saw one state.
        let mut remaining: Vec<u64> = allowed.iter().map(|d| d.remaining).collect();
        remaining.sort_unstable();
        assert_eq!(remaining, (0..150).collect::<Vec<u64>>(), "{algorithm}");
        assert!(
            decisions
                .iter()
                .filter(|d| !d.allowed)
                .all(|d| d.remaining == 0 && !d.retry_after.is_zero()),
            "{algorithm}: refusals say when to come back"
        );
        assert!(
            calls < 400,
            "{algorithm}: 400 concurrent decisions on one key took {calls} calls (no batch formed)"
        );
        // And the key's state is what 150 admissions leave: one more is refused.
        assert!(!store.rate(&key(&id), &limit, 1).await.unwrap().allowed, "{algorithm}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_batching_off_every_decision_is_its_own_call() {
    let server = RedisServer::start();
    let limit = RateLimit::parse(Algorithm::Gcra, "150/1h", None).unwrap();
    let store = RedisStore::connect(&server.url(), options(2000, 1)).await.unwrap();
    let (decisions, calls) = hammer(&server, &store, "off", limit, 300).await;
    assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 150);
    assert_eq!(calls, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_fails_every_queued_decision_in_time_and_the_key_recovers() {
    let server = RedisServer::start();
    let limit = RateLimit::parse(Algorithm::Gcra, "1000/1h", None).unwrap();
    let store = Arc::new(RedisStore::connect(&server.url(), options(100, 64)).await.unwrap());
    assert!(store.rate(&key("p"), &limit, 1).await.unwrap().allowed);
    server.pause();
    let start = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.rate(&key("p"), &limit, 1).await })
        })
        .collect();
    let mut errors = 0;
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("a queued decision never hangs")
            .unwrap();
        errors += r.is_err() as usize;
    }
    let took = start.elapsed();
    server.resume();
    assert_eq!(errors, 50, "every decision during the pause failed (none was invented)");
    // A lead's call, then its queue's: at most two timeouts, with room for a noisy machine.
    assert!(took < Duration::from_millis(2000), "took {took:?}");
    // The key is free again: decisions go through once the server answers (the breaker may
    // refuse for a moment after the failures).
    let deadline = Instant::now() + Duration::from_secs(10);
    let d = loop {
        match store.rate(&key("p"), &limit, 1).await {
            Ok(d) => break d,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("the key never recovered: {e:?}"),
        }
    };
    assert!(d.allowed);
    assert!(d.remaining <= 998, "the decision before the pause is still counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lead_hands_its_queue_on() {
    let server = RedisServer::start();
    let limit = RateLimit::parse(Algorithm::Gcra, "1000/1h", None).unwrap();
    let store = Arc::new(RedisStore::connect(&server.url(), options(2000, 64)).await.unwrap());
    assert!(store.rate(&key("d"), &limit, 1).await.unwrap().allowed);
    // Pause so the lead's call hangs, queue waiters behind it, then drop the lead.
    server.pause();
    let lead = {
        let store = store.clone();
        tokio::spawn(async move { store.rate(&key("d"), &limit, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.rate(&key("d"), &limit, 1).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    lead.abort();
    server.resume();
    for w in waiters {
        let d = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("the queue was handed on, not left waiting")
            .unwrap()
            .expect("the waiters' batch was sent");
        assert!(d.allowed);
    }
}
