//! Lease mode: exact fleet limits at in-process speed.
//!
//! A [`LeasedLimit`] holds, per key, units reserved from the fleet budget with one atomic
//! [`StoreDriver::reserve`] and spends them locally: a decision is a short lock and a
//! decrement, with no store call. It reserves again before the units run out (a refill in
//! flight never blocks a request while units remain; a request that finds none waits for the
//! refill), sizes each batch from the key's own recent local rate (small when traffic is light,
//! so an idle instance does not sit on budget; at most `max_batch`), shrinks it as the fleet's
//! remaining budget nears 0, and below `instances × batch` remaining decides exactly (one store
//! call per request) until the budget is back. Unused units go back with
//! [`give_back_all`](LeasedLimit::give_back_all) when the instance stops, and otherwise expire
//! with their lease.
//!
//! Zero overshoot holds by construction in the store's reservation (see
//! [`algo::gcra::reserve`](crate::algo::gcra::reserve),
//! [`algo::fixed_window::reserve`](crate::algo::fixed_window::reserve),
//! [`algo::sliding_window::reserve`](crate::algo::sliding_window::reserve) and docs/store.md,
//! "Lease mode"): this engine only has to spend units before its lease ends, which it checks on
//! its own clock, counting the lease from before the reservation was sent and shortening it by
//! 100 ppm against clock-rate drift.
//!
//! A store error is returned as is, so the caller's failure policy (`open`, `closed`, `local`)
//! applies; units already leased are spent first, so an outage starts from what is leased.

use crate::clock::{Clock, MonotonicClock};
use crate::error::StoreError;
use crate::keyspace::StoreKey;
use crate::rate::{Algorithm, LeaseReceipt, RateDecision, RateLimit, Reservation};
use crate::seam::{StoreDriver, StoreResult};
use crate::sync::{Digest, DigestMap, SpinMutex, StripedCounter};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

const SHARDS: usize = 64;
/// Rounds of "refill or wait for one" a request goes through before it asks the store
/// exactly: bounds a request's store calls when other requests keep taking the new units.
const ATTEMPTS: usize = 3;
/// Longest gcra lease when the settings name none.
pub const DEFAULT_GCRA_LEASE: Duration = Duration::from_secs(1);
/// Longest sliding_window lease when the settings name none.
pub const DEFAULT_SLIDING_LEASE: Duration = Duration::from_secs(1);
/// Clock-rate drift allowed for between an instance and the store: leases end this much sooner
/// locally (100 ppm: quartz clocks drift by tens of ppm; NTP keeps them far closer).
const DRIFT_PER_MILLION: u64 = 100;

/// How a limit leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Most units one reservation asks for (at least 1).
    pub max_batch: u64,
    /// Longest lease (at least 1 ms). `None`: gcra and sliding_window 1 s, fixed_window the
    /// rest of the window. Each limit caps it further: gcra at a quarter of the burst's
    /// capacity (a lease of `L` holds `L / interval` units of refill while the bucket is nearly
    /// full), sliding_window at a quarter of the window (a reserved unit counts until the
    /// lease's end plus the window), fixed_window at the window's end. A fixed_window lease shorter than the window lets one instance leave
    /// unspent units in a window more than once, loosening the under-admission bound.
    pub max_lease: Option<Duration>,
    /// Instances expected in the fleet (at least 1; [`LeasedLimit::set_instances`] updates it):
    /// below `instances × batch` units remaining, the limit decides exactly.
    pub instances: u64,
    /// Refill ahead of exhaustion in a spawned task (true, the default) or in the request that
    /// crossed the low-water mark, after its own decision (deterministic, for simulations).
    pub background_refill: bool,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            max_batch: 1000,
            max_lease: None,
            instances: 1,
            background_refill: true,
        }
    }
}

/// Why a limit cannot lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("lease max_batch is 0; accepted: a whole number >= 1 (the most units one reservation takes)")]
    ZeroBatch,
    #[error("lease instances is 0; accepted: a whole number >= 1 (the instances expected in the fleet)")]
    ZeroInstances,
    #[error("lease max_lease {0:?} is below 1ms; accepted: a duration of at least 1ms, e.g. 500ms or 1s")]
    LeaseTooShort(Duration),
}

