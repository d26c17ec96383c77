//! The x402 payment gate end to end: the real binary, a facilitator stand-in that records
//! every `/verify` and `/settle` call (and can answer valid, invalid, error or slowly), a real
//! upstream, and for the fleet properties three instances on one real Redis.

mod common;

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use fleetgate_testkit::RedisServer;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ASSET: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// How the stand-in answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    Valid = 0,
    Invalid = 1,
    Error = 2,
    Slow = 3,
    /// 200 with a body that is not JSON, or JSON without the verdict's fields.
    Garbage = 4,
    Fieldless = 5,
}

/// One recorded facilitator call.
#[derive(Clone, Debug)]
struct Call {
    path: String,
    authorization: Option<String>,
    body: Value,
}

/// The facilitator stand-in, on its own runtime thread.
struct Facilitator {
    port: u16,
    verify: Arc<AtomicU8>,
    settle: Arc<AtomicU8>,
    /// Milliseconds every answer waits first (to make concurrent requests overlap).
    delay_ms: Arc<AtomicUsize>,
    calls: Arc<parking_lot::Mutex<Vec<Call>>>,
    _server: common::stand_in::StandIn,
}

impl Facilitator {
    fn start() -> Facilitator {
        let verify = Arc::new(AtomicU8::new(Mode::Valid as u8));
        let settle = Arc::new(AtomicU8::new(Mode::Valid as u8));
        let delay_ms = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (v, s, d, c) = (verify.clone(), settle.clone(), delay_ms.clone(), calls.clone());
        let server = common::stand_in::StandIn::start(move |req: Request<Incoming>| {
            let (v, s, d, c) = (v.clone(), s.clone(), d.clone(), c.clone());
            async move { facilitate(req, &v, &s, &d, &c).await }
        });
        Facilitator {
            port: server.port,
            verify,
            settle,
            delay_ms,
            calls,
            _server: server,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn set_verify(&self, m: Mode) {
        self.verify.store(m as u8, Ordering::SeqCst);
    }
    fn set_settle(&self, m: Mode) {
        self.settle.store(m as u8, Ordering::SeqCst);
    }
    fn count(&self, path: &str) -> usize {
        self.calls.lock().iter().filter(|c| c.path == path).count()
    }
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }
}

async fn facilitate(
    req: Request<Incoming>,
    verify: &AtomicU8,
    settle: &AtomicU8,
    delay_ms: &AtomicUsize,
    calls: &parking_lot::Mutex<Vec<Call>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    calls.lock().push(Call {
        path: path.clone(),
        authorization,
        body: body.clone(),
    });
    let delay = delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let mode = match path.as_str() {
        "/verify" => verify.load(Ordering::SeqCst),
        _ => settle.load(Ordering::SeqCst),
    };
    let payer = body["paymentPayload"]["payload"]["authorization"]["from"].clone();
    let network = body["paymentRequirements"]["network"].clone();
    let answer = match (path.as_str(), mode) {
        (_, 2) => {
            return Response::builder()
                .status(500)
                .body(Full::new(Bytes::from("boom")))
                .unwrap()
        }
        (_, 4) => {
            return Response::builder()
                .status(200)
                .body(Full::new(Bytes::from("<html>ok</html>")))
                .unwrap()
        }
        (_, 5) => json!({"ok": true}),
        (_, 3) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json!({"isValid": true, "success": true, "payer": payer, "transaction": "0xslow", "network": network})
        }
        ("/verify", 0) => json!({"isValid": true, "payer": payer}),
        ("/verify", _) => {
            json!({"isValid": false, "invalidReason": "invalid_exact_evm_payload_signature", "payer": payer})
        }
        (_, 0) => json!({"success": true, "transaction": "0xfeed", "network": network, "payer": payer}),
        (_, _) => {
            json!({"success": false, "errorReason": "insufficient_funds", "transaction": "", "network": network, "payer": payer})
        }
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap()
}

/// An upstream answering 500 with a secret body on `/fail` paths, else 200; counts requests.
struct FailingUpstream {
    port: u16,
    hits: Arc<AtomicUsize>,
    _server: common::stand_in::StandIn,
}

impl FailingUpstream {
    fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let server = common::stand_in::StandIn::start(move |req: Request<Incoming>| {
            h.fetch_add(1, Ordering::SeqCst);
            let fail = req.uri().path().ends_with("/fail");
            async move {
                let (status, body) = if fail {
                    (500, "upstream-secret")
                } else {
                    (200, "paid-content")
                };
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap()
            }
        });
        FailingUpstream {
            port: server.port,
            hits,
            _server: server,
        }
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

fn unb64(s: &str) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 header");
    serde_json::from_slice(&bytes).expect("JSON in the header")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A fresh nonce: 32 bytes of hex, unique per call in this process.
fn nonce() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!(
        "0x{:032x}{:032x}",
        std::process::id(),
        n as u128 + (now() as u128) * 1_000_000
    )
}

/// A v2 payment of `amount` to `pay_to` by `payer` (the stand-in does not check signatures).
fn payment_v2(payer: &str, amount: &str, pay_to: &str) -> Value {
    json!({
        "x402Version": 2,
        "resource": {"url": "http://127.0.0.1/paid", "description": "", "mimeType": ""},
        "accepted": {"scheme": "exact", "network": "eip155:84532", "asset": ASSET, "amount": amount,
                     "payTo": pay_to, "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}},
        "payload": {"signature": "0xsig", "authorization": {
            "from": payer, "to": pay_to, "value": amount,
            "validAfter": (now() - 5).to_string(), "validBefore": (now() + 60).to_string(), "nonce": nonce()}}
    })
}

fn payment_v1(payer: &str, amount: &str) -> Value {
    json!({
        "x402Version": 1, "scheme": "exact", "network": "base-sepolia",
        "payload": {"signature": "0xsig", "authorization": {
            "from": payer, "to": PAY_TO, "value": amount,
            "validAfter": (now() - 5).to_string(), "validBefore": (now() + 60).to_string(), "nonce": nonce()}}
    })
}

const PAYER: &str = "0x857b06519E91e3A54538791bDbb0E22373e36b66";

/// A gateway config with routes `/paid` (before_response) and `/after` (after_response), both
/// with sessions, on `store`.
fn config(store: &str, facilitator: &str, upstream_port: u16, extra: &str) -> String {
    let payment = |settle: &str| {
        format!(
            "    payment:\n      facilitator: {facilitator}\n      facilitator_token: ${{FAC_TOKEN:-}}\n      facilitator_timeout: 1s\n      description: premium\n      mime_type: application/json\n      accepts:\n        - scheme: exact\n          network: eip155:84532\n          asset: \"{ASSET}\"\n          pay_to: \"{PAY_TO}\"\n          amount: \"10000\"\n          max_timeout: 60s\n          extra: {{ name: USDC, version: \"2\" }}\n      settle: {settle}\n      session: 10m\n      on_store_error: closed\n"
        )
    };
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: warn\n  access_log: false\nstore:\n  url: {store}\n  key_prefix: pay\n  timeout_ms: 300\nupstreams:\n  backend:\n    targets: [http://127.0.0.1:{upstream_port}]\nroutes:\n  - name: paid\n    match: {{ path_prefix: /paid }}\n    upstream: backend\n{extra}{}  - name: after\n    match: {{ path_prefix: /after }}\n    upstream: backend\n{}",
        payment("before_response"),
        payment("after_response")
    )
}

fn pay(gw: &Gateway, path: &str, header: &str, payment: &Value) -> Reply {
    gw.get(path, &[(header, b64(payment).as_bytes())])
}

#[test]
fn without_a_payment_the_answer_is_402_with_the_requirements_v2_and_v1() {
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let gw = Gateway::start(&config("memory://", &fac.url(), up.port, ""));
    let r = gw.get("/paid/item", &[]);
    assert_eq!(r.status, 402, "{r:?}");
    let body = r.json();
    assert_eq!(body["x402Version"], 2);
    assert_eq!(body["resource"]["url"], "http://127.0.0.1/paid/item");
    assert_eq!(body["resource"]["description"], "premium");
    assert_eq!(body["resource"]["mimeType"], "application/json");
    let offer = &body["accepts"][0];
    assert_eq!(offer["scheme"], "exact");
    assert_eq!(offer["network"], "eip155:84532");
    assert_eq!(offer["asset"], ASSET);
    assert_eq!(offer["payTo"], PAY_TO);
    assert_eq!(offer["amount"], "10000");
    assert_eq!(offer["maxTimeoutSeconds"], 60);
    assert_eq!(offer["extra"], json!({"name": "USDC", "version": "2"}));
    assert!(body["error"].is_string());
    let header = unb64(r.header("payment-required").expect("PAYMENT-REQUIRED header"));
    assert_eq!(header, body, "the header holds the same JSON as the body");

    // A v1 client (X-PAYMENT) that pays the wrong amount gets the v1 body.
    let r = pay(&gw, "/paid/item", "X-PAYMENT", &payment_v1(PAYER, "9999"));
    assert_eq!(r.status, 402, "{r:?}");
    let body = r.json();
    assert_eq!(body["x402Version"], 1);
    let offer = &body["accepts"][0];
    assert_eq!(offer["maxAmountRequired"], "10000");
    assert_eq!(offer["network"], "base-sepolia");
    assert_eq!(offer["payTo"], PAY_TO);
    assert_eq!(offer["asset"], ASSET);
    assert_eq!(offer["resource"], "http://127.0.0.1/paid/item");
    assert_eq!(offer["mimeType"], "application/json");
    assert_eq!(offer["maxTimeoutSeconds"], 60);
    assert!(body["error"].as_str().unwrap().contains("9999"), "{body}");
    assert!(r.header("payment-required").is_none());
    assert_eq!(fac.calls().len(), 0);
    assert_eq!(up.hits(), 0);
}

#[test]
fn malformed_payment_headers_get_400_and_never_reach_the_facilitator() {
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let gw = Gateway::start(&config("memory://", &fac.url(), up.port, ""));
    let good = payment_v2(PAYER, "10000", PAY_TO);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = good.clone();
        f(&mut p);
        b64(&p)
    };
    let cases: Vec<(&str, String)> = vec![
        ("not base64", "%%%not-base64%%%".into()),
        ("not JSON", base64::engine::general_purpose::STANDARD.encode("{nope")),
        ("too large", "A".repeat(9000)),
        ("extra field", with(&|p| p["surprise"] = json!(true))),
        (
            "extra authorization field",
            with(&|p| p["payload"]["authorization"]["x"] = json!(1)),
        ),
        ("wrong version", with(&|p| p["x402Version"] = json!(3))),
        (
            "signed amount",
            with(&|p| p["payload"]["authorization"]["value"] = json!("-10000")),
        ),
        (
            "exponent",
            with(&|p| p["payload"]["authorization"]["value"] = json!("1e4")),
        ),
        (
            "leading zeros",
            with(&|p| p["payload"]["authorization"]["value"] = json!("010000")),
        ),
        (
            "accepted amount with a sign",
            with(&|p| p["accepted"]["amount"] = json!("+10000")),
        ),
        ("missing payload", with(&|p| p["payload"] = Value::Null)),
    ];
    for (what, header) in &cases {
        let r = gw.get("/paid", &[("PAYMENT-SIGNATURE", header.as_bytes())]);
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert_eq!(r.json()["error"], "payment_malformed", "{what}");
    }
    let both = gw.get(
        "/paid",
        &[
            ("PAYMENT-SIGNATURE", b64(&good).as_bytes()),
            ("X-PAYMENT", b64(&good).as_bytes()),
        ],
    );
    assert_eq!(both.status, 400, "{both:?}");
    assert_eq!(fac.calls().len(), 0, "no malformed payment reaches the facilitator");
    assert_eq!(up.hits(), 0);
}

#[test]
fn mismatched_payments_get_402_naming_the_reason_without_the_facilitator() {
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let gw = Gateway::start(&config("memory://", &fac.url(), up.port, ""));
    let other = "0x0000000000000000000000000000000000000001";
    let mut wrong_network = payment_v2(PAYER, "10000", PAY_TO);
    wrong_network["accepted"]["network"] = json!("eip155:1");
    let mut wrong_scheme = payment_v2(PAYER, "10000", PAY_TO);
    wrong_scheme["accepted"]["scheme"] = json!("upto");
    let mut expired = payment_v2(PAYER, "10000", PAY_TO);
    expired["payload"]["authorization"]["validBefore"] = json!((now() - 1).to_string());
    let mut too_long = payment_v2(PAYER, "10000", PAY_TO);
    too_long["payload"]["authorization"]["validBefore"] = json!((now() + 86_400).to_string());
    let cases = [
        ("amount", payment_v2(PAYER, "9999", PAY_TO), "amount"),
        ("recipient", payment_v2(PAYER, "10000", other), "recipient"),
        ("network", wrong_network, "network"),
        ("scheme", wrong_scheme, "scheme"),
        ("expired", expired, "expired"),
        ("valid too long", too_long, "max_timeout"),
    ];
    for (what, p, reason) in &cases {
        let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", p);
        assert_eq!(r.status, 402, "{what}: {r:?}");
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(reason), "{what}: {error}");
    }
    assert_eq!(fac.calls().len(), 0, "the facilitator is never asked about a mismatch");
    assert_eq!(up.hits(), 0);
}

