//! A single byte range (RFC 9110 section 14) served from a whole stored response: `bytes=A-B`,
//! `bytes=A-` and `bytes=-N`. Anything else (several ranges, `If-Range`, another unit, a range
//! past the end) passes through to the upstream untouched.

use http::header::{self, HeaderMap};

/// A request's byte range, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `A-B` or `A-` (`None`: to the end).
    From(u64, Option<u64>),
    /// `-N`: the last N bytes.
    Suffix(u64),
}

/// The request's range if this cache may serve it from a whole entry.
pub fn requested(headers: &HeaderMap) -> Option<ByteRange> {
    if headers.contains_key(header::IF_RANGE) {
        return None;
    }
    let mut values = headers.get_all(header::RANGE).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Some(ByteRange::Suffix(num(b)?)),
        (false, true) => Some(ByteRange::From(num(a)?, None)),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some(ByteRange::From(a, Some(b)))
        }
        (true, true) => None,
    }
}

impl ByteRange {
    /// The first and last byte of a body of `len` bytes; `None` if unsatisfiable.
    pub fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From(a, _) if a >= len => None,
            ByteRange::From(a, b) => Some((a, b.map_or(len - 1, |b| b.min(len - 1)))),
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(_) if len == 0 => None,
            ByteRange::Suffix(n) => Some((len - n.min(len), len - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn r(v: &'static str) -> Option<ByteRange> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_static(v));
        requested(&h)
    }

    #[test]
    fn single_ranges_resolve_and_others_pass() {
        assert_eq!(r("bytes=0-1").unwrap().resolve(11), Some((0, 1)));
        assert_eq!(r("bytes=1-").unwrap().resolve(11), Some((1, 10)));
        assert_eq!(r("bytes=-1").unwrap().resolve(11), Some((10, 10)));
        assert_eq!(r("bytes=-50").unwrap().resolve(11), Some((0, 10)));
        assert_eq!(r("bytes=5-100").unwrap().resolve(11), Some((5, 10)));
        assert_eq!(r("bytes=20-").unwrap().resolve(11), None);
        assert_eq!(r("bytes=0-1, 3-4"), None);
        assert_eq!(r("bytes=2-1"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=-"), None);
    }
}
