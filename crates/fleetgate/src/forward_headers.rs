//! Header rewriting between the client and the upstream: hop-by-hop headers removed (with
//! what `Connection` names, within limits), and the forwarding headers set by the gateway.
//!
//! Forwarding headers say who the client is and how it reached us; upstreams use them for
//! logs, redirects, access rules and rate limits. So they are believed only from a trusted
//! proxy (`trusted_proxies`):
//! - `X-Forwarded-For`: the client address for an untrusted peer; a trusted proxy's list with
//!   the proxy's address appended.
//! - `X-Forwarded-Proto`: the listener's scheme (`http`, or `https` on the TLS listener),
//!   unless a trusted proxy set it.
//! - `X-Forwarded-Host`: the request's Host (or an absolute target's authority), unless a
//!   trusted proxy set it; removed when there is neither.
//! - The other headers that carry the same claims ([`CLAIMS`]: `Forwarded`, `X-Real-IP`,
//!   `X-Forwarded-Port`, `X-Original-URL`, ...) are removed from untrusted peers and kept from
//!   trusted proxies. The gateway does not set them.

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;
use std::net::IpAddr;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded in either direction.
const HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
];

/// Headers from the client that claim something about the client or the way it came (its
/// address, scheme, host, port, or the URL an earlier proxy saw). Believed only from trusted
/// proxies. Some frameworks route on `X-Original-URL` / `X-Rewrite-URL`, so a client could name
/// a path that no route here would let through.
pub const CLAIMS: [&str; 16] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-original-url",
    "x-rewrite-url",
    "x-original-forwarded-for",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-host",
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

fn is_claim(name: &HeaderName) -> bool {
    // The first byte rules out most headers (host, accept, user-agent, ...) at once.
    let s = name.as_str();
    match s.as_bytes().first() {
        Some(b'x') => s.starts_with("x-") && CLAIMS.contains(&s),
        Some(b'f' | b't' | b'c') => CLAIMS.contains(&s),
        _ => false,
    }
}

/// Names `Connection` may not remove: what routing and framing rest on, and the headers the
/// gateway sets or vouches for. (The hop-by-hop ones go anyway.)
fn is_protected(token: &str) -> bool {
    const PROTECTED: [&str; 5] = [
        "host",
        "content-length",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    PROTECTED.iter().any(|p| token.eq_ignore_ascii_case(p)) || CLAIMS.iter().any(|c| token.eq_ignore_ascii_case(c))
}

/// Removes the hop-by-hop headers and the end-to-end headers that `Connection` names, except
/// protected ones ([`is_protected`]). One pass over the names when there are none (the common
/// case for requests); no allocation unless `Connection` names a header other than the usual
/// `keep-alive` and `close` options (the common case for responses).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass: is `Connection` there, and any other hop-by-hop header?
    let (mut connection, mut others) = (false, false);
    for name in headers.keys() {
        if name == header::CONNECTION {
            connection = true;
        } else if is_hop_by_hop(name) {
            others = true;
        }
    }
    if !connection && !others {
        return;
    }
    let mut listed: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else { continue };
        for token in text.split(',').map(str::trim) {
            if token.is_empty()
                || token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("close")
                || is_protected(token)
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                listed.push(name);
            }
        }
    }
    if listed.is_empty() && !others {
        // Only `Connection` with its usual options (`keep-alive`, `close`): most responses.
        headers.remove(header::CONNECTION);
        return;
    }
    // Then the hop-by-hop names themselves: only those present.
    listed.extend(headers.keys().filter(|n| is_hop_by_hop(n)).cloned());
    for name in listed {
        headers.remove(name);
    }
}

