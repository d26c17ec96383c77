//! The outbound throttle (`upstreams.NAME.throttle`): a fleet-wide pace for calls to a metered
//! upstream. Callers wait for their slot instead of being refused.
//!
//! * **The slot**: one atomic store call (a gcra [`rate`](fleetgate_store::StoreDriver::rate)
//!   decision on the upstream's key) reserves the caller's place in the fleet's queue and says
//!   when it may go. The bucket holds `burst` calls that go at once plus as many queued places
//!   as fit in `max_wait`, so the decision itself says whether the wait would be too long: then
//!   nothing is charged and the caller gets 503 with Retry-After at once. N instances share
//!   one cursor (the theoretical arrival time, on the store's clock), so together they keep the
//!   declared rate.
//! * **Leaving**: a caller that goes away while it waits (its future dropped) gives its slot
//!   back with a gcra [`refund`](fleetgate_store::StoreDriver::refund): exactly when nobody
//!   queued behind it, less otherwise (the refund is never more generous than not charging).
//! * **Concurrency**: with `concurrency`, a leased permit per call in flight across the fleet
//!   (renewed while the call lasts, expiring if its instance dies), waited for within the same
//!   `max_wait`.
//! * **Store failures** follow `on_store_error` through [`StoreCtx::decide`]; `local` (the
//!   default) paces on the in-process store at the rate divided by the live instances.
//!
//! Metrics: `fleetgate_throttle_waits_total{upstream}` (calls that waited),
//! `fleetgate_throttle_wait_seconds{upstream}` (each admitted call's wait, 0 included),
//! `fleetgate_throttle_refused_total{upstream,reason}` (`max_wait`, `store`), and
//! `fleetgate_throttle_decisions_total{route=UPSTREAM,limit="throttle",outcome}` for the store
//! decisions and fallbacks.
//!
//! The same throttle wraps any outbound tower service with [`ThrottleLayer`].

mod config;
mod layer;

pub use config::{ThrottleConfig, DEFAULT_MAX_WAIT};
pub use layer::{ThrottleError, ThrottleLayer, ThrottleService};

use crate::concurrency::{PermitGuard, PermitHolder};
use crate::error::StageError;
use crate::metrics::{DecisionMetrics, RenewalMetrics};
use crate::rate_headers::ceil_secs;
use crate::refusal::json_error;
use crate::store_ctx::{ConcernPolicy, Decided, Op, StageStore, StoreCtx};
use bytes::Bytes;
use fleetgate_store::{
    Algorithm, Concern, Keyspace, MemoryStore, Rate, RateCharge, RateDecision, RateLimit, StoreDriver, StoreError,
    StoreKey,
};
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use metrics::{counter, histogram, Counter, Histogram};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const THROTTLE_WAITS: &str = "fleetgate_throttle_waits_total";
pub const THROTTLE_WAIT_SECONDS: &str = "fleetgate_throttle_wait_seconds";
pub const THROTTLE_REFUSED: &str = "fleetgate_throttle_refused_total";
pub const THROTTLE_DECISIONS: &str = "fleetgate_throttle_decisions_total";

/// A throttle permit's lease: renewed at half of it while the call lasts.
const PERMIT_LEASE: Duration = Duration::from_secs(30);
/// How often a caller waiting for a permit asks again.
const PERMIT_POLL: Duration = Duration::from_millis(10);

/// One upstream's throttle.
pub struct Throttle {
    name: String,
    rate: Rate,
    burst: u64,
    max_wait: Duration,
    concurrency: Option<u64>,
    /// The fleet's pace: gcra with room for `burst` plus the places that fit in `max_wait`.
    pace: Pace,
    slot_key: StoreKey,
    permit_key: StoreKey,
    policy: ConcernPolicy,
    metrics: ThrottleMetrics,
    renewals: RenewalMetrics,
}

