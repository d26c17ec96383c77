//! One view of a store's health per instance: a [`HealthGroup`] holds the circuit breaker that
//! every connection set of the instance (each worker's, the admin's) shares, so `/healthz`, the
//! heartbeat and every worker agree on whether the store is usable.
//!
//! * Closed: calls go to the store. `threshold` consecutive connectivity failures anywhere in the
//!   instance (timeouts, refused or dropped connections), or one failed health check, open it.
//! * Open: calls fail at once with [`StoreError::Unavailable`] instead of each waiting for the
//!   timeout, so a dead Redis costs no latency per request. No client request is ever a probe.
//! * Probing: every member of the group runs a small prober on its own runtime that PINGs its
//!   own connections while the breaker is open (after a backoff that doubles up to a cap). The
//!   first member whose PING succeeds wakes every other prober at once; the breaker closes only
//!   when every live member has answered since it opened. So once it closes, the next request on
//!   every worker goes to a connection that has just been proven, instead of finding a dead one
//!   and falling back again.
//! * Reviving: a connection that failed (or that a health check found dead: the server
//!   restarted) below the threshold leaves the breaker closed, but every other connection of the
//!   instance may be just as dead and would fail its next call. So any connectivity failure marks
//!   every member *suspect*, and each suspect member's prober PINGs its own connections (after a
//!   backoff while they keep failing) until they answer, which makes redis-rs reconnect them in
//!   the background instead of on a client's request. `/healthz` says `ok` only once no member
//!   is suspect.
//! * Late failures: a call admitted before the breaker last opened may time out after it has
//!   closed again. Its failure describes the outage a probe has since proven over, so it does not
//!   count: every call carries the closed period it was admitted in ([`Admission::Call`]), and
//!   only failures of calls admitted in the current one count towards opening.

use crate::error::StoreError;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Consecutive connectivity failures that open the breaker (default 3).
    pub threshold: u32,
    /// First and longest wait between probes while open (defaults 100 ms and 1 s).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            threshold: 3,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// What the probers watch: whether the breaker is open, since when (its generation), and a
/// counter bumped to ask every prober to PING now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ProbeState {
    pub open: bool,
    pub generation: u64,
    pub probe_seq: u64,
    /// Bumped every time a suspect member's connections answered again.
    pub revived: u64,
}

/// One connection set of the group (a worker's store, the admin's store).
#[derive(Debug, Default)]
pub(super) struct Member {
    /// The breaker generation this member last answered a probe in.
    answered: AtomicU64,
    /// Some connection of the instance failed since this member's connections last answered.
    suspect: AtomicBool,
}

impl Member {
    pub(super) fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    pub(super) fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::Acquire)
    }
}

/// The instance's one view of a store's health. Cheap to share (`Arc`); see the module doc.
pub struct HealthGroup {
    settings: BreakerSettings,
    /// The hot path reads only this.
    state: AtomicU8,
    failures: AtomicU32,
    /// Bumped every time the breaker opens.
    generation: AtomicU64,
    /// Bumped every time the breaker closes: the closed period calls are admitted in.
    period: AtomicU64,
    backoff_ms: AtomicU64,
    members: Mutex<Vec<Weak<Member>>>,
    probes: watch::Sender<ProbeState>,
    /// When the first member answered in the current generation (for the log: how long the
    /// others took to follow).
    first_answer: Mutex<Option<(u64, std::time::Instant)>>,
}

impl std::fmt::Debug for HealthGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthGroup")
            .field("open", &self.is_open())
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

/// What the breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call normally, and report the outcome with this closed period.
    Call(u64),
    /// Open: fail fast.
    Reject,
}

impl HealthGroup {
    pub fn new(settings: BreakerSettings) -> Arc<Self> {
        Arc::new(HealthGroup {
            settings,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            period: AtomicU64::new(0),
            backoff_ms: AtomicU64::new(settings.min_backoff.as_millis() as u64),
            members: Mutex::new(Vec::new()),
            probes: watch::channel(ProbeState::default()).0,
            first_answer: Mutex::new(None),
        })
    }

