//! Forward auth and gateway sessions end to end: the real binary, an auth service stand-in that
//! records every check (and answers allow, deny, redirect, error or slowly by the credential),
//! a real upstream that echoes the headers it got, and for the fleet properties three instances
//! on one real Redis.

mod common;

use bytes::Bytes;
use common::stand_in::StandIn;
use common::*;
use fleetgate_testkit::RedisServer;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One check the auth service received.
#[derive(Clone, Debug)]
struct Check {
    headers: Vec<(String, String)>,
}

impl Check {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The auth service stand-in, on its own runtime thread. By `Authorization`:
/// `Bearer good-ID` allows with `x-user-id: ID` (`Bearer good-` allows without it);
/// `Bearer bad` is 401 with `WWW-Authenticate` and a JSON body; `Bearer slow` answers after
/// 3 s; `Bearer boom` is 500; anything else (none included) is 302 to a login page.
struct AuthService {
    port: u16,
    checks: Arc<parking_lot::Mutex<Vec<Check>>>,
    /// Milliseconds every answer waits first (to make concurrent checks overlap).
    delay_ms: Arc<AtomicUsize>,
    _server: StandIn,
}

impl AuthService {
    fn start() -> AuthService {
        let checks = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let (c, d) = (checks.clone(), delay_ms.clone());
        let server = StandIn::start(move |req| {
            let (c, d) = (c.clone(), d.clone());
            async move { authorize(req, &c, &d).await }
        });
        AuthService {
            port: server.port,
            checks,
            delay_ms,
            _server: server,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/check", self.port)
    }
    fn count(&self) -> usize {
        self.checks.lock().len()
    }
    /// Checks made with this `Authorization` value.
    fn count_for(&self, authorization: &str) -> usize {
        self.checks
            .lock()
            .iter()
            .filter(|c| c.header("authorization") == Some(authorization))
            .count()
    }
    fn last(&self) -> Check {
        self.checks.lock().last().cloned().expect("a check was made")
    }
}

async fn authorize(
    req: Request<Incoming>,
    checks: &parking_lot::Mutex<Vec<Check>>,
    delay_ms: &AtomicUsize,
) -> Response<Full<Bytes>> {
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    headers.push((":method".into(), req.method().to_string()));
    headers.push((":path".into(), req.uri().to_string()));
    let check = Check { headers };
    checks.lock().push(check.clone());
    let delay = delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let auth = check.header("authorization").unwrap_or("").to_string();
    let b = Response::builder();
    if let Some(id) = auth.strip_prefix("Bearer good-") {
        let b = if id.is_empty() { b } else { b.header("x-user-id", id) };
        return b.status(200).body(Full::new(Bytes::new())).unwrap();
    }
    match auth.as_str() {
        "Bearer bad" => b
            .status(401)
            .header("www-authenticate", "Bearer realm=\"app\", error=\"invalid_token\"")
            .header("content-type", "application/json")
            .header("x-internal", "not for clients")
            .body(Full::new(Bytes::from_static(b"{\"error\":\"invalid_token\"}")))
            .unwrap(),
        "Bearer slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            b.status(200).body(Full::new(Bytes::new())).unwrap()
        }
        "Bearer boom" => b
            .status(500)
            .body(Full::new(Bytes::from_static(b"stack trace")))
            .unwrap(),
        _ => {
            let next = check.header("x-forwarded-uri").unwrap_or("/").to_string();
            b.status(302)
                .header("location", format!("http://login.example/?next={next}"))
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
    }
}

/// A gateway config: every path to the upstream behind forward auth (sessions on, logout at
/// `/logout`), on `store`, with `extra` lines added to the route.
fn config(store: &str, auth_url: &str, upstream_port: u16, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\n  access_log: false\nstore:\n  url: {store}\n  key_prefix: fauth\n  timeout_ms: 300\nupstreams:\n  backend:\n    targets: [http://127.0.0.1:{upstream_port}]\nroutes:\n  - name: app\n    match: {{ path_prefix: / }}\n    upstream: backend\n    forward_auth:\n      url: {auth_url}\n      request_headers: [authorization, cookie]\n      upstream_headers: [x-user-id]\n      cache_ttl: 5m\n      deny_ttl: 1m\n      timeout: 500ms\n      session: {{ cookie: fg_session, ttl: 30m, logout_path: /logout }}\n      on_store_error: closed\n{extra}"
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The headers the upstream got, as the `/headers` echo reports them.
fn upstream_saw(r: &Reply) -> serde_json::Value {
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[test]
fn three_instances_verify_one_credential_once_within_cache_ttl() {
    let redis = RedisServer::start();
    let (auth, up) = (AuthService::start(), Upstream::start("backend"));
    let cfg = config(&redis.url(), &auth.url(), up.port, "");
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    let token = bearer("good-42");
    for round in 0..3 {
        for gw in &gws {
            let r = gw.get("/headers", &[("authorization", token.as_bytes())]);
            assert_eq!(upstream_saw(&r)["x-user-id"], "42", "round {round}: {r:?}");
        }
    }
    assert_eq!(auth.count_for(&token), 1, "one check for the fleet");
    let check = auth.last();
    assert_eq!(check.header(":method"), Some("GET"));
    assert_eq!(check.header("x-forwarded-method"), Some("GET"));
    assert_eq!(check.header("x-forwarded-uri"), Some("/headers"));
    assert_eq!(check.header("x-forwarded-host"), Some("127.0.0.1"));
    assert_eq!(check.header("x-forwarded-proto"), Some("http"));
    // Another credential is another verdict.
    let other = bearer("good-7");
    let r = gws[1].get("/headers", &[("authorization", other.as_bytes())]);
    assert_eq!(upstream_saw(&r)["x-user-id"], "7");
    assert_eq!(auth.count_for(&other), 1);
    // A burst of new identical requests over the fleet: at most one call per instance (single
    // flight on each, the store's cache between them).
    auth.delay_ms.store(300, Ordering::SeqCst);
    let burst = bearer("good-9");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let (gw, burst) = (&gws[i % 3], &burst);
                s.spawn(move || gw.get("/headers", &[("authorization", burst.as_bytes())]).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(count(&statuses, 200), 12, "{statuses:?}");
    let calls = auth.count_for(&burst);
    assert!((1..=3).contains(&calls), "{calls} calls for 12 requests on 3 instances");
    let metrics = metrics_of(&gws[2]);
    // C: three requests decided by the cache, four in the burst of which at most one asked.
    let (asked, not_asked) = (
        checks_counted(&metrics, "allow", "false"),
        checks_counted(&metrics, "allow", "true"),
    );
    assert!(asked <= 1.0 && asked + not_asked == 7.0, "{metrics}");
}

#[test]
fn concurrent_identical_checks_on_one_instance_share_one_call() {
    let (auth, up) = (AuthService::start(), Upstream::start("backend"));
    // Slow answers, so that the concurrent requests overlap at the auth service if they get there.
    auth.delay_ms.store(300, Ordering::SeqCst);
    let gw = Gateway::start(&config("memory://", &auth.url(), up.port, ""));
    let token = bearer("good-5");
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| gw.get("/headers", &[("authorization", token.as_bytes())]).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(count(&statuses, 200), 8, "{statuses:?}");
    assert_eq!(auth.count(), 1, "one call for eight concurrent checks");
    let metrics = metrics_of(&gw);
    assert_eq!(
        (
            checks_counted(&metrics, "allow", "false"),
            checks_counted(&metrics, "allow", "true")
        ),
        (1.0, 7.0),
        "{metrics}"
    );
}

#[test]
fn denials_reach_the_client_as_the_auth_service_answered() {
    let (auth, up) = (AuthService::start(), Upstream::start("backend"));
    let gw = Gateway::start(&config("memory://", &auth.url(), up.port, ""));
    let bad = bearer("bad");
    for _ in 0..2 {
        let r = gw.get("/headers", &[("authorization", bad.as_bytes())]);
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"app\", error=\"invalid_token\"")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, "{\"error\":\"invalid_token\"}");
        assert_eq!(r.header("x-internal"), None, "only the denial's own headers pass");
    }
    assert_eq!(auth.count_for(&bad), 1, "a denial is cached too");
    // A redirect names the original URL: never replayed to another request.
    for path in ["/app/page?x=1", "/app/other"] {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, 302, "{r:?}");
        let location = format!("http://login.example/?next={path}");
        assert_eq!(r.header("location"), Some(location.as_str()));
    }
    // Nor shared between concurrent requests for different URLs.
    auth.delay_ms.store(300, Ordering::SeqCst);
    let paths = ["/app/a", "/app/b", "/app/c", "/app/d"];
    let replies: Vec<Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = paths.iter().map(|p| s.spawn(|| gw.get(p, &[]))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (path, r) in paths.iter().zip(&replies) {
        let location = format!("http://login.example/?next={path}");
        assert_eq!(r.header("location"), Some(location.as_str()), "{r:?}");
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "nothing denied reaches the upstream");
}

#[test]
fn identity_headers_come_only_from_the_auth_service() {
    let (auth, up) = (AuthService::start(), Upstream::start("backend"));
    let gw = Gateway::start(&config("memory://", &auth.url(), up.port, ""));
    let good = bearer("good-42");
    let r = gw.get(
        "/headers",
        &[
            ("authorization", good.as_bytes()),
            ("x-user-id", b"admin"),
            ("X-User-Id", b"root"),
        ],
    );
    assert_eq!(upstream_saw(&r)["x-user-id"], "42", "the forged copies are gone");
    // An allowing answer without the header: the client's copy is removed all the same.
    let anonymous = bearer("good-");
    let r = gw.get(
        "/headers",
        &[("authorization", anonymous.as_bytes()), ("x-user-id", b"admin")],
    );
    assert_eq!(upstream_saw(&r).get("x-user-id"), None, "{r:?}");
    // The auth service is never shown the forged header either.
    assert!(auth.last().header("x-user-id").is_none());
}

#[test]
fn a_session_made_on_one_instance_works_on_the_others_until_logout() {
    let redis = RedisServer::start();
    let (auth, up) = (AuthService::start(), Upstream::start("backend"));
    let cfg = config(&redis.url(), &auth.url(), up.port, "");
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    let good = bearer("good-42");
    let r = a.get("/headers", &[("authorization", good.as_bytes())]);
    assert_eq!(upstream_saw(&r)["x-user-id"], "42");
    let set_cookie = r.header("set-cookie").expect("a session cookie").to_string();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{attribute}: {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "not over plain HTTP: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let id = cookie.strip_prefix("fg_session=").expect("the configured name");
    assert!(id.len() >= 32, "at least 128 random bits: {id}");
    let checks = auth.count();
    // Only the cookie: B and C know the session without asking (without it, the auth service
    // would redirect a request without credentials).
    for gw in [&b, &c, &a] {
        let with_other = format!("theme=dark; {cookie}");
        let r = gw.get(
            "/headers",
            &[("cookie", with_other.as_bytes()), ("x-user-id", b"admin")],
        );
        let saw = upstream_saw(&r);
        assert_eq!(saw["x-user-id"], "42", "the session's identity, not the forged one");
        assert_eq!(saw["cookie"], "theme=dark", "the session id never reaches the upstream");
    }
    assert_eq!(auth.count(), checks, "no auth call while the session lives");
    // Logout on B ends it on every instance.
    let r = b.get("/logout", &[("cookie", cookie.as_bytes())]);
    assert_eq!(r.status, 200, "{r:?}");
    let cleared = r.header("set-cookie").expect("the cookie is cleared");
    assert!(
        cleared.starts_with("fg_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    for gw in [&a, &c] {
        let r = gw.get("/headers", &[("cookie", cookie.as_bytes())]);
        assert_eq!(r.status, 302, "the session is gone: the auth service decides: {r:?}");
    }
    assert!(auth.count() > checks, "after logout the auth service is asked again");
    let sent = auth.last();
    assert!(
        sent.header("cookie").is_none_or(|c| !c.contains("fg_session")),
        "the auth service never sees the session id: {sent:?}"
    );
}

#[test]
fn forged_or_unknown_session_cookies_fall_back_to_the_auth_call() {
    let (auth, up) = (AuthService::start(), Upstream::start("backend"));
    let gw = Gateway::start(&config("memory://", &auth.url(), up.port, ""));
    for (i, forged) in [
        "fg_session=0123456789abcdef0123456789abcdef",
        "fg_session=not-an-id",
        "fg_session=",
    ]
    .into_iter()
    .enumerate()
    {
        let before = auth.count();
        let r = gw.get("/headers", &[("cookie", forged.as_bytes())]);
        assert_eq!(r.status, 302, "{forged}: {r:?}");
        // No session: the auth service decides (a redirect is never cached).
        assert_eq!(auth.count(), before + 1, "{forged}");
        let token = bearer(&format!("good-{i}"));
        let r = gw.get(
            "/headers",
            &[("cookie", forged.as_bytes()), ("authorization", token.as_bytes())],
        );
        assert_eq!(upstream_saw(&r)["x-user-id"], i.to_string(), "{forged}");
        assert_eq!(auth.count_for(&token), 1, "{forged}: the auth service decided");
    }
}

#[test]
fn auth_service_failures_give_502_and_are_not_cached() {
    let (auth, up) = (AuthService::start(), Upstream::start("backend"));
    let gw = Gateway::start(&config("memory://", &auth.url(), up.port, ""));
    let boom = bearer("boom");
    for _ in 0..2 {
        let r = gw.get("/headers", &[("authorization", boom.as_bytes())]);
        assert_eq!(r.status, 502, "{r:?}");
        assert_eq!(r.json()["error"], "forward_auth_error");
        assert!(!r.body.contains("stack trace"), "the service's error page stays inside");
    }
    assert_eq!(auth.count_for(&boom), 2, "an error is no verdict: asked again");
    let slow = bearer("slow");
    let r = gw.get("/headers", &[("authorization", slow.as_bytes())]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.json()["error"], "forward_auth_timeout");
    // An auth service that is not there.
    let closed_port = free_port();
    let gw2 = Gateway::start(&config(
        "memory://",
        &format!("http://127.0.0.1:{closed_port}/check"),
        up.port,
        "",
    ));
    let good = bearer("good-1");
    let r = gw2.get("/headers", &[("authorization", good.as_bytes())]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.json()["error"], "forward_auth_unreachable");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    let metrics = metrics_of(&gw);
    assert_eq!(checks_counted(&metrics, "error", "false"), 3.0, "{metrics}");
}

#[test]
fn with_redis_down_closed_answers_503_at_once() {
    let mut redis = RedisServer::start();
    let (auth, up) = (AuthService::start(), Upstream::start("backend"));
    let gw = Gateway::start(&config(&redis.url(), &auth.url(), up.port, ""));
    let good = bearer("good-42");
    let r = gw.get("/headers", &[("authorization", good.as_bytes())]);
    assert_eq!(upstream_saw(&r)["x-user-id"], "42");
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    let (checks, hits) = (auth.count(), up.hits.load(Ordering::SeqCst));
    redis.kill();
    wait_store(&gw, "down");
    for _ in 0..3 {
        let fresh = bearer("good-43");
        for headers in [
            vec![("authorization", good.as_bytes())],
            vec![("authorization", fresh.as_bytes())],
            vec![("cookie", cookie.as_bytes())],
        ] {
            let r = gw.get("/headers", &headers);
            assert_eq!(r.status, 503, "{r:?}");
            assert_eq!(r.json()["error"], "store_unavailable");
        }
    }
    assert_eq!(auth.count(), checks, "the auth service is not asked");
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        hits,
        "nothing unchecked reaches the upstream"
    );
}

#[test]
fn a_rate_limit_can_count_by_the_verified_identity() {
    let (auth, up) = (AuthService::start(), Upstream::start("backend"));
    let limit = "    rate_limits:\n      - name: per-user\n        key: header:x-user-id\n        rate: 1/1h\n";
    let gw = Gateway::start(&config("memory://", &auth.url(), up.port, limit));
    let first = bearer("good-42");
    assert_eq!(gw.get("/headers", &[("authorization", first.as_bytes())]).status, 200);
    // A forged x-user-id cannot move a request into another user's budget: it is replaced
    // before the limit reads it.
    let r = gw.get(
        "/headers",
        &[("authorization", first.as_bytes()), ("x-user-id", b"someone-else")],
    );
    assert_eq!(r.status, 429, "{r:?}");
    let other = bearer("good-7");
    assert_eq!(gw.get("/headers", &[("authorization", other.as_bytes())]).status, 200);
}

fn metrics_of(gw: &Gateway) -> String {
    http_get(gw.admin_addr(), "/metrics", &[]).expect("metrics").body
}

/// `fleetgate_forward_auth_total` of route `app` with this outcome and `cached` label.
fn checks_counted(metrics: &str, outcome: &str, cached: &str) -> f64 {
    let (o, c) = (format!("outcome=\"{outcome}\""), format!("cached=\"{cached}\""));
    metrics
        .lines()
        .filter(|l| l.starts_with("fleetgate_forward_auth_total{") && l.contains(&o) && l.contains(&c))
        .filter(|l| l.contains("route=\"app\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
