use super::*;
use fleetgate_store::Algorithm;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

fn no_env(_: &str) -> Option<OsString> {
    None
}

fn p(text: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, "test.yaml", &no_env)
}

fn with_env(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    parse_with_env(text, "test.yaml", &move |name| map.get(name).map(OsString::from))
}

/// Asserts that `text` is refused with an error at `line` about `path`, whose text holds every
/// one of `needles`; returns the printed error.
#[track_caller]
fn refused(text: &str, line: u32, path: &str, needles: &[&str]) -> String {
    let err = p(text).expect_err("should be refused");
    let shown = err.to_string();
    assert_eq!(err.file(), "test.yaml", "{shown}");
    assert!(
        shown.starts_with(&format!("test.yaml:{line}:")),
        "expected line {line}: {shown}"
    );
    assert_eq!(err.line(), Some(line), "{shown}");
    assert!(err.column().is_some(), "{shown}");
    assert_eq!(err.path(), Some(path), "{shown}");
    assert!(shown.contains(&format!(": {path}: ")), "{shown}");
    for n in needles {
        assert!(shown.contains(n), "missing {n:?} in:\n{shown}");
    }
    shown
}

const BASE: &str =
    "upstreams:\n  backend:\n    targets: [http://127.0.0.1:3000]\nroutes:\n  - name: api\n    upstream: backend\n";

