//! Builds the identifier a limit counts by, from the parts its `key` names (ip, header:NAME,
//! cookie:NAME, route, global, payer, json:FIELD, form:FIELD). Header and cookie values are taken as raw bytes, UTF-8 or not:
//! the store hashes whatever arrives into a bounded key.

use crate::KeyPart;
use http::request::Parts;
use std::net::IpAddr;

/// A request's identity for one limit, or the parts that were missing.
pub enum Identity {
    Found(Vec<u8>),
    /// The request lacks the named header or cookie.
    Missing(String),
}

/// Appends the identity of `parts` for `req` into one byte string (parts separated by NUL, each
/// tagged with its kind so `header:a=x` and `cookie:a=x` never collide).
pub fn identify(key: &[KeyPart], req: &Parts, client_ip: IpAddr, route: &str) -> Identity {
    let mut out = Vec::with_capacity(64);
    for part in key {
        match part {
            KeyPart::Ip => {
                // Raw octets: no formatting on the hot path (the store hashes the bytes anyway).
                // Tagged by version, so the fixed-length octets can never be read as another part.
                match client_ip {
                    IpAddr::V4(v4) => {
                        out.extend_from_slice(b"ip4=");
                        out.extend_from_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        out.extend_from_slice(b"ip6=");
                        out.extend_from_slice(&v6.octets());
                    }
                }
            }
            KeyPart::Header(name) => {
                let mut values = req.headers.get_all(name.as_str()).iter().peekable();
                if values.peek().is_none() {
                    return Identity::Missing(format!("header {name}"));
                }
                out.extend_from_slice(b"h=");
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(v.as_bytes());
                }
            }
            KeyPart::Cookie(name) => match cookie(req, name) {
                Some(value) => {
                    out.extend_from_slice(b"c=");
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'=');
                    out.extend_from_slice(value);
                }
                None => return Identity::Missing(format!("cookie {name}")),
            },
            KeyPart::Route => {
                out.extend_from_slice(b"r=");
                out.extend_from_slice(route.as_bytes());
            }
            KeyPart::Global => out.extend_from_slice(b"g"),
            KeyPart::Payer => {
                // A payment session speaks for its payer; otherwise the payment header's.
                let session = crate::payment::session_cookie(&req.headers, route);
                match session {
                    Some(id) => {
                        out.extend_from_slice(b"ps=");
                        out.extend_from_slice(id.as_bytes());
                    }
                    None => match crate::payment::wire::declared_payer(&req.headers) {
                        Some(payer) => {
                            out.extend_from_slice(b"p=");
                            out.extend_from_slice(payer.as_bytes());
                        }
                        None => return Identity::Missing("payer (a payment header or payment session)".into()),
                    },
                }
            }
            KeyPart::Body(field) => {
                let body = req.extensions.get::<crate::body_fields::BufferedBody>();
                match field.value(body) {
                    Some(value) => {
                        out.extend_from_slice(b"b=");
                        out.extend_from_slice(field.name.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(&value);
                    }
                    None => return Identity::Missing(format!("body field {part}")),
                }
            }
        }
        out.push(0);
    }
    Identity::Found(out)
}

/// The raw value of cookie `name`, searched in every Cookie header.
fn cookie<'a>(req: &'a Parts, name: &str) -> Option<&'a [u8]> {
    for header in req.headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = trim(pair);
            if let Some(eq) = pair.iter().position(|b| *b == b'=') {
                if trim(&pair[..eq]) == name.as_bytes() {
                    return Some(trim(&pair[eq + 1..]));
                }
            }
        }
    }
    None
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &[u8])]) -> Parts {
        let mut b = http::Request::builder().uri("/x");
        for (k, v) in headers {
            b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap().into_parts().0
    }

    fn found(i: Identity) -> Vec<u8> {
        match i {
            Identity::Found(v) => v,
            Identity::Missing(m) => panic!("missing {m}"),
        }
    }

    #[test]
    fn parts_combine_and_do_not_collide() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let req = parts(&[("x-api-key", b"abc"), ("cookie", b"sid=abc; other=1")]);
        let h = found(identify(&[KeyPart::Header("x-api-key".into())], &req, ip, "r"));
        let c = found(identify(&[KeyPart::Cookie("sid".into())], &req, ip, "r"));
        assert_ne!(h, c);
        let both = found(identify(
            &[KeyPart::Ip, KeyPart::Header("x-api-key".into())],
            &req,
            ip,
            "r",
        ));
        assert!(both.starts_with(b"ip4=\xc0\x00\x02\x01\0"));
    }

    #[test]
    fn non_utf8_values_are_kept_as_bytes() {
        let req = parts(&[("x-api-key", &[0xff, 0xfe, b'k'])]);
        let v = found(identify(
            &[KeyPart::Header("x-api-key".into())],
            &req,
            "::1".parse().unwrap(),
            "r",
        ));
        assert!(v.windows(2).any(|w| w == [0xff, 0xfe]));
    }

    #[test]
    fn missing_header_or_cookie_is_reported() {
        let req = parts(&[("cookie", b"a=1")]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(matches!(
            identify(&[KeyPart::Cookie("sid".into())], &req, ip, "r"),
            Identity::Missing(_)
        ));
        assert!(matches!(
            identify(&[KeyPart::Header("x-k".into())], &req, ip, "r"),
            Identity::Missing(_)
        ));
    }
}