/// Counters of one leased limit (all keys), for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Reservations asked of the store, and units they granted.
    pub reservations: u64,
    pub reserved: u64,
    /// Units admitted from leased units, without a store call.
    pub spent_local: u64,
    /// Exact decisions (one store call each), and the units they admitted.
    pub exact_calls: u64,
    pub exact_admitted: u64,
    /// Leased units that expired unspent with their lease.
    pub expired: u64,
    /// Units given back to the store (accepted), and units offered back but not accepted
    /// (gcra: something else was charged since; fixed_window: the window had passed).
    pub given_back: u64,
    pub not_taken_back: u64,
}

#[derive(Default)]
struct Counters {
    reservations: AtomicU64,
    reserved: AtomicU64,
    /// On every local decision, from every worker: striped, so that no cache line moves
    /// between cores per request.
    spent_local: StripedCounter,
    exact_calls: AtomicU64,
    exact_admitted: AtomicU64,
    expired: AtomicU64,
    given_back: AtomicU64,
    not_taken_back: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// One limit in lease mode, over any number of keys. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct LeasedLimit {
    inner: Arc<Inner>,
}

struct Inner {
    limit: RateLimit,
    max_batch: u64,
    lease: Duration,
    background_refill: bool,
    instances: AtomicU64,
    clock: Arc<dyn Clock>,
    shards: Box<[PaddedShard]>,
    counters: Counters,
    closed: AtomicBool,
}

/// A shard and its lock, on their own cache line: every worker locks one on every local
/// decision.
#[repr(align(128))]
struct PaddedShard(SpinMutex<Shard>);

#[derive(Default)]
struct Shard {
    slots: DigestMap<Arc<Slot>>,
    /// Slots kept by the last sweep: the next one runs when the map has doubled.
    swept: usize,
}

/// One key's leased units.
struct Slot {
    key: StoreKey,
    state: SpinMutex<SlotState>,
    refilled: Notify,
}

/// Units of one reservation, spendable until `until` on the local clock.
struct Pool {
    units: u64,
    until: u64,
    receipt: LeaseReceipt,
}

struct SlotState {
    /// Oldest (earliest lease end) first; spent in that order.
    pools: VecDeque<Pool>,
    /// A reservation is in flight.
    refilling: bool,
    /// The fleet budget is low: decide with one store call per request.
    exact: bool,
    /// Units per reservation, from the local rate.
    batch: u64,
    /// Smoothed local rate (units per second) and what was spent since it was last measured.
    rate: f64,
    spent_since: u64,
    since: u64,
    /// Leased units that expired unspent since the last reservation was asked for.
    expired_since: u64,
    /// What the store reported at the last reservation or exact decision.
    fleet_remaining: u64,
    reset_after: Duration,
    last_used: u64,
    /// The last lease's end on the local clock and the store's (mapped locally).
    no_lease: (u64, u64),
}

impl SlotState {
    fn new(now: u64) -> Self {
        SlotState {
            pools: VecDeque::new(),
            refilling: false,
            exact: false,
            batch: 1,
            rate: 0.0,
            spent_since: 0,
            since: now,
            expired_since: 0,
            fleet_remaining: u64::MAX,
            reset_after: Duration::ZERO,
            last_used: now,
            no_lease: (0, 0),
        }
    }

    fn held(&self) -> u64 {
        self.pools.iter().map(|p| p.units).sum()
    }

    /// Drops pools whose lease has ended; returns the units that expired unspent.
    fn drop_expired(&mut self, now: u64) -> u64 {
        let mut expired = 0;
        self.pools.retain(|p| {
            let live = p.until > now && p.units > 0;
            if !live {
                expired += p.units;
            }
            live
        });
        expired
    }

    /// Spends `cost` leased units (oldest lease first) if they are there.
    fn take(&mut self, cost: u64) -> bool {
        if self.held() < cost {
            return false;
        }
        let mut left = cost;
        for p in self.pools.iter_mut() {
            let t = left.min(p.units);
            p.units -= t;
            left -= t;
            if left == 0 {
                break;
            }
        }
        while self.pools.front().is_some_and(|p| p.units == 0) {
            self.pools.pop_front();
        }
        self.spent_since += cost;
        true
    }

