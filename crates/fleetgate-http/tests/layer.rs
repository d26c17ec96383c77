//! The stages as tower layers, on the in-process store: decisions, headers, client addresses,
//! permits held until the body is over, the complete phase, and typed errors for bad
//! parameters.

use bytes::Bytes;
use fleetgate_http::{
    pipeline, stages, Completion, Concurrency, ConcurrencyLimitConfig, FailurePolicy, Flow, KeyPart, MissingKey,
    RateLimitConfig, RateLimits, RequestCtx, Stage, StageError, StageLayer, StoreCtx, TrustedProxies,
};
use fleetgate_store::{Keyspace, MemoryStore, RateLimit, Store};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

fn keyspace() -> Keyspace {
    Keyspace::new("lib").unwrap()
}

fn ctx() -> StoreCtx {
    StoreCtx::new(Store::Memory(MemoryStore::new()), "test")
}

fn hello(
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone + Send {
    tower::service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello")))) })
}

fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().uri("/x");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    req
}

async fn text<B: http_body::Body<Data = Bytes>>(body: B) -> String
where
    B::Error: std::fmt::Debug,
{
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn per_key(rate: &str) -> RateLimitConfig {
    RateLimitConfig::new(
        "per-key",
        vec![KeyPart::Header("x-api-key".into())],
        RateLimit::gcra(rate).unwrap(),
    )
}

#[tokio::test]
async fn a_rate_limit_layer_limits_a_plain_tower_service() {
    let stage = RateLimits::for_route(&keyspace(), "api", &[per_key("2/1m")], &[]).unwrap();
    let svc = StageLayer::new(stage, ctx(), "api").layer(hello());
    let req = || request("192.0.2.1:5000", &[("x-api-key", "k")]);
    for remaining in [1, 0] {
        let resp = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let ratelimit = resp.headers()["ratelimit"].to_str().unwrap().to_string();
        assert!(ratelimit.contains(&format!("r={remaining}")), "{ratelimit}");
        assert_eq!(text(resp.into_body()).await, "hello");
    }
    let resp = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.headers()["ratelimit-policy"].to_str().unwrap().contains("q=2"));
    let body = text(resp.into_body()).await;
    assert!(
        body.contains("\"rate_limited\"") && body.contains("\"route\":\"api\""),
        "{body}"
    );
    let other = request("192.0.2.1:5000", &[("x-api-key", "other")]);
    assert_eq!(svc.oneshot(other).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_request_whose_client_is_unknown_is_refused_not_pooled() {
    let ip_limit = RateLimitConfig::new("per-ip", vec![KeyPart::Ip], RateLimit::gcra("1/1m").unwrap());
    let stage = RateLimits::for_route(&keyspace(), "api", std::slice::from_ref(&ip_limit), &[]).unwrap();
    let svc = StageLayer::new(stage, ctx(), "api").layer(hello());
    let no_peer = Request::builder().uri("/x").body(()).unwrap();
    let resp = svc.clone().oneshot(no_peer).await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(text(resp.into_body()).await.contains("client_unknown"));

    // Opted in: such requests share the named address's bucket.
    let stage = RateLimits::for_route(&keyspace(), "api2", &[ip_limit], &[]).unwrap();
    let svc = StageLayer::new(stage, ctx(), "api2")
        .unknown_client_as("0.0.0.0".parse().unwrap())
        .layer(hello());
    let statuses = [
        svc.clone().oneshot(Request::new(())).await.unwrap().status(),
        svc.clone().oneshot(Request::new(())).await.unwrap().status(),
    ];
    assert_eq!(statuses, [200, 429]);
    // A plain SocketAddr extension (a bare hyper server) names the client too.
    let mut req = Request::new(());
    req.extensions_mut()
        .insert("192.0.2.7:1".parse::<SocketAddr>().unwrap());
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let ip_limit = RateLimitConfig::new("per-ip", vec![KeyPart::Ip], RateLimit::gcra("1/1m").unwrap());
    let stage = RateLimits::for_route(&keyspace(), "api", &[ip_limit], &[]).unwrap();
    let svc = StageLayer::new(stage, ctx(), "api")
        .trusted_proxies(TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]))
        .layer(hello());
    let via_proxy = |client: &str| request("10.0.0.2:4000", &[("x-forwarded-for", client)]);
    assert_eq!(
        svc.clone().oneshot(via_proxy("203.0.113.1")).await.unwrap().status(),
        200
    );
    assert_eq!(
        svc.clone().oneshot(via_proxy("203.0.113.2")).await.unwrap().status(),
        200
    );
    assert_eq!(
        svc.clone().oneshot(via_proxy("203.0.113.1")).await.unwrap().status(),
        429
    );
    // An untrusted peer's header is ignored: it is counted as itself.
    let direct = |xff: &str| request("198.51.100.9:4000", &[("x-forwarded-for", xff)]);
    assert_eq!(svc.clone().oneshot(direct("203.0.113.3")).await.unwrap().status(), 200);
    assert_eq!(svc.oneshot(direct("203.0.113.4")).await.unwrap().status(), 429);
}

