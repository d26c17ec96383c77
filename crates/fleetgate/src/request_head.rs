//! Checks on a request head before it is routed: what the gateway refuses, and the normal
//! form of the path that routing and the upstream will see.
//!
//! hyper parses the head (and refuses what it cannot parse); these are the checks a proxy needs
//! on top, because the request is passed on and a second parser reads it again:
//! - the head fits `server.max_header_bytes` (hyper alone cannot enforce less than
//!   [`MIN_HYPER_BUF`]): 431;
//! - `CONNECT` is not a request a reverse proxy forwards: 405;
//! - exactly one valid `Host` (RFC 9112 section 3.2), which an absolute-form target must agree
//!   with: 400;
//! - a body with no length is framed by `Transfer-Encoding: chunked` alone (hyper accepts
//!   `gzip, chunked` and decodes only the chunking, which would hand the upstream a coded body
//!   as if it were plain): 400, and the connection closes;
//! - the path normalises ([`crate::path_normalize`]): 400 otherwise.
//!
//! HTTP/2 requests get the same checks, adapted: the authority comes in `:authority` (hyper
//! puts it, with `:scheme`, in the URI, so it is checked as an absolute target is), `Host` may
//! be left out when `:authority` is there (RFC 9113 section 8.3.1) and must agree with it when
//! both are sent; one of them is required. A body without `content-length` is framed by DATA
//! frames (h2 itself refuses `Transfer-Encoding`), so no framing header is asked for; it goes
//! to an HTTP/1.1 upstream chunked.
//!
//! The common request (origin form, one short Host, no body or a Content-Length, a normal
//! path) costs a few comparisons, two header lookups and one scan of the path; no allocation.

use crate::body::{json_error, GatewayBody};
use crate::path_normalize::{normalize_path, PathError};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use std::borrow::Cow;

/// hyper's smallest read buffer (`max_buf_size` refuses less). A head longer than the buffer
/// is refused by hyper; below this size the gateway counts the head itself.
pub const MIN_HYPER_BUF: usize = 8192;

/// The methods named in `Allow` when CONNECT is refused.
const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE";

/// Why a request is refused before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// The `error` field of the JSON body.
    pub kind: &'static str,
    pub message: String,
}

impl Refusal {
    fn bad(kind: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            kind,
            message: message.into(),
        }
    }

    pub fn response(&self) -> Response<GatewayBody> {
        let mut resp = json_error(self.status, self.kind, &self.message, &[]);
        match self.status {
            StatusCode::METHOD_NOT_ALLOWED => {
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
            }
            // The body's framing could not be trusted: nothing after it on this connection can.
            _ if self.kind == "bad_transfer_encoding" => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

/// What the checks found that the rest of the request path needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// The path's normal form when it differs from the path as sent (rare); `None` when the
    /// path is already normal.
    pub normalized_path: Option<String>,
    /// The body has no declared length: HTTP/1.1 framed it with exactly
    /// `Transfer-Encoding: chunked`, or HTTP/2 with DATA frames. It goes upstream chunked.
    pub chunked: bool,
}

/// Checks a request head. `body_length_known` is whether the body has a known length (none,
/// or `Content-Length`); otherwise hyper read `Transfer-Encoding` ending in `chunked`.
/// `header_limit` is `server.max_header_bytes` when it is below [`MIN_HYPER_BUF`].
pub fn check(
    parts: &http::request::Parts,
    body_length_known: bool,
    header_limit: Option<usize>,
) -> Result<Checked, Refusal> {
    if let Some(limit) = header_limit {
        let size = head_size(parts);
        if size > limit {
            return Err(Refusal {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                kind: "header_too_large",
                message: format!("request head of {size} bytes exceeds server.max_header_bytes ({limit})"),
            });
        }
    }
    if parts.method == Method::CONNECT {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            kind: "method_not_allowed",
            message: "CONNECT is not supported: fleetgate is a reverse proxy, not a tunnel".into(),
        });
    }
    check_host(parts)?;
    let chunked = !body_length_known;
    if chunked && parts.version < Version::HTTP_2 {
        check_transfer_encoding(&parts.headers)?;
    }
    let path = parts.uri.path();
    let normalized_path = if path == "*" {
        // Asterisk form: OPTIONS only (RFC 9112 section 3.2.4).
        if parts.method != Method::OPTIONS {
            return Err(Refusal::bad("bad_target", "the request target '*' is only for OPTIONS"));
        }
        None
    } else {
        match normalize_path(path) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(p)) => Some(p),
            Err(e) => return Err(path_refusal(e)),
        }
    };
    Ok(Checked {
        normalized_path,
        chunked,
    })
}

