//! The gateway on real Redis deployments: a Cluster shared by several instances, a Sentinel
//! failover under load, TLS, per-concern stores, flush_on_startup, and misconfigurations that
//! must stop the start with one clear line.

mod common;

use common::*;
use fleetgate_testkit::{RedisCluster, RedisServer, SentinelGroup, TestCerts};
use std::time::{Duration, Instant};

fn base(store: &str) -> String {
    format!("listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\n  access_log: false\n{store}")
}

const PER_KEY_ROUTE: &str = "routes:\n  - name: api\n    respond: { status: 200, body: ok }\n    rate_limits:\n      - name: per-key\n        key: header:x-api-key\n        rate: 3/1h\n";

/// Runs `fleetgate --config` expecting it to refuse to start; returns its stderr.
fn refuses_to_start(yaml: &str) -> String {
    let path = std::env::temp_dir().join(format!("fg-refuse-{}-{}.yaml", std::process::id(), free_port()));
    let text = yaml
        .replace("{PORT}", &free_port().to_string())
        .replace("{ADMIN}", &free_port().to_string());
    std::fs::write(&path, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fleetgate did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let _ = std::fs::remove_file(path);
    assert!(!status.success(), "exit status {status:?}");
    err
}

#[test]
fn cluster_shared_by_three_instances_keeps_every_key_exact() {
    let cluster = RedisCluster::start(3);
    let cfg = base(&format!(
        "store:\n  url: {}\n  timeout_ms: 500\n{PER_KEY_ROUTE}",
        cluster.url()
    ));
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    let mut admitted = std::collections::HashMap::new();
    for round in 0..5 {
        for key in 0..60 {
            let gw = &gws[(round + key) % 3];
            let api_key = format!("client-{key}");
            if gw.get("/", &[("x-api-key", api_key.as_bytes())]).status == 200 {
                *admitted.entry(key).or_insert(0) += 1;
            }
        }
    }
    let wrong: Vec<_> = admitted.iter().filter(|(_, n)| **n != 3).collect();
    println!(
        "cluster: {} keys, each admitted exactly 3 of 5: {}",
        admitted.len(),
        wrong.is_empty()
    );
    assert_eq!(admitted.len(), 60);
    assert!(wrong.is_empty(), "keys not exact: {wrong:?}");
    for node in &cluster.nodes {
        assert!(
            !node.command(&["DBSIZE"]).contains(":0\r"),
            "every primary holds some of the keys"
        );
    }
}

#[test]
fn sentinel_failover_under_load_needs_no_gateway_restart() {
    let mut group = SentinelGroup::start();
    let cfg = base(&format!(
        "store:\n  url: {}\n  timeout_ms: 100\nroutes:\n  - name: api\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - name: all\n        key: global\n        rate: 100000/1s\n        on_store_error: closed\n",
        group.url()
    ));
    let gw = Gateway::start(&cfg);
    assert_eq!(gw.get("/", &[]).status, 200);
    group.primary.kill();
    let killed = Instant::now();
    let mut last_ok = Instant::now();
    let mut gap = Duration::ZERO;
    let mut after = 0;
    while killed.elapsed() < Duration::from_secs(30) && after < 20 {
        let status = gw.get("/", &[]).status;
        assert!(
            status == 200 || status == 503,
            "only 200 or the closed policy's 503: {status}"
        );
        if status == 200 {
            gap = gap.max(last_ok.elapsed());
            last_ok = Instant::now();
            if killed.elapsed() > Duration::from_millis(500) {
                after += 1;
            }
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    println!("sentinel failover through the gateway: longest gap without a limited request served {gap:?}");
    assert_eq!(after, 20, "limited requests are served again on the promoted replica");
    assert_eq!(group.primary_port(), Some(group.replica.port()));
}

#[test]
fn tls_store_and_misconfigurations_that_refuse_to_start() {
    let certs = TestCerts::generate();
    let (_server, tls_port) = certs.start_tls_server(false);
    let ca = certs.path("ca.crt").display().to_string();
    let gw = Gateway::start(&base(&format!(
        "store:\n  url: rediss://127.0.0.1:{tls_port}\n  tls:\n    ca_file: {ca}\n{PER_KEY_ROUTE}"
    )));
    for _ in 0..3 {
        assert_eq!(gw.get("/", &[("x-api-key", b"k")]).status, 200);
    }
    assert_eq!(gw.get("/", &[("x-api-key", b"k")]).status, 429);
    assert_eq!(
        http_get(gw.admin_addr(), "/healthz", &[]).unwrap().json()["store"],
        "ok"
    );

    // A bad CA file.
    let err = refuses_to_start(&base(&format!(
        "store:\n  url: rediss://127.0.0.1:{tls_port}\n  tls:\n    ca_file: /nonexistent/ca.pem\n{PER_KEY_ROUTE}"
    )));
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    // A wrong password: one clear line, no secret in it.
    let protected = RedisServer::start_with_args(&["--requirepass", "right-pw"]);
    let err = refuses_to_start(&base(&format!(
        "store:\n  url: redis://:wrong-pw-123@127.0.0.1:{}\n{PER_KEY_ROUTE}",
        protected.port()
    )));
    assert!(err.contains("authentication"), "{err}");
    assert!(!err.contains("wrong-pw-123") && !err.contains("right-pw"), "{err}");
    // A cluster URL naming a node that is not in cluster mode.
    let plain = RedisServer::start();
    let err = refuses_to_start(&base(&format!(
        "store:\n  url: redis-cluster://127.0.0.1:{}\n{PER_KEY_ROUTE}",
        plain.port()
    )));
    assert!(err.contains("cluster mode"), "{err}");
}

#[test]
fn sentinel_naming_an_unknown_master_refuses_to_start() {
    let group = SentinelGroup::start();
    let err = refuses_to_start(&base(&format!(
        "store:\n  url: {}\n{PER_KEY_ROUTE}",
        group.url().replace("mymaster", "nosuch")
    )));
    assert!(err.contains("master"), "{err}");
}

#[test]
fn per_concern_store_and_flush_on_startup() {
    let general = RedisServer::start();
    let limits = RedisServer::start();
    // Old state under the prefix, and another application's key under another prefix.
    limits.command(&["SET", "fgtest:rate:old:{x}", "1"]);
    limits.command(&["SET", "otherapp:key", "1"]);
    let gw = Gateway::start(&base(&format!(
        "store:\n  url: {}\n  key_prefix: fgtest\n  flush_on_startup: true\nstores:\n  rate_limits:\n    url: {}\n{PER_KEY_ROUTE}",
        general.url(),
        limits.url()
    )));
    assert_eq!(
        limits.command(&["EXISTS", "fgtest:rate:old:{x}"]).trim(),
        ":0",
        "flushed at start"
    );
    assert_eq!(
        limits.command(&["EXISTS", "otherapp:key"]).trim(),
        ":1",
        "other prefixes untouched"
    );
    assert_eq!(gw.get("/", &[("x-api-key", b"k")]).status, 200);
    let in_limits = limits.command(&["EVAL", "return #redis.call('KEYS', 'fgtest:rate:*')", "0"]);
    let in_general = general.command(&["EVAL", "return #redis.call('KEYS', 'fgtest:rate:*')", "0"]);
    assert_eq!(
        (in_limits.trim(), in_general.trim()),
        (":1", ":0"),
        "limits live in stores.rate_limits"
    );
}
