//! Durations as the file writes them (DESIGN.md, "Durations"): a whole number and one of the
//! units of rate periods, `500ms`, `30s`, `10m`, `24h`, `7d`. Fields named `*_ms` predate this
//! and stay plain numbers of milliseconds ([`crate::fields::Ms`]).

use crate::fields::refuse;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// What a duration field accepts, for messages.
pub(crate) const DURATION_ACCEPTED: &str =
    "a whole number and a unit (ms, s, m, h or d) from 1ms to 7d, e.g. 500ms, 30s, 10m";

/// The longest duration a field takes (7 days, as for `*_ms` fields).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A duration field: 1 ms to 7 days.
pub(crate) struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let d = parse_duration(&text).map_err(|why| refuse(format!("{why}; accepted: {DURATION_ACCEPTED}")))?;
        if d < Duration::from_millis(1) || d > MAX_DURATION {
            return Err(refuse(format!(
                "{} is out of range; accepted: {DURATION_ACCEPTED}",
                text.trim()
            )));
        }
        Ok(Dur(d))
    }
}

/// A duration field (`DEFAULT` ms when written null).
pub(crate) fn dur<'de, D: Deserializer<'de>, const DEFAULT: u64>(d: D) -> Result<Duration, D::Error> {
    Ok(Option::<Dur>::deserialize(d)?.map_or(crate::fields::millis::<DEFAULT>(), |d| d.0))
}

/// Parses `text` (surrounding spaces allowed); the error says why, without the accepted forms.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("a duration is required".to_string());
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("{text:?} does not start with a whole number"));
    }
    if unit.is_empty() {
        return Err(format!("{text:?} has no unit"));
    }
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("{text:?} has unit {other:?}")),
    };
    // Digits beyond u64 or a product past it are far out of range: report them as such.
    let too_long = || format!("{text:?} is longer than 7d");
    let n: u64 = digits.parse().map_err(|_| too_long())?;
    let ms = n.checked_mul(unit_ms).ok_or_else(too_long)?;
    Ok(Duration::from_millis(ms))
}

/// An optional duration field (`None` when left out or written null).
pub(crate) fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(Option::<Dur>::deserialize(d)?.map(|d| d.0))
}
