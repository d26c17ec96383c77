//! Request correlation: the `X-Request-Id` every response carries and the upstream gets, and
//! the W3C Trace Context (`traceparent`) forwarded upstream.
//!
//! - `X-Request-Id`: a trusted proxy's (`trusted_proxies`) value is kept when it is sane (1 to
//!   [`MAX_REQUEST_ID_LEN`] visible ASCII characters, one header); anything else is replaced by
//!   32 random hex digits (128 bits; `fastrand`, a per-thread generator: cheap, unique enough for
//!   correlation, not a secret).
//! - `traceparent` (W3C Trace Context level 1): a valid incoming one keeps its trace id and
//!   flags, and the gateway's own span becomes the parent the upstream sees (a new parent id);
//!   without one (or with an invalid one) a new trace starts, sampled. `tracestate` goes upstream
//!   unchanged with a valid `traceparent`, and is dropped with an invalid one (as the
//!   specification asks). Trace context is accepted from any client: it names a trace, it grants
//!   nothing.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest request id kept from a trusted proxy.
pub const MAX_REQUEST_ID_LEN: usize = 128;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
}

/// The request's id: the trusted proxy's sane `X-Request-Id`, else a new one.
pub fn request_id(headers: &HeaderMap, from_trusted_proxy: bool) -> HeaderValue {
    if from_trusted_proxy {
        let mut sent = headers.get_all(&X_REQUEST_ID).iter();
        if let (Some(v), None) = (sent.next(), sent.next()) {
            if is_sane(v.as_bytes()) {
                return v.clone();
            }
        }
    }
    new_request_id()
}

/// Whether a client's request id may be kept: 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII bytes.
pub fn is_sane(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// 32 lowercase hex digits from 128 random bits.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    hex_into(&mut buf, &fastrand::u128(..).to_be_bytes());
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

/// The trace context of one proxied request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span (the incoming `traceparent`'s parent id), when there was one.
    pub parent_id: Option<[u8; 8]>,
    /// The gateway's span: the parent id the upstream sees.
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceContext {
    /// Continues the incoming trace, or starts one. A `tracestate` that comes with an invalid
    /// or missing `traceparent` is removed from `headers`.
    pub fn continue_or_start(headers: &mut HeaderMap) -> TraceContext {
        let incoming = {
            let mut sent = headers.get_all(&TRACEPARENT).iter();
            match (sent.next(), sent.next()) {
                (Some(v), None) => parse_traceparent(v.as_bytes()),
                _ => None,
            }
        };
        let span_id = nonzero_span_id();
        match incoming {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                flags,
            },
            None => {
                headers.remove(&TRACESTATE);
                let mut trace_id = fastrand::u128(..);
                if trace_id == 0 {
                    trace_id = 1;
                }
                TraceContext {
                    trace_id: trace_id.to_be_bytes(),
                    parent_id: None,
                    span_id,
                    flags: 0x01,
                }
            }
        }
    }

    /// `traceparent` for the upstream: `00-{trace id}-{the gateway's span id}-{flags}`.
    pub fn header(&self) -> HeaderValue {
        let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut buf[3..35], &self.trace_id);
        hex_into(&mut buf[36..52], &self.span_id);
        hex_into(&mut buf[53..55], &[self.flags]);
        HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
    }

    /// The trace id as 32 hex digits (for logs).
    pub fn trace_id_hex(&self) -> String {
        let mut buf = [0u8; 32];
        hex_into(&mut buf, &self.trace_id);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Writes `traceparent` into the upstream request's headers.
    pub fn forward(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.header());
    }
}

fn nonzero_span_id() -> [u8; 8] {
    let mut id = fastrand::u64(..);
    if id == 0 {
        id = 1;
    }
    id.to_be_bytes()
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A `traceparent` value: `(trace id, parent id, flags)`, or `None` when invalid. Version `00`
/// must be exactly 55 characters; a later version may carry more after a `-`; `ff` is invalid.
/// Hex is lowercase; an all-zero trace id or parent id is invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 {
        return None;
    }
    let version: [u8; 1] = unhex(&v[0..2])?;
    match version[0] {
        0xff => return None,
        0x00 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace: [u8; 16] = unhex(&v[3..35])?;
    let parent: [u8; 8] = unhex(&v[36..52])?;
    let flags: [u8; 1] = unhex(&v[53..55])?;
    if trace == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace, parent, flags[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read() {
        let (trace, parent, flags) = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(trace[0], 0x4b);
        assert_eq!(parent[7], 0xb7);
        assert_eq!(flags, 1);
        // A later version may carry more fields.
        assert!(parse_traceparent(format!("01{}-extra", &VALID[2..]).as_bytes()).is_some());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_trace_is_continued_with_a_new_parent() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let cx = TraceContext::continue_or_start(&mut h);
        let out = cx.header();
        let out = out.to_str().unwrap();
        assert_eq!(&out[..36], &VALID[..36], "same version and trace id");
        assert_ne!(&out[36..52], &VALID[36..52], "the gateway's span is the new parent");
        assert_eq!(&out[52..], "-01");
        assert_eq!(cx.parent_id, Some(parse_traceparent(VALID.as_bytes()).unwrap().1));
        assert!(
            h.contains_key(&TRACESTATE),
            "tracestate travels with a valid traceparent"
        );
        assert!(parse_traceparent(out.as_bytes()).is_some());
    }

    #[test]
    fn a_trace_starts_without_a_valid_traceparent() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static("garbage"));
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let cx = TraceContext::continue_or_start(&mut h);
        assert_eq!(cx.parent_id, None);
        assert!(!h.contains_key(&TRACESTATE));
        let other = TraceContext::continue_or_start(&mut HeaderMap::new());
        assert_ne!(cx.trace_id, other.trace_id);
        assert!(parse_traceparent(cx.header().as_bytes()).is_some());
    }

    #[test]
    fn request_ids_are_kept_only_from_trusted_proxies_and_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, true), "abc-123");
        assert_ne!(request_id(&h, false), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h, true), "has space");
        h.insert(&X_REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(request_id(&h, true).len(), 32);
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("one"));
        h.append(&X_REQUEST_ID, HeaderValue::from_static("two"));
        assert_eq!(request_id(&h, true).len(), 32, "two ids: neither is kept");
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_request_id());
    }
}
