//! Request path normalisation, before routes are matched and before the path goes upstream.
//!
//! A route that answers `403` on `/admin` is only a guard if every spelling of `/admin` reaches
//! it. Upstreams resolve `/public/../admin`, `/./admin`, `//admin` and `/%61dmin` to `/admin`,
//! so the gateway rewrites the path to that one spelling first (RFC 3986 section 6.2.2:
//! percent-encoded unreserved characters decoded, other escapes in upper case; section 5.2.4:
//! dot segments removed; and repeated slashes collapsed), and forwards the rewritten path, so
//! the route and the upstream see the same path.
//!
//! Some spellings have no one meaning: an encoded `/` (`%2F`) is a slash to one server and a
//! character inside a segment to another, and `\` (or `%5C`) is a separator on some. Those, a
//! malformed escape, and an encoded NUL are refused ([`PathError`]) rather than guessed at.
//!
//! The common case, a path that is already normal, is one scan over its bytes and no
//! allocation ([`Cow::Borrowed`]).

use std::borrow::Cow;
use std::fmt;

/// Why a path is refused. Each is answered 400 by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// `%2F`: an encoded `/`.
    EncodedSlash,
    /// `\` or `%5C`.
    Backslash,
    /// `%00`: an encoded NUL.
    EncodedNul,
    /// `%` not followed by two hexadecimal digits.
    BadEscape,
}

impl PathError {
    /// A short machine-readable name for error bodies and logs.
    pub fn kind(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path_not_absolute",
            PathError::EncodedSlash => "path_encoded_slash",
            PathError::Backslash => "path_backslash",
            PathError::EncodedNul => "path_encoded_nul",
            PathError::BadEscape => "path_bad_escape",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the request path does not start with '/'",
            PathError::EncodedSlash => {
                "the request path has an encoded '/' (%2F), which servers read differently; send '/' or leave it out"
            }
            PathError::Backslash => {
                "the request path has a '\\' (or %5C), which some servers read as '/'; it is refused"
            }
            PathError::EncodedNul => "the request path has an encoded NUL (%00)",
            PathError::BadEscape => "the request path has a '%' not followed by two hexadecimal digits",
        })
    }
}

impl std::error::Error for PathError {}

/// The normal form of a request path (without its query): percent-encoded unreserved
/// characters decoded, remaining escapes in upper case, repeated `/` collapsed to one, `.` and
/// `..` segments removed (`..` never climbs above `/`). A trailing `/` is kept, and a path
/// ending in a dot segment ends in `/` (`/a/b/..` is `/a/`).
///
/// Borrowed when `path` is already normal. Idempotent: the normal form of a normal form is
/// itself.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if needs_rewrite(path.as_bytes())? {
        Ok(Cow::Owned(rewrite(path)))
    } else {
        Ok(Cow::Borrowed(path))
    }
}

/// RFC 3986 unreserved: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The octet an escape at `p[i]` (a `%`) stands for, refused when it is ambiguous.
fn escape_at(p: &[u8], i: usize) -> Result<u8, PathError> {
    let (Some(hi), Some(lo)) = (p.get(i + 1).copied().and_then(hex), p.get(i + 2).copied().and_then(hex)) else {
        return Err(PathError::BadEscape);
    };
    match hi << 4 | lo {
        b'/' => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::Backslash),
        0 => Err(PathError::EncodedNul),
        octet => Ok(octet),
    }
}

/// Whether a segment starting at `p[i]` (just after a `/`) is `.` or `..`, literally.
fn is_dot_segment(p: &[u8], i: usize) -> bool {
    let end = |j: usize| j == p.len() || p[j] == b'/';
    match p.get(i) {
        Some(b'.') => end(i + 1) || (p.get(i + 1) == Some(&b'.') && end(i + 2)),
        _ => false,
    }
}

