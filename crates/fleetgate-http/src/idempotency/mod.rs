//! Idempotency keys as a stage (`idempotency:` on a route), after the IETF httpapi
//! Idempotency-Key draft: an unsafe request (POST, PUT, PATCH, DELETE) that carries
//! `Idempotency-Key: "..."` runs at most once across the fleet within `ttl`.
//!
//! The way in:
//! 1. the header is read as an sf-string ([`key_header`]): more than one, empty, too long or
//!    malformed gets 400; none gets 400 when `required`, else the request passes untouched;
//! 2. the request body (read ahead by the gateway up to `max_request_bytes`, see
//!    [`crate::body_fields::BufferedBody`]) is fingerprinted with the method, path and query; a
//!    larger body gets 413;
//! 3. `route + client scope + key` is claimed in the store for `in_flight_ttl` with a random
//!    token and the fingerprint ([`record`]). Won: the request runs. Held by a running request:
//!    409. Held by a completed response: 422 if the fingerprint differs, else the stored
//!    response with `Idempotency-Replayed: true`.
//!
//! The way out: the response head is noted; the gateway then wraps the body in a bounded
//! [`tee::Tee`], and when the body has ended within `max_response_bytes` the claim becomes the
//! completed response for `ttl` by [`complete_claim`](fleetgate_store::StoreDriver::complete_claim)
//! (only this claim's holder can store it). The claim is released (a retry runs again) when
//! the response is 5xx (an upstream that failed or could not be reached), when the body is
//! larger than `max_response_bytes` (it is passed through, not kept), when it fails or the
//! client leaves before its end, and when a later way-out stage replaces the answer.
//!
//! The client scope is the route's `key` (a key form), or by default the principal a stage set
//! (payer, session, authenticated identity), else the client IP: one client never sees
//! another's stored response. Store failures follow `on_store_error` through
//! [`StoreCtx::decide`]: `closed` (the default) answers 503 at once, `open` lets the request
//! run without a claim, `local` claims in this instance's memory.

pub mod config;
pub mod key_header;
pub mod record;
pub mod tee;

pub use config::IdempotencyConfig;

use crate::context::{Principal, RequestCtx};
use crate::identity::{identify, Identity};
use crate::metrics::DecisionMetrics;
use crate::stage::{Flow, Stage};
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use bytes::Bytes;
use fleetgate_store::{ClaimOutcome, Concern, Keyspace, ScopedKeys, StoreDriver, StoreKey};
use futures_util::FutureExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use metrics::{counter, Counter};
use record::{Fingerprint, Record, StoredResponse};
use serde_json::json;
use std::time::Duration;

/// `fleetgate_idempotency_total{route, outcome}`.
pub const IDEMPOTENCY: &str = "fleetgate_idempotency_total";
/// The idempotency stage's store calls under its failure policy.
pub const IDEMPOTENCY_STORE_DECISIONS: &str = "fleetgate_idempotency_store_decisions_total";

/// The request header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Marks a replayed response.
pub static IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// Outcomes of one route (`fleetgate_idempotency_total{route, outcome}`): `first` (claimed, the
/// request runs), `replayed` (the stored response), `conflict` (409: in flight), `mismatch`
/// (422: another request under that key), `missing` (400: required and absent), `refused` (400:
/// a bad key, 413: a body too large, 503: the store is down under `closed`).
#[derive(Clone)]
pub struct IdempotencyMetrics {
    pub first: Counter,
    pub replayed: Counter,
    pub conflict: Counter,
    pub mismatch: Counter,
    pub missing: Counter,
    pub refused: Counter,
}

impl IdempotencyMetrics {
    pub fn new(route: &str) -> Self {
        let c = |outcome: &'static str| counter!(IDEMPOTENCY, "route" => route.to_string(), "outcome" => outcome);
        IdempotencyMetrics {
            first: c("first"),
            replayed: c("replayed"),
            conflict: c("conflict"),
            mismatch: c("mismatch"),
            missing: c("missing"),
            refused: c("refused"),
        }
    }
}

/// The idempotency keys of one route.
pub struct Idempotency {
    route: String,
    config: IdempotencyConfig,
    keys: ScopedKeys,
    policy: ConcernPolicy,
    metrics: IdempotencyMetrics,
}

/// Where a claim is held.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Held {
    Shared,
    Local,
}

