//! Payment sessions: a settled payment opens a session, a random id in a cookie whose payer
//! lives in the store, so that any instance honours it until it expires. The id is 128 random
//! bits, hex; anything else in the cookie is treated as no session (never looked up).

use std::time::Duration;

/// The cookie of route `route`'s sessions (route names are cookie-name safe).
pub(crate) fn cookie_name(route: &str) -> String {
    format!("fg_x402_{route}")
}

/// A new session id, or `None` if the system has no randomness to give.
pub(crate) fn new_id() -> Option<String> {
    let mut buf = [0u8; 16];
    getrandom::fill(&mut buf).ok()?;
    Some(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `id` has the shape of an id [`new_id`] makes.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The `Set-Cookie` value opening a session.
pub(crate) fn set_cookie(name: &str, id: &str, ttl: Duration) -> String {
    format!(
        "{name}={id}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
        ttl.as_secs().max(1)
    )
}

/// The value of cookie `name`, from any `Cookie` header.
pub(crate) fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_and_recognised() {
        let (a, b) = (new_id().unwrap(), new_id().unwrap());
        assert_ne!(a, b);
        assert!(valid_id(&a));
        assert!(!valid_id("0123"));
        assert!(!valid_id(&a.to_uppercase()));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; fg_x402_paid=abc".parse().unwrap());
        assert_eq!(cookie(&h, "fg_x402_paid"), Some("abc"));
        assert_eq!(cookie(&h, "fg_x402_other"), None);
        let c = set_cookie("fg_x402_paid", "abc", Duration::from_secs(600));
        assert!(c.contains("Max-Age=600") && c.contains("HttpOnly"));
    }
}
