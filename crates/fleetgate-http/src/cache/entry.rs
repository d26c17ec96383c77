//! What the cache keeps in the store, and under which keys.
//!
//! Under a request's primary key (route, host, path and query) sits one record:
//! - an [`Record::Entry`]: a stored response (its `http-cache-semantics` policy, which holds
//!   the head, and its body), when the response had no `Vary`;
//! - a [`Record::Variants`]: the header names of the response's `Vary` and a generation; each
//!   variant is then an entry under a secondary key made of the primary key, the generation and
//!   the request's values of those headers.
//!
//! Deleting the primary key invalidates every variant at once: without the record their keys
//! are never computed again (a new record has a new generation), and they expire by TTL.
//!
//! A value that does not decode (truncated, another version) is a miss, never served.

use bytes::{BufMut, Bytes, BytesMut};
use fleetgate_store::{ScopedKeys, StoreKey};
use http::HeaderMap;
use http_cache_semantics::CachePolicy;

const ENTRY: u8 = b'E';
const VARIANTS: u8 = b'V';
/// Format version, after the tag byte.
const VERSION: u8 = 1;

/// Most header names a `Vary` may list for the response to be stored.
pub const MAX_VARY: usize = 16;

/// One stored record.
pub enum Record {
    Entry(Box<Entry>),
    Variants(Variants),
}

/// A stored response.
pub struct Entry {
    pub policy: CachePolicy,
    /// When it stops being fresh (Unix milliseconds), as computed when it was stored: how
    /// stale it is decides the RFC 5861 windows.
    pub fresh_until_ms: u64,
    /// What the policy does not give back of the stored head.
    pub meta: Meta,
    pub body: Bytes,
}

/// The stored response's `Date` (served unchanged: the crate would replace it) and its
/// validators (to select the entry a 304 without validators refreshes).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub date: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The status served, when the policy was given another (one the crate understands).
    #[serde(default)]
    pub status: Option<u16>,
}

impl Meta {
    pub fn of(headers: &HeaderMap) -> Self {
        let text = |name: http::header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        Meta {
            date: text(http::header::DATE),
            etag: text(http::header::ETAG),
            last_modified: text(http::header::LAST_MODIFIED),
            status: None,
        }
    }
}

/// The `Vary` of a resource's stored variants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Variants {
    /// Lowercased header names, in the order the response listed them.
    pub vary: Vec<String>,
    /// Random: names this set of variants in their keys.
    pub generation: u64,
}

impl Record {
    pub fn decode(bytes: &Bytes) -> Option<Record> {
        let (&tag, rest) = bytes.split_first()?;
        let (&version, rest) = rest.split_first()?;
        if version != VERSION {
            return None;
        }
        match tag {
            ENTRY => {
                let fresh_until_ms = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
                let meta_len = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
                let meta = serde_json::from_slice(rest.get(12..12 + meta_len)?).ok()?;
                let at = 12 + meta_len;
                let len = u32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize;
                let policy_json = rest.get(at + 4..at + 4 + len)?;
                let policy = serde_json::from_slice(policy_json).ok()?;
                let body = bytes.slice(2 + at + 4 + len..);
                Some(Record::Entry(Box::new(Entry {
                    policy,
                    fresh_until_ms,
                    meta,
                    body,
                })))
            }
            VARIANTS => serde_json::from_slice(rest).ok().map(Record::Variants),
            _ => None,
        }
    }
}

impl Entry {
    pub fn encode(policy: &CachePolicy, fresh_until_ms: u64, meta: &Meta, body: &Bytes) -> Option<Bytes> {
        let json = serde_json::to_vec(policy).ok()?;
        let meta = serde_json::to_vec(meta).ok()?;
        let mut out = BytesMut::with_capacity(18 + meta.len() + json.len() + body.len());
        out.put_u8(ENTRY);
        out.put_u8(VERSION);
        out.put_u64(fresh_until_ms);
        out.put_u32(u32::try_from(meta.len()).ok()?);
        out.put_slice(&meta);
        out.put_u32(u32::try_from(json.len()).ok()?);
        out.put_slice(&json);
        out.put_slice(body);
        Some(out.freeze())
    }
}

impl Variants {
    pub fn encode(&self) -> Bytes {
        let mut out = vec![VARIANTS, VERSION];
        // Serialising a Vec<String> and a u64 cannot fail.
        out.extend(serde_json::to_vec(self).unwrap_or_default());
        Bytes::from(out)
    }

    /// The secondary key of the variant `headers` select.
    pub fn key(&self, keys: &ScopedKeys, primary: &str, headers: &HeaderMap) -> StoreKey {
        let mut id = Vec::with_capacity(primary.len() + 64);
        id.extend_from_slice(primary.as_bytes());
        id.push(0);
        id.extend_from_slice(&self.generation.to_be_bytes());
        for name in &self.vary {
            id.push(0);
            id.extend_from_slice(name.as_bytes());
            id.push(b':');
            id.extend_from_slice(normalised_values(headers, name).as_bytes());
        }
        keys.key(&id)
    }
}

