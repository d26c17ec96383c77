//! In-flight dedup (`dedup:` on a route): identical requests in flight at once, on one instance
//! or across the fleet, share one upstream call, and a completed response is served to
//! identical requests for `window`.
//!
//! * **Identity**: sha256 over the configured key parts (method, path and query, the whole
//!   body, chosen headers), each length-prefixed. A body over `max_body`, or one the gateway
//!   did not read ahead, is not deduplicated (`X-Dedup: fallthrough`).
//! * **On one instance** the first request of an identity drives its [`flight`]: it alone
//!   talks to the store; identical requests arriving meanwhile wait on the flight in process
//!   (no store call each) and, once the leader's head is known, get its body chunk by chunk as
//!   it arrives (SSE and chunked answers are fanned out live, up to `max_response`).
//! * **Across instances** the driver reads the stored response (`get`); if there is none, it
//!   claims the identity's lock with a lease (`claim`, renewed by `get_extend`) and becomes the
//!   leader, or
//!   else waits for the leader's completion notice (`subscribe` on one channel per route and
//!   instance, `publish` by the leader) with a bounded poll as backup (the notice can be
//!   missed), reads the stored response and answers it. A streamed answer (no known length)
//!   is also written by the leader chunk by chunk (head first), each with a notice; a follower
//!   instance pumps the chunks into its own flight, so its followers get them live too.
//! * **Never worse than no dedup**: a waiter past `max_wait` calls the upstream itself; when the
//!   leader's lease expires (its instance died) the first waiter to take the lock becomes the
//!   new leader, and so when the leader's client leaves before its answer is over; a leader
//!   whose answer is a 5xx, fails mid-body or outgrows `max_response` leaves a short "pass"
//!   marker and followers call the upstream themselves. The store failing applies
//!   `on_store_error`: `open` passes through, `closed` answers 503.
//! * The leader renews its lease while its call lasts and writes the stored response only while
//!   it still holds the lock (a leader whose lease ran out and was taken over does not write;
//!   the check and the write are two calls, see docs/dedup.md). The seam's fencing `lock` is
//!   not used: it keeps a counter per lock name forever, and these names are per identity.
//!
//! Every answer says what happened: `X-Dedup: leader | follower | replay | fallthrough` and a
//! `Cache-Status` entry (RFC 9211) `fleetgate-dedup; fwd=miss`, `; hit`, or `; fwd=bypass;
//! detail=...`; `fleetgate_dedup_total{route, role}` counts them (`refused`: 503 under
//! `closed`).
//!
//! The gateway calls [`DedupCtx::respond`] on the response (the hook that wraps the leader's
//! body in the tee and gives a follower its live body); it reads the body ahead as
//! [`crate::body_fields::BufferedBody`] when the key names `body`.

pub mod body;
pub(crate) mod config;
pub(crate) mod flight;
pub(crate) mod record;
mod remote;

pub use config::{DedupConfig, DedupKeyPart};

use crate::body_fields::BufferedBody;
use crate::context::RequestCtx;
use crate::metrics::DecisionMetrics;
use crate::stage::{Flow, Stage};
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use body::{BoxError, FollowBody, OnEnd, Outcome, TeeBody};
use bytes::Bytes;
use fleetgate_store::{ClaimOutcome, Concern, Keyspace, ScopedKeys, StoreKey};
use flight::{Driving, End, Flight, Flights, Head, Id, State};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use metrics::{counter, Counter};
use record::Stored;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// `fleetgate_dedup_total{route, role}`.
pub const DEDUP_TOTAL: &str = "fleetgate_dedup_total";
/// The store decisions of dedup under its failure policy.
pub const DEDUP_STORE_DECISIONS: &str = "fleetgate_dedup_store_decisions_total";
/// `X-Dedup`.
pub const X_DEDUP: HeaderName = HeaderName::from_static("x-dedup");
/// `Cache-Status` (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// The longest pause between two looks at the store while waiting (the poll behind the
/// notice); shorter with a short lease (half of it).
const POLL: Duration = Duration::from_millis(250);
/// How long a "pass" marker (a leader that had nothing to share) is kept.
const PASS_TTL: Duration = Duration::from_secs(1);

