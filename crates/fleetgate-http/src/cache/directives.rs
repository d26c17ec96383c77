//! `Cache-Control` read the way RFC 9111 section 5.2 writes it: comma-separated directives,
//! names case-insensitive, values a token or a quoted string. Used for what
//! `http-cache-semantics` does not read (the RFC 5861 stale windows, `only-if-cached`) and to
//! normalise what it reads too literally (directive case, `proxy-revalidate`).

use http::HeaderMap;
use std::time::Duration;

/// Most directives read from one message: a huge header costs bounded work.
const MAX_DIRECTIVES: usize = 64;

/// Largest delta-seconds honoured (RFC 9111 section 1.2.2: 2^31, "infinity enough").
pub const MAX_DELTA: u64 = 2_147_483_648;

/// The directives of a message's `Cache-Control` fields, names lowercased, in order.
#[derive(Debug, Default, Clone)]
pub struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    /// Reads every `Cache-Control` field of `headers` (fields that are not text are skipped).
    pub fn of(headers: &HeaderMap) -> Self {
        let mut out = Vec::new();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for part in split_outside_quotes(text) {
                if out.len() >= MAX_DIRECTIVES {
                    return Directives(out);
                }
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                let (name, value) = match part.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
                    None => (part, None),
                };
                if name.is_empty() {
                    continue;
                }
                out.push((name.to_ascii_lowercase(), value));
            }
        }
        Directives(out)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// A delta-seconds directive's value: `None` when absent or not digits; capped at
    /// [`MAX_DELTA`].
    pub fn seconds(&self, name: &str) -> Option<Duration> {
        let (_, v) = self.0.iter().find(|(n, _)| n == name)?;
        let v = v.as_deref()?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let secs = v.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA);
        Some(Duration::from_secs(secs))
    }

    /// The directives written back as one field value, with `rename` applied to names
    /// (`None`: dropped), delta-seconds values reduced to [`MAX_DELTA`].
    pub fn render<'a>(&'a self, rename: impl Fn(&'a str) -> Option<&'a str>) -> String {
        let mut out = String::new();
        for (name, value) in &self.0 {
            let Some(name) = rename(name) else { continue };
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(name);
            if let Some(v) = value {
                out.push('=');
                if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
                    let secs = v.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA);
                    out.push_str(&secs.to_string());
                } else if v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) && !v.is_empty() {
                    out.push_str(v);
                } else {
                    out.push('"');
                    out.push_str(&v.replace(['"', '\\'], ""));
                    out.push('"');
                }
            }
        }
        out
    }
}

/// Splits on commas that are not inside a quoted string (`private="a, b"` is one directive).
fn split_outside_quotes(text: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter()
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cc(v: &'static str) -> Directives {
        let mut h = HeaderMap::new();
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static(v));
        Directives::of(&h)
    }

    #[test]
    fn names_are_case_insensitive_and_values_unquoted() {
        let d = cc("Max-Age=\"60\", PUBLIC, private=\"set-cookie, x-a\"");
        assert_eq!(d.seconds("max-age"), Some(Duration::from_secs(60)));
        assert!(d.has("public"));
        assert!(d.has("private"));
        assert_eq!(d.0.len(), 3, "the quoted comma does not split");
    }

    #[test]
    fn bad_and_huge_deltas() {
        assert_eq!(cc("max-age=abc").seconds("max-age"), None);
        assert_eq!(cc("max-age=-1").seconds("max-age"), None);
        assert_eq!(
            cc("max-age=99999999999999999999999").seconds("max-age"),
            Some(Duration::from_secs(MAX_DELTA))
        );
    }

    #[test]
    fn a_huge_header_reads_a_bounded_number_of_directives() {
        let text = "a, ".repeat(10_000);
        let mut h = HeaderMap::new();
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_str(&text).unwrap());
        assert_eq!(Directives::of(&h).0.len(), MAX_DIRECTIVES);
    }
}
