//! How each request fared with the cache: the `Cache-Status` header (RFC 9211) and the
//! `fleetgate_cache_total{route, outcome}` counters.

use http::HeaderValue;
use metrics::{counter, Counter};

pub const CACHE_TOTAL: &str = "fleetgate_cache_total";

/// The `Cache-Status` header name.
pub static CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// Why a request went forward (RFC 9211 section 2.2 `fwd`), when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Not cacheable this way (a Range request, the store unavailable).
    Bypass,
    /// The method is not GET or HEAD.
    Method,
    /// Nothing stored for the URL.
    UriMiss,
    /// Something stored for the URL, but not for these request headers.
    VaryMiss,
    /// Something stored, but not usable.
    Miss,
    /// The client asked to go forward (`no-cache`).
    Request,
    /// The stored response was stale: a revalidation.
    Stale,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Forward::Bypass => "bypass",
            Forward::Method => "method",
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Miss => "miss",
            Forward::Request => "request",
            Forward::Stale => "stale",
        }
    }
}

/// The value of `Cache-Status` for a hit: `fleetgate; hit` (with `detail` when stale).
pub fn hit(ttl_secs: i64, detail: Option<&str>) -> HeaderValue {
    let mut v = format!("fleetgate; hit; ttl={ttl_secs}");
    if let Some(d) = detail {
        v.push_str("; detail=");
        v.push_str(d);
    }
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("fleetgate; hit"))
}

/// The value for a request that went forward.
pub fn forwarded(fwd: Forward, fwd_status: Option<u16>, stored: bool, detail: Option<&str>) -> HeaderValue {
    let mut v = format!("fleetgate; fwd={}", fwd.as_str());
    if let Some(s) = fwd_status {
        v.push_str("; fwd-status=");
        v.push_str(itoa::Buffer::new().format(s));
    }
    if stored {
        v.push_str("; stored");
    }
    if let Some(d) = detail {
        v.push_str("; detail=");
        v.push_str(d);
    }
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("fleetgate; fwd=miss"))
}

/// The cache's counters of one route: `hit` (fresh from the store), `stale` (a stale entry
/// served: stale-while-revalidate or stale-if-error), `revalidated` (a 304 refreshed an
/// entry), `miss` (went upstream, uri-miss or vary-miss or unusable), `stored` (an entry
/// written), `bypass` (Range, methods other than GET and HEAD, the store unavailable),
/// `invalidated` (an unsafe method deleted entries), `only_if_cached` (504), `coalesced` (a
/// miss served the entry another request fetched meanwhile), `store_error` (the store failed a
/// cache call).
#[derive(Clone)]
pub struct CacheMetrics {
    pub hit: Counter,
    pub stale: Counter,
    pub revalidated: Counter,
    pub miss: Counter,
    pub stored: Counter,
    pub bypass: Counter,
    pub invalidated: Counter,
    pub only_if_cached: Counter,
    pub store_error: Counter,
    /// A miss served from the entry another request of the fleet fetched meanwhile.
    pub coalesced: Counter,
}

impl CacheMetrics {
    pub fn new(route: &str) -> Self {
        let c = |outcome: &'static str| counter!(CACHE_TOTAL, "route" => route.to_string(), "outcome" => outcome);
        CacheMetrics {
            hit: c("hit"),
            stale: c("stale"),
            revalidated: c("revalidated"),
            miss: c("miss"),
            stored: c("stored"),
            bypass: c("bypass"),
            invalidated: c("invalidated"),
            only_if_cached: c("only_if_cached"),
            store_error: c("store_error"),
            coalesced: c("coalesced"),
        }
    }
}