#[test]
fn a_valid_payment_is_verified_settled_once_and_proxied_with_the_settlement() {
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let gw = Gateway::start_with_env(
        &config("memory://", &fac.url(), up.port, ""),
        &[("FAC_TOKEN", "s3cret")],
    );
    let p = payment_v2(PAYER, "10000", PAY_TO);
    let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &p);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "paid-content");
    let settlement = unb64(r.header("payment-response").expect("PAYMENT-RESPONSE"));
    assert_eq!(settlement["success"], true);
    assert_eq!(settlement["transaction"], "0xfeed");
    assert!(r.header("set-cookie").unwrap().starts_with("fg_x402_paid="));
    let calls = fac.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!((calls[0].path.as_str(), calls[1].path.as_str()), ("/verify", "/settle"));
    for c in &calls {
        assert_eq!(
            c.authorization.as_deref(),
            Some("Bearer s3cret"),
            "the token from ${{FAC_TOKEN}}"
        );
        assert_eq!(c.body["x402Version"], 2);
        assert_eq!(c.body["paymentPayload"], p, "the payload as the client sent it");
        assert_eq!(c.body["paymentRequirements"]["amount"], "10000");
        assert_eq!(c.body["paymentRequirements"]["payTo"], PAY_TO);
    }
    // The same payment again: refused, and neither the facilitator nor the upstream hears of it.
    let again = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &p);
    assert_eq!(again.status, 402, "{again:?}");
    assert!(again.json()["error"].as_str().unwrap().contains("already been used"));
    assert_eq!(fac.calls().len(), 2);
    assert_eq!(up.hits(), 1);

    // v1: X-PAYMENT in, X-PAYMENT-RESPONSE out, v1 requirements to the facilitator.
    let r = pay(&gw, "/paid", "X-PAYMENT", &payment_v1(PAYER, "10000"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        unb64(r.header("x-payment-response").expect("X-PAYMENT-RESPONSE"))["success"],
        true
    );
    let v1_verify = &fac.calls()[2];
    assert_eq!(v1_verify.body["x402Version"], 1);
    assert_eq!(v1_verify.body["paymentRequirements"]["maxAmountRequired"], "10000");

    let metrics = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
    assert_eq!(
        metric_sum(&metrics, "fleetgate_payments_total{route=\"paid\",outcome=\"settled\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "fleetgate_payments_total{route=\"paid\",outcome=\"replayed\"}"
        ),
        1.0
    );
}

#[test]
fn facilitator_errors_and_invalid_verdicts_release_the_claim() {
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let gw = Gateway::start(&config("memory://", &fac.url(), up.port, ""));
    let p = payment_v2(PAYER, "10000", PAY_TO);
    fac.set_verify(Mode::Error);
    let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &p);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.json()["error"], "facilitator_error");
    fac.set_verify(Mode::Slow);
    let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &p);
    assert_eq!(r.status, 502, "a facilitator slower than facilitator_timeout: {r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("within"), "{r:?}");
    for (mode, what) in [(Mode::Garbage, "not JSON"), (Mode::Fieldless, "lacks isValid")] {
        fac.set_verify(mode);
        let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &p);
        assert_eq!(r.status, 502, "an answer that {what}: {r:?}");
        assert_eq!(r.json()["error"], "facilitator_error");
    }
    // The claim was given back each time: the honest retry goes through.
    fac.set_verify(Mode::Valid);
    let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &p);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(fac.count("/verify"), 5);
    assert_eq!(fac.count("/settle"), 1);

    // Invalid: 402 naming the reason; the verdict is cached, so the same payment is not asked
    // about twice.
    fac.set_verify(Mode::Invalid);
    let bad = payment_v2(PAYER, "10000", PAY_TO);
    for _ in 0..3 {
        let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &bad);
        assert_eq!(r.status, 402, "{r:?}");
        assert!(r.json()["error"]
            .as_str()
            .unwrap()
            .contains("invalid_exact_evm_payload_signature"));
    }
    assert_eq!(fac.count("/verify"), 6, "one verification of the invalid payment");

    // A refused settlement: 402 with the settlement result, the upstream never called.
    fac.set_verify(Mode::Valid);
    fac.set_settle(Mode::Invalid);
    let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &payment_v2(PAYER, "10000", PAY_TO));
    assert_eq!(r.status, 402, "{r:?}");
    assert_eq!(
        unb64(r.header("payment-response").unwrap())["errorReason"],
        "insufficient_funds"
    );
    assert_eq!(up.hits(), 1);
}

