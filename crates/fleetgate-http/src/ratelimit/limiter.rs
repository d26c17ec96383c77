//! One rate limit: decides a request on the store (or, under its failure policy, on the
//! in-process fallback with this instance's share), and refunds an admission when a later limit
//! refuses the request.

use crate::error::StageError;
use crate::limit_key::{check_common, LimitKey, LimitScope};
use crate::metrics::{DecisionMetrics, RATE_DECISIONS};
use crate::rate_headers::{policy_item, RateHeaders};
use crate::ratelimit::LimitMode;
use crate::refusal::Refusal;
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use crate::RateLimitConfig;
use fleetgate_store::lease::{LeaseSettings, LeasedLimit};
use fleetgate_store::{
    Algorithm, Concern, Keyspace, MemoryStore, Rate, RateDecision, RateLimit, StoreDriver, StoreKey,
};
use http::request::Parts;
use std::net::IpAddr;
use std::time::Duration;

/// Where an admitted request was counted by one rate limit, and what it was told.
pub struct Charge {
    key: StoreKey,
    /// Counted by the in-process fallback, not the shared store.
    local: bool,
    decision: RateDecision,
}

/// One configured rate limit, ready to decide.
#[derive(Clone)]
pub struct RateLimiter {
    key: LimitKey,
    limit: RateLimit,
    cost: u64,
    policy: ConcernPolicy,
    policy_item: String,
    /// `mode: lease`: the units this instance has reserved from the fleet budget, per key
    /// (shared by every route the limit is on: a global limit is one lease pool).
    lease: Option<LeasedLimit>,
    /// `count_statuses` (empty: every request counts).
    count_statuses: Vec<u16>,
}

impl RateLimiter {
    /// The limit `config` declared at `scope`, with keys under `keyspace`.
    pub fn new(keyspace: &Keyspace, scope: LimitScope<'_>, config: &RateLimitConfig) -> Result<Self, StageError> {
        check_common(&config.name, config.key.len(), config.ipv6_prefix)?;
        if let LimitScope::Route(route) = scope {
            Keyspace::check_scope(route).map_err(|e| StageError::BadName {
                what: "route",
                name: route.to_string(),
                why: e.to_string(),
            })?;
        }
        let limit = config.limit;
        if config.cost > limit.capacity() {
            return Err(StageError::OutOfRange {
                limit: config.name.clone(),
                field: "cost",
                value: config.cost,
                accepted: format!("0 to the limit's capacity, {}", limit.capacity()),
            });
        }
        let lease = match config.mode {
            LimitMode::Exact => None,
            LimitMode::Lease { max_batch } => {
                let settings = LeaseSettings {
                    max_batch,
                    ..LeaseSettings::default()
                };
                Some(LeasedLimit::new(limit, settings).map_err(|e| StageError::Lease {
                    limit: config.name.clone(),
                    why: e.to_string(),
                })?)
            }
        };
        Ok(RateLimiter {
            lease,
            count_statuses: config.count_statuses.clone(),
            key: LimitKey::new(
                keyspace,
                Concern::RateLimit,
                &scope.key_scope(&config.name, limit.algorithm().as_str()),
                config.key.clone(),
                config.on_missing_key,
                config.ipv6_prefix,
            ),
            policy_item: policy_item(&config.name, &limit),
            limit,
            cost: config.cost,
            policy: ConcernPolicy {
                name: config.name.clone(),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(RATE_DECISIONS, scope.label(), &config.name),
            },
        })
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.policy.name
    }

    /// The lease pool of a `mode: lease` limit.
    pub fn lease(&self) -> Option<&LeasedLimit> {
        self.lease.as_ref()
    }

