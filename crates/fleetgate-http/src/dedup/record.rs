//! The stored form of a deduplicated response, and the notice published when a leader is done.
//!
//! `FGD1`, a kind byte, then for a response: status (u16), header count (u16), each header as
//! name length (u16), name, value length (u32), value; then the body's length (u64) and
//! the body. A pass (`kind` 2) has
//! nothing after the kind: "call the upstream yourself". Decoding checks every length: a
//! broken entry reads as `None` and is never served.

use super::flight::{Head, Id};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const MAGIC: &[u8; 4] = b"FGD1";
const RESPONSE: u8 = 1;
const PASS: u8 = 2;

/// What a leader left in the store.
#[derive(Debug)]
pub(crate) enum Stored {
    Response(Head, Bytes),
    Pass,
}

pub(crate) fn encode_response(head: &Head, body: &[Bytes]) -> Bytes {
    let len: usize = body.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(16 + len + head.headers.len() * 48);
    out.put_slice(MAGIC);
    out.put_u8(RESPONSE);
    out.put_u16(head.status.as_u16());
    let headers: Vec<_> = head.headers.iter().take(u16::MAX as usize).collect();
    out.put_u16(headers.len() as u16);
    for (name, value) in headers {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_u64(len as u64);
    for chunk in body {
        out.put_slice(chunk);
    }
    out.freeze()
}

pub(crate) fn encode_pass() -> Bytes {
    let mut out = BytesMut::with_capacity(5);
    out.put_slice(MAGIC);
    out.put_u8(PASS);
    out.freeze()
}

pub(crate) fn decode(bytes: &Bytes) -> Option<Stored> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    if take(4)? != MAGIC {
        return None;
    }
    match take(1)?[0] {
        PASS => return Some(Stored::Pass),
        RESPONSE => {}
        _ => return None,
    }
    let u16_of = |s: &[u8]| u16::from_be_bytes([s[0], s[1]]);
    let status = StatusCode::from_u16(u16_of(take(2)?)).ok()?;
    let count = u16_of(take(2)?) as usize;
    let mut headers = HeaderMap::with_capacity(count);
    for _ in 0..count {
        let n = u16_of(take(2)?) as usize;
        let name = HeaderName::from_bytes(take(n)?).ok()?;
        let l = take(4)?;
        let v = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let value = HeaderValue::from_bytes(take(v)?).ok()?;
        headers.append(name, value);
    }
    let l = take(8)?;
    let len = usize::try_from(u64::from_be_bytes(l.try_into().ok()?)).ok()?;
    let start = at;
    if bytes.len().checked_sub(start)? != len {
        return None;
    }
    Some(Stored::Response(Head { status, headers }, bytes.slice(start..)))
}

/// The notice: the identity whose leader is done (or gone).
pub(crate) fn notice(id: &Id) -> Bytes {
    Bytes::copy_from_slice(id)
}

pub(crate) fn read_notice(payload: &[u8]) -> Option<Id> {
    payload.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_round_trips() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let head = Head {
            status: StatusCode::CREATED,
            headers,
        };
        let bytes = encode_response(&head, &[Bytes::from_static(b"he"), Bytes::from_static(b"llo")]);
        let Some(Stored::Response(h, body)) = decode(&bytes) else {
            panic!("decodes");
        };
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&body[..], b"hello");
        assert!(matches!(decode(&encode_pass()), Some(Stored::Pass)));
    }

    #[test]
    fn a_broken_entry_is_never_read() {
        let head = Head {
            status: StatusCode::OK,
            headers: HeaderMap::from_iter([(http::header::ETAG, HeaderValue::from_static("\"x\""))]),
        };
        let whole = encode_response(&head, &[Bytes::from_static(b"body")]);
        for cut in 0..whole.len() {
            assert!(decode(&whole.slice(..cut)).is_none(), "cut at {cut}");
        }
        assert!(decode(&Bytes::from_static(b"FGD1\x09")).is_none());
        assert!(decode(&Bytes::from_static(b"junk")).is_none());
    }
}
