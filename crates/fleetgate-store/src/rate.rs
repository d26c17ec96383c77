//! Rate-limit parameters: parsing `N/PERIOD`, validation, and the decision a store returns.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Largest capacity (burst × emission interval, or a window) accepted, in microseconds.
///
/// Redis scripts do arithmetic in Lua doubles, exact up to 2^53; server time in microseconds is
/// about 2^51 today, so state stays exact while capacities stay below 2^48 µs (about 8.9 years).
pub const MAX_CAPACITY_US: u64 = 1 << 48;

/// The algorithm behind one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Generic cell rate algorithm: a smooth rate with a burst allowance; O(1) state per key.
    Gcra,
    /// Exact sliding log: never more than N in any window of length T; state grows with N.
    SlidingWindow,
    /// Counter per aligned window: cheap, but allows up to 2N across a window boundary.
    FixedWindow,
}

impl Algorithm {
    pub const ACCEPTED: &'static str = "gcra, sliding_window, fixed_window";

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
        }
    }
}

impl FromStr for Algorithm {
    type Err = LimitError;
    fn from_str(s: &str) -> Result<Self, LimitError> {
        match s {
            "gcra" => Ok(Algorithm::Gcra),
            "sliding_window" => Ok(Algorithm::SlidingWindow),
            "fixed_window" => Ok(Algorithm::FixedWindow),
            other => Err(LimitError::UnknownAlgorithm(other.to_string())),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a limit could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("rate {0:?} is not of the form N/PERIOD; accepted: N/[count](ms|s|m|h|d), e.g. 2/s, 100/1m, 5000/1h")]
    Malformed(String),
    #[error("rate {0:?} has a count that is not a positive whole number; accepted: N/PERIOD with N >= 1, e.g. 100/1m")]
    BadCount(String),
    #[error("rate {0:?} has period unit {1:?}; accepted units: ms, s, m, h, d (e.g. 100/1m, 5000/1h)")]
    UnknownUnit(String, String),
    #[error("rate {0:?} has a zero or unparsable period length; accepted: a positive whole number before the unit, e.g. 100/10s")]
    BadPeriod(String),
    #[error("rate {0:?} is too fine: at most one request per microsecond per key is accepted")]
    TooFine(String),
    #[error("rate {0:?} with burst {1} spans more than about 8.9 years of capacity; use a smaller period or burst")]
    TooLarge(String, u64),
    #[error("burst {0} is below 1; accepted: a whole number >= 1 (default: the rate's count)")]
    BadBurst(i64),
    #[error("burst applies to gcra only; {0} enforces exactly the rate's count per window")]
    BurstNotSupported(Algorithm),
    #[error("unknown algorithm {0:?}; accepted: gcra, sliding_window, fixed_window")]
    UnknownAlgorithm(String),
}

/// `N/PERIOD`: N units per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u64,
    pub period: Duration,
}

impl Rate {
    pub fn period_us(&self) -> u64 {
        self.period.as_micros() as u64
    }
}

