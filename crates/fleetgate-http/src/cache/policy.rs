//! The cache's use of `http-cache-semantics` (RFC 9111 as a pure function of request and
//! response heads), and what this module corrects around it:
//!
//! - `proxy-revalidate` made a response never fresh in the crate; for a shared cache it means
//!   `must-revalidate` (RFC 9111 section 5.2.2.8), so it is rewritten to that;
//! - directive names are matched case-sensitively by the crate; they are lowercased first, and
//!   delta-seconds above 2^31 are reduced to 2^31 (the crate read them as 0);
//! - the crate's age ignores the apparent age (`now - Date`, RFC 9111 section 4.2.3): the
//!   response time given to it is moved back by what the apparent age adds;
//! - `immutable` got a day of heuristic freshness: zero here unless `heuristic` is configured;
//! - the request head kept in a stored policy is reduced to `Host` and `Cache-Control`
//!   (credentials and cookies never reach the store); `Vary` is matched by the variant's key,
//!   so the headers it names are left out of both sides;
//! - `Set-Cookie` is never part of a stored head;
//! - dates are parsed strictly (IMF-fixdate and the obsolete HTTP formats; the crate took RFC
//!   2822 leniently), an unreadable `Expires` is already expired, `Age` is its first element;
//! - statuses the crate does not know (RFC 7234's list) are stored with explicit freshness, as
//!   RFC 9111 allows, unless `must-understand`; `must-understand` overrides `no-store` for a
//!   status it knows;
//! - `CDN-Cache-Control` ([`super::targeted`]) decides when valid; the origin's fields are kept
//!   aside for the client.

use super::directives::Directives;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http_cache_semantics::{CacheOptions, CachePolicy};
use std::time::{Duration, SystemTime};

/// Request headers the crate reads on a lookup.
const LOOKUP_HEADERS: [HeaderName; 5] = [
    header::HOST,
    header::CACHE_CONTROL,
    header::PRAGMA,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
];

/// The crate's options for a shared cache with `heuristic` (`None`: no heuristic freshness).
pub fn options(heuristic: Option<f32>) -> CacheOptions {
    CacheOptions {
        shared: true,
        cache_heuristic: heuristic.unwrap_or(0.0),
        immutable_min_time_to_live: match heuristic {
            Some(_) => Duration::from_secs(24 * 3600),
            None => Duration::ZERO,
        },
        ignore_cargo_cult: false,
    }
}

/// The request the crate sees: GET (a HEAD is served from a stored GET), the request's URI,
/// and only `keep` of its headers (`authorization` too when `with_credentials`, for the
/// storability decision only).
pub fn request_head(req: &Parts, with_lookup_headers: bool, with_credentials: bool) -> Parts {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = http::Method::GET;
    parts.uri = req.uri.clone();
    let names: &[HeaderName] = if with_lookup_headers {
        &LOOKUP_HEADERS
    } else {
        &LOOKUP_HEADERS[..2]
    };
    for name in names {
        for v in req.headers.get_all(name) {
            parts.headers.append(name.clone(), v.clone());
        }
    }
    if with_credentials {
        if let Some(v) = req.headers.get(header::AUTHORIZATION) {
            parts.headers.insert(header::AUTHORIZATION, v.clone());
        }
    }
    normalise_cache_control(&mut parts.headers, false);
    parts
}

