//! Proxy features in the file: header rules, rewrites, header and query matching, and the
//! upstream's balance, affinity and retries: what is read, and located refusals.

use fleetgate_config::{parse, Balance, HeaderCondition, Rewrite};
use std::time::Duration;

const UP: &str = "upstreams:\n  b:\n    targets: [http://127.0.0.1:3000]\n";

/// A route `r` to upstream `b` with `lines` added (each indented under the route).
fn route(lines: &str) -> String {
    let mut s = format!("{UP}routes:\n  - name: r\n    upstream: b\n");
    for l in lines.lines() {
        s.push_str("    ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// Upstream `b` with `lines` added, and a route to it.
fn upstream(lines: &str) -> String {
    let mut s = UP.to_string();
    for l in lines.lines() {
        s.push_str("    ");
        s.push_str(l);
        s.push('\n');
    }
    s.push_str("routes:\n  - name: r\n    upstream: b\n");
    s
}

#[track_caller]
fn refused(text: &str, line: u32, path: &str, needle: &str) {
    let err = parse(text, "t.yaml").expect_err("should be refused");
    let shown = err.to_string();
    assert_eq!(err.path(), Some(path), "{shown}");
    assert_eq!(err.line(), Some(line), "{shown}");
    assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
}

#[test]
fn header_rules_are_read_in_order_with_lowercase_names() {
    let c = parse(
        &route("request_headers: { set: { X-Gateway: fg, host: h.example }, add: { x-a: \"1\" }, remove: [X-Debug] }\nresponse_headers: { set: { x-frame-options: DENY } }"),
        "t.yaml",
    )
    .unwrap();
    let r = &c.routes[0];
    let names = |v: &[(http::HeaderName, http::HeaderValue)]| {
        v.iter()
            .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&r.request_headers.set), ["x-gateway=fg", "host=h.example"]);
    assert_eq!(names(&r.request_headers.add), ["x-a=1"]);
    assert_eq!(r.request_headers.remove, ["x-debug"]);
    assert_eq!(names(&r.response_headers.set), ["x-frame-options=DENY"]);
    assert!(parse(&route(""), "t.yaml").unwrap().routes[0]
        .request_headers
        .is_empty());
}

#[test]
fn bad_header_rules_are_refused_where_written() {
    refused(
        &route("request_headers: { set: { \"bad name\": x } }"),
        7,
        "routes[0].request_headers.set.bad name",
        "is not a header name",
    );
    refused(
        &route("request_headers:\n  add:\n    x-a: \"caf\u{e9}\""),
        9,
        "routes[0].request_headers.add.x-a",
        "non-ASCII",
    );
    refused(
        &route("request_headers: { remove: [connection] }"),
        7,
        "routes[0].request_headers.remove[0]",
        "hop-by-hop",
    );
    refused(
        &route("response_headers: { set: { transfer-encoding: chunked } }"),
        7,
        "routes[0].response_headers.set.transfer-encoding",
        "cannot be edited",
    );
    refused(
        &route("request_headers: { set: { content-length: \"5\" } }"),
        7,
        "routes[0].request_headers.set.content-length",
        "framing",
    );
    refused(
        &route("request_headers: { remove: [host] }"),
        7,
        "routes[0].request_headers.remove[0]",
        "host can only be set",
    );
    refused(
        &route("response_headers: { set: { host: x } }"),
        7,
        "routes[0].response_headers.set.host",
        "host is a request header",
    );
    refused(
        &route("request_headers: { set: { x-a: \"1\" }, remove: [X-A] }"),
        7,
        "routes[0].request_headers.remove[0]",
        "already in `set`",
    );
    refused(
        &route("request_headers: { sett: { x-a: \"1\" } }"),
        7,
        "routes[0].request_headers.sett",
        "did you mean `set`?",
    );
    refused(
        &route("request_headers: {}"),
        7,
        "routes[0].request_headers",
        "at least one of set, add and remove",
    );
}

#[test]
fn rewrites_are_read_and_checked() {
    let c = parse(
        &route("match: { path_prefix: /api }\nrewrite: { prefix: /v2 }"),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.routes[0].rewrite, Some(Rewrite::Prefix("/v2".into())));
    assert_eq!(c.routes[0].upstream_path("/api/x?q=1"), "/v2/x?q=1");
    let c = parse(
        &route("rewrite: { regex: \"^/old/(.*)$\", replace: \"/new/$1\" }"),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.routes[0].upstream_path("/old/a?b=c"), "/new/a?b=c");

    refused(
        &route("match: { path_prefix: /api }\nstrip_prefix: true\nrewrite: { prefix: /v2 }"),
        9,
        "routes[0].rewrite",
        "cannot be combined",
    );
    refused(
        &route("rewrite: { prefix: /v2 }"),
        7,
        "routes[0].rewrite.prefix",
        "has none",
    );
    refused(
        &route("match: { path_prefix: /api }\nrewrite: { prefix: v2 }"),
        8,
        "routes[0].rewrite.prefix",
        "not a path prefix",
    );
    refused(
        &route("rewrite: { regex: \"^/(\", replace: /x }"),
        7,
        "routes[0].rewrite.regex",
        "is not a regular expression",
    );
    refused(
        &route("rewrite: { regex: \"^/(a)$\", replace: /x/$2 }"),
        7,
        "routes[0].rewrite.replace",
        "names capture \"2\"",
    );
    refused(
        &route("rewrite: { regex: \"^/(?P<id>a)$\", replace: \"/x/$${name}\" }"),
        7,
        "routes[0].rewrite.replace",
        "named id",
    );
    refused(
        &route("rewrite: { regex: \"^/a$\" }"),
        7,
        "routes[0].rewrite",
        "regex needs replace",
    );
    refused(
        &route("rewrite: { prefix: /a, regex: x, replace: /y }"),
        7,
        "routes[0].rewrite",
        "cannot be combined",
    );
    refused(&route("rewrite: {}"), 7, "routes[0].rewrite", "no rewrite given");
}

#[test]
fn header_and_query_conditions() {
    let c = parse(
        &route("match: { path_prefix: /web, headers: { X-Tenant: acme, x-debug: true, x-old: false, x-v: 2 }, query: { channel: beta } }"),
        "t.yaml",
    )
    .unwrap();
    let m = &c.routes[0].matcher;
    let conds: Vec<(String, HeaderCondition)> = m.headers.iter().map(|(n, c)| (n.to_string(), c.clone())).collect();
    assert!(
        conds.contains(&("x-tenant".into(), HeaderCondition::Equals("acme".into()))),
        "{conds:?}"
    );
    assert!(conds.contains(&("x-debug".into(), HeaderCondition::Present)));
    assert!(conds.contains(&("x-old".into(), HeaderCondition::Absent)));
    assert!(conds.contains(&("x-v".into(), HeaderCondition::Equals("2".into()))));
    assert_eq!(m.query, [("channel".to_string(), "beta".to_string())]);

    refused(
        &route("match: { headers: { \"a b\": x } }"),
        7,
        "routes[0].match.headers.a b",
        "not a header name",
    );
    refused(
        &route("match: { headers: { x-a: 1, X-A: 2 } }"),
        7,
        "routes[0].match.headers.x-a",
        "given twice",
    );
    refused(
        &route("match: { query: { v: true } }"),
        7,
        "routes[0].match.query.v",
        "exact value",
    );
}

#[test]
fn balance_affinity_and_retries_are_read_with_defaults() {
    let c = parse(UP.to_string().as_str(), "t.yaml").unwrap();
    let u = &c.upstreams["b"];
    assert_eq!(u.balance, Balance::RoundRobin);
    assert!(u.affinity.is_none() && u.retries.is_none());

    let c = parse(
        &upstream("balance: least_request\naffinity: { cookie: fg_t, ttl: 1h, secure: true }\nretries: { attempts: 3, budget: 25%, min_per_second: 2 }"),
        "t.yaml",
    )
    .unwrap();
    let u = &c.upstreams["b"];
    assert_eq!(u.balance, Balance::LeastRequest);
    let a = u.affinity.as_ref().unwrap();
    assert_eq!(
        (a.cookie.as_str(), a.ttl, a.secure),
        ("fg_t", Some(Duration::from_secs(3600)), true)
    );
    let r = u.retries.as_ref().unwrap();
    assert_eq!((r.attempts, r.budget_percent, r.min_per_second), (3, 25, 2));
    let c = parse(&upstream("affinity: { cookie: sticky }\nretries: {}"), "t.yaml").unwrap();
    let u = &c.upstreams["b"];
    assert_eq!(u.affinity.as_ref().unwrap().ttl, None);
    let r = u.retries.as_ref().unwrap();
    assert_eq!((r.attempts, r.budget_percent, r.min_per_second), (2, 20, 10));
}

#[test]
fn bad_balance_affinity_and_retries_are_refused_where_written() {
    refused(&upstream("balance: random"), 4, "upstreams.b.balance", "round_robin");
    refused(
        &upstream("affinity: { cookie: \"a b\" }"),
        4,
        "upstreams.b.affinity.cookie",
        "not a cookie name",
    );
    refused(
        &upstream("affinity: { ttl: 1h }"),
        4,
        "upstreams.b.affinity.cookie",
        "missing required field `cookie`",
    );
    refused(
        &upstream("affinity: { cookie: c, ttl: 10 }"),
        4,
        "upstreams.b.affinity.ttl",
        "has no unit",
    );
    refused(
        &upstream("retries: { attempts: 1 }"),
        4,
        "upstreams.b.retries.attempts",
        "out of range",
    );
    refused(
        &upstream("retries: { budget: 120% }"),
        4,
        "upstreams.b.retries.budget",
        "not a percentage",
    );
    refused(
        &upstream("retries: { budget: \"20\" }"),
        4,
        "upstreams.b.retries.budget",
        "e.g. 20%",
    );
    refused(
        &upstream("retries: { min_per_second: -1 }"),
        4,
        "upstreams.b.retries.min_per_second",
        "out of range",
    );
}