/// A gcra limit whose capacity is `burst` calls that go at once and queued places behind them.
#[derive(Debug, Clone, Copy)]
struct Pace {
    limit: RateLimit,
    /// `burst × interval`: the part of a reserved place's TAT that needs no wait.
    at_once_us: u64,
}

impl Pace {
    fn new(rate: Rate, burst: u64, max_wait: Duration) -> Result<Self, String> {
        let plain = RateLimit::new(Algorithm::Gcra, rate, Some(burst as i64)).map_err(|e| e.to_string())?;
        let interval = plain.interval_us();
        let queued = max_wait.as_micros() as u64 / interval;
        let limit = RateLimit::new(Algorithm::Gcra, rate, Some((burst + queued) as i64)).map_err(|e| e.to_string())?;
        Ok(Pace {
            limit,
            at_once_us: interval * burst,
        })
    }

    /// How long the caller of an admitted decision waits.
    fn wait(&self, d: &RateDecision) -> Duration {
        Duration::from_micros((d.reset_after.as_micros() as u64).saturating_sub(self.at_once_us))
    }
}

#[derive(Clone)]
struct ThrottleMetrics {
    waits: Counter,
    wait_seconds: Histogram,
    refused_wait: Counter,
    refused_store: Counter,
}

/// Why a call may not go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThrottleRefusal {
    /// Its wait would be longer than `max_wait`; a place opens in `retry_after`.
    TooLong {
        upstream: String,
        max_wait: Duration,
        retry_after: Duration,
    },
    /// The store failed and the throttle's policy is `closed`.
    StoreDown { upstream: String },
}

impl ThrottleRefusal {
    /// When to try again (whole seconds, at least 1, as Retry-After says it).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            ThrottleRefusal::TooLong { retry_after, .. } => ceil_secs(*retry_after).max(1),
            ThrottleRefusal::StoreDown { .. } => 1,
        }
    }

    /// The answer: 503 with Retry-After and a JSON body naming the upstream.
    pub fn response(&self) -> Response<Bytes> {
        let retry = self.retry_after_secs();
        let (kind, upstream, msg) = match self {
            ThrottleRefusal::TooLong { upstream, max_wait, .. } => (
                "throttle_wait_too_long",
                upstream,
                format!(
                    "calls to upstream {upstream} are paced; this one would wait longer than {} ms; retry in {retry} s",
                    max_wait.as_millis()
                ),
            ),
            ThrottleRefusal::StoreDown { upstream } => (
                "store_unavailable",
                upstream,
                format!("the throttle of upstream {upstream} cannot be checked: the store is unavailable and its policy is closed"),
            ),
        };
        let mut resp = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            kind,
            &msg,
            &[("upstream", json!(upstream)), ("retry_after", json!(retry))],
        );
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
        resp
    }
}

impl std::fmt::Display for ThrottleRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThrottleRefusal::TooLong { upstream, max_wait, .. } => write!(
                f,
                "upstream {upstream}: the throttle's wait would exceed max_wait {} ms",
                max_wait.as_millis()
            ),
            ThrottleRefusal::StoreDown { upstream } => {
                write!(
                    f,
                    "upstream {upstream}: the store is unavailable and the throttle's policy is closed"
                )
            }
        }
    }
}

impl std::error::Error for ThrottleRefusal {}

/// A call that may go: how long it waited, and its permit (given back when this is dropped).
pub struct ThrottlePass {
    pub waited: Duration,
    permit: Option<crate::context::Guard>,
}

impl ThrottlePass {
    /// The permit to hold until the call is over (`None`: no concurrency bound, or the store
    /// failed under `open`).
    pub fn into_guard(self) -> Option<crate::context::Guard> {
        self.permit
    }
}

/// Gives a reserved slot back if the caller leaves before its turn (the future is dropped).
struct SlotRefund<D: StageStore> {
    holder: PermitHolder<D>,
    key: StoreKey,
    limit: RateLimit,
    charge: Option<RateCharge>,
}

