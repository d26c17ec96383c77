//! The stages on the in-process store with a stand-in auth client (the end-to-end tests, with
//! the real binary and Redis, are in crates/fleetgate/tests/forward_auth.rs).

use super::*;
use crate::payment::BoxFuture;
use fleetgate_store::MemoryStore;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Allows `Bearer ok` as user 42, denies anything else with 401; counts calls.
struct StandIn {
    calls: AtomicUsize,
}

impl AuthClient for StandIn {
    fn check<'a>(&'a self, _url: &'a str, headers: HeaderMap) -> BoxFuture<'a, Result<AuthAnswer, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::task::yield_now().await;
            let mut answer = AuthAnswer {
                status: 401,
                headers: HeaderMap::new(),
                body: Bytes::from_static(b"no"),
            };
            if headers.get("authorization").is_some_and(|v| v == "Bearer ok") {
                answer.status = 200;
                answer.headers.insert("x-user-id", HeaderValue::from_static("42"));
            }
            Ok(answer)
        })
    }
}

fn config(session: bool) -> ForwardAuthConfig {
    let mut v = serde_json::json!({"url": "http://auth/check", "upstream_headers": ["x-user-id"]});
    if session {
        v["session"] = serde_json::json!({"logout_path": "/logout"});
    }
    serde_json::from_value(v).unwrap()
}

fn request(headers: &[(&'static str, &str)], path: &str, tls: bool) -> Parts {
    let mut b = http::Request::get(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (mut parts, ()) = b.body(()).unwrap().into_parts();
    if tls {
        parts.extensions.insert(crate::context::ArrivedOverTls);
    }
    parts
}

struct Fixture {
    client: Arc<StandIn>,
    session: Option<Session>,
    auth: ForwardAuth,
    ctx: StoreCtx<MemoryStore>,
}

fn fixture(session: bool) -> Fixture {
    let client = Arc::new(StandIn {
        calls: AtomicUsize::new(0),
    });
    let keyspace = Keyspace::new("t").unwrap();
    let dyn_client: Arc<dyn AuthClient> = client.clone();
    let (session, auth) = for_route(&keyspace, "app", Some(&config(session)), &dyn_client);
    Fixture {
        client,
        session,
        auth: auth.unwrap(),
        ctx: StoreCtx::new(MemoryStore::new(), "i1"),
    }
}

impl Fixture {
    /// Runs session then forward auth on `req`; the answer if one of them answered, and the
    /// `Set-Cookie` of the way out.
    async fn run(&self, req: &mut Parts) -> (Option<Response<Bytes>>, Option<HeaderValue>) {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let mut cx = RequestCtx::new(&self.ctx, ip, "app");
        if let Some(s) = &self.session {
            if let Flow::Answer(a) = s.request(&mut cx, req).await {
                return (Some(a), None);
            }
        }
        if let Flow::Answer(a) = self.auth.request(&mut cx, req).await {
            return (Some(a), None);
        }
        let mut resp = Response::new(());
        self.auth.response(&mut cx, &mut resp).await;
        (None, resp.headers().get(header::SET_COOKIE).cloned())
    }
}

#[tokio::test]
async fn concurrent_identical_checks_share_one_call_and_later_ones_read_the_cache() {
    let f = fixture(false);
    let runs = (0..16).map(|_| async {
        let mut req = request(&[("authorization", "Bearer ok"), ("x-user-id", "forged")], "/x", false);
        let (answer, _) = f.run(&mut req).await;
        assert!(answer.is_none());
        let ids: Vec<_> = req.headers.get_all("x-user-id").iter().collect();
        assert_eq!(ids, ["42"], "only the auth service's identity");
    });
    futures_util::future::join_all(runs).await;
    assert_eq!(f.client.calls.load(Ordering::SeqCst), 1);
    let mut req = request(&[("authorization", "Bearer ok")], "/y", false);
    f.run(&mut req).await;
    assert_eq!(f.client.calls.load(Ordering::SeqCst), 1, "cached");
}

#[tokio::test]
async fn a_denial_is_answered_and_cached() {
    let f = fixture(false);
    for _ in 0..2 {
        let mut req = request(&[("authorization", "Bearer nope")], "/x", false);
        let (answer, _) = f.run(&mut req).await;
        let answer = answer.expect("denied");
        assert_eq!((answer.status().as_u16(), answer.body().as_ref()), (401, &b"no"[..]));
    }
    assert_eq!(f.client.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sessions_skip_the_check_are_secure_over_tls_and_end_at_logout() {
    let f = fixture(true);
    let mut req = request(&[("authorization", "Bearer ok")], "/x", true);
    let (answer, cookie) = f.run(&mut req).await;
    assert!(answer.is_none());
    let cookie = cookie.expect("a session").to_str().unwrap().to_string();
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let mut req = request(&[("cookie", &pair), ("x-user-id", "forged")], "/x", false);
    let (answer, again) = f.run(&mut req).await;
    assert!(answer.is_none() && again.is_none(), "no new session");
    assert_eq!(req.headers["x-user-id"], "42");
    assert!(req.headers.get("cookie").is_none(), "the session id goes no further");
    assert_eq!(f.client.calls.load(Ordering::SeqCst), 1, "the session answered");
    let mut req = request(&[("cookie", &pair)], "/logout", false);
    let (answer, _) = f.run(&mut req).await;
    let answer = answer.expect("logout answers");
    assert_eq!(answer.status(), 200);
    assert!(answer.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let mut req = request(&[("cookie", &pair)], "/x", false);
    let (answer, _) = f.run(&mut req).await;
    assert_eq!(answer.expect("checked: no credentials").status(), 401);
    assert_eq!(f.client.calls.load(Ordering::SeqCst), 2);
}
