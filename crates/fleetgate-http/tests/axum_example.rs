//! The axum example (`examples/axum_limits.rs`) as two instances of one service on a real
//! Redis: its limits hold for the fleet, and it keeps answering when Redis goes away.

#[allow(dead_code)]
#[path = "../../../examples/axum_limits.rs"]
mod example;

use fleetgate_store::{RedisOptions, Store};
use fleetgate_testkit::RedisServer;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts one instance of the example on a free loopback port.
async fn instance(redis_url: &str, name: &str) -> SocketAddr {
    let store = Store::open(redis_url, RedisOptions::default()).unwrap();
    store.warm_up().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example::app(store, name).unwrap();
    tokio::spawn(example::serve(listener, app));
    addr
}

/// One HTTP/1.1 GET; the status and the raw head.
async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let key = key.map(|k| format!("x-api-key: {k}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nhost: example\r\n{key}connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the example answers within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_shares_its_limits_across_instances_on_redis() {
    let mut redis = RedisServer::start();
    let (a, b) = (
        instance(&redis.url(), "example-a").await,
        instance(&redis.url(), "example-b").await,
    );

    // 5 a minute per key for the fleet: 10 requests alternating between the instances get
    // exactly 5 through.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let (status, head) = get(if i % 2 == 0 { a } else { b }, "/api/hello", Some("k1")).await;
        assert!(head.contains("ratelimit-policy: \"per-key\";q=5;w=60"), "{head}");
        if status == 429 {
            assert!(head.contains("retry-after:"), "{head}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "{statuses:?}");
    // The decisions were made in Redis, under the example's key prefix.
    let keys = redis.command(&["KEYS", "axum-example:rate:*"]);
    assert!(keys.contains("axum-example:rate:route/api/per-key/gcra:"), "{keys}");
    // Another key has its own budget; an unlimited route has no RateLimit headers.
    assert_eq!(get(b, "/api/hello", Some("k2")).await.0, 200);
    let (status, head) = get(a, "/health", None).await;
    assert_eq!(status, 200);
    assert!(!head.contains("ratelimit"), "{head}");
    // The concurrency limit refuses requests without the key (on_missing_key: refuse).
    let (status, head) = get(a, "/api/hello", None).await;
    assert_eq!(status, 400, "{head}");
    assert!(head.contains("missing_key"), "{head}");

    // Redis goes away: the limits fall back to this instance's share (local policy), so the
    // service keeps answering with 200 or 429, never an error.
    redis.kill();
    let mut local = Vec::new();
    for _ in 0..7 {
        local.push(get(a, "/api/hello", Some("k3")).await.0);
    }
    assert!(local.iter().all(|s| *s == 200 || *s == 429), "{local:?}");
    let admitted = local.iter().filter(|s| **s == 200).count();
    // The share is 5 divided by the fleet size the heartbeat last saw (1 or 2).
    assert!(admitted == 5 || admitted == 2, "{local:?}");
}
