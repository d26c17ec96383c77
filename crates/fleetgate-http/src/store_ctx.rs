//! The one place where a concern meets the store: every store call of every stage goes through
//! [`StoreCtx::decide`], which times it, counts its errors and applies the concern's failure
//! policy (`open`, `closed`, or `local` on the in-process store with this instance's share of
//! the fleet). No concern re-implements that policy.

use crate::failure::FailurePolicy;
use crate::metrics::{DecisionMetrics, StoreMetrics};
use fleetgate_store::{MemoryStore, RedisStore, Store, StoreDriver, StoreError};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A store driver the stages can run on: the seam, plus what a stage needs to know about the
/// driver behind it.
pub trait StageStore: StoreDriver + Clone {
    /// Whether calls are decided in this process (no network, never time out): permits are
    /// then released inline instead of by a task, and calls are not timed.
    fn in_process(&self) -> bool;

    /// Waits until calls go to the store again (its breaker closed), at most `bound`.
    fn wait_usable(&self, bound: Duration) -> impl Future<Output = bool> + Send;

    /// The in-process store behind this driver, if it is one: its decisions can be made as
    /// plain calls, without building a future (`Stage::request_now`).
    fn memory(&self) -> Option<&MemoryStore>;
}

impl StageStore for Store {
    fn in_process(&self) -> bool {
        self.is_memory()
    }
    async fn wait_usable(&self, bound: Duration) -> bool {
        Store::wait_usable(self, bound).await
    }
    fn memory(&self) -> Option<&MemoryStore> {
        match self {
            Store::Memory(m) => Some(m),
            Store::Redis(_) => None,
        }
    }
}

impl StageStore for MemoryStore {
    fn in_process(&self) -> bool {
        true
    }
    async fn wait_usable(&self, _bound: Duration) -> bool {
        true
    }
    fn memory(&self) -> Option<&MemoryStore> {
        Some(self)
    }
}

impl StageStore for RedisStore {
    fn in_process(&self) -> bool {
        false
    }
    async fn wait_usable(&self, bound: Duration) -> bool {
        RedisStore::wait_usable(self, bound).await
    }
    fn memory(&self) -> Option<&MemoryStore> {
        None
    }
}

/// What a worker (or a tower layer) needs to ask the store: the shared store, the in-process
/// fallback, telemetry, the fleet size, and this instance's name.
#[derive(Clone)]
pub struct StoreCtx<D = Store> {
    pub store: D,
    /// Decides for `local` policies while the shared store fails.
    pub local: MemoryStore,
    pub metrics: Arc<StoreMetrics>,
    /// Live gateway instances sharing the store (1 until instances announce themselves).
    pub live_instances: Arc<AtomicU64>,
    /// This instance's id (it names the permits it holds).
    pub instance: Arc<str>,
}

/// What one concern instance (a named limit) does when the store fails, and where its
/// decisions are counted.
#[derive(Clone)]
pub struct ConcernPolicy {
    /// The limit's name, for logs.
    pub name: String,
    pub on_store_error: FailurePolicy,
    pub metrics: DecisionMetrics,
}

/// Which store operation a call is, for its latency histogram.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Rate,
    Permit,
    /// A claim, get, set or delete of a marker, verdict or session value.
    Marker,
    /// A lease-mode decision: mostly local, so not timed as a store call (the reservations it
    /// makes are the store's business; their errors are still counted).
    Lease,
}

/// Where a decision was made.
pub enum Decided<T> {
    /// By the shared store.
    Store(T),
    /// By the in-process fallback (`local` policy), on this instance's share.
    Local(T),
    /// Not at all: the store failed and the policy is `open`.
    Open,
    /// Not at all: the store failed and the policy is `closed`.
    Closed,
}

impl<D: StageStore> StoreCtx<D> {
    /// A context on `store` for one instance alone (fleet size 1) named `instance`.
    pub fn new(store: D, instance: &str) -> Self {
        StoreCtx {
            store,
            local: MemoryStore::new(),
            metrics: Arc::new(StoreMetrics::new()),
            live_instances: Arc::new(AtomicU64::new(1)),
            instance: instance.into(),
        }
    }

    /// Live instances now (at least 1).
    pub fn instances(&self) -> u64 {
        self.live_instances.load(Ordering::Relaxed).max(1)
    }

    /// Runs `call` on the shared store; when it fails, applies `policy`: `open` and `closed`
    /// are counted in `metrics` and returned, `local` runs `local` on the in-process store with
    /// the live instance count. `on_error` sees every failure first (to undo what a timed-out
    /// call may have done on the server). Metric outcomes of the decisions themselves are the
    /// caller's: only it knows what was decided.
    pub async fn decide<T, F, L>(
        &self,
        concern: &ConcernPolicy,
        op: Op,
        call: F,
        on_error: impl FnOnce(&StoreError),
        local: L,
    ) -> Decided<T>
    where
        F: Future<Output = Result<T, StoreError>>,
        L: FnOnce(&MemoryStore, u64) -> Option<T>,
    {
        let remote = !self.store.in_process();
        let started = (remote && !matches!(op, Op::Lease)).then(Instant::now);
        let result = call.await;
        if let Some(started) = started {
            let seconds = match op {
                Op::Rate => Some(&self.metrics.rate_seconds),
                Op::Permit => Some(&self.metrics.permit_seconds),
                Op::Marker => Some(&self.metrics.marker_seconds),
                Op::Lease => None,
            };
            if let Some(seconds) = seconds {
                seconds.record(started.elapsed().as_secs_f64());
            }
        }
        self.settle(concern, result, on_error, local)
    }

    /// What [`decide`](Self::decide) does with the call's result, for a call already answered
    /// (one made without waiting): counts a shared store's errors and applies `concern`'s
    /// failure policy.
    pub fn settle<T, L>(
        &self,
        concern: &ConcernPolicy,
        result: Result<T, StoreError>,
        on_error: impl FnOnce(&StoreError),
        local: L,
    ) -> Decided<T>
    where
        L: FnOnce(&MemoryStore, u64) -> Option<T>,
    {
        if !self.store.in_process() {
            match &result {
                Ok(_) => self.metrics.fallback_active.set(0.0),
                Err(e) => {
                    self.metrics.error(e);
                    if e.is_connectivity() {
                        self.metrics.fallback_active.set(1.0);
                    }
                }
            }
        }
        let error = match result {
            Ok(t) => return Decided::Store(t),
            Err(e) => e,
        };
        on_error(&error);
        let (policy, metrics) = (concern.on_store_error, &concern.metrics);
        tracing::debug!(limit = %concern.name, error = %error, policy = policy.as_str(), "store failed; applying failure policy");
        match policy {
            FailurePolicy::Open => {
                metrics.fallback_open.increment(1);
                Decided::Open
            }
            FailurePolicy::Closed => {
                metrics.fallback_closed.increment(1);
                Decided::Closed
            }
            // The in-process store decides its own keys; should it ever fail, the request is
            // let through rather than refused for a fault of the fallback.
            FailurePolicy::Local => match local(&self.local, self.instances()) {
                Some(t) => Decided::Local(t),
                None => Decided::Open,
            },
        }
    }
}