/// What dedup did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Called the upstream; identical requests shared its answer.
    Leader,
    /// Waited for a leader in flight and got its answer.
    Follower,
    /// Got a completed response kept for the window.
    Replay,
    /// Not deduplicated: called the upstream itself (see the detail).
    Fallthrough,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Replay => "replay",
            Role::Fallthrough => "fallthrough",
        }
    }
}

/// The dedup role of a response, in its extensions (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupRole(pub Role);

struct DedupMetrics {
    leader: Counter,
    follower: Counter,
    replay: Counter,
    fallthrough: Counter,
    refused: Counter,
}

impl DedupMetrics {
    fn new(route: &str) -> Self {
        let c = |role: &'static str| counter!(DEDUP_TOTAL, "route" => route.to_string(), "role" => role);
        DedupMetrics {
            leader: c("leader"),
            follower: c("follower"),
            replay: c("replay"),
            fallthrough: c("fallthrough"),
            refused: c("refused"),
        }
    }

    fn count(&self, role: Role) {
        match role {
            Role::Leader => &self.leader,
            Role::Follower => &self.follower,
            Role::Replay => &self.replay,
            Role::Fallthrough => &self.fallthrough,
        }
        .increment(1);
    }
}

/// The dedup stage of one route.
pub struct Dedup {
    config: DedupConfig,
    records: ScopedKeys,
    /// A streamed answer's head (0) and chunks (1...), for followers on other instances.
    chunks: ScopedKeys,
    locks: ScopedKeys,
    channel: String,
    flights: Arc<Flights>,
    notices: Arc<broadcast::Sender<Id>>,
    listening: AtomicBool,
    policy: ConcernPolicy,
    metrics: DedupMetrics,
    seq: AtomicU64,
}

/// What a request's dedup left for its way out, and for the gateway's body hook.
pub struct DedupCtx {
    role: Role,
    detail: Option<&'static str>,
    lead: Option<Lead>,
    follow: Option<watch::Receiver<State>>,
}

/// A leader's part: its flight, and what to do when its body is over.
struct Lead {
    flight: Arc<Flight>,
    on_end: Option<OnEnd>,
    /// Starts the writer of a streamed answer's chunks for other instances (given the head).
    remote: Option<remote::RemoteWriter>,
    /// Whether the way out shared a head (the body is then teed).
    shared: bool,
}

impl Drop for Lead {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            self.flight.end(End::Failed);
            on_end(Outcome::Gone);
        }
    }
}

impl Lead {
    /// The call's answer is not worth sharing (a 5xx): followers call the upstream themselves.
    fn fail(mut self) {
        if let Some(on_end) = self.on_end.take() {
            self.flight.end(End::Pass);
            on_end(Outcome::Failed);
        }
    }
}

impl DedupCtx {
    fn role(role: Role, detail: Option<&'static str>) -> Self {
        DedupCtx {
            role,
            detail,
            lead: None,
            follow: None,
        }
    }

