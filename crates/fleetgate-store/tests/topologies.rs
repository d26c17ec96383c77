//! Every Redis topology passes the same conformance scenarios, and each has its own checks:
//! Cluster keys spread over slots with exact limits, Sentinel failover followed without a new
//! store, TLS with a CA and client certificates made by the test.

use bytes::Bytes;
use fleetgate_store::*;
use fleetgate_testkit::{RedisCluster, SentinelGroup, TestCerts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn options() -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

async fn exact_limits_on_many_keys(store: &RedisStore, keys: usize) {
    let ks = Keyspace::new("topo").unwrap();
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow, Algorithm::FixedWindow] {
        let limit = RateLimit::parse(algorithm, "3/1d", None).unwrap();
        let admitted = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for k in 0..keys {
            let (store, admitted) = (store.clone(), admitted.clone());
            let key = ks.key(Concern::RateLimit, algorithm.as_str(), &(k as u64).to_le_bytes());
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    if store.rate(&key, &limit, 1).await.unwrap().allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            admitted.load(Ordering::Relaxed),
            3 * keys as u64,
            "{algorithm}: exactly 3 per key"
        );
    }
}

async fn basic_ops(store: &RedisStore) {
    let ks = Keyspace::new("topo").unwrap();
    let k = ks.key(Concern::Marker, "m", b"x");
    assert_eq!(
        store
            .claim(&k, Bytes::from_static(b"a"), Duration::from_secs(5))
            .await
            .unwrap(),
        ClaimOutcome::Won
    );
    assert_eq!(
        store
            .claim(&k, Bytes::from_static(b"b"), Duration::from_secs(5))
            .await
            .unwrap(),
        ClaimOutcome::Held(Bytes::from_static(b"a"))
    );
    let lock = ks.key(Concern::Lock, "l", b"x");
    assert!(store.lock(&lock, "me", Duration::from_secs(5)).await.unwrap().is_some());
    let permits = ks.key(Concern::Concurrency, "p", b"x");
    assert!(
        store
            .acquire_permit(&permits, "a", 1, Duration::from_secs(5))
            .await
            .unwrap()
            .granted
    );
    assert!(
        !store
            .acquire_permit(&permits, "b", 1, Duration::from_secs(5))
            .await
            .unwrap()
            .granted
    );
    let mut sub = store.subscribe("topo:chan:t").await.unwrap();
    store
        .publish("topo:chan:t", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(3), sub.next())
        .await
        .expect("pub/sub delivers")
        .unwrap();
    assert_eq!(m.payload, Bytes::from_static(b"hello"));
    assert_eq!(store.health().await, StoreHealth::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_spreads_keys_over_slots_and_limits_stay_exact() {
    let cluster = RedisCluster::start(3);
    let store = RedisStore::connect(&cluster.url(), options()).await.unwrap();
    exact_limits_on_many_keys(&store, 200).await;
    basic_ops(&store).await;
    // Keys really landed on every primary.
    for node in &cluster.nodes {
        let size = node.command(&["DBSIZE"]);
        let n: u64 = size.trim().trim_start_matches(':').parse().unwrap_or(0);
        assert!(n > 10, "node {} holds {n} keys", node.port());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_url_naming_a_non_cluster_node_fails_clearly() {
    let plain = fleetgate_testkit::RedisServer::start();
    let url = format!("redis-cluster://127.0.0.1:{}", plain.port());
    let err = RedisStore::connect(
        &url,
        RedisOptions {
            connect_timeout: Duration::from_millis(300),
            ..options()
        },
    )
    .await
    .err()
    .expect("not a cluster");
    let text = err.to_string();
    assert!(!text.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_is_followed_without_a_new_store() {
    let mut group = SentinelGroup::start();
    let store = RedisStore::connect(&group.url(), options()).await.unwrap();
    basic_ops(&store).await;
    exact_limits_on_many_keys(&store, 20).await;
    let old = group.primary.port();
    assert_eq!(store.target(), format!("127.0.0.1:{old}"));
    let ks = Keyspace::new("topo").unwrap();
    let limit = RateLimit::parse(Algorithm::Gcra, "1000000/1s", None).unwrap();
    let key = ks.key(Concern::RateLimit, "failover", b"k");
    group.primary.kill();
    let killed = Instant::now();
    let mut last_ok = Instant::now();
    let mut gap = Duration::ZERO;
    let mut recovered = false;
    while killed.elapsed() < Duration::from_secs(30) {
        match store.rate(&key, &limit, 1).await {
            Ok(_) => {
                let since = last_ok.elapsed();
                gap = gap.max(since);
                last_ok = Instant::now();
                if store.target() != format!("127.0.0.1:{old}") {
                    recovered = true;
                    break;
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    println!("sentinel failover: gap without a successful decision {gap:?} (down-after 1 s)");
    assert!(recovered, "the store never followed the new primary");
    assert_eq!(store.target(), format!("127.0.0.1:{}", group.replica.port()));
    assert_eq!(group.primary_port(), Some(group.replica.port()));
}

#[tokio::test]
async fn sentinel_url_naming_an_unknown_master_fails_clearly() {
    let group = SentinelGroup::start();
    let url = group.url().replace("master=mymaster", "master=nosuch");
    let err = RedisStore::connect(
        &url,
        RedisOptions {
            connect_timeout: Duration::from_millis(300),
            ..options()
        },
    )
    .await
    .err()
    .expect("unknown master");
    assert!(err.is_connectivity(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_with_ca_and_client_certificate() {
    let certs = TestCerts::generate();
    let (_server, tls_port) = certs.start_tls_server(true);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let mut o = options();
    o.tls = Some(TlsFiles {
        ca_file: Some(certs.path("ca.crt")),
        cert_file: Some(certs.path("client.crt")),
        key_file: Some(certs.path("client.key")),
    });
    let store = RedisStore::connect(&url, o.clone()).await.unwrap();
    basic_ops(&store).await;
    exact_limits_on_many_keys(&store, 10).await;
    // Without the client certificate the server refuses us.
    let mut no_client = o.clone();
    no_client.tls = Some(TlsFiles {
        ca_file: Some(certs.path("ca.crt")),
        ..Default::default()
    });
    no_client.connect_timeout = Duration::from_millis(300);
    assert!(RedisStore::connect(&url, no_client).await.is_err());
    // A CA file that does not exist is a clear configuration error at open.
    let mut bad = o.clone();
    bad.tls = Some(TlsFiles {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    });
    let err = RedisStore::open(&url, bad).err().expect("bad CA file").to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

async fn seed_and_flush(store: &RedisStore, count_keys: impl Fn() -> (u64, u64)) {
    let ours = Keyspace::new("flushme").unwrap();
    let theirs = Keyspace::new("keepme").unwrap();
    for i in 0..300u64 {
        let k = ours.key(Concern::Session, "s", &i.to_le_bytes());
        store
            .set(&k, Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap();
    }
    for i in 0..50u64 {
        let k = theirs.key(Concern::Session, "s", &i.to_le_bytes());
        store
            .set(&k, Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap();
    }
    assert_eq!(store.flush_prefix("flushme").await.unwrap(), 300);
    let (ours_left, theirs_left) = count_keys();
    assert_eq!((ours_left, theirs_left), (0, 50), "only the prefix is deleted");
}

fn count_prefix(nodes: &[&fleetgate_testkit::RedisServer], prefix: &str) -> u64 {
    nodes
        .iter()
        .map(|n| {
            let reply = n.command(&[
                "EVAL",
                "return #redis.call('KEYS', ARGV[1])",
                "0",
                &format!("{prefix}:*"),
            ]);
            reply.trim().trim_start_matches(':').parse::<u64>().unwrap_or(0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flush_prefix_deletes_only_its_keys_standalone_and_cluster() {
    let server = fleetgate_testkit::RedisServer::start();
    let store = RedisStore::connect(&server.url(), options()).await.unwrap();
    seed_and_flush(&store, || {
        (count_prefix(&[&server], "flushme"), count_prefix(&[&server], "keepme"))
    })
    .await;

    let cluster = RedisCluster::start(3);
    let store = RedisStore::connect(&cluster.url(), options()).await.unwrap();
    let nodes: Vec<&fleetgate_testkit::RedisServer> = cluster.nodes.iter().collect();
    seed_and_flush(&store, || {
        (count_prefix(&nodes, "flushme"), count_prefix(&nodes, "keepme"))
    })
    .await;
}
