//! Cookie affinity (`upstreams.NAME.affinity`): the first answer to a client sets a cookie
//! naming the target that gave it; later requests carrying the cookie go to that target while
//! it is available. The cookie holds a stable id of the target (a hash of the upstream's name
//! and the target's authority), so every instance of the fleet maps it to the same target
//! without sharing anything. An unknown id, or a target that is down or ejected, falls back to
//! balancing, and the answer sets the cookie again.
//!
//! The id is not a secret and is not signed: a client that writes its own can only choose
//! among the upstream's targets, which balancing would send it to anyway.

use fleetgate_config::AffinityConfig;
use http::header::{HeaderMap, HeaderValue, COOKIE};

pub struct Affinity {
    cookie: String,
    /// Per target: its id, and the `Set-Cookie` value naming it.
    ids: Vec<(String, HeaderValue)>,
}

impl Affinity {
    /// `authorities` in the order of the upstream's targets.
    pub fn new(config: &AffinityConfig, upstream: &str, authorities: &[String]) -> Result<Self, String> {
        let mut ids = Vec::with_capacity(authorities.len());
        for authority in authorities {
            let id = target_id(upstream, authority);
            let mut cookie = format!("{}={id}; Path=/; HttpOnly; SameSite=Lax", config.cookie);
            if let Some(ttl) = config.ttl {
                cookie.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
            }
            if config.secure {
                cookie.push_str("; Secure");
            }
            let value = HeaderValue::from_str(&cookie)
                .map_err(|_| format!("affinity cookie {:?} is not a header value", config.cookie))?;
            ids.push((id, value));
        }
        Ok(Affinity {
            cookie: config.cookie.clone(),
            ids,
        })
    }

    /// The target the request's affinity cookie names, if it names one of ours.
    pub fn target_in(&self, headers: &HeaderMap) -> Option<usize> {
        for value in headers.get_all(COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for pair in text.split(';') {
                if let Some((name, id)) = pair.trim().split_once('=') {
                    if name == self.cookie {
                        let id = id.trim().trim_matches('"');
                        if let Some(t) = self.ids.iter().position(|(known, _)| known == id) {
                            return Some(t);
                        }
                    }
                }
            }
        }
        None
    }

    /// The `Set-Cookie` value that names `target`.
    pub fn set_cookie(&self, target: usize) -> HeaderValue {
        self.ids[target].1.clone()
    }
}

/// 16 hex digits of BLAKE3 over the upstream's name and the target's authority.
fn target_id(upstream: &str, authority: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"fleetgate affinity\0");
    h.update(upstream.as_bytes());
    h.update(b"\0");
    h.update(authority.as_bytes());
    h.finalize().to_hex()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affinity() -> Affinity {
        let config = AffinityConfig {
            cookie: "fg_t".into(),
            ttl: Some(std::time::Duration::from_secs(3600)),
            secure: true,
        };
        Affinity::new(&config, "backend", &["127.0.0.1:1".into(), "127.0.0.1:2".into()]).unwrap()
    }

    #[test]
    fn the_cookie_names_a_target_stably() {
        let a = affinity();
        let set = a.set_cookie(1);
        let text = set.to_str().unwrap();
        assert!(
            text.ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600; Secure"),
            "{text}"
        );
        let pair = text.split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&format!("other=1; {pair}")).unwrap());
        assert_eq!(a.target_in(&h), Some(1));
        assert_eq!(affinity().target_in(&h), Some(1), "another instance agrees");
        h.insert(COOKIE, HeaderValue::from_static("fg_t=0123456789abcdef"));
        assert_eq!(a.target_in(&h), None, "an unknown id");
        assert_eq!(a.target_in(&HeaderMap::new()), None);
    }
}
