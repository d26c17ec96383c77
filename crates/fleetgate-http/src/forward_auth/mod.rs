//! Forward auth with a fleet-wide verification cache (`forward_auth:` on a route), as a stage.
//!
//! The way in, for a request that no gateway session admitted (see [`crate::session`]):
//! 1. copies the client sent of the `upstream_headers` are removed: only the auth service can
//!    set them;
//! 2. the credentials (the values of `request_headers`) are hashed with a keyed BLAKE3 (the key
//!    derived from `cache_key`, else from the route's name) into the verdict's store key;
//! 3. concurrent identical checks on this instance (same credentials, method and URI) share
//!    one (`flight.rs`): the fleet's cached verdict, else one `GET url` to the auth service with
//!    the listed headers and `X-Forwarded-Method`, `-Proto`, `-Host`, `-Uri` and `-For`;
//! 4. 2xx allows: the answer's `upstream_headers` are set on the request (the principal is the
//!    first one's value), the verdict is cached for `cache_ttl`, and with `session` a gateway
//!    session is opened (its cookie set on the way out);
//! 5. 3xx and 4xx deny: the client gets the auth service's status, body, `WWW-Authenticate`,
//!    `Location` and `Content-Type`; a 4xx verdict is cached for `deny_ttl` (a 3xx is not: its
//!    `Location` usually names the original URL, which differs between requests);
//! 6. no answer within `timeout`, no connection, or a 5xx or 1xx: 502 with a JSON body naming
//!    why; nothing is cached.
//!
//! A verdict covers every path and method of the route: an auth service that decides by path
//! (it gets `X-Forwarded-Uri`) needs one route per decision, or a short `cache_ttl`.
//!
//! Store failures follow `on_store_error` through [`StoreCtx::decide`]: `closed` (the default)
//! answers 503 at once, without asking the auth service; `open` asks it without the fleet's
//! cache; `local` caches in this instance's memory.

mod client;
mod config;
mod flight;
pub mod verdict;

pub use client::{AuthAnswer, AuthClient, AuthError, AuthService, MAX_AUTH_ANSWER_BYTES};
pub use config::{ForwardAuthConfig, SessionConfig};
pub use verdict::Verdict;

use crate::context::RequestCtx;
use crate::metrics::DecisionMetrics;
use crate::refusal::json_error;
use crate::session::{self, Session, SessionAdmitted, SessionStore};
use crate::stage::{Flow, Stage};
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use bytes::Bytes;
use fleetgate_store::{Concern, Keyspace, ScopedKeys, StoreDriver, StoreKey};
use flight::Flights;
use futures_util::FutureExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use metrics::{counter, Counter};
use serde_json::json;
use std::sync::Arc;

/// `fleetgate_forward_auth_total{route, outcome, cached}`.
pub const FORWARD_AUTH: &str = "fleetgate_forward_auth_total";

/// Checks of one route: `outcome` is `allow`, `deny` or `error` (no verdict: the auth service
/// failed, or the store did under `closed`); `cached` is whether this request was decided
/// without an auth call of its own (the fleet's cache, or a concurrent identical check).
#[derive(Clone)]
struct CheckMetrics {
    allow: [Counter; 2],
    deny: [Counter; 2],
    error: Counter,
}

impl CheckMetrics {
    fn new(route: &str) -> Self {
        let c = |outcome: &'static str, cached: &'static str| counter!(FORWARD_AUTH, "route" => route.to_string(), "outcome" => outcome, "cached" => cached);
        CheckMetrics {
            allow: [c("allow", "false"), c("allow", "true")],
            deny: [c("deny", "false"), c("deny", "true")],
            error: c("error", "false"),
        }
    }
}

/// What one shared check found.
#[derive(Clone)]
enum Checked {
    /// A verdict, and whether the auth service was asked for it.
    Verdict(Arc<Verdict>, bool),
    /// The store failed under `closed`.
    StoreDown,
    /// The auth service gave no verdict.
    Failed(AuthError),
}

/// The forward auth of one route.
pub struct ForwardAuth {
    route: String,
    config: ForwardAuthConfig,
    service: AuthService,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    /// Keys the credentials' hash: the same on every instance with the same configuration.
    hash_key: [u8; 32],
    verdicts: ScopedKeys,
    flights: Flights<Checked>,
    sessions: Option<Arc<SessionStore>>,
    policy: ConcernPolicy,
    metrics: CheckMetrics,
}

