//! The Redis driver under real faults: a flushed script cache, a killed and restarted server, a
//! paused (SIGSTOPped) server, an unreachable one, authentication. Each against a redis-server
//! this test starts.

use bytes::Bytes;
use fleetgate_store::*;
use fleetgate_testkit::{free_port, RedisServer};
use std::time::{Duration, Instant};

fn limit() -> RateLimit {
    RateLimit::parse(Algorithm::Gcra, "1000/1h", None).unwrap()
}

fn key(id: &str) -> StoreKey {
    Keyspace::new("faults")
        .unwrap()
        .key(Concern::RateLimit, "t", id.as_bytes())
}

fn options(timeout_ms: u64) -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_millis(timeout_ms),
        ..Default::default()
    }
}

/// Calls `rate` until it succeeds, up to `limit`; returns how long recovery took.
async fn until_ok(store: &RedisStore, limit_wait: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit_wait {
        if store.rate(&key("probe"), &limit(), 1).await.is_ok() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("store did not recover within {limit_wait:?}");
}

#[tokio::test]
async fn noscript_after_script_flush_is_handled() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), options(1000)).await.unwrap();
    assert!(store.rate(&key("a"), &limit(), 1).await.unwrap().allowed);
    assert!(server.command(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    let d = store.rate(&key("a"), &limit(), 1).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 998, "state survived the script reload");
}

#[tokio::test]
async fn killed_then_restarted_empty_server_recovers_without_a_new_store() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), options(200)).await.unwrap();
    assert!(store.rate(&key("b"), &limit(), 1).await.is_ok());
    server.kill();
    let err = store.rate(&key("b"), &limit(), 1).await.unwrap_err();
    assert!(err.is_connectivity(), "{err:?}");
    assert_eq!(store.health().await, StoreHealth::Down);
    server.restart();
    until_ok(&store, Duration::from_secs(10)).await;
    assert_eq!(store.health().await, StoreHealth::Ok);
    // The restarted server is empty: scripts were reloaded and the key starts fresh.
    assert_eq!(store.rate(&key("b"), &limit(), 1).await.unwrap().remaining, 999);
}

#[tokio::test]
async fn paused_server_gives_a_timeout_error_within_the_bound() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), options(50)).await.unwrap();
    assert!(store.rate(&key("c"), &limit(), 1).await.is_ok());
    server.pause();
    let start = Instant::now();
    let err = store.rate(&key("c"), &limit(), 1).await.unwrap_err();
    let took = start.elapsed();
    server.resume();
    assert!(matches!(err, StoreError::Timeout(_)), "{err:?}");
    // Generous ratio-free bound: the timeout, not the OS, decides (shared machines are noisy).
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    until_ok(&store, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn unreachable_server_at_start_is_a_typed_error_not_a_panic() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let store = RedisStore::open(&url, options(100)).expect("opening is lazy");
    let err = store.rate(&key("d"), &limit(), 1).await.unwrap_err();
    assert!(err.is_connectivity(), "{err:?}");
    assert!(store.get(&key("d")).await.unwrap_err().is_connectivity());
    assert_eq!(store.health().await, StoreHealth::Down);
    assert!(RedisStore::connect(&url, options(100)).await.is_err());
}

#[tokio::test]
async fn pubsub_resubscribes_after_a_restart() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), options(1000)).await.unwrap();
    let mut sub = store.subscribe("faults:chan:x").await.unwrap();
    store
        .publish("faults:chan:x", Bytes::from_static(b"before"))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload, Bytes::from_static(b"before"));
    server.restart();
    until_ok(&store, Duration::from_secs(10)).await;
    // Publish until the resubscribed connection hears it (it reconnects with backoff).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no message after the restart");
        let _ = store.publish("faults:chan:x", Bytes::from_static(b"after")).await;
        match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            Ok(Some(m)) if m.payload == Bytes::from_static(b"after") => break,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn password_and_acl_user_authenticate_and_never_leak() {
    let server = RedisServer::start_with_args(&[
        "--requirepass",
        "s3cret-pw",
        "--user",
        "app",
        "on",
        ">app-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let port = server.port();
    let store = RedisStore::connect(&format!("redis://:s3cret-pw@127.0.0.1:{port}"), options(1000))
        .await
        .unwrap();
    assert!(store.rate(&key("e"), &limit(), 1).await.unwrap().allowed);
    let acl = RedisStore::connect(&format!("redis://app:app-pw@127.0.0.1:{port}"), options(1000))
        .await
        .unwrap();
    assert!(acl.rate(&key("e"), &limit(), 1).await.unwrap().allowed);
    assert_eq!(acl.redacted_url(), format!("redis://app:***@127.0.0.1:{port}"));

    let wrong = format!("redis://app:wrong-pw@127.0.0.1:{port}");
    let err = RedisStore::connect(&wrong, options(1000))
        .await
        .err()
        .expect("wrong password is refused");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Auth(_)), "{err:?}");
    assert!(!text.contains("wrong-pw"), "{text}");
    let err = Store::open("redis://app:pw-in-url@[bad", RedisOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(!err.contains("pw-in-url"), "{err}");
}

#[test]
fn unknown_store_scheme_names_what_is_accepted() {
    let err = Store::open("mongodb://user:pw@h", RedisOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("memory://") && err.contains("redis://"), "{err}");
    assert!(!err.contains(":pw@"), "{err}");
    assert!(Store::open("memory://", RedisOptions::default()).unwrap().is_memory());
}

#[tokio::test]
async fn breaker_opens_on_a_stalled_server_then_closes_when_it_returns() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), options(50)).await.unwrap();
    server.pause();
    // The first calls each wait for the timeout; then the breaker opens and calls fail fast.
    for _ in 0..3 {
        assert!(matches!(
            store.rate(&key("f"), &limit(), 1).await,
            Err(StoreError::Timeout(_))
        ));
    }
    assert!(store.breaker_open());
    let started = Instant::now();
    for _ in 0..20 {
        let err = store.rate(&key("f"), &limit(), 1).await.unwrap_err();
        if let StoreError::Unavailable(text) = &err {
            assert!(text.contains("breaker"), "{text}");
        }
    }
    // 20 calls while open cost far less than 20 timeouts (a ratio, not a wall-clock bound).
    assert!(
        started.elapsed() < Duration::from_millis(50) * 20 / 4,
        "{:?}",
        started.elapsed()
    );
    server.resume();
    until_ok(&store, Duration::from_secs(5)).await;
    assert!(!store.breaker_open());
}
