//! One concurrency limit: a permit per request in flight, leased in the store so that a crashed
//! instance's permits expire, renewed while the request lasts, given back when its response is
//! over.

use crate::error::StageError;
use crate::limit_key::{check_common, LimitKey, LimitScope};
use crate::metrics::{DecisionMetrics, RenewalMetrics, CONCURRENCY_DECISIONS};
use crate::refusal::Refusal;
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use crate::ConcurrencyLimitConfig;
use fleetgate_store::{Concern, Keyspace, MemoryStore, StoreDriver, StoreError, StoreKey};
use http::request::Parts;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One configured concurrency limit.
pub struct ConcurrencyLimiter {
    key: LimitKey,
    max: u64,
    lease: Duration,
    policy: ConcernPolicy,
    renewals: RenewalMetrics,
}

/// Where a permit is held: the shared store, or the in-process fallback.
#[derive(Clone)]
pub(crate) enum Holder<D> {
    Shared(D),
    Local(MemoryStore),
}

impl<D: StageStore> Holder<D> {
    async fn acquire(
        &self,
        key: &StoreKey,
        id: &str,
        max: u64,
        lease: Duration,
    ) -> Result<fleetgate_store::PermitDecision, StoreError> {
        match self {
            Holder::Shared(s) => s.acquire_permit(key, id, max, lease).await,
            Holder::Local(m) => m.acquire_permit(key, id, max, lease).await,
        }
    }
}

/// Gives back a permit that a timed-out call may have taken: at once, or, if the store is
/// unusable now, once it is usable again (within the lease, after which it expires anyway).
pub(crate) fn release_in_background<D: StageStore>(store: D, key: StoreKey, permit: String, lease: Duration) {
    if store.in_process() {
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
pub struct PermitGuard<D: StageStore> {
    holder: Holder<D>,
    key: StoreKey,
    id: String,
    /// Renews the lease while the request lasts, so a long response keeps its permit.
    renewal: tokio::task::AbortHandle,
}

impl<D: StageStore> PermitGuard<D> {
    pub(crate) fn new(
        holder: Holder<D>,
        key: StoreKey,
        id: String,
        max: u64,
        lease: Duration,
        renewals: RenewalMetrics,
    ) -> Self {
        let (h, k, i) = (holder.clone(), key.clone(), id.clone());
        let every = (lease / 2).max(Duration::from_millis(10));
        let renewal = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut warned = false;
            loop {
                tick.tick().await;
                match h.acquire(&k, &i, max, lease).await {
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
            holder,
            key,
            id,
            renewal,
        }
    }
}

impl<D: StageStore> Drop for PermitGuard<D> {
    fn drop(&mut self) {
        self.renewal.abort();
        let (key, id) = (self.key.clone(), std::mem::take(&mut self.id));
        let store = match &self.holder {
            // In-process: decided at once, no task needed.
            Holder::Local(m) => {
                let _ = futures_util::FutureExt::now_or_never(m.release_permit(&key, &id));
                return;
            }
            Holder::Shared(s) if s.in_process() => {
                let _ = futures_util::FutureExt::now_or_never(s.release_permit(&key, &id));
                return;
            }
            Holder::Shared(s) => s.clone(),
        };
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
    /// The limit `config` on route `route`, with keys under `keyspace`.
    pub fn new(keyspace: &Keyspace, route: &str, config: &ConcurrencyLimitConfig) -> Result<Self, StageError> {
        check_common(&config.name, config.key.len(), config.ipv6_prefix)?;
        let out_of_range = |field, value, accepted: &str| StageError::OutOfRange {
            limit: config.name.clone(),
            field,
            value,
            accepted: accepted.into(),
        };
        if config.max == 0 {
            return Err(out_of_range("max", 0, "at least 1"));
        }
        if config.lease < Duration::from_millis(1) {
            return Err(out_of_range(
                "lease_ms",
                config.lease.as_millis() as u64,
                "at least 1 ms",
            ));
        }
        let scope = LimitScope::Route(route);
        Ok(ConcurrencyLimiter {
            key: LimitKey::new(
                keyspace,
                Concern::Concurrency,
                &scope.key_scope(&config.name, "permits"),
                config.key.clone(),
                config.on_missing_key,
                config.ipv6_prefix,
            ),
            max: config.max,
            lease: config.lease,
            policy: ConcernPolicy {
                name: config.name.clone(),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(CONCURRENCY_DECISIONS, route, &config.name),
            },
            renewals: RenewalMetrics::new(route, &config.name),
        })
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.policy.name
    }

    /// Takes a permit for the request, or refuses it. `None`: admitted without a permit (the
    /// store failed under the `open` policy).
    pub async fn acquire<D: StageStore>(
        &self,
        ctx: &StoreCtx<D>,
        req: &Parts,
        ip: IpAddr,
        route: &str,
    ) -> Result<Option<PermitGuard<D>>, Refusal> {
        let metrics = &self.policy.metrics;
        let key = self.key.store_key(self.name(), metrics, req, ip, route)?;
        let permit = format!("{}:{}", ctx.instance, PERMIT_SEQ.fetch_add(1, Ordering::Relaxed));
        let decided = ctx
            .decide(
                &self.policy,
                Op::Permit,
                async {
                    Ok((
                        ctx.store.acquire_permit(&key, &permit, self.max, self.lease).await?,
                        self.max,
                    ))
                },
                |e| {
                    if matches!(e, StoreError::Timeout(_)) {
                        // The call may still have taken the permit on the server after we
                        // stopped waiting: give it back (release is idempotent) so it does not
                        // block a slot for a whole lease.
                        release_in_background(ctx.store.clone(), key.clone(), permit.clone(), self.lease);
                    }
                },
                |local, instances| {
                    let share = (self.max / instances).max(1);
                    let d =
                        futures_util::FutureExt::now_or_never(local.acquire_permit(&key, &permit, share, self.lease))?;
                    d.ok().map(|d| (d, share))
                },
            )
            .await;
        let (decision, holder, max) = match decided {
            Decided::Store((d, _)) => {
                let outcome = if d.granted { &metrics.allowed } else { &metrics.limited };
                outcome.increment(1);
                (d, Holder::Shared(ctx.store.clone()), self.max)
            }
            Decided::Local((d, share)) => {
                let outcome = if d.granted {
                    &metrics.fallback_local
                } else {
                    &metrics.fallback_local_limited
                };
                outcome.increment(1);
                (d, Holder::Local(ctx.local.clone()), share)
            }
            Decided::Open => return Ok(None),
            Decided::Closed => {
                return Err(Refusal::StoreDown {
                    limit: self.name().to_string(),
                })
            }
        };
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
            Err(Refusal::Concurrency {
                limit: self.name().to_string(),
                max: self.max,
            })
        }
    }
}
