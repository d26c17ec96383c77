//! Fixed window: one counter per aligned window `[k·T, (k+1)·T)`. Cheap and O(1), but a client
//! can spend N at the end of one window and N again at the start of the next.

use super::{charged, decision};
use crate::rate::{LeaseReceipt, RateCharge, RateDecision, RateLimit, Reservation};
use std::time::Duration;

/// The counter of the current aligned window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCount {
    pub window: u64,
    pub count: u64,
}

/// One fixed-window step. Returns the decision, the new state when it changed, and the time (µs)
/// until the window ends (the state's lifetime).
pub fn decide(
    state: Option<WindowCount>,
    now: u64,
    limit: &RateLimit,
    cost: u64,
) -> (RateDecision, Option<WindowCount>, u64) {
    let period = limit.period_us();
    let cap = limit.capacity();
    let window = now / period;
    let count = match state {
        Some(s) if s.window == window => s.count,
        _ => 0,
    };
    let ends_in = (window + 1) * period - now;
    if cost <= cap && count + cost <= cap {
        let new = WindowCount {
            window,
            count: count + cost,
        };
        let changed = (cost > 0).then_some(new);
        let d = decision(true, cap, cap - new.count, ends_in, 0);
        (charged(d, now, cost), changed, ends_in)
    } else {
        let retry = if cost > cap { period } else { ends_in };
        // The count exceeds the capacity when a larger limit left it (a changed config).
        (
            decision(false, cap, cap.saturating_sub(count), ends_in, retry),
            None,
            ends_in,
        )
    }
}

/// Several decisions at one instant, `costs` in order, each [`decide`] on the state the ones
/// before it left: what the Redis driver's hot-key batch (`fixed_window_batch.lua`, which
/// answers with `now` and the current window's count it started from) stands for.
pub fn decide_many(mut state: Option<WindowCount>, now: u64, limit: &RateLimit, costs: &[u64]) -> Vec<RateDecision> {
    costs
        .iter()
        .map(|&cost| {
            let (d, changed, _) = decide(state, now, limit, cost);
            if changed.is_some() {
                state = changed;
            }
            d
        })
        .collect()
}

/// Gives back `charge` (made by [`decide`] on this key) to the window it was charged in: returns
/// the new state, or `None` when nothing changes.
///
/// Exact: the count becomes what it would be had the charge never been made. If the window has
/// moved on since the charge, the current window's count never included it, so nothing is given
/// back (refunding the current window would admit more than N in it). A charge must be refunded
/// at most once.
pub fn refund(state: Option<WindowCount>, limit: &RateLimit, charge: &RateCharge) -> Option<WindowCount> {
    let s = state?;
    let give = charge.cost.min(s.count);
    if s.window != charge.at_us / limit.period_us() || give == 0 {
        return None;
    }
    Some(WindowCount {
        window: s.window,
        count: s.count - give,
    })
}

/// Reserves up to `want` units from the current aligned window, for a lease of `lease_us` that
/// never outlasts the window. Returns the reservation, the new state when units were granted,
/// and the time (µs) until the window ends (the state's lifetime).
///
/// Never overshoots: the units are counted in the window they are taken from, and the lease
/// ends when that window does, so every unit is spent in the window that counted it; the count
/// of each window never exceeds N, exact charges and reservations alike.
pub fn reserve(
    state: Option<WindowCount>,
    now: u64,
    limit: &RateLimit,
    want: u64,
    lease_us: u64,
) -> (Reservation, Option<WindowCount>, u64) {
    let period = limit.period_us();
    let cap = limit.capacity();
    let window = now / period;
    let count = match state {
        Some(s) if s.window == window => s.count,
        _ => 0,
    };
    let ends_in = (window + 1) * period - now;
    let granted = want.min(cap.saturating_sub(count));
    let new = WindowCount {
        window,
        count: count + granted,
    };
    let reservation = Reservation {
        granted,
        lease_until_us: now + lease_us.min(ends_in),
        at_us: now,
        remaining: cap.saturating_sub(new.count),
        limit: cap,
        reset_after: Duration::from_micros(ends_in),
        receipt: (granted > 0).then_some(LeaseReceipt { granted, mark: window }),
    };
    (reservation, (granted > 0).then_some(new), ends_in)
}

