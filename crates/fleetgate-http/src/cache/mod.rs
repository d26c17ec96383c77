//! The shared HTTP cache as a stage (`cache:` on a route): RFC 9111 for a shared cache, kept
//! in the store so that every instance serves what one instance stored.
//!
//! The steps, Varnish-style:
//! 1. **hash**: GET and HEAD are looked up by route, host, path and query (a HEAD is served
//!    from a stored GET); other methods are not cached, and an unsafe one invalidates (step 5).
//!    One byte range is served from a fresh whole entry ([`range`]); other `Range` requests
//!    pass through untouched.
//! 2. **lookup**: one store read of the primary key ([`entry`]); a resource stored with `Vary`
//!    takes a second read of its variant's key.
//! 3. **deliver** a usable entry: fresh for this request (`http-cache-semantics` decides with
//!    the request's `no-cache`, `max-age`, `max-stale`, `min-fresh` and `Pragma`), with `Age`
//!    and `Cache-Status: fleetgate; hit`; a client's conditional is answered 304 from it.
//!    Within `stale-while-revalidate`, one request of the fleet (a claim in the store)
//!    revalidates while the others get the stale entry.
//! 4. **fetch**: a stale entry becomes a conditional request (its `ETag`, `Last-Modified`);
//!    a 304 refreshes the entry (headers merged as RFC 9111 section 3.2 says) and answers
//!    from it; a 5xx within `stale-if-error` answers the stale entry. A storable response is
//!    teed to the store while it streams to the client ([`tee`]), within `max_entry_bytes`.
//!    `only-if-cached` without a usable entry gets 504. Identical misses coalesce: one request
//!    of the fleet takes a fill lock and fetches, the others wait (at most `coalesce_wait`)
//!    for its entry.
//! 5. **invalidate**: a non-error answer to an unsafe method deletes the entries of its URL and
//!    of its `Location` and `Content-Location` on the same host (RFC 9111 section 4.4).
//!
//! Store failures: `open` (the default) passes through uncached, `closed` answers 503.
//! What `http-cache-semantics` gets wrong and how it is corrected: [`policy`].

pub mod conditional;
pub mod config;
pub mod directives;
pub mod entry;
pub mod local;
pub mod policy;
pub mod range;
pub mod refresh;
pub mod status;
pub mod targeted;
pub mod tee;
#[cfg(test)]
mod tests;

pub use config::CacheConfig;
pub use refresh::Refresh;
pub use status::{CacheMetrics, CACHE_STATUS};
pub use tee::{Fill, Tee};

use crate::context::RequestCtx;
use crate::metrics::DecisionMetrics;
use crate::refusal::json_error;
use crate::stage::{Flow, Stage};
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use bytes::Bytes;
use directives::Directives;
use entry::{Entry, Meta, Record, Variants};
use fleetgate_store::{ClaimOutcome, Concern, Keyspace, ScopedKeys, StoreKey};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use status::Forward;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Marks a response the gateway made because the upstream could not be reached or did not
/// answer (a response extension): a stale entry may then be served (RFC 9111 section 4.2.4).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamFailed;

/// The metric name of the cache's store calls under its failure policy.
pub const CACHE_STORE_DECISIONS: &str = "fleetgate_cache_store_decisions_total";

/// Longest pause between two looks of a request waiting for another to fill the entry.
const COALESCE_POLL: Duration = Duration::from_millis(50);

/// The longest a stale-while-revalidate claim holds: one revalidation per this, per entry.
const REVALIDATION_CLAIM: Duration = Duration::from_secs(10);

/// The shared cache of one route.
pub struct Cache {
    config: CacheConfig,
    keys: ScopedKeys,
    policy: ConcernPolicy,
    metrics: CacheMetrics,
    options: CacheOptions,
    /// Sends the background revalidations of `stale-while-revalidate`; without it, the one
    /// request that claims the revalidation waits for it.
    refresh: Option<std::sync::Arc<dyn Refresh>>,
    /// The in-process tier (`local_ttl`), when configured.
    local: Option<std::sync::Arc<local::LocalTier>>,
}

/// What a read of the store found.
enum Found {
    Read(Option<Box<Entry>>, Forward),
    /// The store failed under `closed`.
    Closed,
    /// The store failed under `open`.
    Unavailable,
}

/// Who revalidates a stale entry within `stale-while-revalidate`.
enum Claim {
    /// This request (it won the fleet's claim).
    Won,
    /// Another request of the fleet, already.
    Held,
    /// Unknown (the store failed): revalidate.
    Failed,
}

