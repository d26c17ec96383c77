//! The login's fleet logic on the in-process store: two `UpstreamLogin`s on one store stand
//! for two instances; the login endpoint is a counting stand-in.

use super::*;
use fleetgate_store::{MemoryStore, StoreDriver};
use std::sync::atomic::AtomicUsize;

/// Status, headers (none: `Set-Cookie: sid=sN`) and body of the login's answer.
type Answer = (u16, Vec<(&'static str, String)>, &'static str);

struct CountingEndpoint {
    logins: AtomicUsize,
    answer: Mutex<Answer>,
}

impl CountingEndpoint {
    fn new() -> Arc<Self> {
        Arc::new(CountingEndpoint {
            logins: AtomicUsize::new(0),
            answer: Mutex::new((200, vec![], "")),
        })
    }
    fn logins(&self) -> usize {
        self.logins.load(Ordering::SeqCst)
    }
}

impl LoginClient for CountingEndpoint {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, String>> {
        Box::pin(async move {
            assert_eq!(req.uri().path(), "/login");
            assert_eq!(req.body().as_ref(), b"{\"user\":\"u\"}");
            let n = self.logins.fetch_add(1, Ordering::SeqCst) + 1;
            // Long enough that concurrent callers overlap with the login.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let (status, headers, body) = self.answer.lock().clone();
            let mut b = Response::builder().status(status);
            if status == 200 && headers.is_empty() {
                b = b.header("set-cookie", format!("sid=s{n}; HttpOnly"));
            }
            for (k, v) in headers {
                b = b.header(k, v);
            }
            Ok(b.body(Bytes::from_static(body.as_bytes())).unwrap())
        })
    }
}

fn login(key: Option<SealKey>) -> UpstreamLogin {
    let mut config = LoginConfig::new(
        http::Method::POST,
        "/login",
        Capture::Cookie("sid".into()),
        Inject::Cookie("sid".into()),
    );
    config.body = "{\"user\":\"u\"}".into();
    config.encryption_key = key;
    config.backoff = Duration::from_secs(30);
    UpstreamLogin::new(&Keyspace::new("t").unwrap(), "billing", config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_on_two_instances_make_one_login() {
    let store = MemoryStore::new();
    let endpoint = CountingEndpoint::new();
    let (a, b) = (Arc::new(login(None)), Arc::new(login(None)));
    let (ca, cb) = (StoreCtx::new(store.clone(), "a"), StoreCtx::new(store.clone(), "b"));
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (login, ctx, endpoint) = if i % 2 == 0 {
            (a.clone(), ca.clone(), endpoint.clone())
        } else {
            (b.clone(), cb.clone(), endpoint.clone())
        };
        tasks.push(tokio::spawn(async move { login.credential(&ctx, &*endpoint).await }));
    }
    for t in tasks {
        let cred = t.await.unwrap().unwrap();
        assert_eq!(cred.expose(), "s1");
        assert!(!cred.local);
    }
    assert_eq!(endpoint.logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_refusals_of_one_credential_make_one_relogin() {
    let store = MemoryStore::new();
    let endpoint = CountingEndpoint::new();
    let (a, b) = (Arc::new(login(None)), Arc::new(login(None)));
    let (ca, cb) = (StoreCtx::new(store.clone(), "a"), StoreCtx::new(store.clone(), "b"));
    let first = a.credential(&ca, &*endpoint).await.unwrap();
    assert_eq!(b.credential(&cb, &*endpoint).await.unwrap(), first);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (login, ctx) = if i % 2 == 0 {
            (a.clone(), ca.clone())
        } else {
            (b.clone(), cb.clone())
        };
        let (endpoint, stale) = (endpoint.clone(), first.clone());
        tasks.push(tokio::spawn(
            async move { login.refresh(&ctx, &*endpoint, &stale).await },
        ));
    }
    for t in tasks {
        let cred = t.await.unwrap().unwrap();
        assert_eq!(cred.expose(), "s2");
        assert!(cred.generation > first.generation);
    }
    assert_eq!(endpoint.logins(), 2, "one login, then one re-login");
}

#[tokio::test]
async fn a_failed_login_is_not_tried_again_until_the_backoff_ends() {
    let store = MemoryStore::new();
    let endpoint = CountingEndpoint::new();
    *endpoint.answer.lock() = (200, vec![("content-type", "text/html".into())], "<html>sign in</html>");
    let (a, b) = (login(None), login(None));
    let (ca, cb) = (StoreCtx::new(store.clone(), "a"), StoreCtx::new(store.clone(), "b"));
    let e = a.credential(&ca, &*endpoint).await.unwrap_err();
    assert!(matches!(&e, LoginError::Failed(m) if m.contains("HTML")), "{e:?}");
    let answer = e.answer("billing");
    assert_eq!(answer.status(), StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(answer.body()).contains("answered HTML"));
    for _ in 0..5 {
        let again = a.credential(&ca, &*endpoint).await.unwrap_err();
        assert!(matches!(again, LoginError::BackingOff { .. }), "{again:?}");
        let other = b.credential(&cb, &*endpoint).await.unwrap_err();
        assert!(
            matches!(other, LoginError::BackingOff { .. }),
            "the other instance reads the fleet's failure: {other:?}"
        );
        assert!(other
            .answer("billing")
            .headers()
            .contains_key(http::header::RETRY_AFTER));
    }
    assert_eq!(endpoint.logins(), 1);
}

#[tokio::test]
async fn the_stored_credential_is_sealed() {
    let store = MemoryStore::new();
    let endpoint = CountingEndpoint::new();
    let a = login(Some(SealKey::from_bytes([3; 32])));
    let ctx = StoreCtx::new(store.clone(), "a");
    assert_eq!(a.credential(&ctx, &*endpoint).await.unwrap().expose(), "s1");
    let stored = store.get(&a.record_key).await.unwrap().unwrap();
    assert!(
        !stored.windows(2).any(|w| w == b"s1"),
        "the credential is not readable in the store"
    );
    // An instance with another key cannot read it, and logs in again rather than using junk.
    let b = login(Some(SealKey::from_bytes([4; 32])));
    let cb = StoreCtx::new(store.clone(), "b");
    assert_eq!(b.credential(&cb, &*endpoint).await.unwrap().expose(), "s2");
    assert!(!format!("{:?}", b.credential(&cb, &*endpoint).await.unwrap()).contains("s2"));
}

#[test]
fn a_json_capture_needs_an_inject_and_open_is_refused() {
    let parse = |yaml: &str| -> Result<LoginConfig, String> {
        serde_json::from_str::<LoginConfig>(yaml).map_err(|e| e.to_string())
    };
    let e = parse(r#"{"path":"/login","capture":{"json":"token"}}"#).unwrap_err();
    assert!(e.contains(".inject"), "{e}");
    let ok = parse(
        r#"{"path":"/login","capture":{"json":"data.token"},"inject":{"header":"authorization","format":"Bearer {}"}}"#,
    )
    .unwrap();
    assert_eq!(ok.capture, Capture::Json(vec!["data".into(), "token".into()]));
    let e = parse(r#"{"path":"/login","capture":{"cookie":"sid"},"on_store_error":"open"}"#).unwrap_err();
    assert!(e.contains("open is not accepted"), "{e}");
    let e = parse(r#"{"path":"/login","capture":{"cookie":"sid","header":"x"}}"#).unwrap_err();
    assert!(e.contains("exactly one of"), "{e}");
    let e =
        parse(r#"{"path":"/login","capture":{"cookie":"sid"},"inject":{"header":"x","format":"none"}}"#).unwrap_err();
    assert!(e.contains("exactly once"), "{e}");
    let e = parse(r#"{"path":"/login","capture":{"cookie":"sid"},"retry_body_limit":-1}"#).unwrap_err();
    assert!(e.contains("out of range"), "{e}");
    let secret = parse(r#"{"path":"/login","body":"pw=hunter2","capture":{"cookie":"sid"}}"#).unwrap();
    assert!(!format!("{secret:?}").contains("hunter2"));
}

/// The tower layer around an outbound client: the inner service is the upstream (its `/login`
/// issues sessions, other paths want one), the request is sent again after one refresh.
#[tokio::test]
async fn the_layer_injects_the_credential_and_sends_again_after_a_refresh() {
    use tower::ServiceExt;
    let sessions = Arc::new(Mutex::new(Vec::<String>::new()));
    let logins = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let (sessions, logins) = (sessions.clone(), logins.clone());
        tower::service_fn(move |req: Request<Bytes>| {
            let (sessions, logins) = (sessions.clone(), logins.clone());
            async move {
                if req.uri().path() == "/login" {
                    let n = logins.fetch_add(1, Ordering::SeqCst) + 1;
                    sessions.lock().push(format!("s{n}"));
                    let resp = Response::builder()
                        .header("set-cookie", format!("sid=s{n}"))
                        .body(http_body_util::Full::new(Bytes::new()))
                        .unwrap();
                    return Ok::<_, std::convert::Infallible>(resp);
                }
                let cookie = req.headers().get("cookie").and_then(|c| c.to_str().ok()).unwrap_or("");
                let ok = sessions.lock().iter().any(|s| cookie == format!("sid={s}"));
                let status = if ok { 200 } else { 401 };
                let body = http_body_util::Full::new(req.into_body());
                Ok(Response::builder().status(status).body(body).unwrap())
            }
        })
    };
    let config = LoginConfig::new(
        http::Method::POST,
        "/login",
        Capture::Cookie("sid".into()),
        Inject::Cookie("sid".into()),
    );
    let login = UpstreamLogin::new(&Keyspace::new("t").unwrap(), "api", config);
    let service = tower::Layer::layer(
        &layer::LoginLayer::new(login, StoreCtx::new(MemoryStore::new(), "a")),
        upstream,
    );
    let call = |body: &'static str| {
        let req = Request::post("/orders")
            .body(Bytes::from_static(body.as_bytes()))
            .unwrap();
        service.clone().oneshot(req)
    };
    assert_eq!(call("one").await.unwrap().status(), 200);
    assert_eq!(logins.load(Ordering::SeqCst), 1);
    sessions.lock().clear();
    let resp = call("two").await.unwrap();
    assert_eq!(resp.status(), 200, "sent again with the new credential");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.as_ref(), b"two", "with its body");
    assert_eq!(logins.load(Ordering::SeqCst), 2, "one re-login");
}
