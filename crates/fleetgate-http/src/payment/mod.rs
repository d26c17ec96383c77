//! The x402 payment gate as a stage (`payment:` on a route): at most once across the fleet.
//!
//! The way in, for a request on a paid route:
//! 1. a payment session cookie (`fg_x402_{route}`) that the store knows lets it through as its
//!    payer; one it does not know (forged, expired) gets 402;
//! 2. no payment: 402 with the requirements (v2: `PAYMENT-REQUIRED` header and body);
//! 3. the payment (`PAYMENT-SIGNATURE` v2, `X-PAYMENT` v1) is decoded strictly (400 if
//!    malformed) and matched against the offers (402 naming the reason; the facilitator is not
//!    asked), and its validity window checked;
//! 4. its identity (network, asset, payer, nonce) is claimed once for the fleet, for as long as
//!    the authorization is valid and a minute more: a second use anywhere gets 402;
//! 5. the verdict is read from the fleet's verification cache (by a hash of what the
//!    facilitator would be sent), or asked of `POST {facilitator}/verify` and cached;
//! 6. `before_response`: settled now (`POST {facilitator}/settle`), then proxied;
//!    `after_response`: proxied, and settled on the way out when the upstream answered below
//!    500 (a failed settlement replaces the upstream's answer: its body never reaches the
//!    client).
//!
//! The claim is released when the facilitator errs or says invalid, when settlement is refused,
//! and when an `after_response` upstream answered 500 or more, so an honest retry can succeed
//! (the cached verdict spares it a second verification). It is kept when a settlement call
//! gave no answer: whether it was settled is then unknown.
//!
//! Store failures follow `on_store_error` through [`StoreCtx::decide`]: `closed` (the default)
//! answers 503 at once, before the facilitator is asked; `open` goes on without the fleet's
//! marker and cache (the facilitator still verifies and settles); `local` keeps markers,
//! verdicts and sessions in this instance's memory.

pub(crate) mod config;
mod facilitator;
pub(crate) mod session;
pub mod wire;

/// Durations as the file writes them (`500ms`, `30s`), shared with the other concerns' configs.
pub(crate) use config::parse_duration;
pub use config::{Offer, PaymentConfig, SettleMode};
pub use facilitator::{BoxFuture, Facilitator, FacilitatorClient, FacilitatorError, MAX_ANSWER_BYTES};

use crate::context::{Principal, RequestCtx};
use crate::metrics::{DecisionMetrics, PaymentMetrics};
use crate::refusal::json_error;
use crate::stage::{Flow, Stage};
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use bytes::Bytes;
use fleetgate_store::{ClaimOutcome, Concern, Keyspace, MemoryStore, ScopedKeys, StoreDriver, StoreKey};
use futures_util::FutureExt as _;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wire::{Payment as Paid, Version};

/// How far past `validBefore` a replay marker lives, and how far clocks may disagree.
const MARGIN: Duration = Duration::from_secs(60);

/// The payment gate of one route.
pub struct Payment {
    route: String,
    config: PaymentConfig,
    facilitator: Facilitator,
    markers: ScopedKeys,
    verdicts: ScopedKeys,
    sessions: ScopedKeys,
    cookie: String,
    policy: ConcernPolicy,
    metrics: PaymentMetrics,
}

/// Where a replay marker is held.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    Shared,
    Local,
    /// Nowhere: the store failed under `open`.
    Nowhere,
}

/// What the way out needs of a payment the way in accepted.
pub struct Accepted {
    version: Version,
    marker: StoreKey,
    held: Held,
    network: String,
    payer: String,
    /// The facilitator request, for `after_response`.
    body: Bytes,
    /// The settlement's JSON once settled.
    settled: Option<Value>,
}

/// What the store said, after the failure policy.
enum Got<T> {
    Store(T),
    Local(T),
    Open,
    Closed,
}

