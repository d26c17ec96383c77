//! The `Idempotency-Key` header: an RFC 8941 sf-string (`"..."`, printable ASCII, with `\"` and
//! `\\` the only escapes), as the IETF httpapi draft defines it. Written by hand: the grammar
//! is a dozen lines, and a structured-fields crate would be a dependency for one item type.

/// Why a header value is not an acceptable key (the text goes into the 400 answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadKey {
    /// More than one `Idempotency-Key` field.
    Repeated,
    /// Not an sf-string (the reason).
    NotSfString(&'static str),
    /// `""`.
    Empty,
    /// Longer than `max_key_length` characters.
    TooLong { max: usize },
}

impl std::fmt::Display for BadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadKey::Repeated => f.write_str("the request has more than one Idempotency-Key header; accepted: one"),
            BadKey::NotSfString(why) => write!(
                f,
                "the Idempotency-Key header is not a structured-field string ({why}); accepted: a quoted string of printable ASCII, e.g. Idempotency-Key: \"8e03978e-40d5-43e8-bc93-6894a57f9324\""
            ),
            BadKey::Empty => f.write_str("the Idempotency-Key is empty; accepted: a quoted string of 1 or more characters"),
            BadKey::TooLong { max } => write!(f, "the Idempotency-Key is longer than {max} characters"),
        }
    }
}

/// The key an `Idempotency-Key` header value holds, unescaped.
pub fn parse(value: &[u8], max_len: usize) -> Result<String, BadKey> {
    let trimmed = trim_sp(value);
    let rest = trimmed
        .strip_prefix(b"\"")
        .ok_or(BadKey::NotSfString("it does not start with a double quote"))?;
    let mut out = String::with_capacity(rest.len());
    let mut bytes = rest.iter();
    loop {
        match bytes.next() {
            None => return Err(BadKey::NotSfString("the closing double quote is missing")),
            Some(b'"') => break,
            Some(b'\\') => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(char::from(c)),
                _ => return Err(BadKey::NotSfString("a backslash escapes something other than \" or \\")),
            },
            Some(&c) if (0x20..=0x7e).contains(&c) => out.push(char::from(c)),
            Some(_) => return Err(BadKey::NotSfString("it holds a control or non-ASCII character")),
        }
        if out.len() > max_len {
            return Err(BadKey::TooLong { max: max_len });
        }
    }
    if bytes.next().is_some() {
        return Err(BadKey::NotSfString(
            "something follows the closing double quote (parameters are not accepted)",
        ));
    }
    if out.is_empty() {
        return Err(BadKey::Empty);
    }
    Ok(out)
}

fn trim_sp(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ').map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sf_strings_are_unescaped() {
        assert_eq!(parse(br#""abc-123""#, 255).unwrap(), "abc-123");
        assert_eq!(parse(br#"  "a b"  "#, 255).unwrap(), "a b");
        assert_eq!(parse(br#""q\"x\\y""#, 255).unwrap(), r#"q"x\y"#);
    }

    #[test]
    fn bad_values_say_why() {
        let cases: [(&[u8], &str); 8] = [
            (b"abc", "does not start"),
            (b"\"abc", "closing double quote"),
            (br#""a\nb""#, "backslash"),
            (b"\"a\tb\"", "control"),
            ("\"é\"".as_bytes(), "non-ASCII"),
            (br#""a";p=1"#, "follows"),
            (br#""""#, "empty"),
            (br#""abcdef""#, "longer than 5"),
        ];
        for (value, want) in cases {
            let e = parse(value, 5).unwrap_err().to_string();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(value));
        }
    }
}
