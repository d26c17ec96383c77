//! The rate-limit algorithms, each written once as a pure function of
//! `(state, now, limit, cost) -> (decision, new state)` over integer microseconds, with its
//! refund `(state, now, limit, charge) -> new state`.
//!
//! The in-process driver calls these functions; the Redis driver's Lua scripts
//! (`src/redis/scripts/`) mirror them line by line, `tests/differential.rs` checks that both give
//! equal outputs on random sequences, and the conformance suite checks that both drivers decide
//! alike. Changing the store never changes behaviour.
//!
//! A refund never makes a limit more generous than if the refunded charge had never been made
//! (each module's `refund` says why, and a property test checks it against a replay of the
//! charges that were kept).

pub mod fixed_window;
pub mod gcra;
pub mod sliding_window;

use crate::rate::{RateCharge, RateDecision};
use std::time::Duration;

/// Builds a decision from microsecond figures.
pub(crate) fn decision(allowed: bool, limit: u64, remaining: u64, reset_us: u64, retry_us: u64) -> RateDecision {
    RateDecision {
        allowed,
        limit,
        remaining,
        reset_after: Duration::from_micros(reset_us),
        retry_after: Duration::from_micros(retry_us),
        charge: None,
    }
}

/// An admitted decision that charged `cost` units at `at_us`.
pub(crate) fn charged(mut d: RateDecision, at_us: u64, cost: u64) -> RateDecision {
    if cost > 0 {
        d.charge = Some(RateCharge { at_us, cost });
    }
    d
}
