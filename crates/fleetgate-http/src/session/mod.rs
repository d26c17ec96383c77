//! Gateway sessions (`forward_auth.session`) as a stage: no sticky load balancing needed.
//!
//! After forward auth allowed a request, [`SessionStore::open`] keeps the identity headers it
//! copied upstream in the store under a random 128-bit id, and the client gets that id in a
//! cookie (`HttpOnly; SameSite=Lax; Path=/`, and `Secure` when the request came over TLS).
//! The way in, for a request carrying the cookie:
//! 1. the cookie is taken out of the request: neither the auth service nor the upstream sees
//!    the session id (nor is it hashed into the verdict cache);
//! 2. on the logout path, the session is deleted from the store (so no instance knows it any
//!    more) and the gateway answers 200 with a cookie that expires at once;
//! 3. a known session (read and extended in one store call: a sliding TTL) sets its identity
//!    headers on the request, replacing any copies the client sent, and forward auth is skipped
//!    on whatever instance the request reached;
//! 4. an unknown one (forged, expired, logged out) or one not shaped like an id (never looked
//!    up) is no session: forward auth asks the auth service as if there were no cookie.
//!
//! Session ids are never logged nor put in metrics. Store failures follow the forward auth's
//! `on_store_error` through [`StoreCtx::decide`]: `closed` answers 503, `open` treats the
//! session as unknown, `local` keeps sessions in this instance's memory.

use crate::context::{ArrivedOverTls, Principal, RequestCtx};
use crate::forward_auth::verdict::{put_headers, take_headers, HeaderList};
use crate::forward_auth::ForwardAuthConfig;
use crate::metrics::DecisionMetrics;
use crate::payment::session::{cookie, new_id, valid_id};
use crate::refusal::json_error;
use crate::stage::{Flow, Stage};
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use bytes::{Bytes, BytesMut};
use fleetgate_store::{Concern, Keyspace, ScopedKeys, StoreDriver};
use futures_util::FutureExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use metrics::{counter, Counter};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// `fleetgate_forward_auth_sessions_total{route, outcome}`.
pub const SESSIONS: &str = "fleetgate_forward_auth_sessions_total";
/// The forward auth's store calls under its failure policy (`fallback_open`, `fallback_closed`...).
pub const STORE_DECISIONS: &str = "fleetgate_forward_auth_store_decisions_total";

/// A request extension: a session admitted this request, so forward auth does not ask.
#[derive(Debug, Clone, Copy)]
pub struct SessionAdmitted;

/// Session outcomes of one route: `used` (a known session admitted the request), `unknown`
/// (a cookie the store does not know, or not shaped like an id), `opened`, `not_stored` (an
/// allowed check whose session the store could not keep), `ended` (logout),
/// `store_unavailable` (503 under `closed`).
#[derive(Clone)]
struct SessionMetrics {
    used: Counter,
    unknown: Counter,
    opened: Counter,
    not_stored: Counter,
    ended: Counter,
    store_unavailable: Counter,
}

impl SessionMetrics {
    fn new(route: &str) -> Self {
        let c = |outcome: &'static str| counter!(SESSIONS, "route" => route.to_string(), "outcome" => outcome);
        SessionMetrics {
            used: c("used"),
            unknown: c("unknown"),
            opened: c("opened"),
            not_stored: c("not_stored"),
            ended: c("ended"),
            store_unavailable: c("store_unavailable"),
        }
    }
}

/// One route's sessions: where they live, their cookie, and what they carry.
pub struct SessionStore {
    route: String,
    keys: ScopedKeys,
    cookie: String,
    ttl: Duration,
    logout_path: Option<String>,
    /// The identity headers a session sets (and whose client copies it removes).
    identity: Vec<HeaderName>,
    policy: ConcernPolicy,
    metrics: SessionMetrics,
}

/// A session value: a version byte, then the identity headers.
const VALUE_V1: u8 = b'S';

/// Whether the request came over TLS (the gateway marks it; a library user's absolute-form
/// `https` URI counts too).
pub(crate) fn over_tls(req: &Parts) -> bool {
    req.extensions.get::<ArrivedOverTls>().is_some() || req.uri.scheme_str() == Some("https")
}

/// Removes every header named in `names` (the copies a client may have forged).
pub(crate) fn strip(headers: &mut HeaderMap, names: &[HeaderName]) {
    for n in names {
        headers.remove(n);
    }
}

/// Removes cookie `name` from every `Cookie` header (a header left empty goes).
fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| {
            let text = h.to_str().ok()?;
            let pairs: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(k, _)| k.trim() != name))
                .collect();
            if pairs.is_empty() {
                None
            } else {
                HeaderValue::from_str(&pairs.join("; ")).ok()
            }
        })
        .collect();
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
}

impl SessionStore {
    /// Route `route`'s sessions, if its forward auth has them.
    pub fn for_route(keyspace: &Keyspace, route: &str, config: &ForwardAuthConfig) -> Option<Arc<Self>> {
        let s = config.session.as_ref()?;
        Some(Arc::new(SessionStore {
            route: route.to_string(),
            keys: keyspace.scoped(Concern::Session, &format!("fa/{route}")),
            cookie: s.cookie.clone(),
            ttl: s.ttl,
            logout_path: s.logout_path.clone(),
            identity: identity_names(config),
            policy: ConcernPolicy {
                name: "session".into(),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(STORE_DECISIONS, route, "session"),
            },
            metrics: SessionMetrics::new(route),
        }))
    }

