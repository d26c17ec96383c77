//! Fixed window: one counter per aligned window `[k·T, (k+1)·T)`. Cheap and O(1), but a client
//! can spend N at the end of one window and N again at the start of the next.

use super::decision;
use crate::rate::{RateDecision, RateLimit};

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
        (decision(true, cap, cap - new.count, ends_in, 0), changed, ends_in)
    } else {
        let retry = if cost > cap { period } else { ends_in };
        (decision(false, cap, cap - count, ends_in, retry), None, ends_in)
    }
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
}