/// Sets the forwarding headers on a request going upstream (see the module docs). `trusted`:
/// the TCP peer is a trusted proxy; `client`: the client address as resolved from it; `host`:
/// the request's Host or absolute-form authority; `https`: the request came over TLS.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    trusted: bool,
    peer: IpAddr,
    client: IpAddr,
    host: Option<HeaderValue>,
    https: bool,
) {
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    if trusted {
        // Every earlier hop, in order (several lines are one list), then this peer.
        let mut prior = headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok());
        let xff = match (prior.next(), prior.next()) {
            (None, _) => Some(ip_header_value(client)),
            (Some(one), None) => HeaderValue::from_str(&format!("{one}, {peer}")).ok(),
            (Some(a), Some(b)) => {
                let mut all = format!("{a}, {b}");
                for more in prior {
                    all.push_str(", ");
                    all.push_str(more);
                }
                HeaderValue::from_str(&format!("{all}, {peer}")).ok()
            }
        };
        if let Some(v) = xff {
            headers.insert(&X_FORWARDED_FOR, v);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, proto);
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(h) = host {
                headers.insert(&X_FORWARDED_HOST, h);
            }
        }
        return;
    }
    remove_claims(headers);
    headers.insert(&X_FORWARDED_FOR, ip_header_value(client));
    headers.insert(&X_FORWARDED_PROTO, proto);
    match host {
        Some(h) => {
            headers.insert(&X_FORWARDED_HOST, h);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Removes [`CLAIMS`] headers: one pass over the names when there are none.
fn remove_claims(headers: &mut HeaderMap) {
    if !headers.keys().any(is_claim) {
        return;
    }
    let found: Vec<HeaderName> = headers.keys().filter(|n| is_claim(n)).cloned().collect();
    for name in found {
        headers.remove(name);
    }
}

/// An address as a header value, formatted without `fmt` for IPv4 (the common case).
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = Vec::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
            HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).expect("digits and dots are a valid header value")
        }
        v6 => HeaderValue::from_str(&v6.to_string()).expect("an IPv6 address is a valid header value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        left
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret , close"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("trailer", "x-t"),
            ("content-type", "text/plain"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["content-type", "x-kept"]);
    }

    #[test]
    fn connection_cannot_name_protected_headers() {
        let mut h = map(&[
            (
                "connection",
                "Host, content-length, X-Forwarded-For, x-forwarded-proto, x-forwarded-host",
            ),
            ("connection", "forwarded, x-real-ip, x-gone"),
            ("host", "a"),
            ("content-length", "3"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "b"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-gone", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            names(&h),
            [
                "content-length",
                "forwarded",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
    }

    #[test]
    fn connection_with_only_its_options_goes_alone_and_other_hop_by_hop_headers_still_go() {
        // `Connection` alone (its usual options, or only protected names): just it goes.
        for value in ["keep-alive", "close", "Keep-Alive, , close", "host"] {
            let mut h = map(&[("connection", value), ("host", "a"), ("content-type", "text/plain")]);
            strip_hop_by_hop(&mut h);
            assert_eq!(names(&h), ["content-type", "host"], "Connection: {value}");
        }
        // With another hop-by-hop header beside it, both go.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
        // And one without `Connection` at all.
        let mut h = map(&[("transfer-encoding", "chunked"), ("te", "trailers"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn leaves_end_to_end_headers_alone() {
        let mut h = map(&[("content-type", "text/plain"), ("x-forwarded-for", "10.0.0.1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn untrusted_peers_get_the_gateways_forwarding_headers_only() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("true-client-ip", "6.6.6.6"),
            ("accept", "*/*"),
            ("x-api-key", "k"),
        ]);
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        set_forwarded(
            &mut h,
            false,
            peer,
            peer,
            Some(HeaderValue::from_static("example.com")),
            false,
        );
        assert_eq!(
            names(&h),
            [
                "accept",
                "x-api-key",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        // No host at all: the client's X-Forwarded-Host does not survive.
        let mut h = map(&[("x-forwarded-host", "evil")]);
        set_forwarded(&mut h, false, peer, peer, None, true);
        assert!(!h.contains_key("x-forwarded-host"));
        assert_eq!(h["x-forwarded-proto"], "https", "the TLS listener's scheme");
    }

    #[test]
    fn trusted_proxies_keep_their_claims_and_extend_the_list() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        set_forwarded(
            &mut h,
            true,
            peer,
            "6.6.6.6".parse().unwrap(),
            Some(HeaderValue::from_static("h")),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "h");
        assert_eq!(h["forwarded"], "for=6.6.6.6");
    }

    #[test]
    fn formats_addresses_for_x_forwarded_for() {
        assert_eq!(ip_header_value("192.0.2.1".parse().unwrap()), "192.0.2.1");
        assert_eq!(ip_header_value("0.0.0.0".parse().unwrap()), "0.0.0.0");
        assert_eq!(ip_header_value("255.255.255.255".parse().unwrap()), "255.255.255.255");
        assert_eq!(ip_header_value("2001:db8::1".parse().unwrap()), "2001:db8::1");
    }
}
