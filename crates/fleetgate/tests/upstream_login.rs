//! Upstream login once for the fleet (`upstreams.NAME.login`): real gateway processes on one
//! real Redis, and a stand-in upstream that counts its logins and refuses (401) any request
//! without a session it issued.

mod common;

use bytes::Bytes;
use common::*;
use fleetgate_testkit::RedisServer;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LOGIN_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The stand-in upstream. `POST /login` with the expected body issues `sid=SECRET-N` (after a
/// short pause, so concurrent callers overlap it); `/login-html`, `/login-redirect`,
/// `/login-slow` (3 s) and `/login-empty` (JSON without the field) are bad login endpoints.
/// Any other path needs a live session: it answers `ok <path> <body>`, else 401.
#[derive(Default)]
struct Backend {
    logins: AtomicUsize,
    bad_logins: Mutex<Vec<String>>,
    sessions: Mutex<HashSet<String>>,
    refused: AtomicUsize,
    served: AtomicUsize,
}

impl Backend {
    fn logins(&self) -> usize {
        self.logins.load(Ordering::SeqCst)
    }
    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
    /// Ends every session, as an upstream restart or a session timeout would.
    fn invalidate(&self) {
        self.sessions.lock().clear();
    }
    fn bad_logins(&self, path: &str) -> usize {
        self.bad_logins.lock().iter().filter(|p| *p == path).count()
    }

    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let cookie = req
            .headers()
            .get("cookie")
            .and_then(|c| c.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = |status: u16, body: String| {
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        match path.as_str() {
            "/login" => {
                if body.as_ref() != br#"{"user":"ann","pass":"pw"}"# {
                    return text(403, "bad credentials".into());
                }
                let n = self.logins.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let sid = format!("SECRET-{n}");
                self.sessions.lock().insert(sid.clone());
                Response::builder()
                    .header("set-cookie", format!("sid={sid}; HttpOnly; Path=/"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                    .unwrap()
            }
            "/login-html" | "/login-redirect" | "/login-slow" | "/login-empty" => {
                self.bad_logins.lock().push(path.clone());
                match path.as_str() {
                    "/login-html" => Response::builder()
                        .header("content-type", "text/html")
                        .body(Full::new(Bytes::from_static(b"<html><form>sign in</form></html>")))
                        .unwrap(),
                    "/login-redirect" => Response::builder()
                        .status(302)
                        .header("location", "/sso/start")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                    "/login-slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        text(200, "{}".into())
                    }
                    _ => Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(b"{\"user\":\"ann\"}")))
                        .unwrap(),
                }
            }
            _ => {
                let sid = cookie
                    .split(';')
                    .filter_map(|p| p.trim().strip_prefix("sid="))
                    .next()
                    .unwrap_or("")
                    .to_string();
                if !self.sessions.lock().contains(&sid) {
                    self.refused.fetch_add(1, Ordering::SeqCst);
                    return text(401, "no session".into());
                }
                self.served.fetch_add(1, Ordering::SeqCst);
                text(200, format!("ok {path} {}", String::from_utf8_lossy(&body)))
            }
        }
    }
}

