//! Operations, end to end over real sockets with the real binary: `X-Request-Id`, the JSON
//! access log, the duration histogram and upstream error counter, W3C trace context, and
//! configuration reload on SIGHUP.

mod common;

use common::raw_upstream::RawUpstream;
use common::{free_port, http_get, Gateway, Upstream};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn head(log: &str) -> String {
    format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\nlog:\n  level: info\n  access_log: {log}\n"
    )
}

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fleetgate-ops-{name}-{}.log", std::process::id()))
}

/// Waits (bounded) until the log holds `n` lines that contain `needle`; returns them.
fn wait_lines(log: &Path, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "the log has {} of {n} lines with {needle:?}:\n{text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn metrics(gw: &Gateway) -> String {
    http_get(gw.admin_addr(), "/metrics", &[]).unwrap().body
}

#[test]
fn request_ids_are_generated_kept_from_trusted_proxies_forwarded_and_returned() {
    let upstream = RawUpstream::start();
    let routes = format!(
        "upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: b\n  - name: limited\n    match: {{ path_prefix: /limited }}\n    respond: {{ status: 200, body: ok }}\n    rate_limits:\n      - {{ name: one, key: global, rate: 1/1h }}\n",
        upstream.url()
    );
    // Loopback is not trusted here: a client's id is replaced.
    let untrusted = Gateway::start(&format!("{}{routes}", head("false")));
    let r = untrusted.get("/api/a", &[("x-request-id", b"client-chosen")]);
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").expect("every response has an id").to_string();
    assert!(is_hex_id(&id), "generated: {id}");
    let seen = upstream.wait_for(1);
    assert_eq!(
        seen[0].one("x-request-id"),
        id,
        "the upstream gets the id the client gets"
    );
    // A client's `Connection` cannot strip what the gateway adds.
    let again = untrusted.get("/api/a", &[("connection", b"x-request-id, traceparent")]);
    let second = again.header("x-request-id").unwrap();
    assert!(is_hex_id(second) && second != id, "each request gets its own id");
    let seen = upstream.wait_for(2);
    assert_eq!(seen[1].one("x-request-id"), second);
    assert!(seen[1].has("traceparent"), "{:?}", seen[1].headers);
    // Gateway-made answers carry one too: a 404, a respond route, a 429.
    for (path, status) in [("/nowhere", 404), ("/limited", 200), ("/limited", 429)] {
        let r = untrusted.get(path, &[]);
        assert_eq!(r.status, status, "{path}");
        assert!(
            is_hex_id(r.header("x-request-id").unwrap_or("")),
            "{path}: {:?}",
            r.headers
        );
    }
    drop(untrusted);

    // Loopback trusted: a sane id is kept, end to end.
    let trusted = Gateway::start(&format!("{}trusted_proxies: [127.0.0.1]\n{routes}", head("false")));
    let r = trusted.get("/api/b", &[("x-request-id", b"lb-7f3a.42")]);
    assert_eq!(r.header("x-request-id"), Some("lb-7f3a.42"));
    let seen = upstream.wait_for(3);
    assert_eq!(seen[2].one("x-request-id"), "lb-7f3a.42");
    // Not sane (a space, or too long): replaced, and the upstream sees the replacement only.
    let long = "x".repeat(129);
    for bad in ["has space".as_bytes(), long.as_bytes()] {
        let r = trusted.get("/api/c", &[("x-request-id", bad)]);
        let id = r.header("x-request-id").unwrap().to_string();
        assert!(is_hex_id(&id), "{id}");
        let seen = upstream.seen();
        assert_eq!(seen.last().unwrap().one("x-request-id"), id);
    }
}

