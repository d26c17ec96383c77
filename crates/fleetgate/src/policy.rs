//! The limits a route enforces, and what each does when the store fails (its failure policy:
//! `open` lets the request through, `closed` refuses it with 503, `local` decides on this
//! instance's in-process store with the limit divided by the number of live instances).

use crate::identity::{identify, Identity};
use crate::ratelimit_headers::{policy_item, RateHeaders};
use crate::telemetry::{DecisionMetrics, RenewalMetrics, StoreMetrics, CONCURRENCY_DECISIONS, RATE_DECISIONS};
use fleetgate_config::{ConcurrencyLimitConfig, FailurePolicy, KeyPart, MissingKey, RateLimitConfig};
use fleetgate_store::{
    Concern, Keyspace, MemoryStore, Rate, RateDecision, RateLimit, ScopedKeys, Store, StoreDriver, StoreError, StoreKey,
};
use http::request::Parts;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Identity used for requests lacking a key's header or cookie under `on_missing_key: shared`.
const ANONYMOUS: &[u8] = b"\x01anonymous";

/// What a worker needs to ask the store: the shared store, the in-process fallback, telemetry.
#[derive(Clone)]
pub struct StoreCtx {
    pub store: Store,
    pub local: MemoryStore,
    pub metrics: Arc<StoreMetrics>,
    /// Live gateway instances (1 until instances announce themselves).
    pub live_instances: Arc<AtomicU64>,
}

impl StoreCtx {
    fn observe<T>(&self, result: &Result<T, StoreError>, started: Option<Instant>, seconds: &metrics::Histogram) {
        let Some(started) = started else { return };
        seconds.record(started.elapsed().as_secs_f64());
        match result {
            Ok(_) => self.metrics.fallback_active.set(0.0),
            Err(e) => {
                self.metrics.error(e);
                if e.is_connectivity() {
                    self.metrics.fallback_active.set(1.0);
                }
            }
        }
    }

    fn timer(&self) -> Option<Instant> {
        (!self.store.is_memory()).then(Instant::now)
    }
}

/// Why a request was refused by a limit.
#[derive(Debug)]
pub enum Rejection {
    Limited { limit: String, decision: RateDecision },
    Concurrency { limit: String, max: u64 },
    StoreDown { limit: String },
    MissingKey { limit: String, what: String },
}

/// What a limit does when its store call failed.
enum Fallback {
    /// `open`: let the request through uncounted.
    Allow,
    /// `closed`: refuse it with 503.
    Refuse(Rejection),
    /// `local`: decide on the in-process store with this instance's share.
    Local,
}

/// Applies `policy` to a store failure, counting the outcome in `metrics`.
fn on_store_failure(policy: FailurePolicy, metrics: &DecisionMetrics, limit: &str, error: &StoreError) -> Fallback {
    tracing::debug!(limit, error = %error, policy = policy.as_str(), "store failed; applying failure policy");
    match policy {
        FailurePolicy::Open => {
            metrics.fallback_open.increment(1);
            Fallback::Allow
        }
        FailurePolicy::Closed => {
            metrics.fallback_closed.increment(1);
            Fallback::Refuse(Rejection::StoreDown {
                limit: limit.to_string(),
            })
        }
        // Counted once the local decision is made: `fallback_local` (admitted) or
        // `fallback_local_limited` (refused).
        FailurePolicy::Local => Fallback::Local,
    }
}

/// Where a limit is declared. Its key scope names the kind, so a route called `global` never
/// shares keys with the global limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope<'a> {
    /// Top-level `rate_limits`, checked on every route.
    Global,
    /// A route's own limits.
    Route(&'a str),
}

impl LimitScope<'_> {
    /// The `route` label of the limit's metrics and error bodies.
    pub fn label(&self) -> &str {
        match self {
            LimitScope::Global => "global",
            LimitScope::Route(r) => r,
        }
    }

    /// `global/{name}/{kind}` or `route/{route}/{name}/{kind}`. `kind` is the algorithm (or
    /// `permits`): two versions of a limit with different algorithms, as in a rolling deploy,
    /// use different keys instead of meeting each other's values (WRONGTYPE, or a counter read
    /// as another algorithm's state).
    fn key_scope(&self, name: &str, kind: &str) -> String {
        match self {
            LimitScope::Global => format!("global/{name}/{kind}"),
            LimitScope::Route(route) => format!("route/{route}/{name}/{kind}"),
        }
    }
}