impl FromStr for Rate {
    type Err = LimitError;
    fn from_str(text: &str) -> Result<Self, LimitError> {
        let trimmed = text.trim();
        let (count, period) = trimmed
            .split_once('/')
            .ok_or_else(|| LimitError::Malformed(text.to_string()))?;
        let count: u64 = match count.trim().parse() {
            Ok(n) if n >= 1 => n,
            _ => return Err(LimitError::BadCount(text.to_string())),
        };
        let period = period.trim();
        let split = period
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| LimitError::UnknownUnit(text.to_string(), String::new()))?;
        let (digits, unit) = period.split_at(split);
        let length: u64 = if digits.is_empty() {
            1
        } else {
            match digits.parse() {
                Ok(n) if n >= 1 => n,
                _ => return Err(LimitError::BadPeriod(text.to_string())),
            }
        };
        let unit_us: u64 = match unit {
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => 86_400_000_000,
            other => return Err(LimitError::UnknownUnit(text.to_string(), other.to_string())),
        };
        let period_us = length
            .checked_mul(unit_us)
            .filter(|p| *p <= MAX_CAPACITY_US)
            .ok_or_else(|| LimitError::TooLarge(text.to_string(), count))?;
        if period_us / count == 0 {
            return Err(LimitError::TooFine(text.to_string()));
        }
        Ok(Rate {
            count,
            period: Duration::from_micros(period_us),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.period_us();
        let (n, unit) = [
            (86_400_000_000u64, "d"),
            (3_600_000_000, "h"),
            (60_000_000, "m"),
            (1_000_000, "s"),
            (1_000, "ms"),
        ]
        .iter()
        .find(|(u, _)| us.is_multiple_of(*u))
        .map(|(u, name)| (us / u, *name))
        .unwrap_or((us, "us"));
        write!(f, "{}/{}{}", self.count, n, unit)
    }
}

/// A validated limit: algorithm, rate and (for gcra) burst. Build with [`RateLimit::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    algorithm: Algorithm,
    rate: Rate,
    burst: u64,
    /// gcra: microseconds per unit, rounded up so the long-run rate never exceeds the configured one.
    interval_us: u64,
}

impl RateLimit {
    /// Builds a limit. `burst` is for gcra only (default: the rate's count).
    pub fn new(algorithm: Algorithm, rate: Rate, burst: Option<i64>) -> Result<Self, LimitError> {
        let burst = match (algorithm, burst) {
            (_, Some(b)) if b < 1 => return Err(LimitError::BadBurst(b)),
            (Algorithm::Gcra, Some(b)) => b as u64,
            (_, None) => rate.count,
            (other, Some(b)) if b as u64 == rate.count => {
                let _ = other;
                rate.count
            }
            (other, Some(_)) => return Err(LimitError::BurstNotSupported(other)),
        };
        let period_us = rate.period_us();
        if period_us / rate.count == 0 {
            return Err(LimitError::TooFine(rate.to_string()));
        }
        let interval_us = period_us.div_ceil(rate.count);
        let capacity = interval_us.checked_mul(burst).filter(|c| *c <= MAX_CAPACITY_US);
        if capacity.is_none() || period_us > MAX_CAPACITY_US {
            return Err(LimitError::TooLarge(rate.to_string(), burst));
        }
        Ok(RateLimit {
            algorithm,
            rate,
            burst,
            interval_us,
        })
    }

    /// Parses `rate` and builds the limit in one step.
    pub fn parse(algorithm: Algorithm, rate: &str, burst: Option<i64>) -> Result<Self, LimitError> {
        Self::new(algorithm, rate.parse()?, burst)
    }

    pub fn gcra(rate: &str) -> Result<Self, LimitError> {
        Self::parse(Algorithm::Gcra, rate, None)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    pub fn rate(&self) -> Rate {
        self.rate
    }
    /// The most units admissible at once: the burst for gcra, N for the window algorithms.
    pub fn capacity(&self) -> u64 {
        self.burst
    }
    pub fn period_us(&self) -> u64 {
        self.rate.period_us()
    }
    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }
}

/// What a store decided for one request against one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// The limit's capacity (burst for gcra, N for windows).
    pub limit: u64,
    /// Units still admissible right now after this decision.
    pub remaining: u64,
    /// Time until the limit is fully replenished.
    pub reset_after: Duration,
    /// When denied: time until this request (with its cost) would be admitted. Zero when allowed.
    pub retry_after: Duration,
    /// What this decision charged, to give back with
    /// [`StoreDriver::refund`](crate::StoreDriver::refund): `Some` only when admitted with a
    /// cost above zero.
    pub charge: Option<RateCharge>,
}

/// The receipt of an admitted charge: enough to refund exactly the units it took, in the state
/// (window, log entry, TAT) it took them from.
///
/// Times are on the clock of the store that decided (microseconds since the Unix epoch: the
/// server's `TIME` for Redis), so a charge is refunded to the store that made it and to no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateCharge {
    /// When the units were charged: the decision's time (sliding_window: the log entry's time).
    pub at_us: u64,
    /// Units charged.
    pub cost: u64,
}

