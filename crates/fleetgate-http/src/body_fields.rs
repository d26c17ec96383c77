//! Key forms read from the request body: `json:FIELD` and `form:FIELD` (a login endpoint
//! throttled per user name). The gateway reads the body, up to a cap, before the pipeline runs
//! and puts it into the request's extensions as a [`BufferedBody`]; the stages read fields from
//! there. A body that is over the cap, not JSON (or not a form), or lacks the field gives no
//! value: the limit then follows its missing-key rule, as for a missing header.
//!
//! * `json:FIELD`: the body parsed as JSON; `FIELD` is a top-level member, or a dotted path into
//!   nested objects (`json:user.name`). A string gives its text; a number or a boolean its JSON
//!   spelling; null, an object or an array gives no value.
//! * `form:FIELD`: the body parsed as `application/x-www-form-urlencoded`; the first `FIELD`'s
//!   value, percent-decoded (`+` is a space).

use bytes::Bytes;

/// Most body bytes a key form may read (a limit's `body_limit` is at most this).
pub const MAX_BODY_LIMIT: usize = 1024 * 1024;
/// How much of the body a limit with a body key form reads by default.
pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024;

/// The request body as read before the pipeline, in the request's extensions.
#[derive(Debug, Clone)]
pub struct BufferedBody {
    /// The bytes read: the whole body when `complete`, else its first bytes, up to the cap.
    pub bytes: Bytes,
    /// Whether `bytes` is the whole body (it ended within the cap).
    pub complete: bool,
}

/// Which body format a key form reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyFormat {
    Json,
    Form,
}

/// A field of the body: its format and its name (a dotted path for JSON).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BodyField {
    pub format: BodyFormat,
    pub name: String,
}

impl BodyField {
    /// Reads `json:NAME` or `form:NAME`'s name part: 1 to 128 printable ASCII characters, no
    /// spaces; for JSON, dots separate non-empty path segments.
    pub fn parse(format: BodyFormat, name: &str) -> Option<BodyField> {
        let ok = !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic());
        let path_ok = format == BodyFormat::Form || name.split('.').all(|s| !s.is_empty());
        (ok && path_ok).then(|| BodyField {
            format,
            name: name.to_string(),
        })
    }

    /// The field's value in `body`, if the body is whole, parses, and holds it.
    pub fn value(&self, body: Option<&BufferedBody>) -> Option<Vec<u8>> {
        let body = body.filter(|b| b.complete)?;
        match self.format {
            BodyFormat::Json => json_value(&body.bytes, &self.name),
            BodyFormat::Form => form_value(&body.bytes, &self.name),
        }
    }
}

fn json_value(body: &[u8], path: &str) -> Option<Vec<u8>> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut at = &doc;
    for segment in path.split('.') {
        at = at.as_object()?.get(segment)?;
    }
    match at {
        serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
        serde_json::Value::Number(n) => Some(n.to_string().into_bytes()),
        serde_json::Value::Bool(b) => Some(b.to_string().into_bytes()),
        _ => None,
    }
}

fn form_value(body: &[u8], name: &str) -> Option<Vec<u8>> {
    // A form is ASCII-safe text; anything else is not a form this reads.
    std::str::from_utf8(body).ok()?;
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(s: &str) -> BufferedBody {
        BufferedBody {
            bytes: Bytes::copy_from_slice(s.as_bytes()),
            complete: true,
        }
    }

    fn json(name: &str) -> BodyField {
        BodyField::parse(BodyFormat::Json, name).unwrap()
    }

    fn form(name: &str) -> BodyField {
        BodyField::parse(BodyFormat::Form, name).unwrap()
    }

    #[test]
    fn json_fields_are_read_by_path_and_only_scalars_count() {
        let b = whole(r#"{"user":"ann","n":7,"ok":true,"nested":{"name":"bo"},"list":[1],"nil":null}"#);
        assert_eq!(json("user").value(Some(&b)).as_deref(), Some(&b"ann"[..]));
        assert_eq!(json("n").value(Some(&b)).as_deref(), Some(&b"7"[..]));
        assert_eq!(json("ok").value(Some(&b)).as_deref(), Some(&b"true"[..]));
        assert_eq!(json("nested.name").value(Some(&b)).as_deref(), Some(&b"bo"[..]));
        for missing in ["list", "nil", "nested", "absent", "user.name"] {
            assert_eq!(json(missing).value(Some(&b)), None, "{missing}");
        }
    }

    #[test]
    fn bodies_that_are_not_json_cut_short_or_absent_give_no_value() {
        assert_eq!(json("user").value(Some(&whole("user=ann"))), None);
        assert_eq!(json("user").value(Some(&whole(r#"{"user":"ann""#))), None);
        let cut = BufferedBody {
            bytes: Bytes::from_static(br#"{"user":"ann"}"#),
            complete: false,
        };
        assert_eq!(json("user").value(Some(&cut)), None, "a body over the cap is not read");
        assert_eq!(json("user").value(None), None);
    }

    #[test]
    fn form_fields_are_percent_decoded_and_the_first_wins() {
        let b = whole("user=ann+lee%21&user=other&pass=x");
        assert_eq!(form("user").value(Some(&b)).as_deref(), Some(&b"ann lee!"[..]));
        assert_eq!(form("pass").value(Some(&b)).as_deref(), Some(&b"x"[..]));
        assert_eq!(form("nope").value(Some(&b)), None);
        let binary = BufferedBody {
            bytes: Bytes::from_static(b"user=\xff\xfe"),
            complete: true,
        };
        assert_eq!(form("user").value(Some(&binary)), None);
    }

    #[test]
    fn field_names_are_checked() {
        assert!(BodyField::parse(BodyFormat::Json, "").is_none());
        assert!(BodyField::parse(BodyFormat::Json, "a..b").is_none());
        assert!(BodyField::parse(BodyFormat::Json, "a b").is_none());
        assert!(BodyField::parse(BodyFormat::Form, &"x".repeat(129)).is_none());
        assert!(BodyField::parse(BodyFormat::Form, "a.b").is_some());
    }
}