fn path_refusal(e: PathError) -> Refusal {
    Refusal::bad(e.kind(), e.to_string())
}

/// The head as it was sent, near enough: request line and header lines with their CRLFs.
fn head_size(parts: &http::request::Parts) -> usize {
    let uri = &parts.uri;
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let line = parts.method.as_str().len() + 1 + target + 1 + "HTTP/1.1\r\n".len();
    let headers: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + headers + 2
}

fn check_host(parts: &http::request::Parts) -> Result<(), Refusal> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::bad(
            "duplicate_host",
            "the request has more than one Host header",
        ));
    }
    match host {
        None if parts.version == Version::HTTP_11 => {
            return Err(Refusal::bad("missing_host", "an HTTP/1.1 request needs a Host header"));
        }
        None if parts.version >= Version::HTTP_2 && parts.uri.authority().is_none() => {
            return Err(Refusal::bad(
                "missing_host",
                "an HTTP/2 request needs an :authority pseudo-header or a Host header",
            ));
        }
        Some(h) if !is_valid_host(h.as_bytes()) => {
            return Err(Refusal::bad("bad_host", "the Host header is not a valid host[:port]"));
        }
        _ => {}
    }
    // Absolute form (`GET http://host/path`): the target names the authority too.
    let Some(authority) = parts.uri.authority() else {
        return Ok(());
    };
    let scheme = parts.uri.scheme_str().unwrap_or("");
    let default_port = match scheme {
        s if s.eq_ignore_ascii_case("http") => 80,
        s if s.eq_ignore_ascii_case("https") => 443,
        _ => {
            return Err(Refusal::bad(
                "bad_target",
                "an absolute request target must be http or https",
            ))
        }
    };
    if authority.as_str().contains('@') {
        return Err(Refusal::bad("bad_target", "the request target has user information"));
    }
    if let Some(host) = host {
        let (name, port) = split_host_port(host.as_bytes());
        let port = match port {
            None | Some(b"") => Some(default_port),
            Some(p) => std::str::from_utf8(p).ok().and_then(|p| p.parse::<u16>().ok()),
        };
        let same = name.eq_ignore_ascii_case(authority.host().as_bytes())
            && port == Some(authority.port_u16().unwrap_or(default_port));
        if !same {
            return Err(Refusal::bad(
                "host_mismatch",
                "the absolute request target names a different host than the Host header",
            ));
        }
    }
    Ok(())
}

/// `Host` (RFC 9110 section 7.2): `uri-host [ ":" port ]`, where a host is a reg-name, an
/// IPv4 address or a bracketed IP literal; empty is allowed. No user information, no path.
fn is_valid_host(h: &[u8]) -> bool {
    h.iter().all(|b| HOST_BYTE[*b as usize])
}

/// unreserved, sub-delims, `%` (pct-encoded), `:` (port) and `[` `]` (IP literals).
static HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            );
        b += 1;
    }
    t
};

