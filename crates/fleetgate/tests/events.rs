//! Live events end to end: real gateway processes on one real Redis, SSE subscribers on the
//! admin listeners. Every subscriber sees every request of the fleet exactly once, across a
//! reconnect with `Last-Event-ID`; a Redis outage turns events local and back; filters; the
//! admin token.

mod common;

use common::*;
use fleetgate_testkit::RedisServer;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One SSE message as received.
#[derive(Debug, Clone, Default)]
struct Msg {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl Msg {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {}", self.data))
    }
}

/// A subscriber to `/events` (HTTP/1.0, so the stream is close-delimited), reading on its own
/// thread until dropped.
struct Subscriber {
    msgs: Arc<Mutex<Vec<Msg>>>,
    stream: TcpStream,
    status: Arc<Mutex<Option<u16>>>,
}

impl Subscriber {
    fn open(admin: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Subscriber {
        let mut stream = TcpStream::connect(admin).expect("connect to admin");
        let mut req = format!("GET /events{query} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(None));
        let reader = stream.try_clone().unwrap();
        let (m, st) = (msgs.clone(), status.clone());
        std::thread::spawn(move || {
            let mut lines = BufReader::new(reader).lines();
            let Some(Ok(first)) = lines.next() else { return };
            *st.lock().unwrap() = first.split(' ').nth(1).and_then(|s| s.parse().ok());
            for line in lines.by_ref() {
                match line {
                    Ok(l) if l.is_empty() => break,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            let mut cur = Msg::default();
            for line in lines {
                let Ok(line) = line else { return };
                if line.is_empty() {
                    if !cur.data.is_empty() || cur.event.is_some() {
                        m.lock().unwrap().push(std::mem::take(&mut cur));
                    }
                    continue;
                }
                if let Some(v) = line.strip_prefix("id:") {
                    cur.id = Some(v.trim_start().to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    cur.event = Some(v.trim_start().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !cur.data.is_empty() {
                        cur.data.push('\n');
                    }
                    cur.data.push_str(v.trim_start());
                }
            }
        });
        Subscriber { msgs, stream, status }
    }

    /// Request events (not notices) received so far.
    fn events(&self) -> Vec<Msg> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.event.is_none())
            .cloned()
            .collect()
    }

    fn notices(&self) -> Vec<String> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.event.as_deref() == Some("notice"))
            .map(|m| m.data.clone())
            .collect()
    }

    /// Waits (up to 20 s) until `n` events arrived; returns them. Fails if fewer came.
    fn wait_events(&self, n: usize) -> Vec<Msg> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.events();
            if got.len() >= n || Instant::now() > deadline {
                assert!(got.len() >= n, "only {} of {n} events arrived: {got:?}", got.len());
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`wait_events`](Self::wait_events), showing the gateways' event metrics on failure.
    fn wait_events_or(&self, n: usize, gws: &[&Gateway]) -> Vec<Msg> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.events().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.events().len() < n {
            for gw in gws {
                let m = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
                let lines: Vec<_> = m.lines().filter(|l| l.contains("events")).collect();
                println!("{}: {lines:?}", instance_of(gw));
            }
        }
        self.wait_events(n)
    }

    fn close(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn config(store_url: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\n{extra}log:\n  level: warn\n  access_log: false\nstore:\n  url: {store_url}\n  key_prefix: events\n  timeout_ms: 500\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    respond: {{ status: 200, body: ok }}\n  - name: missing\n    match: {{ path_prefix: /missing }}\n    respond: {{ status: 404, body: nope }}\n"
    )
}

fn send(gw: &Gateway, path: &str, n: usize) {
    for _ in 0..n {
        let r = gw.get(path, &[]);
        assert!(r.status == 200 || r.status == 404, "{path}: {}", r.status);
    }
}

/// The `id` inside each event's JSON (unique per request in the fleet).
fn request_ids(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.json()["id"].as_str().unwrap().to_string())
        .collect()
}

fn instance_of(gw: &Gateway) -> String {
    http_get(gw.admin_addr(), "/healthz", &[]).unwrap().json()["instance"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn two_subscribers_on_different_instances_see_each_request_once_across_a_reconnect() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "");
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    // From the stream's start (the store is fresh): nothing sent can come before them.
    let s1 = Subscriber::open(a.admin_addr(), "", &[("Last-Event-ID", "0-0")]);
    let s2 = Subscriber::open(b.admin_addr(), "", &[("Last-Event-ID", "0-0")]);
    let per_instance = 20;
    let total = per_instance * 3;
    // The first third through every instance, then s2 goes away and comes back on C.
    for gw in [&a, &b, &c] {
        send(gw, "/api/first?q=1", per_instance / 2);
    }
    let first_part = s2.wait_events_or(per_instance / 2 * 3, &[&a, &b, &c]);
    let last_id = first_part.last().unwrap().id.clone().expect("events carry ids");
    let first_part: Vec<Msg> = s2.events();
    s2.close();
    for gw in [&a, &b, &c] {
        send(gw, "/api/second", per_instance / 2);
    }
    let s2b = Subscriber::open(c.admin_addr(), "", &[("Last-Event-ID", &last_id)]);
    let got1 = s1.wait_events(total);
    let rest = s2b.wait_events(total - first_part.len());
    // Settled: nothing more than sent arrives.
    std::thread::sleep(Duration::from_millis(1500));
    let got1 = {
        let now = s1.events();
        assert_eq!(now.len(), got1.len(), "no event beyond those sent");
        now
    };
    let mut got2 = first_part.clone();
    got2.extend(s2b.events());
    println!(
        "events: sent {total} over 3 instances; subscriber 1 got {}, subscriber 2 got {} ({} before its reconnect)",
        got1.len(),
        got2.len(),
        first_part.len()
    );
    assert_eq!(got1.len(), total);
    assert_eq!(got2.len(), total, "{} after the reconnect", rest.len());
    for got in [&got1, &got2] {
        let ids = request_ids(got);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), total, "no duplicates");
        let stream_ids: HashSet<_> = got.iter().map(|m| m.id.clone().unwrap()).collect();
        assert_eq!(stream_ids.len(), total, "stream ids are unique too");
        let mut by_instance = BTreeMap::new();
        for m in got.iter() {
            let e = m.json();
            assert_eq!(e["route"], "api");
            assert_eq!(e["method"], "GET");
            assert_eq!(e["status"], 200);
            assert_eq!(e["local"], false);
            assert!(e["duration_ms"].as_f64().unwrap() >= 0.0);
            assert!(!e["path"].as_str().unwrap().contains('?'), "the path has no query");
            assert_eq!(e["bytes"], 2, "body `ok`");
            *by_instance
                .entry(e["instance"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        for gw in [&a, &b, &c] {
            assert_eq!(
                by_instance.get(&instance_of(gw)),
                Some(&per_instance),
                "{by_instance:?}"
            );
        }
    }
    assert_eq!(
        request_ids(&got1).into_iter().collect::<HashSet<_>>(),
        request_ids(&got2).into_iter().collect::<HashSet<_>>(),
        "both saw the same requests"
    );
}

#[test]
fn a_redis_outage_makes_events_local_and_fleet_events_resume_after_it() {
    let mut redis = RedisServer::start();
    let cfg = config(&redis.url(), "");
    let (a, b) = (Gateway::start(&cfg), Gateway::start(&cfg));
    let sub = Subscriber::open(a.admin_addr(), "", &[("Last-Event-ID", "0-0")]);
    send(&b, "/api/before", 3);
    let before = sub.wait_events(3);
    assert!(before.iter().all(|m| m.json()["local"] == false));

    redis.kill();
    // Requests keep succeeding; A's own events reach its subscriber through the local bus.
    send(&a, "/api/during", 5);
    send(&b, "/api/during-b", 5);
    let during = sub.wait_events(8);
    let local: Vec<_> = during[3..].iter().map(Msg::json).collect();
    assert_eq!(local.len(), 5, "A's five only: B's went to B's local bus {local:?}");
    assert!(
        local.iter().all(|e| e["local"] == true && e["path"] == "/api/during"),
        "{local:?}"
    );
    assert!(
        sub.notices().iter().any(|n| n.contains("store down")),
        "the subscriber is told: {:?}",
        sub.notices()
    );

    redis.restart();
    wait_store(&a, "ok");
    wait_store(&b, "ok");
    // Fleet events again, from the other instance, without restarting anything. The first
    // batch after the restart may still find a connection to reconnect; what is asserted is
    // that B's events reach A's subscriber again, marked fleet.
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        send(&b, "/api/after", 1);
        std::thread::sleep(Duration::from_millis(100));
        let fleet: Vec<_> = sub.events()[8..]
            .iter()
            .map(Msg::json)
            .filter(|e| e["local"] == false && e["path"] == "/api/after")
            .collect();
        if !fleet.is_empty() || Instant::now() > deadline {
            break fleet;
        }
    };
    assert!(!resumed.is_empty(), "no fleet event after Redis returned");
    assert!(
        sub.notices().iter().any(|n| n.contains("answers again")),
        "{:?}",
        sub.notices()
    );
    let metrics = http_get(a.admin_addr(), "/metrics", &[]).unwrap().body;
    assert!(
        metric_sum(&metrics, "fleetgate_events_published_total{to=\"local\"}") >= 5.0,
        "{metrics}"
    );
}

#[test]
fn filters_select_events_and_bad_input_is_told() {
    let cfg = config("memory://", "");
    let gw = Gateway::start(&cfg);
    let instance = instance_of(&gw);
    let all = Subscriber::open(gw.admin_addr(), "", &[("Last-Event-ID", "0-0")]);
    let api = Subscriber::open(gw.admin_addr(), "?route=api", &[("Last-Event-ID", "0-0")]);
    let errors = Subscriber::open(gw.admin_addr(), "?status=4xx", &[("Last-Event-ID", "0-0")]);
    let exact = Subscriber::open(
        gw.admin_addr(),
        "?status=404&route=missing",
        &[("Last-Event-ID", "0-0")],
    );
    let mine = Subscriber::open(
        gw.admin_addr(),
        &format!("?instance={instance}&status=2xx"),
        &[("Last-Event-ID", "0-0")],
    );
    let other = Subscriber::open(gw.admin_addr(), "?instance=somewhere-else", &[("Last-Event-ID", "0-0")]);
    let garbage = Subscriber::open(gw.admin_addr(), "", &[("Last-Event-ID", "not-an-id")]);
    send(&gw, "/api/x", 4);
    send(&gw, "/missing/y", 3);
    assert_eq!(all.wait_events(7).len(), 7);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(api.events().len(), 4);
    assert!(api.events().iter().all(|m| m.json()["route"] == "api"));
    assert_eq!(errors.events().len(), 3);
    assert_eq!(exact.events().len(), 3);
    assert_eq!(mine.events().len(), 4);
    assert_eq!(other.events().len(), 0);
    assert!(
        garbage
            .notices()
            .iter()
            .any(|n| n.contains("not an event id") && n.contains("starting from now")),
        "{:?}",
        garbage.notices()
    );
    let bad = http_get(gw.admin_addr(), "/events?status=7xx", &[]).unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("1xx to 5xx"), "{}", bad.body);
    let bad = http_get(gw.admin_addr(), "/events?colour=red", &[]).unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("unknown filter"), "{}", bad.body);
}