/// What the way out needs of what the way in found.
pub struct Exchange {
    step: Step,
    /// The request head the policies are made from (reduced: see [`policy::request_head`]).
    head: Parts,
    /// The client's conditional headers, to answer 304 from a refreshed entry.
    conditions: HeaderMap,
    /// Whether the client's request was HEAD.
    is_head: bool,
    /// The primary key's identifier and key.
    primary: (String, StoreKey),
    /// The `Vary` record found under the primary key.
    variants: Option<Variants>,
    /// Whether the request carried `Authorization` (storable only if the response allows it).
    authorized: bool,
    /// The client's request headers, for the variant key of a response with `Vary`.
    request_headers: HeaderMap,
    /// The fleet's fill lock this request holds (it fetches a missing entry for the others).
    filling: Option<StoreKey>,
}

enum Step {
    /// Went forward without a usable entry: store the answer if it may be stored.
    Fetch(Forward),
    /// A stale entry is being revalidated.
    Revalidate(Box<Entry>),
    /// An unsafe method: invalidate these on a non-error answer.
    Invalidate,
    /// Passed through without looking (Range, the store unavailable).
    Bypass(Forward, &'static str),
}

fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Cache {
    pub fn new(keyspace: &Keyspace, route: &str, config: &CacheConfig) -> Self {
        Cache {
            keys: keyspace.scoped(Concern::ResponseCache, route),
            policy: ConcernPolicy {
                name: "cache".into(),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(CACHE_STORE_DECISIONS, route, "cache"),
            },
            metrics: CacheMetrics::new(route),
            options: policy::options(config.heuristic),
            config: config.clone(),
            refresh: None,
            local: config
                .local_ttl
                .map(|ttl| std::sync::Arc::new(local::LocalTier::new(ttl, config.local_max_bytes))),
        }
    }

    /// The same cache, revalidating `stale-while-revalidate` entries in the background
    /// through `refresh`.
    pub fn with_refresh(mut self, refresh: std::sync::Arc<dyn Refresh>) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// Route `route`'s cache, if it has one.
    pub fn for_route(keyspace: &Keyspace, route: &str, config: Option<&CacheConfig>) -> Option<Self> {
        config.map(|c| Cache::new(keyspace, route, c))
    }

    /// The primary identifier of a request: host (lowercased) and path with query.
    fn primary_id(req: &Parts) -> String {
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_ascii_lowercase();
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        format!("{host}\n{pq}")
    }

    /// Reads an entry or `Vary` record: from the in-process tier when it has it, else from the
    /// store (and keeps it there).
    async fn read<D: StageStore>(&self, store: &StoreCtx<D>, key: &StoreKey) -> Decided<Option<Bytes>> {
        let Some(local) = self.local.as_ref().filter(|_| !store.store.in_process()) else {
            return self.read_shared(store, key).await;
        };
        if let Some(v) = local.get(key) {
            return Decided::Store(Some(v));
        }
        let got = self.read_shared(store, key).await;
        if let Decided::Store(Some(v)) = &got {
            local.put(key, v.clone());
        }
        got
    }

    /// Reads the store itself (locks and markers are never kept in the in-process tier).
    async fn read_shared<D: StageStore>(&self, store: &StoreCtx<D>, key: &StoreKey) -> Decided<Option<Bytes>> {
        let got = store
            .decide(&self.policy, Op::Marker, store.store.get(key), |_| {}, |_, _| None)
            .await;
        if !matches!(got, Decided::Store(_)) {
            self.metrics.store_error.increment(1);
        }
        got
    }

    fn unavailable(&self) -> Response<Bytes> {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "cache_unavailable",
            "the cache's store is unavailable",
            &[],
        )
    }

    /// 504 for `only-if-cached` without a usable entry (RFC 9111 section 5.2.1.7).
    fn only_if_cached(&self) -> Response<Bytes> {
        self.metrics.only_if_cached.increment(1);
        let mut r = json_error(
            StatusCode::GATEWAY_TIMEOUT,
            "not_cached",
            "only-if-cached: no stored response can be used",
            &[],
        );
        r.headers_mut().insert(
            &CACHE_STATUS,
            status::forwarded(Forward::UriMiss, None, false, Some("only-if-cached")),
        );
        r
    }