impl<D: StageStore> Drop for SlotRefund<D> {
    fn drop(&mut self) {
        let Some(charge) = self.charge.take() else {
            return;
        };
        let (key, limit) = (self.key.clone(), self.limit);
        match &self.holder {
            PermitHolder::Local(m) => {
                let _ = m.refund(&key, &limit, &charge).now_or_never();
            }
            PermitHolder::Shared(s) if s.in_process() => {
                let _ = s.refund(&key, &limit, &charge).now_or_never();
            }
            PermitHolder::Shared(s) => {
                let s = s.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = s.refund(&key, &limit, &charge).await {
                            tracing::debug!(error = %e, "throttle slot refund failed; the slot passes unused");
                        }
                    });
                }
            }
        }
    }
}

static PERMIT_SEQ: AtomicU64 = AtomicU64::new(0);

impl Throttle {
    /// The throttle `config` of upstream `upstream`, with keys under `keyspace`.
    pub fn new(keyspace: &Keyspace, upstream: &str, config: &ThrottleConfig) -> Result<Self, StageError> {
        let pace = Pace::new(config.rate, config.burst, config.max_wait).map_err(|why| StageError::OutOfRange {
            limit: format!("throttle of upstream {upstream}"),
            field: "rate",
            value: config.rate.count,
            accepted: format!("a rate, burst and max_wait the store can hold ({why})"),
        })?;
        Ok(Throttle {
            name: upstream.to_string(),
            rate: config.rate,
            burst: config.burst,
            max_wait: config.max_wait,
            concurrency: config.concurrency,
            pace,
            slot_key: keyspace.key(Concern::RateLimit, "throttle", upstream.as_bytes()),
            permit_key: keyspace.key(Concern::Concurrency, "throttle", upstream.as_bytes()),
            policy: ConcernPolicy {
                name: format!("throttle of upstream {upstream}"),
                on_store_error: config.on_store_error,
                metrics: DecisionMetrics::new(THROTTLE_DECISIONS, upstream, "throttle"),
            },
            metrics: ThrottleMetrics {
                waits: counter!(THROTTLE_WAITS, "upstream" => upstream.to_string()),
                wait_seconds: histogram!(THROTTLE_WAIT_SECONDS, "upstream" => upstream.to_string()),
                refused_wait: counter!(THROTTLE_REFUSED, "upstream" => upstream.to_string(), "reason" => "max_wait"),
                refused_store: counter!(THROTTLE_REFUSED, "upstream" => upstream.to_string(), "reason" => "store"),
            },
            renewals: RenewalMetrics::new(upstream, "throttle"),
        })
    }

    /// The upstream's name.
    pub fn upstream(&self) -> &str {
        &self.name
    }

    /// This instance's pace while the store fails: the rate over `instances` (a period that
    /// many times longer), the burst shared likewise (at least 1).
    fn local_pace(&self, instances: u64) -> Option<Pace> {
        let rate = Rate {
            count: self.rate.count,
            period: self.rate.period.checked_mul(instances.min(u32::MAX as u64) as u32)?,
        };
        Pace::new(rate, (self.burst / instances).max(1), self.max_wait).ok()
    }