    pub(super) fn join(&self) -> Arc<Member> {
        let member = Arc::new(Member::default());
        let mut members = self.members.lock();
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(&member));
        member
    }

    pub(super) fn watch(&self) -> watch::Receiver<ProbeState> {
        self.probes.subscribe()
    }

    pub fn admit(&self) -> Admission {
        let period = self.period.load(Ordering::Acquire);
        if self.state.load(Ordering::Acquire) == CLOSED {
            Admission::Call(period)
        } else {
            Admission::Reject
        }
    }

    /// The current closed period (to pass to [`HealthGroup::trip`] or
    /// [`HealthGroup::on_failure`] for work not admitted through [`HealthGroup::admit`]).
    pub(super) fn period(&self) -> u64 {
        self.period.load(Ordering::Acquire)
    }

    /// Whether calls currently fail fast.
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != CLOSED
    }

    /// The store answered a call: the failure streak ends. Only probers close an open breaker.
    pub(super) fn on_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A call admitted in closed period `period` failed to reach the store. A call admitted
    /// before the breaker last closed does not count (see the module doc).
    pub(super) fn on_failure(&self, period: u64) {
        if self.period.load(Ordering::Acquire) != period {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.settings.threshold {
            self.open("store failing; breaker opened, calls fail fast until every connection answers a probe");
        }
    }

    /// A health check begun in closed period `period` failed: open at once (it is the
    /// authoritative look at the store), unless the breaker has closed again since it began.
    pub(super) fn trip(&self, period: u64) {
        if self.period.load(Ordering::Acquire) != period {
            return;
        }
        self.open("store health check failed; breaker opened");
    }

    fn open(&self, why: &str) {
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.backoff_ms
            .store(self.settings.min_backoff.as_millis() as u64, Ordering::Relaxed);
        tracing::warn!(failures = self.failures.load(Ordering::Relaxed), generation, "{why}");
        self.probes.send_modify(|s| {
            s.open = true;
            s.generation = generation;
        });
    }

    /// How long a prober waits before its next PING while the breaker stays open.
    pub(super) fn backoff(&self) -> Duration {
        Duration::from_millis(self.backoff_ms.load(Ordering::Relaxed))
    }

    /// A probe failed: wait longer before the next (doubling, capped).
    pub(super) fn probe_failed(&self) {
        let cap = self.settings.max_backoff.as_millis() as u64;
        let _ = self
            .backoff_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b * 2).min(cap)));
    }

    /// `member` answered a probe in `generation`: ask the others to probe now, and close the
    /// breaker once every live member has answered in this generation.
    pub(super) fn probe_answered(&self, member: &Member, generation: u64) {
        member.answered.store(generation, Ordering::Release);
        self.revived(member);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        let first = {
            let mut first = self.first_answer.lock();
            match *first {
                Some((g, at)) if g == generation => at,
                _ => {
                    let now = std::time::Instant::now();
                    *first = Some((generation, now));
                    now
                }
            }
        };
        let all = {
            let mut members = self.members.lock();
            members.retain(|m| m.strong_count() > 0);
            members
                .iter()
                .filter_map(Weak::upgrade)
                .all(|m| m.answered.load(Ordering::Acquire) >= generation)
        };
        if !all {
            self.probe_now();
            return;
        }
        if self
            .state
            .compare_exchange(OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.failures.store(0, Ordering::Relaxed);
            self.period.fetch_add(1, Ordering::AcqRel);
            tracing::info!(
                generation,
                after_first_answer_us = first.elapsed().as_micros() as u64,
                "every store connection answered again; breaker closed"
            );
            self.probes.send_modify(|s| s.open = false);
        }
    }

    /// Asks every member's prober to PING now instead of after its backoff.
    pub(super) fn probe_now(&self) {
        self.probes.send_modify(|s| s.probe_seq = s.probe_seq.wrapping_add(1));
    }

    /// A connection failed, or was found dead: every member's connections are suspect until
    /// they answer a PING again (see the module doc). Wakes every prober.
    pub(super) fn suspect_all(&self) {
        let marked = {
            let members = self.members.lock();
            let mut marked = false;
            for m in members.iter().filter_map(Weak::upgrade) {
                marked |= !m.suspect.swap(true, Ordering::AcqRel);
            }
            marked
        };
        if marked {
            self.probe_now();
        }
    }

    /// `member`'s connections all answered: it is no longer suspect.
    pub(super) fn revived(&self, member: &Member) {
        if member.suspect.swap(false, Ordering::AcqRel) {
            self.probes.send_modify(|s| s.revived = s.revived.wrapping_add(1));
        }
    }

    /// Whether some live member's connections have not answered since a failure.
    pub(super) fn any_suspect(&self) -> bool {
        let members = self.members.lock();
        members.iter().filter_map(Weak::upgrade).any(|m| m.is_suspect())
    }

    /// Asks every suspect member to PING now and waits until none is suspect, at most `bound`.
    /// Returns whether none is.
    pub(super) async fn wait_revived(&self, bound: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + bound;
        let mut rx = self.watch();
        self.probe_now();
        loop {
            rx.borrow_and_update();
            if !self.any_suspect() {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return !self.any_suspect();
            }
        }
    }

    /// First and longest wait between a suspect member's PINGs while they fail.
    pub(super) fn revive_backoff(&self) -> (Duration, Duration) {
        (self.settings.min_backoff, self.settings.max_backoff)
    }

    /// Waits until the breaker is closed, at most `bound`. Returns whether it is.
    pub(super) async fn wait_closed(&self, bound: Duration) -> bool {
        let mut rx = self.watch();
        let closed = tokio::time::timeout(bound, rx.wait_for(|s| !s.open)).await;
        matches!(closed, Ok(Ok(_))) && !self.is_open()
    }

    pub fn rejection() -> StoreError {
        StoreError::Unavailable("store breaker open after repeated failures; probing for recovery".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(threshold: u32) -> Arc<HealthGroup> {
        HealthGroup::new(BreakerSettings {
            threshold,
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_millis(100),
        })
    }

    #[test]
    fn opens_after_threshold_and_closes_only_when_every_member_answered() {
        let g = group(2);
        let (a, b) = (g.join(), g.join());
        assert_eq!(g.admit(), Admission::Call(0));
        g.on_failure(g.period());
        g.on_success();
        g.on_failure(g.period());
        assert_eq!(g.admit(), Admission::Call(0), "failures must be consecutive");
        g.on_failure(g.period());
        assert_eq!(g.admit(), Admission::Reject);
        let generation = g.watch().borrow().generation;
        assert_eq!(generation, 1);
        g.on_success();
        assert!(g.is_open(), "a late call's success does not close it");
        g.probe_answered(&a, generation);
        assert!(g.is_open(), "member b has not answered yet");
        g.probe_answered(&b, generation);
        assert!(!g.is_open());
        assert!(!g.watch().borrow().open);
    }

    #[test]
    fn a_failure_makes_every_member_suspect_until_each_answered() {
        let g = group(3);
        let (a, b) = (g.join(), g.join());
        assert!(!g.any_suspect());
        g.on_failure(g.period());
        g.suspect_all();
        assert!(!g.is_open(), "one failure is below the threshold");
        assert!(a.is_suspect() && b.is_suspect());
        let seq = g.watch().borrow().probe_seq;
        assert!(seq > 0, "the probers are woken");
        g.revived(&a);
        assert!(g.any_suspect(), "b has not answered yet");
        g.revived(&b);
        assert!(!g.any_suspect());
    }

    #[test]
    fn a_dropped_member_does_not_hold_the_breaker_open() {
        let g = group(1);
        let a = g.join();
        let b = g.join();
        g.on_failure(g.period());
        drop(b);
        g.probe_answered(&a, 1);
        assert!(!g.is_open());
    }

    #[test]
    fn an_answer_from_an_older_generation_does_not_close_a_newer_opening() {
        let g = group(1);
        let a = g.join();
        g.on_failure(g.period());
        g.probe_answered(&a, 1);
        g.trip(g.period());
        assert!(g.is_open());
        g.probe_answered(&a, 1);
        assert!(g.is_open());
        g.probe_answered(&a, 2);
        assert!(!g.is_open());
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_on_opening() {
        let g = group(1);
        let _a = g.join();
        g.on_failure(g.period());
        assert_eq!(g.backoff(), Duration::from_millis(30));
        g.probe_failed();
        g.probe_failed();
        g.probe_failed();
        assert_eq!(g.backoff(), Duration::from_millis(100));
    }

    #[test]
    fn a_call_admitted_before_the_last_close_does_not_reopen_it() {
        let g = group(1);
        let a = g.join();
        let Admission::Call(before) = g.admit() else {
            panic!("closed breaker must admit")
        };
        g.on_failure(g.period());
        assert!(g.is_open());
        g.probe_answered(&a, 1);
        assert!(!g.is_open());
        // A call admitted before the opening times out only now: it describes the old outage.
        g.on_failure(before);
        g.trip(before);
        assert!(
            !g.is_open(),
            "a late failure from before the close must not reopen the breaker"
        );
        let Admission::Call(now) = g.admit() else {
            panic!("closed breaker must admit")
        };
        g.on_failure(now);
        assert!(g.is_open(), "a failure of a call admitted after the close counts");
    }
}
