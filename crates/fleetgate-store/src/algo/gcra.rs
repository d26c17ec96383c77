//! GCRA (generic cell rate algorithm): the state is one number, the theoretical arrival time
//! (TAT) of the next unit. Each admitted unit pushes the TAT one emission interval further;
//! a request is admitted while the TAT stays within `burst` intervals of now.

use super::{charged, decision};
use crate::rate::{LeaseReceipt, RateCharge, RateDecision, RateLimit, Reservation};
use std::time::Duration;

/// One gcra step. `tat` is the stored TAT (µs), `None` when the key is absent.
/// Returns the decision and, when admitted units changed the state, the new TAT to store
/// (to expire once it is in the past: then the bucket is full and the state is irrelevant).
pub fn decide(tat: Option<u64>, now: u64, limit: &RateLimit, cost: u64) -> (RateDecision, Option<u64>) {
    let interval = limit.interval_us();
    let burst = limit.capacity();
    let capacity = interval * burst;
    let tat = tat.unwrap_or(now).max(now);
    let horizon = now + capacity;
    if cost > burst {
        // Never admissible: report the state as it is and a full period to wait.
        let remaining = horizon.saturating_sub(tat) / interval;
        return (decision(false, burst, remaining, tat - now, limit.period_us()), None);
    }
    let new_tat = tat + cost * interval;
    if new_tat <= horizon {
        let remaining = (horizon - new_tat) / interval;
        let state = (cost > 0).then_some(new_tat);
        let d = decision(true, burst, remaining, new_tat - now, 0);
        (charged(d, now, cost), state)
    } else {
        // The TAT can lie beyond the horizon: a server clock that stepped back, or a state left
        // by a larger limit on the same key (a changed config). Nothing is admissible then.
        let remaining = horizon.saturating_sub(tat) / interval;
        (decision(false, burst, remaining, tat - now, new_tat - horizon), None)
    }
}

/// Gives back `charge` (made by [`decide`] on this key): returns the TAT to store, or `None`
/// when nothing changes. A returned TAT not after `now` means the bucket is full again (drop the
/// state).
///
/// It gives back the charge's `cost·interval` less the time elapsed since the charge:
/// `tat - min(cost·interval, at + cost·interval - now)`, never below `now`. Why not simply
/// `max(tat - cost·interval, now)`: that is right only when no other charge landed on the key
/// after the refill time had passed the TAT the key would have without our charge. A charge
/// moves the TAT to `max(tat, t) + c·interval`, which is monotone and never widens a gap between
/// two TATs but narrows it when time `t` has passed the smaller one (the `max` clips it). So
/// the TAT without our charge lies between `tat - cost·interval` and `tat`, lower only by what
/// later charges clipped. Example (interval 1 s, burst 100): 5 units at t=0 (TAT 5), 5 more at
/// t=3 (TAT 10; without the first charge it would be 3+5 = 8); giving back 5 at t=3 would leave
/// TAT 5, three units more generous than never charged. The rule above gives back 5 - 3 = 2.
///
/// Why it is safe: compare the TATs with and without our charge, both replaying the charges that
/// are kept (admitted and not refunded). Right after our charge (at `at`) the one with it is at
/// least `at + cost·interval`, and without refunds TATs only grow, so a later charge at `u` can
/// clip the gap only to at least `at + cost·interval - u`, and `u <= now`. The gap is therefore
/// at least `min(cost·interval, at + cost·interval - now)`, which is what is given back; since
/// the stored TAT is never below that replay (by induction over charges and refunds, in any
/// order), neither is the refunded one. The property test below checks this against the replay
/// with refunds interleaved in every order. A bound using the TAT right after the charge instead
/// of `at + cost·interval` would be tighter, but an earlier refund moves later charges forward
/// in the queue and makes it unsafe (see `refund_after_an_earlier_refund_is_not_too_generous`).
///
/// Exact when the refund is made at the instant of the charge (as the gateway does, within one
/// request), or when the bucket was full before the charge; otherwise at most the time elapsed
/// since the charge (a round trip, in the gateway) is kept. A refund made after the charge's
/// own refill time gives back nothing: by then the charge no longer holds anything back.
///
/// A charge must be refunded at most once: a second refund would give back units that other
/// requests were charged.
/// Several decisions at one instant, `costs` in order, each [`decide`] on the state the ones
/// before it left: what the Redis driver's hot-key batch (`gcra_batch.lua`, which answers with
/// `now` and the TAT it started from) stands for.
pub fn decide_many(mut tat: Option<u64>, now: u64, limit: &RateLimit, costs: &[u64]) -> Vec<RateDecision> {
    costs
        .iter()
        .map(|&cost| {
            let (d, state) = decide(tat, now, limit, cost);
            if state.is_some() {
                tat = state;
            }
            d
        })
        .collect()
}

