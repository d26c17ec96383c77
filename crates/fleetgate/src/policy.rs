//! The limits a route enforces, and what each does when the store fails (its failure policy:
//! `open` lets the request through, `closed` refuses it with 503, `local` decides on this
//! instance's in-process store with the limit divided by the number of live instances).

use crate::identity::{identify, Identity};
use crate::ratelimit_headers::{policy_item, RateHeaders};
use crate::telemetry::{DecisionMetrics, StoreMetrics, CONCURRENCY_DECISIONS, RATE_DECISIONS};
use fleetgate_config::{FailurePolicy, KeyPart, MissingKey};
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
        FailurePolicy::Local => {
            metrics.fallback_local.increment(1);
            Fallback::Local
        }
    }
}

/// What a limit counts by, and what it does for a request that lacks it.
struct LimitKey {
    /// `{prefix}:{concern}:{route}/{name}:`, built once.
    keys: ScopedKeys,
    parts: Vec<KeyPart>,
    on_missing_key: MissingKey,
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
        let id = match identify(&self.parts, req, ip, route) {
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        keyspace: &Keyspace,
        route: &str,
        name: &str,
        key: Vec<KeyPart>,
        limit: RateLimit,
        cost: u64,
        on_store_error: FailurePolicy,
        on_missing_key: MissingKey,
    ) -> Self {
        RateLimiter {
            name: name.to_string(),
            key: LimitKey {
                keys: keyspace.scoped(Concern::RateLimit, &format!("{route}/{name}")),
                parts: key,
                on_missing_key,
            },
            policy_item: policy_item(name, &limit),
            limit,
            cost,
            on_store_error,
            metrics: DecisionMetrics::new(RATE_DECISIONS, route, name),
        }
    }

    /// Decides the request; on success records the limit's headers.
    pub async fn check(
        &self,
        ctx: &StoreCtx,
        req: &Parts,
        ip: IpAddr,
        route: &str,
        headers: &mut RateHeaders,
    ) -> Result<(), Rejection> {
        let key = self.key.store_key(&self.name, &self.metrics, req, ip, route)?;
        let started = ctx.timer();
        let result = ctx.store.rate(&key, &self.limit, self.cost).await;
        ctx.observe(&result, started, &ctx.metrics.rate_seconds);
        let decision = match result {
            Ok(d) => d,
            Err(e) => {
                match on_store_failure(self.on_store_error, &self.metrics, &self.name, &e) {
                    Fallback::Allow => return Ok(()),
                    Fallback::Refuse(rejection) => return Err(rejection),
                    Fallback::Local => {
                        let local = self.local_limit(ctx.live_instances.load(Ordering::Relaxed));
                        // The in-process store never fails for rate decisions on its own keys.
                        match ctx.local.rate_now(&key, &local, self.cost) {
                            Ok(d) => d,
                            Err(_) => return Ok(()),
                        }
                    }
                }
            }
        };
        if decision.allowed {
            self.metrics.allowed.increment(1);
            headers.push(&self.policy_item, &self.name, &decision);
            Ok(())
        } else {
            self.metrics.limited.increment(1);
            headers.push(&self.policy_item, &self.name, &decision);
            Err(Rejection::Limited {
                limit: self.name.clone(),
                decision,
            })
        }
    }

    /// This instance's share of the limit while the store is down.
    fn local_limit(&self, instances: u64) -> RateLimit {
        let n = instances.max(1);
        if n == 1 {
            return self.limit;
        }
        let rate = self.limit.rate();
        let share = Rate {
            count: (rate.count / n).max(1),
            period: rate.period,
        };
        let burst = (self.limit.algorithm() == fleetgate_store::Algorithm::Gcra)
            .then(|| ((self.limit.capacity() / n).max(1)) as i64);
        RateLimit::new(self.limit.algorithm(), share, burst).unwrap_or(self.limit)
    }
}

/// One configured concurrency limit.
pub struct ConcurrencyLimiter {
    pub name: String,
    key: LimitKey,
    max: u64,
    lease: Duration,
    on_store_error: FailurePolicy,
    metrics: DecisionMetrics,
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
    fn new(store: Store, key: StoreKey, id: String, max: u64, lease: Duration) -> Self {
        let (s, k, i) = (store.clone(), key.clone(), id.clone());
        let every = (lease / 2).max(Duration::from_millis(10));
        let renewal = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(e) = s.acquire_permit(&k, &i, max, lease).await {
                    tracing::debug!(error = %e, "permit lease renewal failed; retrying");
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        keyspace: &Keyspace,
        route: &str,
        name: &str,
        key: Vec<KeyPart>,
        max: u64,
        lease: Duration,
        on_store_error: FailurePolicy,
        on_missing_key: MissingKey,
    ) -> Self {
        ConcurrencyLimiter {
            name: name.to_string(),
            key: LimitKey {
                keys: keyspace.scoped(Concern::Concurrency, &format!("{route}/{name}")),
                parts: key,
                on_missing_key,
            },
            max,
            lease,
            on_store_error,
            metrics: DecisionMetrics::new(CONCURRENCY_DECISIONS, route, name),
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
        let (decision, holder, max) = match result {
            Ok(d) => (d, ctx.store.clone(), self.max),
            Err(e) => match on_store_failure(self.on_store_error, &self.metrics, &self.name, &e) {
                Fallback::Allow => return Ok(None),
                Fallback::Refuse(rejection) => return Err(rejection),
                Fallback::Local => {
                    let share = (self.max / ctx.live_instances.load(Ordering::Relaxed).max(1)).max(1);
                    match ctx.local.acquire_permit(&key, &permit, share, self.lease).await {
                        Ok(d) => (d, Store::Memory(ctx.local.clone()), share),
                        Err(_) => return Ok(None),
                    }
                }
            },
        };
        if decision.granted {
            self.metrics.allowed.increment(1);
            Ok(Some(PermitGuard::new(holder, key, permit, max, self.lease)))
        } else {
            self.metrics.limited.increment(1);
            Err(Rejection::Concurrency {
                limit: self.name.clone(),
                max: self.max,
            })
        }
    }
}
