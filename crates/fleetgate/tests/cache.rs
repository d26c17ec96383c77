//! The shared HTTP cache end to end: three instances of the real binary on one real Redis, in
//! front of an origin stand-in that answers each path as the test scripts it (status, headers,
//! body; 304 to a matching `If-None-Match`; a body that dies half-way) and counts the calls it
//! gets, with the headers of each.

mod common;

use bytes::Bytes;
use common::stand_in::StandIn;
use common::*;
use fleetgate_testkit::RedisServer;
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the origin answers one path.
#[derive(Clone, Default)]
struct Script {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// Sends half the body, then breaks the connection.
    die_mid_body: bool,
    /// Waits this long before answering (so that concurrent requests overlap).
    delay_ms: u64,
}

fn script(headers: &[(&'static str, &str)], body: &str) -> Script {
    Script {
        status: 200,
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        body: body.to_string(),
        die_mid_body: false,
        delay_ms: 0,
    }
}

/// One call the origin got: its method, path and headers.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Call {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct OriginState {
    scripts: HashMap<String, Script>,
    calls: Vec<Call>,
}

struct Origin {
    port: u16,
    state: Arc<parking_lot::Mutex<OriginState>>,
    _server: StandIn,
}

type OriginBody = BoxBody<Bytes, std::io::Error>;

impl Origin {
    fn start() -> Origin {
        let state = Arc::new(parking_lot::Mutex::new(OriginState::default()));
        let s = state.clone();
        let server = StandIn::start(move |req| {
            let s = s.clone();
            async move { answer(req, &s).await }
        });
        Origin {
            port: server.port,
            state,
            _server: server,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set(&self, path: &str, script: Script) {
        self.state.lock().scripts.insert(path.to_string(), script);
    }

    /// Calls to `path` (any method).
    fn calls(&self, path: &str) -> Vec<Call> {
        self.state
            .lock()
            .calls
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }

    fn count(&self, path: &str) -> usize {
        self.calls(path).len()
    }
}

async fn answer(req: Request<Incoming>, state: &parking_lot::Mutex<OriginState>) -> Response<OriginBody> {
    let call = Call {
        method: req.method().to_string(),
        path: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
    };
    let script = {
        let mut st = state.lock();
        st.calls.push(call.clone());
        st.scripts.get(&call.path).cloned().unwrap_or_else(|| Script {
            status: 200,
            body: "unscripted".into(),
            ..Script::default()
        })
    };
    if script.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(script.delay_ms)).await;
    }
    let mut b = Response::builder();
    for (k, v) in &script.headers {
        b = b.header(*k, v.as_str());
    }
    let etag = script
        .headers
        .iter()
        .find(|(k, _)| *k == "etag")
        .map(|(_, v)| v.clone());
    if let (Some(etag), Some(inm)) = (etag, call.header("if-none-match")) {
        if inm.split(',').any(|t| t.trim() == etag) && call.method == "GET" {
            return b
                .status(304)
                .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
                .unwrap();
        }
    }
    let b = b.status(script.status);
    if script.die_mid_body {
        let half = Bytes::from(script.body[..script.body.len() / 2].to_string());
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(half)),
            Err(std::io::Error::other("origin died mid-body")),
        ];
        return b
            .header("content-length", script.body.len().to_string())
            .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
            .unwrap();
    }
    b.body(Full::new(Bytes::from(script.body)).map_err(|e| match e {}).boxed())
        .unwrap()
}

fn config_timeout(redis: &str, origin: &Origin, cache: &str, timeout_ms: u64) -> String {
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nstore:\n  url: {redis}\n  timeout_ms: {timeout_ms}\nupstreams:\n  origin:\n    targets: [{}]\nroutes:\n  - name: cached\n    upstream: origin\n    cache: {cache}\n",
        origin.url()
    )
}

/// Three instances on one Redis in front of one origin.
struct Fleet {
    redis: RedisServer,
    origin: Origin,
    gateways: Vec<Gateway>,
}

impl Fleet {
    fn start(cache: &str) -> Fleet {
        Fleet::start_timeout(cache, 200)
    }