    /// The stored response `entry` as served now, with the stored head `parts` the policy
    /// gave (Age updated), as 304 when the client's conditions hold.
    fn answer(
        parts: http::response::Parts,
        entry: (&Bytes, &Meta),
        conditions: &HeaderMap,
        is_head: bool,
        cache_status: HeaderValue,
    ) -> Response<Bytes> {
        let (body, meta) = entry;
        let mut parts = parts;
        policy::restore_origin_fields(&mut parts.headers);
        parts.headers.insert(&CACHE_STATUS, cache_status);
        // The origin's Date, as stored (RFC 9110 section 6.6.1): Age says how old it is.
        if let Some(date) = meta.date.as_deref().and_then(|d| HeaderValue::from_str(d).ok()) {
            parts.headers.insert(header::DATE, date);
        }
        if parts.status == StatusCode::OK
            && meta.status.is_none()
            && conditional::not_modified(conditions, &parts.headers)
        {
            parts.status = StatusCode::NOT_MODIFIED;
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(parts, Bytes::new());
        }
        if !matches!(parts.status.as_u16(), 204 | 304 | 100..=199) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        if let Some(status) = meta.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            parts.status = status;
        }
        let body = if is_head { Bytes::new() } else { body.clone() };
        Response::from_parts(parts, body)
    }

    /// The entry's head as it would be served now whatever its staleness (`None` when it
    /// must not be served stale: `must-revalidate`, `no-cache`).
    fn stale_head(entry: &Entry, head: &Parts, now: SystemTime) -> Option<http::response::Parts> {
        let mut probe = http::Request::new(()).into_parts().0;
        probe.uri = head.uri.clone();
        if let Some(h) = head.headers.get(header::HOST) {
            probe.headers.insert(header::HOST, h.clone());
        }
        probe
            .headers
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("max-stale"));
        match entry.policy.before_request(&probe, now) {
            BeforeRequest::Fresh(parts) => {
                // s-maxage implies proxy-revalidate for a shared cache (RFC 9111 5.2.2.10).
                let cc = Directives::of(&parts.headers);
                (!cc.has("no-cache") && !cc.has("must-revalidate") && !cc.has("s-maxage")).then_some(parts)
            }
            BeforeRequest::Stale { .. } => None,
        }
    }

    /// How stale `entry` is now (zero while fresh).
    fn staleness(entry: &Entry, now: SystemTime) -> Duration {
        Duration::from_millis(now_ms(now).saturating_sub(entry.fresh_until_ms))
    }

    /// Claims the revalidation of `primary` for the fleet.
    async fn claim_revalidation<D: StageStore>(&self, store: &StoreCtx<D>, primary: &str) -> Claim {
        let key = self.keys.key(format!("{primary}\nrevalidating").as_bytes());
        let call = store.store.claim(&key, Bytes::from_static(b"1"), REVALIDATION_CLAIM);
        match store.decide(&self.policy, Op::Marker, call, |_| {}, |_, _| None).await {
            Decided::Store(ClaimOutcome::Won) => Claim::Won,
            Decided::Store(ClaimOutcome::Held(_)) => Claim::Held,
            _ => Claim::Failed,
        }
    }

    /// Reads the entry for the request: the primary key, then the variant's key for a
    /// resource stored with `Vary` (the record found is kept in `exchange`).
    async fn find<D: StageStore>(&self, store: &StoreCtx<D>, exchange: &mut Exchange, headers: &HeaderMap) -> Found {
        let found = match self.read(store, &exchange.primary.1).await {
            Decided::Store(v) => v,
            Decided::Closed => return Found::Closed,
            Decided::Open | Decided::Local(_) => return Found::Unavailable,
        };
        match found.as_ref().and_then(Record::decode) {
            None => Found::Read(None, Forward::UriMiss),
            Some(Record::Entry(e)) => Found::Read(Some(e), Forward::Miss),
            Some(Record::Variants(v)) => {
                let key = v.key(&self.keys, &exchange.primary.0, headers);
                exchange.variants = Some(v);
                match self.read(store, &key).await {
                    Decided::Store(found) => match found.as_ref().and_then(Record::decode) {
                        Some(Record::Entry(e)) => Found::Read(Some(e), Forward::Miss),
                        _ => Found::Read(None, Forward::VaryMiss),
                    },
                    Decided::Closed => Found::Closed,
                    Decided::Open | Decided::Local(_) => Found::Read(None, Forward::VaryMiss),
                }
            }
        }
    }

    /// Waits while another request fills the entry (its lock held), at most `coalesce_wait`:
    /// the entry once stored, or `None` (the fill gave nothing storable, or took too long).
    async fn wait_for_fill<D: StageStore>(
        &self,
        store: &StoreCtx<D>,
        exchange: &mut Exchange,
        headers: &HeaderMap,
        lock: &StoreKey,
    ) -> Option<(Box<Entry>, Forward)> {
        let deadline = tokio::time::Instant::now() + self.config.coalesce_wait;
        let mut pause = Duration::from_millis(5);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(COALESCE_POLL);
            if let Found::Read(Some(e), f) = self.find(store, exchange, headers).await {
                return Some((e, f));
            }
            match self.read_shared(store, lock).await {
                Decided::Store(Some(_)) => {}
                // The lock is gone: the fill may have been written between the look above and
                // this read (the filler writes, then releases), so look once more.
                Decided::Store(None) => {
                    return match self.find(store, exchange, headers).await {
                        Found::Read(Some(e), f) => Some((e, f)),
                        _ => None,
                    };
                }
                _ => return None,
            }
        }
        None
    }

    async fn lookup<D: StageStore>(
        &self,
        cx: &mut RequestCtx<'_, D>,
        req: &mut Parts,
        forced: bool,
        range: Option<range::ByteRange>,
    ) -> Flow {
        let is_head = req.method == Method::HEAD;
        let req_cc = Directives::of(&req.headers);
        let only_if_cached = req_cc.has("only-if-cached");
        let primary_id = Self::primary_id(req);
        let primary_key = self.keys.key(primary_id.as_bytes());
        let mut exchange = Exchange {
            step: Step::Fetch(Forward::UriMiss),
            head: policy::request_head(req, false, false),
            conditions: conditional_headers(&req.headers),
            is_head,
            primary: (primary_id, primary_key),
            variants: None,
            authorized: req.headers.contains_key(header::AUTHORIZATION),
            request_headers: HeaderMap::new(),
            filling: None,
        };
        let (mut entry, mut forward) = match self.find(cx.store, &mut exchange, &req.headers).await {
            Found::Read(entry, forward) => (entry, forward),
            Found::Closed => return Flow::Answer(self.unavailable()),
            Found::Unavailable => {
                self.metrics.bypass.increment(1);
                exchange.step = Step::Bypass(Forward::Miss, "store-unavailable");
                exchange.request_headers = req.headers.clone();
                cx.cache = Some(Box::new(exchange));
                return Flow::Continue;
            }
        };
        // A HEAD or a range request never stores: it neither fills for others nor waits.
        if entry.is_none() && !only_if_cached && !forced && !is_head && range.is_none() && self.config.coalesce {
            // Request coalescing: one request of the fleet fetches a missing entry; the others
            // wait for it (bounded), then are served from the store.
            let lock = self.keys.key(format!("{}\nfilling", exchange.primary.0).as_bytes());
            let call = cx
                .store
                .store
                .claim(&lock, Bytes::from_static(b"1"), self.config.coalesce_wait);
            match cx
                .store
                .decide(&self.policy, Op::Marker, call, |_| {}, |_, _| None)
                .await
            {
                Decided::Store(ClaimOutcome::Won) => exchange.filling = Some(lock),
                Decided::Store(ClaimOutcome::Held(_)) => {
                    if let Some((e, f)) = self.wait_for_fill(cx.store, &mut exchange, &req.headers, &lock).await {
                        self.metrics.coalesced.increment(1);
                        (entry, forward) = (Some(e), f);
                    }
                }
                _ => {}
            }
        }
        let now = SystemTime::now();
        let Some(entry) = entry else {
            if only_if_cached {
                return Flow::Answer(self.only_if_cached());
            }
            self.metrics.miss.increment(1);
            exchange.step = Step::Fetch(forward);
            exchange.request_headers = req.headers.clone();
            cx.cache = Some(Box::new(exchange));
            return Flow::Continue;
        };
        if forced {
            // The gateway's own background revalidation: conditional on the stored validators.
            for (name, v) in [
                (header::IF_NONE_MATCH, &entry.meta.etag),
                (header::IF_MODIFIED_SINCE, &entry.meta.last_modified),
            ] {
                req.headers.remove(&name);
                if let Some(v) = v.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                    req.headers.insert(name, v);
                }
            }
            if entry.meta.etag.is_some() {
                req.headers.remove(header::IF_MODIFIED_SINCE);
            }
            exchange.step = Step::Revalidate(entry);
            exchange.request_headers = req.headers.clone();
            cx.cache = Some(Box::new(exchange));
            return Flow::Continue;
        }
        let asked = policy::request_head(req, true, false);
        match entry.policy.before_request(&asked, now) {
            BeforeRequest::Fresh(parts) if range.is_some() => {
                let whole = entry.body.len() as u64;
                let served = range.and_then(|r| r.resolve(whole));
                match served {
                    Some((first, last)) if parts.status == StatusCode::OK && entry.meta.status.is_none() => {
                        self.metrics.hit.increment(1);
                        let ttl = entry.policy.time_to_live(now).as_secs() as i64;
                        let mut answer = Self::answer(
                            parts,
                            (&entry.body, &entry.meta),
                            &HeaderMap::new(),
                            is_head,
                            status::hit(ttl, Some("range")),
                        );
                        *answer.status_mut() = StatusCode::PARTIAL_CONTENT;
                        let body = entry.body.slice(first as usize..=last as usize);
                        let h = answer.headers_mut();
                        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                        if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{whole}")) {
                            h.insert(header::CONTENT_RANGE, v);
                        }
                        if !is_head {
                            *answer.body_mut() = body;
                        }
                        Flow::Answer(answer)
                    }
                    _ => self.range_bypass(cx, exchange),
                }
            }
            _ if range.is_some() => self.range_bypass(cx, exchange),
            BeforeRequest::Fresh(parts) => {
                self.metrics.hit.increment(1);
                let ttl = entry.policy.time_to_live(now).as_secs() as i64;
                let status = status::hit(ttl, None);
                Flow::Answer(Self::answer(
                    parts,
                    (&entry.body, &entry.meta),
                    &exchange.conditions,
                    is_head,
                    status,
                ))
            }
            BeforeRequest::Stale { request, matches } => {
                if !matches {
                    if only_if_cached {
                        return Flow::Answer(self.only_if_cached());
                    }
                    self.metrics.miss.increment(1);
                    exchange.step = Step::Fetch(Forward::Miss);
                    exchange.request_headers = req.headers.clone();
                    cx.cache = Some(Box::new(exchange));
                    return Flow::Continue;
                }
                let client_forced = req_cc.has("no-cache")
                    || (!req.headers.contains_key(header::CACHE_CONTROL)
                        && req
                            .headers
                            .get_all(header::PRAGMA)
                            .iter()
                            .any(|v| v.as_bytes().windows(8).any(|w| w.eq_ignore_ascii_case(b"no-cache"))));
                let stale_for = Self::staleness(&entry, now);
                if !client_forced && !only_if_cached {
                    if let Some(head) = Self::stale_head(&entry, &exchange.head, now) {
                        let swr = Directives::of(&head.headers).seconds("stale-while-revalidate");
                        let serve_stale = match swr.is_some_and(|w| stale_for <= w) {
                            false => false,
                            true => match (
                                self.claim_revalidation(cx.store, &exchange.primary.0).await,
                                &self.refresh,
                            ) {
                                (Claim::Held, _) => true,
                                (Claim::Won, Some(refresh)) => {
                                    refresh.refresh(refresh::request_for(req));
                                    true
                                }
                                (Claim::Won, None) | (Claim::Failed, _) => false,
                            },
                        };
                        if serve_stale {
                            self.metrics.stale.increment(1);
                            let status = status::hit(-(stale_for.as_secs() as i64), Some("stale-while-revalidate"));
                            return Flow::Answer(Self::answer(
                                head,
                                (&entry.body, &entry.meta),
                                &exchange.conditions,
                                is_head,
                                status,
                            ));
                        }
                    }
                }
                if only_if_cached {
                    return Flow::Answer(self.only_if_cached());
                }
                // The conditional request: the stored validators, merged with the client's.
                for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
                    req.headers.remove(&name);
                    for v in request.headers.get_all(&name) {
                        req.headers.append(name.clone(), v.clone());
                    }
                }
                exchange.step = Step::Revalidate(entry);
                exchange.request_headers = req.headers.clone();
                cx.cache = Some(Box::new(exchange));
                Flow::Continue
            }
        }
    }

    /// Sets up storing `resp` (teed while it streams) if it may be stored; the
    /// `Cache-Status` it gets.
    fn store_response<D: StageStore, B>(
        &self,
        cx: &mut RequestCtx<'_, D>,
        exchange: Exchange,
        resp: &Response<B>,
        forward: Forward,
        fwd_status: Option<u16>,
        filling: &mut Option<StoreKey>,
    ) -> HeaderValue {
        let not_stored = |detail: &'static str| status::forwarded(forward, fwd_status, false, Some(detail));
        if exchange.is_head {
            return not_stored("head");
        }
        let now = SystemTime::now();
        let Some((policy_status, stored_status)) = policy::status_for_policy(resp.status(), resp.headers()) else {
            return not_stored("status");
        };
        let head = policy::response_head(policy_status, resp.headers());
        let mut deciding = exchange.head.clone();
        if exchange.authorized {
            deciding
                .headers
                .insert(header::AUTHORIZATION, HeaderValue::from_static("present"));
        }
        let decision = policy::policy(&deciding, &head, now, self.options);
        if !decision.is_storable() {
            return not_stored("uncacheable");
        }
        let cc = Directives::of(&head.headers);
        if resp.headers().contains_key(header::SET_COOKIE) && !cc.has("public") {
            return not_stored("set-cookie");
        }
        let Some(vary) = entry::vary_names(&head.headers) else {
            return not_stored("vary");
        };
        let cap = self.config.max_entry_bytes;
        let length = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|l| l > cap) {
            return not_stored("too-large");
        }
        let stored = policy::policy(&exchange.head, &head, now, self.options);
        let fresh = stored.time_to_live(now);
        let swr = cc.seconds("stale-while-revalidate").unwrap_or_default();
        let sie = cc.seconds("stale-if-error").unwrap_or_default();
        if fresh.is_zero() && !policy::has_validator(&head.headers) && swr.is_zero() && sie.is_zero() {
            return not_stored("no-freshness");
        }
        let ttl = (fresh + swr.max(sie) + self.config.keep_stale).min(self.config.max_ttl);
        let fresh_until = now_ms(now) + fresh.as_millis() as u64;
        let write = Write {
            store: cx.store.clone(),
            keys: self.keys.clone(),
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            primary: exchange.primary,
            variants: exchange.variants,
            select: select(&exchange.request_headers, &vary),
            filling: filling.take(),
            local: self.local.clone(),
            vary,
            ttl,
        };
        let mut meta = Meta::of(&head.headers);
        meta.status = stored_status;
        let abandon = write.filling.clone().map(|lock| {
            let (store, policy) = (cx.store.clone(), self.policy.clone());
            move || {
                tokio::spawn(async move { release(&store, &policy, &lock).await });
            }
        });
        let mut fill = Fill::new(cap as usize, move |body| {
            tokio::spawn(write.run(stored, fresh_until, meta, body));
        });
        if let Some(abandon) = abandon {
            fill = fill.on_abandon(abandon);
        }
        cx.cache_fill = Some(fill);
        status::forwarded(forward, fwd_status, true, None)
    }

    /// A 304 answered a revalidation: the refreshed entry, stored and served.
    async fn refreshed<D: StageStore>(
        &self,
        cx: &mut RequestCtx<'_, D>,
        exchange: Exchange,
        entry: Entry,
        mut head: http::response::Parts,
    ) -> Option<Response<Bytes>> {
        let now = SystemTime::now();
        // A 304 without validators refreshes the one stored response (RFC 9111 section
        // 4.3.4); the crate would select none when the stored one has validators.
        if !policy::has_validator(&head.headers) {
            for (name, v) in [
                (header::ETAG, &entry.meta.etag),
                (header::LAST_MODIFIED, &entry.meta.last_modified),
            ] {
                if let Some(v) = v.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                    head.headers.insert(name, v);
                }
            }
        }
        let date_304 = head
            .headers
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let request = &exchange.head;
        let (policy, parts) =
            match entry
                .policy
                .after_response(request, &head, policy::response_time(&head.headers, now))
            {
                AfterResponse::NotModified(p, parts) => (p, parts),
                // Not this entry's validator (the client's own condition): the 304 goes through.
                AfterResponse::Modified(..) => return None,
            };
        self.metrics.revalidated.increment(1);
        let fresh = policy.time_to_live(now);
        let cc = Directives::of(&parts.headers);
        let swr = cc.seconds("stale-while-revalidate").unwrap_or_default();
        let sie = cc.seconds("stale-if-error").unwrap_or_default();
        let ttl = (fresh + swr.max(sie) + self.config.keep_stale).min(self.config.max_ttl);
        let vary = entry::vary_names(&parts.headers).unwrap_or_default();
        let write = Write {
            store: cx.store.clone(),
            keys: self.keys.clone(),
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            primary: exchange.primary,
            variants: exchange.variants,
            select: select(&exchange.request_headers, &vary),
            filling: None,
            local: self.local.clone(),
            vary,
            ttl,
        };
        let status = status::forwarded(Forward::Stale, Some(304), true, None);
        let mut meta = Meta::of(&parts.headers);
        meta.date = date_304.or(entry.meta.date);
        meta.status = entry.meta.status;
        let answer = Self::answer(
            parts,
            (&entry.body, &meta),
            &exchange.conditions,
            exchange.is_head,
            status,
        );
        write
            .run(policy, now_ms(now) + fresh.as_millis() as u64, meta, entry.body)
            .await;
        Some(answer)
    }

    /// The URLs an unsafe method's answer invalidates: its own, and its `Location` and
    /// `Content-Location` when they name the same host.
    fn invalidated_keys(&self, exchange: &Exchange, headers: &HeaderMap) -> Vec<StoreKey> {
        let (primary_id, primary_key) = &exchange.primary;
        let host = primary_id.split('\n').next().unwrap_or("");
        let mut keys = vec![primary_key.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(target) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = target.parse::<http::Uri>() else { continue };
            let same_host = match uri.authority() {
                None => true,
                Some(a) => a.as_str().eq_ignore_ascii_case(host),
            };
            let pq = uri.path_and_query().map(|p| p.as_str());
            if let (true, Some(pq)) = (same_host, pq.filter(|p| p.starts_with('/'))) {
                keys.push(self.keys.key(format!("{host}\n{pq}").as_bytes()));
            }
        }
        keys
    }

    async fn invalidate<D: StageStore>(&self, store: &StoreCtx<D>, keys: Vec<StoreKey>) {
        for key in keys {
            if let Some(local) = &self.local {
                local.remove(&key);
            }
            let call = store.store.delete(&key);
            if let Decided::Store(true) = store.decide(&self.policy, Op::Marker, call, |_| {}, |_, _| None).await {
                self.metrics.invalidated.increment(1);
            }
        }
    }
}

