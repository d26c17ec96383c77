//! Path rewrites (`routes[].rewrite`): replace the matched `path_prefix` with another
//! (`{ prefix: /new }`), or rewrite the path with a regular expression and a replacement that
//! may name its captures (`{ regex: "^/old/(.*)$", replace: "/new/$1" }`). The query is kept
//! as it was in both cases.

use crate::fields::{refuse, refuse_at};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;

/// A checked rewrite.
#[derive(Debug, Clone)]
pub enum Rewrite {
    /// Replace the route's `match.path_prefix` with this (starts with `/`).
    Prefix(String),
    /// Replace the first match of `regex` in the path (the query excluded) with `replace`
    /// (`$1`, `${name}`, `$$` for a `$`); a path the regex does not match is sent unchanged.
    Regex { regex: regex::Regex, replace: String },
}

impl PartialEq for Rewrite {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Rewrite::Prefix(a), Rewrite::Prefix(b)) => a == b,
            (Rewrite::Regex { regex: a, replace: x }, Rewrite::Regex { regex: b, replace: y }) => {
                a.as_str() == b.as_str() && x == y
            }
            _ => false,
        }
    }
}

impl Eq for Rewrite {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    replace: Option<String>,
}

const ACCEPTED: &str = "{ prefix: /new } or { regex: \"^/old/(.*)$\", replace: \"/new/$1\" }";

fn check_path<E: serde::de::Error>(field: &str, p: &str, what: &str) -> Result<(), E> {
    if !p.starts_with('/')
        || p.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(refuse_at(
            field,
            format!("{p:?} is not {what}; accepted: a path starting with / without spaces, '?' or '#', e.g. /v2"),
        ));
    }
    Ok(())
}

impl<'de> Deserialize<'de> for Rewrite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Written::deserialize(d)?;
        match (w.prefix, w.regex, w.replace) {
            (Some(p), None, None) => {
                check_path::<D::Error>(".prefix", &p, "a path prefix")?;
                Ok(Rewrite::Prefix(p))
            }
            (Some(_), _, _) => Err(refuse(format!(
                "prefix cannot be combined with regex or replace; accepted: {ACCEPTED}"
            ))),
            (None, Some(re), Some(replace)) => {
                let regex = regex::Regex::new(&re).map_err(|e| {
                    let why = e.to_string().lines().last().unwrap_or("invalid").trim().to_string();
                    refuse_at::<D::Error>(".regex", format!("{re:?} is not a regular expression ({why}); accepted: the syntax of the regex crate, e.g. ^/old/(.*)$"))
                })?;
                check_replacement::<D::Error>(&regex, &replace)?;
                if !replace.starts_with('/') && !replace.starts_with('$') {
                    return Err(refuse_at(
                        ".replace",
                        format!("{replace:?} does not start with /; accepted: a path starting with / that may name captures, e.g. /new/$1"),
                    ));
                }
                Ok(Rewrite::Regex { regex, replace })
            }
            (None, Some(_), None) => Err(refuse(format!("regex needs replace; accepted: {ACCEPTED}"))),
            (None, None, Some(_)) => Err(refuse(format!("replace needs regex; accepted: {ACCEPTED}"))),
            (None, None, None) => Err(refuse(format!("no rewrite given; accepted: {ACCEPTED}"))),
        }
    }
}