    /// The response with its body as dedup needs it: a leader's teed to its followers and the
    /// store, a live follower's read from its leader's flight, any other unchanged.
    pub fn respond<B>(mut self, resp: Response<B>) -> Response<UnsyncBoxBody<Bytes, BoxError>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let Some(rx) = self.follow.take() {
            return resp.map(|_| FollowBody::new(rx).boxed_unsync());
        }
        if let Some(mut lead) = self.lead.take() {
            if let (true, Some(on_end)) = (lead.shared, lead.on_end.take()) {
                let flight = lead.flight.clone();
                if resp.body().is_end_stream() {
                    // An empty body (204, 304...) is never polled: it is complete now.
                    flight.end(End::Complete);
                    on_end(Outcome::Complete(Vec::new()));
                    return resp.map(|b| b.map_err(Into::into).boxed_unsync());
                }
                // A streamed answer (no known length: SSE, chunked) is also written chunk by
                // chunk for followers on other instances.
                let remote = match (resp.body().size_hint().exact(), lead.remote.take(), flight.head()) {
                    (None, Some(start), Some(head)) => Some(start(record::encode_response(&head, &[]))),
                    _ => None,
                };
                return resp.map(|b| {
                    let tee = TeeBody::new(b, flight, on_end);
                    match remote {
                        Some(tx) => tee.with_remote(tx).boxed_unsync(),
                        None => tee.boxed_unsync(),
                    }
                });
            }
        }
        resp.map(|b| b.map_err(Into::into).boxed_unsync())
    }
}

impl Dedup {
    /// Route `route`'s dedup stage, if it has `dedup`.
    pub fn for_route(keyspace: &Keyspace, route: &str, config: Option<&DedupConfig>) -> Option<Self> {
        let config = config?;
        Some(Dedup {
            records: keyspace.scoped(Concern::Dedup, route),
            chunks: keyspace.scoped(Concern::Dedup, &format!("{route}/chunk")),
            locks: keyspace.scoped(Concern::Lock, &format!("dedup/{route}")),
            channel: keyspace.channel(&format!("dedup.{route}")),
            flights: Arc::new(Flights::new(config.max_response)),
            notices: Arc::new(broadcast::channel(1024).0),
            listening: AtomicBool::new(false),
            policy: ConcernPolicy {
                name: "dedup".into(),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(DEDUP_STORE_DECISIONS, route, "dedup"),
            },
            metrics: DedupMetrics::new(route),
            seq: AtomicU64::new(0),
            config: config.clone(),
        })
    }

