//! The request path cannot be used to get around a route: path normalisation, Host checks,
//! `Connection`-named headers, forwarding headers from untrusted clients, CONNECT and the
//! header size limit. The real binary, real sockets; the upstream is the raw stand-in, so the
//! exact header lines it received can be checked.

mod common;

use common::raw_upstream::RawUpstream;
use common::*;

const BASE: &str = "listen: 127.0.0.1:{PORT}\nadmin:\n  listen: 127.0.0.1:{ADMIN}\nlog:\n  level: error\n";

/// A `respond: 403` route on `/admin` in front of a catch-all upstream route.
fn guarded(extra: &str) -> (Gateway, RawUpstream) {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{BASE}{extra}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: admin\n    match: {{ path_prefix: /admin }}\n    respond: {{ status: 403, body: forbidden }}\n  - name: all\n    upstream: b\n",
        up.url()
    ));
    (gw, up)
}

/// `GET path` with the given extra header lines, on its own connection.
fn get(gw: &Gateway, path: &str, extra: &str) -> Reply {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n");
    raw_request(gw.addr(), req.as_bytes()).unwrap()
}

#[test]
fn dot_segments_repeated_slashes_and_escapes_cannot_get_around_a_route() {
    let (gw, up) = guarded("");
    for path in [
        "/admin/x",
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2e/admin/x",
        "/./admin/x",
        "//admin/x",
        "///admin//x",
        "/%61dmin/x",
        "/public/./../admin",
        "/../admin",
    ] {
        let r = get(&gw, path, "");
        assert_eq!((r.status, r.body.as_str()), (403, "forbidden"), "{path}");
    }
    // Ambiguous spellings are refused outright, with a body that says why.
    for (path, kind) in [
        ("/public/..%2fadmin/x", "path_encoded_slash"),
        ("/public/..%2Fadmin/x", "path_encoded_slash"),
        ("/public/..%5cadmin/x", "path_backslash"),
        ("/public/%00", "path_encoded_nul"),
        ("/public/%zz", "path_bad_escape"),
    ] {
        let r = get(&gw, path, "");
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        let body = r.json();
        assert_eq!(body["error"], kind, "{path}");
        assert!(body["message"].as_str().unwrap().contains("path"), "{body}");
    }
    // A raw backslash: refused, whichever layer sees it first.
    let r = raw_request(
        gw.addr(),
        b"GET /public/..\\admin/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(up.count(), 0, "nothing reached the upstream: {:?}", up.seen());
    let metrics = http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body;
    assert!(
        metrics.contains("fleetgate_requests_refused_total{reason=\"path_encoded_slash\"} 2"),
        "{metrics}"
    );

    // Other paths go upstream in their normal form; the query is left as sent.
    let r = get(&gw, "/public/a/../b//c/./%7euser%2d?q=/../x&y=%2e", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.wait_for(1);
    assert_eq!(seen[0].target, "/public/b/c/~user-?q=/../x&y=%2e");
    let r = get(&gw, "/public/caf%c3%a9", "");
    assert_eq!(r.status, 200);
    assert_eq!(up.wait_for(2)[1].target, "/public/caf%C3%A9");
}

#[test]
fn normalised_path_is_what_strip_prefix_and_the_upstream_see() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{BASE}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: b\n    strip_prefix: true\n",
        up.url()
    ));
    let r = get(&gw, "/x/../api//v1/./users", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.wait_for(1)[0].target, "/v1/users");
    // Outside the prefix once normalised: no route.
    assert_eq!(get(&gw, "/api/../other", "").status, 404);
}

#[test]
fn connection_cannot_remove_host_framing_or_forwarding_headers() {
    let (gw, up) = guarded("");
    let body = "hello";
    let req = format!(
        "POST /c HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: host, x-forwarded-for, x-forwarded-proto, x-forwarded-host, content-length, x-drop-me, keep-alive\r\nConnection: close, Host\r\nX-Drop-Me: 1\r\nX-Keep-Me: 2\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = raw_request(gw.addr(), req.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let s = &up.wait_for(1)[0];
    s.assert_clean();
    assert_eq!(s.one("host"), "127.0.0.1");
    assert_eq!(s.one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(s.one("x-forwarded-proto"), "http");
    assert_eq!(s.one("x-forwarded-host"), "127.0.0.1");
    assert_eq!(s.one("content-length"), "5");
    assert_eq!(s.body, body.as_bytes());
    // What Connection may name: an end-to-end header the client sent, which goes.
    assert!(!s.has("x-drop-me"), "{:?}", s.headers);
    assert_eq!(s.one("x-keep-me"), "2");
    assert!(!s.has("connection") && !s.has("keep-alive"), "{:?}", s.headers);
}

#[test]
fn host_must_be_single_present_and_agree_with_an_absolute_target() {
    let (gw, up) = guarded("");
    let send = |raw: String| raw_request(gw.addr(), raw.as_bytes()).unwrap();
    let r = send("GET /h HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".into());
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("duplicate_host")),
        "{}",
        r.body
    );
    let r = send("GET /h HTTP/1.1\r\nConnection: close\r\n\r\n".into());
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("missing_host")),
        "{}",
        r.body
    );
    let r = send("GET /h HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n".into());
    assert_eq!(r.status, 400, "{}", r.body);
    let r = send("GET /h HTTP/1.1\r\nHost: user@127.0.0.1\r\nConnection: close\r\n\r\n".into());
    assert_eq!(r.status, 400, "{}", r.body);
    // Absolute form must name the same authority as Host.
    let r = send("GET http://evil.example/h HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".into());
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("host_mismatch")),
        "{}",
        r.body
    );
    let r = send("GET http://127.0.0.1:81/h HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".into());
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("host_mismatch")),
        "{}",
        r.body
    );
    let r = send("GET http://u:p@127.0.0.1/h HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".into());
    assert_eq!(r.status, 400, "{}", r.body);
    // The absolute form cannot reach a guarded route's path either.
    let r = send("GET http://127.0.0.1/x/../admin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".into());
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(up.count(), 0, "{:?}", up.seen());

    // Agreeing forms are forwarded in origin form; the default port and case do not matter.
    let r = send("GET http://LOCALHOST:80/ok?x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into());
    assert_eq!(r.status, 200, "{}", r.body);
    let s = &up.wait_for(1)[0];
    assert_eq!(s.target, "/ok?x=1");
    assert_eq!(s.one("host"), "localhost");
    // HTTP/1.0 may leave Host out.
    let r = send("GET /old HTTP/1.0\r\n\r\n".into());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.wait_for(2)[1].target, "/old");
}

