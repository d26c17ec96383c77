//! Background revalidation for `stale-while-revalidate` (RFC 5861): the request that finds an
//! entry stale within its window gets the stale entry at once, and the entry is revalidated
//! behind it by a request the gateway sends itself ([`Refresh`]), which carries
//! [`REFRESH_HEADER`] with this process's secret so that the cache sends it upstream (a
//! conditional request) instead of answering it. One instance of the fleet refreshes an entry
//! at a time (a claim in the store).

use http::request::Parts;
use http::{HeaderName, HeaderValue};
use std::sync::OnceLock;

/// Marks the gateway's own refresh request.
pub static REFRESH_HEADER: HeaderName = HeaderName::from_static("x-fleetgate-cache-refresh");

/// Sends a request to the gateway itself (the gateway implements it over loopback).
pub trait Refresh: Send + Sync + 'static {
    /// Sends `request` (GET, its URI and headers) in the background; its answer is drained
    /// (so that the cache stores it) and dropped.
    fn refresh(&self, request: Parts);
}

/// This process's refresh secret: random, never sent upstream.
pub fn secret() -> &'static HeaderValue {
    static SECRET: OnceLock<HeaderValue> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut b = [0u8; 16];
        let _ = getrandom::fill(&mut b);
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        HeaderValue::from_str(&hex).unwrap_or(HeaderValue::from_static("refresh"))
    })
}

/// Takes the refresh marker off `req`; whether it was this process's.
pub fn take_marker(req: &mut Parts) -> bool {
    match req.headers.remove(&REFRESH_HEADER) {
        Some(v) => v == secret(),
        None => false,
    }
}

/// The refresh request for a client's request: GET, the same URI and headers (so a `Vary`
/// variant is refreshed as itself), without its conditions, range or upgrade, and marked.
pub fn request_for(req: &Parts) -> Parts {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = http::Method::GET;
    parts.uri = req.uri.clone();
    parts.headers = req.headers.clone();
    for name in [
        http::header::IF_NONE_MATCH,
        http::header::IF_MODIFIED_SINCE,
        http::header::IF_MATCH,
        http::header::IF_UNMODIFIED_SINCE,
        http::header::IF_RANGE,
        http::header::RANGE,
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::CONNECTION,
        http::header::UPGRADE,
    ] {
        parts.headers.remove(name);
    }
    parts.headers.insert(&REFRESH_HEADER, secret().clone());
    parts
}