    /// sha256 over the key parts; `None`: not deduplicated (a body over `max_body`, or one
    /// that was not read ahead).
    fn identity(&self, req: &Parts) -> Option<Id> {
        let mut h = Sha256::new();
        let mut part = |tag: u8, bytes: &[u8]| {
            h.update([tag]);
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        for p in &self.config.key {
            match p {
                DedupKeyPart::Method => part(b'm', req.method.as_str().as_bytes()),
                DedupKeyPart::Path => part(
                    b'p',
                    req.uri
                        .path_and_query()
                        .map_or(req.uri.path(), |p| p.as_str())
                        .as_bytes(),
                ),
                DedupKeyPart::Body => match req.extensions.get::<BufferedBody>() {
                    Some(b) if b.complete && b.bytes.len() <= self.config.max_body => part(b'b', &b.bytes),
                    Some(_) => return None,
                    None if has_no_body(req) => part(b'b', b""),
                    None => return None,
                },
                DedupKeyPart::Header(name) => {
                    let values = req.headers.get_all(name.as_str());
                    part(b'h', name.as_bytes());
                    for v in values {
                        part(b'v', v.as_bytes());
                    }
                }
            }
        }
        Some(h.finalize().into())
    }

    fn fall_through<D>(&self, cx: &mut RequestCtx<'_, D>, detail: &'static str) -> Flow {
        self.metrics.count(Role::Fallthrough);
        cx.dedup = Some(DedupCtx::role(Role::Fallthrough, Some(detail)));
        Flow::Continue
    }

    /// Waits on a flight driven by another request of this instance.
    async fn follow<D>(&self, cx: &mut RequestCtx<'_, D>, flight: Arc<Flight>, deadline: Instant) -> Flow {
        if let Some((head, chunks)) = flight.completed_body() {
            return self.answer(cx, Role::Replay, &head, chunks.concat().into());
        }
        let mut rx = flight.watch();
        loop {
            {
                let s = rx.borrow_and_update();
                match (s.end, &s.head) {
                    (Some(End::Complete), Some(head)) => {
                        let (head, body) = (head.clone(), Bytes::from(s.chunks.concat()));
                        drop(s);
                        return self.answer(cx, Role::Follower, &head, body);
                    }
                    (Some(_), _) => {
                        drop(s);
                        return self.fall_through(cx, "leader_failed");
                    }
                    (None, Some(head)) => {
                        let head = head.clone();
                        drop(s);
                        self.metrics.count(Role::Follower);
                        let mut ctx = DedupCtx::role(Role::Follower, None);
                        ctx.follow = Some(rx);
                        cx.dedup = Some(ctx);
                        return Flow::Answer(shared_response(&head, Bytes::new()));
                    }
                    (None, None) => {}
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return self.fall_through(cx, "leader_failed"),
                Err(_) => return self.fall_through(cx, "max_wait"),
            }
        }
    }

    fn answer<D>(&self, cx: &mut RequestCtx<'_, D>, role: Role, head: &Head, body: Bytes) -> Flow {
        self.metrics.count(role);
        cx.dedup = Some(DedupCtx::role(role, None));
        Flow::Answer(shared_response(head, body))
    }

    /// The stored response of `records`, through the failure policy.
    async fn stored<D: StageStore>(&self, sx: &StoreCtx<D>, records: &StoreKey) -> Result<Option<Stored>, Driven> {
        match sx
            .decide(&self.policy, Op::Marker, sx.store.get(records), |_| {}, |_, _| None)
            .await
        {
            // A broken entry is never served: it reads as absent.
            Decided::Store(v) => Ok(v.as_ref().and_then(record::decode)),
            Decided::Closed => Err(Driven::Closed),
            Decided::Open | Decided::Local(_) => Err(Driven::Pass("store_error")),
        }
    }

    /// The driver's part: a stored response, the lock (leader), or a wait for the leader.
    async fn drive<D: StageStore>(&self, sx: &StoreCtx<D>, id: &Id, owner: &str, deadline: Instant) -> Driven {
        let (records, locks) = (self.records.key(id), self.locks.key(id));
        let found = |s: Option<Stored>| match s {
            Some(Stored::Response(head, body)) => Some(Driven::Stored(head, body)),
            Some(Stored::Pass) => Some(Driven::Pass("leader_failed")),
            None => None,
        };
        match self.stored(sx, &records).await {
            Ok(s) => {
                if let Some(d) = found(s) {
                    return d;
                }
            }
            Err(d) => return d,
        }
        let mut notices = self.listen(&sx.store);
        let poll = POLL.min(self.config.lease / 2);
        let me = Bytes::copy_from_slice(owner.as_bytes());
        loop {
            let claim = sx.store.claim(&locks, me.clone(), self.config.lease);
            match sx.decide(&self.policy, Op::Marker, claim, |_| {}, |_, _| None).await {
                Decided::Store(ClaimOutcome::Won) => {
                    // The last leader may have finished between our read and our claim.
                    match self.stored(sx, &records).await.map(found) {
                        Ok(Some(d)) | Err(d) => {
                            let _ = sx.store.delete(&locks).await;
                            return d;
                        }
                        Ok(None) => return Driven::Lead(locks, records),
                    }
                }
                Decided::Store(ClaimOutcome::Held(_)) => {
                    // A streamed answer in progress elsewhere: follow it chunk by chunk.
                    if let Ok(Some(head)) = sx.store.get(&self.chunk_key(id, 0)).await {
                        if let Some(Stored::Response(head, _)) = record::decode(&head) {
                            return Driven::Stream(head, locks, records);
                        }
                    }
                }
                Decided::Closed => return Driven::Closed,
                Decided::Open | Decided::Local(_) => return Driven::Pass("store_error"),
            }
            let now = Instant::now();
            if now >= deadline {
                return Driven::Pass("max_wait");
            }
            let _ = tokio::time::timeout((deadline - now).min(poll), notice_for(&mut notices, id)).await;
            match self.stored(sx, &records).await {
                Ok(s) => {
                    if let Some(d) = found(s) {
                        return d;
                    }
                }
                Err(d) => return d,
            }
            if Instant::now() >= deadline {
                return Driven::Pass("max_wait");
            }
        }
    }

    /// A receiver of this route's completion notices; the first call subscribes this instance
    /// to the route's channel (one task, until the stage is gone).
    fn listen<D: StageStore>(&self, store: &D) -> broadcast::Receiver<Id> {
        let rx = self.notices.subscribe();
        if !self.listening.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(&self.notices);
            let (store, channel) = (store.clone(), self.channel.clone());
            tokio::spawn(async move {
                while weak.strong_count() > 0 {
                    let mut sub = match store.subscribe(&channel).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "dedup: subscribing failed; polling until it works");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    };
                    loop {
                        let next = tokio::time::timeout(Duration::from_secs(30), sub.next()).await;
                        let Some(tx) = weak.upgrade() else { return };
                        match next {
                            Ok(Some(m)) => {
                                if let Some(id) = record::read_notice(&m.payload) {
                                    let _ = tx.send(id);
                                }
                            }
                            Ok(None) => break,
                            Err(_) => {}
                        }
                    }
                }
            });
        }
        rx
    }

    /// What the leader does once its body is over: keeps the response (or a pass marker) while
    /// it holds the lock, tells the fleet, lets the lock go, then leaves the flight map.
    fn on_end<D: StageStore>(
        &self,
        sx: &StoreCtx<D>,
        driving: Driving,
        keys: (StoreKey, StoreKey),
        owner: String,
        id: Id,
    ) -> OnEnd {
        let store = sx.store.clone();
        let (locks, records) = keys;
        let (lease, window, channel) = (self.config.lease, self.config.window, self.channel.clone());
        let renewal = {
            let (store, locks, owner) = (store.clone(), locks.clone(), owner.clone());
            tokio::spawn(async move {
                // Bounded by the call: aborted when the body is over, or ends once the lock
                // is someone else's.
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match store.get_extend(&locks, lease).await {
                        Ok(Some(v)) if v != owner.as_bytes() => return,
                        _ => {}
                    }
                }
            })
        };
        Box::new(move |outcome: Outcome| {
            renewal.abort();
            let keep = match (outcome, driving.flight.head()) {
                (Outcome::Complete(chunks), Some(head)) => Some((record::encode_response(&head, &chunks), window)),
                (Outcome::Gone, _) => None,
                _ => Some((record::encode_pass(), PASS_TTL.min(window))),
            };
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            rt.spawn(async move {
                // Only the lock's holder writes (a leader whose lease ran out and was taken
                // over leaves the key to the new one), then lets it go.
                if holds(&store, &locks, &owner).await {
                    if let Some((value, ttl)) = keep {
                        if let Err(e) = store.set(&records, value, ttl).await {
                            tracing::debug!(error = %e, "dedup: keeping the response failed");
                        }
                    }
                    let _ = store.publish(&channel, record::notice(&id)).await;
                    if holds(&store, &locks, &owner).await {
                        let _ = store.delete(&locks).await;
                    }
                }
                drop(driving);
            });
        })
    }
}