#[test]
fn the_json_access_log_has_one_parsable_line_per_request_with_its_fields() {
    let upstream = Upstream::start("json");
    let log = log_path("json");
    let gw = Gateway::start_with_log(
        &format!(
            "{}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    upstream: b\n    rate_limits:\n      - {{ name: per-ip, key: ip, rate: 2/1h }}\n",
            head("json"),
            upstream.url()
        ),
        &log,
    );
    let ids: Vec<String> = (0..3)
        .map(|_| {
            gw.get("/api/thing?secret=1", &[])
                .header("x-request-id")
                .unwrap()
                .to_string()
        })
        .collect();
    let lines = wait_lines(&log, "\"request_id\"", 3);
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}")))
        .collect();
    for (rec, id) in records.iter().zip(&ids) {
        assert_eq!(rec["request_id"], id.as_str());
        assert_eq!(rec["method"], "GET");
        assert_eq!(rec["path"], "/api/thing", "the query is left out");
        assert_eq!(rec["protocol"], "HTTP/1.1");
        assert_eq!(rec["route"], "api");
        assert_eq!(rec["client_ip"], "127.0.0.1");
        assert!(rec["duration_ms"].as_f64().unwrap() > 0.0, "{rec}");
        assert_eq!(rec["completed"], true);
        assert!(rec["bytes_out"].as_u64().unwrap() > 0, "{rec}");
        assert!(rec["unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(
            is_hex_id(rec["trace_id"].as_str().unwrap_or("")) || rec["status"] == 429,
            "{rec}"
        );
    }
    // Two allowed and proxied, then the limit refuses.
    for rec in &records[..2] {
        assert_eq!(rec["status"], 200);
        assert_eq!(rec["upstream"], "b");
        assert_eq!(rec["target"], upstream.url());
        assert_eq!(rec["bytes_out"], "upstream:json".len());
        assert!(rec["upstream_ms"].as_f64().unwrap() > 0.0, "{rec}");
        assert!(rec["limited_by"].is_null());
        assert!(rec["ratelimit"].as_str().unwrap().contains("\"per-ip\";r="), "{rec}");
    }
    assert!(records[0]["ratelimit"].as_str().unwrap().starts_with("\"per-ip\";r=1;"));
    let refused = &records[2];
    assert_eq!(refused["status"], 429);
    assert_eq!(refused["limited_by"], "per-ip");
    assert_eq!(refused["limit_error"], "rate_limited");
    assert!(refused["upstream"].is_null() && refused["upstream_ms"].is_null());
    drop(gw);
    let _ = std::fs::remove_file(&log);
}

#[test]
fn the_duration_histogram_and_the_upstream_error_counter_are_in_metrics() {
    let dead = free_port();
    let live = Upstream::start("alive");
    let gw = Gateway::start(&format!(
        "{}upstreams:\n  gone:\n    targets: [http://127.0.0.1:{dead}]\n  up:\n    targets: [{}]\nroutes:\n  - name: dead\n    match: {{ path_prefix: /dead }}\n    upstream: gone\n  - name: fine\n    match: {{ path_prefix: /fine }}\n    upstream: up\n",
        head("false"),
        live.url()
    ));
    assert_eq!(gw.get("/dead", &[]).status, 502);
    assert_eq!(gw.get("/dead", &[]).status, 502);
    assert_eq!(gw.get("/fine", &[]).status, 200);
    let m = metrics(&gw);
    let errors = common::metric_sum(
        &m,
        "fleetgate_upstream_errors_total{upstream=\"gone\",reason=\"connect\"}",
    );
    assert_eq!(errors, 2.0, "{m}");
    assert_eq!(
        common::metric_sum(&m, "fleetgate_upstream_errors_total{upstream=\"up\""),
        0.0
    );
    for route in ["dead", "fine"] {
        let count = common::metric_sum(
            &m,
            &format!("fleetgate_request_duration_seconds_count{{route=\"{route}\"}}"),
        );
        let want = if route == "dead" { 2.0 } else { 1.0 };
        assert_eq!(count, want, "{route}: {m}");
        assert!(
            m.contains(&format!(
                "fleetgate_request_duration_seconds_bucket{{route=\"{route}\",le=\"0.005\"}}"
            )),
            "{route} has buckets: {m}"
        );
    }
}

#[test]
fn traceparent_keeps_the_trace_id_and_gets_a_new_parent_or_starts_a_trace() {
    let upstream = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}upstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: api\n    upstream: b\n",
        head("false"),
        upstream.url()
    ));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        gw.get(
            "/a",
            &[
                ("traceparent", incoming.as_bytes()),
                ("tracestate", b"congo=t61rcWkgMzE")
            ]
        )
        .status,
        200
    );
    assert_eq!(gw.get("/b", &[]).status, 200);
    assert_eq!(
        gw.get(
            "/c",
            &[("traceparent", b"00-zz-bad"), ("tracestate", b"congo=t61rcWkgMzE")]
        )
        .status,
        200
    );
    let seen = upstream.wait_for(3);
    let continued = seen[0].one("traceparent");
    assert_eq!(continued.len(), 55, "{continued}");
    assert_eq!(&continued[..36], &incoming[..36], "same version and trace id");
    assert_ne!(
        &continued[36..52],
        &incoming[36..52],
        "a new parent id: the gateway's span"
    );
    assert_ne!(&continued[36..52], "0000000000000000");
    assert_eq!(&continued[52..], "-01", "the flags are kept");
    assert_eq!(seen[0].one("tracestate"), "congo=t61rcWkgMzE");
    for fresh in [&seen[1], &seen[2]] {
        let tp = fresh.one("traceparent");
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[0], "00");
        assert!(parts[1].len() == 32 && parts[1] != "0".repeat(32), "{tp}");
        assert!(parts[2].len() == 16, "{tp}");
    }
    assert_ne!(seen[1].one("traceparent")[3..35], seen[2].one("traceparent")[3..35]);
    assert!(
        !seen[2].has("tracestate"),
        "tracestate goes with an invalid traceparent"
    );
}

