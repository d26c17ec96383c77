//! RateLimit-Policy, RateLimit and Retry-After, as in the IETF httpapi ratelimit-headers draft
//! (structured-field lists, one item per policy):
//!
//! ```text
//! RateLimit-Policy: "per-key";q=100;w=60
//! RateLimit: "per-key";r=42;t=18
//! Retry-After: 3
//! ```
//! `q` is the quota (burst for gcra, N for windows), `w` the window in seconds, `r` the units
//! remaining, `t` the seconds until the quota is fully available again.

use fleetgate_store::{RateDecision, RateLimit};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The `RateLimit-Policy` item of one limit (computed once at start-up).
pub fn policy_item(name: &str, limit: &RateLimit) -> String {
    let window = limit.period_us().div_ceil(1_000_000).max(1);
    format!("\"{}\";q={};w={}", name, limit.capacity(), window)
}

/// Whole seconds, rounded up (a client that waits this long will not be refused for time).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// Accumulates the headers of every limit a request passed through.
#[derive(Default)]
pub struct RateHeaders {
    policy: String,
    state: String,
}

impl RateHeaders {
    pub fn push(&mut self, policy_item: &str, name: &str, d: &RateDecision) {
        let (mut remaining, mut reset) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (r, t) = (remaining.format(d.remaining), reset.format(ceil_secs(d.reset_after)));
        if self.policy.is_empty() {
            // Exact capacities for the first item (the usual one): `write` then hands the
            // strings' buffers to the header values as they are, where a buffer with spare
            // capacity costs `Bytes` a second allocation each.
            self.policy.reserve_exact(policy_item.len());
            self.state.reserve_exact(name.len() + r.len() + t.len() + 8);
        } else {
            self.policy.push_str(", ");
            self.state.push_str(", ");
        }
        self.policy.push_str(policy_item);
        // Pushed piece by piece: `write!` costs more than the rest of the header work together.
        self.state.push('"');
        self.state.push_str(name);
        self.state.push_str("\";r=");
        self.state.push_str(r);
        self.state.push_str(";t=");
        self.state.push_str(t);
    }

    pub fn is_empty(&self) -> bool {
        self.policy.is_empty()
    }

    pub fn write(self, headers: &mut HeaderMap) {
        if self.policy.is_empty() {
            return;
        }
        // Moved into the values, not copied.
        let value = |s: String| HeaderValue::from_maybe_shared(bytes::Bytes::from(s));
        if let (Ok(p), Ok(s)) = (value(self.policy), value(self.state)) {
            headers.insert(&RATELIMIT_POLICY, p);
            headers.insert(&RATELIMIT, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_store::Algorithm;

    #[test]
    fn formats_items() {
        let limit = RateLimit::parse(Algorithm::Gcra, "100/1m", Some(20)).unwrap();
        assert_eq!(policy_item("per-key", &limit), "\"per-key\";q=20;w=60");
        let d = RateDecision {
            allowed: true,
            limit: 20,
            remaining: 7,
            reset_after: Duration::from_millis(1500),
            retry_after: Duration::ZERO,
            charge: None,
        };
        let mut h = RateHeaders::default();
        h.push("\"a\";q=20;w=60", "a", &d);
        h.push("\"b\";q=5;w=1", "b", &d);
        let mut map = HeaderMap::new();
        h.write(&mut map);
        assert_eq!(map[&RATELIMIT], "\"a\";r=7;t=2, \"b\";r=7;t=2");
        assert_eq!(map[&RATELIMIT_POLICY], "\"a\";q=20;w=60, \"b\";q=5;w=1");
        // One item: each string exactly fills its buffer (no second allocation in `write`).
        let mut one = RateHeaders::default();
        one.push("\"a\";q=20;w=60", "a", &d);
        assert_eq!(one.policy.len(), one.policy.capacity());
        assert_eq!(one.state.len(), one.state.capacity());
        assert_eq!(one.state, "\"a\";r=7;t=2");
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