#[test]
fn after_response_settles_only_below_500_and_never_leaks_the_upstream_body() {
    let redis = RedisServer::start();
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let cfg = config(&redis.url(), &fac.url(), up.port, "");
    let (a, b) = (Gateway::start(&cfg), Gateway::start(&cfg));
    let p = payment_v2(PAYER, "10000", PAY_TO);
    // The upstream fails: no settlement, the client is told, and may use the payment again.
    let r = pay(&a, "/after/fail", "PAYMENT-SIGNATURE", &p);
    assert_eq!(r.status, 500, "{r:?}");
    let result = unb64(r.header("payment-response").expect("PAYMENT-RESPONSE"));
    assert_eq!(result["success"], false);
    assert_eq!(result["errorReason"], "upstream_error");
    assert_eq!(fac.count("/settle"), 0);
    // On another instance: the verdict comes from the fleet's cache (one verification).
    let r = pay(&b, "/after/ok", "PAYMENT-SIGNATURE", &p);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "paid-content");
    assert_eq!(unb64(r.header("payment-response").unwrap())["success"], true);
    assert_eq!(fac.count("/verify"), 1, "verified once for the fleet");
    assert_eq!(fac.count("/settle"), 1);
    // A refused settlement after the upstream answered: 402, and its body is not passed on.
    fac.set_settle(Mode::Invalid);
    let r = pay(
        &a,
        "/after/ok",
        "PAYMENT-SIGNATURE",
        &payment_v2(PAYER, "10000", PAY_TO),
    );
    assert_eq!(r.status, 402, "{r:?}");
    assert!(!r.body.contains("paid-content"), "{r:?}");
    assert_eq!(unb64(r.header("payment-response").unwrap())["success"], false);
    assert!(r.header("set-cookie").is_none());
}

