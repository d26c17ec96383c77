//! Exact sliding window (sliding log): every admitted request is logged with its time and cost
//! until it leaves the window, so no window of length T ever holds more than N units. State grows
//! with N (one entry per admission instant), the price of exactness.
//!
//! Lease mode ([`reserve`]): a reservation is logged with its lease's *end* as its time, so it
//! counts in every window that meets its lease and units spent late cannot escape the window.
//! Entries are kept ordered by time, so a reservation's entry (in the future) and later exact
//! charges (at their own time) interleave.

use super::{charged, decision};
use crate::rate::{LeaseReceipt, RateCharge, RateDecision, RateLimit, Reservation};
use std::collections::VecDeque;
use std::time::Duration;

/// The log of admissions still inside the window, ordered by time (at most one entry per
/// instant), and their total cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlidingLog {
    pub entries: VecDeque<(u64, u64)>,
    pub total: u64,
}

impl SlidingLog {
    /// Drops the entries that have left the window at `now` (time + window <= now).
    fn evict(&mut self, now: u64, window: u64) {
        while let Some(&(t, c)) = self.entries.front() {
            if t + window > now {
                break;
            }
            self.entries.pop_front();
            self.total -= c;
        }
    }

    /// Logs `cost` units at `at`, in time order (merged into an entry of the same instant).
    /// Searched from the newest: an exact charge usually goes last, and only lease entries
    /// (at most one per reservation still in the window) can be newer.
    fn log(&mut self, at: u64, cost: u64) {
        let i = self.entries.iter().rposition(|&(t, _)| t <= at);
        match i {
            Some(i) if self.entries[i].0 == at => self.entries[i].1 += cost,
            Some(i) => self.entries.insert(i + 1, (at, cost)),
            None => self.entries.push_front((at, cost)),
        }
        self.total += cost;
    }

    /// Time (µs after `now`) until the newest entry leaves the window: the log's lifetime.
    fn reset(&self, now: u64, window: u64) -> u64 {
        self.entries
            .back()
            .map_or(0, |&(t, _)| (t + window).saturating_sub(now))
    }
}

/// One sliding-window step, updating `log` in place. Returns the decision and the time (µs) after
/// which the log is empty and may be dropped (0: empty now).
///
/// An admitted charge is logged at `now` in time order (a lease's entry may be newer); the
/// decision's [`charge`](RateDecision::charge) names that entry. A clock that steps back logs
/// at its own time too and drops nothing it would not have dropped then: never more generous.
pub fn decide(log: &mut SlidingLog, now: u64, limit: &RateLimit, cost: u64) -> (RateDecision, u64) {
    let window = limit.period_us();
    let cap = limit.capacity();
    log.evict(now, window);
    let allowed = cost <= cap && log.total + cost <= cap;
    let mut retry = 0;
    if allowed {
        if cost > 0 {
            log.log(now, cost);
        }
    } else if cost > cap {
        retry = window;
    } else {
        let need = log.total + cost - cap;
        let mut freed = 0;
        for &(t, c) in &log.entries {
            freed += c;
            if freed >= need {
                retry = t + window - now;
                break;
            }
        }
    }
    let reset = log.reset(now, window);
    // The total exceeds the capacity when a larger limit left it (a changed config).
    let d = decision(allowed, cap, cap.saturating_sub(log.total), reset, retry);
    if allowed {
        // The entry's time identifies the charge.
        return (charged(d, now, cost), reset);
    }
    (d, reset)
}

/// Reserves up to `want` units for a lease of `lease_us` (at most one window), updating `log`
/// in place: the units are logged at the lease's end `until = now + lease`. Returns the
/// reservation and the log's lifetime (µs; 0: empty now).
///
/// Never overshoots: take any window `[a, a + T)` and the last decision (at store time `d`,
/// `d < a + T`) among the exact charges made in it and the reservations with a unit spent in
/// it. Every earlier one is still in the log at `d`: an exact charge at `e >= a` leaves at
/// `e + T >= a + T > d`, and a reservation with a unit spent at `s` in `[now_k, until_k]`,
/// `s >= a`, is logged at `until_k >= s >= a` and leaves at `until_k + T > d`. The last one was
/// admitted against a total that held all of them, so the units spent in the window are at
/// most N. (A reservation counts from when it is taken until its lease ends plus the window.)
///
/// The price: a unit spent at `s` counts until `until + T`, up to a lease longer than an exact
/// charge would.
pub fn reserve(log: &mut SlidingLog, now: u64, limit: &RateLimit, want: u64, lease_us: u64) -> (Reservation, u64) {
    let window = limit.period_us();
    let cap = limit.capacity();
    log.evict(now, window);
    let until = now + lease_us.min(window);
    let granted = want.min(cap.saturating_sub(log.total));
    if granted > 0 {
        log.log(until, granted);
    }
    let reset = log.reset(now, window);
    let reservation = Reservation {
        granted,
        lease_until_us: until,
        at_us: now,
        remaining: cap.saturating_sub(log.total),
        limit: cap,
        reset_after: Duration::from_micros(reset),
        receipt: (granted > 0).then_some(LeaseReceipt { granted, mark: until }),
    };
    (reservation, reset)
}

