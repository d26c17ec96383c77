//! The rate-limit algorithms, each written once as a pure function of
//! `(state, now, limit, cost) -> (decision, new state)` over integer microseconds.
//!
//! The in-process driver calls these functions; the Redis driver's Lua scripts
//! (`src/redis/scripts/`) mirror them line by line, and the conformance suite checks that both
//! drivers decide alike. Changing the store never changes behaviour.

pub mod fixed_window;
pub mod gcra;
pub mod sliding_window;

use crate::rate::RateDecision;
use std::time::Duration;

/// Builds a decision from microsecond figures.
pub(crate) fn decision(allowed: bool, limit: u64, remaining: u64, reset_us: u64, retry_us: u64) -> RateDecision {
    RateDecision {
        allowed,
        limit,
        remaining,
        reset_after: Duration::from_micros(reset_us),
        retry_after: Duration::from_micros(retry_us),
    }
}
