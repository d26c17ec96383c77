//! Exact sliding window (sliding log): every admitted request is logged with its time and cost
//! until it leaves the window, so no window of length T ever holds more than N units. State grows
//! with N (one entry per admission instant), the price of exactness.

use super::{charged, decision};
use crate::rate::{RateCharge, RateDecision, RateLimit};
use std::collections::VecDeque;

/// The log of admissions still inside the window, oldest first, and their total cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlidingLog {
    pub entries: VecDeque<(u64, u64)>,
    pub total: u64,
}

/// One sliding-window step, updating `log` in place. Returns the decision and the time (µs) after
/// which the log is empty and may be dropped (0: empty now).
pub fn decide(log: &mut SlidingLog, now: u64, limit: &RateLimit, cost: u64) -> (RateDecision, u64) {
    let window = limit.period_us();
    let cap = limit.capacity();
    // Keep the log ordered even if the clock steps back.
    let now = log.entries.back().map_or(now, |&(t, _)| now.max(t));
    while let Some(&(t, c)) = log.entries.front() {
        if t + window > now {
            break;
        }
        log.entries.pop_front();
        log.total -= c;
    }
    let allowed = cost <= cap && log.total + cost <= cap;
    let mut retry = 0;
    if allowed {
        if cost > 0 {
            match log.entries.back_mut() {
                Some((t, c)) if *t == now => *c += cost,
                _ => log.entries.push_back((now, cost)),
            }
            log.total += cost;
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
    let reset = log.entries.back().map_or(0, |&(t, _)| t + window - now);
    // The total exceeds the capacity when a larger limit left it (a changed config).
    let d = decision(allowed, cap, cap.saturating_sub(log.total), reset, retry);
    if allowed {
        // The entry's time (the clock clamped to the log's newest entry) identifies the charge.
        return (charged(d, now, cost), reset);
    }
    (d, reset)
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
}