/// Serves `backend` on a free loopback port, on a thread of its own, until the test ends.
fn serve(backend: Arc<Backend>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let backend = backend.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let backend = backend.clone();
                        async move { Ok::<_, std::convert::Infallible>(backend.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    addr
}

fn config(store: &str, backend: SocketAddr, login_extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: info\n  access_log: false\nstore:\n  url: {store}\n  key_prefix: login\n  timeout_ms: 500\nupstreams:\n  app:\n    targets: [http://{backend}]\n    login:\n      path: /login\n      headers: {{ content-type: application/json }}\n      body: '{{\"user\":\"${{UP_USER}}\",\"pass\":\"${{UP_PASS}}\"}}'\n      capture: {{ cookie: sid }}\n      encryption_key: ${{FLEETGATE_LOGIN_KEY}}\n{login_extra}routes:\n  - name: api\n    upstream: app\n"
    )
}

const ENV: &[(&str, &str)] = &[
    ("UP_USER", "ann"),
    ("UP_PASS", "pw"),
    ("FLEETGATE_LOGIN_KEY", LOGIN_KEY),
];

fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw_request(addr, req.as_bytes()).expect("request to gateway")
}

fn logs(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn thirty_first_requests_over_three_instances_make_one_login_and_one_relogin() {
    let redis = RedisServer::start();
    let backend = Arc::new(Backend::default());
    let cfg = config(&redis.url(), serve(backend.clone()), "");
    let dir = std::env::temp_dir();
    let log_paths: Vec<_> = (0..3)
        .map(|i| dir.join(format!("fleetgate-login-{}-{i}.log", std::process::id())))
        .collect();
    let fleet: Vec<Gateway> = log_paths
        .iter()
        .map(|l| Gateway::spawn_with(&cfg, ENV, Some(l)))
        .collect();
    let refs: Vec<&Gateway> = fleet.iter().collect();

    let statuses = drive(&refs, "/orders", 30, 30);
    assert_eq!(count(&statuses, 200), 30, "{statuses:?}");
    println!(
        "upstream login: 30 first requests over 3 instances made {} login(s), expected 1",
        backend.logins()
    );
    assert_eq!(backend.logins(), 1, "one login for the fleet");
    assert_eq!(backend.refused(), 0, "no request went out without the credential");

    // The upstream forgets every session: the next requests are refused once each at most,
    // and the fleet logs in once more.
    backend.invalidate();
    let statuses = drive(&refs, "/orders", 30, 30);
    println!(
        "upstream login: after the session ended, {} re-login(s) (expected 1), {} upstream 401s, statuses {:?}",
        backend.logins() - 1,
        backend.refused(),
        statuses
    );
    assert_eq!(count(&statuses, 200), 30, "no client sees the 401: {statuses:?}");
    assert_eq!(backend.logins(), 2, "exactly one re-login for the fleet");
    assert!(
        backend.refused() >= 1,
        "the stale credential was refused, then replaced"
    );

    // The store holds the credential sealed, and no log shows it.
    let keys = redis.command(&["KEYS", "login:auth:*"]);
    let key = keys
        .lines()
        .find(|l| l.starts_with("login:auth:"))
        .unwrap_or_else(|| panic!("no credential key in {keys:?}"))
        .to_string();
    let stored = redis.command(&["GET", &key]);
    assert!(
        !stored.is_empty() && !stored.contains("SECRET"),
        "sealed in the store: {stored:?}"
    );
    for l in &log_paths {
        let text = logs(l);
        assert!(!text.contains("SECRET"), "the credential is never logged:\n{text}");
    }
    let metrics = http_get(fleet[0].admin_addr(), "/metrics", &[]).unwrap().body;
    let all: f64 = fleet
        .iter()
        .map(|g| {
            metric_sum(
                &http_get(g.admin_addr(), "/metrics", &[]).unwrap().body,
                "fleetgate_upstream_logins_total{upstream=\"app\",outcome=\"ok\"}",
            )
        })
        .sum();
    assert_eq!(all, 2.0, "the fleet counts its two logins:\n{metrics}");
}

#[test]
fn a_post_body_is_sent_again_after_a_refresh_up_to_the_limit() {
    let backend = Arc::new(Backend::default());
    let addr = serve(backend.clone());
    let gw = Gateway::start_with_env(&config("memory://", addr, "      retry_body_limit: 16\n"), ENV);
    assert_eq!(post(gw.addr(), "/orders", "first").status, 200);
    assert_eq!(backend.logins(), 1);

    backend.invalidate();
    let r = post(gw.addr(), "/orders", "hello");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body, "ok /orders hello",
        "the body went again with the new credential"
    );
    assert_eq!(backend.logins(), 2);
    assert_eq!(backend.refused(), 1, "refused once with the old credential");

    // Longer than retry_body_limit: not kept, so the refusal goes to the client (and the
    // credential is still refreshed for the next request).
    backend.invalidate();
    let r = post(gw.addr(), "/orders", "a body longer than sixteen bytes");
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(backend.logins(), 3, "refreshed for the next requests");
    let r = post(gw.addr(), "/orders", "a body longer than sixteen bytes");
    assert_eq!(r.status, 200, "{}", r.body);
    let metrics = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
    assert_eq!(
        metric_sum(
            &metrics,
            "fleetgate_upstream_login_retries_total{upstream=\"app\",outcome=\"retried\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "fleetgate_upstream_login_retries_total{upstream=\"app\",outcome=\"not_kept\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[test]
fn with_redis_down_each_instance_logs_in_for_itself_and_recovers() {
    let mut redis = RedisServer::start();
    let backend = Arc::new(Backend::default());
    let cfg = config(&redis.url(), serve(backend.clone()), "");
    let (a, b) = (Gateway::start_with_env(&cfg, ENV), Gateway::start_with_env(&cfg, ENV));
    redis.kill();
    wait_store(&a, "down");
    wait_store(&b, "down");
    for gw in [&a, &b] {
        for _ in 0..3 {
            let r = gw.get("/orders", &[]);
            assert_eq!(r.status, 200, "served with a login of the instance's own: {}", r.body);
        }
    }
    println!(
        "upstream login, Redis down: {} logins for 2 instances (expected 2)",
        backend.logins()
    );
    assert_eq!(backend.logins(), 2, "each instance logged in once, for itself");
    let metrics = http_get(a.admin_addr(), "/metrics", &[]).unwrap().body;
    assert_eq!(
        metric_sum(
            &metrics,
            "fleetgate_upstream_logins_total{upstream=\"app\",outcome=\"ok_local\"}"
        ),
        1.0,
        "{metrics}"
    );

    // Redis is back: the instances share one login again, without a restart.
    redis.restart();
    wait_store(&a, "ok");
    wait_store(&b, "ok");
    backend.invalidate();
    let statuses = drive(&[&a, &b], "/orders", 20, 10);
    assert_eq!(count(&statuses, 200), 20, "{statuses:?}");
    println!(
        "upstream login, Redis back: {} more login(s) (expected 1)",
        backend.logins() - 2
    );
    assert_eq!(backend.logins(), 3, "one login for the fleet once the store is back");
}

#[test]
fn a_bad_login_endpoint_gets_a_502_with_a_clear_body_and_is_not_retried_in_a_loop() {
    let backend = Arc::new(Backend::default());
    let addr = serve(backend.clone());
    let upstream = |name: &str, path: &str, capture: &str| {
        format!("  {name}:\n    targets: [http://{addr}]\n    login:\n      path: {path}\n      capture: {capture}\n      inject: {{ header: authorization, format: \"Bearer {{}}\" }}\n      timeout: 300ms\n      backoff: 1m\n")
    };
    let route = |name: &str| format!("  - name: {name}\n    match: {{ path_prefix: /{name} }}\n    upstream: {name}\n");
    let cfg = format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\n  access_log: false\nupstreams:\n{}{}{}{}routes:\n{}{}{}{}",
        upstream("html", "/login-html", "{ json: token }"),
        upstream("redirect", "/login-redirect", "{ cookie: sid }"),
        upstream("slow", "/login-slow", "{ json: token }"),
        upstream("empty", "/login-empty", "{ json: token }"),
        route("html"),
        route("redirect"),
        route("slow"),
        route("empty"),
    );
    let log = std::env::temp_dir().join(format!("fleetgate-login-bad-{}.log", std::process::id()));
    let mut gw = Gateway::spawn_with(&cfg, &[], Some(&log));
    let cases = [
        ("html", "/login-html", "answered HTML", "html"),
        (
            "redirect",
            "/login-redirect",
            "redirected (302) to \\\"/sso/start\\\"",
            "redirect",
        ),
        ("slow", "/login-slow", "did not answer within 300 ms", "timeout"),
        ("empty", "/login-empty", "has no JSON field token", "missing_field"),
    ];
    for (name, path, says, outcome) in cases {
        let r = gw.get(&format!("/{name}/x"), &[]);
        assert_eq!(r.status, 502, "{name}: {}", r.body);
        assert_eq!(r.json()["error"], "upstream_login_failed", "{name}: {}", r.body);
        let message = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(&format!("upstream {name}")), "{name}: {message}");
        assert!(r.body.contains(says), "{name}: {}", r.body);
        // Backing off: answered at once, the login endpoint is not called again.
        for _ in 0..3 {
            let again = gw.get(&format!("/{name}/x"), &[]);
            assert_eq!(again.status, 502, "{name}: {}", again.body);
            assert!(again.header("retry-after").is_some(), "{name}: {:?}", again.headers);
        }
        assert_eq!(backend.bad_logins(path), 1, "{name}: one login try, then backoff");
        let metrics = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
        let needle = format!("fleetgate_upstream_logins_total{{upstream=\"{name}\",outcome=\"{outcome}\"}}");
        assert_eq!(metric_sum(&metrics, &needle), 1.0, "{needle} in:\n{metrics}");
        assert_eq!(
            metric_sum(
                &metrics,
                &format!("fleetgate_upstream_logins_total{{upstream=\"{name}\",outcome=\"backoff\"}}")
            ),
            3.0
        );
    }
    // The log is written in the background: read it once the gateway has exited (a graceful
    // exit flushes it), not while the last line may still be buffered.
    gw.terminate();
    let text = logs(&log);
    for (name, ..) in cases {
        assert!(
            text.lines()
                .any(|l| l.contains("upstream login failed") && l.contains(name)),
            "a log line for {name}:\n{text}"
        );
    }
}