/// The response head the crate (and the store) sees: without `Set-Cookie`, with
/// `Cache-Control` normalised.
pub fn response_head(status: http::StatusCode, headers: &HeaderMap) -> http::response::Parts {
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    for (name, v) in headers {
        if name != header::SET_COOKIE && name != ORIGIN_CACHE_CONTROL && name != ORIGIN_EXPIRES {
            parts.headers.append(name.clone(), v.clone());
        }
    }
    if let Some(targeted) = super::targeted::as_cache_control(&parts.headers) {
        // CDN-Cache-Control decides; the origin's fields are kept aside for the client.
        for (from, to) in [
            (header::CACHE_CONTROL, &ORIGIN_CACHE_CONTROL),
            (header::EXPIRES, &ORIGIN_EXPIRES),
        ] {
            let values: Vec<HeaderValue> = parts.headers.get_all(&from).iter().cloned().collect();
            parts.headers.remove(&from);
            for v in values {
                parts.headers.append(to, v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&targeted) {
            if !targeted.is_empty() {
                parts.headers.insert(header::CACHE_CONTROL, v);
            }
        }
    }
    let understood = CRATE_UNDERSTOOD.contains(&status.as_u16());
    if understood
        && !parts.headers.contains_key(&ORIGIN_CACHE_CONTROL)
        && Directives::of(&parts.headers).has("must-understand")
    {
        // The client gets the origin's Cache-Control, no-store included.
        let values: Vec<HeaderValue> = parts.headers.get_all(header::CACHE_CONTROL).iter().cloned().collect();
        for v in values {
            parts.headers.append(&ORIGIN_CACHE_CONTROL, v);
        }
    }
    normalise_cache_control(&mut parts.headers, understood);
    normalise_dates(&mut parts.headers);
    parts
}

/// Where a stored head keeps the origin's `Cache-Control` and `Expires` while a
/// `CDN-Cache-Control` decides (never sent to a client).
static ORIGIN_CACHE_CONTROL: HeaderName = HeaderName::from_static("x-fleetgate-origin-cache-control");
static ORIGIN_EXPIRES: HeaderName = HeaderName::from_static("x-fleetgate-origin-expires");

/// A stored head as the client gets it: the origin's `Cache-Control` and `Expires` back in
/// place of what `CDN-Cache-Control` made of them.
pub fn restore_origin_fields(headers: &mut HeaderMap) {
    if !headers.contains_key(&ORIGIN_CACHE_CONTROL) && !headers.contains_key(&ORIGIN_EXPIRES) {
        if super::targeted::as_cache_control(headers).is_some() {
            headers.remove(header::CACHE_CONTROL);
            headers.remove(header::EXPIRES);
        }
        return;
    }
    // Under CDN-Cache-Control both fields were replaced; otherwise only what was kept aside.
    let targeted = super::targeted::as_cache_control(headers).is_some();
    for (to, from) in [
        (header::CACHE_CONTROL, &ORIGIN_CACHE_CONTROL),
        (header::EXPIRES, &ORIGIN_EXPIRES),
    ] {
        if !targeted && !headers.contains_key(from) {
            continue;
        }
        headers.remove(&to);
        let values: Vec<HeaderValue> = headers.get_all(from).iter().cloned().collect();
        headers.remove(from);
        for v in values {
            headers.append(to.clone(), v);
        }
    }
}

/// `Expires`, `Date` and `Last-Modified` as IMF-fixdate, which is what the crate parses (it
/// took RFC 2822 leniently and missed the obsolete HTTP formats): an invalid `Expires` is
/// `0` (already expired, RFC 9111 section 5.3), an invalid `Date` or `Last-Modified` is
/// dropped.
fn normalise_dates(headers: &mut HeaderMap) {
    for name in [header::EXPIRES, header::DATE, header::LAST_MODIFIED] {
        let mut values = headers.get_all(&name).iter();
        let Some(first) = values.next() else { continue };
        let several = values.next().is_some();
        let parsed = first
            .to_str()
            .ok()
            .filter(|_| !several)
            .and_then(|v| httpdate::parse_http_date(v).ok());
        match parsed {
            Some(t) => {
                if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(t)) {
                    headers.insert(&name, v);
                }
            }
            None if name == header::EXPIRES => {
                headers.insert(&name, HeaderValue::from_static("0"));
            }
            None => {
                headers.remove(&name);
            }
        }
    }
    // Age: the first element of the first line, if it is a non-negative integer; anything
    // else is ignored (the cache-tests suite follows what deployed caches do).
    let first = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|v| v.parse::<u64>().unwrap_or(crate::cache::directives::MAX_DELTA));
    headers.remove(header::AGE);
    if let Some(age) = first {
        headers.insert(
            header::AGE,
            HeaderValue::from(age.min(crate::cache::directives::MAX_DELTA)),
        );
    }
}