const SPOOFED: &str = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6;host=evil.example;proto=https\r\nX-Real-IP: 6.6.6.6\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nTrue-Client-IP: 6.6.6.6\r\nX-Forwarded-Port: 443\r\n";

#[test]
fn forwarding_headers_from_an_untrusted_client_are_replaced_or_removed() {
    let (gw, up) = guarded("");
    let r = get(&gw, "/f", SPOOFED);
    assert_eq!(r.status, 200, "{}", r.body);
    let s = &up.wait_for(1)[0];
    assert_eq!(s.one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(s.one("x-forwarded-proto"), "http");
    assert_eq!(s.one("x-forwarded-host"), "127.0.0.1");
    for name in [
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "true-client-ip",
        "x-forwarded-port",
    ] {
        assert!(
            !s.has(name),
            "{name} from an untrusted client reached the upstream: {:?}",
            s.headers
        );
    }
    // Without a Host (HTTP/1.0), the client's X-Forwarded-Host is not kept either.
    let r = raw_request(
        gw.addr(),
        b"GET /f10 HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let s = &up.wait_for(2)[1];
    assert!(!s.has("x-forwarded-host"), "{:?}", s.headers);
    assert_eq!(s.one("x-forwarded-proto"), "http");
    assert_eq!(s.one("x-forwarded-for"), "127.0.0.1");
}

#[test]
fn forwarding_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let (gw, up) = guarded("trusted_proxies: [127.0.0.1/32]\n");
    let r = get(&gw, "/t", &format!("{SPOOFED}X-Forwarded-For: 10.0.0.7\r\n"));
    assert_eq!(r.status, 200, "{}", r.body);
    let s = &up.wait_for(1)[0];
    // Every earlier hop is kept, in order, and the proxy itself is appended.
    assert_eq!(s.one("x-forwarded-for"), "6.6.6.6, 10.0.0.7, 127.0.0.1");
    assert_eq!(s.one("x-forwarded-proto"), "https");
    assert_eq!(s.one("x-forwarded-host"), "evil.example");
    assert_eq!(s.one("forwarded"), "for=6.6.6.6;host=evil.example;proto=https");
    assert_eq!(s.one("x-real-ip"), "6.6.6.6");
}

#[test]
fn connect_is_refused_with_405() {
    let (gw, up) = guarded("");
    let r = raw_request(
        gw.addr(),
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert!(!r.header("allow").unwrap_or_default().contains("CONNECT"));
    assert_eq!(up.count(), 0, "{:?}", up.seen());
}

#[test]
fn max_header_bytes_below_hypers_floor_is_enforced() {
    let (gw, up) = guarded("server:\n  max_header_bytes: 1024\n");
    // About 600 bytes of head: within the limit.
    let r = get(&gw, "/small", &format!("X-Pad: {}\r\n", "a".repeat(500)));
    assert_eq!(r.status, 200, "{}", r.body);
    // About 1500 bytes: over it, though far below the 8 KiB hyper would enforce alone.
    let r = get(&gw, "/big", &format!("X-Pad: {}\r\n", "a".repeat(1400)));
    assert_eq!(r.status, 431, "{}", r.body);
    assert_eq!(r.json()["error"], "header_too_large");
    // Many small headers add up the same way.
    let many: String = (0..60).map(|i| format!("X-H{i}: {}\r\n", "b".repeat(20))).collect();
    assert_eq!(get(&gw, "/many", &many).status, 431);
    // A long request target counts too.
    let long = format!("/long?{}", "c".repeat(1200));
    assert_eq!(get(&gw, &long, "").status, 431);
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/small");
}