/// What a limit counts by, and what it does for a request that lacks it.
struct LimitKey {
    /// `{prefix}:{concern}:{scope}:`, built once.
    keys: ScopedKeys,
    parts: Vec<KeyPart>,
    on_missing_key: MissingKey,
    /// IPv6 clients are counted by this many leading bits.
    ipv6_prefix: u8,
}

/// `ip` with every bit past `prefix` cleared, for IPv6 (IPv4, and IPv4-mapped IPv6, unchanged).
fn ip_for_key(ip: IpAddr, prefix: u8) -> IpAddr {
    match crate::client_ip::canonical(ip) {
        IpAddr::V6(v6) if prefix < 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        other => other,
    }
}

impl LimitKey {
    /// The request's store key for the limit `name`: its key parts, the shared anonymous
    /// identity, or a refusal (counted in `metrics`), as `on_missing_key` says.
    fn store_key(
        &self,
        name: &str,
        metrics: &DecisionMetrics,
        req: &Parts,
        ip: IpAddr,
        route: &str,
    ) -> Result<StoreKey, Rejection> {
        let id = match identify(&self.parts, req, ip_for_key(ip, self.ipv6_prefix), route) {
            Identity::Found(id) => id,
            Identity::Missing(_) if self.on_missing_key == MissingKey::Shared => ANONYMOUS.to_vec(),
            Identity::Missing(what) => {
                metrics.missing_key_refused.increment(1);
                return Err(Rejection::MissingKey {
                    limit: name.to_string(),
                    what,
                });
            }
        };
        Ok(self.keys.key(&id))
    }
}

/// Where an admitted request was counted by one rate limit, and what it was told.
pub struct Charge {
    key: StoreKey,
    /// Counted by the in-process fallback, not the shared store.
    local: bool,
    decision: RateDecision,
}

/// One configured rate limit, ready to decide.
pub struct RateLimiter {
    pub name: String,
    key: LimitKey,
    limit: RateLimit,
    cost: u64,
    on_store_error: FailurePolicy,
    policy_item: String,
    metrics: DecisionMetrics,
}

impl RateLimiter {
    pub fn new(keyspace: &Keyspace, scope: LimitScope<'_>, config: &RateLimitConfig) -> Self {
        let limit = config.limit;
        RateLimiter {
            name: config.name.clone(),
            key: LimitKey {
                keys: keyspace.scoped(
                    Concern::RateLimit,
                    &scope.key_scope(&config.name, limit.algorithm().as_str()),
                ),
                parts: config.key.clone(),
                on_missing_key: config.on_missing_key,
                ipv6_prefix: config.ipv6_prefix,
            },
            policy_item: policy_item(&config.name, &limit),
            limit,
            cost: config.cost,
            on_store_error: config.on_store_error,
            metrics: DecisionMetrics::new(RATE_DECISIONS, scope.label(), &config.name),
        }
    }

    /// Decides the request; records the limit's headers either way. An admitted request's
    /// [`Charge`] says where it was counted, so that it can be refunded when a later limit
    /// refuses the request. Every decision is counted once, in exactly one metric outcome.
    pub async fn check(
        &self,
        ctx: &StoreCtx,
        req: &Parts,
        ip: IpAddr,
        route: &str,
        headers: &mut RateHeaders,
    ) -> Result<Option<Charge>, Rejection> {
        let key = self.key.store_key(&self.name, &self.metrics, req, ip, route)?;
        let started = ctx.timer();
        let result = ctx.store.rate(&key, &self.limit, self.cost).await;
        ctx.observe(&result, started, &ctx.metrics.rate_seconds);
        let (decision, local) = match result {
            Ok(d) => {
                let outcome = if d.allowed {
                    &self.metrics.allowed
                } else {
                    &self.metrics.limited
                };
                outcome.increment(1);
                (d, false)
            }
            Err(e) => match on_store_failure(self.on_store_error, &self.metrics, &self.name, &e) {
                Fallback::Allow => return Ok(None),
                Fallback::Refuse(rejection) => return Err(rejection),
                Fallback::Local => {
                    let local = self.local_limit(ctx.live_instances.load(Ordering::Relaxed));
                    // The in-process store never fails for rate decisions on its own keys.
                    match ctx.local.rate_now(&key, &local, self.cost) {
                        Ok(d) => (d, true),
                        Err(_) => return Ok(None),
                    }
                }
            },
        };
        if local {
            let outcome = if decision.allowed {
                &self.metrics.fallback_local
            } else {
                &self.metrics.fallback_local_limited
            };
            outcome.increment(1);
        }
        headers.push(&self.policy_item, &self.name, &decision);
        if decision.allowed {
            Ok(Some(Charge { key, local, decision }))
        } else {
            Err(Rejection::Limited {
                limit: self.name.clone(),
                decision,
            })
        }
    }

