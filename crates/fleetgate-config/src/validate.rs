//! The file as a whole: its top level, and the checks that span fields or sections (listeners,
//! ordered pairs, store URLs against TLS, upstream names, unique names, route targets), each
//! refusal naming the field and located through [`Locator`].

use crate::locate::Locator;
use crate::model::*;
use fleetgate_http::key::NAME_ACCEPTED;
use fleetgate_store::Keyspace;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// A refusal: the field path shown, the path whose place is shown (`""`: none), why.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub path: String,
    pub at: String,
    pub message: String,
    /// Point at the key rather than its value when the value starts on a later line (where a
    /// person looks for `tls:`, not its first entry).
    pub at_key: bool,
}

pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Invalid {
    let path = path.into();
    Invalid {
        at: path.clone(),
        path,
        message: message.into(),
        at_key: false,
    }
}

/// Checks what spans fields or sections, fills in what is resolved (the concerns' stores,
/// upstream names, route targets) and applies the `REDIS_URL` override (`redis_url`, when
/// non-empty). A section whose type checks itself needs nothing here.
pub(crate) fn validate(mut config: Config, redis_url: Option<&str>, loc: &Locator) -> Result<Config, Invalid> {
    let (listen, admin) = (config.listen, &config.admin);
    if admin.listen == listen && listen.port() != 0 {
        return Err(invalid(
            "admin.listen",
            format!(
                "{} is also `listen`; the admin listener needs its own address; accepted: another IP:PORT, e.g. 127.0.0.1:9090",
                admin.listen
            ),
        ));
    }
    let store = &config.store;
    ordered(
        loc,
        "store.reconnect_min_ms",
        store.reconnect_min,
        "store.reconnect_max_ms",
        store.reconnect_max,
    )?;
    let (b, min, max) = (
        &store.breaker,
        "store.breaker.min_backoff_ms",
        "store.breaker.max_backoff_ms",
    );
    ordered(loc, min, b.min_backoff, max, b.max_backoff)?;
    let (store, overrides) = (
        std::mem::take(&mut config.store),
        std::mem::take(&mut config.store_overrides),
    );
    (config.store, config.stores) = crate::store::resolve(store, overrides, redis_url)?;
    for (name, up) in &mut config.upstreams {
        if Keyspace::check_scope(name).is_err() {
            return Err(invalid(
                format!("upstreams.{name}"),
                format!("upstream name {name:?} is not accepted; accepted: {NAME_ACCEPTED}"),
            ));
        }
        up.name = name.clone();
        if up.tls != Default::default() && !up.targets.iter().any(|t| t.tls) {
            return Err(invalid(
                format!("upstreams.{name}.tls"),
                format!("upstream {name:?} sets `tls` but none of its targets is https://; accepted: https:// targets (e.g. https://api.internal:443), or no `tls`"),
            ));
        }
    }
    if let Some(tls) = &config.tls {
        if tls.listen.port() != 0 && (tls.listen == config.listen || tls.listen == config.admin.listen) {
            return Err(invalid(
                "tls.listen",
                format!("tls.listen {} is also the address of `listen` or `admin.listen`; accepted: an address of its own, e.g. 127.0.0.1:8443", tls.listen),
            ));
        }
    }
    let global = config.global_rate_limits.iter().map(|l| l.name.as_str());
    unique(loc, "rate_limits", global)?;
    let mut seen = HashMap::new();
    for (i, r) in config.routes.iter_mut().enumerate() {
        let path = format!("routes[{i}]");
        if let Some(j) = seen.insert(r.name.clone(), i) {
            return Err(duplicate(loc, "routes", "route", "among routes", (j, i), &r.name));
        }
        let name = &r.name;
        r.target = match (r.upstream.take(), r.respond.take()) {
            (Some(_), Some(_)) => {
                let (u, resp) = (loc.line_of(&format!("{path}.upstream"), ""), loc.line_of(&format!("{path}.respond"), ""));
                return Err(Invalid {
                    at: format!("{path}.respond"),
                    ..invalid(&path, format!("route {name:?} has both `upstream`{u} and `respond`{resp}; accepted: exactly one of them"))
                });
            }
            (None, None) => {
                return Err(invalid(&path, format!(
                    "route {name:?} has neither `upstream` nor `respond`; accepted: exactly one of `upstream: NAME` ({}) or `respond: {{ status: 200, body: \"ok\" }}`",
                    defined_upstreams(&config.upstreams)
                )))
            }
            (Some(u), None) if !config.upstreams.contains_key(&u) => {
                return Err(invalid(
                    format!("{path}.upstream"),
                    format!("upstream {u:?} is not defined; accepted: {}", defined_upstreams(&config.upstreams)),
                ))
            }
            (Some(u), None) => RouteTarget::Upstream(u),
            (None, Some(resp)) => resp.into(),
        };
        if r.strip_prefix && r.matcher.path_prefix.is_none() {
            return Err(invalid(
                format!("{path}.strip_prefix"),
                "strip_prefix: true needs match.path_prefix; accepted: false, or add a path_prefix",
            ));
        }
        match &r.rewrite {
            Some(_) if r.strip_prefix => {
                return Err(invalid(
                    format!("{path}.rewrite"),
                    format!("rewrite and strip_prefix: true cannot be combined{}; accepted: one of them (rewrite: {{ prefix: / }} strips the prefix too)", loc.line_of(&format!("{path}.strip_prefix"), "")),
                ))
            }
            Some(Rewrite::Prefix(_)) if r.matcher.path_prefix.is_none() => {
                return Err(invalid(
                    format!("{path}.rewrite.prefix"),
                    "rewrite.prefix replaces match.path_prefix, and this route has none; accepted: add a match.path_prefix, or use rewrite: { regex: ..., replace: ... }",
                ))
            }
            _ => {}
        }
        unique(
            loc,
            &format!("{path}.rate_limits"),
            r.rate_limits.iter().map(|l| l.name.as_str()),
        )?;
        let concurrency = r.concurrency_limits.iter().map(|l| l.name.as_str());
        unique(loc, &format!("{path}.concurrency_limits"), concurrency)?;
    }
    Ok(config)
}