#[test]
fn three_instances_verify_and_settle_one_payment_exactly_once() {
    let redis = RedisServer::start();
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    // Slow answers, so the concurrent requests overlap at the facilitator if they get there.
    fac.delay_ms.store(200, Ordering::SeqCst);
    let cfg = config(&redis.url(), &fac.url(), up.port, "");
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    for round in 0..3 {
        let header = b64(&payment_v2(PAYER, "10000", PAY_TO));
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..9)
                .map(|i| {
                    let (gw, header) = (&gws[i % 3], header.clone());
                    s.spawn(move || gw.get("/paid", &[("PAYMENT-SIGNATURE", header.as_bytes())]).status)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        println!("round {round}: statuses {statuses:?}");
        assert_eq!(count(&statuses, 200), 1, "one admission per payment: {statuses:?}");
        assert_eq!(count(&statuses, 402), 8, "every other use is a replay: {statuses:?}");
        assert_eq!(fac.count("/verify"), round + 1, "verified once");
        assert_eq!(fac.count("/settle"), round + 1, "settled once");
        assert_eq!(up.hits(), round + 1, "the upstream saw it once");
    }
}

#[test]
fn a_payment_session_from_one_instance_works_on_the_others() {
    let redis = RedisServer::start();
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let cfg = config(&redis.url(), &fac.url(), up.port, "");
    let (a, b, c) = (Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg));
    let r = pay(&a, "/paid", "PAYMENT-SIGNATURE", &payment_v2(PAYER, "10000", PAY_TO));
    assert_eq!(r.status, 200, "{r:?}");
    let set_cookie = r.header("set-cookie").expect("a session cookie").to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("Max-Age=600"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    for gw in [&b, &c, &a] {
        let r = gw.get("/paid/more", &[("cookie", cookie.as_bytes())]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, "paid-content");
    }
    assert_eq!(
        (fac.count("/verify"), fac.count("/settle")),
        (1, 1),
        "no second payment"
    );
    assert_eq!(up.hits(), 4);
    // Forged or malformed session ids, and a session of another route, are no session.
    for forged in [
        "fg_x402_paid=0123456789abcdef0123456789abcdef",
        "fg_x402_paid=not-an-id",
        &cookie.replace("fg_x402_paid", "fg_x402_after"),
    ] {
        let path = if forged.starts_with("fg_x402_after") {
            "/after"
        } else {
            "/paid"
        };
        let r = b.get(path, &[("cookie", forged.as_bytes())]);
        assert_eq!(r.status, 402, "{forged}: {r:?}");
    }
    assert_eq!(up.hits(), 4);
}

#[test]
fn with_redis_down_closed_answers_503_and_nothing_gets_through() {
    let mut redis = RedisServer::start();
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let gw = Gateway::start(&config(&redis.url(), &fac.url(), up.port, ""));
    let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &payment_v2(PAYER, "10000", PAY_TO));
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    redis.kill();
    wait_store(&gw, "down");
    for _ in 0..3 {
        let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &payment_v2(PAYER, "10000", PAY_TO));
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.json()["error"], "store_unavailable");
        let r = gw.get("/paid", &[("cookie", cookie.as_bytes())]);
        assert_eq!(r.status, 503, "a session cannot be checked either: {r:?}");
    }
    assert_eq!(
        (fac.count("/verify"), fac.count("/settle")),
        (1, 1),
        "the facilitator is not asked"
    );
    assert_eq!(up.hits(), 1, "nothing unverified reaches the upstream");
}

