//! `mode` and `lease` on a rate limit: accepted forms, defaults, and located refusals.

use fleetgate_config::{parse, LimitMode};

const BASE: &str =
    "routes:\n  - name: api\n    respond: { status: 200 }\n    rate_limits:\n      - name: lim\n        key: ip\n";

fn with(lines: &str) -> String {
    let mut s = BASE.to_string();
    for l in lines.lines() {
        s.push_str("        ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[track_caller]
fn refused(text: &str, line: u32, path: &str, needle: &str) {
    let err = parse(text, "t.yaml").expect_err("should be refused");
    let shown = err.to_string();
    assert_eq!(err.line(), Some(line), "{shown}");
    assert_eq!(err.path(), Some(path), "{shown}");
    assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
}

#[test]
fn exact_is_the_default_and_lease_takes_a_batch_maximum() {
    let limit = |text: &str| parse(text, "t.yaml").unwrap().routes[0].rate_limits[0].mode;
    assert_eq!(limit(&with("rate: 5/s")), LimitMode::Exact);
    assert_eq!(limit(&with("rate: 5/s\nmode: exact")), LimitMode::Exact);
    assert_eq!(
        limit(&with("rate: 5/s\nmode: lease")),
        LimitMode::Lease { max_batch: 1000 }
    );
    assert_eq!(
        limit(&with(
            "rate: 5/s\nalgorithm: fixed_window\nmode: lease\nlease: { max_batch: 7 }"
        )),
        LimitMode::Lease { max_batch: 7 }
    );
    // Every algorithm leases, sliding_window included (it used to be refused).
    assert_eq!(
        limit(&with("rate: 5/s\nalgorithm: sliding_window\nmode: lease")),
        LimitMode::Lease { max_batch: 1000 }
    );
}

#[test]
fn lease_settings_that_cannot_work_are_refused_where_written() {
    refused(
        &with("rate: 5/s\nmode: lease\nlease:\n  max_batch: 0"),
        10,
        "routes[0].rate_limits[0].lease.max_batch",
        "accepted: a whole number >= 1",
    );
    refused(
        &with("rate: 5/s\nlease: { max_batch: 5 }"),
        8,
        "routes[0].rate_limits[0].lease",
        "only read with mode: lease",
    );
    refused(
        &with("rate: 5/s\nmode: batched"),
        8,
        "routes[0].rate_limits[0].mode",
        "unknown mode \"batched\"; accepted: exact",
    );
    refused(
        &with("rate: 5/s\nmode: lease\nlease: { max_batches: 5 }"),
        9,
        "routes[0].rate_limits[0].lease.max_batches",
        "max_batch",
    );
}