fn names(list: &[String]) -> Vec<HeaderName> {
    list.iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

/// Route `route`'s session stage and forward auth stage, if it has forward auth (the session
/// stage only with `session`). The session stage goes first in the pipeline.
pub fn for_route(
    keyspace: &Keyspace,
    route: &str,
    config: Option<&ForwardAuthConfig>,
    client: &Arc<dyn AuthClient>,
) -> (Option<Session>, Option<ForwardAuth>) {
    let Some(config) = config else {
        return (None, None);
    };
    let sessions = SessionStore::for_route(keyspace, route, config);
    let auth = ForwardAuth::new(keyspace, route, config, client.clone(), sessions.clone());
    (sessions.map(Session::new), Some(auth))
}

impl ForwardAuth {
    /// Route `route`'s forward auth, asking through `client`, opening sessions in `sessions`.
    pub fn new(
        keyspace: &Keyspace,
        route: &str,
        config: &ForwardAuthConfig,
        client: Arc<dyn AuthClient>,
        sessions: Option<Arc<SessionStore>>,
    ) -> Self {
        let material = match &config.cache_key {
            Some(secret) => format!("secret\0{secret}"),
            None => format!("route\0{route}"),
        };
        ForwardAuth {
            route: route.to_string(),
            service: AuthService::new(&config.url, config.timeout, client),
            request_headers: names(&config.request_headers),
            upstream_headers: names(&config.upstream_headers),
            hash_key: blake3::derive_key("fleetgate forward_auth verdict cache v1", material.as_bytes()),
            verdicts: keyspace.scoped(Concern::Verification, &format!("fa/{route}")),
            flights: Flights::default(),
            sessions,
            policy: ConcernPolicy {
                name: "forward_auth".into(),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(session::STORE_DECISIONS, route, "forward_auth"),
            },
            metrics: CheckMetrics::new(route),
            config: config.clone(),
        }
    }

    /// The verdict's store key for the request's credentials.
    fn verdict_key(&self, req: &Parts) -> StoreKey {
        let mut h = blake3::Hasher::new_keyed(&self.hash_key);
        for name in &self.request_headers {
            h.update(name.as_str().as_bytes());
            // Header values hold no NUL nor \x01 (RFC 9110): the separators are unambiguous.
            for v in req.headers.get_all(name) {
                h.update(b"\x01");
                h.update(v.as_bytes());
            }
            h.update(b"\0");
        }
        self.verdicts.key(h.finalize().as_bytes())
    }

    /// What the auth service is sent: the listed headers and the original request's shape.
    fn check_headers(&self, req: &Parts, client_ip: std::net::IpAddr) -> HeaderMap {
        let mut out = HeaderMap::new();
        for name in &self.request_headers {
            for v in req.headers.get_all(name) {
                out.append(name.clone(), v.clone());
            }
        }
        let mut put = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                out.insert(HeaderName::from_static(name), v);
            }
        };
        put("x-forwarded-method", req.method.as_str());
        put(
            "x-forwarded-proto",
            if session::over_tls(req) { "https" } else { "http" },
        );
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri.authority().map(|a| a.to_string()));
        if let Some(host) = host {
            put("x-forwarded-host", &host);
        }
        put("x-forwarded-uri", req.uri.path_and_query().map_or("/", |p| p.as_str()));
        put("x-forwarded-for", &client_ip.to_string());
        out
    }

    async fn ask_store<D: StageStore, T, F>(
        &self,
        ctx: &StoreCtx<D>,
        call: F,
        local: impl FnOnce(&fleetgate_store::MemoryStore) -> Option<T>,
    ) -> Decided<T>
    where
        F: std::future::Future<Output = Result<T, fleetgate_store::StoreError>>,
    {
        ctx.decide(&self.policy, Op::Marker, call, |_| {}, |m, _| local(m))
            .await
    }

    /// The verdict of an answer: 2xx allows with the identity headers, 3xx and 4xx deny.
    fn verdict_of(&self, answer: client::AuthAnswer) -> Verdict {
        let pick = |names: &mut dyn Iterator<Item = &HeaderName>| {
            names
                .flat_map(|n| answer.headers.get_all(n).iter().map(move |v| (n.clone(), v.clone())))
                .collect::<Vec<_>>()
        };
        if (200..300).contains(&answer.status) {
            Verdict::Allow(pick(&mut self.upstream_headers.iter()))
        } else {
            let denial: Vec<HeaderName> = verdict::DENIAL_HEADERS
                .iter()
                .map(|n| HeaderName::from_static(n))
                .collect();
            Verdict::Deny {
                status: answer.status,
                headers: pick(&mut denial.iter()),
                body: answer.body.clone(),
            }
        }
    }

    /// One check: the fleet's cached verdict, else the auth service's (then cached).
    async fn check<D: StageStore>(&self, ctx: &StoreCtx<D>, key: &StoreKey, headers: HeaderMap) -> Checked {
        let cached = self
            .ask_store(ctx, ctx.store.get(key), |m| m.get(key).now_or_never()?.ok())
            .await;
        match cached {
            Decided::Store(Some(b)) | Decided::Local(Some(b)) => match Verdict::decode(&b) {
                Some(v) => return Checked::Verdict(Arc::new(v), false),
                None => {
                    tracing::warn!(route = %self.route, "a cached forward auth verdict does not decode; asking again")
                }
            },
            Decided::Store(None) | Decided::Local(None) | Decided::Open => {}
            Decided::Closed => return Checked::StoreDown,
        }
        let answer = match self.service.ask(headers).await {
            Ok(a) => a,
            Err(e) => return Checked::Failed(e),
        };
        let verdict = self.verdict_of(answer);
        let ttl = match &verdict {
            Verdict::Allow(_) => self.config.cache_ttl,
            // A redirect names where to come back to (the original URL, which the key does not
            // hold): replayed to another request it would send the client elsewhere.
            Verdict::Deny { status, .. } if *status < 400 => return Checked::Verdict(Arc::new(verdict), true),
            Verdict::Deny { .. } => self.config.deny_ttl,
        };
        let value = verdict.encode();
        let stored = self
            .ask_store(ctx, ctx.store.set(key, value.clone(), ttl), |m| {
                m.set(key, value.clone(), ttl).now_or_never()?.ok()
            })
            .await;
        if matches!(stored, Decided::Open | Decided::Closed) {
            tracing::debug!(route = %self.route, "a forward auth verdict could not be cached");
        }
        Checked::Verdict(Arc::new(verdict), true)
    }

    fn store_down(&self) -> Response<Bytes> {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "credentials cannot be checked: the store is unavailable and forward auth's policy is closed",
            &[("route", json!(self.route))],
        )
    }

    fn failed(&self, e: &AuthError) -> Response<Bytes> {
        tracing::warn!(route = %self.route, error = %e, "forward auth gave no verdict");
        json_error(
            StatusCode::BAD_GATEWAY,
            e.code(),
            &e.to_string(),
            &[("route", json!(self.route))],
        )
    }
}