#[test]
fn payer_is_a_rate_limit_key() {
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let limit = "    rate_limits:\n      - name: per-payer\n        key: payer\n        rate: 1/1h\n        on_missing_key: shared\n";
    let gw = Gateway::start(&config("memory://", &fac.url(), up.port, limit));
    let other = "0x1111111111111111111111111111111111111111";
    assert_eq!(
        pay(&gw, "/paid", "PAYMENT-SIGNATURE", &payment_v2(PAYER, "10000", PAY_TO)).status,
        200
    );
    let r = pay(&gw, "/paid", "PAYMENT-SIGNATURE", &payment_v2(PAYER, "10000", PAY_TO));
    assert_eq!(r.status, 429, "the same payer's second request: {r:?}");
    assert_eq!(
        pay(&gw, "/paid", "PAYMENT-SIGNATURE", &payment_v2(other, "10000", PAY_TO)).status,
        200
    );
    assert_eq!(
        fac.count("/settle"),
        2,
        "a limited request never reaches the facilitator"
    );
}

/// The official x402 client libraries (`tests/x402-client`, installed there by `.ci/run` with
/// `npm ci`), and `node` to run them.
fn x402_client() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/x402-client");
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: apt-get install -y nodejs npm"
    );
    assert!(
        dir.join("node_modules/@x402/fetch").is_dir() && dir.join("node_modules/@x402/evm").is_dir(),
        "the x402 client libraries are missing: npm ci --prefix crates/fleetgate/tests/x402-client (.ci/run does this)"
    );
    dir
}