/// A claim this request holds, from the way in until its response body is over (in
/// [`RequestCtx::idempotency`]). Dropped without being turned into a [`tee::Tee`] (a later
/// stage replaced the answer, an upgrade), it releases the claim.
pub struct InFlight {
    claim: Option<Box<dyn PendingClaim>>,
    max_response_bytes: usize,
    /// The response head as the upstream gave it, noted on the way out.
    head: Option<(StatusCode, HeaderMap)>,
}

/// The store side of a claim, with its driver's type erased (so the context stays simple).
trait PendingClaim: Send {
    /// Stores `kept` as the completed response, or releases the claim (`None`).
    fn finish(self: Box<Self>, kept: Option<StoredResponse>) -> tee::Finishing;
}

struct Claim<D> {
    ctx: StoreCtx<D>,
    held: Held,
    key: StoreKey,
    /// The claim value: the compare-and-set token.
    token: Bytes,
    fingerprint: Fingerprint,
    ttl: Duration,
    route: String,
}

impl<D: StageStore> PendingClaim for Claim<D> {
    fn finish(self: Box<Self>, kept: Option<StoredResponse>) -> tee::Finishing {
        Box::pin(async move {
            let c = *self;
            let local = c.held == Held::Local;
            let result = match kept {
                Some(response) => {
                    let value = record::completed(&c.fingerprint, &response);
                    let done = if local {
                        c.ctx.local.complete_claim(&c.key, &c.token, value, c.ttl).await
                    } else {
                        c.ctx.store.complete_claim(&c.key, &c.token, value, c.ttl).await
                    };
                    if let Ok(false) = done {
                        tracing::warn!(route = %c.route, "idempotency: the claim expired (in_flight_ttl) before its response ended; the response is not kept");
                    }
                    done.map(|_| ())
                }
                None if local => c.ctx.local.release_claim(&c.key, &c.token).await.map(|_| ()),
                None => c.ctx.store.release_claim(&c.key, &c.token).await.map(|_| ()),
            };
            if let Err(e) = result {
                tracing::warn!(route = %c.route, error = %e, "idempotency: a claim could not be completed or released; it expires after in_flight_ttl");
            }
        })
    }
}

impl InFlight {
    /// Notes the response head (the way out, before later stages add their headers): what a
    /// replay gives back, without hop-by-hop headers, `Set-Cookie` and the length.
    fn note_head(&mut self, status: StatusCode, headers: &HeaderMap) {
        let kept = headers
            .iter()
            .filter(|(name, _)| !NOT_KEPT.contains(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.head = Some((status, kept));
    }

    /// Wraps `body` so that, once it has ended, its response is stored for replays (or the
    /// claim released: see the module documentation).
    pub fn tee<B: http_body::Body<Data = Bytes>>(self, body: B) -> tee::Tee<B> {
        let mut tee = tee::Tee::passthrough(body);
        self.arm(&mut tee);
        tee
    }

    /// Like [`tee`](Self::tee), on a body already wrapped (the tower layer's).
    pub fn arm<B>(mut self, tee: &mut tee::Tee<B>) {
        let claim = self.claim.take();
        // Kept: final answers below 500 (not a 101 of an upgrade, not a failure).
        let head = self
            .head
            .take()
            .filter(|(status, _)| !status.is_server_error() && !status.is_informational());
        let finisher: tee::Finisher = Box::new(move |body| match claim {
            Some(claim) => {
                let kept = body
                    .zip(head)
                    .map(|(body, (status, headers))| StoredResponse { status, headers, body });
                claim.finish(kept)
            }
            None => Box::pin(async {}),
        });
        tee.arm(self.max_response_bytes, finisher);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            tee::spawn(claim.finish(None));
        }
    }
}

/// Response headers a replay does not repeat: hop-by-hop ones, cookies (another client's
/// session must never be handed out), and the length (the replay's body sets it).
static NOT_KEPT: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::SET_COOKIE,
    header::CONTENT_LENGTH,
];