pub fn refund(tat: Option<u64>, now: u64, limit: &RateLimit, charge: &RateCharge) -> Option<u64> {
    let tat = tat.filter(|t| *t > now)?;
    let units = charge.cost.saturating_mul(limit.interval_us());
    let owed = units.min(charge.at_us.saturating_add(units).saturating_sub(now));
    if owed == 0 {
        return None;
    }
    Some(tat.saturating_sub(owed).max(now))
}

/// Reserves up to `want` units for a lease of `lease_us` (capped at the burst's capacity):
/// returns the reservation and, when units were granted, the new TAT to store.
///
/// The reserved units may be spent at any instant of `[now, until]` (`until = now + lease`),
/// so the reservation is charged as taken now (checked against now's horizon) *and* as if made
/// at `until` (the refill of its units starts only then): `TAT' = max(TAT, until) + n·interval`,
/// admitted while `TAT' <= now + burst·interval`. Why that never overshoots: gcra's guarantee
/// is that the units spent in any interval `[t0, t1]` are at most `burst + (t1 - t0)/interval`.
/// Give every charge `k` a span `[a_k, b_k]` in which its units are spent (an exact charge:
/// `a = b =` its time; a reservation: `a = now`, `b = until`), processed in the store's order
/// (non-decreasing `a`). The TAT follows `TAT_k = max(TAT_{k-1}, b_k) + c_k·interval` (a plain
/// charge is the case `a = b`), so after the last charge `j` of those whose span meets
/// `[t0, t1]`, `TAT_j >= b_i + Σ c·interval` summed from the first such charge `i` (whose
/// `b_i >= t0`) on. `j` was admitted: `TAT_j <= a_j + burst·interval <= t1 + burst·interval`.
/// Hence `Σ c <= burst + (t1 - t0)/interval`: every unit spent in the interval is counted.
///
/// The price: when the bucket is nearly full (`TAT < until`), the refill up to `until` is
/// skipped, so a lease of `L` holds `L/interval` units more than it grants while it runs.
/// Under pressure (`TAT >= until`) a reservation costs exactly its units.
pub fn reserve(tat: Option<u64>, now: u64, limit: &RateLimit, want: u64, lease_us: u64) -> (Reservation, Option<u64>) {
    let interval = limit.interval_us();
    let burst = limit.capacity();
    let capacity = interval * burst;
    let tat = tat.unwrap_or(now).max(now);
    let horizon = now + capacity;
    let until = now + lease_us.min(capacity);
    let base = tat.max(until);
    let room = horizon.saturating_sub(base) / interval;
    let granted = want.min(room);
    let after = if granted > 0 { base + granted * interval } else { tat };
    let reservation = Reservation {
        granted,
        lease_until_us: until,
        at_us: now,
        remaining: horizon.saturating_sub(after) / interval,
        limit: burst,
        reset_after: Duration::from_micros(after - now),
        receipt: (granted > 0).then_some(LeaseReceipt { granted, mark: after }),
    };
    (reservation, (granted > 0).then_some(after))
}