#[test]
fn the_official_x402_client_pays_through_the_gateway() {
    let dir = x402_client();
    let (fac, up) = (Facilitator::start(), FailingUpstream::start());
    let gw = Gateway::start(&config("memory://", &fac.url(), up.port, ""));
    // A well-known development key (anvil's first account): the client signs offline.
    let key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    let out = std::process::Command::new("node")
        .arg(dir.join("client.mjs"))
        .arg(format!("http://127.0.0.1:{}/paid/report", gw.port))
        .arg(key)
        .current_dir(&dir)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("the client prints JSON");
    println!("official client: {result}");
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["body"], "paid-content");
    let address = result["address"].as_str().unwrap();
    assert_eq!(result["paymentResponse"]["success"], true, "{result}");
    assert_eq!(result["paymentResponse"]["payer"], address);
    // What the client signed is what the facilitator was asked about, as it was sent.
    let sent = result["sent"].as_str().expect("the client sent a payment");
    let signed = unb64(sent);
    assert_eq!(signed["x402Version"], 2);
    assert_eq!(signed["payload"]["authorization"]["from"], address);
    assert_eq!(signed["payload"]["authorization"]["to"], PAY_TO);
    assert_eq!(signed["payload"]["authorization"]["value"], "10000");
    let signature = signed["payload"]["signature"].as_str().unwrap();
    assert_eq!(signature.len(), 2 + 130, "a 65-byte signature: {signature}");
    assert_eq!((fac.count("/verify"), fac.count("/settle")), (1, 1));
    assert_eq!(fac.calls()[0].body["paymentPayload"], signed);
    assert_eq!(up.hits(), 1);
    // The client's payment, sent again, is a replay.
    let again = gw.get("/paid/report", &[("PAYMENT-SIGNATURE", sent.as_bytes())]);
    assert_eq!(again.status, 402, "{again:?}");
    assert_eq!(fac.calls().len(), 2);
}
