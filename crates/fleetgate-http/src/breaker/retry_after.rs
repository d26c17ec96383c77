//! An upstream's `Retry-After` (RFC 9110 §10.2.3): whole seconds or an HTTP date, read as a
//! cooldown that is never negative and never longer than the breaker's cap.

use http::HeaderMap;
use std::time::{Duration, SystemTime};

/// What a `Retry-After` header asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// No header, or a date already past: nothing beyond the configured cooldown.
    None,
    /// A wait, at most the cap.
    Wait(Duration),
    /// A wait longer than the cap: the cap.
    Capped(Duration),
    /// Neither seconds nor an HTTP date (or negative seconds): ignored.
    Unreadable,
}

/// Reads `Retry-After` from `headers`, capping it at `cap`; `now` for dates.
pub fn parse(headers: &HeaderMap, cap: Duration, now: SystemTime) -> RetryAfter {
    let Some(value) = headers.get(http::header::RETRY_AFTER) else {
        return RetryAfter::None;
    };
    let Ok(text) = value.to_str().map(str::trim) else {
        return RetryAfter::Unreadable;
    };
    let wait = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits beyond u64 are an enormous wait: capped like one.
        Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX).min(u64::MAX / 2))
    } else {
        match httpdate::parse_http_date(text) {
            Ok(at) => match at.duration_since(now) {
                Ok(d) => d,
                Err(_) => return RetryAfter::None,
            },
            Err(_) => return RetryAfter::Unreadable,
        }
    };
    if wait > cap {
        RetryAfter::Capped(cap)
    } else if wait.is_zero() {
        RetryAfter::None
    } else {
        RetryAfter::Wait(wait)
    }
}

impl RetryAfter {
    pub fn wait(self) -> Option<Duration> {
        match self {
            RetryAfter::Wait(d) | RetryAfter::Capped(d) => Some(d),
            RetryAfter::None | RetryAfter::Unreadable => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn read(v: &str) -> RetryAfter {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00
        parse(&h, Duration::from_secs(3600), now)
    }

    #[test]
    fn seconds_dates_negative_and_enormous() {
        assert_eq!(read("3"), RetryAfter::Wait(Duration::from_secs(3)));
        assert_eq!(
            read("Wed, 21 Oct 2015 07:28:10 GMT"),
            RetryAfter::Wait(Duration::from_secs(10))
        );
        assert_eq!(read("Wed, 21 Oct 2015 07:27:00 GMT"), RetryAfter::None, "a past date");
        assert_eq!(read("-5"), RetryAfter::Unreadable);
        assert_eq!(read("soon"), RetryAfter::Unreadable);
        assert_eq!(
            read("99999999999999999999999"),
            RetryAfter::Capped(Duration::from_secs(3600))
        );
        assert_eq!(read("86400"), RetryAfter::Capped(Duration::from_secs(3600)));
        assert_eq!(
            parse(&HeaderMap::new(), Duration::from_secs(1), SystemTime::now()),
            RetryAfter::None
        );
    }
}