#[tokio::test]
async fn a_permit_is_held_until_the_response_body_is_over() {
    let limit = ConcurrencyLimitConfig {
        name: "one".into(),
        key: vec![KeyPart::Global],
        max: 1,
        lease: Duration::from_secs(30),
        on_store_error: FailurePolicy::Closed,
        on_missing_key: MissingKey::Shared,
        ipv6_prefix: 64,
    };
    let stage = Concurrency::for_route(&keyspace(), "api", &[limit]).unwrap();
    let svc = StageLayer::new(stage, ctx(), "api").layer(hello());
    let first = svc.clone().oneshot(request("192.0.2.1:1", &[])).await.unwrap();
    assert_eq!(first.status(), 200);
    // The first body is not read yet: its permit is still held.
    let second = svc.clone().oneshot(request("192.0.2.1:1", &[])).await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(text(second.into_body()).await.contains("concurrency_limited"));
    assert_eq!(text(first.into_body()).await, "hello");
    // Read to its end: the permit is back.
    let third = svc.clone().oneshot(request("192.0.2.1:1", &[])).await.unwrap();
    assert_eq!(third.status(), 200);
    // Dropped unread (the client left): the permit is back too.
    drop(third);
    assert_eq!(svc.oneshot(request("192.0.2.1:1", &[])).await.unwrap().status(), 200);
}

/// Records its phases: answers requests carrying `x-answer`, adds a header on the way out, and
/// counts completions (finished, or cut short).
#[derive(Default)]
struct Probe {
    finished: Arc<AtomicU64>,
    cut: Arc<AtomicU64>,
    order: Arc<parking_lot::Mutex<Vec<&'static str>>>,
    name: &'static str,
}

impl Stage for Probe {
    const COMPLETES: bool = true;

    async fn request(&self, _cx: &mut RequestCtx<'_>, req: &mut http::request::Parts) -> Flow {
        self.order.lock().push(self.name);
        if req.headers.contains_key("x-answer") {
            let mut answer = Response::new(Bytes::from_static(b"answered"));
            *answer.status_mut() = http::StatusCode::IM_A_TEAPOT;
            return Flow::Answer(answer);
        }
        Flow::Continue
    }

    async fn response<B: Send>(&self, _cx: &mut RequestCtx<'_>, resp: &mut Response<B>) {
        self.order.lock().push(self.name);
        resp.headers_mut().append("x-seen-by", self.name.parse().unwrap());
    }