/// Every capture that `replace` names exists in `regex` (`$1`, `$name`, `${1}`, `${name}`;
/// `$$` is a `$`).
fn check_replacement<E: serde::de::Error>(regex: &regex::Regex, replace: &str) -> Result<(), E> {
    let bytes = replace.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        i += 1;
        if bytes.get(i) == Some(&b'$') {
            i += 1;
            continue;
        }
        let name = if bytes.get(i) == Some(&b'{') {
            let Some(end) = replace[i..].find('}') else {
                return Err(refuse_at(
                    ".replace",
                    format!("{replace:?} has an unclosed ${{; accepted: $1, ${{1}}, $name, ${{name}}, or $$ for a $"),
                ));
            };
            let n = &replace[i + 1..i + end];
            i += end + 1;
            n
        } else {
            let len = replace[i..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let n = &replace[i..i + len];
            i += len;
            n
        };
        let known = match name.parse::<usize>() {
            Ok(n) => n < regex.captures_len(),
            Err(_) => !name.is_empty() && regex.capture_names().flatten().any(|c| c == name),
        };
        if !known {
            let groups = regex.captures_len() - 1;
            return Err(refuse_at(".replace", format!(
                "{replace:?} names capture {name:?}, which the regex does not have (it has {groups} numbered group(s){}); accepted: $0 to ${groups}, a named group, or $$ for a $",
                {
                    let names: Vec<&str> = regex.capture_names().flatten().collect();
                    if names.is_empty() { String::new() } else { format!(" named {}", names.join(", ")) }
                }
            )));
        }
    }
    Ok(())
}

impl Rewrite {
    /// The path and query to send upstream for `path_and_query`, the route's prefix being
    /// `prefix` (checked to be set for a prefix rewrite). The query is kept.
    pub fn apply<'a>(&self, prefix: Option<&str>, path_and_query: &'a str) -> Cow<'a, str> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let new_path: Cow<'_, str> = match self {
            Rewrite::Prefix(new) => {
                let Some(rest) = prefix.and_then(|p| path.strip_prefix(p.trim_end_matches('/'))) else {
                    return Cow::Borrowed(path_and_query);
                };
                let base = new.trim_end_matches('/');
                match rest {
                    "" => Cow::Owned(new.clone()),
                    rest if rest.starts_with('/') => Cow::Owned(format!("{base}{rest}")),
                    rest => Cow::Owned(format!("{base}/{rest}")),
                }
            }
            Rewrite::Regex { regex, replace } => match regex.replace(path, replace.as_str()) {
                Cow::Borrowed(_) => return Cow::Borrowed(path_and_query),
                Cow::Owned(p) if p.starts_with('/') => Cow::Owned(p),
                Cow::Owned(p) => Cow::Owned(format!("/{p}")),
            },
        };
        match query {
            Some(q) => Cow::Owned(format!("{new_path}?{q}")),
            None => new_path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regex(re: &str, rep: &str) -> Rewrite {
        Rewrite::Regex {
            regex: regex::Regex::new(re).unwrap(),
            replace: rep.into(),
        }
    }

    #[test]
    fn prefix_replaces_the_matched_prefix_and_keeps_the_query() {
        let r = Rewrite::Prefix("/v2".into());
        assert_eq!(r.apply(Some("/api"), "/api/x?q=1"), "/v2/x?q=1");
        assert_eq!(r.apply(Some("/api"), "/api"), "/v2");
        assert_eq!(r.apply(Some("/api"), "/api?q=1"), "/v2?q=1");
        assert_eq!(r.apply(Some("/api/"), "/api/x"), "/v2/x");
        assert_eq!(Rewrite::Prefix("/".into()).apply(Some("/api"), "/api/x"), "/x");
        assert_eq!(Rewrite::Prefix("/".into()).apply(Some("/api"), "/api"), "/");
    }

    #[test]
    fn regex_uses_captures_and_keeps_the_query() {
        let r = regex("^/old/(.*)$", "/new/$1");
        assert_eq!(r.apply(None, "/old/a/b?x=%20"), "/new/a/b?x=%20");
        assert_eq!(r.apply(None, "/other"), "/other", "no match: unchanged");
        let named = regex("^/u/(?P<id>[0-9]+)$", "/users/${id}/profile");
        assert_eq!(named.apply(None, "/u/42"), "/users/42/profile");
        assert_eq!(
            regex("^/x/(.*)$", "$1").apply(None, "/x/y"),
            "/y",
            "always starts with /"
        );
    }
}