impl<T> From<Decided<T>> for Got<T> {
    fn from(d: Decided<T>) -> Self {
        match d {
            Decided::Store(t) => Got::Store(t),
            Decided::Local(t) => Got::Local(t),
            Decided::Open => Got::Open,
            Decided::Closed => Got::Closed,
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Payment {
    /// Route `route`'s payment gate, with keys under `keyspace`, calling the facilitator
    /// through `client`.
    pub fn new(keyspace: &Keyspace, route: &str, config: &PaymentConfig, client: Arc<dyn FacilitatorClient>) -> Self {
        Payment {
            route: route.to_string(),
            facilitator: Facilitator::new(
                &config.facilitator,
                config.facilitator_token.clone(),
                config.facilitator_timeout,
                client,
            ),
            markers: keyspace.scoped(Concern::Marker, "x402"),
            verdicts: keyspace.scoped(Concern::Verification, &format!("x402/{route}")),
            sessions: keyspace.scoped(Concern::Session, &format!("x402/{route}")),
            cookie: session::cookie_name(route),
            policy: ConcernPolicy {
                name: "payment".into(),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(crate::metrics::PAYMENT_STORE_DECISIONS, route, "payment"),
            },
            metrics: PaymentMetrics::new(route),
            config: config.clone(),
        }
    }

    /// Route `route`'s gate, if it has one.
    pub fn for_route(
        keyspace: &Keyspace,
        route: &str,
        config: Option<&PaymentConfig>,
        client: &Arc<dyn FacilitatorClient>,
    ) -> Option<Self> {
        config.map(|c| Payment::new(keyspace, route, c, client.clone()))
    }

    fn resource_url(req: &Parts) -> String {
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .unwrap_or("localhost");
        format!("http://{host}{}", req.uri.path())
    }

    /// 402 with the requirements, in the client's version.
    fn required(&self, version: Version, error: &str, req: &Parts) -> Response<Bytes> {
        let url = Self::resource_url(req);
        let resource = wire::Resource {
            url: &url,
            description: &self.config.description,
            mime_type: &self.config.mime_type,
        };
        let body = wire::payment_required(version, error, &self.config.accepts, &resource).to_string();
        let mut resp = Response::new(Bytes::from(body.clone()));
        *resp.status_mut() = StatusCode::PAYMENT_REQUIRED;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if version == Version::V2 {
            if let Ok(v) = HeaderValue::from_str(&wire::b64(body.as_bytes())) {
                resp.headers_mut().insert(wire::PAYMENT_REQUIRED, v);
            }
        }
        resp
    }

    fn store_down(&self) -> Response<Bytes> {
        self.metrics.store_unavailable.increment(1);
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "payments cannot be checked: the store is unavailable and the payment gate's policy is closed",
            &[("route", json!(self.route))],
        )
    }

    fn facilitator_failed(&self, e: &FacilitatorError) -> Response<Bytes> {
        self.metrics.failed.increment(1);
        tracing::warn!(route = %self.route, error = %e, "payment facilitator call failed");
        json_error(
            StatusCode::BAD_GATEWAY,
            "facilitator_error",
            &e.to_string(),
            &[("route", json!(self.route))],
        )
    }

    /// Runs `call` on the shared store, or `local` on the in-process one, under the policy.
    async fn ask<D: StageStore, T, F>(
        &self,
        ctx: &StoreCtx<D>,
        call: F,
        local: impl FnOnce(&MemoryStore) -> Option<T>,
    ) -> Got<T>
    where
        F: std::future::Future<Output = Result<T, fleetgate_store::StoreError>>,
    {
        ctx.decide(&self.policy, Op::Marker, call, |_| {}, |m, _| local(m))
            .await
            .into()
    }

    /// Gives the replay marker back (best effort: it expires anyway).
    async fn release<D: StageStore>(&self, ctx: &StoreCtx<D>, key: &StoreKey, held: Held) {
        let result = match held {
            Held::Shared => ctx.store.delete(key).await,
            Held::Local => ctx.local.delete(key).await,
            Held::Nowhere => return,
        };
        if let Err(e) = result {
            tracing::warn!(route = %self.route, error = %e, "a payment's replay marker could not be released; it expires with the authorization");
        }
    }

    async fn session_payer<D: StageStore>(&self, ctx: &StoreCtx<D>, id: &str) -> Got<Option<String>> {
        let key = self.sessions.key(id.as_bytes());
        let got = self
            .ask(ctx, ctx.store.get(&key), |m| m.get(&key).now_or_never()?.ok())
            .await;
        let text = |v: Option<Bytes>| v.and_then(|b| String::from_utf8(b.to_vec()).ok());
        match got {
            Got::Store(v) => Got::Store(text(v)),
            Got::Local(v) => Got::Local(text(v)),
            Got::Open => Got::Open,
            Got::Closed => Got::Closed,
        }
    }

    /// Opens a payment session for `payer`; its id, or `None` when the store could not keep it.
    async fn open_session<D: StageStore>(&self, ctx: &StoreCtx<D>, payer: &str, ttl: Duration) -> Option<String> {
        let id = session::new_id()?;
        let key = self.sessions.key(id.as_bytes());
        let value = Bytes::from(payer.to_string());
        let set = self
            .ask(ctx, ctx.store.set(&key, value.clone(), ttl), |m| {
                m.set(&key, value.clone(), ttl).now_or_never()?.ok()
            })
            .await;
        match set {
            Got::Store(()) | Got::Local(()) => Some(id),
            Got::Open | Got::Closed => {
                tracing::warn!(route = %self.route, "a payment session could not be stored; the payer pays again next time");
                None
            }
        }
    }

    /// Settles; on success the answer's JSON. A refusal (`success: false`) is `Ok(Err(json))`.
    async fn settle(&self, body: Bytes) -> Result<Result<Value, Value>, FacilitatorError> {
        let (answer, json) = self.facilitator.settle(body).await?;
        if answer.success {
            self.metrics.settled.increment(1);
            Ok(Ok(json))
        } else {
            self.metrics.failed.increment(1);
            tracing::info!(route = %self.route, reason = answer.error_reason.as_deref().unwrap_or("-"), "payment settlement refused by the facilitator");
            Ok(Err(json))
        }
    }

    /// The answer for a refused settlement: 402, the settlement result in the response header.
    fn settle_refused(&self, version: Version, json: &Value, req_url: Option<&Parts>) -> Response<Bytes> {
        let reason = json
            .get("errorReason")
            .and_then(Value::as_str)
            .unwrap_or("settlement failed");
        let mut resp = match req_url {
            Some(req) => self.required(version, &format!("settlement failed: {reason}"), req),
            None => json_error(
                StatusCode::PAYMENT_REQUIRED,
                "payment_settlement_failed",
                &format!("settlement failed: {reason}"),
                &[("route", json!(self.route))],
            ),
        };
        set_b64(resp.headers_mut(), version.response_header(), json);
        resp
    }

    async fn accept<D: StageStore>(&self, cx: &mut RequestCtx<'_, D>, req: &Parts, p: Paid) -> Flow {
        let version = p.version;
        let offer = match wire::matching(&p, &self.config.accepts) {
            Ok(o) => o,
            Err(why) => {
                self.metrics.rejected.increment(1);
                tracing::info!(route = %self.route, reason = %why, "payment refused: it matches no offer");
                return Flow::Answer(self.required(version, &why, req));
            }
        };
        let now = now_secs();
        let window = offer.max_timeout + MARGIN;
        let timing = if p.valid_before <= now {
            Some("the authorization has expired (validBefore is past)")
        } else if p.valid_after > now + MARGIN.as_secs() {
            Some("the authorization is not valid yet (validAfter is in the future)")
        } else if p.valid_before > now + window.as_secs() {
            Some("the authorization stays valid longer than this route's max_timeout")
        } else {
            None
        };
        if let Some(why) = timing {
            self.metrics.rejected.increment(1);
            return Flow::Answer(self.required(version, why, req));
        }
        // Claim the payment's identity for the fleet until past its validity.
        let a = &p.payload.authorization;
        let lower = |s: &str| s.to_ascii_lowercase();
        let identity = [
            lower(&offer.network),
            lower(&offer.asset),
            lower(&a.from),
            lower(&a.nonce),
        ]
        .join("\0");
        let marker = self.markers.key(identity.as_bytes());
        let ttl = Duration::from_secs(p.valid_before - now) + MARGIN;
        let pending = Bytes::from(format!("pending:{}", cx.store.instance));
        let claimed = self
            .ask(cx.store, cx.store.store.claim(&marker, pending.clone(), ttl), |m| {
                m.claim(&marker, pending.clone(), ttl).now_or_never()?.ok()
            })
            .await;
        let held = match claimed {
            Got::Store(ClaimOutcome::Won) => Held::Shared,
            Got::Local(ClaimOutcome::Won) => Held::Local,
            Got::Store(ClaimOutcome::Held(_)) | Got::Local(ClaimOutcome::Held(_)) => {
                self.metrics.replayed.increment(1);
                tracing::info!(route = %self.route, "payment refused: it was already used");
                return Flow::Answer(self.required(version, "this payment has already been used", req));
            }
            Got::Open => Held::Nowhere,
            Got::Closed => return Flow::Answer(self.store_down()),
        };
        let requirements = match version {
            Version::V2 => wire::requirements_v2(offer),
            Version::V1 => {
                let url = Self::resource_url(req);
                wire::requirements_v1(
                    offer,
                    &wire::Resource {
                        url: &url,
                        description: &self.config.description,
                        mime_type: &self.config.mime_type,
                    },
                )
            }
        };
        let body = Bytes::from(
            json!({
                "x402Version": version.number(),
                "paymentPayload": p.raw,
                "paymentRequirements": requirements,
            })
            .to_string(),
        );
        // The fleet's verdict, or the facilitator's.
        let verdict_key = self.verdicts.key(&body);
        let cached = self
            .ask(cx.store, cx.store.store.get(&verdict_key), |m| {
                m.get(&verdict_key).now_or_never()?.ok()
            })
            .await;
        let cached = match cached {
            Got::Store(v) | Got::Local(v) => v,
            Got::Open => None,
            Got::Closed => {
                self.release(cx.store, &marker, held).await;
                return Flow::Answer(self.store_down());
            }
        };
        let verdict: Result<String, String> = match cached.as_deref() {
            Some([b'v', b':', payer @ ..]) => {
                self.metrics.verdict_cached.increment(1);
                Ok(String::from_utf8_lossy(payer).into_owned())
            }
            Some([b'i', b':', reason @ ..]) => {
                self.metrics.verdict_cached.increment(1);
                Err(String::from_utf8_lossy(reason).into_owned())
            }
            _ => match self.facilitator.verify(body.clone()).await {
                Err(e) => {
                    self.release(cx.store, &marker, held).await;
                    return Flow::Answer(self.facilitator_failed(&e));
                }
                Ok(answer) => {
                    let verdict = if answer.is_valid {
                        Ok(answer.payer.unwrap_or_else(|| a.from.clone()))
                    } else {
                        Err(answer.invalid_reason.unwrap_or_else(|| "invalid payment".into()))
                    };
                    let value = Bytes::from(match &verdict {
                        Ok(payer) => format!("v:{payer}"),
                        Err(reason) => format!("i:{reason}"),
                    });
                    let stored = self
                        .ask(cx.store, cx.store.store.set(&verdict_key, value.clone(), ttl), |m| {
                            m.set(&verdict_key, value.clone(), ttl).now_or_never()?.ok()
                        })
                        .await;
                    if matches!(stored, Got::Open | Got::Closed) {
                        tracing::debug!(route = %self.route, "a payment verdict could not be cached");
                    }
                    verdict
                }
            },
        };
        let payer = match verdict {
            Ok(payer) => payer,
            Err(reason) => {
                self.release(cx.store, &marker, held).await;
                self.metrics.rejected.increment(1);
                tracing::info!(route = %self.route, reason = %reason, "payment refused by the facilitator");
                return Flow::Answer(self.required(version, &format!("invalid payment: {reason}"), req));
            }
        };
        self.metrics.verified.increment(1);
        let mut accepted = Accepted {
            version,
            marker,
            held,
            network: offer.network.clone(),
            payer: payer.clone(),
            body,
            settled: None,
        };
        if self.config.settle == SettleMode::BeforeResponse {
            match self.settle(accepted.body.clone()).await {
                Err(e) => return Flow::Answer(self.facilitator_failed(&e)),
                Ok(Err(json)) => {
                    self.release(cx.store, &accepted.marker, held).await;
                    return Flow::Answer(self.settle_refused(version, &json, Some(req)));
                }
                Ok(Ok(json)) => accepted.settled = Some(json),
            }
        }
        cx.principal = Some(Principal::Payer(payer));
        cx.payment = Some(Box::new(accepted));
        Flow::Continue
    }

    async fn finish<D: StageStore, B: Send>(
        &self,
        cx: &mut RequestCtx<'_, D>,
        resp: &mut Response<B>,
        mut accepted: Accepted,
    ) {
        let version = accepted.version;
        if accepted.settled.is_none() {
            if resp.status().as_u16() >= 500 {
                // Not settled: the client keeps its money and may retry the same payment.
                self.release(cx.store, &accepted.marker, accepted.held).await;
                self.metrics.unsettled.increment(1);
                let result = json!({
                    "success": false,
                    "errorReason": "upstream_error",
                    "transaction": "",
                    "network": accepted.network,
                    "payer": accepted.payer,
                });
                set_b64(resp.headers_mut(), version.response_header(), &result);
                return;
            }
            match self.settle(accepted.body.clone()).await {
                Err(e) => {
                    cx.answer_instead = Some(self.facilitator_failed(&e));
                    return;
                }
                Ok(Err(json)) => {
                    self.release(cx.store, &accepted.marker, accepted.held).await;
                    cx.answer_instead = Some(self.settle_refused(version, &json, None));
                    return;
                }
                Ok(Ok(json)) => accepted.settled = Some(json),
            }
        }
        if let Some(json) = &accepted.settled {
            set_b64(resp.headers_mut(), version.response_header(), json);
        }
        if let Some(ttl) = self.config.session {
            if let Some(id) = self.open_session(cx.store, &accepted.payer, ttl).await {
                if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&self.cookie, &id, ttl)) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
        }
    }
}

fn set_b64(headers: &mut http::HeaderMap, name: &'static str, json: &Value) {
    if let Ok(v) = HeaderValue::from_str(&wire::b64(json.to_string().as_bytes())) {
        headers.insert(name, v);
    }
}

impl<D: StageStore> Stage<D> for Payment {
    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        let payment = match wire::from_headers(&req.headers) {
            Some(Ok(p)) => p,
            Some(Err(m)) => {
                self.metrics.malformed.increment(1);
                tracing::info!(route = %self.route, reason = %m, "payment header refused");
                return Flow::Answer(json_error(
                    StatusCode::BAD_REQUEST,
                    "payment_malformed",
                    &m.to_string(),
                    &[("route", json!(self.route))],
                ));
            }
            None => {
                if self.config.session.is_some() {
                    if let Some(id) = session::cookie(&req.headers, &self.cookie) {
                        let known = if session::valid_id(id) {
                            match self.session_payer(cx.store, id).await {
                                Got::Store(p) | Got::Local(p) => p,
                                Got::Open => None,
                                Got::Closed => return Flow::Answer(self.store_down()),
                            }
                        } else {
                            None
                        };
                        if let Some(payer) = known {
                            self.metrics.session.increment(1);
                            cx.principal = Some(Principal::Payer(payer));
                            return Flow::Continue;
                        }
                        self.metrics.required.increment(1);
                        tracing::debug!(route = %self.route, "payment session cookie unknown or expired");
                        return Flow::Answer(self.required(
                            Version::V2,
                            "the payment session is unknown or has expired; pay again",
                            req,
                        ));
                    }
                }
                self.metrics.required.increment(1);
                return Flow::Answer(self.required(Version::V2, "payment required", req));
            }
        };
        // Boxed: verifying and settling is a large future, and inline it would size every
        // request's (the free ones, the session ones).
        Box::pin(self.accept(cx, req, payment)).await
    }

    async fn response<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) {
        if let Some(accepted) = cx.payment.take() {
            Box::pin(self.finish(cx, resp, *accepted)).await;
        }
    }
}

/// The payment session cookie a request carries for route `route`, if it has a session's shape.
pub fn session_cookie<'a>(headers: &'a http::HeaderMap, route: &str) -> Option<&'a str> {
    session::cookie(headers, &session::cookie_name(route)).filter(|id| session::valid_id(id))
}