    fn complete(&self, done: &Completion) {
        let counter = if done.body_finished { &self.finished } else { &self.cut };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn stages_run_in_order_answer_at_once_and_complete_after_the_body() {
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (a, b) = (
        Probe {
            name: "a",
            order: order.clone(),
            ..Probe::default()
        },
        Probe {
            name: "b",
            order: order.clone(),
            ..Probe::default()
        },
    );
    let (a_done, b_done, b_cut) = (a.finished.clone(), b.finished.clone(), b.cut.clone());
    let stages: stages![Probe, Probe] = pipeline![Some(a), Some(b)];
    let svc = StageLayer::new(stages, ctx(), "api").layer(hello());

    let resp = svc.clone().oneshot(request("192.0.2.1:1", &[])).await.unwrap();
    // In: a then b. Out: b then a.
    assert_eq!(*order.lock(), ["a", "b", "b", "a"]);
    let seen: Vec<_> = resp.headers().get_all("x-seen-by").iter().collect();
    assert_eq!(seen, ["b", "a"]);
    assert_eq!(
        a_done.load(Ordering::Relaxed),
        0,
        "complete runs after the body, not before"
    );
    assert_eq!(text(resp.into_body()).await, "hello");
    assert_eq!((a_done.load(Ordering::Relaxed), b_done.load(Ordering::Relaxed)), (1, 1));

    // `a` answers: `b`'s request phase never runs, every response phase does.
    order.lock().clear();
    let resp = svc
        .clone()
        .oneshot(request("192.0.2.1:1", &[("x-answer", "1")]))
        .await
        .unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(*order.lock(), ["a", "b", "a"]);
    assert_eq!(text(resp.into_body()).await, "answered");
    assert_eq!(b_done.load(Ordering::Relaxed), 2);

    // The client leaves before the body ends: complete still runs, told so.
    let resp = svc.oneshot(request("192.0.2.1:1", &[])).await.unwrap();
    drop(resp);
    assert_eq!(b_cut.load(Ordering::Relaxed), 1);
}

#[test]
fn bad_parameters_are_typed_errors() {
    let ks = keyspace();
    let mut cost = per_key("5/1m");
    cost.cost = 6;
    assert!(matches!(
        RateLimits::for_route(&ks, "api", &[cost], &[]),
        Err(StageError::OutOfRange {
            field: "cost",
            value: 6,
            ..
        })
    ));
    let mut empty = per_key("5/1m");
    empty.key.clear();
    assert!(matches!(
        RateLimits::for_route(&ks, "api", &[empty], &[]),
        Err(StageError::EmptyKey { .. })
    ));
    let mut name = per_key("5/1m");
    name.name = "has space".into();
    let err = RateLimits::for_route(&ks, "api", &[name], &[]).err().unwrap();
    assert!(matches!(err, StageError::BadName { what: "limit", .. }), "{err}");
    let mut prefix = per_key("5/1m");
    prefix.ipv6_prefix = 129;
    assert!(RateLimits::for_route(&ks, "api", &[prefix], &[]).is_err());
    assert!(matches!(
        RateLimits::for_route(&ks, "a/b", &[per_key("5/1m")], &[]),
        Err(StageError::BadName { what: "route", .. })
    ));
    let permits = ConcurrencyLimitConfig {
        name: "c".into(),
        key: vec![KeyPart::Ip],
        max: 0,
        lease: Duration::from_secs(1),
        on_store_error: FailurePolicy::Local,
        on_missing_key: MissingKey::Shared,
        ipv6_prefix: 64,
    };
    let err = Concurrency::for_route(&ks, "api", &[permits]).err().unwrap();
    assert_eq!(err.to_string(), "limit c: max is 0; accepted: at least 1");
    // No limits: no stage at all.
    assert!(RateLimits::for_route(&ks, "api", &[], &[]).unwrap().is_none());
    assert!(Concurrency::for_route(&ks, "api", &[]).unwrap().is_none());
}

#[tokio::test]
async fn a_layer_runs_on_a_driver_type_directly() {
    // Generic over the driver: here the in-process driver itself rather than the `Store` enum.
    let stage = RateLimits::for_route(&keyspace(), "api", &[per_key("1/1m")], &[]).unwrap();
    let ctx: StoreCtx<MemoryStore> = StoreCtx::new(MemoryStore::new(), "direct");
    let svc = StageLayer::new(stage, ctx, "api").layer(hello());
    let req = || request("192.0.2.1:1", &[("x-api-key", "k")]);
    assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), 200);
    assert_eq!(svc.oneshot(req()).await.unwrap().status(), 429);
}

/// Idempotency keys as a layer: the first POST runs the service, a retry with the same key and
/// body gets the stored response with `Idempotency-Replayed: true`, another body gets 422.
#[tokio::test]
async fn an_idempotency_layer_replays_a_completed_response() {
    use fleetgate_http::body_fields::BufferedBody;
    use fleetgate_http::{Idempotency, IdempotencyConfig};
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let svc = tower::service_fn(move |_req: Request<()>| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("call {n}"))))) }
    });
    let stage = Idempotency::new(&keyspace(), "orders", &IdempotencyConfig::default());
    let svc = StageLayer::new(stage, ctx(), "orders").layer(svc);
    let post = |body: &'static str| {
        let mut req = request("192.0.2.1:5000", &[("idempotency-key", "\"k-1\"")]);
        *req.method_mut() = http::Method::POST;
        req.extensions_mut().insert(BufferedBody {
            bytes: Bytes::from_static(body.as_bytes()),
            complete: true,
        });
        req
    };
    let first = svc.clone().oneshot(post("a")).await.unwrap();
    assert_eq!(text(first.into_body()).await, "call 1");
    let again = svc.clone().oneshot(post("a")).await.unwrap();
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(text(again.into_body()).await, "call 1");
    let other = svc.clone().oneshot(post("b")).await.unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
