//! Admin authentication (`admin.token`): every admin path but `/healthz` and `/readyz` needs
//! `Authorization: Bearer TOKEN`, or the dashboard's cookie.
//!
//! The dashboard gets the token once (`/dashboard?token=TOKEN`, or its login form posting to
//! the same address) and keeps, in an `HttpOnly` cookie, a BLAKE3 hash of it rather than the
//! token. Comparisons are of hashes, in constant time (`subtle`), so neither the token's bytes
//! nor its length show in timing. The token is never logged, and refusals say nothing of it.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The cookie the dashboard keeps.
pub const COOKIE: &str = "fleetgate_admin";

/// The configured token, kept as its hash.
#[derive(Clone)]
pub struct AdminToken {
    hash: Arc<str>,
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        AdminToken {
            hash: fleetgate_store::identifier_hash(token.as_bytes()).into(),
        }
    }

    fn matches_hash(&self, hash: &str) -> bool {
        self.hash.as_bytes().ct_eq(hash.as_bytes()).into()
    }

    /// Whether `candidate` is the token.
    pub fn matches(&self, candidate: &str) -> bool {
        self.matches_hash(&fleetgate_store::identifier_hash(candidate.as_bytes()))
    }

    /// Whether the request carries the token (bearer) or the dashboard's cookie.
    fn admits(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        if let Some(t) = bearer {
            return self.matches(t.trim());
        }
        cookie(headers, COOKIE).is_some_and(|c| self.matches_hash(c))
    }

    /// The `Set-Cookie` value that lets a browser in from now on.
    fn cookie(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", self.hash))
            .expect("a hex hash is a valid header value")
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `token=` in a query string or form body.
pub fn token_param(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

fn unauthorized() -> Response {
    let body = serde_json::json!({
        "error": "unauthorized",
        "message": "this admin path needs Authorization: Bearer TOKEN (admin.token)",
    });
    let mut resp = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The middleware: open paths pass; the dashboard's `?token=` exchanges the token for the
/// cookie (and a redirect that takes the token out of the address bar); anything else needs
/// the token or the cookie.
pub async fn require_token(State(token): State<Option<AdminToken>>, req: Request, next: Next) -> Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    if path == "/dashboard" {
        if let Some(given) = req.uri().query().and_then(token_param) {
            if !token.matches(&given) {
                return unauthorized();
            }
            let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard")]).into_response();
            resp.headers_mut().insert(header::SET_COOKIE, token.cookie());
            return resp;
        }
    }
    if token.admits(req.headers()) {
        return next.run(req).await;
    }
    if path == "/dashboard" && req.method() == axum::http::Method::GET {
        // A browser without the cookie: the login form (posting `token` to /dashboard/login).
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::dashboard::LOGIN_HTML,
        )
            .into_response();
    }
    if path == "/dashboard/login" && req.method() == axum::http::Method::POST {
        let body = axum::body::to_bytes(req.into_body(), 4096).await.unwrap_or_default();
        let given = token_param(&String::from_utf8_lossy(&body));
        if given.is_some_and(|g| token.matches(&g)) {
            let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/dashboard")]).into_response();
            resp.headers_mut().insert(header::SET_COOKIE, token.cookie());
            return resp;
        }
        return unauthorized();
    }
    unauthorized()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_or_its_cookie_admit_and_nothing_else() {
        let t = AdminToken::new("s3cret");
        let mut h = HeaderMap::new();
        assert!(!t.admits(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(t.admits(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cre"));
        assert!(!t.admits(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic czNjcmV0"));
        assert!(!t.admits(&h));
        let mut c = HeaderMap::new();
        let cookie = t.cookie();
        let pair = cookie.to_str().unwrap().split(';').next().unwrap().to_string();
        c.insert(header::COOKIE, HeaderValue::from_str(&format!("a=b; {pair}")).unwrap());
        assert!(t.admits(&c));
        c.insert(header::COOKIE, HeaderValue::from_static("fleetgate_admin=s3cret"));
        assert!(!t.admits(&c), "the cookie holds the hash, not the token");
        assert_eq!(token_param("x=1&token=a%20b"), Some("a b".into()));
    }
}
