//! GCRA (generic cell rate algorithm): the state is one number, the theoretical arrival time
//! (TAT) of the next unit. Each admitted unit pushes the TAT one emission interval further;
//! a request is admitted while the TAT stays within `burst` intervals of now.

use super::decision;
use crate::rate::{RateDecision, RateLimit};

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
        let remaining = (horizon - tat) / interval;
        return (decision(false, burst, remaining, tat - now, limit.period_us()), None);
    }
    let new_tat = tat + cost * interval;
    if new_tat <= horizon {
        let remaining = (horizon - new_tat) / interval;
        let state = (cost > 0).then_some(new_tat);
        (decision(true, burst, remaining, new_tat - now, 0), state)
    } else {
        let remaining = (horizon - tat) / interval;
        (decision(false, burst, remaining, tat - now, new_tat - horizon), None)
    }
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
}