/// A client's conditional headers.
fn conditional_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
        for v in headers.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// The headers of `headers` that `vary` names.
fn select(headers: &HeaderMap, vary: &[String]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in vary {
        if let Ok(name) = header::HeaderName::from_bytes(name.as_bytes()) {
            for v in headers.get_all(&name) {
                out.append(name.clone(), v.clone());
            }
        }
    }
    out
}

/// Whether a method is safe (RFC 9110 section 9.2.1): anything else invalidates.
fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE)
}

/// One entry's write to the store, after its body has ended.
struct Write<D> {
    store: StoreCtx<D>,
    keys: ScopedKeys,
    policy: ConcernPolicy,
    metrics: CacheMetrics,
    primary: (String, StoreKey),
    /// The `Vary` record found on the way in.
    variants: Option<Variants>,
    /// The `Vary` of the response being stored.
    vary: Vec<String>,
    /// The request's values of the `Vary` headers (for the variant's key).
    select: HeaderMap,
    /// The fill lock to release once written.
    filling: Option<StoreKey>,
    /// The in-process tier, kept up to date with what this instance writes.
    local: Option<std::sync::Arc<local::LocalTier>>,
    ttl: Duration,
}

impl<D: StageStore> Write<D> {
    async fn run(self, policy: CachePolicy, fresh_until_ms: u64, meta: Meta, body: Bytes) {
        let Some(value) = Entry::encode(&policy, fresh_until_ms, &meta, &body) else {
            return;
        };
        let key = if self.vary.is_empty() {
            self.primary.1.clone()
        } else {
            let variants = match &self.variants {
                Some(v) if v.vary == self.vary => v.clone(),
                _ => {
                    let v = Variants {
                        vary: self.vary.clone(),
                        generation: random_u64(),
                    };
                    if !self.set(&self.primary.1, v.encode(), self.ttl).await {
                        return;
                    }
                    v
                }
            };
            variants.key(&self.keys, &self.primary.0, &self.select)
        };
        if self.set(&key, value, self.ttl).await {
            self.metrics.stored.increment(1);
        }
        if let Some(lock) = &self.filling {
            release(&self.store, &self.policy, lock).await;
        }
    }