    /// With `store.timeout_ms` given: a test about coalescing, not about a slow store, gives
    /// its calls room on a loaded machine (a call that times out passes through, by policy).
    fn start_timeout(cache: &str, timeout_ms: u64) -> Fleet {
        let redis = RedisServer::start();
        let origin = Origin::start();
        let yaml = config_timeout(&redis.url(), &origin, cache, timeout_ms);
        let gateways = (0..3).map(|_| Gateway::start(&yaml)).collect();
        Fleet {
            redis,
            origin,
            gateways,
        }
    }

    fn get(&self, gw: usize, path: &str, headers: &[(&str, &[u8])]) -> Reply {
        self.gateways[gw].get(path, headers)
    }
}

/// One request through `gw` that must be a hit: callers first wait for the entry to be
/// written (`wait_stored`), so a miss here is a bug, not a race.
fn one_hit(fleet: &Fleet, gw: usize, path: &str, headers: &[(&str, &[u8])]) -> Reply {
    let r = fleet.get(gw, path, headers);
    assert!(
        r.header("cache-status").is_some_and(|s| s.contains("; hit")),
        "{path} via {gw} was not a hit: {:?}",
        r.headers
    );
    r
}

/// Polls `gw` for `path` until an answer is a hit, at most 50 times within 10 s. Only for
/// entries that whichever instance missed first has written, where no single instance's
/// `stored` count says when (the malformed heads test); everywhere else, [`one_hit`].
fn until_hit(fleet: &Fleet, gw: usize, path: &str, headers: &[(&str, &[u8])]) -> Reply {
    let started = Instant::now();
    for _ in 0..50 {
        let r = fleet.get(gw, path, headers);
        if r.header("cache-status").is_some_and(|s| s.contains("; hit")) {
            return r;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no hit within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{path} was never served from the cache");
}

/// Waits (at most 10 s, polling `/metrics`) until instance `gw` has written `at_least`
/// entries: an entry is written once its body has ended, just after the client got it.
fn wait_stored(fleet: &Fleet, gw: usize, at_least: f64) {
    let started = Instant::now();
    loop {
        let metrics = http_get(fleet.gateways[gw].admin_addr(), "/metrics", &[]).unwrap().body;
        if metric_sum(&metrics, "fleetgate_cache_total{route=\"cached\",outcome=\"stored\"}") >= at_least {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "instance {gw} stored fewer than {at_least}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Request headers as the harness takes them.
type Headers<'a> = &'a [(&'a str, &'a [u8])];

fn age(r: &Reply) -> u64 {
    r.header("age")
        .unwrap_or_else(|| panic!("no Age on a cached answer: {:?}", r.headers))
        .parse()
        .expect("Age is a number")
}

#[test]
fn a_response_stored_through_a_is_served_by_b_and_c() {
    let fleet = Fleet::start("{}");
    fleet
        .origin
        .set("/shared", script(&[("cache-control", "max-age=60")], "one body"));
    let first = fleet.get(0, "/shared", &[]);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "one body");
    assert_eq!(first.header("cache-status"), Some("fleetgate; fwd=uri-miss; stored"));
    wait_stored(&fleet, 0, 1.0);
    let b = one_hit(&fleet, 1, "/shared", &[]);
    assert_eq!(b.body, "one body");
    let age_b = age(&b);
    std::thread::sleep(Duration::from_millis(1100));
    let c = fleet.get(2, "/shared", &[]);
    assert!(
        c.header("cache-status").unwrap().starts_with("fleetgate; hit"),
        "{:?}",
        c.headers
    );
    assert_eq!(c.body, "one body");
    assert!(age(&c) > age_b, "Age grows: {} then {}", age_b, age(&c));
    assert_eq!(fleet.origin.count("/shared"), 1, "one upstream call for the fleet");
    let metrics = http_get(fleet.gateways[1].admin_addr(), "/metrics", &[]).unwrap().body;
    assert!(
        metric_sum(&metrics, "fleetgate_cache_total{route=\"cached\",outcome=\"hit\"}") >= 1.0,
        "{metrics}"
    );
}

#[test]
fn vary_variants_are_kept_apart() {
    let fleet = Fleet::start("{}");
    // The origin answers by language: two scripts would be one path, so the test scripts
    // one answer, stores it, then the other.
    let vary = |lang: &str| {
        script(
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Language"),
                ("content-language", lang),
            ],
            &format!("hello in {lang}"),
        )
    };
    fleet.origin.set("/greeting", vary("en"));
    let en = fleet.get(0, "/greeting", &[("accept-language", b"en")]);
    assert_eq!(en.body, "hello in en");
    wait_stored(&fleet, 0, 1.0);
    one_hit(&fleet, 1, "/greeting", &[("accept-language", b"en")]);
    fleet.origin.set("/greeting", vary("fr"));
    let fr = fleet.get(1, "/greeting", &[("accept-language", b"fr")]);
    assert_eq!(fr.body, "hello in fr", "a new variant goes upstream");
    assert!(
        fr.header("cache-status").unwrap().contains("fwd=vary-miss"),
        "{:?}",
        fr.headers
    );
    wait_stored(&fleet, 1, 1.0);
    let fr_hit = one_hit(&fleet, 2, "/greeting", &[("accept-language", b"fr")]);
    assert_eq!(fr_hit.body, "hello in fr");
    let en_hit = one_hit(&fleet, 2, "/greeting", &[("accept-language", b"en")]);
    assert_eq!(en_hit.body, "hello in en", "the first variant is still there");
    assert_eq!(fleet.origin.count("/greeting"), 2);
}

#[test]
fn no_store_private_authorization_and_set_cookie_are_not_stored() {
    let fleet = Fleet::start("{}");
    let cases: [(&str, Script, Headers); 4] = [
        (
            "/no-store",
            script(&[("cache-control", "no-store, max-age=60")], "x"),
            &[],
        ),
        (
            "/private",
            script(&[("cache-control", "private, max-age=60")], "x"),
            &[],
        ),
        (
            "/authorized",
            script(&[("cache-control", "max-age=60")], "x"),
            &[("authorization", b"Bearer alice")],
        ),
        (
            "/cookie",
            script(&[("cache-control", "max-age=60"), ("set-cookie", "sid=alice")], "x"),
            &[],
        ),
    ];
    for (path, s, headers) in cases {
        fleet.origin.set(path, s);
        for gw in 0..3 {
            let r = fleet.get(gw, path, headers);
            assert_eq!(r.status, 200);
            assert!(
                !r.header("cache-status").unwrap().contains("hit"),
                "{path}: {:?}",
                r.headers
            );
        }
        assert_eq!(fleet.origin.count(path), 3, "{path} is never served from the cache");
    }
    // What the response allows is stored: `public` with Authorization and with Set-Cookie,
    // the cookie itself never.
    fleet.origin.set(
        "/public-auth",
        script(&[("cache-control", "public, max-age=60")], "shared"),
    );
    fleet.get(0, "/public-auth", &[("authorization", b"Bearer alice")]);
    wait_stored(&fleet, 0, 1.0);
    let hit = one_hit(&fleet, 1, "/public-auth", &[("authorization", b"Bearer bob")]);
    assert_eq!(hit.body, "shared");
    fleet.origin.set(
        "/public-cookie",
        script(
            &[("cache-control", "public, max-age=60"), ("set-cookie", "sid=alice")],
            "page",
        ),
    );
    let first = fleet.get(0, "/public-cookie", &[]);
    assert_eq!(
        first.header("set-cookie"),
        Some("sid=alice"),
        "the first client gets its cookie"
    );
    wait_stored(&fleet, 0, 2.0);
    let hit = one_hit(&fleet, 2, "/public-cookie", &[]);
    assert_eq!(
        hit.header("set-cookie"),
        None,
        "a stored entry never carries Set-Cookie"
    );
    assert_eq!(fleet.origin.count("/public-cookie"), 1);
}

#[test]
fn a_stale_entry_is_revalidated_with_its_etag_and_a_304_refreshes_it() {
    let fleet = Fleet::start("{}");
    fleet.origin.set(
        "/etag",
        script(
            &[("cache-control", "max-age=1"), ("etag", "\"v1\""), ("x-version", "1")],
            "body v1",
        ),
    );
    fleet.get(0, "/etag", &[]);
    wait_stored(&fleet, 0, 1.0);
    one_hit(&fleet, 1, "/etag", &[]);
    // The 304 carries a new header value: it must replace the stored one.
    fleet.origin.set(
        "/etag",
        script(
            &[("cache-control", "max-age=60"), ("etag", "\"v1\""), ("x-version", "2")],
            "body v2",
        ),
    );
    std::thread::sleep(Duration::from_millis(2100));
    let revalidated = fleet.get(2, "/etag", &[]);
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, "body v1", "the stored body is kept");
    assert_eq!(
        revalidated.header("x-version"),
        Some("2"),
        "headers updated from the 304"
    );
    assert_eq!(
        revalidated.header("cache-status"),
        Some("fleetgate; fwd=stale; fwd-status=304; stored")
    );
    let calls = fleet.origin.calls("/etag");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].header("if-none-match"),
        Some("\"v1\""),
        "a conditional request"
    );
    wait_stored(&fleet, 2, 1.0);
    let hit = one_hit(&fleet, 0, "/etag", &[]);
    assert_eq!((hit.body.as_str(), hit.header("x-version")), ("body v1", Some("2")));
    // A client's own conditional gets 304 from the fresh entry.
    let not_modified = fleet.get(1, "/etag", &[("if-none-match", b"\"v1\"")]);
    assert_eq!(not_modified.status, 304);
    assert_eq!(fleet.origin.count("/etag"), 2);
}

