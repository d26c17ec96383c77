//! Reading the credential out of the login's answer, and putting it onto a request.
//!
//! A login answer is used only when it is 2xx and holds the captured field. Everything else
//! is a [`LoginFailure`] naming what came back: a redirect (to where), HTML (a login page
//! rather than an API answer), another status, a body that is not JSON, a missing field.
//! None of these messages holds the credential or the answer's body.

use super::config::{Capture, Inject};
use super::LoginFailure;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response};

/// The credential in `answer`, as `capture` says.
pub fn credential(capture: &Capture, answer: &Response<Bytes>) -> Result<String, LoginFailure> {
    let status = answer.status();
    if status.is_redirection() {
        let to = answer
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| l.chars().take(200).collect::<String>())
            .unwrap_or_default();
        return Err(LoginFailure::Redirected {
            status: status.as_u16(),
            location: to,
        });
    }
    if !status.is_success() {
        return Err(LoginFailure::Status(status.as_u16()));
    }
    let html = is_html(answer.headers());
    let found = match capture {
        Capture::Cookie(name) => answer
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| set_cookie_value(c, name)),
        Capture::Header(name) => answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        Capture::Json(path) => {
            if html {
                return Err(LoginFailure::Html);
            }
            let value: serde_json::Value = serde_json::from_slice(answer.body()).map_err(|_| LoginFailure::NotJson)?;
            let mut at = &value;
            for part in path {
                at = match at.get(part) {
                    Some(v) => v,
                    None => return Err(LoginFailure::Missing(capture_name(capture))),
                };
            }
            match at {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => return Err(LoginFailure::Unusable(capture_name(capture))),
            }
        }
    };
    match found {
        Some(v) if !v.is_empty() && HeaderValue::from_str(&v).is_ok() => Ok(v),
        Some(_) => Err(LoginFailure::Unusable(capture_name(capture))),
        None if html => Err(LoginFailure::Html),
        None => Err(LoginFailure::Missing(capture_name(capture))),
    }
}

/// How the captured field is named in messages: `cookie sid`, `header x-token`, `JSON field
/// data.token`.
pub fn capture_name(capture: &Capture) -> String {
    match capture {
        Capture::Cookie(n) => format!("cookie {n}"),
        Capture::Header(n) => format!("header {n}"),
        Capture::Json(p) => format!("JSON field {}", p.join(".")),
    }
}

fn is_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start().to_ascii_lowercase();
            ct.starts_with("text/html") || ct.starts_with("application/xhtml")
        })
}

/// The value of `Set-Cookie: NAME=VALUE; ...` when NAME is `name`.
fn set_cookie_value(set_cookie: &str, name: &str) -> Option<String> {
    let pair = set_cookie.split(';').next()?;
    let (n, v) = pair.split_once('=')?;
    (n.trim() == name).then(|| v.trim().trim_matches('"').to_string())
}

/// Puts `credential` onto a request's headers: as a cookie beside the client's others (one of
/// the same name is replaced), or as a header (the client's replaced).
pub fn inject(inject: &Inject, credential: &str, headers: &mut HeaderMap) {
    match inject {
        Inject::Header { name, format } => {
            if let Ok(v) = HeaderValue::from_str(&format.replacen("{}", credential, 1)) {
                headers.insert(name.clone(), v);
            }
        }
        Inject::Cookie(name) => {
            let mut cookie = format!("{name}={credential}");
            for v in headers.get_all(header::COOKIE).iter() {
                let Ok(text) = v.to_str() else { continue };
                for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    let own = pair.split_once('=').map_or(pair, |(n, _)| n).trim() == name;
                    if !own {
                        cookie.push_str("; ");
                        cookie.push_str(pair);
                    }
                }
            }
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                headers.remove(header::COOKIE);
                headers.insert(header::COOKIE, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Bytes> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Bytes::from(body.to_string())).unwrap()
    }

    #[test]
    fn a_cookie_a_header_or_a_json_field_is_captured() {
        let a = answer(
            200,
            &[("set-cookie", "other=1; Path=/"), ("set-cookie", "sid=abc; HttpOnly")],
            "",
        );
        assert_eq!(credential(&Capture::Cookie("sid".into()), &a).unwrap(), "abc");
        let h = answer(200, &[("x-token", "t1")], "");
        assert_eq!(
            credential(&Capture::Header("x-token".parse().unwrap()), &h).unwrap(),
            "t1"
        );
        let j = answer(
            200,
            &[("content-type", "application/json")],
            r#"{"data":{"token":"jwt"}}"#,
        );
        assert_eq!(
            credential(&Capture::Json(vec!["data".into(), "token".into()]), &j).unwrap(),
            "jwt"
        );
    }

    #[test]
    fn bad_answers_are_named() {
        let json = Capture::Json(vec!["token".into()]);
        let html = answer(
            200,
            &[("content-type", "text/html; charset=utf-8")],
            "<html>log in</html>",
        );
        assert_eq!(credential(&json, &html), Err(LoginFailure::Html));
        assert_eq!(
            credential(&Capture::Cookie("sid".into()), &html),
            Err(LoginFailure::Html)
        );
        let moved = answer(302, &[("location", "/sso")], "");
        assert_eq!(
            credential(&json, &moved),
            Err(LoginFailure::Redirected {
                status: 302,
                location: "/sso".into()
            })
        );
        assert_eq!(credential(&json, &answer(403, &[], "")), Err(LoginFailure::Status(403)));
        assert_eq!(credential(&json, &answer(200, &[], "nope")), Err(LoginFailure::NotJson));
        assert_eq!(
            credential(&json, &answer(200, &[], r#"{"other":1}"#)),
            Err(LoginFailure::Missing("JSON field token".into()))
        );
        assert_eq!(
            credential(&json, &answer(200, &[], r#"{"token":{"nested":1}}"#)),
            Err(LoginFailure::Unusable("JSON field token".into()))
        );
        assert_eq!(
            credential(&Capture::Cookie("sid".into()), &answer(200, &[], "")),
            Err(LoginFailure::Missing("cookie sid".into()))
        );
    }

    #[test]
    fn the_credential_joins_the_clients_cookies_or_replaces_a_header() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; sid=forged; b=2"));
        inject(&Inject::Cookie("sid".into()), "good", &mut h);
        assert_eq!(h.get(header::COOKIE).unwrap(), "sid=good; a=1; b=2");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer client"));
        let bearer = Inject::Header {
            name: header::AUTHORIZATION,
            format: "Bearer {}".into(),
        };
        inject(&bearer, "tok", &mut h);
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(h.get(header::AUTHORIZATION).unwrap(), "Bearer tok");
    }
}