    /// Waits for this call's slot (and permit), or refuses it at once when the wait would be
    /// longer than `max_wait`. Dropping the future while it waits gives the slot back.
    pub async fn acquire<D: StageStore>(&self, ctx: &StoreCtx<D>) -> Result<ThrottlePass, ThrottleRefusal> {
        let started = Instant::now();
        let decided = ctx
            .decide(
                &self.policy,
                Op::Rate,
                async { Ok((ctx.store.rate(&self.slot_key, &self.pace.limit, 1).await?, self.pace)) },
                |_| {},
                |local: &MemoryStore, instances| {
                    let pace = self.local_pace(instances)?;
                    let d = local.rate(&self.slot_key, &pace.limit, 1).now_or_never()?.ok()?;
                    Some((d, pace))
                },
            )
            .await;
        let m = &self.policy.metrics;
        let slot = match decided {
            Decided::Store((d, pace)) => {
                if d.allowed { &m.allowed } else { &m.limited }.increment(1);
                Some((d, pace, PermitHolder::Shared(ctx.store.clone())))
            }
            Decided::Local((d, pace)) => {
                if d.allowed {
                    &m.fallback_local
                } else {
                    &m.fallback_local_limited
                }
                .increment(1);
                Some((d, pace, PermitHolder::Local(ctx.local.clone())))
            }
            Decided::Open => None,
            Decided::Closed => {
                self.metrics.refused_store.increment(1);
                return Err(ThrottleRefusal::StoreDown {
                    upstream: self.name.clone(),
                });
            }
        };
        if let Some((d, pace, holder)) = slot {
            if !d.allowed {
                self.metrics.refused_wait.increment(1);
                return Err(self.too_long(d.retry_after));
            }
            let wait = pace.wait(&d);
            if !wait.is_zero() {
                self.metrics.waits.increment(1);
                let mut refund = SlotRefund {
                    holder,
                    key: self.slot_key.clone(),
                    limit: pace.limit,
                    charge: d.charge,
                };
                tokio::time::sleep(wait).await;
                refund.charge = None;
            }
        }
        let permit = match self.concurrency {
            Some(max) => self.permit(ctx, max, started + self.max_wait).await?,
            None => None,
        };
        let waited = started.elapsed();
        self.metrics.wait_seconds.record(waited.as_secs_f64());
        Ok(ThrottlePass { waited, permit })
    }

    fn too_long(&self, retry_after: Duration) -> ThrottleRefusal {
        ThrottleRefusal::TooLong {
            upstream: self.name.clone(),
            max_wait: self.max_wait,
            retry_after,
        }
    }