#[test]
fn a_post_through_c_invalidates_the_entry_for_every_instance() {
    let fleet = Fleet::start("{}");
    fleet
        .origin
        .set("/doc", script(&[("cache-control", "max-age=60")], "v1"));
    fleet.get(0, "/doc", &[]);
    wait_stored(&fleet, 0, 1.0);
    one_hit(&fleet, 0, "/doc", &[]);
    one_hit(&fleet, 1, "/doc", &[]);
    let post = raw_request(
        fleet.gateways[2].addr(),
        b"POST /doc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .unwrap();
    assert_eq!(post.status, 200);
    assert_eq!(post.header("cache-status"), Some("fleetgate; fwd=method"));
    let before = fleet.origin.count("/doc");
    let after = fleet.get(1, "/doc", &[]);
    assert_eq!(
        after.header("cache-status"),
        Some("fleetgate; fwd=uri-miss; stored"),
        "B, which had a hit, now finds nothing"
    );
    wait_stored(&fleet, 1, 1.0);
    let hit = one_hit(&fleet, 0, "/doc", &[]);
    assert_eq!(hit.body, "v1");
    assert_eq!(fleet.origin.count("/doc"), before + 1);
}

#[test]
fn stale_if_error_serves_the_stale_entry_when_the_upstream_fails() {
    let fleet = Fleet::start("{}");
    fleet.origin.set(
        "/sie",
        script(&[("cache-control", "max-age=1, stale-if-error=60")], "kept"),
    );
    fleet.get(0, "/sie", &[]);
    wait_stored(&fleet, 0, 1.0);
    one_hit(&fleet, 1, "/sie", &[]);
    std::thread::sleep(Duration::from_millis(2100));
    fleet.origin.set(
        "/sie",
        Script {
            status: 503,
            body: "down".into(),
            ..Script::default()
        },
    );
    let r = fleet.get(2, "/sie", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "kept");
    assert_eq!(
        r.header("cache-status"),
        Some("fleetgate; fwd=stale; fwd-status=503; detail=stale-if-error")
    );
    // Without stale-if-error, the failure goes to the client.
    fleet
        .origin
        .set("/plain", script(&[("cache-control", "max-age=3")], "plain"));
    fleet.get(0, "/plain", &[]);
    wait_stored(&fleet, 0, 2.0);
    // max-age=3: the hit must come while the entry is fresh, and a loaded CI run took over a
    // second between storing and this request (max-age=1 then read it as stale).
    one_hit(&fleet, 0, "/plain", &[]);
    std::thread::sleep(Duration::from_millis(3100));
    fleet.origin.set(
        "/plain",
        Script {
            status: 503,
            body: "down".into(),
            ..Script::default()
        },
    );
    assert_eq!(fleet.get(1, "/plain", &[]).status, 503);
}

#[test]
fn bodies_over_max_entry_bytes_and_broken_bodies_pass_through_unstored() {
    let fleet = Fleet::start("{ max_entry_bytes: 1024 }");
    let big = "x".repeat(4096);
    fleet
        .origin
        .set("/big", script(&[("cache-control", "max-age=60")], &big));
    let first = fleet.get(0, "/big", &[]);
    assert_eq!(first.body.len(), 4096);
    assert_eq!(
        first.header("cache-status"),
        Some("fleetgate; fwd=uri-miss; detail=too-large")
    );
    // A chunked one (no Content-Length) is found too large as it streams.
    fleet.origin.set(
        "/big-chunked",
        Script {
            die_mid_body: false,
            ..script(
                &[("cache-control", "max-age=60"), ("transfer-encoding", "chunked")],
                &big,
            )
        },
    );
    for gw in 0..3 {
        assert_eq!(fleet.get(gw, "/big", &[]).body.len(), 4096);
        assert_eq!(fleet.get(gw, "/big-chunked", &[]).body.len(), 4096);
    }
    assert_eq!(fleet.origin.count("/big"), 4);
    assert_eq!(fleet.origin.count("/big-chunked"), 3);
    // An origin that dies mid-body: nothing half-written is ever served.
    fleet.origin.set(
        "/broken",
        Script {
            die_mid_body: true,
            ..script(&[("cache-control", "max-age=60")], "0123456789")
        },
    );
    for gw in 0..3 {
        let r = http_get(fleet.gateways[gw].addr(), "/broken", &[]);
        if let Ok(r) = r {
            assert!(!r.header("cache-status").unwrap_or("").contains("hit"));
        }
    }
    assert_eq!(fleet.origin.count("/broken"), 3);
}

#[test]
fn head_only_if_cached_and_range_follow_the_stored_get() {
    let fleet = Fleet::start("{}");
    fleet
        .origin
        .set("/page", script(&[("cache-control", "max-age=60")], "0123456789"));
    let miss = raw_request(
        fleet.gateways[0].addr(),
        b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\nCache-Control: only-if-cached\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(miss.status, 504, "only-if-cached without an entry");
    fleet.get(0, "/page", &[]);
    wait_stored(&fleet, 0, 1.0);
    one_hit(&fleet, 1, "/page", &[]);
    let head = raw_request(
        fleet.gateways[2].addr(),
        b"HEAD /page HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(head.status, 200);
    assert!(
        head.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        head.headers
    );
    assert_eq!(head.header("content-length"), Some("10"));
    assert_eq!(head.body, "");
    // A single range is served from the whole entry; several pass through.
    let range = fleet.get(1, "/page", &[("range", b"bytes=2-4")]);
    assert_eq!((range.status, range.body.as_str()), (206, "234"));
    assert_eq!(range.header("content-range"), Some("bytes 2-4/10"));
    let ranges = fleet.get(1, "/page", &[("range", b"bytes=0-1, 4-5")]);
    assert_eq!(
        ranges.header("cache-status"),
        Some("fleetgate; fwd=bypass; detail=range")
    );
    assert_eq!(
        fleet.origin.count("/page"),
        2,
        "the GET, then the multi-range request passed through"
    );
}

#[test]
fn redis_killed_passes_through_open_then_recovers() {
    let mut fleet = Fleet::start("{}");
    fleet
        .origin
        .set("/up", script(&[("cache-control", "max-age=60")], "fine"));
    fleet.get(0, "/up", &[]);
    wait_stored(&fleet, 0, 1.0);
    one_hit(&fleet, 1, "/up", &[]);
    fleet.redis.kill();
    let before = fleet.origin.count("/up");
    for gw in 0..3 {
        let r = fleet.get(gw, "/up", &[]);
        assert_eq!(r.status, 200, "open: served from the upstream, never 5xx");
        assert_eq!(r.body, "fine");
        assert!(!r.header("cache-status").unwrap().contains("hit"));
    }
    assert_eq!(fleet.origin.count("/up"), before + 3);
    fleet.redis.restart();
    // `ok` on /healthz means every worker's connection answered again: the very next request
    // must use the store.
    wait_store(&fleet.gateways[0], "ok");
    wait_store(&fleet.gateways[2], "ok");
    let r = fleet.get(0, "/up", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-status"),
        Some("fleetgate; fwd=uri-miss; stored"),
        "the first request after recovery stores again (Redis restarted empty)"
    );
    wait_stored(&fleet, 0, 2.0);
    let hit = one_hit(&fleet, 2, "/up", &[]);
    assert_eq!(hit.body, "fine");
}

#[test]
fn closed_answers_503_while_the_store_is_down() {
    let mut fleet = Fleet::start("{ on_store_error: closed }");
    fleet
        .origin
        .set("/c", script(&[("cache-control", "max-age=60")], "fine"));
    assert_eq!(fleet.get(0, "/c", &[]).status, 200);
    fleet.redis.kill();
    assert_eq!(fleet.get(1, "/c", &[]).status, 503);
}

#[test]
fn bad_heads_from_the_upstream_never_break_the_cache() {
    let fleet = Fleet::start("{}");
    let many: Vec<String> = (0..300).map(|i| format!("x-h{i}")).collect();
    let huge_cc = format!(
        "max-age=60, {}\"unclosed, {}",
        "junk=1, ".repeat(2000),
        "x".repeat(5000)
    );
    let cases = [
        (
            "/vary-many",
            script(&[("cache-control", "max-age=60"), ("vary", &many.join(", "))], "v"),
        ),
        (
            "/vary-star",
            script(&[("cache-control", "max-age=60"), ("vary", "accept, *")], "v"),
        ),
        ("/cc-huge", script(&[("cache-control", &huge_cc)], "c")),
        (
            "/cc-garbage",
            script(&[("cache-control", "max-age=abc, =, ,,, \"\"")], "g"),
        ),
        (
            "/expires-twice",
            Script {
                headers: vec![
                    ("expires", "Thu, 01 Jan 2099 00:00:00 GMT".into()),
                    ("expires", "Thu, 01 Jan 1970 00:00:00 GMT".into()),
                ],
                ..script(&[], "e")
            },
        ),
        (
            "/age-garbage",
            script(&[("cache-control", "max-age=60"), ("age", "-1, x")], "a"),
        ),
    ];
    for (path, s) in cases {
        let body = s.body.clone();
        fleet.origin.set(path, s);
        for gw in 0..3 {
            let r = fleet.get(gw, path, &[]);
            assert_eq!((r.status, r.body.as_str()), (200, body.as_str()), "{path} via {gw}");
        }
    }
    // Never stored: Vary with too many names or `*`, conflicting Expires, max-age unreadable.
    for path in ["/vary-many", "/vary-star", "/cc-garbage", "/expires-twice"] {
        assert_eq!(fleet.origin.count(path), 3, "{path} is not served from the cache");
    }
    // Readable parts of a malformed head still count: these are cached.
    assert_eq!(until_hit(&fleet, 0, "/cc-huge", &[]).body, "c");
    assert_eq!(until_hit(&fleet, 1, "/age-garbage", &[]).body, "a");
    for gw in &fleet.gateways {
        assert_eq!(
            http_get(gw.admin_addr(), "/healthz", &[]).unwrap().status,
            200,
            "no instance died"
        );
    }
}

#[test]
fn thirty_concurrent_identical_gets_over_three_instances_reach_the_upstream_once() {
    let fleet = Fleet::start_timeout("{}", 2000);
    fleet.origin.set(
        "/popular",
        Script {
            delay_ms: 300,
            ..script(&[("cache-control", "max-age=60")], "the one answer")
        },
    );
    let fleet = Arc::new(fleet);
    let threads: Vec<_> = (0..30)
        .map(|i| {
            let fleet = fleet.clone();
            std::thread::spawn(move || fleet.get(i % 3, "/popular", &[]))
        })
        .collect();
    let replies: Vec<Reply> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for r in &replies {
        assert_eq!((r.status, r.body.as_str()), (200, "the one answer"));
    }
    // On failure, what the instances counted (a store error or a bypass names the cause).
    let counted = || {
        fleet
            .gateways
            .iter()
            .map(|gw| {
                let text = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
                text.lines()
                    .filter(|l| l.starts_with("fleetgate_cache"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n--\n")
    };
    assert_eq!(
        fleet.origin.count("/popular"),
        1,
        "one upstream call for 30 clients; the instances counted:\n{}",
        counted()
    );
    let hits = replies
        .iter()
        .filter(|r| r.header("cache-status").is_some_and(|s| s.contains("; hit")))
        .count();
    assert_eq!(hits, 29, "the others were served the stored entry");
    // Nothing storable: the waiting requests are let go at once (not after coalesce_wait).
    fleet.origin.set(
        "/unstorable",
        Script {
            delay_ms: 300,
            ..script(&[("cache-control", "no-store")], "fresh each time")
        },
    );
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let fleet = fleet.clone();
            std::thread::spawn(move || fleet.get(i % 3, "/unstorable", &[]))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().status, 200);
    }
    assert_eq!(fleet.origin.count("/unstorable"), 6);
}

#[test]
fn the_in_process_tier_serves_an_invalidated_entry_for_at_most_local_ttl() {
    let fleet = Fleet::start("{ local_ttl: 1s }");
    fleet
        .origin
        .set("/tiered", script(&[("cache-control", "max-age=60")], "v1"));
    fleet.get(0, "/tiered", &[]);
    wait_stored(&fleet, 0, 1.0);
    one_hit(&fleet, 1, "/tiered", &[]);
    // Invalidated through C: B's tier may still have it, for at most local_ttl.
    let post = raw_request(
        fleet.gateways[2].addr(),
        b"POST /tiered HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(post.status, 200);
    // C invalidated its own tier at once.
    let c = fleet.get(2, "/tiered", &[]);
    assert!(
        c.header("cache-status").unwrap().contains("fwd=uri-miss"),
        "{:?}",
        c.headers
    );
    wait_stored(&fleet, 2, 1.0);
    // Past the bound, B reads the store again (C's new entry: a hit from the store, or a miss).
    std::thread::sleep(Duration::from_millis(1100));
    fleet
        .origin
        .set("/tiered", script(&[("cache-control", "max-age=60")], "v2"));
    // B reads C's entry into its tier, then A invalidates it.
    assert_eq!(one_hit(&fleet, 1, "/tiered", &[]).body, "v1");
    let post = raw_request(
        fleet.gateways[0].addr(),
        b"POST /tiered HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(post.status, 200);
    let within = fleet.get(1, "/tiered", &[]);
    assert!(within.body == "v1" || within.body == "v2", "{}", within.body);
    std::thread::sleep(Duration::from_millis(1100));
    let b = fleet.get(1, "/tiered", &[]);
    assert_eq!(b.body, "v2", "after local_ttl, B no longer serves what A invalidated");
}

#[test]
fn stale_while_revalidate_serves_stale_at_once_and_refreshes_behind() {
    let fleet = Fleet::start("{}");
    fleet.origin.set(
        "/swr",
        script(
            &[
                ("cache-control", "max-age=1, stale-while-revalidate=60"),
                ("etag", "\"s1\""),
            ],
            "swr body",
        ),
    );
    fleet.get(0, "/swr", &[]);
    wait_stored(&fleet, 0, 1.0);
    std::thread::sleep(Duration::from_millis(2100));
    let stale = fleet.get(1, "/swr", &[]);
    assert_eq!(stale.body, "swr body");
    let status = stale.header("cache-status").unwrap();
    assert!(
        status.contains("hit") && status.contains("stale-while-revalidate"),
        "{status}"
    );
    // The background revalidation: one conditional request upstream, and the entry fresh again.
    let started = Instant::now();
    while fleet.origin.count("/swr") < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no background revalidation"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let calls = fleet.origin.calls("/swr");
    assert_eq!(calls[1].header("if-none-match"), Some("\"s1\""));
    assert!(
        calls[1].header("x-fleetgate-cache-refresh").is_none(),
        "the marker never goes upstream"
    );
    // Served stale (at most until the refreshed entry is written), then fresh.
    let started = Instant::now();
    loop {
        let r = fleet.get(2, "/swr", &[]);
        let status = r.header("cache-status").unwrap().to_string();
        assert!(status.contains("; hit"), "{status}");
        if !status.contains("stale") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the entry was never refreshed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fleet.origin.count("/swr"), 2, "one revalidation for the fleet");
}