/// `host[:port]` or `[v6][:port]` into the host (brackets kept) and the port, if any.
fn split_host_port(h: &[u8]) -> (&[u8], Option<&[u8]>) {
    if h.first() == Some(&b'[') {
        return match h.iter().position(|b| *b == b']') {
            Some(end) => match &h[end + 1..] {
                [] => (h, None),
                [b':', port @ ..] => (&h[..=end], Some(port)),
                _ => (h, Some(b"x")), // garbage after the literal: no valid port
            },
            None => (h, Some(b"x")),
        };
    }
    match h.iter().rposition(|b| *b == b':') {
        Some(i) => (&h[..i], Some(&h[i + 1..])),
        None => (h, None),
    }
}

/// A body without a length must be framed by `Transfer-Encoding: chunked` and nothing else:
/// one header line, one coding.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Refusal> {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(Refusal::bad(
            "bad_transfer_encoding",
            "Transfer-Encoding must be exactly 'chunked' in one header line; other transfer codings are not supported",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> http::request::Parts {
        // "METHOD TARGET VERSION\nname: value\n..."
        let mut lines = raw.lines();
        let mut first = lines.next().unwrap().split(' ');
        let (method, target, version) = (first.next().unwrap(), first.next().unwrap(), first.next().unwrap());
        let mut b = http::Request::builder()
            .method(method)
            .uri(target)
            .version(match version {
                "HTTP/1.0" => Version::HTTP_10,
                "HTTP/2" => Version::HTTP_2,
                _ => Version::HTTP_11,
            });
        for line in lines {
            let (k, v) = line.split_once(": ").unwrap();
            b = b.header(k, v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn kind(raw: &str) -> Result<Checked, &'static str> {
        check(&parts(raw), true, None).map_err(|r| r.kind)
    }

    #[test]
    fn a_plain_request_passes_untouched() {
        assert_eq!(
            kind("GET /api/x?q=1 HTTP/1.1\nhost: example.com"),
            Ok(Checked::default())
        );
        assert_eq!(kind("OPTIONS * HTTP/1.1\nhost: example.com"), Ok(Checked::default()));
        assert_eq!(kind("GET / HTTP/1.0"), Ok(Checked::default()));
    }

    #[test]
    fn host_rules() {
        assert_eq!(kind("GET / HTTP/1.1").unwrap_err(), "missing_host");
        assert_eq!(kind("GET / HTTP/1.1\nhost: a\nhost: a").unwrap_err(), "duplicate_host");
        assert_eq!(kind("GET / HTTP/1.1\nhost: a@b").unwrap_err(), "bad_host");
        assert_eq!(kind("GET / HTTP/1.1\nhost: a/b").unwrap_err(), "bad_host");
        assert!(kind("GET / HTTP/1.1\nhost: [::1]:8080").is_ok());
        assert!(kind("GET / HTTP/1.1\nhost: ").is_ok());
    }

    #[test]
    fn absolute_form_must_agree_with_host() {
        assert!(kind("GET http://example.com/x HTTP/1.1\nhost: EXAMPLE.com:80").is_ok());
        assert!(kind("GET http://example.com:8080/x HTTP/1.1\nhost: example.com:8080").is_ok());
        assert!(kind("GET https://example.com/x HTTP/1.1\nhost: example.com:443").is_ok());
        assert!(kind("GET http://[::1]:81/x HTTP/1.1\nhost: [::1]:81").is_ok());
        assert!(kind("GET http://example.com/x HTTP/1.0").is_ok());
        for bad in [
            "GET http://other.com/x HTTP/1.1\nhost: example.com",
            "GET http://example.com:81/x HTTP/1.1\nhost: example.com",
            "GET http://example.com/x HTTP/1.1\nhost: example.com:81",
            "GET http://example.com/x HTTP/1.1\nhost: example.com:99999",
            "GET http://[::1]/x HTTP/1.1\nhost: [::2]",
        ] {
            assert_eq!(kind(bad).unwrap_err(), "host_mismatch", "{bad}");
        }
        assert_eq!(
            kind("GET http://u@example.com/x HTTP/1.1\nhost: example.com").unwrap_err(),
            "bad_target"
        );
        assert_eq!(
            kind("GET ftp://example.com/x HTTP/1.1\nhost: example.com").unwrap_err(),
            "bad_target"
        );
    }

    #[test]
    fn connect_star_and_paths() {
        assert_eq!(
            kind("CONNECT example.com:443 HTTP/1.1\nhost: example.com:443").unwrap_err(),
            "method_not_allowed"
        );
        assert_eq!(kind("GET * HTTP/1.1\nhost: a").unwrap_err(), "bad_target");
        assert_eq!(kind("GET /a/%2f HTTP/1.1\nhost: a").unwrap_err(), "path_encoded_slash");
        assert_eq!(
            kind("GET /a/../b?x=/../y HTTP/1.1\nhost: a")
                .unwrap()
                .normalized_path
                .as_deref(),
            Some("/b")
        );
    }

    #[test]
    fn chunked_bodies_need_exactly_chunked() {
        let p = |te: &str| parts(&format!("POST / HTTP/1.1\nhost: a\ntransfer-encoding: {te}"));
        assert!(check(&p("chunked"), false, None).unwrap().chunked);
        assert!(check(&p("Chunked"), false, None).unwrap().chunked);
        for bad in ["gzip, chunked", "identity, chunked", "chunked, chunked"] {
            let r = check(&p(bad), false, None).unwrap_err();
            assert_eq!(r.kind, "bad_transfer_encoding", "{bad}");
            assert_eq!(r.response().headers()["connection"], "close");
        }
        let mut two = p("chunked");
        two.headers
            .append(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(check(&two, false, None).is_err());
    }

    #[test]
    fn head_size_counts_the_request_line_and_every_header_line() {
        let p = parts("GET /abc HTTP/1.1\nhost: h\nx-a: 12345");
        // "GET /abc HTTP/1.1\r\n" (19) + "host: h\r\n" (9) + "x-a: 12345\r\n" (12) + "\r\n" (2)
        assert_eq!(head_size(&p), 42);
        assert!(check(&p, true, Some(42)).is_ok());
        let r = check(&p, true, Some(41)).unwrap_err();
        assert_eq!((r.status.as_u16(), r.kind), (431, "header_too_large"));
    }

    /// HTTP/2 as hyper hands it over: `:scheme` and `:authority` in the URI, Host optional.
    #[test]
    fn http2_requests_get_the_same_checks() {
        // :authority alone is enough; it is what routing and the upstream's Host use.
        assert_eq!(kind("GET http://api.example/x HTTP/2"), Ok(Checked::default()));
        // Host and :authority both: they must agree (RFC 9113 section 8.3.1).
        assert_eq!(
            kind("GET http://api.example/x HTTP/2\nhost: api.example"),
            Ok(Checked::default())
        );
        assert_eq!(
            kind("GET http://api.example/x HTTP/2\nhost: other.example"),
            Err("host_mismatch")
        );
        // Neither: nothing to route on.
        assert_eq!(kind("GET /x HTTP/2"), Err("missing_host"));
        // Host alone (an h2 client that sends no :authority) is accepted as in HTTP/1.1.
        assert_eq!(kind("GET /x HTTP/2\nhost: api.example"), Ok(Checked::default()));
        assert_eq!(kind("GET /x HTTP/2\nhost: a b"), Err("bad_host"));
        assert_eq!(kind("CONNECT http://api.example/ HTTP/2"), Err("method_not_allowed"));
        assert_eq!(kind("GET http://api.example/a%2Fb HTTP/2"), Err("path_encoded_slash"));
        assert_eq!(kind("GET ftp://api.example/x HTTP/2"), Err("bad_target"));
        // A body without content-length is framed by DATA frames: no Transfer-Encoding needed,
        // and it goes upstream chunked.
        let body = check(&parts("POST http://api.example/x HTTP/2"), false, None).expect("accepted");
        assert!(body.chunked);
        // Normalised like any other path.
        let norm = kind("GET http://api.example/a/../b HTTP/2").expect("accepted");
        assert_eq!(norm.normalized_path.as_deref(), Some("/b"));
    }
}