    /// Gives the unspent units of this limit's leases back to the fleet (at shutdown); the
    /// number given back. A limit in exact mode holds none.
    pub async fn give_back<D: StoreDriver + Clone>(&self, store: &D) -> u64 {
        let Some(lease) = &self.lease else { return 0 };
        match lease.give_back_all(store).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(limit = %self.name(), error = %e, "giving back leased units failed; they expire with their lease");
                0
            }
        }
    }

    /// Decides the request; records the limit's headers either way. An admitted request's
    /// [`Charge`] says where it was counted, so that it can be refunded when a later limit
    /// refuses the request (`None`: admitted uncounted, under the `open` policy). Every
    /// decision is counted once, in exactly one metric outcome.
    pub async fn check<D: StageStore>(
        &self,
        ctx: &StoreCtx<D>,
        req: &Parts,
        ip: IpAddr,
        route: &str,
        headers: &mut RateHeaders,
    ) -> Result<Option<Charge>, Refusal> {
        let metrics = &self.policy.metrics;
        let key = self.key.store_key(self.name(), metrics, req, ip, route)?;
        let call = async {
            match &self.lease {
                None => ctx.store.rate(&key, &self.limit, self.cost).await,
                Some(lease) => {
                    lease.set_instances(ctx.instances());
                    // Most requests spend leased units: no store call, no future to build.
                    match lease.decide_local(&key, self.cost) {
                        Some(d) => Ok(d),
                        // Boxed: the lease future is large, and inline it would make every
                        // exact decision move it too.
                        None => Box::pin(lease.decide(&ctx.store, &key, self.cost)).await,
                    }
                }
            }
        };
        let op = if self.lease.is_some() { Op::Lease } else { Op::Rate };
        let decided = ctx
            .decide(
                &self.policy,
                op,
                call,
                |_| {},
                |local, instances| self.local_decision(local, &key, instances),
            )
            .await;
        self.conclude(decided, key, headers)
    }

    /// [`check`](Self::check) as a plain call, when the decision needs no wait: exact mode on
    /// the in-process store, or lease mode with the units at hand. `None`: it must wait, and
    /// nothing was decided, charged or counted (call `check`).
    pub fn check_now<D: StageStore>(
        &self,
        ctx: &StoreCtx<D>,
        req: &Parts,
        ip: IpAddr,
        route: &str,
        headers: &mut RateHeaders,
    ) -> Option<Result<Option<Charge>, Refusal>> {
        let memory = ctx.store.memory();
        if self.lease.is_none() && memory.is_none() {
            return None;
        }
        // A missing key is refused the same way whether or not the decision would wait.
        let key = match self.key.store_key(self.name(), &self.policy.metrics, req, ip, route) {
            Ok(key) => key,
            Err(refusal) => return Some(Err(refusal)),
        };
        let result = match (&self.lease, memory) {
            (Some(lease), _) => {
                lease.set_instances(ctx.instances());
                Ok(lease.decide_local(&key, self.cost)?)
            }
            // The in-process store (checked above: no lease means it is there).
            (None, memory) => memory?.rate_now(&key, &self.limit, self.cost),
        };
        let decided = ctx.settle(
            &self.policy,
            result,
            |_| {},
            |local, instances| self.local_decision(local, &key, instances),
        );
        Some(self.conclude(decided, key, headers))
    }

    /// The `local` policy's decision while the shared store fails: this instance's share.
    fn local_decision(&self, local: &MemoryStore, key: &StoreKey, instances: u64) -> Option<RateDecision> {
        local.rate_now(key, &self.local_limit(instances), self.cost).ok()
    }

    /// Counts a decision in its metric outcome and records the limit's headers; an admission
    /// becomes its [`Charge`], a refusal its [`Refusal`].
    fn conclude(
        &self,
        decided: Decided<RateDecision>,
        key: StoreKey,
        headers: &mut RateHeaders,
    ) -> Result<Option<Charge>, Refusal> {
        let metrics = &self.policy.metrics;
        let (decision, local) = match decided {
            Decided::Store(d) => {
                let outcome = if d.allowed { &metrics.allowed } else { &metrics.limited };
                outcome.increment(1);
                (d, false)
            }
            Decided::Local(d) => {
                let outcome = if d.allowed {
                    &metrics.fallback_local
                } else {
                    &metrics.fallback_local_limited
                };
                outcome.increment(1);
                (d, true)
            }
            Decided::Open => return Ok(None),
            Decided::Closed => {
                return Err(Refusal::StoreDown {
                    limit: self.name().to_string(),
                })
            }
        };
        headers.push(&self.policy_item, self.name(), &decision);
        if decision.allowed {
            Ok(Some(Charge { key, local, decision }))
        } else {
            Err(Refusal::Limited {
                limit: self.name().to_string(),
                decision,
            })
        }
    }

    /// Whether only requests answered with some statuses count (`count_statuses`).
    pub fn counts_some_statuses(&self) -> bool {
        !self.count_statuses.is_empty()
    }

    /// Whether a request answered with `status` counts.
    pub fn counts_status(&self, status: u16) -> bool {
        self.count_statuses.is_empty() || self.count_statuses.contains(&status)
    }

    /// Adds this limit's RateLimit items for `decision`.
    pub fn push_headers(&self, headers: &mut RateHeaders, decision: &RateDecision) {
        headers.push(&self.policy_item, self.name(), decision);
    }

    /// Gives back what `charge` took, on the store that took it, because a later limit
    /// refused the request; records this limit's headers as they stand after the refund. A
    /// refund that fails (the store went away meanwhile) is counted and logged: the units
    /// come back when the window or the emission interval passes.
    pub async fn refund<D: StageStore>(&self, ctx: &StoreCtx<D>, charge: Charge, headers: &mut RateHeaders) {
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
        self.refunded(result, charge.decision, headers);
    }

    /// [`refund`](Self::refund) as a plain call, when it needs no wait: the charge was made
    /// on the in-process store (the fallback or the shared store itself). `false`: it must
    /// wait (call `refund`), and nothing was done.
    pub fn refund_now<D: StageStore>(&self, ctx: &StoreCtx<D>, charge: &Charge, headers: &mut RateHeaders) -> bool {
        let Some(receipt) = &charge.decision.charge else {
            self.push_headers(headers, &charge.decision);
            return true;
        };
        let result = match (charge.local, ctx.store.memory()) {
            (true, _) => ctx.local.refund_now(&charge.key, &self.limit, receipt),
            (false, Some(memory)) => memory.refund_now(&charge.key, &self.limit, receipt),
            (false, None) => return false,
        };
        self.refunded(result, charge.decision, headers);
        true
    }

    /// Counts a refund's outcome and records the limit's headers as they stand after it.
    fn refunded(&self, result: fleetgate_store::StoreResult<bool>, decision: RateDecision, headers: &mut RateHeaders) {
        let mut shown = decision;
        match result {
            Ok(false) => self.policy.metrics.refund_failed.increment(1),
            Ok(true) => {
                self.policy.metrics.refunded.increment(1);
                shown.remaining = (shown.remaining + self.cost).min(self.limit.capacity());
                if self.limit.algorithm() == Algorithm::Gcra {
                    let back = Duration::from_micros(self.limit.interval_us().saturating_mul(self.cost));
                    shown.reset_after = shown.reset_after.saturating_sub(back);
                }
            }
            Err(e) => {
                self.policy.metrics.refund_failed.increment(1);
                tracing::debug!(limit = %self.name(), error = %e, "refund of a refused request failed; the units return with time");
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
    let burst = (limit.algorithm() == Algorithm::Gcra).then(|| ((limit.capacity() / n).max(floor)) as i64);
    RateLimit::new(limit.algorithm(), share, burst).unwrap_or(*limit)
}