/// Gives back `unused` units of a reservation to the window it was taken from: returns the new
/// state, or `None` when nothing changes (the window has passed, or nothing to give). Exact:
/// the count becomes what a reservation of `granted - unused` units would have left.
pub fn give_back(state: Option<WindowCount>, receipt: &LeaseReceipt, unused: u64) -> Option<WindowCount> {
    let s = state?;
    let give = unused.min(receipt.granted).min(s.count);
    if s.window != receipt.mark || give == 0 {
        return None;
    }
    Some(WindowCount {
        window: s.window,
        count: s.count - give,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Algorithm;
    use proptest::prelude::*;

    proptest! {
        /// Never more than N in one aligned window; a denial's retry-after lands on the next window.
        #[test]
        fn never_more_than_n_per_aligned_window(
            count in 1u64..40, period_ms in 1u64..3_000,
            steps in proptest::collection::vec((0u64..100_000, 0u64..6), 1..300)
        ) {
            let limit = RateLimit::parse(Algorithm::FixedWindow, &format!("{count}/{period_ms}ms"), None).unwrap();
            let period = limit.period_us();
            let mut state = None;
            let mut now = 0;
            let mut per_window = std::collections::HashMap::new();
            for (gap, cost) in steps {
                now += gap;
                let (d, s, _) = decide(state, now, &limit, cost);
                if let Some(s) = s { state = Some(s); }
                if d.allowed {
                    *per_window.entry(now / period).or_insert(0) += cost;
                } else {
                    prop_assert!(cost > d.remaining);
                    if cost <= count {
                        let wait = d.retry_after.as_micros() as u64;
                        prop_assert_eq!((now + wait) % period, 0);
                        prop_assert!(decide(state, now + wait, &limit, cost).0.allowed);
                    }
                }
            }
            for (w, sum) in per_window {
                prop_assert!(sum <= count, "window {} admitted {}", w, sum);
            }
        }
    }

    proptest! {
        /// Charges and refunds interleaved: every window's count is exactly the cost of the
        /// charges made in it and kept, so a refund never frees room in a window it was not
        /// charged in.
        #[test]
        fn refunds_give_back_exactly_their_window(
            count in 1u64..40, period_ms in 1u64..3_000,
            ops in proptest::collection::vec((0u64..200_000, 0u64..6, any::<bool>(), any::<prop::sample::Index>()), 1..300)
        ) {
            let limit = RateLimit::parse(Algorithm::FixedWindow, &format!("{count}/{period_ms}ms"), None).unwrap();
            let period = limit.period_us();
            let mut now = 1_700_000_000_000_000u64;
            let mut state = None;
            let mut charges: Vec<(RateCharge, bool)> = Vec::new();
            for (gap, cost, is_refund, pick) in ops {
                now += gap;
                let outstanding: Vec<usize> = (0..charges.len()).filter(|&i| !charges[i].1).collect();
                if is_refund && !outstanding.is_empty() {
                    let i = outstanding[pick.index(outstanding.len())];
                    charges[i].1 = true;
                    if let Some(s) = refund(state, &limit, &charges[i].0) { state = Some(s); }
                } else {
                    let (d, s, _) = decide(state, now, &limit, cost);
                    if let Some(s) = s { state = Some(s); }
                    if let Some(c) = d.charge { charges.push((c, false)); }
                }
                let kept: u64 = charges.iter().filter(|c| !c.1 && c.0.at_us / period == now / period).map(|c| c.0.cost).sum();
                // What the current window admits equals what it would with only the kept charges.
                let remaining = decide(state, now, &limit, 0).0.remaining;
                prop_assert_eq!(remaining, count - kept);
            }
        }
    }
}