/// One request on an open keep-alive connection; the status and body.
fn keepalive_get(stream: &mut BufReader<TcpStream>, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.get_mut().write_all(req.as_bytes()).unwrap();
    let mut status_line = String::new();
    stream.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}: was the connection dropped?"));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
            assert!(
                !(k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")),
                "the gateway closes the connection: {line}"
            );
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn sighup(gw: &Gateway) {
    let pid = gw.child.as_ref().expect("running").id();
    let status = Command::new("kill").arg("-HUP").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

fn write_config(gw: &Gateway, yaml: &str) {
    let text = yaml
        .replace("{PORT}", &gw.port.to_string())
        .replace("{ADMIN}", &gw.admin_port.to_string());
    std::fs::write(&gw.config_path, text).unwrap();
}

#[test]
fn sighup_reloads_a_valid_file_without_dropping_connections_and_refuses_an_invalid_one() {
    let old_up = Upstream::start("old");
    let new_up = Upstream::start("new");
    let log = log_path("reload");
    let config = |body: &str, upstream: &str| {
        format!(
            "{}upstreams:\n  b:\n    targets: [{upstream}]\nroutes:\n  - name: hello\n    match: {{ path_prefix: /hello }}\n    respond: {{ status: 200, body: {body} }}\n    rate_limits:\n      - {{ name: four, key: global, rate: 4/1h }}\n  - name: api\n    upstream: b\n",
            head("text")
        )
    };
    let gw = Gateway::start_with_log(&config("one", &old_up.url()), &log);
    let mut kept = BufReader::new(TcpStream::connect(gw.addr()).unwrap());
    kept.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(keepalive_get(&mut kept, "/hello"), (200, "one".into()));
    assert_eq!(keepalive_get(&mut kept, "/hello"), (200, "one".into()));
    // A request in flight across the reload, held by the old upstream.
    let addr = gw.addr();
    let held = std::thread::spawn(move || http_get(addr, "/hold", &[]).unwrap());
    old_up.wait_for_hits(1);

    write_config(&gw, &config("two", &new_up.url()));
    sighup(&gw);
    wait_lines(&log, "configuration reloaded", 1);
    // The connection opened before the reload serves the new configuration.
    assert_eq!(keepalive_get(&mut kept, "/hello"), (200, "two".into()));
    assert_eq!(gw.get("/hello", &[]).body, "two");
    assert_eq!(gw.get("/api", &[]).body, "upstream:new");
    // The limit kept its state across the reload: two before, two after, then refused.
    assert_eq!(keepalive_get(&mut kept, "/hello").0, 429);
    // The request in flight finishes under the old configuration.
    old_up.release();
    let done = held.join().unwrap();
    assert_eq!(done.status, 200, "{done:?}");
    let m = metrics(&gw);
    assert_eq!(
        common::metric_sum(&m, "fleetgate_config_reloads_total{outcome=\"applied\"}"),
        1.0
    );

    // An invalid file: refused with check's error, the old configuration keeps serving.
    let broken = config("three", &new_up.url()).replace("rate: 4/1h", "rate: 4/1fortnight");
    write_config(&gw, &broken);
    let check = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .arg("check")
        .arg("--config")
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert!(!check.status.success());
    let check_err = String::from_utf8_lossy(&check.stderr).to_string();
    let first = check_err
        .lines()
        .next()
        .unwrap()
        .strip_prefix("error: ")
        .expect("check's error line")
        .to_string();
    sighup(&gw);
    let refused = wait_lines(&log, "configuration reload refused", 1);
    assert!(
        refused[0].contains(&first),
        "the log has check's error {first:?}: {refused:?}"
    );
    let r = gw.get("/api", &[]);
    assert_eq!(r.body, "upstream:new", "the last good configuration serves");
    assert_eq!(keepalive_get(&mut kept, "/hello").0, 429, "still the same limit state");
    let m = metrics(&gw);
    assert_eq!(
        common::metric_sum(&m, "fleetgate_config_reloads_total{outcome=\"invalid\"}"),
        1.0
    );

    // A file that moves the listener needs a restart: refused whole, with the fields named.
    let moved = config("four", &new_up.url()).replace("{PORT}", &free_port().to_string());
    write_config(&gw, &moved);
    sighup(&gw);
    let lines = wait_lines(&log, "take effect only on a restart", 1);
    assert!(lines[0].contains("listen"), "{lines:?}");
    assert_eq!(gw.get("/hello", &[]).status, 429, "the old configuration still serves");
    let m = metrics(&gw);
    assert_eq!(
        common::metric_sum(&m, "fleetgate_config_reloads_total{outcome=\"restart_required\"}"),
        1.0
    );
    drop(gw);
    let _ = std::fs::remove_file(&log);
}

/// One POST the collector received: path, content type, body.
type Post = (String, String, Vec<u8>);

/// A stand-in OTLP collector: records every POST and answers 200 with an empty
/// `ExportTraceServiceResponse`.
struct Collector {
    port: u16,
    posts: std::sync::Arc<parking_lot::Mutex<Vec<Post>>>,
}

impl Collector {
    fn start() -> Collector {
        use http_body_util::BodyExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let posts = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = posts.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let ct = req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes().to_vec())
                                    .unwrap_or_default();
                                seen.lock().push((path, ct, body));
                                let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                                resp.headers_mut()
                                    .insert("content-type", "application/x-protobuf".parse().unwrap());
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        Collector { port, posts }
    }
}

#[test]
fn otlp_export_sends_each_request_span_continuing_the_callers_trace() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;
    let collector = Collector::start();
    let upstream = RawUpstream::start();
    let mut gw = Gateway::start(&format!(
        "{}telemetry:\n  otlp:\n    endpoint: http://127.0.0.1:{}\n    service_name: edge-test\nupstreams:\n  b:\n    targets: [{}]\nroutes:\n  - name: hello\n    match: {{ path_prefix: /hello }}\n    respond: {{ status: 200, body: hi }}\n  - name: api\n    upstream: b\n",
        head("false"),
        collector.port,
        upstream.url()
    ));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw.get("/api/x", &[("traceparent", incoming.as_bytes())]);
    assert_eq!(r.status, 200);
    let request_id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(gw.get("/hello", &[]).status, 200);
    let forwarded = upstream.wait_for(1)[0].one("traceparent").to_string();
    // A graceful stop flushes the batch.
    assert!(gw.terminate().success());
    let posts = collector.posts.lock().clone();
    assert!(!posts.is_empty(), "the collector received nothing");
    let mut spans = Vec::new();
    for (path, content_type, body) in &posts {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/x-protobuf");
        let req = ExportTraceServiceRequest::decode(body.as_slice()).expect("a valid OTLP protobuf body");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            assert_eq!(service, Some(Value::StringValue("edge-test".into())));
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let api = spans
        .iter()
        .find(|s| s.name == "GET api")
        .unwrap_or_else(|| panic!("no api span in {spans:?}"));
    assert_eq!(hex(&api.trace_id), &incoming[3..35], "the caller's trace");
    assert_eq!(
        hex(&api.parent_span_id),
        &incoming[36..52],
        "the caller's span is the parent"
    );
    assert_eq!(
        hex(&api.span_id),
        &forwarded[36..52],
        "the upstream's parent is this span"
    );
    assert_eq!(&forwarded[3..35], &incoming[3..35]);
    assert_eq!(api.kind, 2, "a server span");
    let attr = |name: &str| {
        api.attributes
            .iter()
            .find(|kv| kv.key == name)
            .and_then(|kv| kv.value.as_ref()?.value.clone())
    };
    assert_eq!(attr("http.response.status_code"), Some(Value::IntValue(200)));
    assert_eq!(attr("fleetgate.request_id"), Some(Value::StringValue(request_id)));
    assert_eq!(attr("url.path"), Some(Value::StringValue("/api/x".into())));
    let hello = spans
        .iter()
        .find(|s| s.name == "GET hello")
        .expect("the respond route's span");
    assert!(hello.parent_span_id.is_empty(), "a new trace");
    assert_ne!(hello.trace_id, api.trace_id);
}