    /// Adds this limit's RateLimit items for `decision`.
    pub fn push_headers(&self, headers: &mut RateHeaders, decision: &RateDecision) {
        headers.push(&self.policy_item, &self.name, decision);
    }

    /// Gives back what `charge` took, on the store that took it, because a later limit
    /// refused the request; records this limit's headers as they stand after the refund. A
    /// refund that fails (the store went away meanwhile) is counted and logged: the units
    /// come back when the window or the emission interval passes.
    pub async fn refund(&self, ctx: &StoreCtx, charge: Charge, headers: &mut RateHeaders) {
        let Some(receipt) = &charge.decision.charge else {
            // Nothing was taken (a cost of 0): nothing to give back.
            self.push_headers(headers, &charge.decision);
            return;
        };
        let result = if charge.local {
            ctx.local.refund_now(&charge.key, &self.limit, receipt)
        } else {
            ctx.store.refund(&charge.key, &self.limit, receipt).await
        };
        let mut shown = charge.decision;
        match result {
            Ok(false) => self.metrics.refund_failed.increment(1),
            Ok(true) => {
                self.metrics.refunded.increment(1);
                shown.remaining = (shown.remaining + self.cost).min(self.limit.capacity());
                if self.limit.algorithm() == fleetgate_store::Algorithm::Gcra {
                    let back = Duration::from_micros(self.limit.interval_us().saturating_mul(self.cost));
                    shown.reset_after = shown.reset_after.saturating_sub(back);
                }
            }
            Err(e) => {
                self.metrics.refund_failed.increment(1);
                tracing::debug!(limit = %self.name, error = %e, "refund of a refused request failed; the units return with time");
            }
        }
        self.push_headers(headers, &shown);
    }

    /// This instance's share of the limit while the store is down: the limit divided by the
    /// live instances, but never below one request's cost (a share that could never admit a
    /// request would turn an outage into refusals).
    fn local_limit(&self, instances: u64) -> RateLimit {
        local_share(&self.limit, self.cost, instances)
    }
}

/// `limit` divided among `instances` (rate and, for gcra, burst), each at least `cost`.
fn local_share(limit: &RateLimit, cost: u64, instances: u64) -> RateLimit {
    let n = instances.max(1);
    if n == 1 {
        return *limit;
    }
    let floor = cost.max(1);
    let rate = limit.rate();
    let share = Rate {
        count: (rate.count / n).max(floor),
        period: rate.period,
    };
    let burst =
        (limit.algorithm() == fleetgate_store::Algorithm::Gcra).then(|| ((limit.capacity() / n).max(floor)) as i64);
    RateLimit::new(limit.algorithm(), share, burst).unwrap_or(*limit)
}

/// One configured concurrency limit.
pub struct ConcurrencyLimiter {
    pub name: String,
    key: LimitKey,
    max: u64,
    lease: Duration,
    on_store_error: FailurePolicy,
    metrics: DecisionMetrics,
    renewals: RenewalMetrics,
}

/// Gives back a permit that a timed-out call may have taken: at once, or, if the store is
/// unusable now, once it is usable again (within the lease, after which it expires anyway).
fn release_in_background(store: Store, key: StoreKey, permit: String, lease: Duration) {
    if store.is_memory() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let deadline = tokio::time::Instant::now() + lease;
        loop {
            match store.release_permit(&key, &permit).await {
                Ok(_) => return,
                Err(e) if e.is_connectivity() && tokio::time::Instant::now() < deadline => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if !store.wait_usable(left).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "release of a timed-out permit failed; its lease will expire");
                    return;
                }
            }
        }
    });
}

/// A held permit; gives it back when dropped (response body finished or client gone).
pub struct PermitGuard {
    /// The store holding the permit (the shared one, or the in-process fallback).
    store: Store,
    key: StoreKey,
    id: String,
    /// Renews the lease while the request lasts, so a long response keeps its permit.
    renewal: tokio::task::AbortHandle,
}