/// Limit names unique within the list at `path`.
fn unique<'a>(loc: &Locator, path: &str, names: impl Iterator<Item = &'a str>) -> Result<(), Invalid> {
    let mut seen = HashMap::new();
    for (i, name) in names.enumerate() {
        if let Some(j) = seen.insert(name, i) {
            return Err(duplicate(loc, path, "limit", "within the list", (j, i), name));
        }
    }
    Ok(())
}

/// Item `i` of the list at `path` has the name of item `j`.
fn duplicate(loc: &Locator, path: &str, what: &str, among: &str, (j, i): (usize, usize), name: &str) -> Invalid {
    let first = loc.line_of(&format!("{path}[{j}].name"), "");
    invalid(
        format!("{path}[{i}].name"),
        format!("{what} name {name:?} is already used by {path}[{j}]{first}; accepted: a name unique {among}"),
    )
}

/// `low <= high` for a pair of millisecond fields; blames the maximum when it is written, else
/// the minimum.
fn ordered(loc: &Locator, lo_path: &str, lo: Duration, hi_path: &str, hi: Duration) -> Result<(), Invalid> {
    if lo <= hi {
        return Ok(());
    }
    let name = |p: &str| p.rsplit('.').next().unwrap_or(p).to_string();
    let (lo_name, hi_name, lo, hi) = (name(lo_path), name(hi_path), lo.as_millis(), hi.as_millis());
    Err(match loc.find(hi_path) {
        Some(_) => invalid(hi_path, format!(
            "{hi_name} {hi} is below {lo_name} {lo}{}; accepted: a whole number of milliseconds from {lo_name} ({lo}) to 604800000",
            loc.line_of(lo_path, " (the default)")
        )),
        None => invalid(lo_path, format!(
            "{lo_name} {lo} is above {hi_name} {hi} (the default); accepted: at most {hi} ms, or also set {hi_name} to {lo} or more"
        )),
    })
}

fn defined_upstreams(upstreams: &BTreeMap<String, UpstreamConfig>) -> String {
    if upstreams.is_empty() {
        return "the name of an upstream defined under `upstreams:` (none is defined yet)".to_string();
    }
    let names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
    format!("one of the defined upstreams: {}", names.join(", "))
}