    async fn set(&self, key: &StoreKey, value: Bytes, ttl: Duration) -> bool {
        let kept = self.local.as_ref().map(|local| (local, value.clone()));
        let call = self.store.store.set(key, value, ttl.max(Duration::from_secs(1)));
        let ok = matches!(
            self.store
                .decide(&self.policy, Op::Marker, call, |_| {}, |_, _| None)
                .await,
            Decided::Store(())
        );
        match kept {
            Some((local, value)) if ok => local.put(key, value),
            Some((local, _)) => local.remove(key),
            None => {}
        }
        if !ok {
            self.metrics.store_error.increment(1);
        }
        ok
    }
}

/// Releases a fill lock: the requests waiting for the entry look once more, then go upstream.
async fn release<D: StageStore>(store: &StoreCtx<D>, policy: &ConcernPolicy, lock: &StoreKey) {
    let call = store.store.delete(lock);
    let _ = store.decide(policy, Op::Marker, call, |_| {}, |_, _| None).await;
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return now_ms(SystemTime::now());
    }
    u64::from_be_bytes(b)
}

impl<D: StageStore> Stage<D> for Cache {
    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        let forced = refresh::take_marker(req);
        if req.method == Method::GET || req.method == Method::HEAD {
            let range = range::requested(&req.headers);
            if req.headers.contains_key(header::RANGE) && range.is_none() {
                self.metrics.bypass.increment(1);
                cx.cache = Some(Box::new(self.bypass(req, Forward::Bypass, "range")));
                return Flow::Continue;
            }
            // Boxed: the lookup's future is large, and inline it would size every route's.
            return Box::pin(self.lookup(cx, req, forced && req.method == Method::GET && range.is_none(), range)).await;
        }
        self.metrics.bypass.increment(1);
        let mut exchange = self.bypass(req, Forward::Method, "method");
        if !is_safe(&req.method) {
            exchange.step = Step::Invalidate;
        }
        cx.cache = Some(Box::new(exchange));
        Flow::Continue
    }

    async fn response<B: Send>(&self, cx: &mut RequestCtx<'_, D>, resp: &mut Response<B>) {
        let Some(exchange) = cx.cache.take() else { return };
        // Boxed, like the lookup.
        Box::pin(self.respond(cx, resp, exchange)).await;
    }
}