/// The `Vary` names of a response: `None` for `Vary: *` or more than [`MAX_VARY`] names
/// (never stored); empty without `Vary`.
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for v in headers.get_all(http::header::VARY) {
        let text = v.to_str().ok()?;
        for name in text.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            if name == "*" || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return None;
            }
            if !names.contains(&name) {
                names.push(name);
            }
            if names.len() > MAX_VARY {
                return None;
            }
        }
    }
    Some(names)
}

/// A header's values as a variant key sees them: fields joined by commas, whitespace around
/// each comma-separated element trimmed (RFC 9111 section 4.1 allows this normalisation).
fn normalised_values(headers: &HeaderMap, name: &str) -> String {
    let mut out = String::new();
    let mut present = false;
    for v in headers.get_all(name) {
        present = true;
        for part in String::from_utf8_lossy(v.as_bytes()).split(',') {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(part.trim());
        }
    }
    if !present {
        // Absent and empty are different requests.
        return "\u{0}absent".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy() -> CachePolicy {
        let req = http::Request::get("http://h/p").body(()).unwrap();
        let res = http::Response::builder()
            .header("cache-control", "max-age=60")
            .body(())
            .unwrap();
        CachePolicy::new(&req, &res)
    }

    #[test]
    fn entries_round_trip_and_broken_ones_do_not_decode() {
        let body = Bytes::from_static(b"hello");
        let meta = Meta {
            date: Some("d".into()),
            ..Meta::default()
        };
        let bytes = Entry::encode(&policy(), 42, &meta, &body).unwrap();
        match Record::decode(&bytes) {
            Some(Record::Entry(e)) => assert_eq!((e.body, e.fresh_until_ms, e.meta), (body, 42, meta)),
            _ => panic!("entry did not decode"),
        }
        for cut in [0, 1, 2, 5, 20] {
            assert!(Record::decode(&bytes.slice(..cut)).is_none(), "cut at {cut}");
        }
        let v = Variants {
            vary: vec!["accept-language".into()],
            generation: 7,
        };
        match Record::decode(&v.encode()) {
            Some(Record::Variants(got)) => assert_eq!(got, v),
            _ => panic!("variants did not decode"),
        }
        assert!(Record::decode(&Bytes::from_static(b"X1junk")).is_none());
    }

    #[test]
    fn vary_star_and_too_many_names_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            "vary",
            HeaderValue::from_static("Accept-Language, accept-language , Accept"),
        );
        assert_eq!(vary_names(&h).unwrap(), vec!["accept-language", "accept"]);
        h.insert("vary", HeaderValue::from_static("accept, *"));
        assert!(vary_names(&h).is_none());
        let many = (0..100).map(|i| format!("x-h{i}")).collect::<Vec<_>>().join(", ");
        h.insert("vary", HeaderValue::from_str(&many).unwrap());
        assert!(vary_names(&h).is_none());
    }

    #[test]
    fn variant_keys_differ_by_value_and_normalise_whitespace() {
        let keys = fleetgate_store::Keyspace::new("t")
            .unwrap()
            .scoped(fleetgate_store::Concern::ResponseCache, "r");
        let v = Variants {
            vary: vec!["accept-language".into()],
            generation: 1,
        };
        let with = |val: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("accept-language", HeaderValue::from_static(val));
            v.key(&keys, "p", &h)
        };
        assert_ne!(with("en"), with("fr"));
        assert_eq!(with("en, fr"), with("en,fr"));
        assert_ne!(v.key(&keys, "p", &HeaderMap::new()), with(""));
    }
}

#[cfg(test)]
mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the store holds (truncated, corrupted, another program's value), reading it
        /// never panics; it is an entry only if it decodes whole.
        #[test]
        fn decoding_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Record::decode(&Bytes::from(bytes));
        }

        #[test]
        fn decoding_a_corrupted_entry(cut in 0usize..200, flip in 0usize..200) {
            let req = http::Request::get("http://h/p").body(()).unwrap();
            let res = http::Response::builder().header("cache-control", "max-age=60").body(()).unwrap();
            let policy = CachePolicy::new(&req, &res);
            let mut bytes = Entry::encode(&policy, 1, &Meta::default(), &Bytes::from_static(b"body")).unwrap().to_vec();
            if flip < bytes.len() {
                bytes[flip] ^= 0xff;
            }
            bytes.truncate(cut.min(bytes.len()));
            let _ = Record::decode(&Bytes::from(bytes));
        }
    }
}