/// `understood`: the response's status is one this cache understands, so `must-understand`
/// overrides `no-store` (RFC 9111 section 5.2.2.3).
fn normalise_cache_control(headers: &mut HeaderMap, understood: bool) {
    if !headers.contains_key(header::CACHE_CONTROL) {
        return;
    }
    let directives = Directives::of(headers);
    let understands = understood && directives.has("must-understand");
    let rendered = directives.render(|name| match name {
        "proxy-revalidate" => Some("must-revalidate"),
        "no-store" if understands => None,
        other => Some(other),
    });
    headers.remove(header::CACHE_CONTROL);
    if let Ok(v) = HeaderValue::from_str(&rendered) {
        if !rendered.is_empty() {
            headers.insert(header::CACHE_CONTROL, v);
        }
    }
}

/// When the response was received, as the crate must be told it so that its age includes the
/// apparent age: `now` moved back by how much `now - Date` exceeds `Age`.
pub fn response_time(headers: &HeaderMap, now: SystemTime) -> SystemTime {
    let date = headers
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let Some(date) = date else { return now };
    let apparent = now.duration_since(date).unwrap_or_default();
    match apparent.checked_sub(age) {
        Some(extra) if extra > Duration::ZERO => now.checked_sub(extra).unwrap_or(now),
        _ => now,
    }
}

/// The policy for a response to `req`.
pub fn policy(req: &Parts, resp: &http::response::Parts, now: SystemTime, opts: CacheOptions) -> CachePolicy {
    CachePolicy::new_options(req, resp, response_time(&resp.headers, now), opts)
}

/// Statuses `http-cache-semantics` understands (it stores no other, after RFC 7234).
const CRATE_UNDERSTOOD: &[u16] = &[200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501];

/// The status to give the crate for a response with `status`, and the status to serve if it
/// differs; `None` when the response must not be stored. RFC 9111 section 3 lets a cache
/// store any final status except 206 and 304 (which it does not handle here) with explicit
/// freshness, unless `must-understand` names a status it does not understand; the crate
/// stores only RFC 7234's understood ones. Others are presented as 302 (understood, not
/// cacheable by default: only explicit freshness stores them).
pub fn status_for_policy(status: http::StatusCode, headers: &HeaderMap) -> Option<(http::StatusCode, Option<u16>)> {
    let code = status.as_u16();
    if code < 200 || code == 206 || code == 304 {
        return None;
    }
    if CRATE_UNDERSTOOD.contains(&code) {
        return Some((status, None));
    }
    if Directives::of(headers).has("must-understand") {
        return None;
    }
    Some((http::StatusCode::FOUND, Some(code)))
}

