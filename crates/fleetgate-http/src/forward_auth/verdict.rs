//! A verdict of the auth service, as the fleet's cache keeps it: allowed with the identity
//! headers to copy upstream, or denied with what the client is shown. The encoding is a small
//! length-prefixed binary one (header values need not be UTF-8); an entry that does not decode
//! is treated as absent, so a corrupt or foreign value costs one auth call, never a wrong answer.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};

/// Headers of a denial the client is shown (besides its status and body).
pub const DENIAL_HEADERS: [&str; 3] = ["www-authenticate", "location", "content-type"];

/// Headers, in order, repeats allowed.
pub type HeaderList = Vec<(HeaderName, HeaderValue)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: the identity headers to copy onto the upstream request.
    Allow(HeaderList),
    /// 3xx or 4xx: answered to the client as the auth service did.
    Deny {
        status: u16,
        headers: HeaderList,
        body: Bytes,
    },
}

const ALLOW: u8 = b'A';
const DENY: u8 = b'D';

/// Encodes a header list (count, then length-prefixed names and values); header names and
/// values are far below 64 KiB in practice, longer ones are left out.
pub(crate) fn put_headers(out: &mut BytesMut, headers: &HeaderList) {
    let fit: Vec<_> = headers
        .iter()
        .filter(|(_, v)| v.len() <= u16::MAX as usize)
        .take(u8::MAX as usize)
        .collect();
    out.put_u8(fit.len() as u8);
    for (n, v) in fit {
        out.put_u16(n.as_str().len() as u16);
        out.put_slice(n.as_str().as_bytes());
        out.put_u16(v.len() as u16);
        out.put_slice(v.as_bytes());
    }
}

/// Decodes what [`put_headers`] wrote; the headers and the rest of the input.
pub(crate) fn take_headers(mut b: &[u8]) -> Option<(HeaderList, &[u8])> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        let h = take(b, 2)?;
        Some(u16::from_be_bytes([h[0], h[1]]) as usize)
    }
    let count = *take(&mut b, 1)?.first()?;
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let n = len(&mut b)?;
        let name = HeaderName::from_bytes(take(&mut b, n)?).ok()?;
        let n = len(&mut b)?;
        let value = HeaderValue::from_bytes(take(&mut b, n)?).ok()?;
        out.push((name, value));
    }
    Some((out, b))
}

impl Verdict {
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        match self {
            Verdict::Allow(headers) => {
                out.put_u8(ALLOW);
                put_headers(&mut out, headers);
            }
            Verdict::Deny { status, headers, body } => {
                out.put_u8(DENY);
                out.put_u16(*status);
                put_headers(&mut out, headers);
                out.put_slice(body);
            }
        }
        out.freeze()
    }

    pub fn decode(b: &[u8]) -> Option<Verdict> {
        match b.split_first()? {
            (&ALLOW, rest) => match take_headers(rest)? {
                (headers, []) => Some(Verdict::Allow(headers)),
                _ => None,
            },
            (&DENY, [s0, s1, rest @ ..]) => {
                let status = u16::from_be_bytes([*s0, *s1]);
                if !(300..500).contains(&status) {
                    return None;
                }
                let (headers, body) = take_headers(rest)?;
                Some(Verdict::Deny {
                    status,
                    headers,
                    body: Bytes::copy_from_slice(body),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: &'static str, v: &[u8]) -> (HeaderName, HeaderValue) {
        (HeaderName::from_static(n), HeaderValue::from_bytes(v).unwrap())
    }

    #[test]
    fn verdicts_round_trip() {
        for v in [
            Verdict::Allow(vec![]),
            Verdict::Allow(vec![
                h("x-user-id", b"42"),
                h("x-groups", b"a"),
                h("x-groups", b"\xff opaque"),
            ]),
            Verdict::Deny {
                status: 401,
                headers: vec![h("www-authenticate", b"Bearer realm=\"app\"")],
                body: Bytes::from_static(b"{\"error\":\"no\"}"),
            },
            Verdict::Deny {
                status: 302,
                headers: vec![h("location", b"https://login.example/?next=/app")],
                body: Bytes::new(),
            },
        ] {
            assert_eq!(Verdict::decode(&v.encode()), Some(v));
        }
    }

    #[test]
    fn garbage_is_no_verdict() {
        let good = Verdict::Allow(vec![h("x-user-id", b"42")]).encode();
        for bad in [
            &b""[..],
            b"A",
            b"X\x00",
            &good[..good.len() - 1],
            b"D\x00\xc8\x00",
            b"D\x01",
        ] {
            assert_eq!(Verdict::decode(bad), None, "{bad:?}");
        }
        let mut trailing = good.to_vec();
        trailing.push(0);
        assert_eq!(Verdict::decode(&trailing), None);
    }
}