impl PermitGuard {
    fn new(store: Store, key: StoreKey, id: String, max: u64, lease: Duration, renewals: RenewalMetrics) -> Self {
        let (s, k, i) = (store.clone(), key.clone(), id.clone());
        let every = (lease / 2).max(Duration::from_millis(10));
        let renewal = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut warned = false;
            loop {
                tick.tick().await;
                match s.acquire_permit(&k, &i, max, lease).await {
                    Ok(d) if d.granted => renewals.renewed.increment(1),
                    // The lease ran out (the store was unreachable for longer than it) and the
                    // slots are taken: the request goes on, since cutting a response midway
                    // would be worse, but it no longer holds a permit. Keep asking: a slot that
                    // frees is taken back.
                    Ok(d) => {
                        renewals.refused.increment(1);
                        if !warned {
                            warned = true;
                            tracing::warn!(in_use = d.in_use, max, "permit renewal refused: the lease had expired and every slot is taken; the request continues without a permit");
                        }
                    }
                    Err(e) => {
                        renewals.failed.increment(1);
                        tracing::debug!(error = %e, "permit lease renewal failed; retrying");
                    }
                }
            }
        })
        .abort_handle();
        PermitGuard {
            store,
            key,
            id,
            renewal,
        }
    }
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        self.renewal.abort();
        let (store, key, id) = (self.store.clone(), self.key.clone(), std::mem::take(&mut self.id));
        if let Store::Memory(m) = &store {
            // In-process: decided at once, no task needed.
            let _ = futures_util::FutureExt::now_or_never(m.release_permit(&key, &id));
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.release_permit(&key, &id).await {
                    tracing::debug!(error = %e, "permit release failed; its lease will expire");
                }
            });
        }
    }
}

static PERMIT_SEQ: AtomicU64 = AtomicU64::new(0);

impl ConcurrencyLimiter {
    pub fn new(keyspace: &Keyspace, route: &str, config: &ConcurrencyLimitConfig) -> Self {
        let scope = LimitScope::Route(route);
        ConcurrencyLimiter {
            name: config.name.clone(),
            key: LimitKey {
                keys: keyspace.scoped(Concern::Concurrency, &scope.key_scope(&config.name, "permits")),
                parts: config.key.clone(),
                on_missing_key: config.on_missing_key,
                ipv6_prefix: config.ipv6_prefix,
            },
            max: config.max,
            lease: config.lease,
            on_store_error: config.on_store_error,
            metrics: DecisionMetrics::new(CONCURRENCY_DECISIONS, route, &config.name),
            renewals: RenewalMetrics::new(route, &config.name),
        }
    }

    pub async fn acquire(
        &self,
        ctx: &StoreCtx,
        instance: &str,
        req: &Parts,
        ip: IpAddr,
        route: &str,
    ) -> Result<Option<PermitGuard>, Rejection> {
        let key = self.key.store_key(&self.name, &self.metrics, req, ip, route)?;
        let permit = format!("{instance}:{}", PERMIT_SEQ.fetch_add(1, Ordering::Relaxed));
        let started = ctx.timer();
        let result = ctx.store.acquire_permit(&key, &permit, self.max, self.lease).await;
        ctx.observe(&result, started, &ctx.metrics.permit_seconds);
        let (decision, holder, max, local) = match result {
            Ok(d) => (d, ctx.store.clone(), self.max, false),
            Err(e) => {
                if matches!(e, StoreError::Timeout(_)) {
                    // The call may still have taken the permit on the server after we stopped
                    // waiting: give it back (release is idempotent) so it does not block a slot
                    // for a whole lease.
                    release_in_background(ctx.store.clone(), key.clone(), permit.clone(), self.lease);
                }
                match on_store_failure(self.on_store_error, &self.metrics, &self.name, &e) {
                    Fallback::Allow => return Ok(None),
                    Fallback::Refuse(rejection) => return Err(rejection),
                    Fallback::Local => {
                        let share = (self.max / ctx.live_instances.load(Ordering::Relaxed).max(1)).max(1);
                        match ctx.local.acquire_permit(&key, &permit, share, self.lease).await {
                            Ok(d) => (d, Store::Memory(ctx.local.clone()), share, true),
                            Err(_) => return Ok(None),
                        }
                    }
                }
            }
        };
        let outcome = match (local, decision.granted) {
            (false, true) => &self.metrics.allowed,
            (false, false) => &self.metrics.limited,
            (true, true) => &self.metrics.fallback_local,
            (true, false) => &self.metrics.fallback_local_limited,
        };
        outcome.increment(1);
        if decision.granted {
            Ok(Some(PermitGuard::new(
                holder,
                key,
                permit,
                max,
                self.lease,
                self.renewals.clone(),
            )))
        } else {
            Err(Rejection::Concurrency {
                limit: self.name.clone(),
                max: self.max,
            })
        }
    }
}