    /// Re-estimates the local rate and sizes the next batch.
    fn next_batch(&mut self, now: u64, lease_us: u64, max_batch: u64, instances: u64) -> u64 {
        // Slow start: the last batch was spent before its lease ended (none expired), so demand
        // may be above what the measured rate says (a rate measured while requests waited for
        // the store is the store's pace, not the demand's): offer twice as much. Expiries
        // bring the batch back to the measured rate.
        let spent_out = self.expired_since == 0 && self.spent_since > 0;
        let expired = self.expired_since > 0;
        self.expired_since = 0;
        // Over at least a quarter of a lease: a refill right after a spend must not read as a
        // huge rate (one unit in a microsecond).
        let elapsed = now.saturating_sub(self.since).max(lease_us / 4).max(1);
        {
            let measured = self.spent_since as f64 * 1e6 / elapsed as f64;
            self.rate = if self.rate == 0.0 {
                measured
            } else {
                (self.rate + measured) / 2.0
            };
            self.spent_since = 0;
            self.since = now;
        }
        // Enough for three quarters of a lease at the recent rate: spent before the lease ends.
        let by_rate = (self.rate * lease_us as f64 * 0.75 / 1e6).ceil();
        let by_rate = if by_rate.is_finite() && by_rate >= 1.0 {
            (by_rate as u64).min(max_batch)
        } else {
            1
        };
        // Only for keys busy enough for batches above one: a light key stays at one unit.
        let by_rate = if spent_out && by_rate > 1 {
            by_rate.max(self.batch.saturating_mul(2))
        } else if expired {
            // Units expired: halve (not straight back to the rate, which would oscillate).
            by_rate.max(self.batch / 2)
        } else {
            by_rate
        };
        // Shrinks as the fleet's budget nears 0: each instance's share of half of what remains,
        // so the fleet's batches never hold all of it.
        let share = (self.fleet_remaining / instances.max(1).saturating_mul(2)).max(1);
        self.batch = by_rate.min(share).clamp(1, max_batch);
        self.batch
    }

    /// Whether to refill ahead after a spend that leaves `held`: for a key busy enough for
    /// batches above one (an idle key's next request may come after the lease, and its units
    /// would expire unspent), when a quarter of the batch is left or the newest lease ends
    /// within a quarter of a lease (renewing it spares the request after its end a wait).
    fn wants_ahead(&self, held: u64, now: u64, lease_us: u64) -> bool {
        !self.refilling
            && !self.exact
            && self.batch > 1
            && held < self.batch
            && (held <= self.batch / 4
                || self
                    .pools
                    .back()
                    .is_none_or(|p| p.until.saturating_sub(now) < lease_us / 4))
    }

    fn decision(&self, limit: &RateLimit) -> RateDecision {
        RateDecision {
            allowed: true,
            limit: limit.capacity(),
            remaining: self.fleet_remaining.saturating_add(self.held()).min(limit.capacity()),
            reset_after: self.reset_after,
            retry_after: Duration::ZERO,
            charge: None,
        }
    }
}

/// What a request does after looking at its key's leased units.
enum Next {
    /// Spent locally; refill ahead with this many units, if any.
    Spent(RateDecision, Option<u64>),
    Exact,
    Wait,
    Refill(u64),
}

impl LeasedLimit {
    /// A leased limit on the real clock.
    pub fn new(limit: RateLimit, settings: LeaseSettings) -> Result<Self, LeaseError> {
        Self::with_clock(limit, settings, Arc::new(MonotonicClock::default()))
    }