impl Cache {
    /// The way out of a request the way in looked at.
    async fn respond<B: Send, D: StageStore>(
        &self,
        cx: &mut RequestCtx<'_, D>,
        resp: &mut Response<B>,
        exchange: Box<Exchange>,
    ) {
        let mut exchange = *exchange;
        let mut filling = exchange.filling.take();
        let status = resp.status();
        let step = std::mem::replace(&mut exchange.step, Step::Bypass(Forward::Bypass, ""));
        let value = match step {
            Step::Bypass(fwd, detail) => status::forwarded(fwd, None, false, (!detail.is_empty()).then_some(detail)),
            Step::Invalidate => {
                if status.is_success() || status.is_redirection() {
                    let keys = self.invalidated_keys(&exchange, resp.headers());
                    self.invalidate(cx.store, keys).await;
                }
                status::forwarded(Forward::Method, None, false, None)
            }
            Step::Fetch(fwd) => self.store_response(cx, exchange, resp, fwd, None, &mut filling),
            Step::Revalidate(entry) => {
                let code = status.as_u16();
                if status == StatusCode::NOT_MODIFIED {
                    let head = policy::response_head(status, resp.headers());
                    match self.refreshed(cx, exchange, *entry, head).await {
                        Some(answer) => {
                            cx.answer_instead = Some(answer);
                            return;
                        }
                        None => status::forwarded(Forward::Stale, Some(304), false, None),
                    }
                } else if matches!(code, 500 | 502 | 503 | 504) {
                    let now = SystemTime::now();
                    let stale_for = Self::staleness(&entry, now);
                    let head = Self::stale_head(&entry, &exchange.head, now);
                    let window = head
                        .as_ref()
                        .and_then(|h| Directives::of(&h.headers).seconds("stale-if-error"));
                    // Disconnected from the origin (RFC 9111 section 4.2.4): stale is allowed
                    // unless the entry forbids it.
                    let disconnected = resp.extensions().get::<UpstreamFailed>().is_some();
                    let detail = if disconnected {
                        "origin-unreachable"
                    } else {
                        "stale-if-error"
                    };
                    match head {
                        Some(head) if disconnected || window.is_some_and(|w| stale_for <= w) => {
                            self.metrics.stale.increment(1);
                            let value = status::forwarded(Forward::Stale, Some(code), false, Some(detail));
                            cx.answer_instead = Some(Self::answer(
                                head,
                                (&entry.body, &entry.meta),
                                &exchange.conditions,
                                exchange.is_head,
                                value,
                            ));
                            return;
                        }
                        _ => status::forwarded(Forward::Stale, Some(code), false, None),
                    }
                } else {
                    self.store_response(cx, exchange, resp, Forward::Stale, Some(code), &mut filling)
                }
            }
        };
        resp.headers_mut().insert(&CACHE_STATUS, value);
        if let Some(lock) = filling {
            // Nothing will be stored: the waiting requests need not wait.
            let (store, policy) = (cx.store.clone(), self.policy.clone());
            tokio::spawn(async move { release(&store, &policy, &lock).await });
        }
    }
}

impl Cache {
    /// A range request the stored entry cannot answer: passed through, nothing stored.
    fn range_bypass<D>(&self, cx: &mut RequestCtx<'_, D>, mut exchange: Exchange) -> Flow {
        self.metrics.bypass.increment(1);
        exchange.step = Step::Bypass(Forward::Bypass, "range");
        cx.cache = Some(Box::new(exchange));
        Flow::Continue
    }

    fn bypass(&self, req: &Parts, fwd: Forward, detail: &'static str) -> Exchange {
        let id = Self::primary_id(req);
        let key = self.keys.key(id.as_bytes());
        Exchange {
            step: Step::Bypass(fwd, detail),
            head: policy::request_head(req, false, false),
            conditions: HeaderMap::new(),
            is_head: req.method == Method::HEAD,
            primary: (id, key),
            variants: None,
            authorized: false,
            request_headers: HeaderMap::new(),
            filling: None,
        }
    }
}
