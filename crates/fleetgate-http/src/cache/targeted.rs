//! `CDN-Cache-Control` (RFC 9213): a cache-control field targeted at caches like this one.
//! When a response carries one that is a valid Structured Field dictionary (RFC 8941), it
//! decides alone: `Cache-Control` and `Expires` are then ignored for caching (they still go
//! to the client as the origin wrote them). An invalid one is ignored whole.

use http::HeaderMap;

pub static CDN_CACHE_CONTROL: http::HeaderName = http::HeaderName::from_static("cdn-cache-control");

/// The `Cache-Control` value equivalent to the response's valid `CDN-Cache-Control`, if it
/// has one (`Some("")` when it is valid but holds no directive this cache knows).
pub fn as_cache_control(headers: &HeaderMap) -> Option<String> {
    let mut text = String::new();
    for v in headers.get_all(&CDN_CACHE_CONTROL) {
        let v = v.to_str().ok()?;
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(v);
    }
    if text.is_empty() && !headers.contains_key(&CDN_CACHE_CONTROL) {
        return None;
    }
    let members = dictionary(&text)?;
    let mut out = Vec::new();
    for (key, value) in members {
        match (key.as_str(), value) {
            ("max-age" | "stale-while-revalidate" | "stale-if-error", Item::Integer(n)) if n >= 0 => {
                out.push(format!("{key}={n}"));
            }
            ("no-store" | "no-cache" | "private" | "must-revalidate" | "public", Item::Boolean(true)) => {
                out.push(key);
            }
            _ => {}
        }
    }
    Some(out.join(", "))
}

enum Item {
    Integer(i64),
    Boolean(bool),
    Other,
}

/// An RFC 8941 dictionary's members (later duplicates win), or `None` if it does not parse.
fn dictionary(text: &str) -> Option<Vec<(String, Item)>> {
    let b = text.as_bytes();
    let mut i = skip(b, 0, b" ");
    let mut out: Vec<(String, Item)> = Vec::new();
    if i == b.len() {
        return Some(out);
    }
    loop {
        let (key, next) = key(b, i)?;
        i = next;
        let item = if b.get(i) == Some(&b'=') {
            let (item, next) = bare_item(b, i + 1)?;
            i = next;
            item
        } else {
            Item::Boolean(true)
        };
        i = parameters(b, i)?;
        out.retain(|(k, _)| *k != key);
        out.push((key, item));
        i = skip(b, i, b" \t");
        if i == b.len() {
            return Some(out);
        }
        if b[i] != b',' {
            return None;
        }
        i = skip(b, i + 1, b" \t");
        if i == b.len() {
            return None;
        }
    }
}

fn skip(b: &[u8], mut i: usize, what: &[u8]) -> usize {
    while i < b.len() && what.contains(&b[i]) {
        i += 1;
    }
    i
}

fn key(b: &[u8], i: usize) -> Option<(String, usize)> {
    let first = *b.get(i)?;
    if !(first.is_ascii_lowercase() || first == b'*') {
        return None;
    }
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_lowercase() || b[j].is_ascii_digit() || b"_-.*".contains(&b[j])) {
        j += 1;
    }
    Some((String::from_utf8_lossy(&b[i..j]).into_owned(), j))
}

fn parameters(b: &[u8], mut i: usize) -> Option<usize> {
    while b.get(i) == Some(&b';') {
        i = skip(b, i + 1, b" ");
        let (_, next) = key(b, i)?;
        i = next;
        if b.get(i) == Some(&b'=') {
            let (_, next) = bare_item(b, i + 1)?;
            i = next;
        }
    }
    Some(i)
}

fn bare_item(b: &[u8], i: usize) -> Option<(Item, usize)> {
    let c = *b.get(i)?;
    match c {
        b'-' | b'0'..=b'9' => {
            let start = i;
            let mut j = if c == b'-' { i + 1 } else { i };
            let digits_from = j;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                j += 1;
            }
            let num = std::str::from_utf8(&b[start..j]).ok()?;
            if j == digits_from {
                return None;
            }
            if num.contains('.') {
                num.parse::<f64>().ok()?;
                Some((Item::Other, j))
            } else {
                if j - digits_from > 15 {
                    return None;
                }
                Some((Item::Integer(num.parse().ok()?), j))
            }
        }
        b'"' => {
            let mut j = i + 1;
            loop {
                match *b.get(j)? {
                    b'\\' => j += 2,
                    b'"' => return Some((Item::Other, j + 1)),
                    0x20..=0x7e => j += 1,
                    _ => return None,
                }
            }
        }
        b'?' => match b.get(i + 1)? {
            b'0' => Some((Item::Boolean(false), i + 2)),
            b'1' => Some((Item::Boolean(true), i + 2)),
            _ => None,
        },
        b':' => {
            let mut j = i + 1;
            while *b.get(j)? != b':' {
                if !(b[j].is_ascii_alphanumeric() || b"+/=".contains(&b[j])) {
                    return None;
                }
                j += 1;
            }
            Some((Item::Other, j + 1))
        }
        c if c.is_ascii_alphabetic() || c == b'*' => {
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b[j])) {
                j += 1;
            }
            Some((Item::Other, j))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cdn(v: &'static str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(&CDN_CACHE_CONTROL, HeaderValue::from_static(v));
        as_cache_control(&h)
    }

    #[test]
    fn valid_fields_translate_and_invalid_ones_are_ignored() {
        assert_eq!(cdn("max-age=3600").as_deref(), Some("max-age=3600"));
        assert_eq!(cdn("foobar, max-age=3600").as_deref(), Some("max-age=3600"));
        assert_eq!(cdn("no-store").as_deref(), Some("no-store"));
        assert_eq!(cdn("max-age=\"10000\"").as_deref(), Some(""));
        assert_eq!(cdn("max-age =100"), None);
        assert_eq!(cdn("max-age= 100"), None);
        assert_eq!(cdn("MaX-aGe=3600"), None);
        assert_eq!(cdn("max-age=10000, &&&&&"), None);
        assert_eq!(as_cache_control(&HeaderMap::new()), None);
    }
}

#[cfg(test)]
mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any header text: parsed or ignored, never a panic (CDN-Cache-Control, Cache-Control,
        /// Range, Vary).
        #[test]
        fn header_parsers(text in "[ -~]{0,120}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&text) {
                for name in ["cdn-cache-control", "cache-control", "range", "vary", "age", "expires"] {
                    h.insert(http::HeaderName::from_static(name), v.clone());
                }
            }
            let _ = as_cache_control(&h);
            let _ = crate::cache::directives::Directives::of(&h).seconds("max-age");
            if let Some(r) = crate::cache::range::requested(&h) {
                for len in [0u64, 1, 10] {
                    let _ = r.resolve(len);
                }
            }
            let _ = crate::cache::entry::vary_names(&h);
            let _ = crate::cache::policy::response_head(http::StatusCode::OK, &h);
        }
    }
}
