//! The dashboard in a real browser: headless Chromium (`/usr/bin/chromium`, driven by
//! Playwright from tests/browser) opens the dashboard of instance B while traffic goes
//! through instances A and C of one fleet on one Redis; the counts on the page must be what was
//! sent. The screenshot is kept at target/dashboard.png.
//!
//! Needs: `apt-get install chromium nodejs npm` and `npm install` in
//! crates/fleetgate/tests/browser (.ci/run does both).

mod common;

use common::counting_upstream::CountingUpstream;
use common::*;
use fleetgate_testkit::RedisServer;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn require(path: &str, install: &str) {
    assert!(
        Path::new(path).exists()
            || Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {path}"))
                .output()
                .is_ok_and(|o| o.status.success()),
        "{path} is missing: {install}"
    );
}

#[test]
fn the_dashboard_of_b_counts_what_a_and_c_served() {
    require("/usr/bin/chromium", "apt-get install chromium");
    require("node", "apt-get install nodejs npm");
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: cd crates/fleetgate/tests/browser && npm install (.ci/run does it)"
    );
    let redis = RedisServer::start();
    // An upstream that answers 429 with a long Retry-After: one call through A opens its
    // breaker for the fleet, and B's page lists it.
    let flaky = CountingUpstream::start();
    flaky.answer(429, Some("120"));
    let token = "dashboard-test-token";
    let cfg = format!(
        "listen: 127.0.0.1:{{PORT}}\nadmin:\n  listen: 127.0.0.1:{{ADMIN}}\n  token: ${{ADMIN_TOKEN}}\nlog:\n  level: warn\n  access_log: false\nstore:\n  url: {}\n  key_prefix: dash\n  timeout_ms: 500\nroutes:\n  - name: api\n    match: {{ path_prefix: /api }}\n    respond: {{ status: 200, body: ok }}\n  - name: login\n    match: {{ path_prefix: /login }}\n    respond: {{ status: 200, body: welcome }}\n    rate_limits:\n      - name: tries\n        key: global\n        rate: 3/1h\n  - name: flaky\n    match: {{ path_prefix: /flaky }}\n    upstream: flaky\nupstreams:\n  flaky:\n    targets: [{}]\n    breaker: {{ failures: 1, cooldown: 60s }}\n",
        redis.url(),
        flaky.url()
    );
    let env = [("ADMIN_TOKEN", token)];
    let (a, b, c) = (
        Gateway::start_with_env(&cfg, &env),
        Gateway::start_with_env(&cfg, &env),
        Gateway::start_with_env(&cfg, &env),
    );
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard.png");
    let url = format!("http://{}/dashboard?token={token}", b.admin_addr());
    let mut node = Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(&url)
        .arg(&shot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let mut out = BufReader::new(node.stdout.take().unwrap()).lines();
    let first = out.next().expect("the browser script said nothing").unwrap();
    assert_eq!(first, "READY", "the dashboard did not come up live");

    // Traffic through A and C only: 30 + 20 on /api, and 5 logins on A of which the limit
    // (3 per hour for the whole fleet) refuses 2.
    let statuses_a = drive(&[&a], "/api/a", 30, 3);
    let statuses_c = drive(&[&c], "/api/c", 20, 3);
    let logins = drive(&[&a], "/login", 5, 1);
    assert_eq!(count(&statuses_a, 200) + count(&statuses_c, 200), 50);
    assert_eq!((count(&logins, 200), count(&logins, 429)), (3, 2));
    let tripped = drive(&[&a], "/flaky", 1, 1);
    assert_eq!(
        tripped,
        [429],
        "the upstream's 429 passes through and opens the breaker"
    );
    let total = 56;
    writeln!(
        node.stdin.as_mut().unwrap(),
        "{}",
        serde_json::json!({ "total": total, "breakers": 1 })
    )
    .unwrap();
    let result = out
        .map(Result::unwrap)
        .find_map(|l| l.strip_prefix("RESULT ").map(str::to_string))
        .expect("the browser script gave no result");
    assert!(node.wait().unwrap().success());
    let r: serde_json::Value = serde_json::from_str(&result).unwrap();
    println!("dashboard of B: {}", r["got"]);
    let got = &r["got"];
    let id = |gw: &Gateway| {
        http_get(gw.admin_addr(), "/healthz", &[]).unwrap().json()["instance"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(got["total"], total, "every request of the fleet, once");
    assert_eq!(got["refused"], 2, "limit refusals");
    assert_eq!(got["instances"][id(&a)]["count"], 36);
    assert_eq!(got["instances"][id(&a)]["refused"], 2);
    assert_eq!(got["instances"][id(&c)]["count"], 20);
    assert!(got["instances"].get(id(&b)).is_none(), "B served nothing");
    assert_eq!(got["routes"]["api"]["count"], 50);
    assert_eq!(got["routes"]["login"]["count"], 5);
    assert_eq!(got["routes"]["flaky"]["count"], 1);
    assert_eq!(
        got["breakers"],
        serde_json::json!(["flaky"]),
        "the breaker tripped through A is open on B's page"
    );
    assert_eq!(flaky.count(), 1, "the upstream was called once");
    assert_eq!(got["instance"], id(&b), "the page is B's");
    assert_eq!(got["store"], "ok");
    assert_eq!(got["live"], 3);
    assert_eq!(got["feed_rows"], total);
    assert_eq!(got["notice"], "", "the store never looked down to the page");
    assert_eq!(got["cookie_visible_to_script"], false, "the admin cookie is HttpOnly");
    assert_eq!(
        r["elsewhere"],
        serde_json::json!([]),
        "the page fetched nothing from elsewhere"
    );
    assert_eq!(r["failures"], serde_json::json!([]), "no script error");
    assert!(shot.exists(), "screenshot at {}", shot.display());
}