#[test]
fn the_admin_token_guards_every_path_but_health() {
    let log = std::env::temp_dir().join(format!("fleetgate-events-token-{}.log", std::process::id()));
    let token = "t0ken-which-must-not-leak";
    let cfg = config("memory://", "  token: ${ADMIN_TOKEN}\n");
    let gw = Gateway::spawn_with(&cfg, &[("ADMIN_TOKEN", token)], Some(&log));
    let admin = gw.admin_addr();
    for open in ["/healthz", "/readyz"] {
        assert_eq!(http_get(admin, open, &[]).unwrap().status, 200, "{open} stays open");
    }
    let bearer = format!("Bearer {token}");
    for path in ["/metrics", "/events?status=2xx", "/dashboard/state", "/dashboard"] {
        let r = http_get(admin, path, &[]).unwrap();
        assert_eq!(r.status, 401, "{path} without the token");
        assert!(!r.body.contains(token));
        let r = http_get(admin, path, &[("Authorization", b"Bearer wrong")]).unwrap();
        assert_eq!(r.status, 401, "{path} with a wrong token");
        assert!(!r.body.contains(token));
    }
    for path in ["/metrics", "/dashboard/state", "/dashboard"] {
        let r = http_get(admin, path, &[("Authorization", bearer.as_bytes())]).unwrap();
        assert_eq!(r.status, 200, "{path} with the token");
    }
    let sub = Subscriber::open(admin, "", &[("Authorization", &bearer)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.status.lock().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(*sub.status.lock().unwrap(), Some(200));
    // The dashboard takes the token once and keeps a cookie (not the token itself).
    let r = http_get(admin, &format!("/dashboard?token={token}"), &[]).unwrap();
    assert_eq!(r.status, 303);
    let cookie = r.header("set-cookie").expect("a cookie").to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(!cookie.contains(token), "the cookie holds a hash of the token");
    let pair = cookie.split(';').next().unwrap();
    assert_eq!(
        http_get(admin, "/dashboard/state", &[("Cookie", pair.as_bytes())])
            .unwrap()
            .status,
        200
    );
    assert_eq!(http_get(admin, "/dashboard?token=wrong", &[]).unwrap().status, 401);
    drop(sub);
    drop(gw);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains(token), "the token is never logged");
    let _ = std::fs::remove_file(&log);
}

/// A SIGHUP reload keeps live events flowing: the reloaded routes send into the publisher the
/// instance started with (a reload builds a whole new gateway, whose routes must not get a
/// channel nobody reads).
#[test]
fn events_keep_flowing_after_a_configuration_reload() {
    let redis = RedisServer::start();
    let cfg = config(&redis.url(), "");
    let gw = Gateway::start(&cfg);
    let sub = Subscriber::open(gw.admin_addr(), "", &[("Last-Event-ID", "0-0")]);
    send(&gw, "/api/before", 3);
    let before = sub.wait_events(3);
    assert_eq!(before.len(), 3);
    // The same file with one more route, only in the new configuration.
    let reloaded = cfg.replace(
        "routes:\n",
        "routes:\n  - name: added\n    match: { path_prefix: /added }\n    respond: { status: 200, body: new }\n",
    );
    let text = reloaded
        .replace("{PORT}", &gw.port.to_string())
        .replace("{ADMIN}", &gw.admin_port.to_string());
    std::fs::write(&gw.config_path, text).unwrap();
    let pid = gw.child.as_ref().expect("running").id();
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    // The precondition, not the symptom under test: the reload has been applied.
    let deadline = Instant::now() + Duration::from_secs(10);
    let applied = |m: &str| metric_sum(m, "fleetgate_config_reloads_total{outcome=\"applied\"}");
    loop {
        let m = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
        if applied(&m) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the reload was not applied: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        let r = gw.get("/added/x", &[]);
        assert_eq!((r.status, r.body.as_str()), (200, "new"), "the new route answers");
    }
    let all = sub.wait_events(6);
    assert_eq!(all.len(), 6, "3 events before the reload and 3 after: {all:?}");
    let routes: Vec<String> = all
        .iter()
        .map(|m| m.json()["route"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(routes, ["api", "api", "api", "added", "added", "added"]);
    sub.close();
}

/// A subscriber that opens `/events` and never reads: its queue is bounded, so once the
/// kernel's and the server's buffers are full the gateway drops it and counts it, while a
/// subscriber that reads gets every event and requests keep being served.
#[test]
fn a_subscriber_that_never_reads_is_dropped_and_counted() {
    use socket2::{Domain, Socket, Type};
    let gw = Gateway::start(&config("memory://", "events:\n  stream_max_len: 20000\n"));
    let reader = Subscriber::open(gw.admin_addr(), "", &[]);
    // A receive buffer of a few KiB, set before connecting, so the window stays small.
    let stalled = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    stalled.set_recv_buffer_size(4096).unwrap();
    stalled.connect(&gw.admin_addr().into()).unwrap();
    let mut stalled: TcpStream = stalled.into();
    stalled
        .write_all(b"GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let dropped = || {
        metric_sum(
            &http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body,
            "fleetgate_events_subscribers_dropped_total",
        )
    };
    assert_eq!(dropped(), 0.0);
    // Long paths make big events: the kernel's send buffer on loopback grows to a few MiB,
    // and hyper buffers some 400 KiB, before the subscriber's queue of 1024 fills.
    let n = 4000;
    let path = format!("/api/{}", "x".repeat(2000));
    let statuses = drive(&[&gw], &path, n, 4);
    assert_eq!(
        count(&statuses, 200),
        n,
        "requests are served while a subscriber stalls"
    );
    assert_eq!(
        reader.wait_events(n).len(),
        n,
        "the subscriber that reads misses nothing"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while dropped() < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(dropped(), 1.0, "the stalled subscriber is dropped and counted, once");
    assert_eq!(reader.events().len(), n, "and the reader was not the one dropped");
    assert_eq!(gw.get("/api/after", &[]).status, 200);
    drop(stalled);
}
