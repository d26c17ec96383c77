//! `upstreams.*.throttle` and `upstreams.*.breaker`: defaults, values, and refusals with the
//! field and line.

use super::*;
use fleetgate_http::breaker::BreakerKeyPart;
use std::time::Duration;

fn with_side(side: &str) -> String {
    format!(
        "listen: 127.0.0.1:8080\nupstreams:\n  m:\n    targets: [http://127.0.0.1:3000]\n{side}routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: m\n"
    )
}

fn p(text: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, "test.yaml", &|_| None)
}

#[track_caller]
fn refused(side: &str, path: &str, needle: &str) {
    let err = p(&with_side(side)).expect_err("should be refused");
    let shown = err.to_string();
    assert_eq!(err.path(), Some(path), "{shown}");
    assert_eq!(err.line(), Some(5), "{shown}");
    assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
}

#[test]
fn throttle_and_breaker_defaults() {
    let c = p(&with_side("    throttle: { rate: 5/s }\n    breaker: {}\n")).unwrap();
    let u = &c.upstreams["m"];
    let t = u.throttle.as_ref().unwrap();
    assert_eq!((t.rate.count, t.burst, t.concurrency), (5, 1, None));
    assert_eq!(t.max_wait, Duration::from_secs(10));
    assert_eq!(t.on_store_error, FailurePolicy::Local);
    let b = u.breaker.as_ref().unwrap();
    assert_eq!((b.failures, b.cooldown), (5, Duration::from_secs(30)));
    assert_eq!(b.key, vec![BreakerKeyPart::Target]);
    assert_eq!(b.on_store_error, FailurePolicy::Local);
    assert!(p(&with_side("")).unwrap().upstreams["m"].throttle.is_none());
}

#[test]
fn throttle_and_breaker_values() {
    let c = p(&with_side(
        "    throttle: { rate: 100/1m, burst: 4, concurrency: 2, max_wait: 500ms, on_store_error: closed }\n    breaker: { failures: 2, cooldown: 5s, max_cooldown: 10m, key: [header:X-Account, header:x-model], on_store_error: open }\n",
    ))
    .unwrap();
    let u = &c.upstreams["m"];
    let t = u.throttle.as_ref().unwrap();
    assert_eq!(
        (t.burst, t.concurrency, t.max_wait),
        (4, Some(2), Duration::from_millis(500))
    );
    assert_eq!(t.on_store_error, FailurePolicy::Closed);
    let b = u.breaker.as_ref().unwrap();
    assert_eq!(b.max_cooldown, Duration::from_secs(600));
    assert_eq!(
        b.key,
        vec![
            BreakerKeyPart::Header("x-account".into()),
            BreakerKeyPart::Header("x-model".into())
        ]
    );
}

#[test]
fn bad_throttles_are_refused_with_the_field() {
    refused(
        "    throttle: { rate: 0/s }\n",
        "upstreams.m.throttle.rate",
        "a rate of 0 would never let a call go",
    );
    refused(
        "    throttle: { burst: 2 }\n",
        "upstreams.m.throttle.rate",
        "missing required field",
    );
    refused(
        "    throttle: { rate: 5/s, burst: 0 }\n",
        "upstreams.m.throttle.burst",
        "from 1 to 100000",
    );
    refused(
        "    throttle: { rate: 5/s, concurrency: 0 }\n",
        "upstreams.m.throttle.concurrency",
        "from 1",
    );
    refused(
        "    throttle: { rate: 5/s, max_wait: 2h }\n",
        "upstreams.m.throttle.max_wait",
        "longer than 1h",
    );
    refused(
        "    throttle: { rate: 5/s, max_wait: 10 }\n",
        "upstreams.m.throttle.max_wait",
        "duration",
    );
    refused(
        "    throttle: { rate: 5/s, wait: 1s }\n",
        "upstreams.m.throttle.wait",
        "unknown field",
    );
    refused(
        "    throttle: { rate: 5/s, on_store_error: maybe }\n",
        "upstreams.m.throttle.on_store_error",
        "open, closed, local",
    );
}

#[test]
fn bad_breakers_are_refused_with_the_field() {
    refused(
        "    breaker: { failures: 0 }\n",
        "upstreams.m.breaker.failures",
        "from 1 to 1000",
    );
    refused(
        "    breaker: { cooldown: soon }\n",
        "upstreams.m.breaker.cooldown",
        "not a duration",
    );
    refused(
        "    breaker: { key: [target, ip] }\n",
        "upstreams.m.breaker.key[1]",
        "unknown breaker key part",
    );
    refused(
        "    breaker: { key: [target, target] }\n",
        "upstreams.m.breaker.key[1]",
        "listed twice",
    );
    refused("    breaker: { key: [] }\n", "upstreams.m.breaker.key", "no part");
    refused(
        "    breaker: { trip: 3 }\n",
        "upstreams.m.breaker.trip",
        "unknown field",
    );
}
