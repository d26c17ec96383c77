//! What the stages of one request share: who the client is, which route it took, who it acts
//! as, the RateLimit headers gathered so far, what must be held until the response is over
//! (guards), and when it started.

use crate::rate_headers::RateHeaders;
use crate::store_ctx::StoreCtx;
use bytes::Bytes;
use fleetgate_store::Store;
use http::Response;
use std::net::IpAddr;
use std::time::Instant;

/// Who a request acts as, once a stage has established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A payer (the address that paid for the request).
    Payer(String),
    /// A gateway session.
    Session(String),
    /// An identity vouched for by the forward-auth service.
    Authenticated(String),
}

/// Marks a request that arrived over TLS (a request extension the gateway sets), so that
/// cookies are `Secure` and `X-Forwarded-Proto` says `https`.
#[derive(Debug, Clone, Copy)]
pub struct ArrivedOverTls;

/// Something held until the response is over: dropped when its body has ended or the client
/// has gone (a concurrency permit gives its slot back when dropped).
pub type Guard = Box<dyn Send + 'static>;

/// The per-request context the stages of a pipeline share.
pub struct RequestCtx<'r, D = Store> {
    /// The store, its fallback and the fleet size, for this worker.
    pub store: &'r StoreCtx<D>,
    /// The client: the TCP peer, or the address a trusted proxy forwarded for.
    pub client_ip: IpAddr,
    /// The route's name.
    pub route: &'r str,
    /// Who the request acts as, if a stage has established it.
    pub principal: Option<Principal>,
    /// RateLimit-Policy and RateLimit items of every limit the request passed.
    pub rate_headers: RateHeaders,
    /// Held until the response body ends or the client leaves.
    pub guards: Vec<Guard>,
    /// When the request arrived, when something (an access log, a stage) needs it: reading the
    /// clock is not free, so it is only read on demand.
    pub started: Option<Instant>,
    /// What the payment gate's way out needs of a payment its way in accepted.
    pub payment: Option<Box<crate::payment::Accepted>>,
    /// Set by a response phase that must answer instead of the service (a failed settlement):
    /// the service's response, body and all, is dropped for this one.
    pub answer_instead: Option<Response<Bytes>>,
    /// Charges of `count_statuses` limits (by the limit's place in its stage), settled in the
    /// response phase once the status is known.
    pub status_charges: Vec<(usize, crate::ratelimit::Charge)>,
    /// A gateway session opened on the way in: its `Set-Cookie`, added on the way out.
    pub session_cookie: Option<http::HeaderValue>,
    /// An idempotency key this request claimed: its response body is teed into the store
    /// (see [`crate::idempotency::InFlight::tee`]); dropped, the claim is released.
    pub idempotency: Option<Box<crate::idempotency::InFlight>>,
    /// What the cache's way out needs of what its way in found.
    pub cache: Option<Box<crate::cache::Exchange>>,
    /// Set by the cache's way out: the response body is teed into the store as it streams
    /// (the server wraps the body with it).
    pub cache_fill: Option<crate::cache::Fill>,
    /// What dedup decided on the way in; the gateway hands the response to
    /// [`crate::dedup::DedupCtx::respond`] (the leader's tee, a follower's live body).
    pub dedup: Option<crate::dedup::DedupCtx>,
}

impl<'r, D> RequestCtx<'r, D> {
    pub fn new(store: &'r StoreCtx<D>, client_ip: IpAddr, route: &'r str) -> Self {
        RequestCtx {
            store,
            client_ip,
            route,
            principal: None,
            rate_headers: RateHeaders::default(),
            guards: Vec::new(),
            started: None,
            payment: None,
            answer_instead: None,
            status_charges: Vec::new(),
            session_cookie: None,
            idempotency: None,
            cache: None,
            cache_fill: None,
            dedup: None,
        }
    }
}

/// What the complete phase sees: how the request ended.
#[derive(Debug, Clone)]
pub struct Completion {
    pub status: u16,
    pub client_ip: IpAddr,
    pub principal: Option<Principal>,
    pub started: Option<Instant>,
    /// Whether the whole body was sent (false: the client left, or the body failed).
    pub body_finished: bool,
    /// The request's method.
    pub method: http::Method,
    /// The request's path, without its query.
    pub path: String,
    /// The upstream target that answered (its URL), if the request went upstream.
    pub upstream: Option<String>,
    /// Whether a stage answered the request itself (a limit refused it, for instance) rather
    /// than the upstream or the route's own answer.
    pub answered_by_stage: bool,
    /// Response body bytes sent (counted as the body is sent; filled in at the end).
    pub bytes: u64,
}