/// The unsafe methods the draft makes idempotency keys for.
fn is_unsafe(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// Whether the head announces a body (a length above zero, or chunked).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// An `application/problem+json` answer (RFC 9457), with the fleetgate `error` kind.
fn problem(status: StatusCode, kind: &str, detail: &str, route: &str) -> Response<Bytes> {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
        "error": kind,
        "route": route,
    });
    let mut text = body.to_string();
    text.push('\n');
    let mut resp = Response::new(Bytes::from(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

impl Idempotency {
    /// Route `route`'s idempotency keys, under `keyspace`.
    pub fn new(keyspace: &Keyspace, route: &str, config: &IdempotencyConfig) -> Self {
        Idempotency {
            route: route.to_string(),
            keys: keyspace.scoped(Concern::Idempotency, route),
            policy: ConcernPolicy {
                name: "idempotency".into(),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(IDEMPOTENCY_STORE_DECISIONS, route, "idempotency"),
            },
            metrics: IdempotencyMetrics::new(route),
            config: config.clone(),
        }
    }

    /// Route `route`'s idempotency keys, if it has them.
    pub fn for_route(keyspace: &Keyspace, route: &str, config: Option<&IdempotencyConfig>) -> Option<Self> {
        config.map(|c| Idempotency::new(keyspace, route, c))
    }

    /// The configuration (the gateway reads `max_request_bytes` to read bodies ahead).
    pub fn config(&self) -> &IdempotencyConfig {
        &self.config
    }

    fn refuse(&self, status: StatusCode, kind: &str, detail: &str) -> Flow {
        self.metrics.refused.increment(1);
        tracing::info!(route = %self.route, status = status.as_u16(), error = kind, detail, "idempotency: request refused");
        Flow::Answer(problem(status, kind, detail, &self.route))
    }

    /// Who the key belongs to: the route's key form, else the principal, else the client IP.
    fn scope<D>(&self, cx: &RequestCtx<'_, D>, req: &Parts) -> Result<Vec<u8>, String> {
        if let Some(parts) = &self.config.key {
            return match identify(parts, req, crate::client_ip::canonical(cx.client_ip), cx.route) {
                Identity::Found(id) => Ok(id),
                Identity::Missing(what) => Err(what),
            };
        }
        let mut out = Vec::with_capacity(48);
        match &cx.principal {
            Some(Principal::Payer(p)) => out.extend_from_slice(format!("payer={p}").as_bytes()),
            Some(Principal::Session(s)) => out.extend_from_slice(format!("session={s}").as_bytes()),
            Some(Principal::Authenticated(a)) => out.extend_from_slice(format!("auth={a}").as_bytes()),
            None => match crate::client_ip::canonical(cx.client_ip) {
                std::net::IpAddr::V4(v4) => {
                    out.extend_from_slice(b"ip4=");
                    out.extend_from_slice(&v4.octets());
                }
                std::net::IpAddr::V6(v6) => {
                    out.extend_from_slice(b"ip6=");
                    out.extend_from_slice(&v6.octets());
                }
            },
        }
        Ok(out)
    }

    /// The stored response, replayed.
    fn replay(&self, stored: StoredResponse) -> Flow {
        self.metrics.replayed.increment(1);
        let mut resp = Response::new(stored.body);
        *resp.status_mut() = stored.status;
        *resp.headers_mut() = stored.headers;
        resp.headers_mut()
            .insert(IDEMPOTENCY_REPLAYED.clone(), HeaderValue::from_static("true"));
        Flow::Answer(resp)
    }

    fn mismatch(&self) -> Flow {
        self.metrics.mismatch.increment(1);
        Flow::Answer(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request (method, path or body); use a new key for a new request",
            &self.route,
        ))
    }

    /// What a key already held says about this request.
    fn held(&self, value: &Bytes, fingerprint: &Fingerprint) -> Flow {
        match record::decode(value) {
            Some(Record::Completed {
                fingerprint: theirs,
                response,
            }) if &theirs == fingerprint => self.replay(response),
            Some(Record::Completed { .. }) => self.mismatch(),
            Some(Record::Pending { fingerprint: theirs }) if &theirs != fingerprint => self.mismatch(),
            _ => {
                self.metrics.conflict.increment(1);
                Flow::Answer(problem(
                    StatusCode::CONFLICT,
                    "idempotency_key_in_flight",
                    "a request with this Idempotency-Key is still being processed; retry after it has completed",
                    &self.route,
                ))
            }
        }
    }
}

impl<D: StageStore> Stage<D> for Idempotency {
    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        if !is_unsafe(&req.method) {
            return Flow::Continue;
        }
        let mut values = req.headers.get_all(&IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            if self.config.required {
                self.metrics.missing.increment(1);
                tracing::info!(route = %self.route, "idempotency: request refused: Idempotency-Key required and missing");
                return Flow::Answer(problem(
                    StatusCode::BAD_REQUEST,
                    "idempotency_key_missing",
                    "this route requires an Idempotency-Key header on POST, PUT, PATCH and DELETE, e.g. Idempotency-Key: \"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
                    &self.route,
                ));
            }
            return Flow::Continue;
        };
        let parsed = match values.next() {
            Some(_) => Err(key_header::BadKey::Repeated),
            None => key_header::parse(value.as_bytes(), self.config.max_key_length),
        };
        let idem_key = match parsed {
            Ok(k) => k,
            Err(why) => return self.refuse(StatusCode::BAD_REQUEST, "idempotency_key_invalid", &why.to_string()),
        };
        let body = req.extensions.get::<crate::body_fields::BufferedBody>();
        let body_bytes = match body {
            Some(b) if !b.complete || b.bytes.len() > self.config.max_request_bytes => {
                let why = format!(
                    "the request body is larger than this route's idempotency max_request_bytes ({} bytes)",
                    self.config.max_request_bytes
                );
                return self.refuse(StatusCode::PAYLOAD_TOO_LARGE, "request_body_too_large", &why);
            }
            Some(b) => b.bytes.clone(),
            None if has_body(&req.headers) => {
                // Fingerprinting without the body would replay one body's answer to another.
                tracing::error!(route = %self.route, "idempotency: the request body was not read ahead (a tower service must put a BufferedBody in the request's extensions)");
                return self.refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "body_not_buffered",
                    "the request body cannot be fingerprinted here",
                );
            }
            None => Bytes::new(),
        };
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let fingerprint = record::fingerprint(&req.method, path, &body_bytes);
        let scope = match self.scope(cx, req) {
            Ok(s) => s,
            Err(what) => {
                let why = format!("idempotency keys on this route are scoped by {what}, which the request lacks");
                return self.refuse(StatusCode::BAD_REQUEST, "missing_key", &why);
            }
        };
        let mut id = scope;
        id.push(0);
        id.extend_from_slice(idem_key.as_bytes());
        let key = self.keys.key(&id);
        let mut token = [0u8; 16];
        if getrandom::fill(&mut token).is_err() {
            return self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_randomness",
                "the gateway has no randomness to make a claim token with",
            );
        }
        let value = record::pending(&token, &fingerprint);
        let ttl = self.config.in_flight_ttl;
        // A claim call that timed out may still have been applied: the key would then hold
        // this request's token, and every retry would get 409 until `in_flight_ttl`.
        let mut maybe_applied = false;
        let decided = cx
            .store
            .decide(
                &self.policy,
                Op::Marker,
                cx.store.store.claim(&key, value.clone(), ttl),
                |e| maybe_applied = matches!(e, fleetgate_store::StoreError::Timeout(_)),
                |m, _| m.claim(&key, value.clone(), ttl).now_or_never()?.ok(),
            )
            .await;
        if maybe_applied {
            // Released in the background, only if it still holds this token (a release that
            // fails too leaves it to expire).
            let undo = Box::new(Claim {
                ctx: cx.store.clone(),
                held: Held::Shared,
                key: key.clone(),
                token: value.clone(),
                fingerprint,
                ttl: self.config.ttl,
                route: self.route.clone(),
            });
            tee::spawn(undo.finish(None));
        }
        let (outcome, held) = match decided {
            Decided::Store(o) => (o, Held::Shared),
            Decided::Local(o) => (o, Held::Local),
            Decided::Open => return Flow::Continue,
            Decided::Closed => {
                return self.refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "idempotency keys cannot be checked: the store is unavailable and this route's on_store_error is closed",
                )
            }
        };
        match outcome {
            ClaimOutcome::Held(v) => self.held(&v, &fingerprint),
            ClaimOutcome::Won => {
                self.metrics.first.increment(1);
                cx.idempotency = Some(Box::new(InFlight {
                    claim: Some(Box::new(Claim {
                        ctx: cx.store.clone(),
                        held,
                        key,
                        token: value,
                        fingerprint,
                        ttl: self.config.ttl,
                        route: self.route.clone(),
                    })),
                    max_response_bytes: self.config.max_response_bytes,
                    head: None,
                }));
                Flow::Continue
            }
        }
    }

    async fn response<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) {
        if let Some(f) = cx.idempotency.as_mut() {
            f.note_head(resp.status(), resp.headers());
        }
    }
}