    /// A leased limit whose lease ends are timed on `clock` (tests pass the
    /// [`ManualClock`](crate::ManualClock) the in-process store runs on).
    pub fn with_clock(limit: RateLimit, settings: LeaseSettings, clock: Arc<dyn Clock>) -> Result<Self, LeaseError> {
        if settings.max_batch == 0 {
            return Err(LeaseError::ZeroBatch);
        }
        if settings.instances == 0 {
            return Err(LeaseError::ZeroInstances);
        }
        if let Some(d) = settings.max_lease.filter(|d| *d < Duration::from_millis(1)) {
            return Err(LeaseError::LeaseTooShort(d));
        }
        let lease = effective_lease(&limit, settings.max_lease);
        Ok(LeasedLimit {
            inner: Arc::new(Inner {
                limit,
                max_batch: settings.max_batch,
                lease,
                background_refill: settings.background_refill,
                instances: AtomicU64::new(settings.instances),
                clock,
                shards: (0..SHARDS)
                    .map(|_| PaddedShard(SpinMutex::new(Shard::default())))
                    .collect(),
                counters: Counters::default(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    pub fn limit(&self) -> &RateLimit {
        &self.inner.limit
    }

    /// The lease each reservation asks for (the setting capped for this limit).
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// Updates the number of instances expected in the fleet (at least 1).
    pub fn set_instances(&self, n: u64) {
        // Called on every decision: a store only when the count changed, so that the line
        // every worker reads is not taken from their caches per request.
        let n = n.max(1);
        if self.inner.instances.load(Ordering::Relaxed) != n {
            self.inner.instances.store(n, Ordering::Relaxed);
        }
    }

    /// Units leased and not yet spent, over every key (expired ones included until looked at).
    pub fn held(&self) -> u64 {
        let now = self.inner.clock.now_us();
        self.inner
            .shards
            .iter()
            .map(|s| {
                s.0.lock()
                    .slots
                    .values()
                    .map(|slot| {
                        let st = slot.state.lock();
                        st.pools.iter().filter(|p| p.until > now).map(|p| p.units).sum::<u64>()
                    })
                    .sum::<u64>()
            })
            .sum()
    }

    pub fn stats(&self) -> LeaseStats {
        let c = &self.inner.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LeaseStats {
            reservations: l(&c.reservations),
            reserved: l(&c.reserved),
            spent_local: c.spent_local.get(),
            exact_calls: l(&c.exact_calls),
            exact_admitted: l(&c.exact_admitted),
            expired: l(&c.expired),
            given_back: l(&c.given_back),
            not_taken_back: l(&c.not_taken_back),
        }
    }

    /// Decides `cost` units for `key`: from leased units when there are enough (no store call),
    /// else after a reservation, else (budget low, or a cost no batch covers) exactly with one
    /// [`StoreDriver::rate`] call. A store error is returned for the caller's failure policy.
    ///
    /// A local admission carries no [`charge`](RateDecision::charge): its units were reserved,
    /// not charged, and a refund would not know them. `remaining` is what the store reported at
    /// the last reservation plus what is held here (at most the capacity).
    pub async fn decide<S>(&self, store: &S, key: &StoreKey, cost: u64) -> StoreResult<RateDecision>
    where
        S: StoreDriver + Clone,
    {
        let inner = &self.inner;
        // A cost no batch covers, a peek, or a stopped limit: one exact decision.
        if cost == 0 || cost > inner.max_batch || inner.closed.load(Ordering::Relaxed) {
            return self.exact(store, key, cost, None).await;
        }
        // The hot path: the shard's lock, the key's lock, a decrement.
        if let Some(d) = self.spend_fast(key, cost) {
            return Ok(d);
        }
        self.decide_slow(store, key, cost).await
    }

    /// The hot path of [`decide`](Self::decide) alone, synchronously: spends `cost` leased
    /// units of `key` if they are there and no refill is due, else `None` (then call
    /// `decide`, which does everything else). Lets a caller skip building (and boxing) the
    /// decision's future for the requests that need no store call.
    pub fn decide_local(&self, key: &StoreKey, cost: u64) -> Option<RateDecision> {
        let inner = &self.inner;
        if cost == 0 || cost > inner.max_batch || inner.closed.load(Ordering::Relaxed) {
            return None;
        }
        self.spend_fast(key, cost)
    }

    /// Everything [`decide`](Self::decide) does past the hot path.
    async fn decide_slow<S>(&self, store: &S, key: &StoreKey, cost: u64) -> StoreResult<RateDecision>
    where
        S: StoreDriver + Clone,
    {
        let slot = self.slot(key);
        let mut refilled = false;
        for _ in 0..ATTEMPTS {
            match self.look(&slot, cost, refilled) {
                Next::Spent(d, ahead) => {
                    if let Some(want) = ahead {
                        self.refill_ahead(store, &slot, want).await;
                    }
                    return Ok(d);
                }
                Next::Exact => break,
                Next::Refill(want) => {
                    self.refill(store, &slot, want).await?;
                    refilled = true;
                }
                Next::Wait => {
                    let notified = slot.refilled.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    // Look again now that a wake-up cannot be missed.
                    if slot.state.lock().refilling {
                        notified.await;
                    }
                }
            }
        }
        self.exact(store, key, cost, Some(&slot)).await
    }

    /// Spends leased units under the two locks, or `None` when the slow path must run (no
    /// slot, not enough units, or a refill to start).
    fn spend_fast(&self, key: &StoreKey, cost: u64) -> Option<RateDecision> {
        let inner = &self.inner;
        let shard = self.shard(key).lock();
        let slot = shard.slots.get(&Digest::from(key.digest()))?;
        let mut st = slot.state.lock();
        let now = inner.clock.now_us();
        if st.pools.front().is_none_or(|p| p.until <= now) || st.held() < cost {
            return None;
        }
        if st.wants_ahead(st.held() - cost, now, inner.lease.as_micros() as u64) {
            return None;
        }
        st.take(cost);
        st.last_used = now;
        inner.counters.spent_local.add(cost);
        Some(st.decision(&inner.limit))
    }

    /// The slow path's look at a key: spend, wait, refill or decide exactly.
    fn look(&self, slot: &Slot, cost: u64, refilled: bool) -> Next {
        let inner = &self.inner;
        let now = inner.clock.now_us();
        let mut st = slot.state.lock();
        st.last_used = now;
        let expired = st.drop_expired(now);
        st.expired_since += expired;
        add(&inner.counters.expired, expired);
        let instances = inner.instances.load(Ordering::Relaxed);
        let lease_us = inner.lease.as_micros() as u64;
        if st.take(cost) {
            inner.counters.spent_local.add(cost);
            let d = st.decision(&inner.limit);
            let held = st.held();
            let mut ahead = None;
            if st.wants_ahead(held, now, lease_us) {
                // Never more than the batch held (so never more than max_batch).
                let want = st
                    .next_batch(now, lease_us, inner.max_batch, instances)
                    .saturating_sub(held);
                if want > 0 {
                    st.refilling = true;
                    ahead = Some(want);
                }
            }
            return Next::Spent(d, ahead);
        }
        if st.exact || refilled || (st.no_lease.0..st.no_lease.1).contains(&now) {
            return Next::Exact;
        }
        if st.refilling {
            return Next::Wait;
        }
        st.refilling = true;
        let batch = st.next_batch(now, lease_us, inner.max_batch, instances);
        // Never more than max_batch held: cost <= max_batch, and what is held is below cost.
        Next::Refill(batch.max(cost) - st.held())
    }

    /// Refills ahead of exhaustion: in a spawned task when a runtime is there and the settings
    /// ask for it, else here (the request already has its decision).
    async fn refill_ahead<S>(&self, store: &S, slot: &Arc<Slot>, want: u64)
    where
        S: StoreDriver + Clone,
    {
        if self.inner.background_refill {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (this, store, slot) = (self.clone(), store.clone(), slot.clone());
                rt.spawn(async move {
                    if let Err(e) = this.refill(&store, &slot, want).await {
                        tracing::debug!(error = %e, "lease refill ahead failed; the next request retries");
                    }
                });
                return;
            }
        }
        if let Err(e) = self.refill(store, slot, want).await {
            tracing::debug!(error = %e, "lease refill ahead failed; the next request retries");
        }
    }

    /// One reservation for `slot` (its `refilling` flag set by the caller), then wakes waiters.
    async fn refill<S: StoreDriver>(&self, store: &S, slot: &Slot, want: u64) -> StoreResult<()> {
        let inner = &self.inner;
        // The lease counts from before the request left: the store's lease started later.
        let sent = inner.clock.now_us();
        let result = store.reserve(&slot.key, &inner.limit, want, inner.lease).await;
        {
            let mut st = slot.state.lock();
            st.refilling = false;
            if let Ok(r) = &result {
                self.keep(&mut st, r, sent);
            }
        }
        slot.refilled.notify_waiters();
        result.map(drop)
    }

    fn keep(&self, st: &mut SlotState, r: &Reservation, sent: u64) {
        let inner = &self.inner;
        add(&inner.counters.reservations, 1);
        add(&inner.counters.reserved, r.granted);
        st.fleet_remaining = r.remaining;
        st.reset_after = r.reset_after;
        let instances = inner.instances.load(Ordering::Relaxed);
        // Fewer units left than instances: even batches of one would hold all of them.
        if r.remaining < instances || r.granted == 0 {
            st.exact = true;
        }
        if let Some(receipt) = r.receipt {
            let span = r.lease_until_us.saturating_sub(r.at_us);
            let until = sent + span - span * DRIFT_PER_MILLION / 1_000_000;
            // Between the local end and the store's, a new lease could end no later and
            // leave its units unspent in the same window again: decide exactly meanwhile.
            st.no_lease = (until, sent + span);
            // Keep the deque ordered by lease end (a later reservation never ends sooner, but
            // a shorter window remainder could).
            let at = st.pools.iter().position(|p| p.until > until).unwrap_or(st.pools.len());
            st.pools.insert(
                at,
                Pool {
                    units: r.granted,
                    until,
                    receipt,
                },
            );
        }
    }

    /// One exact decision (one store call), noting what it says about the fleet's budget.
    async fn exact<S: StoreDriver>(
        &self,
        store: &S,
        key: &StoreKey,
        cost: u64,
        slot: Option<&Arc<Slot>>,
    ) -> StoreResult<RateDecision> {
        let inner = &self.inner;
        let d = store.rate(key, &inner.limit, cost).await?;
        add(&inner.counters.exact_calls, 1);
        if d.allowed {
            add(&inner.counters.exact_admitted, cost);
        }
        if let Some(slot) = slot {
            let mut st = slot.state.lock();
            if d.allowed {
                st.spent_since += cost;
            }
            st.fleet_remaining = d.remaining;
            st.reset_after = d.reset_after;
            let instances = inner.instances.load(Ordering::Relaxed);
            // Back to leasing once every instance could take a batch of two.
            if d.remaining >= instances.saturating_mul(2) {
                st.exact = false;
            }
        }
        Ok(d)
    }

    fn shard(&self, key: &StoreKey) -> &SpinMutex<Shard> {
        &self.inner.shards[(key.digest() >> 64) as usize % SHARDS].0
    }

    fn slot(&self, key: &StoreKey) -> Arc<Slot> {
        let now = self.inner.clock.now_us();
        let mut shard = self.shard(key).lock();
        if let Some(s) = shard.slots.get(&Digest::from(key.digest())) {
            return s.clone();
        }
        if shard.slots.len() >= (shard.swept * 2).max(64) {
            // Idle keys holding nothing go; keys with units stay (to be given back).
            let idle = 4 * self.inner.lease.as_micros() as u64;
            shard.slots.retain(|_, s| {
                Arc::strong_count(s) > 1 || {
                    let st = s.state.lock();
                    !st.pools.is_empty() || now.saturating_sub(st.last_used) < idle
                }
            });
            shard.swept = shard.slots.len();
        }
        let slot = Arc::new(Slot {
            key: key.clone(),
            state: SpinMutex::new(SlotState::new(now)),
            refilled: Notify::new(),
        });
        shard.slots.insert(Digest::from(key.digest()), slot.clone());
        slot
    }

    /// Gives every unspent leased unit back (when the instance stops) and decides exactly from
    /// then on. Returns the units the store took back; units it did not take (see
    /// [`StoreDriver::give_back`]) and those of failed calls expire with their lease. The first
    /// store error, if any, is returned after every key was tried.
    pub async fn give_back_all<S: StoreDriver>(&self, store: &S) -> StoreResult<u64> {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Relaxed);
        let now = inner.clock.now_us();
        let slots: Vec<Arc<Slot>> = inner
            .shards
            .iter()
            .flat_map(|s| s.0.lock().slots.values().cloned().collect::<Vec<_>>())
            .collect();
        let mut returned = 0;
        let mut first_error = None;
        for slot in slots {
            let pools: Vec<Pool> = {
                let mut st = slot.state.lock();
                add(&inner.counters.expired, st.drop_expired(now));
                st.pools.drain(..).collect()
            };
            // Newest first: for gcra only the last reservation's mark can still match.
            for p in pools.into_iter().rev() {
                match store.give_back(&slot.key, &inner.limit, &p.receipt, p.units).await {
                    Ok(true) => {
                        returned += p.units;
                        add(&inner.counters.given_back, p.units);
                    }
                    Ok(false) => add(&inner.counters.not_taken_back, p.units),
                    Err(e) => {
                        add(&inner.counters.not_taken_back, p.units);
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(returned),
        }
    }
}

/// The lease a limit's reservations ask for.
fn effective_lease(limit: &RateLimit, max_lease: Option<Duration>) -> Duration {
    let (cap_us, default) = match limit.algorithm() {
        Algorithm::Gcra => ((limit.interval_us() * limit.capacity() / 4).max(1), DEFAULT_GCRA_LEASE),
        Algorithm::FixedWindow => (limit.period_us(), limit.rate().period),
        // A reserved unit counts until the lease's end plus the window: up to a lease longer
        // than an exact charge. A quarter of the window bounds that.
        Algorithm::SlidingWindow => ((limit.period_us() / 4).max(1), DEFAULT_SLIDING_LEASE),
    };
    max_lease.unwrap_or(default).min(Duration::from_micros(cap_us))
}

impl std::fmt::Debug for LeasedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedLimit")
            .field("limit", &self.inner.limit)
            .field("max_batch", &self.inner.max_batch)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

/// A reservation error as a [`StoreError`] (kept for callers that map both alike).
impl From<LeaseError> for StoreError {
    fn from(e: LeaseError) -> Self {
        StoreError::Config(e.to_string())
    }
}
