//! What the store keeps under an idempotency key: a claim while its request runs (a random
//! token and the request's fingerprint), then the completed response. A compact binary form,
//! read with bounds checks: a replay decodes it on every request, and a value that is not one
//! of ours (another version, a corrupt write) decodes to `None`, never to a panic.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const PENDING: &[u8] = b"fgi1P";
const COMPLETED: &[u8] = b"fgi1C";

/// A request's fingerprint: a hash of its method, path and query, and body.
pub type Fingerprint = [u8; 32];

/// The fingerprint of a request (BLAKE3, already the gateway's hash for keyed digests).
pub fn fingerprint(method: &http::Method, path_and_query: &str, body: &[u8]) -> Fingerprint {
    let mut h = blake3::Hasher::new();
    h.update(method.as_str().as_bytes());
    h.update(b"\0");
    h.update(path_and_query.as_bytes());
    h.update(b"\0");
    h.update(body);
    *h.finalize().as_bytes()
}

/// A stored value, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// A request with this fingerprint is running.
    Pending { fingerprint: Fingerprint },
    /// The response of the request with this fingerprint.
    Completed {
        fingerprint: Fingerprint,
        response: StoredResponse,
    },
}

/// A response as kept for replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The claim value: its token (random) and the fingerprint.
pub fn pending(token: &[u8; 16], fingerprint: &Fingerprint) -> Bytes {
    let mut b = BytesMut::with_capacity(PENDING.len() + 48);
    b.put_slice(PENDING);
    b.put_slice(token);
    b.put_slice(fingerprint);
    b.freeze()
}

/// The completed value.
pub fn completed(fingerprint: &Fingerprint, response: &StoredResponse) -> Bytes {
    let head: usize = response
        .headers
        .iter()
        .map(|(k, v)| 6 + k.as_str().len() + v.len())
        .sum();
    let mut b = BytesMut::with_capacity(COMPLETED.len() + 36 + head + response.body.len());
    b.put_slice(COMPLETED);
    b.put_slice(fingerprint);
    b.put_u16(response.status.as_u16());
    b.put_u16(response.headers.len().min(usize::from(u16::MAX)) as u16);
    for (k, v) in response.headers.iter().take(usize::from(u16::MAX)) {
        b.put_u16(k.as_str().len() as u16);
        b.put_slice(k.as_str().as_bytes());
        b.put_u32(v.len() as u32);
        b.put_slice(v.as_bytes());
    }
    b.put_slice(&response.body);
    b.freeze()
}

/// Reads a stored value; `None` if it is not one this version wrote.
pub fn decode(value: &Bytes) -> Option<Record> {
    let mut r = Reader { buf: value, at: 0 };
    let magic = r.take(PENDING.len())?;
    if magic == PENDING {
        r.take(16)?;
        let fingerprint = r.take(32)?.try_into().ok()?;
        return r.done().then_some(Record::Pending { fingerprint });
    }
    if magic != COMPLETED {
        return None;
    }
    let fingerprint: Fingerprint = r.take(32)?.try_into().ok()?;
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let count = r.u16()?;
    let mut headers = HeaderMap::with_capacity(usize::from(count));
    for _ in 0..count {
        let name_len = usize::from(r.u16()?);
        let name = HeaderName::from_bytes(r.take(name_len)?).ok()?;
        let value_len = r.u32()? as usize;
        let value = HeaderValue::from_bytes(r.take(value_len)?).ok()?;
        headers.append(name, value);
    }
    let body = value.slice(r.at..);
    Some(Record::Completed {
        fingerprint,
        response: StoredResponse { status, headers, body },
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.buf.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn done(&self) -> bool {
        self.at == self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let fp = fingerprint(&http::Method::POST, "/pay?x=1", b"{}");
        assert_ne!(fp, fingerprint(&http::Method::POST, "/pay?x=1", b"{ }"));
        assert_eq!(
            decode(&pending(&[7; 16], &fp)),
            Some(Record::Pending { fingerprint: fp })
        );
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let response = StoredResponse {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"{\"id\":1}"),
        };
        let value = completed(&fp, &response);
        assert_eq!(
            decode(&value),
            Some(Record::Completed {
                fingerprint: fp,
                response
            })
        );
    }

    #[test]
    fn foreign_or_truncated_values_decode_to_none() {
        let fp = [1; 32];
        let value = completed(
            &fp,
            &StoredResponse {
                status: StatusCode::OK,
                headers: HeaderMap::from_iter([(http::header::ETAG, HeaderValue::from_static("\"x\""))]),
                body: Bytes::new(),
            },
        );
        for cut in 0..value.len() - 1 {
            assert_eq!(decode(&value.slice(..cut)), None, "cut at {cut}");
        }
        assert_eq!(decode(&Bytes::from_static(b"something else")), None);
    }
}