/// Whether the response carries a validator (`ETag` or `Last-Modified`).
pub fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(pairs: &[(&'static str, &'static str)]) -> http::response::Parts {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        response_head(http::StatusCode::OK, &h)
    }

    fn req() -> Parts {
        let mut p = http::Request::get("/x").body(()).unwrap().into_parts().0;
        p.headers.insert("host", HeaderValue::from_static("h"));
        p.headers
            .insert("authorization", HeaderValue::from_static("Bearer secret"));
        p.headers.insert("cookie", HeaderValue::from_static("a=b"));
        p
    }

    #[test]
    fn proxy_revalidate_is_fresh_then_must_revalidate() {
        let r = resp(&[("cache-control", "Max-Age=60, proxy-revalidate")]);
        assert_eq!(r.headers["cache-control"], "max-age=60, must-revalidate");
        let now = SystemTime::now();
        let p = policy(&request_head(&req(), false, false), &r, now, options(None));
        assert!(p.time_to_live(now) > Duration::from_secs(50));
    }

    #[test]
    fn stored_request_heads_hold_no_credentials_and_no_cookies() {
        let head = request_head(&req(), false, false);
        assert!(head.headers.get("authorization").is_none());
        assert!(head.headers.get("cookie").is_none());
        assert!(request_head(&req(), false, true).headers.get("authorization").is_some());
        let r = resp(&[("set-cookie", "a=b"), ("cache-control", "public, max-age=60")]);
        assert!(r.headers.get("set-cookie").is_none());
    }

    #[test]
    fn the_apparent_age_counts() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let mut h = HeaderMap::new();
        h.insert("date", HeaderValue::from_str(&date).unwrap());
        h.insert("cache-control", HeaderValue::from_static("max-age=60"));
        let r = response_head(http::StatusCode::OK, &h);
        let p = policy(&request_head(&req(), false, false), &r, now, options(None));
        let age = p.age(now).as_secs();
        assert!((29..=31).contains(&age), "age {age}");
    }

    #[test]
    fn no_heuristic_freshness_unless_configured() {
        let now = SystemTime::now();
        let r = resp(&[
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("cache-control", "immutable"),
        ]);
        let p = policy(&request_head(&req(), false, false), &r, now, options(None));
        assert_eq!(p.time_to_live(now), Duration::ZERO);
        let p = policy(&request_head(&req(), false, false), &r, now, options(Some(0.1)));
        assert!(p.time_to_live(now) > Duration::ZERO);
    }
}

#[cfg(test)]
mod bad_input {
    use super::*;

    fn stale_with(name: &'static str, value: &'static str) -> bool {
        let now = SystemTime::now();
        let mut h = HeaderMap::new();
        h.insert("date", HeaderValue::from_str(&httpdate::fmt_http_date(now)).unwrap());
        h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        if name != "cache-control" && name != "expires" {
            h.insert("cache-control", HeaderValue::from_static("max-age=3600"));
        }
        let r = response_head(http::StatusCode::OK, &h);
        let req = http::Request::get("/x").body(()).unwrap().into_parts().0;
        policy(&req, &r, now, options(None)).is_stale(now)
    }

    #[test]
    fn malformed_age_and_expires_are_stale() {
        assert!(stale_with("age", "7200, 0"));
        assert!(!stale_with("age", "old"), "an unreadable Age is ignored");
        assert!(!stale_with("age", "0, 7200"));
        assert!(!stale_with("age", "-7200"));
        assert!(!stale_with("age", "10"));
        assert!(stale_with("expires", "Thu, 18  Aug  2050 02:01:18 GMT"));
        assert!(!stale_with("expires", "Thu, 18 Aug 2050 02:01:18 GMT"));
        assert!(stale_with("cache-control", "max-age=abc"));
    }
}

#[cfg(test)]
mod must_understand {
    use super::*;

    #[test]
    fn an_understood_status_stores_despite_no_store_and_serves_the_origin_field() {
        let mut h = HeaderMap::new();
        h.insert(
            "cache-control",
            HeaderValue::from_static("max-age=60, no-store, must-understand"),
        );
        h.insert("expires", HeaderValue::from_static("Thu, 01 Jan 2099 00:00:00 GMT"));
        let mut r = response_head(http::StatusCode::OK, &h);
        assert_eq!(r.headers["cache-control"], "max-age=60, must-understand");
        restore_origin_fields(&mut r.headers);
        assert_eq!(r.headers["cache-control"], "max-age=60, no-store, must-understand");
        assert!(r.headers.contains_key("expires"), "Expires untouched");
        let kept = response_head(http::StatusCode::from_u16(599).unwrap(), &h);
        assert!(kept.headers["cache-control"].to_str().unwrap().contains("no-store"));
    }
}