/// What the driver found.
enum Driven {
    /// A leader elsewhere is streaming: its head; the lock and record keys.
    Stream(Head, StoreKey, StoreKey),
    /// This request leads: the lock and record keys.
    Lead(StoreKey, StoreKey),
    Stored(Head, Bytes),
    Pass(&'static str),
    Closed,
}

/// Whether `owner` holds the lock `locks` (a read, then the caller acts: a lease that ends in
/// between is the window the docs describe).
async fn holds<D: StageStore>(store: &D, locks: &StoreKey, owner: &str) -> bool {
    matches!(store.get(locks).await, Ok(Some(v)) if v == owner.as_bytes())
}

async fn notice_for(notices: &mut broadcast::Receiver<Id>, id: &Id) {
    loop {
        match notices.recv().await {
            Ok(n) if &n == id => return,
            Ok(_) => {}
            // Missed some: look now.
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

fn has_no_body(req: &Parts) -> bool {
    !req.headers.contains_key(header::TRANSFER_ENCODING)
        && req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// Headers never shared with another client: the connection's, and the leader's own cookies
/// and request id.
const NOT_SHARED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "set-cookie",
    "x-request-id",
];

fn shared_head(status: StatusCode, headers: &http::HeaderMap) -> Head {
    let mut headers = headers.clone();
    for name in NOT_SHARED {
        headers.remove(*name);
    }
    Head { status, headers }
}

fn shared_response(head: &Head, body: Bytes) -> Response<Bytes> {
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers.clone();
    resp
}

impl<D: StageStore> Stage<D> for Dedup {
    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        let Some(id) = self.identity(req) else {
            return self.fall_through(cx, "body");
        };
        let deadline = Instant::now() + self.config.max_wait;
        let (flight, driving) = self.flights.join(id);
        let Some(driving) = driving else {
            return Box::pin(self.follow(cx, flight, deadline)).await;
        };
        let owner = format!("{}/{}", cx.store.instance, self.seq.fetch_add(1, Ordering::Relaxed));
        // Boxed (as following is): large futures, which inline would size every route's.
        match Box::pin(self.drive(cx.store, &id, &owner, deadline)).await {
            Driven::Lead(locks, records) => {
                self.metrics.count(Role::Leader);
                let on_end = self.on_end(cx.store, driving, (locks, records), owner, id);
                let mut ctx = DedupCtx::role(Role::Leader, None);
                let remote = self.remote_writer(cx.store, id);
                ctx.lead = Some(Lead {
                    flight,
                    on_end: Some(on_end),
                    remote: Some(remote),
                    shared: false,
                });
                cx.dedup = Some(ctx);
                Flow::Continue
            }
            Driven::Stream(head, locks, records) => {
                flight.set_head(head);
                self.pump(cx.store, driving, id, locks, records);
                Box::pin(self.follow(cx, flight, deadline)).await
            }
            Driven::Stored(head, body) => {
                flight.complete(head.clone(), body.clone());
                drop(driving);
                self.answer(cx, Role::Replay, &head, body)
            }
            Driven::Pass(detail) => {
                drop(driving);
                self.fall_through(cx, detail)
            }
            Driven::Closed => {
                drop(driving);
                self.metrics.refused.increment(1);
                Flow::Answer(crate::refusal::json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the store is unavailable and this route's dedup is on_store_error: closed",
                    &[],
                ))
            }
        }
    }

    async fn response<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) {
        let Some(d) = cx.dedup.as_mut() else { return };
        if let Some(lead) = d.lead.as_mut() {
            let status = resp.status();
            if status.is_server_error() || status.is_informational() {
                // Nothing to share: followers call the upstream themselves.
                if let Some(lead) = d.lead.take() {
                    lead.fail();
                }
            } else {
                lead.flight.set_head(shared_head(status, resp.headers()));
                lead.shared = true;
            }
        }
        let status = match (d.role, d.detail) {
            (Role::Leader, _) => "fleetgate-dedup; fwd=miss".to_string(),
            (Role::Follower | Role::Replay, _) => "fleetgate-dedup; hit".to_string(),
            (Role::Fallthrough, detail) => {
                format!("fleetgate-dedup; fwd=bypass; detail={}", detail.unwrap_or("none"))
            }
        };
        let headers = resp.headers_mut();
        headers.insert(X_DEDUP, HeaderValue::from_static(d.role.as_str()));
        // RFC 9211: each cache appends its entry, so the one nearest the client comes last.
        if let Ok(v) = HeaderValue::from_str(&status) {
            headers.append(&CACHE_STATUS, v);
        }
        resp.extensions_mut().insert(DedupRole(d.role));
    }
}
