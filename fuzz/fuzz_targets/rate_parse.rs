//! The rate parser (`N/PERIOD`) and limit construction: any text and burst either build a
//! limit whose figures are consistent, or give an error, never a panic or an overflow.
#![no_main]
use fleetgate_store::{Algorithm, RateLimit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, Option<i64>, u8)| {
    let (text, burst, which) = input;
    let algorithm = match which % 3 {
        0 => Algorithm::Gcra,
        1 => Algorithm::SlidingWindow,
        _ => Algorithm::FixedWindow,
    };
    if let Ok(rate) = text.parse::<fleetgate_store::Rate>() {
        assert!(rate.count >= 1, "{text:?} gave a zero count");
        assert!(!rate.period.is_zero(), "{text:?} gave a zero period");
    }
    if let Ok(limit) = RateLimit::parse(algorithm, text, burst) {
        assert!(limit.capacity() >= 1);
        assert!(limit.period_us() >= 1);
        assert!(limit.interval_us() >= 1);
    }
});