/// The bytes the scan stops at: `/` (what follows may be an empty or dot segment), `%` and
/// `\`. Everything else passes with one table load.
static STOP: [bool; 256] = {
    let mut t = [false; 256];
    t[b'/' as usize] = true;
    t[b'%' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// One scan: refuses what cannot be normalised, and says whether anything would change.
/// Must agree with [`rewrite`]: when it says no, `rewrite(p) == p` (a property test holds them
/// to it).
fn needs_rewrite(p: &[u8]) -> Result<bool, PathError> {
    if p.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut change = false;
    let mut i = 0;
    while let Some(&b) = p.get(i) {
        if !STOP[b as usize] {
            i += 1;
            continue;
        }
        match b {
            b'/' => {
                // An empty segment (`//`) or a dot segment follows. Most segments start with
                // neither, which one comparison of the next byte settles.
                match p.get(i + 1) {
                    Some(b'/') => change = true,
                    Some(b'.') => change |= is_dot_segment(p, i + 1),
                    _ => {}
                }
                i += 1;
            }
            b'%' => {
                let octet = escape_at(p, i)?;
                // Decoded if unreserved; otherwise kept, in upper case.
                change |= is_unreserved(octet) || p[i + 1].is_ascii_lowercase() || p[i + 2].is_ascii_lowercase();
                i += 3;
            }
            _ => return Err(PathError::Backslash),
        }
    }
    Ok(change)
}

/// The slow path: decode, then remove empty and dot segments. `p` has passed
/// [`needs_rewrite`], so every escape is well formed and allowed. Kept out of line so that the
/// scan, the common case, stays small.
#[cold]
#[inline(never)]
fn rewrite(p: &str) -> String {
    let p = p.as_bytes();
    // 1. Escapes: unreserved ones decoded, others in upper case. Decoding cannot make a `/`
    //    (refused), so segment boundaries are those of the input.
    let mut decoded = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%' {
            let octet = (hex(p[i + 1]).unwrap_or(0) << 4) | hex(p[i + 2]).unwrap_or(0);
            if is_unreserved(octet) {
                decoded.push(octet);
            } else {
                decoded.extend_from_slice(&[b'%', p[i + 1].to_ascii_uppercase(), p[i + 2].to_ascii_uppercase()]);
            }
            i += 3;
        } else {
            decoded.push(p[i]);
            i += 1;
        }
    }
    // 2. Segments (RFC 3986 section 5.2.4, with empty segments dropped as well): `out` holds
    //    "/seg" for each kept segment; `..` takes the last one back.
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    let mut trailing_slash = false;
    for segment in decoded[1..].split(|b| *b == b'/') {
        match segment {
            b"" | b"." => trailing_slash = true,
            b".." => {
                let last = out.iter().rposition(|b| *b == b'/').unwrap_or(0);
                out.truncate(last);
                trailing_slash = true;
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(segment);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was removed or decoded into ASCII, so the bytes are still UTF-8.
    String::from_utf8(out).expect("normalising keeps UTF-8 valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(p: &str) -> String {
        normalize_path(p).unwrap().into_owned()
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api",
            "/api/",
            "/api/v1/users/42",
            "/a/.b/c..",
            "/a/.../b",
            "/caf%C3%A9",
            "/a%20b",
            "/ü/x",
            "/a;b=c/d",
        ] {
            match normalize_path(p).unwrap() {
                Cow::Borrowed(b) => assert_eq!(b, p),
                Cow::Owned(o) => panic!("{p} was rewritten to {o}"),
            }
        }
    }

    #[test]
    fn the_observed_bypasses_become_the_guarded_path() {
        assert_eq!(norm("/public/../admin/x"), "/admin/x");
        assert_eq!(norm("/public/%2e%2e/admin/x"), "/admin/x");
        assert_eq!(norm("/public/%2E%2E/admin/x"), "/admin/x");
        assert_eq!(norm("/./admin/x"), "/admin/x");
        assert_eq!(norm("//admin/x"), "/admin/x");
        assert_eq!(norm("/%61dmin/x"), "/admin/x");
        assert_eq!(norm("/public/.%2e/admin"), "/admin");
        assert_eq!(normalize_path("/public/..%2fadmin/x"), Err(PathError::EncodedSlash));
    }

    #[test]
    fn dot_segments_per_rfc_3986() {
        // RFC 3986 section 5.2.4 examples and edges.
        assert_eq!(norm("/a/b/c/./../../g"), "/a/g");
        assert_eq!(norm("/mid/content=5/../6"), "/mid/6");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/b/."), "/a/b/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/../../x"), "/x");
        assert_eq!(norm("/."), "/");
        assert_eq!(norm("/a/.."), "/");
        assert_eq!(norm("/a//b///c//"), "/a/b/c/");
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("/a/%2E/b"), "/a/b");
    }

    #[test]
    fn escapes_are_decoded_when_unreserved_and_upper_cased_otherwise() {
        assert_eq!(norm("/%7euser/%41%5a%30-%2D%5f"), "/~user/AZ0--_");
        assert_eq!(norm("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(norm("/a%3fb"), "/a%3Fb");
        assert_eq!(norm("/%25"), "/%25");
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        assert_eq!(normalize_path("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize_path("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize_path("/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize_path("/a%5cb"), Err(PathError::Backslash));
        assert_eq!(normalize_path("/a%00"), Err(PathError::EncodedNul));
        assert_eq!(normalize_path("/a%"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize_path("/a%+1"), Err(PathError::BadEscape));
        assert_eq!(normalize_path(""), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("*"), Err(PathError::NotAbsolute));
    }

    /// Paths built from the pieces that matter: separators, dots, escapes of every kind.
    fn path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%41".to_string()),
            Just("%7e".to_string()),
            Just("%c3%a9".to_string()),
            Just("%20".to_string()),
            Just("%25".to_string()),
            Just("%2f".to_string()),
            Just("%5C".to_string()),
            Just("\\".to_string()),
            Just("%".to_string()),
            Just(";".to_string()),
            "[a-zA-Z0-9._~-]{1,3}",
            "\\PC{1,2}",
        ];
        prop::collection::vec(piece, 0..16).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn normal_form_is_a_fixed_point_without_dot_or_empty_segments(p in path()) {
            if let Ok(n) = normalize_path(&p) {
                let again = normalize_path(&n).expect("a normal form is accepted");
                prop_assert_eq!(again.as_ref(), n.as_ref());
                prop_assert!(matches!(again, Cow::Borrowed(_)), "a normal form is not rewritten");
                prop_assert!(n.starts_with('/'));
                for bad in ["//", "/./", "/../"] {
                    prop_assert!(!n.contains(bad), "{n:?} from {p:?} contains {bad:?}");
                }
                prop_assert!(!n.ends_with("/.") && !n.ends_with("/.."), "{n:?} from {p:?}");
                prop_assert!(!n.contains('\\'));
            }
        }

        #[test]
        fn the_fast_check_agrees_with_the_rewrite(p in path()) {
            if let Ok(false) = needs_rewrite(p.as_bytes()) {
                prop_assert_eq!(rewrite(&p), p);
            }
        }

        #[test]
        fn an_ambiguous_form_anywhere_is_refused(p in path()) {
            let lower = p.to_ascii_lowercase();
            let ambiguous = lower.contains("%2f") || lower.contains("%5c") || p.contains('\\');
            if ambiguous {
                prop_assert!(normalize_path(&p).is_err());
            }
        }

        #[test]
        fn arbitrary_text_never_panics(p in "/\\PC{0,40}") {
            let _ = normalize_path(&p);
        }
    }
}
