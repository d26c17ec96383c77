//! Durations as the file writes them (DESIGN.md, "Durations"): a whole number and one of the
//! units of rate periods, `500ms`, `30s`, `10m`, `24h`, `7d`. Fields named `*_ms` predate this
//! and stay plain numbers of milliseconds.

use std::time::Duration;

/// What a duration field accepts, for messages.
pub(crate) const DURATION_ACCEPTED: &str =
    "a whole number and a unit (ms, s, m, h or d) from 1ms to 7d, e.g. 500ms, 30s, 10m";

/// The longest duration a field takes (7 days, as for `*_ms` fields).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn says_what_is_wrong() {
        assert_eq!(parse_duration(""), Err("a duration is required".to_string()));
        assert_eq!(parse_duration("30"), Err("\"30\" has no unit".to_string()));
        assert_eq!(
            parse_duration("s"),
            Err("\"s\" does not start with a whole number".to_string())
        );
        assert_eq!(
            parse_duration("-1s"),
            Err("\"-1s\" does not start with a whole number".to_string())
        );
        assert_eq!(parse_duration("1.5s"), Err("\"1.5s\" has unit \".5s\"".to_string()));
        assert_eq!(parse_duration("3 s"), Err("\"3 s\" has unit \" s\"".to_string()));
        assert_eq!(parse_duration("2w"), Err("\"2w\" has unit \"w\"".to_string()));
        assert_eq!(
            parse_duration("99999999999999999999d"),
            Err("\"99999999999999999999d\" is longer than 7d".to_string())
        );
        assert_eq!(
            parse_duration("18446744073709551615d"),
            Err("\"18446744073709551615d\" is longer than 7d".to_string())
        );
    }
}