    /// A fleet-wide permit, asked for every [`PERMIT_POLL`] until `deadline`.
    async fn permit<D: StageStore>(
        &self,
        ctx: &StoreCtx<D>,
        max: u64,
        deadline: Instant,
    ) -> Result<Option<crate::context::Guard>, ThrottleRefusal> {
        let id = format!("{}:t{}", ctx.instance, PERMIT_SEQ.fetch_add(1, Ordering::Relaxed));
        loop {
            let decided = ctx
                .decide(
                    &self.policy,
                    Op::Permit,
                    async {
                        Ok((
                            ctx.store
                                .acquire_permit(&self.permit_key, &id, max, PERMIT_LEASE)
                                .await?,
                            max,
                        ))
                    },
                    |e| {
                        if matches!(e, StoreError::Timeout(_)) {
                            crate::concurrency::release_in_background(
                                ctx.store.clone(),
                                self.permit_key.clone(),
                                id.clone(),
                                PERMIT_LEASE,
                            );
                        }
                    },
                    |local: &MemoryStore, instances| {
                        let share = (max / instances).max(1);
                        let d = local
                            .acquire_permit(&self.permit_key, &id, share, PERMIT_LEASE)
                            .now_or_never()?
                            .ok()?;
                        Some((d, share))
                    },
                )
                .await;
            let (granted, holder, max_held) = match decided {
                Decided::Store((d, m)) => (d.granted, PermitHolder::Shared(ctx.store.clone()), m),
                Decided::Local((d, m)) => (d.granted, PermitHolder::Local(ctx.local.clone()), m),
                Decided::Open => return Ok(None),
                Decided::Closed => {
                    self.metrics.refused_store.increment(1);
                    return Err(ThrottleRefusal::StoreDown {
                        upstream: self.name.clone(),
                    });
                }
            };
            if granted {
                let guard = PermitGuard::new(
                    holder,
                    self.permit_key.clone(),
                    id,
                    max_held,
                    PERMIT_LEASE,
                    self.renewals.clone(),
                );
                return Ok(Some(Box::new(guard)));
            }
            let now = Instant::now();
            if now >= deadline {
                self.metrics.refused_wait.increment(1);
                return Err(self.too_long(Duration::from_secs(1)));
            }
            tokio::time::sleep(PERMIT_POLL.min(deadline - now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_store::{ManualClock, MemoryStore};

    fn throttle(rate: &str, burst: u64, max_wait: Duration) -> Throttle {
        let mut c = ThrottleConfig::new(rate.parse().unwrap());
        c.burst = burst;
        c.max_wait = max_wait;
        Throttle::new(&Keyspace::new("t").unwrap(), "metered", &c).unwrap()
    }

    #[test]
    fn places_queue_one_interval_apart_and_stop_at_max_wait() {
        let t = throttle("5/s", 1, Duration::from_secs(1));
        let clock = ManualClock::new(1_000_000);
        let store = MemoryStore::with_clock(std::sync::Arc::new(clock));
        let mut waits = Vec::new();
        loop {
            let d = store
                .rate(&t.slot_key, &t.pace.limit, 1)
                .now_or_never()
                .unwrap()
                .unwrap();
            if !d.allowed {
                assert!(d.retry_after > Duration::ZERO, "a refused place says when one opens");
                break;
            }
            waits.push(t.pace.wait(&d).as_millis());
            assert!(waits.len() < 100, "max_wait must bound the queue");
        }
        // 200 ms apart: at once, then 200..=1000 ms (max_wait 1 s).
        assert_eq!(waits, vec![0, 200, 400, 600, 800, 1000]);
    }

    #[test]
    fn a_burst_goes_at_once_then_the_pace_holds() {
        let t = throttle("10/s", 3, Duration::from_millis(500));
        let store = MemoryStore::with_clock(std::sync::Arc::new(ManualClock::new(1_000_000)));
        let waits: Vec<u128> = (0..8)
            .map_while(|_| {
                let d = store.rate(&t.slot_key, &t.pace.limit, 1).now_or_never()?.ok()?;
                d.allowed.then(|| t.pace.wait(&d).as_millis())
            })
            .collect();
        assert_eq!(waits, vec![0, 0, 0, 100, 200, 300, 400, 500]);
    }

    #[test]
    fn the_local_pace_is_the_instance_share() {
        let t = throttle("6/s", 3, Duration::from_secs(2));
        let p = t.local_pace(3).unwrap();
        assert_eq!(
            p.limit.interval_us(),
            500_000,
            "6/s over 3 instances: one call per 500 ms"
        );
        assert_eq!(p.at_once_us, 500_000, "burst 3 over 3 instances: 1");
    }

    #[tokio::test]
    async fn a_wait_past_max_wait_is_refused_at_once_with_retry_after() {
        let t = throttle("1/s", 1, Duration::from_millis(1500));
        let ctx = StoreCtx::new(MemoryStore::new(), "i1");
        assert!(t.acquire(&ctx).await.is_ok());
        // The second place is 1 s ahead: within max_wait, but do not wait for it here.
        let d = ctx.store.rate(&t.slot_key, &t.pace.limit, 1).await.unwrap();
        assert!(d.allowed);
        let refused = t.acquire(&ctx).await.err().expect("a third place is 2 s ahead");
        let resp = refused.response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().get(header::RETRY_AFTER).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_leaves_gives_its_slot_back() {
        let t = throttle("1/s", 1, Duration::from_secs(5));
        let ctx = StoreCtx::new(MemoryStore::new(), "i1");
        assert!(t.acquire(&ctx).await.unwrap().waited < Duration::from_millis(10));
        // The next caller would wait 1 s; it leaves after 100 ms.
        let waiting = tokio::time::timeout(Duration::from_millis(100), t.acquire(&ctx)).await;
        assert!(waiting.is_err());
        // Its place was refunded: the queue holds only what the first call took.
        let d = ctx.store.rate(&t.slot_key, &t.pace.limit, 1).await.unwrap();
        assert!(t.pace.wait(&d) <= Duration::from_secs(1), "wait {:?}", t.pace.wait(&d));
    }
}