/// Gives back `unused` units of a reservation: returns the TAT to store (not after `now`: drop
/// the state), or `None` when nothing changes.
///
/// Only while the TAT is still the one the reservation left (`receipt.mark`): then the state is
/// exactly what a reservation of `granted - unused` units would have left, and its spent units
/// (all before now, within the lease) stay counted. Once anything else was charged to the key,
/// nothing is given back: a later reservation may have moved the TAT past a future `until`, and
/// working out what part of the gap is still ours is not worth the risk; the units expire with
/// the lease instead (under-admission, bounded: see docs/store.md).
pub fn give_back(tat: Option<u64>, now: u64, limit: &RateLimit, receipt: &LeaseReceipt, unused: u64) -> Option<u64> {
    let tat = tat.filter(|t| *t > now && *t == receipt.mark)?;
    let give = unused.min(receipt.granted);
    if give == 0 {
        return None;
    }
    Some(tat.saturating_sub(give * limit.interval_us()).max(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn burst_then_refill() {
        let limit = RateLimit::gcra("10/1s").unwrap(); // interval 100ms, burst 10
        let mut tat = None;
        for i in 0..10 {
            let (d, s) = decide(tat, 0, &limit, 1);
            assert!(d.allowed, "unit {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = s;
        }
        let (d, s) = decide(tat, 0, &limit, 1);
        assert!(!d.allowed);
        assert_eq!(s, None);
        assert_eq!(d.retry_after.as_micros(), 100_000);
        assert_eq!(d.reset_after.as_micros(), 1_000_000);
        let (d, _) = decide(tat, 100_000, &limit, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn cost_above_burst_is_never_admitted() {
        let limit = RateLimit::gcra("5/1s").unwrap();
        let (d, s) = decide(None, 0, &limit, 6);
        assert!(!d.allowed);
        assert_eq!(s, None);
        assert_eq!(d.remaining, 5);
    }

    proptest! {
        /// In any interval [t0, t1], admitted units never exceed burst + (t1 - t0) / interval;
        /// remaining and retry-after agree with the decision.
        #[test]
        fn never_admits_more_than_burst_plus_refill(
            count in 1u64..50, period_ms in 1u64..5_000, burst in 1i64..60,
            steps in proptest::collection::vec((0u64..200_000, 0u64..8), 1..300)
        ) {
            let limit = RateLimit::parse(crate::Algorithm::Gcra, &format!("{count}/{period_ms}ms"), Some(burst)).unwrap();
            let mut now = 0u64;
            let mut tat = None;
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (gap, cost) in steps {
                now += gap;
                let (d, s) = decide(tat, now, &limit, cost);
                if d.allowed {
                    prop_assert_eq!(d.retry_after.as_micros(), 0);
                    admitted.push((now, cost));
                    if s.is_some() { tat = s; }
                    // Right after admission, `remaining` more units fit now, one more does not.
                    if d.remaining > 0 {
                        prop_assert!(decide(tat, now, &limit, d.remaining).0.allowed);
                    }
                    prop_assert!(!decide(tat, now, &limit, d.remaining + 1).0.allowed);
                } else {
                    prop_assert!(cost > d.remaining);
                    prop_assert!(d.retry_after.as_micros() > 0);
                    if cost <= limit.capacity() {
                        // Waiting retry_after admits it; waiting one microsecond less does not.
                        let wait = d.retry_after.as_micros() as u64;
                        prop_assert!(decide(tat, now + wait, &limit, cost).0.allowed);
                        prop_assert!(!decide(tat, now + wait - 1, &limit, cost).0.allowed);
                    }
                }
            }
            for i in 0..admitted.len() {
                let mut sum = 0;
                for &(t, c) in &admitted[i..] {
                    sum += c;
                    let bound = limit.capacity() + (t - admitted[i].0) / limit.interval_us();
                    prop_assert!(sum <= bound, "admitted {} in [{}, {}] > bound {}", sum, admitted[i].0, t, bound);
                }
            }
        }
    }

    proptest! {
        /// Reservations and exact charges interleaved, each reservation's units spent at any
        /// instants of its lease (and some never): the spends, replayed in time order through
        /// `decide`, are all admitted, so no interval holds more than burst + elapsed/interval.
        /// Giving back a reservation's unused units keeps this.
        #[test]
        fn reserved_units_spent_anywhere_in_their_lease_never_overshoot(
            count in 1u64..50, period_ms in 1u64..5_000, burst in 1i64..60,
            ops in proptest::collection::vec(
                (0u64..200_000, 0u64..12, 0u64..3_000_000, any::<bool>(), proptest::collection::vec(any::<prop::sample::Index>(), 12), 0u64..4),
                1..150),
        ) {
            let limit = RateLimit::parse(crate::Algorithm::Gcra, &format!("{count}/{period_ms}ms"), Some(burst)).unwrap();
            let mut now = 1_700_000_000_000_000u64;
            let mut tat = None;
            let mut spends: Vec<(u64, u64)> = Vec::new();
            for (gap, want, lease, exact, picks, unused) in ops {
                now += gap;
                if exact {
                    let (d, s) = decide(tat, now, &limit, want % 4);
                    if d.allowed && want % 4 > 0 { spends.push((now, want % 4)); }
                    tat = s.or(tat);
                    continue;
                }
                let (r, s) = reserve(tat, now, &limit, want, lease);
                tat = s.or(tat);
                prop_assert!(r.granted <= want);
                let span = r.lease_until_us - now;
                // Spend all but `unused` units at instants picked in [now, until], then give
                // the rest back at the lease's end (if nothing else was charged since).
                let keep = r.granted.saturating_sub(unused);
                for pick in picks.iter().take(keep as usize) {
                    spends.push((now + pick.index(span as usize + 1) as u64, 1));
                }
                if let Some(receipt) = r.receipt {
                    if let Some(t) = give_back(tat, r.lease_until_us, &limit, &receipt, r.granted - keep) {
                        tat = Some(t);
                    }
                }
            }
            spends.sort();
            let mut replay = None;
            for (i, &(t, c)) in spends.iter().enumerate() {
                let (d, s) = decide(replay, t, &limit, c);
                prop_assert!(d.allowed, "spend {} of {} units at {} overshoots", i, c, t);
                replay = s.or(replay);
            }
        }
    }

    /// The TAT as if only `kept` (time, cost) charges had been made, in order.
    fn replay(kept: &[(u64, u64)], interval: u64) -> u64 {
        kept.iter().fold(0, |tat, &(t, c)| tat.max(t) + c * interval)
    }

    #[test]
    fn refund_with_a_later_charge_is_not_too_generous() {
        // The example in `refund`'s documentation: interval 1 s, burst 100.
        let limit = RateLimit::parse(crate::Algorithm::Gcra, "1/1s", Some(100)).unwrap();
        let s = 1_000_000;
        let (first, tat) = decide(None, 0, &limit, 5);
        let (_, tat) = decide(tat, 3 * s, &limit, 5);
        assert_eq!(tat, Some(10 * s));
        let refunded = refund(tat, 3 * s, &limit, &first.charge.unwrap());
        // Never charged: 5 units at t=3 give TAT 8 s. The naive refund would give 5 s.
        assert_eq!(refunded, Some(8 * s));
    }

    /// Refunding with the TAT right after each charge as the bound fails here: X's refund moves
    /// Y forward in the queue, which a bound taken at Y's charge does not know.
    #[test]
    fn refund_after_an_earlier_refund_is_not_too_generous() {
        let limit = RateLimit::parse(crate::Algorithm::Gcra, "1/1s", Some(100)).unwrap();
        let ms = 1_000;
        let (x, tat) = decide(None, 0, &limit, 1);
        let (y, tat) = decide(tat, 0, &limit, 1);
        let tat = refund(tat, 0, &limit, &x.charge.unwrap());
        assert_eq!(tat, Some(1_000 * ms), "refunded at once: exact");
        let (_, tat) = decide(tat, 900 * ms, &limit, 1);
        let tat = refund(tat, 900 * ms, &limit, &y.charge.unwrap());
        // Only Z (at 0.9 s) is kept: TAT 1.9 s. (The TAT after Y, 2 s, as a bound would give 1 s.)
        assert_eq!(tat, Some(1_900 * ms));
    }

    proptest! {
        /// Charged then refunded at once: the state admits exactly as if never charged.
        #[test]
        fn immediate_refund_is_exact(
            count in 1u64..50, period_ms in 1u64..5_000, burst in 1i64..60,
            history in proptest::collection::vec((0u64..200_000, 0u64..8), 0..50),
            gap in 0u64..200_000, cost in 1u64..8,
        ) {
            let limit = RateLimit::parse(crate::Algorithm::Gcra, &format!("{count}/{period_ms}ms"), Some(burst)).unwrap();
            let mut now = 1_700_000_000_000_000u64;
            let mut tat = None;
            for (g, c) in history {
                now += g;
                if let (_, Some(t)) = decide(tat, now, &limit, c) { tat = Some(t); }
            }
            now += gap;
            let (d, after) = decide(tat, now, &limit, cost);
            if let Some(charge) = d.charge {
                let refunded = refund(after, now, &limit, &charge);
                let effective = |t: Option<u64>| t.unwrap_or(now).max(now);
                prop_assert_eq!(effective(refunded), effective(tat));
            } else {
                prop_assert!(!d.allowed);
            }
        }

        /// Charges and refunds interleaved in any order: the state is never more generous than a
        /// replay of the charges that were kept.
        #[test]
        fn refunds_are_never_more_generous_than_never_charged(
            count in 1u64..50, period_ms in 1u64..5_000, burst in 1i64..60,
            ops in proptest::collection::vec((0u64..100_000, 0u64..8, any::<bool>(), any::<prop::sample::Index>()), 1..200)
        ) {
            let limit = RateLimit::parse(crate::Algorithm::Gcra, &format!("{count}/{period_ms}ms"), Some(burst)).unwrap();
            let interval = limit.interval_us();
            let mut now = 1_700_000_000_000_000u64;
            let mut tat: Option<u64> = None;
            // Admitted charges: (time, cost, receipt, refunded).
            let mut charges: Vec<(u64, u64, RateCharge, bool)> = Vec::new();
            for (gap, cost, is_refund, pick) in ops {
                now += gap;
                let outstanding: Vec<usize> = (0..charges.len()).filter(|&i| !charges[i].3).collect();
                if is_refund && !outstanding.is_empty() {
                    let i = outstanding[pick.index(outstanding.len())];
                    charges[i].3 = true;
                    if let Some(t) = refund(tat, now, &limit, &charges[i].2) {
                        prop_assert!(t >= now);
                        tat = Some(t);
                    }
                } else {
                    let (d, s) = decide(tat, now, &limit, cost);
                    if let Some(t) = s { tat = Some(t); }
                    if let Some(c) = d.charge {
                        prop_assert_eq!((c.at_us, c.cost), (now, cost));
                        charges.push((now, cost, c, false));
                    }
                }
                let kept: Vec<(u64, u64)> = charges.iter().filter(|c| !c.3).map(|c| (c.0, c.1)).collect();
                let never = replay(&kept, interval).max(now);
                let actual = tat.unwrap_or(now).max(now);
                prop_assert!(actual >= never, "state {} more generous than a replay of kept charges {}", actual, never);
            }
        }
    }
}