/// Which concurrent checks are one: the same credentials (the verdict's key) for the same method
/// and URI. The URI counts because a denial may name it (a redirect's `Location`): two requests
/// for different URLs must not share one.
fn flight_key(verdict: &StoreKey, req: &Parts) -> u128 {
    let mut h = blake3::Hasher::new();
    h.update(&verdict.digest().to_le_bytes());
    h.update(req.method.as_str().as_bytes());
    h.update(b" ");
    h.update(req.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&h.finalize().as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// The client's answer for a denial: as the auth service gave it.
fn denial(status: u16, headers: &verdict::HeaderList, body: &Bytes) -> Response<Bytes> {
    let mut resp = Response::new(body.clone());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
    for (n, v) in headers {
        resp.headers_mut().append(n.clone(), v.clone());
    }
    resp
}

impl<D: StageStore> Stage<D> for ForwardAuth {
    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        if req.extensions.get::<SessionAdmitted>().is_some() {
            return Flow::Continue;
        }
        session::strip(&mut req.headers, &self.upstream_headers);
        let key = self.verdict_key(req);
        let headers = self.check_headers(req, cx.client_ip);
        let store = cx.store;
        // Boxed: the auth call's future is large, and inline it would size every route's.
        let (checked, ran) = Box::pin(
            self.flights
                .run(flight_key(&key, req), || self.check(store, &key, headers)),
        )
        .await;
        let (verdict, called) = match checked {
            Checked::Verdict(v, called) => (v, called && ran),
            Checked::StoreDown => {
                self.metrics.error.increment(1);
                return Flow::Answer(self.store_down());
            }
            Checked::Failed(e) => {
                self.metrics.error.increment(1);
                return Flow::Answer(self.failed(&e));
            }
        };
        let cached = usize::from(!called);
        match &*verdict {
            Verdict::Deny { status, headers, body } => {
                self.metrics.deny[cached].increment(1);
                tracing::debug!(route = %self.route, status, "forward auth denied the request");
                Flow::Answer(denial(*status, headers, body))
            }
            Verdict::Allow(identity) => {
                self.metrics.allow[cached].increment(1);
                session::apply(&mut req.headers, &self.upstream_headers, identity);
                cx.principal = session::principal(identity);
                if let Some(sessions) = &self.sessions {
                    cx.session_cookie = sessions.open(cx.store, identity, session::over_tls(req)).await;
                }
                Flow::Continue
            }
        }
    }

    async fn response<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) {
        if let Some(cookie) = cx.session_cookie.take() {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
    }
}

#[cfg(test)]
mod tests;