    async fn ask<D: StageStore, T, F>(
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

    /// Opens a session carrying `identity`; the `Set-Cookie` value for it, or `None` when the
    /// store could not keep it (the request goes on; the next one asks the auth service again).
    pub async fn open<D: StageStore>(
        &self,
        ctx: &StoreCtx<D>,
        identity: &HeaderList,
        tls: bool,
    ) -> Option<HeaderValue> {
        let Some(id) = new_id() else {
            self.metrics.not_stored.increment(1);
            tracing::warn!(route = %self.route, "no randomness for a session id; no session opened");
            return None;
        };
        let key = self.keys.key(id.as_bytes());
        let mut value = BytesMut::with_capacity(64);
        value.extend_from_slice(&[VALUE_V1]);
        put_headers(&mut value, identity);
        let value = value.freeze();
        let ttl = self.ttl;
        let set = self
            .ask(ctx, ctx.store.set(&key, value.clone(), ttl), |m| {
                m.set(&key, value.clone(), ttl).now_or_never()?.ok()
            })
            .await;
        match set {
            Decided::Store(()) | Decided::Local(()) => {
                self.metrics.opened.increment(1);
                let secure = if tls { "; Secure" } else { "" };
                HeaderValue::from_str(&format!("{}={id}; Path=/; HttpOnly; SameSite=Lax{secure}", self.cookie)).ok()
            }
            Decided::Open | Decided::Closed => {
                self.metrics.not_stored.increment(1);
                tracing::warn!(route = %self.route, "a session could not be stored; the next request asks the auth service again");
                None
            }
        }
    }

    fn store_down(&self) -> Response<Bytes> {
        self.metrics.store_unavailable.increment(1);
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "sessions cannot be checked: the store is unavailable and forward auth's policy is closed",
            &[("route", json!(self.route))],
        )
    }

    /// Deletes the session (if any) and answers 200 with a cookie expiring at once.
    async fn logout<D: StageStore>(&self, ctx: &StoreCtx<D>, id: Option<&str>, tls: bool) -> Response<Bytes> {
        if let Some(id) = id.filter(|id| valid_id(id)) {
            let key = self.keys.key(id.as_bytes());
            let deleted = self
                .ask(ctx, ctx.store.delete(&key), |m| m.delete(&key).now_or_never()?.ok())
                .await;
            match deleted {
                Decided::Store(_) | Decided::Local(_) => self.metrics.ended.increment(1),
                // Under `open` the session may outlive this logout (until its idle TTL).
                Decided::Open => {
                    tracing::warn!(route = %self.route, "a session could not be deleted: the store is unavailable")
                }
                Decided::Closed => return self.store_down(),
            }
        }
        let body = json!({"status": "logged_out", "route": self.route}).to_string() + "\n";
        let mut resp = Response::new(Bytes::from(body));
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let secure = if tls { "; Secure" } else { "" };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}",
            self.cookie
        )) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// The identity headers a route's sessions carry.
fn identity_names(config: &ForwardAuthConfig) -> Vec<HeaderName> {
    config
        .upstream_headers
        .iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect()
}

/// Who an identity speaks for: the first identity header's value, if any.
pub(crate) fn principal(identity: &HeaderList) -> Option<Principal> {
    let (_, v) = identity.first()?;
    Some(Principal::Authenticated(
        String::from_utf8_lossy(v.as_bytes()).into_owned(),
    ))
}

/// Sets `identity` on the request, replacing what the client sent under those names.
pub(crate) fn apply(headers: &mut HeaderMap, names: &[HeaderName], identity: &HeaderList) {
    strip(headers, names);
    for (n, v) in identity {
        headers.append(n.clone(), v.clone());
    }
}

/// The session stage of one route.
pub struct Session {
    store: Arc<SessionStore>,
}

impl Session {
    pub fn new(store: Arc<SessionStore>) -> Self {
        Session { store }
    }
}

impl<D: StageStore> Stage<D> for Session {
    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        let s = &*self.store;
        let id = cookie(&req.headers, &s.cookie).map(str::to_owned);
        if id.is_some() {
            remove_cookie(&mut req.headers, &s.cookie);
        }
        if s.logout_path.as_deref() == Some(req.uri.path()) {
            return Flow::Answer(s.logout(cx.store, id.as_deref(), over_tls(req)).await);
        }
        let Some(id) = id else {
            return Flow::Continue;
        };
        if !valid_id(&id) {
            s.metrics.unknown.increment(1);
            return Flow::Continue;
        }
        let key = s.keys.key(id.as_bytes());
        let ttl = s.ttl;
        let got = s
            .ask(cx.store, cx.store.store.get_extend(&key, ttl), |m| {
                m.get_extend(&key, ttl).now_or_never()?.ok()
            })
            .await;
        let value = match got {
            Decided::Store(v) | Decided::Local(v) => v,
            Decided::Open => None,
            Decided::Closed => return Flow::Answer(s.store_down()),
        };
        let identity = value.as_deref().and_then(|v| match v.split_first()? {
            (&VALUE_V1, rest) => match take_headers(rest)? {
                (h, []) => Some(h),
                _ => None,
            },
            _ => None,
        });
        match identity {
            Some(identity) => {
                s.metrics.used.increment(1);
                apply(&mut req.headers, &s.identity, &identity);
                cx.principal = principal(&identity);
                req.extensions.insert(SessionAdmitted);
            }
            None => {
                s.metrics.unknown.increment(1);
                tracing::debug!(route = %s.route, "session cookie unknown or expired; asking the auth service");
            }
        }
        Flow::Continue
    }

    /// No way out of its own.
    fn response_now<B: Send>(&self, _cx: &mut RequestCtx<'_, D>, _resp: &mut http::Response<B>) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_taken_out_and_others_stay() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; fg_session=abc; b=2".parse().unwrap());
        h.append(header::COOKIE, "fg_session=def".parse().unwrap());
        remove_cookie(&mut h, "fg_session");
        let left: Vec<_> = h.get_all(header::COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(left, ["a=1; b=2"]);
    }
}