/// What a store granted for one reservation ([`StoreDriver::reserve`](crate::StoreDriver::reserve)):
/// up to the units asked for, taken from the fleet budget now and spendable locally until the
/// lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// Units granted (0 when the budget has no room for even one with this lease).
    pub granted: u64,
    /// When the lease ends, on the deciding store's clock (µs since the Unix epoch): units not
    /// spent before then are void. fixed_window: never after the window's end.
    pub lease_until_us: u64,
    /// The store's clock when it decided.
    pub at_us: u64,
    /// Units a single exact charge could still take right after this reservation.
    pub remaining: u64,
    /// The limit's capacity (burst for gcra, N for fixed_window).
    pub limit: u64,
    /// Time until the limit is fully replenished (gcra) or the window ends (fixed_window).
    pub reset_after: Duration,
    /// What to give unused units back with; `Some` only when units were granted.
    pub receipt: Option<LeaseReceipt>,
}

/// The receipt of a reservation, for [`StoreDriver::give_back`](crate::StoreDriver::give_back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseReceipt {
    /// Units granted.
    pub granted: u64,
    /// gcra: the TAT the reservation left (a give-back applies only while the TAT is still
    /// that, i.e. nothing else was charged since). fixed_window: the window's index.
    pub mark: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_accepted_forms() {
        let r: Rate = "2/s".parse().unwrap();
        assert_eq!((r.count, r.period), (2, Duration::from_secs(1)));
        let r: Rate = "100/1m".parse().unwrap();
        assert_eq!((r.count, r.period), (100, Duration::from_secs(60)));
        let r: Rate = "5000/1h".parse().unwrap();
        assert_eq!(r.period, Duration::from_secs(3600));
        let r: Rate = "10/250ms".parse().unwrap();
        assert_eq!(r.period, Duration::from_millis(250));
        let r: Rate = "7/2d".parse().unwrap();
        assert_eq!(r.period, Duration::from_secs(2 * 86400));
        assert_eq!(r.to_string(), "7/2d");
    }

    #[test]
    fn refuses_bad_rates_with_what_is_accepted() {
        for (text, needle) in [
            ("0/s", "positive whole number"),
            ("-5/s", "positive whole number"),
            ("abc", "N/PERIOD"),
            ("10/5y", "accepted units"),
            ("10/0s", "zero or unparsable"),
            ("10/", "accepted units"),
            ("10/s10", "accepted units"),
            ("2000000/1s", "too fine"),
            ("1/99999999d", "8.9 years"),
        ] {
            let err = text
                .parse::<Rate>()
                .and_then(|r| RateLimit::new(Algorithm::Gcra, r, None));
            let msg = err.expect_err(text).to_string();
            assert!(msg.contains(needle), "{text}: {msg}");
        }
    }

    #[test]
    fn refuses_bad_bursts() {
        let rate: Rate = "10/s".parse().unwrap();
        assert!(matches!(
            RateLimit::new(Algorithm::Gcra, rate, Some(0)),
            Err(LimitError::BadBurst(0))
        ));
        assert!(matches!(
            RateLimit::new(Algorithm::Gcra, rate, Some(-3)),
            Err(LimitError::BadBurst(-3))
        ));
        assert!(matches!(
            RateLimit::new(Algorithm::SlidingWindow, rate, Some(20)),
            Err(LimitError::BurstNotSupported(Algorithm::SlidingWindow))
        ));
        assert_eq!(RateLimit::new(Algorithm::Gcra, rate, Some(25)).unwrap().capacity(), 25);
        assert!("bucket"
            .parse::<Algorithm>()
            .unwrap_err()
            .to_string()
            .contains("gcra, sliding_window"));
    }

    #[test]
    fn interval_rounds_up() {
        let l = RateLimit::parse(Algorithm::Gcra, "3/1s", None).unwrap();
        assert_eq!(l.interval_us(), 333_334);
    }
}