/// Gives back `unused` units of a reservation from the entry it was logged in (at the lease's
/// end, `receipt.mark`). Returns whether anything changed. Exact: the log becomes what a
/// reservation of `granted - unused` units would have left (nothing once the entry is gone).
/// At most once per receipt.
pub fn give_back(log: &mut SlidingLog, receipt: &LeaseReceipt, unused: u64) -> bool {
    refund(
        log,
        &RateCharge {
            at_us: receipt.mark,
            cost: unused.min(receipt.granted),
        },
    )
}

/// Gives back `charge` (made by [`decide`] on this log) from the entry it was logged in, updating
/// `log` in place. Returns whether anything changed.
///
/// Exact: the log becomes what it would be had the charge never been made. An entry that has
/// already left the window (or been dropped) is not there to refund, and no other entry is
/// touched: taking units from a newer entry would let them leave the window early, which is more
/// generous than never charged. A charge must be refunded at most once (entries of one instant
/// are merged, so a second refund would take another request's units).
pub fn refund(log: &mut SlidingLog, charge: &RateCharge) -> bool {
    // Entries are ordered by time and a refund usually follows its charge closely: search from
    // the newest.
    let Some(i) = log.entries.iter().rposition(|&(t, _)| t == charge.at_us) else {
        return false;
    };
    let give = charge.cost.min(log.entries[i].1);
    log.entries[i].1 -= give;
    log.total -= give;
    if log.entries[i].1 == 0 {
        log.entries.remove(i);
    }
    give > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Algorithm;
    use proptest::prelude::*;

    #[test]
    fn exact_in_every_window() {
        let limit = RateLimit::parse(Algorithm::SlidingWindow, "3/1s", None).unwrap();
        let mut log = SlidingLog::default();
        assert!(decide(&mut log, 0, &limit, 1).0.allowed);
        assert!(decide(&mut log, 400_000, &limit, 2).0.allowed);
        let (d, _) = decide(&mut log, 999_999, &limit, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after.as_micros(), 1);
        let (d, _) = decide(&mut log, 1_000_000, &limit, 1);
        assert!(d.allowed);
        let (d, _) = decide(&mut log, 1_000_000, &limit, 2);
        assert!(!d.allowed);
        assert_eq!(d.retry_after.as_micros(), 400_000);
    }

    proptest! {
        /// No half-open window of length T ever admits more than N; remaining and retry-after
        /// agree with the decision.
        #[test]
        fn never_more_than_n_in_any_window(
            count in 1u64..40, period_ms in 1u64..3_000,
            steps in proptest::collection::vec((0u64..100_000, 0u64..6), 1..300)
        ) {
            let limit = RateLimit::parse(Algorithm::SlidingWindow, &format!("{count}/{period_ms}ms"), None).unwrap();
            let window = limit.period_us();
            let mut log = SlidingLog::default();
            let mut now = 0;
            let mut admitted = Vec::new();
            for (gap, cost) in steps {
                now += gap;
                let before = log.clone();
                let (d, _) = decide(&mut log, now, &limit, cost);
                if d.allowed {
                    admitted.push((now, cost));
                    prop_assert_eq!(d.retry_after.as_micros(), 0);
                } else {
                    prop_assert!(cost > d.remaining);
                    if cost <= count {
                        let wait = d.retry_after.as_micros() as u64;
                        prop_assert!(wait > 0);
                        prop_assert!(decide(&mut before.clone(), now + wait, &limit, cost).0.allowed);
                        prop_assert!(!decide(&mut before.clone(), now + wait - 1, &limit, cost).0.allowed);
                    }
                }
                prop_assert_eq!(log.total, log.entries.iter().map(|e| e.1).sum::<u64>());
            }
            for &(start, _) in &admitted {
                let sum: u64 = admitted.iter().filter(|(t, _)| *t >= start && *t < start + window).map(|e| e.1).sum();
                prop_assert!(sum <= count, "{} admitted in window from {}", sum, start);
            }
        }
    }

    proptest! {
        /// Charges and refunds interleaved: the log's entries still in the window are exactly
        /// the kept charges still in the window, instant by instant.
        #[test]
        fn refunds_give_back_exactly_their_entry(
            count in 1u64..40, period_ms in 1u64..3_000,
            ops in proptest::collection::vec((0u64..100_000, 0u64..6, any::<bool>(), any::<prop::sample::Index>()), 1..300)
        ) {
            let limit = RateLimit::parse(Algorithm::SlidingWindow, &format!("{count}/{period_ms}ms"), None).unwrap();
            let window = limit.period_us();
            let mut now = 1_700_000_000_000_000u64;
            let mut log = SlidingLog::default();
            let mut charges: Vec<(RateCharge, bool)> = Vec::new();
            for (gap, cost, is_refund, pick) in ops {
                now += gap;
                let outstanding: Vec<usize> = (0..charges.len()).filter(|&i| !charges[i].1).collect();
                if is_refund && !outstanding.is_empty() {
                    let i = outstanding[pick.index(outstanding.len())];
                    charges[i].1 = true;
                    refund(&mut log, &charges[i].0);
                } else if let Some(c) = decide(&mut log, now, &limit, cost).0.charge {
                    prop_assert_eq!((c.at_us, c.cost), (now, cost));
                    charges.push((c, false));
                }
                let mut expected = std::collections::BTreeMap::new();
                for (c, _) in charges.iter().filter(|c| !c.1 && c.0.at_us + window > now) {
                    *expected.entry(c.at_us).or_insert(0) += c.cost;
                }
                let live: std::collections::BTreeMap<u64, u64> =
                    log.entries.iter().filter(|e| e.0 + window > now).copied().collect();
                prop_assert_eq!(live, expected);
                prop_assert_eq!(log.total, log.entries.iter().map(|e| e.1).sum::<u64>());
            }
        }
    }

    proptest! {
        /// Reservations and exact charges interleaved, each reservation's units spent at any
        /// instants of its lease (some never, given back at the lease's end): no window of
        /// length T holds more than N units spent.
        #[test]
        fn reserved_units_spent_anywhere_in_their_lease_never_overshoot(
            count in 1u64..40, period_ms in 1u64..3_000,
            ops in proptest::collection::vec(
                (0u64..200_000, 0u64..12, 0u64..4_000_000, any::<bool>(), proptest::collection::vec(any::<prop::sample::Index>(), 12), 0u64..4),
                1..150),
        ) {
            let limit = RateLimit::parse(Algorithm::SlidingWindow, &format!("{count}/{period_ms}ms"), None).unwrap();
            let window = limit.period_us();
            let mut now = 1_700_000_000_000_000u64;
            let mut log = SlidingLog::default();
            let mut spends: Vec<(u64, u64)> = Vec::new();
            for (gap, want, lease, exact, picks, unused) in ops {
                now += gap;
                if exact {
                    let (d, _) = decide(&mut log, now, &limit, want % 4);
                    if d.allowed && want % 4 > 0 { spends.push((now, want % 4)); }
                    continue;
                }
                let (r, _) = reserve(&mut log, now, &limit, want, lease);
                prop_assert!(r.granted <= want);
                prop_assert!(r.lease_until_us >= now && r.lease_until_us - now <= window);
                prop_assert_eq!(log.total, log.entries.iter().map(|e| e.1).sum::<u64>());
                prop_assert!(log.entries.iter().zip(log.entries.iter().skip(1)).all(|(a, b)| a.0 < b.0));
                let span = r.lease_until_us - now;
                let keep = r.granted.saturating_sub(unused);
                for pick in picks.iter().take(keep as usize) {
                    spends.push((now + pick.index(span as usize + 1) as u64, 1));
                }
                if let Some(receipt) = r.receipt {
                    // Given back at the lease's end: the spent units stay counted.
                    let before = log.total;
                    let changed = give_back(&mut log, &receipt, r.granted - keep);
                    prop_assert_eq!(changed, r.granted > keep);
                    prop_assert_eq!(before - log.total, r.granted - keep);
                }
            }
            spends.sort();
            let mut j = 0;
            let mut in_window = 0;
            for i in 0..spends.len() {
                // Spends in [spends[i].0, spends[i].0 + window).
                while j < spends.len() && spends[j].0 < spends[i].0 + window {
                    in_window += spends[j].1;
                    j += 1;
                }
                prop_assert!(in_window <= count, "{} units spent in the window from {}", in_window, spends[i].0);
                in_window -= spends[i].1;
            }
        }
    }
}