/// BASE plus one rate limit with the given body lines (indented under `- `).
fn with_limit(lines: &str) -> String {
    let mut s = format!("{BASE}    rate_limits:\n      - name: lim\n");
    for l in lines.lines() {
        s.push_str("        ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[test]
fn empty_file_gives_every_default() {
    for text in ["", "\n", "# only a comment\n", "{}\n"] {
        let c = p(text).unwrap();
        assert_eq!(c, Config::default(), "{text:?}");
    }
    let c = Config::default();
    assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(c.admin.listen, "127.0.0.1:9090".parse::<SocketAddr>().unwrap());
    assert_eq!(c.log.level, LogLevel::Info);
    assert_eq!(c.log.access_log, AccessLog::Text);
    assert_eq!(c.store.url, "memory://");
    assert_eq!(c.store.kind, StoreKind::Memory);
    assert_eq!(c.store.url_source, UrlSource::Default);
    assert_eq!(c.store.keyspace.prefix(), "fleetgate");
    assert_eq!(c.store.timeout, Duration::from_millis(50));
    assert_eq!(c.store.connect_timeout, Duration::from_millis(1000));
    assert_eq!(c.store.pool_size, 1);
    assert_eq!(c.store.rate_batch_max, 64);
    assert_eq!(c.server.max_header_bytes, 16384);
    assert_eq!(c.server.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(c.server.request_timeout, Duration::from_secs(30));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(10));
    assert!(c.trusted_proxies.is_empty());
    assert!(c.upstreams.is_empty());
    assert!(c.global_rate_limits.is_empty());
    assert!(c.routes.is_empty());
}

#[test]
fn empty_sections_give_their_defaults() {
    let c = p(
        "admin: {}\nlog: {}\nstore: {}\nserver: {}\ntrusted_proxies: []\nupstreams: {}\nrate_limits: []\nroutes: []\n",
    )
    .unwrap();
    assert_eq!(c, Config::default());
    let c = p("admin:\nlog:\nstore:\nserver:\n").unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn nested_defaults() {
    let text = "upstreams:\n  backend:\n    targets: [http://127.0.0.1:3000]\n    health_check: { path: /healthz }\n  plain:\n    targets: [http://localhost]\nroutes:\n  - name: api\n    upstream: backend\n    rate_limits:\n      - { name: per-key, key: header:X-Api-Key, rate: 100/1m }\n    concurrency_limits:\n      - { name: per-ip, key: ip, max: 10 }\n  - name: hello\n    respond: {}\n";
    let c = p(text).unwrap();
    let up = c.upstream("backend").unwrap();
    assert_eq!(up.name, "backend");
    assert_eq!(up.targets[0].host, "127.0.0.1");
    assert_eq!(up.targets[0].port, 3000);
    assert_eq!(up.targets[0].authority, "127.0.0.1:3000");
    assert_eq!(up.connect_timeout, Duration::from_millis(1000));
    assert_eq!(up.request_timeout, Duration::from_millis(30_000));
    assert_eq!(up.idle_timeout, Duration::from_millis(90_000));
    let hc = up.health_check.as_ref().unwrap();
    assert_eq!(hc.path, "/healthz");
    assert_eq!(hc.interval, Duration::from_millis(5000));
    assert_eq!(hc.timeout, Duration::from_millis(1000));
    assert_eq!(hc.unhealthy_threshold, 2);
    assert_eq!(hc.healthy_threshold, 1);
    assert_eq!(up.passive, PassiveConfig::default());
    assert_eq!(up.passive.failures, 3);
    assert_eq!(up.passive.eject, Duration::from_millis(10_000));
    let plain = c.upstream("plain").unwrap();
    assert_eq!(plain.targets[0].port, 80);
    assert!(plain.health_check.is_none());

    let api = &c.routes[0];
    assert_eq!(api.matcher, RouteMatch::default());
    assert!(!api.strip_prefix);
    assert_eq!(api.upstream(), Some("backend"));
    let rl = &api.rate_limits[0];
    assert_eq!(rl.name, "per-key");
    assert_eq!(rl.key, vec![KeyPart::Header("x-api-key".into())]);
    assert_eq!(rl.limit.algorithm(), Algorithm::Gcra);
    assert_eq!(rl.limit.capacity(), 100);
    assert_eq!(rl.limit.rate().period, Duration::from_secs(60));
    assert_eq!(rl.cost, 1);
    assert_eq!(rl.on_store_error, FailurePolicy::Local);
    assert_eq!(rl.on_missing_key, MissingKey::Shared);
    let cl = &api.concurrency_limits[0];
    assert_eq!(cl.name, "per-ip");
    assert_eq!(cl.key, vec![KeyPart::Ip]);
    assert_eq!(cl.max, 10);
    assert_eq!(cl.lease, Duration::from_millis(60_000));
    assert_eq!(cl.on_store_error, FailurePolicy::Local);
    assert_eq!(cl.on_missing_key, MissingKey::Shared);
    assert_eq!(
        c.routes[1].target,
        RouteTarget::Respond {
            status: 200,
            body: String::new(),
            headers: Vec::new()
        }
    );
}

/// A field written with no value (null, e.g. `${VAR:-}` with VAR unset) takes its default,
/// as if it were left out.
#[test]
fn null_fields_take_their_defaults() {
    let every_section = "listen:\nadmin:\n  listen:\nlog:\n  level:\n  access_log:\nstore:\n  url:\n  key_prefix:\n  timeout_ms:\n  connect_timeout_ms:\n  pool_size:\n  reconnect_min_ms:\n  reconnect_max_ms:\n  username:\n  password:\n  sentinel_username:\n  sentinel_password:\n  breaker:\n    failures:\n    min_backoff_ms:\n    max_backoff_ms:\n  flush_on_startup:\n  default_ttl_ms:\nstores:\n  cache:\n    url:\n    key_prefix:\n    timeout_ms:\n    default_ttl_ms:\nserver:\n  max_header_bytes:\n  max_body_bytes:\n  request_timeout_ms:\n  idle_timeout_ms:\n  drain_timeout_ms:\n  body_idle_timeout:\n  write_timeout:\n  max_connections:\ntrusted_proxies:\nupstreams:\nrate_limits:\nroutes:\n";
    assert_eq!(p(every_section).unwrap_or_else(|e| panic!("{e}")), Config::default());
    let written = "upstreams:\n  b:\n    targets: [http://x]\n    connect_timeout_ms:\n    request_timeout_ms:\n    idle_timeout_ms:\n    body_idle_timeout:\n    write_timeout:\n    health_check:\n      path: /h\n      interval_ms:\n      timeout_ms:\n      unhealthy_threshold:\n      healthy_threshold:\n    passive:\n      failures:\n      eject_ms:\nroutes:\n  - name: r\n    upstream: b\n    match:\n      path_prefix:\n      host:\n      methods:\n    strip_prefix:\n    rate_limits:\n      - name: l\n        key: ip\n        rate: 1/s\n        burst:\n        algorithm:\n        cost:\n        on_store_error:\n        on_missing_key:\n        ipv6_prefix:\n    concurrency_limits:\n      - name: c\n        key: ip\n        max: 1\n        lease_ms:\n        on_store_error:\n        on_missing_key:\n        ipv6_prefix:\n  - name: s\n    respond:\n      status:\n      body:\n      headers:\n";
    let left_out = "upstreams:\n  b:\n    targets: [http://x]\n    health_check:\n      path: /h\nroutes:\n  - name: r\n    upstream: b\n    rate_limits:\n      - { name: l, key: ip, rate: 1/s }\n    concurrency_limits:\n      - { name: c, key: ip, max: 1 }\n  - name: s\n    respond: {}\n";
    assert_eq!(p(written).unwrap_or_else(|e| panic!("{e}")), p(left_out).unwrap());
    // A required field is still required.
    refused(
        "routes:\n  - name:\n    respond: {}\n",
        2,
        "routes[0].name",
        &["a value is required"],
    );
}

/// The body and write bounds and the connection cap: defaults, durations as written, and
/// located refusals.
#[test]
fn connection_bounds_read_durations_and_refuse_bad_ones() {
    let c = p(BASE).unwrap();
    assert_eq!(c.server.body_idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.write_timeout, Duration::from_secs(60));
    assert_eq!(c.server.max_connections, 10_000);
    let up = c.upstream("backend").unwrap();
    assert_eq!(up.body_idle_timeout, Duration::from_secs(60));
    assert_eq!(up.write_timeout, Duration::from_secs(60));

    let text = "server:\n  body_idle_timeout: 500ms\n  write_timeout: 2m\n  max_connections: 3\nupstreams:\n  backend:\n    targets: [http://127.0.0.1:3000]\n    body_idle_timeout: 7d\n    write_timeout: \" 1s \"\n";
    let c = p(text).unwrap();
    assert_eq!(c.server.body_idle_timeout, Duration::from_millis(500));
    assert_eq!(c.server.write_timeout, Duration::from_secs(120));
    assert_eq!(c.server.max_connections, 3);
    let up = c.upstream("backend").unwrap();
    assert_eq!(up.body_idle_timeout, Duration::from_secs(7 * 86_400));
    assert_eq!(up.write_timeout, Duration::from_secs(1));

    let accepted = "accepted: a whole number and a unit (ms, s, m, h or d) from 1ms to 7d";
    refused(
        "server:\n  body_idle_timeout: 30\n",
        2,
        "server.body_idle_timeout",
        &["\"30\" has no unit", accepted],
    );
    refused(
        "server:\n  write_timeout: 0s\n",
        2,
        "server.write_timeout",
        &["0s is out of range", accepted],
    );
    refused(
        "server:\n  write_timeout: 8d\n",
        2,
        "server.write_timeout",
        &["8d is out of range", accepted],
    );
    refused(
        "server:\n  max_connections: 0\n",
        2,
        "server.max_connections",
        &["0 is out of range", "accepted: a whole number from 1 to 1000000"],
    );
    refused(
        "upstreams:\n  backend:\n    targets: [http://127.0.0.1:3000]\n    body_idle_timeout: 5 seconds\n",
        4,
        "upstreams.backend.body_idle_timeout",
        &["\"5 seconds\" has unit \" seconds\"", accepted],
    );
    refused(
        "upstreams:\n  backend:\n    targets: [http://127.0.0.1:3000]\n    write_timeout: fast\n",
        4,
        "upstreams.backend.write_timeout",
        &["\"fast\" does not start with a whole number", accepted],
    );
}

const FULL: &str = r#"
listen: 0.0.0.0:8081
admin:
  listen: "[::1]:9091"
log:
  level: debug
  access_log: false
store:
  url: redis://user:secret@127.0.0.1:6379/2
  key_prefix: prod-eu
  timeout_ms: 75
  connect_timeout_ms: 2000
  pool_size: 4
server:
  max_header_bytes: 8192
  max_body_bytes: 1024
  request_timeout_ms: 5000
  idle_timeout_ms: 6000
  drain_timeout_ms: 7000
trusted_proxies: [127.0.0.1/32, 10.1.2.3/8, 192.168.1.1, "::1", fd00::/8]
upstreams:
  backend:
    targets: [http://127.0.0.1:3000, "http://[::1]:3001/", http://Backend.Local]
    connect_timeout_ms: 100
    request_timeout_ms: 200
    idle_timeout_ms: 300
    health_check:
      path: /healthz
      interval_ms: 400
      timeout_ms: 50
      unhealthy_threshold: 5
      healthy_threshold: 3
    passive:
      failures: 7
      eject_ms: 900
rate_limits:
  - name: everyone
    key: global
    rate: 10000/1s
    algorithm: fixed_window
    on_store_error: open
routes:
  - name: api
    match:
      path_prefix: /api
      host: API.example.com
      methods: [get, POST]
    upstream: backend
    strip_prefix: true
    rate_limits:
      - name: per-key
        key: [ip, header:x-api-key, cookie:Session, route]
        rate: 100/1m
        burst: 20
        algorithm: gcra
        cost: 2
        on_store_error: closed
        on_missing_key: refuse
      - name: sliding
        key: ip
        rate: 5/10s
        algorithm: sliding_window
    concurrency_limits:
      - name: per-ip
        key: ip
        max: 3
        lease_ms: 1000
        on_store_error: open
        on_missing_key: refuse
  - name: hello
    respond: { status: 201, body: "hi\n", headers: { Content-Type: text/plain, x-b: "1" } }
"#;

#[test]
fn every_field_is_read() {
    let c = p(FULL).unwrap();
    assert_eq!(c.listen, "0.0.0.0:8081".parse::<SocketAddr>().unwrap());
    assert_eq!(c.admin.listen, "[::1]:9091".parse::<SocketAddr>().unwrap());
    assert_eq!(c.log.level, LogLevel::Debug);
    assert_eq!(c.log.access_log, AccessLog::Off);
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(c.store.url_source, UrlSource::File);
    assert_eq!(c.store.redacted_url(), "redis://user:***@127.0.0.1:6379/2");
    assert_eq!(c.store.keyspace.prefix(), "prod-eu");
    let ro = c.store.redis_options();
    assert_eq!(ro.timeout, Duration::from_millis(75));
    assert_eq!(ro.connect_timeout, Duration::from_millis(2000));
    assert_eq!(ro.pool_size, 4);
    assert_eq!(c.server.max_header_bytes, 8192);
    assert_eq!(c.server.max_body_bytes, 1024);
    assert_eq!(c.server.request_timeout, Duration::from_millis(5000));
    assert_eq!(c.server.idle_timeout, Duration::from_millis(6000));
    assert_eq!(c.server.drain_timeout, Duration::from_millis(7000));
    let nets: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        nets,
        ["127.0.0.1/32", "10.0.0.0/8", "192.168.1.1/32", "::1/128", "fd00::/8"]
    );
    assert!(c.is_trusted_proxy("10.9.9.9".parse().unwrap()));
    let up = c.upstream("backend").unwrap();
    let t: Vec<String> = up.targets.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        t,
        ["http://127.0.0.1:3000", "http://[::1]:3001", "http://backend.local:80"]
    );
    assert_eq!(up.targets[1].host, "::1");
    assert_eq!(up.connect_timeout, Duration::from_millis(100));
    assert_eq!(up.request_timeout, Duration::from_millis(200));
    assert_eq!(up.idle_timeout, Duration::from_millis(300));
    let hc = up.health_check.clone().unwrap();
    assert_eq!(
        (hc.interval, hc.timeout, hc.unhealthy_threshold, hc.healthy_threshold),
        (Duration::from_millis(400), Duration::from_millis(50), 5, 3)
    );
    assert_eq!(up.passive.failures, 7);
    assert_eq!(up.passive.eject, Duration::from_millis(900));

    let g = &c.global_rate_limits[0];
    assert_eq!(g.key, vec![KeyPart::Global]);
    assert_eq!(g.limit.algorithm(), Algorithm::FixedWindow);
    assert_eq!(g.on_store_error, FailurePolicy::Open);

    let api = &c.routes[0];
    assert_eq!(api.matcher.path_prefix.as_deref(), Some("/api"));
    assert_eq!(api.matcher.host.as_deref(), Some("api.example.com"));
    assert_eq!(api.matcher.methods, ["GET", "POST"]);
    assert!(api.strip_prefix);
    assert_eq!(api.upstream_path("/api/v1"), "/v1");
    let rl = &api.rate_limits[0];
    assert_eq!(
        rl.key,
        vec![
            KeyPart::Ip,
            KeyPart::Header("x-api-key".into()),
            KeyPart::Cookie("Session".into()),
            KeyPart::Route
        ]
    );
    assert_eq!(rl.limit.capacity(), 20);
    assert_eq!(rl.cost, 2);
    assert_eq!(rl.on_store_error, FailurePolicy::Closed);
    assert_eq!(rl.on_missing_key, MissingKey::Refuse);
    assert_eq!(api.rate_limits[1].limit.algorithm(), Algorithm::SlidingWindow);
    assert_eq!(api.rate_limits[1].limit.capacity(), 5);
    let cl = &api.concurrency_limits[0];
    assert_eq!(
        (cl.max, cl.lease, cl.on_store_error, cl.on_missing_key),
        (3, Duration::from_millis(1000), FailurePolicy::Open, MissingKey::Refuse)
    );
    assert_eq!(
        c.routes[1].target,
        RouteTarget::Respond {
            status: 201,
            body: "hi\n".into(),
            headers: vec![("content-type".into(), "text/plain".into()), ("x-b".into(), "1".into())]
        }
    );
    let (i, r) = c.route_for("GET", Some("api.example.com:8081"), "/api/x").unwrap();
    assert_eq!((i, r.name.as_str()), (0, "api"));
    assert_eq!(c.route_for("DELETE", Some("x"), "/").unwrap().1.name, "hello");
}

#[test]
fn store_url_forms() {
    for (url, kind) in [
        ("memory://", StoreKind::Memory),
        ("redis://127.0.0.1", StoreKind::Redis),
        ("redis://:pw@localhost:6380/0", StoreKind::Redis),
        ("rediss://u:p@cache.example.com:6380", StoreKind::RedisTls),
        ("redis://[::1]:6379", StoreKind::Redis),
        (
            "redis-sentinel://h1:26379,h2:26379/1?master=mymaster",
            StoreKind::RedisSentinel,
        ),
        ("redis-cluster://h1:7000,h2:7001", StoreKind::RedisCluster),
    ] {
        let c = p(&format!("store:\n  url: \"{url}\"\n")).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(c.store.kind, kind, "{url}");
        assert_eq!(c.store.url, url);
    }
    for (url, needle) in [
        ("redis://", "no host"),
        ("redis://h:0", "port"),
        ("redis://h:99999", "port"),
        ("redis://a:1,b:2", "one host"),
        ("redis-sentinel://h1:26379", "master=NAME"),
        ("redis://h/db", "database"),
        ("memory://x", "nothing after"),
        ("localhost:6379", "not a store URL"),
    ] {
        refused(
            &format!("store:\n  url: \"{url}\"\n"),
            2,
            "store.url",
            &[needle, "accepted: memory://"],
        );
    }
}

#[test]
fn store_url_errors_never_show_the_password() {
    let e = p("store:\n  url: redis://user:hunter2@:6379\n").unwrap_err();
    let shown = e.to_string();
    assert!(
        !shown.contains("hunter2") || shown.contains("url: redis://user:hunter2"),
        "{shown}"
    );
    assert!(e.message().contains("user:***@"), "{shown}");
    assert!(!e.message().contains("hunter2"), "{shown}");
}

// ---- environment ----

#[test]
fn env_substitution_in_values_keys_and_lists() {
    let text = "listen: ${FGT_HOST:-127.0.0.1}:${FGT_PORT}\nstore:\n  timeout_ms: ${FGT_TIMEOUT:-75}\n  key_prefix: \"${FGT_PREFIX}\"\nupstreams:\n  backend:\n    targets: [http://127.0.0.1:${FGT_UP}]\nroutes:\n  - name: r\n    respond: { body: \"cost $$5 ${FGT_EMPTY:-none} $${LITERAL}\" }  # ${NOT_SUBSTITUTED}\n";
    let c = with_env(
        text,
        &[
            ("FGT_PORT", "18080"),
            ("FGT_PREFIX", "stage"),
            ("FGT_UP", "3999"),
            ("FGT_EMPTY", ""),
        ],
    )
    .unwrap();
    assert_eq!(c.listen, "127.0.0.1:18080".parse::<SocketAddr>().unwrap());
    assert_eq!(c.store.timeout, Duration::from_millis(75));
    assert_eq!(c.store.keyspace.prefix(), "stage");
    assert_eq!(c.upstream("backend").unwrap().targets[0].port, 3999);
    let RouteTarget::Respond { body, .. } = &c.routes[0].target else {
        panic!("respond")
    };
    assert_eq!(body, "cost $$5 none ${LITERAL}");
}

#[test]
fn unset_env_var_is_an_error_naming_it_and_the_line() {
    let e = p("listen: 127.0.0.1:8080\nstore:\n  url: ${FGT_SURELY_UNSET_VAR}\n").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Env);
    assert_eq!(e.line(), Some(3));
    assert_eq!(e.column(), Some(8));
    let shown = e.to_string();
    assert!(shown.starts_with("test.yaml:3:8: "), "{shown}");
    assert!(shown.contains("FGT_SURELY_UNSET_VAR is not set"), "{shown}");
    assert!(shown.contains("${FGT_SURELY_UNSET_VAR:-VALUE}"), "{shown}");
}

#[test]
fn errors_after_substitution_point_at_the_original_text_and_hide_values() {
    let text = "store:\n  timeout_ms: ${FGT_T}\n";
    let e = with_env(text, &[("FGT_T", "fast")]).unwrap_err();
    let shown = e.to_string();
    assert_eq!((e.line(), e.column()), (Some(2), Some(15)), "{shown}");
    assert!(shown.contains("found `${FGT_T}`"), "{shown}");
    // A column after a substituted value maps back too.
    let text = "listen: ${FGT_A}:${FGT_B}\n";
    let e = with_env(text, &[("FGT_A", "1.2.3.4"), ("FGT_B", "x")]).unwrap_err();
    assert_eq!((e.line(), e.column()), (Some(1), Some(9)));
}

#[test]
fn process_environment_is_used_by_parse() {
    // Unique names: other tests never touch them.
    std::env::set_var("FLEETGATE_CONFIG_TEST_PORT_7731", "18181");
    let c = parse(
        "listen: 127.0.0.1:${FLEETGATE_CONFIG_TEST_PORT_7731}\nadmin:\n  listen: 127.0.0.1:${FLEETGATE_CONFIG_TEST_UNSET_7731:-19191}\n",
        "env.yaml",
    )
    .unwrap();
    assert_eq!(c.listen.port(), 18181);
    assert_eq!(c.admin.listen.port(), 19191);
}

#[test]
fn redis_url_overrides_store_url() {
    let c = with_env(
        "store:\n  url: memory://\n",
        &[("REDIS_URL", "redis://:pw@10.0.0.5:6380/1")],
    )
    .unwrap();
    assert_eq!(c.store.url, "redis://:pw@10.0.0.5:6380/1");
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(c.store.url_source, UrlSource::RedisUrlEnv);
    // Also when the file has no store section.
    let c = with_env("", &[("REDIS_URL", "rediss://h:6379")]).unwrap();
    assert_eq!(c.store.kind, StoreKind::RedisTls);
    // Empty REDIS_URL: no override.
    let c = with_env("store:\n  url: redis://h\n", &[("REDIS_URL", "")]).unwrap();
    assert_eq!(c.store.url, "redis://h");
    assert_eq!(c.store.url_source, UrlSource::File);
    // A bad REDIS_URL names REDIS_URL, and hides the password.
    let e = with_env("", &[("REDIS_URL", "mysql://root:pw@db")]).unwrap_err();
    let shown = e.to_string();
    assert_eq!(e.path(), Some("store.url"));
    assert!(shown.contains("REDIS_URL"), "{shown}");
    assert!(shown.contains("accepted: memory://"), "{shown}");
    assert!(!shown.contains("pw@"), "{shown}");
}

// ---- refused inputs: file, line, field, accepted forms ----

#[test]
fn unknown_field_typo() {
    let shown = refused(
        &with_limit("key: ip\nrtae: 1/s\nrate: 1/s"),
        10,
        "routes[0].rate_limits[0].rtae",
        &[
            "unknown field `rtae`",
            "did you mean `rate`?",
            "accepted fields here: name, key, rate, burst",
        ],
    );
    assert!(shown.contains("10 |         rtae: 1/s"), "{shown}");
    refused("lisen: 1.2.3.4:5\n", 1, "lisen", &["did you mean `listen`?"]);
    refused(
        "store:\n  url: memory://\n  timeout: 5\n",
        3,
        "store.timeout",
        &["did you mean `timeout_ms`?"],
    );
}

#[test]
fn unknown_algorithm() {
    refused(
        &with_limit("key: ip\nrate: 1/s\nalgorithm: token_bucket"),
        11,
        "routes[0].rate_limits[0].algorithm",
        &[
            "unknown algorithm \"token_bucket\"",
            "accepted: gcra, sliding_window, fixed_window",
        ],
    );
}

#[test]
fn bad_rates() {
    refused(
        &with_limit("key: ip\nrate: 0/s"),
        10,
        "routes[0].rate_limits[0].rate",
        &["\"0/s\"", "positive whole number", "accepted: N/PERIOD"],
    );
    refused(
        &with_limit("key: ip\nrate: 10/5y"),
        10,
        "routes[0].rate_limits[0].rate",
        &["\"10/5y\"", "accepted units: ms, s, m, h, d"],
    );
    refused(
        &with_limit("key: ip\nrate: fast"),
        10,
        "routes[0].rate_limits[0].rate",
        &["N/PERIOD"],
    );
}

#[test]
fn bad_bursts_and_costs() {
    refused(
        &with_limit("key: ip\nrate: 10/s\nburst: 0"),
        11,
        "routes[0].rate_limits[0].burst",
        &["burst 0 is below 1", "accepted: a whole number >= 1"],
    );
    refused(
        &with_limit("key: ip\nrate: 10/s\nalgorithm: sliding_window\nburst: 20"),
        12,
        "routes[0].rate_limits[0].burst",
        &["gcra only"],
    );
    refused(
        &with_limit("key: ip\nrate: 10/s\ncost: 11"),
        11,
        "routes[0].rate_limits[0].cost",
        &["cost 11", "accepted: a whole number from 0 to 10"],
    );
    refused(
        &with_limit("key: ip\nrate: 10/s\ncost: -1"),
        11,
        "routes[0].rate_limits[0].cost",
        &["accepted: a whole number from 0 to 10"],
    );
}

#[test]
fn route_naming_a_missing_upstream() {
    refused(
        "upstreams:\n  backend:\n    targets: [http://127.0.0.1:3000]\n  auth:\n    targets: [http://127.0.0.1:3001]\nroutes:\n  - name: api\n    upstream: backnd\n",
        8,
        "routes[0].upstream",
        &["upstream \"backnd\" is not defined", "accepted: one of the defined upstreams: auth, backend"],
    );
    refused(
        "routes:\n  - name: api\n    upstream: backend\n",
        3,
        "routes[0].upstream",
        &["none is defined yet"],
    );
}

#[test]
fn duplicate_names() {
    refused(
        &format!("{BASE}  - name: other\n    upstream: backend\n  - name: api\n    upstream: backend\n"),
        9,
        "routes[2].name",
        &["route name \"api\" is already used by routes[0] (line 5)"],
    );
    refused(
        &format!("{BASE}    rate_limits:\n      - {{ name: a, key: ip, rate: 1/s }}\n      - {{ name: a, key: ip, rate: 2/s }}\n"),
        9,
        "routes[0].rate_limits[1].name",
        &["already used by routes[0].rate_limits[0] (line 8)"],
    );
}

#[test]
fn invalid_listen_addresses() {
    refused(
        "listen: localhost:8080\n",
        1,
        "listen",
        &["not an IP address and port", "accepted: IP:PORT"],
    );
    refused(
        "listen: 127.0.0.1\n",
        1,
        "listen",
        &["has no port", "accepted: IP:PORT"],
    );
    refused("listen: 127.0.0.1:99999\n", 1, "listen", &["accepted: IP:PORT"]);
    refused("admin:\n  listen: nope\n", 2, "admin.listen", &["accepted: IP:PORT"]);
    refused(
        "listen: 127.0.0.1:7000\nadmin:\n  listen: 127.0.0.1:7000\n",
        3,
        "admin.listen",
        &["its own address"],
    );
    // Port 0 twice is fine: two different free ports.
    assert!(p("listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n").is_ok());
}

#[test]
fn bad_key_parts() {
    refused(
        &with_limit("key: header\nrate: 1/s"),
        9,
        "routes[0].rate_limits[0].key",
        &[
            "unknown key part \"header\"",
            "accepted: ip, header:NAME, cookie:NAME, route, global",
        ],
    );
    refused(
        &with_limit("key: [ip, user]\nrate: 1/s"),
        9,
        "routes[0].rate_limits[0].key[1]",
        &["unknown key part \"user\"", "accepted: ip, header:NAME"],
    );
    refused(
        &with_limit("key: []\nrate: 1/s"),
        9,
        "routes[0].rate_limits[0].key",
        &["no part", "accepted: ip"],
    );
    refused(
        &with_limit("key: \"header:bad name\"\nrate: 1/s"),
        9,
        "routes[0].rate_limits[0].key",
        &["accepted: ip"],
    );
    refused(
        &with_limit("rate: 1/s"),
        8,
        "routes[0].rate_limits[0].key",
        &["missing required field `key`", "accepted: ip, header:NAME"],
    );
}

#[test]
fn both_or_neither_of_upstream_and_respond() {
    refused(
        &format!("{BASE}    respond: {{ status: 200 }}\n"),
        7,
        "routes[0]",
        &[
            "both `upstream` (line 6) and `respond` (line 7)",
            "accepted: exactly one",
        ],
    );
    refused(
        "upstreams:\n  backend:\n    targets: [http://127.0.0.1:3000]\nroutes:\n  - name: api\n    match: { path_prefix: /api }\n",
        5,
        "routes[0]",
        &["neither `upstream` nor `respond`", "one of the defined upstreams: backend"],
    );
}

#[test]
fn bad_cidrs() {
    refused(
        "trusted_proxies: [127.0.0.1/32, 10.0.0.0/33]\n",
        1,
        "trusted_proxies[1]",
        &["\"10.0.0.0/33\" is not a CIDR or IP address", "accepted: IPv4 or IPv6"],
    );
    refused(
        "trusted_proxies:\n  - 10.0.0.0/8\n  - proxy.local\n",
        3,
        "trusted_proxies[1]",
        &["accepted: IPv4 or IPv6"],
    );
}

#[test]
fn unknown_store_scheme() {
    refused(
        "store:\n  url: mongodb://localhost\n",
        2,
        "store.url",
        &[
            "unknown store URL scheme \"mongodb://\"",
            "accepted: memory://, redis://",
            "redis-sentinel://",
            "redis-cluster://",
        ],
    );
}

#[test]
fn other_refusals() {
    refused(
        "log:\n  level: loud\n",
        2,
        "log.level",
        &["accepted: trace, debug, info, warn, error"],
    );
    refused(
        "log:\n  access_log: maybe\n",
        2,
        "log.access_log",
        &["unknown access log form \"maybe\"", "accepted: text, json, off"],
    );
    refused("log:\n  access_log: 3\n", 2, "log.access_log", &["text, json, off"]);
    refused(
        "store:\n  key_prefix: \"a:b\"\n",
        2,
        "store.key_prefix",
        &["key prefix \"a:b\" is not accepted; accepted: 1 to 64 characters"],
    );
    refused(
        "store:\n  pool_size: 0\n",
        2,
        "store.pool_size",
        &["accepted: a whole number from 1 to 64"],
    );
    refused(
        "store:\n  rate_batch_max: 0\n",
        2,
        "store.rate_batch_max",
        &["0 is out of range; accepted: a whole number from 1 to 1024"],
    );
    refused(
        "store:\n  rate_batch_max: 5000\n",
        2,
        "store.rate_batch_max",
        &["5000 is out of range; accepted: a whole number from 1 to 1024"],
    );
    refused(
        "store:\n  timeout_ms: 0\n",
        2,
        "store.timeout_ms",
        &["accepted: a whole number of milliseconds"],
    );
    refused(
        "store:\n  timeout_ms: -5\n",
        2,
        "store.timeout_ms",
        &["accepted: a whole number of milliseconds"],
    );
    refused(
        "server:\n  max_header_bytes: 10\n",
        2,
        "server.max_header_bytes",
        &["from 1024"],
    );
    refused("server: [1]\n", 1, "server", &["expected a mapping"]);
    refused("routes: {}\n", 1, "routes", &["expected a list"]);
    refused(
        "upstreams:\n  b:\n    targets: []\n",
        3,
        "upstreams.b.targets",
        &["no targets", "accepted: a non-empty list"],
    );
    refused(
        "upstreams:\n  b:\n    targets: [ftp://x:21]\n",
        3,
        "upstreams.b.targets[0]",
        &["scheme \"ftp\" is not supported"],
    );
    refused(
        "upstreams:\n  b:\n    targets: [http://x/api]\n",
        3,
        "upstreams.b.targets[0]",
        &["without path"],
    );
    refused(
        "upstreams:\n  b:\n    targets: [\"http://a b\"]\n",
        3,
        "upstreams.b.targets[0]",
        &["not a host name"],
    );
    refused(
        "upstreams:\n  b:\n    connect_timeout_ms: 5\n",
        3,
        "upstreams.b.targets",
        &["missing required field `targets`"],
    );
    refused(
        "upstreams:\n  b:\n    connect_timeout_ms: 5\n    # comment\n\n    idle_timeout_ms: 5\n  c:\n    targets: [http://x]\n",
        3,
        "upstreams.b.targets",
        &["missing required field `targets`"],
    );
    refused(
        "routes:\n  - respond: {}\n    strip_prefix: false\n  - name: b\n    respond: {}\n",
        2,
        "routes[0].name",
        &["missing required field `name`"],
    );
    refused(
        "upstreams:\n  \"bad name\":\n    targets: [http://x]\n",
        3,
        "upstreams.bad name",
        &["upstream name \"bad name\" is not accepted"],
    );
    refused(
        "upstreams:\n  b:\n    targets: [http://x]\n    health_check: { path: healthz }\n",
        4,
        "upstreams.b.health_check.path",
        &["accepted: a path starting with /"],
    );
    refused(
        "upstreams:\n  b:\n    targets: [http://x]\n    passive: { failures: 0 }\n",
        4,
        "upstreams.b.passive.failures",
        &["accepted: a whole number from 1"],
    );
    refused(
        "routes:\n  - name: \"a b\"\n    respond: {}\n",
        2,
        "routes[0].name",
        &["route name \"a b\" is not accepted"],
    );
    refused(
        "routes:\n  - respond: {}\n",
        2,
        "routes[0].name",
        &["missing required field `name`"],
    );
    refused(
        "routes:\n  - name: a\n    match: { path_prefix: api }\n    respond: {}\n",
        3,
        "routes[0].match.path_prefix",
        &["accepted: a path starting with /"],
    );
    refused(
        "routes:\n  - name: a\n    match: { host: \"a.com:80\" }\n    respond: {}\n",
        3,
        "routes[0].match.host",
        &["without port"],
    );
    refused(
        "routes:\n  - name: a\n    match: { methods: [GET, \"PO ST\"] }\n    respond: {}\n",
        3,
        "routes[0].match.methods[1]",
        &["not an HTTP method"],
    );
    refused(
        "routes:\n  - name: a\n    respond: { status: 600 }\n",
        3,
        "routes[0].respond.status",
        &["accepted: a whole number from 100 to 599"],
    );
    refused(
        "routes:\n  - name: a\n    respond: { headers: { \"bad header\": x } }\n",
        3,
        "routes[0].respond.headers.bad header",
        &["not a header name"],
    );
    refused(
        "routes:\n  - name: a\n    strip_prefix: true\n    respond: {}\n",
        3,
        "routes[0].strip_prefix",
        &["needs match.path_prefix"],
    );
    refused(
        &format!("{BASE}    concurrency_limits:\n      - {{ name: c, key: ip, max: 0 }}\n"),
        8,
        "routes[0].concurrency_limits[0].max",
        &["accepted: a whole number >= 1"],
    );
    refused(
        &with_limit("key: ip\nrate: 1/s\non_store_error: retry"),
        11,
        "routes[0].rate_limits[0].on_store_error",
        &["accepted: open, closed, local"],
    );
    refused(
        &with_limit("key: ip\nrate: 1/s\non_missing_key: skip"),
        11,
        "routes[0].rate_limits[0].on_missing_key",
        &["accepted: shared, refuse"],
    );
    for bits in ["0", "129"] {
        refused(
            &with_limit(&format!("key: ip\nrate: 1/s\nipv6_prefix: {bits}")),
            11,
            "routes[0].rate_limits[0].ipv6_prefix",
            &["accepted: a whole number of bits from 1 to 128"],
        );
    }
    refused(
        "rate_limits:\n  - { name: g, key: global, rate: 1/0s }\n",
        2,
        "rate_limits[0].rate",
        &["zero or unparsable"],
    );
}

#[test]
fn syntax_errors_name_the_line() {
    for (text, line) in [
        ("routes: [ {name: a\n", 1),
        ("listen: a\nlisten: b\n", 2),
        ("routes:\n  - name: a\n  name: b\n", 3),
        ("listen: 127.0.0.1:1\n---\nlisten: 127.0.0.1:2\n", 3),
    ] {
        let e = p(text).unwrap_err();
        assert_eq!(e.line(), Some(line), "{text:?}: {e}");
        assert!(e.to_string().starts_with(&format!("test.yaml:{line}:")), "{e}");
    }
    let e = p("listen: a\nlisten: b\n").unwrap_err();
    assert!(e.message().contains("`listen` is given twice"), "{e}");
}

#[test]
fn load_reads_files_and_names_them() {
    let dir = std::env::temp_dir().join(format!("fleetgate-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, "listen: 127.0.0.1:8088\n").unwrap();
    assert_eq!(load(&good).unwrap().listen.port(), 8088);
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "listen: 127.0.0.1:8088\nlog: { level: loud }\n").unwrap();
    let e = load(&bad).unwrap_err();
    assert!(e.to_string().starts_with(&format!("{}:2:", bad.display())), "{e}");
    let missing = dir.join("missing.yaml");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("missing.yaml"), "{e}");
    let latin1 = dir.join("latin1.yaml");
    std::fs::write(&latin1, b"a: 1\nb: \xe9\n").unwrap();
    let e = load(&latin1).unwrap_err();
    assert_eq!(e.line(), Some(2), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn quickstart_example_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = parse_with_env(&text, "quickstart.yaml", &no_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(c.admin.listen, "127.0.0.1:9090".parse::<SocketAddr>().unwrap());
    assert!(c.store.is_memory());
    assert_eq!(c.routes.len(), 1);
    let r = &c.routes[0];
    assert!(r.matcher.matches("GET", Some("localhost:8080"), "/"));
    assert!(matches!(&r.target, RouteTarget::Respond { status: 200, body, .. } if body == "hello from fleetgate\n"));
    let l = &r.rate_limits[0];
    assert_eq!(l.key, vec![KeyPart::Ip]);
    assert_eq!(l.limit.algorithm(), Algorithm::Gcra);
    assert_eq!(
        (l.limit.rate().count, l.limit.rate().period),
        (5, Duration::from_secs(60))
    );
}

#[test]
fn hostile_inputs_do_not_panic() {
    let deep = "[".repeat(100_000);
    assert!(p(&deep).is_err());
    let deep_map = "a: ".repeat(10_000) + "1";
    assert!(p(&deep_map).is_err());
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    assert!(p(bomb).is_err());
    assert!(p(&"x".repeat(MAX_FILE_BYTES + 1)).is_err());
    assert!(p("\u{feff}listen: 127.0.0.1:1\n").is_ok());
    for text in [
        "\t",
        "\r\r\n",
        ":",
        "- - -",
        "? a\n: b\n",
        "!!binary abc\n",
        "listen: !!int 5\n",
        "*x\n",
        "&a\n",
        "%YAML 1.2\n---\n",
        "\0",
        "${",
        "$${",
        "#${X}",
    ] {
        let _ = p(text);
    }
}

// ---- store settings, per-concern stores, secrets ----

/// A directory with fake PEM files (only their `-----BEGIN` lines are checked), removed on drop.
struct PemDir(std::path::PathBuf);

impl PemDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fleetgate-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.join("ca.pem"), cert).unwrap();
        std::fs::write(dir.join("client.pem"), cert).unwrap();
        std::fs::write(
            dir.join("client.key"),
            "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        std::fs::write(dir.join("plain.txt"), "not a certificate\n").unwrap();
        PemDir(dir)
    }
    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for PemDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

#[test]
fn store_defaults() {
    let c = p("").unwrap();
    let s = &c.store;
    assert_eq!(s.reconnect_min, Duration::from_millis(50));
    assert_eq!(s.reconnect_max, Duration::from_millis(500));
    assert_eq!((s.username.as_deref(), s.password.as_deref()), (None, None));
    assert_eq!(
        (s.sentinel_username.as_deref(), s.sentinel_password.as_deref()),
        (None, None)
    );
    assert!(s.tls.is_none());
    assert_eq!(s.breaker.threshold, 3);
    assert_eq!(s.breaker.min_backoff, Duration::from_millis(100));
    assert_eq!(s.breaker.max_backoff, Duration::from_millis(1000));
    assert!(!s.flush_on_startup);
    assert_eq!(s.default_ttl, Duration::from_millis(86_400_000));
    // Every concern is the store itself.
    for (name, cs) in c.stores.iter() {
        assert_eq!(cs, s, "{name}");
    }
    assert_eq!(c.stores, ConcernStores::default());
    // The driver's own defaults agree.
    let ro = s.redis_options();
    let d = fleetgate_store::RedisOptions::default();
    assert_eq!((ro.reconnect_min, ro.reconnect_max), (d.reconnect_min, d.reconnect_max));
    assert_eq!(
        (ro.breaker.threshold, ro.breaker.min_backoff, ro.breaker.max_backoff),
        (d.breaker.threshold, d.breaker.min_backoff, d.breaker.max_backoff)
    );
    assert!(p("store:\n  breaker:\n  tls_absent_is_fine: 1\n").is_err());
    assert_eq!(p("store:\n  breaker:\n").unwrap(), Config::default());
    assert_eq!(p("stores:\nstore: {}\n").unwrap(), Config::default());
    assert_eq!(p("stores: { sessions: {}, cache: }\n").unwrap(), Config::default());
}

#[test]
fn every_store_field_is_read() {
    let dir = PemDir::new("fields");
    let text = format!(
        "store:
  url: redis-sentinel://s1:26379,s2:26379/2?master=main
  key_prefix: prod
  timeout_ms: 80
  connect_timeout_ms: 900
  pool_size: 3
  reconnect_min_ms: 20
  reconnect_max_ms: 2000
  username: app
  password: ${{FGT_REDIS_PASSWORD}}
  sentinel_username: watcher
  sentinel_password: \"s3nt!nel #1\"
  tls:
    ca_file: {}
    cert_file: {}
    key_file: {}
  breaker:
    failures: 5
    min_backoff_ms: 200
    max_backoff_ms: 4000
  flush_on_startup: true
  default_ttl_ms: 3600000
",
        dir.path("ca.pem"),
        dir.path("client.pem"),
        dir.path("client.key")
    );
    let c = with_env(&text, &[("FGT_REDIS_PASSWORD", "hunter2")]).unwrap_or_else(|e| panic!("{e}"));
    let s = &c.store;
    assert_eq!(s.kind, StoreKind::RedisSentinel);
    assert_eq!(s.keyspace.prefix(), "prod");
    assert_eq!(s.reconnect_min, Duration::from_millis(20));
    assert_eq!(s.reconnect_max, Duration::from_millis(2000));
    assert_eq!(s.username.as_deref(), Some("app"));
    assert_eq!(s.password.as_deref(), Some("hunter2"));
    assert_eq!(s.sentinel_username.as_deref(), Some("watcher"));
    assert_eq!(s.sentinel_password.as_deref(), Some("s3nt!nel #1"));
    let tls = s.tls.clone().unwrap();
    assert_eq!(tls.ca_file, Some(dir.0.join("ca.pem")));
    assert_eq!(tls.cert_file, Some(dir.0.join("client.pem")));
    assert_eq!(tls.key_file, Some(dir.0.join("client.key")));
    assert_eq!(s.breaker.threshold, 5);
    assert_eq!(s.breaker.min_backoff, Duration::from_millis(200));
    assert_eq!(s.breaker.max_backoff, Duration::from_millis(4000));
    assert!(s.flush_on_startup);
    assert_eq!(s.default_ttl, Duration::from_secs(3600));

    // The driver gets every setting.
    let ro = s.redis_options();
    assert_eq!(ro.timeout, Duration::from_millis(80));
    assert_eq!(ro.connect_timeout, Duration::from_millis(900));
    assert_eq!(ro.pool_size, 3);
    assert_eq!((ro.reconnect_min, ro.reconnect_max), (s.reconnect_min, s.reconnect_max));
    assert_eq!(
        (ro.breaker.threshold, ro.breaker.min_backoff, ro.breaker.max_backoff),
        (5, Duration::from_millis(200), Duration::from_millis(4000))
    );
    assert_eq!(ro.tls, Some(tls));
    assert_eq!(ro.username.as_deref(), Some("app"));
    assert_eq!(ro.password.as_deref(), Some("hunter2"));
    assert_eq!(ro.sentinel_username.as_deref(), Some("watcher"));
    assert_eq!(ro.sentinel_password.as_deref(), Some("s3nt!nel #1"));

    // Every concern inherits all of it.
    for (name, cs) in c.stores.iter() {
        assert_eq!(cs, s, "{name}");
    }
}

#[test]
fn credentials_and_tls_forms() {
    // Empty credentials (an unset `${VAR:-}`) are not set.
    let c = p("store:\n  username: \"${FGT_U:-}\"\n  password: ${FGT_P:-}\n  sentinel_password: \"\"\n").unwrap();
    assert_eq!(c.store, StoreConfig::default());
    // From the environment.
    let c = with_env(
        "store:\n  username: ${FGT_U}\n  password: \"${FGT_P}\"\n",
        &[("FGT_U", "svc"), ("FGT_P", "p: #1")],
    )
    .unwrap();
    assert_eq!(c.store.username.as_deref(), Some("svc"));
    assert_eq!(c.store.password.as_deref(), Some("p: #1"));
    // A numeric password is text.
    let c = p("store:\n  password: 12345\n").unwrap();
    assert_eq!(c.store.password.as_deref(), Some("12345"));
    // `tls:` with nothing after it, like `tls: {}`, turns TLS on with the system's roots.
    for tls in ["tls:", "tls: {}"] {
        for url in [
            "rediss://h:6380",
            "redis-sentinel://h:26379?master=m",
            "redis-cluster://h:7000",
        ] {
            let c = p(&format!("store:\n  url: {url}\n  {tls}\n")).unwrap_or_else(|e| panic!("{url} {tls}: {e}"));
            assert_eq!(c.store.tls, Some(fleetgate_store::TlsFiles::default()), "{url} {tls}");
        }
    }
    // A CA alone is fine.
    let dir = PemDir::new("ca-only");
    let c = p(&format!(
        "store:\n  url: rediss://h\n  tls: {{ ca_file: \"{}\" }}\n",
        dir.path("ca.pem")
    ))
    .unwrap();
    let tls = c.store.tls.unwrap();
    assert!(tls.ca_file.is_some() && tls.cert_file.is_none() && tls.key_file.is_none());
}

#[test]
fn concerns_inherit_from_store() {
    let dir = PemDir::new("inherit");
    let text = format!(
        "store:
  url: rediss://:pw@main:6380/1
  key_prefix: prod
  timeout_ms: 40
  pool_size: 4
  username: app
  password: secret
  tls: {{ ca_file: \"{}\" }}
  breaker: {{ failures: 7 }}
  default_ttl_ms: 60000
stores:
  cache:
    url: rediss://cache:6380
    timeout_ms: 5
  sessions:
    key_prefix: prod-sessions
    default_ttl_ms: 2592000000
",
        dir.path("ca.pem")
    );
    let c = p(&text).unwrap_or_else(|e| panic!("{e}"));
    let base = &c.store;
    let cache = &c.stores.cache;
    assert_eq!(cache.url, "rediss://cache:6380");
    assert_eq!(cache.kind, StoreKind::RedisTls);
    assert_eq!(cache.url_source, UrlSource::File);
    assert_eq!(cache.timeout, Duration::from_millis(5));
    // Everything else from `store`.
    assert_eq!(
        StoreConfig {
            url: base.url.clone(),
            timeout: base.timeout,
            ..cache.clone()
        },
        *base
    );
    assert_eq!(cache.keyspace.prefix(), "prod");
    assert_eq!(cache.pool_size, 4);
    assert_eq!(cache.username.as_deref(), Some("app"));
    assert_eq!(cache.password.as_deref(), Some("secret"));
    assert_eq!(cache.tls, base.tls);
    assert_eq!(cache.breaker.threshold, 7);
    assert_eq!(cache.default_ttl, Duration::from_millis(60_000));

    let sessions = c.stores.get("sessions").unwrap();
    assert_eq!(sessions.url, base.url);
    assert_eq!(sessions.keyspace.prefix(), "prod-sessions");
    assert_eq!(sessions.default_ttl, Duration::from_millis(2_592_000_000));
    assert_eq!(sessions.timeout, Duration::from_millis(40));

    for name in ["rate_limits", "markers", "events"] {
        assert_eq!(c.stores.get(name).unwrap(), base, "{name}");
    }
    assert!(c.stores.get("nope").is_none());
}

#[test]
fn redis_url_overrides_store_url_and_inheriting_concerns_only() {
    let text = "store:\n  url: redis://file:6379\n  password: ${FGT_PW:-}\nstores:\n  cache:\n    url: redis://cache:6379\n  events:\n    timeout_ms: 9\n";
    let c = with_env(text, &[("REDIS_URL", "redis://env:6379/3")]).unwrap();
    assert_eq!(c.store.url, "redis://env:6379/3");
    assert_eq!(c.store.url_source, UrlSource::RedisUrlEnv);
    // A concern with its own url keeps it.
    assert_eq!(c.stores.cache.url, "redis://cache:6379");
    assert_eq!(c.stores.cache.url_source, UrlSource::File);
    // The others follow REDIS_URL.
    for name in ["rate_limits", "sessions", "markers", "events"] {
        let s = c.stores.get(name).unwrap();
        assert_eq!(s.url, "redis://env:6379/3", "{name}");
        assert_eq!(s.url_source, UrlSource::RedisUrlEnv, "{name}");
    }
    assert_eq!(c.stores.events.timeout, Duration::from_millis(9));
    // Without REDIS_URL, the file's url.
    let c = p(text).unwrap();
    assert_eq!(c.stores.sessions.url, "redis://file:6379");
    assert_eq!(c.stores.sessions.url_source, UrlSource::File);
    // No url anywhere: the default, overridden by REDIS_URL.
    let c = with_env(
        "stores:\n  markers: { key_prefix: m }\n",
        &[("REDIS_URL", "redis-cluster://a:7000,b:7001")],
    )
    .unwrap();
    assert_eq!(c.stores.markers.kind, StoreKind::RedisCluster);
    assert_eq!(c.stores.markers.keyspace.prefix(), "m");
    // REDIS_URL is checked against store.tls too.
    let dir = PemDir::new("env-tls");
    let text = format!(
        "store:\n  url: rediss://h\n  tls:\n    ca_file: \"{}\"\n",
        dir.path("ca.pem")
    );
    assert!(with_env(&text, &[("REDIS_URL", "rediss://other")]).is_ok());
    let e = with_env(&text, &[("REDIS_URL", "redis://:envpw@other")]).unwrap_err();
    let shown = e.to_string();
    assert_eq!(
        (e.line(), e.column(), e.path()),
        (Some(3), Some(3), Some("store.tls")),
        "{shown}"
    );
    assert!(shown.contains("from the REDIS_URL environment variable"), "{shown}");
    assert!(shown.contains("use rediss://"), "{shown}");
    assert!(!shown.contains("envpw"), "{shown}");
}

#[test]
fn bad_reconnect_and_breaker_settings() {
    refused(
        "store:\n  reconnect_min_ms: 100\n  reconnect_max_ms: 50\n",
        3,
        "store.reconnect_max_ms",
        &[
            "reconnect_max_ms 50 is below reconnect_min_ms 100 (line 2)",
            "accepted: a whole number of milliseconds from reconnect_min_ms (100)",
        ],
    );
    refused(
        "store:\n  reconnect_max_ms: 10\n",
        2,
        "store.reconnect_max_ms",
        &["below reconnect_min_ms 50 (the default)"],
    );
    refused(
        "store:\n  reconnect_min_ms: 1000\n",
        2,
        "store.reconnect_min_ms",
        &[
            "reconnect_min_ms 1000 is above reconnect_max_ms 500 (the default)",
            "also set reconnect_max_ms to 1000 or more",
        ],
    );
    refused(
        "store:\n  reconnect_min_ms: 0\n",
        2,
        "store.reconnect_min_ms",
        &["accepted: a whole number of milliseconds from 1"],
    );
    refused(
        "store:\n  breaker:\n    failures: 0\n",
        3,
        "store.breaker.failures",
        &["0 is out of range", "accepted: a whole number from 1 to 1000"],
    );
    refused(
        "store:\n  breaker: { min_backoff_ms: 500, max_backoff_ms: 400 }\n",
        2,
        "store.breaker.max_backoff_ms",
        &["max_backoff_ms 400 is below min_backoff_ms 500 (line 2)"],
    );
    refused(
        "store:\n  breaker: { min_backoff_ms: 5000 }\n",
        2,
        "store.breaker.min_backoff_ms",
        &["above max_backoff_ms 1000 (the default)"],
    );
    refused(
        "store:\n  breaker: { threshold: 3 }\n",
        2,
        "store.breaker.threshold",
        &[
            "unknown field `threshold`",
            "accepted fields here: failures, min_backoff_ms, max_backoff_ms",
        ],
    );
    refused(
        "store:\n  default_ttl_ms: 0\n",
        2,
        "store.default_ttl_ms",
        &["accepted: a whole number of milliseconds from 1 to 31536000000 (365 days)"],
    );
    refused(
        "store:\n  flush_on_startup: yes please\n",
        2,
        "store.flush_on_startup",
        &["true or false"],
    );
    refused(
        "store:\n  username: \"my app\"\n",
        2,
        "store.username",
        &["user name \"my app\" holds spaces", "accepted: a Redis ACL user name"],
    );
}

#[test]
fn bad_tls_settings() {
    let dir = PemDir::new("bad-tls");
    refused(
        "store:\n  url: redis://h:6379\n  tls: {}\n",
        2,
        "store.url",
        &[
            "\"redis://h:6379\" is plain redis://, which never uses TLS (for TLS, use rediss:// instead), but store.tls is set",
            "accepted: a rediss:// URL",
        ],
    );
    refused(
        &format!(
            "store:\n  tls:\n    # the CA\n    ca_file: \"{}\"\n  url: redis://:pw@h\n",
            dir.path("ca.pem")
        ),
        5,
        "store.url",
        &["but store.tls is set"],
    );
    let shown = refused(
        &format!("store:\n  tls:\n    ca_file: \"{}\"\n", dir.path("ca.pem")),
        2,
        "store.tls",
        &[
            "\"memory://\" (the default: store.url is not set) is the in-process store",
            "rediss://",
        ],
    );
    assert!(shown.starts_with("test.yaml:2:3: "), "{shown}");
    refused(
        "store:\n  tls:\n",
        2,
        "store.tls",
        &[
            "\"memory://\" (the default: store.url is not set) is the in-process store",
            "rediss://",
        ],
    );
    refused(
        &format!(
            "store:\n  url: rediss://h\n  tls:\n    cert_file: \"{}\"\n",
            dir.path("client.pem")
        ),
        4,
        "store.tls.cert_file",
        &[
            "cert_file is set without key_file",
            "accepted: both cert_file and key_file",
        ],
    );
    refused(
        &format!(
            "store:\n  url: rediss://h\n  tls:\n    key_file: \"{}\"\n",
            dir.path("client.key")
        ),
        4,
        "store.tls.key_file",
        &["key_file is set without cert_file"],
    );
    let missing = dir.path("missing-ca.pem");
    refused(
        &format!("store:\n  url: rediss://h\n  tls:\n    ca_file: \"{missing}\"\n"),
        4,
        "store.tls.ca_file",
        &[
            &format!("file {missing:?} does not exist"),
            "accepted: the path of a readable PEM file holding a certificate",
        ],
    );
    refused(
        &format!(
            "store:\n  url: rediss://h\n  tls:\n    ca_file: \"{}\"\n",
            dir.path("plain.txt")
        ),
        4,
        "store.tls.ca_file",
        &["is not PEM (it has no `-----BEGIN ...-----` line)"],
    );
    refused(
        &format!(
            "store:\n  url: rediss://h\n  tls:\n    ca_file: \"{}\"\n",
            dir.path("client.key")
        ),
        4,
        "store.tls.ca_file",
        &["holds no certificate"],
    );
    refused(
        &format!(
            "store:\n  url: rediss://h\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n",
            dir.path("client.key"),
            dir.path("client.pem")
        ),
        4,
        "store.tls.cert_file",
        &["holds no certificate"],
    );
    refused(
        &format!(
            "store:\n  url: rediss://h\n  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n",
            dir.path("client.pem"),
            dir.path("client.pem")
        ),
        5,
        "store.tls.key_file",
        &[
            "holds no private key",
            "accepted: the path of a readable PEM file holding a private key",
        ],
    );
    refused(
        &format!(
            "store:\n  url: rediss://h\n  tls:\n    ca_file: \"{}\"\n",
            dir.0.display()
        ),
        4,
        "store.tls.ca_file",
        &["is a directory"],
    );
    refused(
        "store:\n  url: rediss://h\n  tls:\n    ca_file: \"\"\n",
        4,
        "store.tls.ca_file",
        &["no file is named"],
    );
    refused(
        "store:\n  url: rediss://h\n  tls:\n    cafile: /x.pem\n",
        4,
        "store.tls.cafile",
        &[
            "did you mean `ca_file`?",
            "accepted fields here: ca_file, cert_file, key_file",
        ],
    );
    // TLS is shared: a concern's own redis:// url is refused.
    refused(
        "store:\n  url: rediss://h\n  tls: {}\nstores:\n  cache:\n    url: redis://c:6379\n",
        6,
        "stores.cache.url",
        &[
            "\"redis://c:6379\" is plain redis://",
            "store.tls is set and applies to every concern",
            "use rediss://",
        ],
    );
    refused(
        "store:\n  url: rediss://h\n  tls: {}\nstores:\n  events: { url: \"memory://\" }\n",
        5,
        "stores.events.url",
        &["in-process store", "store.tls is set and applies to every concern"],
    );
}

#[test]
fn bad_concern_stores() {
    refused(
        "stores:\n  sessions:\n    url: redis://h\n    pool_size: 4\n",
        4,
        "stores.sessions.pool_size",
        &[
            "unknown field `pool_size`",
            "accepted fields here: url, key_prefix, timeout_ms, default_ttl_ms",
            "shared by every concern: set them under `store`",
        ],
    );
    refused(
        "stores:\n  session:\n    url: redis://h\n",
        2,
        "stores.session",
        &[
            "unknown field `session`",
            "did you mean `sessions`?",
            "accepted fields here: rate_limits, sessions, markers, cache, events",
        ],
    );
    refused(
        "stores:\n  locks: {}\n",
        2,
        "stores.locks",
        &["accepted fields here: rate_limits, sessions, markers, cache, events"],
    );
    refused(
        "stores:\n  cache:\n    url: mongodb://h\n",
        3,
        "stores.cache.url",
        &[
            "unknown store URL scheme \"mongodb://\"",
            "accepted: memory://, redis://",
        ],
    );
    refused(
        "stores:\n  markers:\n    url: redis-sentinel://h:26379\n",
        3,
        "stores.markers.url",
        &["master=NAME"],
    );
    refused(
        "stores:\n  rate_limits: { timeout_ms: 0 }\n",
        2,
        "stores.rate_limits.timeout_ms",
        &["accepted: a whole number of milliseconds"],
    );
    refused(
        "stores:\n  events: { key_prefix: \"a b\" }\n",
        2,
        "stores.events.key_prefix",
        &["key prefix \"a b\" is not accepted"],
    );
    refused(
        "stores:\n  cache: { default_ttl_ms: 31536000001 }\n",
        2,
        "stores.cache.default_ttl_ms",
        &["365 days"],
    );
    refused(
        "stores:\n  rate_limits: [1]\n",
        2,
        "stores.rate_limits",
        &[
            "expected a mapping",
            "accepted: a mapping with optional `url`, `key_prefix`, `timeout_ms`, `default_ttl_ms`",
        ],
    );
}

const SECRETS: [&str; 5] = ["hunter2", "urlpw77", "sentpw99", "envpw55", "concernpw33"];

#[track_caller]
fn assert_no_secret(shown: &str) {
    for s in SECRETS {
        assert!(!shown.contains(s), "{s:?} shown in:\n{shown}");
    }
}

#[test]
fn debug_output_never_shows_passwords() {
    let text = "store:\n  url: redis-sentinel://app:urlpw77@s1:26379?master=m\n  password: hunter2\n  sentinel_password: sentpw99\n  tls: {}\nstores:\n  cache:\n    url: rediss://:concernpw33@c:6380\n";
    let c = p(text).unwrap();
    assert_eq!(c.store.password.as_deref(), Some("hunter2"));
    let shown = format!("{c:?}");
    assert_no_secret(&shown);
    assert!(shown.contains("redis-sentinel://app:***@s1:26379?master=m"), "{shown}");
    assert!(shown.contains("password: Some(\"***\")"), "{shown}");
    assert!(shown.contains("sentinel_password: Some(\"***\")"), "{shown}");
    assert_no_secret(&format!("{c:#?}"));
    assert_no_secret(&format!("{:?}", c.stores.cache));
    assert_no_secret(&c.stores.cache.redacted_url());
    // The driver's options hide them too.
    assert_no_secret(&format!("{:?}", c.store.redis_options()));
    // And with the URL from REDIS_URL.
    let c = with_env(text, &[("REDIS_URL", "redis-cluster://:envpw55@a:7000")]).unwrap();
    assert_no_secret(&format!("{c:?}"));
}

#[test]
fn errors_never_show_passwords() {
    let dir = PemDir::new("secret-errors");
    let head = "store:\n  url: redis://app:urlpw77@h:6379/0\n  password: hunter2\n  sentinel_password: \"sentpw99\"\n";
    let cases: Vec<String> = vec![
        // An error on each secret line, and after them.
        "store:\n  url: redis://app:urlpw77@:6379\n".into(),
        "store:\n  url: mysql://app:urlpw77@h\n".into(),
        "store:\n  url: redis://app:url/pw77@h\n".into(),
        "store:\n  url: redis://app:urlpw77@h:6379/x\n".into(),
        "store:\n  url: \"redis://app:url,pw77]}@h\"\n  timeout_ms: 0\n".into(),
        "store:\n  password: [hunter2]\n".into(),
        "store:\n  password: { a: hunter2 }\n".into(),
        "store:\n  pasword: hunter2\n".into(),
        "store:\n  Password: hunter2\n".into(),
        "store:\n  sentinel_pasword: sentpw99\n".into(),
        "store: { password: hunter2, timeout_ms: 0 }\n".into(),
        "store: { url: \"redis://:urlpw77@h\", tls: {} }\n".into(),
        "stores:\n  cache: { password: hunter2 }\n".into(),
        "stores:\n  cache: { url: \"mongodb://:concernpw33@h\" }\n".into(),
        "stores:\n  cache: { url: \"redis://:concernpw33@h\", timeout_ms: nope }\n".into(),
        format!("{head}  timeout_ms: 0\n"),
        format!("{head}  tls: {{}}\n"),
        format!("{head}  tls: {{ ca_file: \"{}\" }}\n", dir.path("nothing.pem")),
        format!("{head}  reconnect_min_ms: 9000\n"),
        format!("{head}  breaker: {{ failures: 0 }}\n"),
        format!("{head}stores:\n  sessions:\n    url: \"redis://u:concernpw33@:1\"\n"),
        format!("{head}stores:\n  sessions:\n    password: concernpw33\n"),
        format!("{head}listen: nope\n"),
        format!("{head}  unknown: 1\n"),
        format!("{head}- x\n"),
        format!("{head}  password: again\n"),
    ];
    for text in &cases {
        let e = p(text).expect_err(text);
        assert_no_secret(&e.to_string());
        assert_no_secret(&format!("{e:?}"));
        // Also when the secret comes from the environment.
        let with_var = text.replace("hunter2", "${FGT_SECRET}");
        if let Err(e) = with_env(&with_var, &[("FGT_SECRET", "hunter2")]) {
            assert_no_secret(&e.to_string());
        }
    }
    // REDIS_URL with a password, refused.
    for url in ["redis://:envpw55@", "ftp://u:envpw55@h", "redis://u:envpw55@h/x"] {
        let e = with_env(head, &[("REDIS_URL", url)]).unwrap_err();
        assert_no_secret(&e.to_string());
    }
}

/// Every store field, for mutation tests (no TLS files: a mutation may make it fail anyway).
const STORE_FULL: &str = "store:
  url: redis-sentinel://app:pw@s1:26379,s2:26379/2?master=main
  key_prefix: prod
  timeout_ms: 80
  reconnect_min_ms: 20
  reconnect_max_ms: 2000
  username: app
  password: \"p@ss: w#rd\"
  sentinel_username: watcher
  sentinel_password: sent
  tls: {}
  breaker: { failures: 5, min_backoff_ms: 200, max_backoff_ms: 4000 }
  flush_on_startup: false
  default_ttl_ms: 3600000
stores:
  rate_limits: { url: \"redis-cluster://c1:7000,c2:7001\", timeout_ms: 5 }
  sessions:
    key_prefix: sess
    default_ttl_ms: 2592000000
  markers: {}
  cache:
  events: { url: \"rediss://e:6380\" }
";

mod props {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn store_full_is_valid() {
        let c = p(STORE_FULL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.stores.rate_limits.kind, StoreKind::RedisCluster);
        assert_eq!(c.store.password.as_deref(), Some("p@ss: w#rd"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = p(&text);
        }

        #[test]
        fn yamlish_text_never_panics(text in "[a-z_:\\[\\]{}, \\-\\n\"'#$&*!|>0-9./]{0,300}") {
            let _ = p(&text);
        }

        #[test]
        fn mutated_valid_configs_never_panic(
            cut in 0usize..4000,
            len in 0usize..20,
            insert in "\\PC{0,12}",
        ) {
            let chars: Vec<char> = FULL.chars().collect();
            let at = cut.min(chars.len());
            let end = (at + len).min(chars.len());
            let mut s: String = chars[..at].iter().collect();
            s.push_str(&insert);
            s.extend(&chars[end..]);
            match p(&s) {
                Ok(_) => {}
                Err(e) => {
                    // Every error names the file and prints without panicking.
                    prop_assert!(e.to_string().starts_with("test.yaml"));
                }
            }
        }

        #[test]
        fn mutated_store_configs_never_panic(
            cut in 0usize..900,
            len in 0usize..20,
            insert in "\\PC{0,12}",
        ) {
            let chars: Vec<char> = STORE_FULL.chars().collect();
            let at = cut.min(chars.len());
            let end = (at + len).min(chars.len());
            let mut s: String = chars[..at].iter().collect();
            s.push_str(&insert);
            s.extend(&chars[end..]);
            if let Err(e) = p(&s) {
                prop_assert!(e.to_string().starts_with("test.yaml"));
            }
        }

        #[test]
        fn passwords_from_the_environment_never_show(
            value in "Zq9[A-Za-z0-9!%^*()_+=.,;~/?@#:-]{4,24}",
            which in 0usize..4,
        ) {
            let text = [
                "store:\n  url: \"redis://u:${V}@h:6379\"\n  timeout_ms: 0\n",
                "store:\n  password: \"${V}\"\n  sentinel_password: \"${V}\"\n  tls: {}\n",
                "store:\n  url: \"redis-sentinel://u:${V}@h:1?master=m\"\nstores:\n  cache: { url: \"redis://:${V}@c\", nope: 1 }\n",
                "stores:\n  sessions:\n    url: \"mongodb://:${V}@h\"\n",
            ][which];
            let e = with_env(text, &[("V", &value)]).expect_err("refused");
            prop_assert!(!e.to_string().contains(&value), "{}", e);
            let e = with_env(text, &[("V", "x"), ("REDIS_URL", &format!("redis://u:{value}@"))]).expect_err("refused");
            prop_assert!(!e.to_string().contains(&value), "{}", e);
        }

        #[test]
        fn env_values_never_panic(value in "\\PC{0,40}") {
            let _ = with_env("listen: ${V}\nstore:\n  url: ${V}\nroutes:\n  - name: ${V:-x}\n    respond: { body: ${V} }\n", &[("V", &value), ("REDIS_URL", &value)]);
        }
    }
}

/// The field names the file format accepts: every field of the `Deserialize` structs of the
/// type tree (this crate's sections and the limit types beside their concern), under its serde
/// `rename` when it has one; `#[serde(skip)]` fields are not read from the file, and a
/// `try_from` struct is read through the struct it names.
fn accepted_field_names() -> Vec<String> {
    let sources = [
        include_str!("model.rs"),
        include_str!("store.rs"),
        include_str!("tls.rs"),
        include_str!("upstream.rs"),
        include_str!("route.rs"),
        include_str!("validate.rs"),
        include_str!("../../fleetgate-http/src/ratelimit/config.rs"),
        include_str!("../../fleetgate-http/src/concurrency/config.rs"),
        include_str!("../../fleetgate-http/src/payment/config.rs"),
        include_str!("../../fleetgate-http/src/upstream_login/config.rs"),
        include_str!("../../fleetgate-http/src/forward_auth/config.rs"),
        include_str!("../../fleetgate-http/src/idempotency/config.rs"),
        include_str!("../../fleetgate-http/src/cache/config.rs"),
        include_str!("../../fleetgate-http/src/dedup/config.rs"),
        include_str!("upstream_policy.rs"),
        include_str!("rewrite.rs"),
        include_str!("../../fleetgate-http/src/headers.rs"),
    ];
    let mut fields = Vec::new();
    for source in sources {
        let (mut derive_seen, mut in_serde_struct, mut rename, mut skip) = (false, false, None::<String>, false);
        for line in source.lines() {
            let text = line.trim();
            if text.starts_with("#[derive(") {
                derive_seen = text.contains("Deserialize");
            } else if text.contains("try_from = ") {
                // Read through another struct, which names the fields.
                derive_seen = false;
            } else if text.contains("struct ") && text.ends_with('{') {
                in_serde_struct = derive_seen;
                derive_seen = false;
            } else if line.starts_with('}') {
                in_serde_struct = false;
            }
            if let Some((_, after)) = text.split_once("rename = \"") {
                rename = after.split('"').next().map(str::to_string);
            }
            skip |= text.starts_with("#[serde(skip");
            let field = text
                .strip_prefix("pub(crate) ")
                .or_else(|| text.strip_prefix("pub "))
                .unwrap_or(text);
            if let Some((name, _)) = field.split_once(": ") {
                if in_serde_struct && !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    if !skip {
                        fields.push(rename.take().unwrap_or_else(|| name.to_string()));
                    }
                    (rename, skip) = (None, false);
                }
            }
        }
    }
    fields
}

/// docs/configuration.md is the reference for every field: each accepted name appears there in
/// code spans (alone or as a segment of a dotted path such as `server.max_body_bytes`).
#[test]
fn the_configuration_reference_names_every_field() {
    let doc = include_str!("../../../docs/configuration.md");
    let documented: std::collections::HashSet<&str> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|span| span.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .collect();
    let fields = accepted_field_names();
    assert!(fields.len() > 60, "the sources were read: {fields:?}");
    for expected in [
        "listen",
        "match",
        "max_body_bytes",
        "on_missing_key",
        "sentinel_password",
    ] {
        assert!(fields.iter().any(|f| f == expected), "{expected} among {fields:?}");
    }
    let missing: Vec<&String> = fields.iter().filter(|f| !documented.contains(f.as_str())).collect();
    assert!(
        missing.is_empty(),
        "fields missing from docs/configuration.md: {missing:?}"
    );
}

#[test]
fn access_log_forms_are_read() {
    for (written, want) in [
        ("true", AccessLog::Text),
        ("false", AccessLog::Off),
        ("text", AccessLog::Text),
        ("JSON", AccessLog::Json),
        ("off", AccessLog::Off),
        ("", AccessLog::Text),
    ] {
        let c = p(&format!("log:\n  access_log: {written}\n")).unwrap();
        assert_eq!(c.log.access_log, want, "{written:?}");
    }
}

#[test]
fn telemetry_otlp_is_read_and_checked() {
    assert_eq!(Config::default().telemetry.otlp, None);
    let c = p("telemetry:\n  otlp:\n    endpoint: http://127.0.0.1:4318\n").unwrap();
    let otlp = c.telemetry.otlp.unwrap();
    assert_eq!(otlp.endpoint.0, "http://127.0.0.1:4318/v1/traces");
    assert_eq!(otlp.service_name, "fleetgate");
    for (written, full) in [
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
        ("http://collector:4318/otel", "http://collector:4318/otel/v1/traces"),
    ] {
        let c = p(&format!(
            "telemetry:\n  otlp:\n    endpoint: {written}\n    service_name: edge\n"
        ))
        .unwrap();
        let otlp = c.telemetry.otlp.unwrap();
        assert_eq!(otlp.endpoint.0, full);
        assert_eq!(otlp.service_name, "edge");
    }
    refused(
        "telemetry:\n  otlp:\n    endpoint: https://c:4318\n",
        3,
        "telemetry.otlp.endpoint",
        &["not an http:// URL", "accepted: an http:// URL"],
    );
    refused(
        "telemetry:\n  otlp:\n    endpoint: http://u:p@c:4318\n",
        3,
        "telemetry.otlp.endpoint",
        &["credentials"],
    );
    refused(
        "telemetry:\n  otlp:\n    endpoint: http://c:4318\n    service_name: \"\"\n",
        4,
        "telemetry.otlp.service_name",
        &["not a service name"],
    );
    refused(
        "telemetry:\n  otlp:\n    endpont: http://c:4318\n",
        3,
        "telemetry.otlp.endpont",
        &["endpoint"],
    );
}

// ---- unit tests of the modules (moved here from each module) ----

mod model_units {
    use crate::model::*;

    /// A route read as written (so that a new field needs nothing here), its target resolved.
    fn route(prefix: Option<&str>, strip: bool) -> RouteConfig {
        let mut r: RouteConfig = serde_saphyr::from_str("name: r").expect("a route");
        r.matcher.path_prefix = prefix.map(str::to_string);
        r.strip_prefix = strip;
        r.target = RouteTarget::Upstream("u".into());
        r
    }

    #[test]
    fn path_prefix_matches_at_segment_boundaries() {
        let m = |p: &str, path: &str| route(Some(p), false).matcher.matches("GET", None, path);
        assert!(m("/api", "/api"));
        assert!(m("/api", "/api/"));
        assert!(m("/api", "/api/x"));
        assert!(!m("/api", "/apix"));
        assert!(!m("/api", "/"));
        assert!(m("/api/", "/api/x"));
        assert!(!m("/api/", "/api"));
        assert!(m("/", "/anything"));
        assert!(route(None, false).matcher.matches("PUT", None, "/x"));
    }

    #[test]
    fn host_and_methods_match() {
        let m = RouteMatch {
            path_prefix: None,
            host: Some("api.example.com".into()),
            methods: vec!["GET".into(), "POST".into()],
            ..RouteMatch::default()
        };
        assert!(m.matches("GET", Some("API.example.com:8080"), "/"));
        assert!(m.matches("POST", Some("api.example.com"), "/"));
        assert!(!m.matches("DELETE", Some("api.example.com"), "/"));
        assert!(!m.matches("GET", Some("other.example.com"), "/"));
        assert!(!m.matches("GET", None, "/"));
        let v6 = RouteMatch {
            host: Some("::1".into()),
            ..RouteMatch::default()
        };
        assert!(v6.matches("GET", Some("[::1]:80"), "/"));
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let r = route(Some("/api"), true);
        assert_eq!(r.upstream_path("/api"), "/");
        assert_eq!(r.upstream_path("/api/x/y"), "/x/y");
        assert_eq!(r.upstream_path("/api/x?q=1"), "/x?q=1");
        assert_eq!(r.upstream_path("/api?q=/a"), "/?q=/a");
        let r = route(Some("/api/"), true);
        assert_eq!(r.upstream_path("/api/x"), "/x");
        assert_eq!(route(Some("/api"), false).upstream_path("/api/x"), "/api/x");
    }

    #[test]
    fn redacted_urls_hide_passwords_however_written() {
        for (url, shown) in [
            ("redis://app:s3cret@h:6379/0", "redis://app:***@h:6379/0"),
            ("rediss://:s3cret@h", "rediss://:***@h"),
            ("redis://a:p@ss@h/0", "redis://a:***@h/0"),
            ("redis://a:se/cr?et@h/0", "redis://a:***@h/0"),
            (
                "redis-sentinel://u:pw@h1:1,h2:2?master=m",
                "redis-sentinel://u:***@h1:1,h2:2?master=m",
            ),
            ("redis://user@h", "redis://user@h"),
            ("redis://h:6379", "redis://h:6379"),
            ("memory://", "memory://"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn trusted_proxies_include_mapped_v4() {
        let cfg = Config {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        assert!(cfg.is_trusted_proxy("10.1.2.3".parse().unwrap()));
        assert!(cfg.is_trusted_proxy("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!cfg.is_trusted_proxy("11.0.0.1".parse().unwrap()));
    }
}

mod error_units {
    use crate::error::*;
    use crate::snippet::*;
    use crate::store_url::redact_url as redact_urls;

    #[test]
    fn snippet_points_at_the_column() {
        let s = snippet("a: 1\n  rate: 0/s\n", 2, Some(9)).unwrap();
        assert_eq!(s, "  |\n2 |   rate: 0/s\n  |         ^");
        assert!(snippet("a\n", 5, None).is_none());
        assert!(snippet("a\n", 0, None).is_none());
    }

    #[test]
    fn snippets_hide_url_passwords() {
        assert_eq!(
            redact_urls("  url: redis://u:secret@h:1/0 # x"),
            "  url: redis://u:***@h:1/0 # x"
        );
        assert_eq!(
            redact_urls("x: [\"rediss://:p@a\", http://b]"),
            "x: [\"rediss://:***@a\", http://b]"
        );
        assert_eq!(redact_urls("no url :// here"), "no url :// here");
        assert_eq!(redact_urls("x:\u{3000}redis://a:b@c"), "x:\u{3000}redis://a:***@c");
        let s = snippet("store:\n  url: redis://u:pw@h\n", 2, Some(8)).unwrap();
        assert!(!s.contains("pw"), "{s}");
    }

    #[test]
    fn snippets_hide_secret_values_and_keep_the_caret() {
        let s = snippet(
            "store: { url: \"redis://:longsecret@h\", timeout_ms: x }\n",
            1,
            Some(52),
        )
        .unwrap();
        assert!(!s.contains("longsecret"), "{s}");
        assert_eq!(
            s,
            "  |\n1 | store: { url: \"redis://:***@h\", timeout_ms: x }\n  |                                             ^"
        );
        assert_eq!(shown_line("  password: hunter2 # x"), "  password: ***");
        assert_eq!(
            shown_line("  - \"sentinel_password\":  a b"),
            "  - \"sentinel_password\": ***"
        );
        assert_eq!(shown_line("store: { pasword: hunter2, x: 1 }"), "store: { pasword: ***");
        assert_eq!(shown_line("  passive: { failures: 3 }"), "  passive: { failures: 3 }");
        assert_eq!(shown_line("  url: redis://u:p ss,w@h"), "  url: redis://u:***@h");
        let s = snippet("store:\n  password: [hunter2]\n", 2, Some(13)).unwrap();
        assert_eq!(s, "  |\n2 |   password: ***\n  |             ^");
    }

    #[test]
    fn only_secret_keys_are_hidden() {
        for key in [
            "password",
            "sentinel_password",
            "Password",
            "pasword",
            "sentinel_pasword",
            "db_secret",
            "api-token",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        // Every other field name of the schema is shown.
        for key in [
            "listen",
            "admin",
            "log",
            "level",
            "access_log",
            "store",
            "stores",
            "url",
            "key_prefix",
            "timeout_ms",
            "connect_timeout_ms",
            "pool_size",
            "reconnect_min_ms",
            "reconnect_max_ms",
            "username",
            "sentinel_username",
            "tls",
            "ca_file",
            "cert_file",
            "key_file",
            "breaker",
            "failures",
            "min_backoff_ms",
            "max_backoff_ms",
            "flush_on_startup",
            "default_ttl_ms",
            "rate_limits",
            "sessions",
            "markers",
            "cache",
            "events",
            "server",
            "max_header_bytes",
            "max_body_bytes",
            "request_timeout_ms",
            "idle_timeout_ms",
            "drain_timeout_ms",
            "trusted_proxies",
            "upstreams",
            "targets",
            "health_check",
            "path",
            "interval_ms",
            "unhealthy_threshold",
            "healthy_threshold",
            "passive",
            "eject_ms",
            "routes",
            "name",
            "match",
            "path_prefix",
            "host",
            "methods",
            "upstream",
            "respond",
            "status",
            "body",
            "headers",
            "strip_prefix",
            "concurrency_limits",
            "key",
            "rate",
            "burst",
            "algorithm",
            "cost",
            "on_store_error",
            "on_missing_key",
            "ipv6_prefix",
            "max",
            "lease_ms",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn closest_suggests_near_names() {
        assert_eq!(closest("rtae", &["name", "rate", "burst"]), Some("rate"));
        assert_eq!(closest("algoritm", &["algorithm", "cost"]), Some("algorithm"));
        assert_eq!(closest("zzzzzz", &["name", "rate"]), None);
    }
}

mod env_units {
    use crate::env::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).map(OsString::from)
    }

    fn sub(text: &str, pairs: &[(&str, &str)]) -> Result<String, SubstError> {
        substitute(text, &env(pairs)).map(|(t, _)| t)
    }

    #[test]
    fn substitutes_set_unset_and_defaults() {
        let e = [("HOST", "10.1.2.3"), ("EMPTY", "")];
        assert_eq!(sub("a: ${HOST}:80\n", &e).unwrap(), "a: 10.1.2.3:80\n");
        assert_eq!(sub("a: ${NOPE:-x y}\n", &e).unwrap(), "a: x y\n");
        assert_eq!(sub("a: ${EMPTY:-dflt}\n", &e).unwrap(), "a: dflt\n");
        assert_eq!(sub("a: '${EMPTY}'\n", &e).unwrap(), "a: ''\n");
        assert_eq!(sub("a: ${HOST:-x}\n", &e).unwrap(), "a: 10.1.2.3\n");
        assert_eq!(sub("a: ${NOPE:-}\n", &e).unwrap(), "a: \n");
        assert_eq!(sub("a: \"${HOST}\"\n", &e).unwrap(), "a: \"10.1.2.3\"\n");
    }

    #[test]
    fn escapes_comments_and_lone_dollars() {
        assert_eq!(sub("a: $${X}\n", &[]).unwrap(), "a: ${X}\n");
        assert_eq!(sub("a: $5 and $X\n", &[]).unwrap(), "a: $5 and $X\n");
        assert_eq!(
            sub("a: b # see ${UNSET}\n# ${UNSET}\n", &[]).unwrap(),
            "a: b # see ${UNSET}\n# ${UNSET}\n"
        );
        // A '#' inside a quoted string or a word is not a comment.
        assert!(sub("a: \"x # ${UNSET}\"\n", &[]).is_err());
        assert!(sub("a: x#${UNSET}\n", &[]).is_err());
    }

    #[test]
    fn unset_variable_names_variable_and_line() {
        let e = sub("a: 1\nb: ${FG_SURELY_UNSET}\n", &[]).unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
        assert!(e.message.contains("FG_SURELY_UNSET is not set"), "{}", e.message);
        assert!(e.message.contains("line 2"), "{}", e.message);
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in ["${}", "${1A}", "${A-b}", "${A", "${A:-${B}}", "${A B}"] {
            let e = sub(&format!("x: {bad}\n"), &[("A", "1"), ("B", "2")]).unwrap_err();
            assert!(
                e.message.contains("accepted: ${NAME}") || e.message.contains("unclosed"),
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn line_breaks_in_values_are_refused() {
        let e = sub("x: ${ML}\n", &[("ML", "a\nb")]).unwrap_err();
        assert!(e.message.contains("line break"));
    }

    #[test]
    fn columns_map_back() {
        let (text, map) = substitute("k: ${LONGNAME}, after\n", &env(&[("LONGNAME", "v")])).unwrap();
        assert_eq!(text, "k: v, after\n");
        // 'a' of "after" is column 7 in the new text, column 17 in the original.
        assert_eq!(map.original_column(1, 7), 17);
        // Inside the value: the reference's '$'.
        assert_eq!(map.original_column(1, 4), 4);
        assert_eq!(map.original_column(1, 2), 2);
        assert_eq!(map.original_column(2, 9), 9);
    }
}

mod duration_units {
    use crate::duration::*;
    use std::time::Duration;

    #[test]
    fn reads_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn says_what_is_wrong() {
        assert_eq!(parse_duration(""), Err("a duration is required".to_string()));
        assert_eq!(parse_duration("30"), Err("\"30\" has no unit".to_string()));
        assert_eq!(
            parse_duration("s"),
            Err("\"s\" does not start with a whole number".to_string())
        );
        assert_eq!(
            parse_duration("-1s"),
            Err("\"-1s\" does not start with a whole number".to_string())
        );
        assert_eq!(parse_duration("1.5s"), Err("\"1.5s\" has unit \".5s\"".to_string()));
        assert_eq!(parse_duration("3 s"), Err("\"3 s\" has unit \" s\"".to_string()));
        assert_eq!(parse_duration("2w"), Err("\"2w\" has unit \"w\"".to_string()));
        assert_eq!(
            parse_duration("99999999999999999999d"),
            Err("\"99999999999999999999d\" is longer than 7d".to_string())
        );
        assert_eq!(
            parse_duration("18446744073709551615d"),
            Err("\"18446744073709551615d\" is longer than 7d".to_string())
        );
    }
}

#[test]
fn https_targets_and_upstream_tls_settings() {
    let c = p("upstreams:\n  b:\n    targets: [https://api.internal, http://x]\n    protocol: http2\n").unwrap();
    let b = &c.upstreams["b"];
    assert_eq!((b.targets[0].tls, b.targets[0].port), (true, 443));
    assert_eq!(b.targets[0].url(), "https://api.internal:443");
    assert_eq!((b.targets[1].tls, b.targets[1].port), (false, 80));
    assert_eq!(b.protocol, UpstreamProtocol::Http2);
    assert_eq!(b.tls, UpstreamTlsConfig::default());
    let c = p("upstreams:\n  b:\n    targets: [https://10.0.0.1:8443]\n    tls: { server_name: API.internal, insecure_skip_verify: true }\n").unwrap();
    let t = &c.upstreams["b"].tls;
    assert_eq!(t.server_name.as_deref(), Some("api.internal"));
    assert!(t.insecure_skip_verify);
    assert_eq!(c.upstreams["b"].protocol, UpstreamProtocol::Auto);
    refused(
        "upstreams:\n  b:\n    targets: [https://x]\n    protocol: spdy\n",
        4,
        "upstreams.b.protocol",
        &["unknown protocol \"spdy\"", "auto", "http1", "http2"],
    );
    refused(
        "upstreams:\n  b:\n    targets: [https://x]\n    tls: { server_name: \"a b\" }\n",
        4,
        "upstreams.b.tls.server_name",
        &["is not a DNS name or IP address"],
    );
    refused(
        "upstreams:\n  b:\n    targets: [https://x]\n    tls: { cert_file: /nonexistent.pem }\n",
        4,
        "upstreams.b.tls.cert_file",
        &["cert_file is set without key_file"],
    );
    refused(
        "upstreams:\n  b:\n    targets: [https://x]\n    tls: { ca_file: /nonexistent/ca.pem }\n",
        4,
        "upstreams.b.tls.ca_file",
        &["does not exist"],
    );
    refused(
        "upstreams:\n  b:\n    targets: [http://x]\n    tls: { server_name: x }\n",
        4,
        "upstreams.b.tls",
        &["none of its targets is https://"],
    );
}

#[test]
fn the_tls_listener_section() {
    let dir = std::env::temp_dir().join(format!("fleetgate-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n").unwrap();
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n").unwrap();
    let (c_, k_) = (cert.display(), key.display());
    let c = p(&format!(
        "tls:\n  listen: 127.0.0.1:9443\n  certificates:\n    - {{ cert_file: {c_}, key_file: {k_} }}\n"
    ))
    .unwrap();
    let tls = c.tls.expect("the section");
    assert_eq!(tls.listen, "127.0.0.1:9443".parse().unwrap());
    assert_eq!(
        tls.certificates,
        [CertificatePair {
            cert_file: cert.clone(),
            key_file: key.clone()
        }]
    );
    assert_eq!(tls.reload_interval, std::time::Duration::from_secs(5));
    assert!(p("listen: 127.0.0.1:1\n").unwrap().tls.is_none());
    refused(
        "tls:\n  certificates: []\n",
        2,
        "tls.certificates",
        &["no certificates"],
    );
    refused(
        &format!("tls:\n  certificates:\n    - {{ cert_file: {c_} }}\n"),
        3,
        "tls.certificates[0]",
        &["needs both cert_file and key_file"],
    );
    refused(
        &format!("tls:\n  certificates:\n    - {{ cert_file: {k_}, key_file: {k_} }}\n"),
        3,
        "tls.certificates[0].cert_file",
        &["holds no certificate"],
    );
    refused(
        &format!("tls:\n  reload_interval: 0s\n  certificates:\n    - {{ cert_file: {c_}, key_file: {k_} }}\n"),
        2,
        "tls.reload_interval",
        &["out of range"],
    );
    refused(
        &format!("listen: 127.0.0.1:8443\ntls:\n  listen: 127.0.0.1:8443\n  certificates:\n    - {{ cert_file: {c_}, key_file: {k_} }}\n"),
        3,
        "tls.listen",
        &["also the address of `listen`"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- live events, admin token, count_statuses ----

#[test]
fn events_and_the_admin_token_read_with_defaults_and_bounds() {
    let c = p("").unwrap();
    assert!(c.events.enabled);
    assert_eq!(
        (c.events.buffer, c.events.batch, c.events.stream_max_len),
        (8192, 256, 100_000)
    );
    assert_eq!(c.admin.token, None);
    let c = p("events:\n  enabled: false\n  buffer: 64\n  batch: 8\n  stream_max_len: 1000\n").unwrap();
    assert_eq!(
        (
            c.events.enabled,
            c.events.buffer,
            c.events.batch,
            c.events.stream_max_len
        ),
        (false, 64, 8, 1000)
    );
    refused(
        "events:\n  buffer: 2\n",
        2,
        "events.buffer",
        &["2 is out of range", "16 to 1048576"],
    );
    refused("events:\n  batch: 0\n", 2, "events.batch", &["1 to 10000"]);
    refused(
        "events:\n  stream_max_len: 5\n",
        2,
        "events.stream_max_len",
        &["100 to 100000000"],
    );
    let c = with_env("admin:\n  token: ${ADMIN_TOKEN}\n", &[("ADMIN_TOKEN", "hunter2")]).unwrap();
    assert_eq!(c.admin.token.as_deref(), Some("hunter2"));
    assert!(!format!("{c:?}").contains("hunter2"), "the token is never printed");
    let c = with_env("admin:\n  token: ${ADMIN_TOKEN:-}\n", &[]).unwrap();
    assert_eq!(c.admin.token, None, "empty means no token");
}

#[test]
fn count_statuses_reads_a_list_of_statuses_and_refuses_what_cannot_work() {
    let c = p(&with_limit("key: ip\nrate: 5/15m\ncount_statuses: [401, 403]")).unwrap();
    assert_eq!(c.routes[0].rate_limits[0].count_statuses, vec![401, 403]);
    assert!(p(&with_limit("key: ip\nrate: 5/15m")).unwrap().routes[0].rate_limits[0]
        .count_statuses
        .is_empty());
    for (bad, needle) in [
        ("[]", "an empty list would count nothing"),
        ("[99]", "99 is not an HTTP status"),
        ("[401, 600]", "600 is not an HTTP status"),
    ] {
        let err = p(&with_limit(&format!("key: ip\nrate: 5/15m\ncount_statuses: {bad}")))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle) && err.contains("count_statuses"), "{bad}: {err}");
    }
    let err = p(&with_limit("key: ip\nrate: 5/15m\nmode: lease\ncount_statuses: [401]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("mode: exact with count_statuses"), "{err}");
}

fn with_login(lines: &str) -> String {
    format!("upstreams:\n  backend:\n    targets: [http://127.0.0.1:3000]\n    login:\n{lines}routes:\n  - name: api\n    upstream: backend\n")
}

#[test]
fn upstream_login_reads_every_field_and_substitutes_the_body() {
    let text = with_login(
        "      method: post\n      path: /login?v=2\n      headers: { content-type: application/json }\n      body: '{\"user\":\"${UP_USER}\",\"pass\":\"${UP_PASS}\"}'\n      capture: { json: data.token }\n      inject: { header: authorization, format: \"Bearer {}\" }\n      refresh_on: [401, 419]\n      timeout: 3s\n      ttl: 30m\n      retry_body_limit: 1024\n      encryption_key: ${FLEETGATE_LOGIN_KEY}\n      backoff: 1s\n      max_backoff: 1m\n      on_store_error: closed\n",
    );
    let key = "00".repeat(32);
    let c = with_env(
        &text,
        &[("UP_USER", "ann"), ("UP_PASS", "s3cret"), ("FLEETGATE_LOGIN_KEY", &key)],
    )
    .unwrap();
    let login = c.upstreams["backend"].login.as_ref().unwrap();
    assert_eq!(login.method, http::Method::POST);
    assert_eq!(login.path, "/login?v=2");
    assert_eq!(login.body, "{\"user\":\"ann\",\"pass\":\"s3cret\"}");
    assert_eq!(login.refresh_on, vec![401, 419]);
    assert_eq!(login.timeout, Duration::from_secs(3));
    assert_eq!(login.ttl, Duration::from_secs(1800));
    assert_eq!(login.retry_body_limit, 1024);
    assert!(login.encryption_key.is_some());
    assert_eq!(login.on_store_error, fleetgate_http::FailurePolicy::Closed);
    assert!(!format!("{c:?}").contains("s3cret"), "Debug hides the login body");
    let plain = p(&with_login("      path: /login\n      capture: { cookie: sid }\n")).unwrap();
    let login = plain.upstreams["backend"].login.as_ref().unwrap();
    assert_eq!(
        login.inject,
        fleetgate_http::upstream_login::Inject::Cookie("sid".into())
    );
    assert_eq!(login.retry_body_limit, 65536);
    assert_eq!(login.on_store_error, fleetgate_http::FailurePolicy::Local);
}

#[test]
fn upstream_login_errors_name_the_field() {
    refused(
        &with_login("      path: login\n      capture: { cookie: sid }\n"),
        5,
        "upstreams.backend.login.path",
        &["starting with /"],
    );
    refused(
        &with_login("      path: /login\n      capture: { json: token }\n"),
        5,
        "upstreams.backend.login.inject",
        &["needs `inject`"],
    );
    refused(
        &with_login("      path: /login\n      capture: { cookie: sid }\n      encryption_key: short\n"),
        7,
        "upstreams.backend.login.encryption_key",
        &["64 hex digits"],
    );
    refused(
        &with_login("      path: /login\n      capture: { cookie: sid }\n      refresh_on: [200]\n"),
        7,
        "upstreams.backend.login.refresh_on[0]",
        &["400 to 599"],
    );
    refused(
        &with_login("      path: /login\n      capture: { cookie: sid }\n      timeout: 5\n"),
        7,
        "upstreams.backend.login.timeout",
        &["not a duration"],
    );
    refused(
        &with_login("      path: /login\n      capture: { cookie: sid }\n      refresh: [401]\n"),
        7,
        "upstreams.backend.login.refresh",
        &["did you mean `refresh_on`"],
    );
}

#[test]
fn forward_auth_is_read_and_its_errors_name_the_field() {
    let base = "upstreams:\n  b:\n    targets: [http://x]\nroutes:\n  - name: app\n    upstream: b\n    forward_auth:\n      url: http://127.0.0.1:4100/check\n";
    let c = p(&format!(
        "{base}      upstream_headers: [X-User-Id]\n      cache_ttl: 5m\n      session: {{ cookie: sid, logout_path: /logout }}\n"
    ))
    .unwrap();
    let fa = c.routes[0].forward_auth.as_ref().expect("read");
    assert_eq!(fa.upstream_headers, ["x-user-id"]);
    assert_eq!(fa.cache_ttl, Duration::from_secs(300));
    assert_eq!(fa.session.as_ref().map(|s| s.cookie.as_str()), Some("sid"));
    for (extra, field, why) in [
        (
            "      deny_ttl: 10m\n",
            "routes[0].forward_auth.deny_ttl",
            "longer than cache_ttl",
        ),
        (
            "      upstream_headers: [x-a, host]\n",
            "routes[0].forward_auth.upstream_headers[1]",
            "framing",
        ),
        (
            "      session: { ttl: 1y }\n",
            "routes[0].forward_auth.session.ttl",
            "not a duration",
        ),
        ("      sesion: {}\n", "routes[0].forward_auth", "unknown field"),
    ] {
        let e = p(&format!("{base}{extra}")).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(why), "{extra}: {e}");
    }
}

#[test]
fn cache_is_read_and_its_errors_name_the_field() {
    let c = p(&format!("{BASE}    cache:\n")).unwrap();
    assert_eq!(
        c.routes[0].cache,
        Some(fleetgate_http::CacheConfig::default()),
        "`cache:` alone turns it on"
    );
    assert_eq!(p(BASE).unwrap().routes[0].cache, None, "no `cache`: not cached");
    let c = p(&format!(
        "{BASE}    cache:\n      max_entry_bytes: 2048\n      heuristic: 0.1\n      keep_stale: 1m\n      max_ttl: 1h\n      on_store_error: closed\n"
    ))
    .unwrap();
    let cache = c.routes[0].cache.as_ref().expect("read");
    assert_eq!(cache.max_entry_bytes, 2048);
    assert_eq!(cache.heuristic, Some(0.1));
    assert_eq!(cache.keep_stale, Duration::from_secs(60));
    assert_eq!(cache.max_ttl, Duration::from_secs(3600));
    assert_eq!(cache.on_store_error, fleetgate_http::FailurePolicy::Closed);
    assert!(cache.coalesce, "coalescing is on by default");
    assert_eq!(cache.local_ttl, None, "the in-process tier is off by default");
    let c = p(&format!(
        "{BASE}    cache: {{ local_ttl: 1s, local_max_bytes: 1000 }}\n"
    ))
    .unwrap();
    let cache = c.routes[0].cache.as_ref().expect("read");
    assert_eq!(
        (cache.local_ttl, cache.local_max_bytes),
        (Some(Duration::from_secs(1)), 1000)
    );
    refused(
        &format!("{BASE}    cache:\n      local_ttl: 5m\n"),
        8,
        "routes[0].cache.local_ttl",
        &["60s"],
    );
    let c = p(&format!("{BASE}    cache: {{ coalesce: false, coalesce_wait: 2s }}\n")).unwrap();
    let cache = c.routes[0].cache.as_ref().expect("read");
    assert_eq!((cache.coalesce, cache.coalesce_wait), (false, Duration::from_secs(2)));
    refused(
        &format!("{BASE}    cache:\n      coalesce_wait: 2m\n"),
        8,
        "routes[0].cache.coalesce_wait",
        &["60s"],
    );
    refused(
        &format!("{BASE}    cache:\n      max_entry_bytes: 0\n"),
        8,
        "routes[0].cache.max_entry_bytes",
        &["out of range", "1048576"],
    );
    refused(
        &format!("{BASE}    cache:\n      on_store_error: local\n"),
        8,
        "routes[0].cache.on_store_error",
        &["open", "closed"],
    );
    refused(
        &format!("{BASE}    cache:\n      heuristic: 2\n"),
        8,
        "routes[0].cache.heuristic",
        &["fraction"],
    );
    refused(
        &format!("{BASE}    cache:\n      ttl: 1m\n"),
        8,
        "routes[0].cache.ttl",
        &["unknown field", "max_entry_bytes"],
    );
}

#[test]
fn markers_wait_replicas_is_read_and_refused_where_it_cannot_work() {
    let c = p("store:\n  url: redis://h:6379\n  markers_wait_replicas: { replicas: 2, timeout: 15ms }\n").unwrap();
    let wait = c.store.markers_wait_replicas.unwrap();
    assert_eq!((wait.replicas, wait.timeout), (2, Duration::from_millis(15)));
    assert_eq!(c.store.redis_options().markers_wait_replicas, Some(wait));
    let c = p("store:\n  url: redis://h:6379\n  markers_wait_replicas: {}\n").unwrap();
    let wait = c.store.markers_wait_replicas.unwrap();
    assert_eq!((wait.replicas, wait.timeout), (1, Duration::from_millis(10)));
    assert_eq!(
        p("store:\n  url: redis://h:6379\n")
            .unwrap()
            .store
            .markers_wait_replicas,
        None
    );
    for (text, want) in [
        ("store:\n  markers_wait_replicas: {}\n", "in-process store"),
        (
            "store:\n  url: redis-cluster://a:7000,b:7001\n  markers_wait_replicas: {}\n",
            "Redis Cluster",
        ),
        (
            "store:\n  url: redis://h:6379\n  markers_wait_replicas: { replicas: 0 }\n",
            "out of range",
        ),
        (
            "store:\n  url: redis://h:6379\n  markers_wait_replicas: { timeout: 0ms }\n",
            "not accepted",
        ),
        (
            "store:\n  url: redis://h:6379\n  markers_wait_replicas: { acks: 1 }\n",
            "unknown field",
        ),
        (
            "store:\n  url: redis://h:6379\n  markers_wait_replicas: {}\nstores:\n  markers:\n    url: memory://\n",
            "markers' store",
        ),
    ] {
        let e = p(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
        assert!(
            e.contains("markers_wait_replicas") || e.contains("replicas") || e.contains("acks"),
            "{e}"
        );
    }
}

#[test]
fn dedup_is_read_and_its_errors_name_the_field_and_line() {
    let base = "upstreams:\n  b:\n    targets: [http://x]\nroutes:\n  - name: app\n    upstream: b\n    dedup:\n";
    let c = p(&format!(
        "{base}      key: [method, path, body, header:X-Model]\n      window: 2s\n      max_body: 64KiB\n"
    ))
    .unwrap();
    let d = c.routes[0].dedup.as_ref().expect("read");
    assert_eq!(d.window, Duration::from_secs(2));
    assert_eq!(d.max_body, 65536);
    assert_eq!(d.key.len(), 4);
    for (extra, field, why) in [
        (
            "      key: [method, bodyy]\n",
            "routes[0].dedup.key[1]",
            "not a key part",
        ),
        ("      max_body: 2GiB\n", "routes[0].dedup.max_body", "64MiB"),
        ("      window: soon\n", "routes[0].dedup.window", "not a duration"),
        (
            "      on_store_error: local\n",
            "routes[0].dedup.on_store_error",
            "not a dedup policy",
        ),
        ("      windw: 1s\n", "routes[0].dedup", "unknown field"),
    ] {
        let e = p(&format!("{base}{extra}")).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(why), "{extra}: {e}");
        assert!(e.contains("test.yaml:8:"), "the line is named: {e}");
    }
}
