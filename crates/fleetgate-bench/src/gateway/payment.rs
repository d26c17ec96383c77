//! `scripts/bench payment`: the at-most-once concerns on Redis, each as a ratio against
//! `gateway_redis_limit` (fleetgate with a never-reached rate limit on the same redis-server:
//! one store call per request) measured in the same run. wrk `-t2 -c64`, a 1 s warm-up per
//! side, `ROUNDS` rounds of 5 s in rotated order, medians.
//!
//! * `payment_verified_cached`: GETs inside a payment session (`payment: { session: 1h }`):
//!   each is one session read in the store, then proxied to the nginx upstream; the
//!   facilitator is never asked. The session is opened by writing it into Redis under the key
//!   the gate reads (`{prefix}:session:x402/{route}:{hash}` = the payer), as a settled payment
//!   would; no signing is needed for what is measured. Target: at least 0.8.
//! * `idempotency_replay`: POSTs with one `Idempotency-Key` whose response was completed once
//!   beforehand: each is one claim that finds the stored response, which is replayed (the
//!   upstream is not called). Target: at least 0.8.

use super::procs::{Fleetgate, Nginx, Scratch, EVENTS_OFF};
use super::{cpus, median, start_redis, start_redis_limit, wrk, ROUND, ROUNDS, WARM};
use crate::report;
use fleetgate_store::{Concern, Keyspace};
use fleetgate_testkit::free_port;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

const SESSION_ID: &str = "0123456789abcdef0123456789abcdef";
const PAYER: &str = "0x857b06519E91e3A54538791bDbb0E22373e36b66";

pub fn run(fleetgate_bin: &Path) -> ExitCode {
    let cpus = cpus();
    let scratch = Scratch::new();
    let upstream = Nginx::upstream(&scratch, free_port(), cpus.load);
    let redis = start_redis(&cpus);
    let fg_limit = start_redis_limit(fleetgate_bin, &scratch, &redis.url(), upstream.port, &cpus);
    let fg_paid = Fleetgate::start_config(
        fleetgate_bin,
        &scratch,
        "fleetgate-redis-paid",
        &config(&redis.url(), upstream.port),
        cpus.workers,
        cpus.proxy,
    );
    // A payment session, as a settled payment opens it (the default key prefix, route `paid`).
    let key = Keyspace::new("fleetgate")
        .expect("the default key prefix")
        .scoped(Concern::Session, "x402/paid")
        .key(SESSION_ID.as_bytes());
    let mut conn = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the bench's redis-server");
    redis::cmd("SET")
        .arg(key.as_str())
        .arg(PAYER)
        .arg("PX")
        .arg(3_600_000)
        .query::<()>(&mut conn)
        .expect("open the payment session");
    // The completed idempotent response the replays read.
    let first = post(fg_paid.port);
    assert!(first.starts_with("HTTP/1.1 200"), "the first idempotent POST: {first}");
    let replay = post(fg_paid.port);
    assert!(
        replay.to_ascii_lowercase().contains("idempotency-replayed: true"),
        "a second POST is not replayed: {replay}"
    );
    let session = scratch.dir.join("session.lua");
    std::fs::write(
        &session,
        format!("wrk.path = \"/paid\"\nwrk.headers[\"Cookie\"] = \"fg_x402_paid={SESSION_ID}\"\n"),
    )
    .expect("write the wrk script");
    let replays = scratch.dir.join("replay.lua");
    std::fs::write(
        &replays,
        "wrk.method = \"POST\"\nwrk.path = \"/idem\"\nwrk.body = \"x\"\nwrk.headers[\"Idempotency-Key\"] = '\"bench-1\"'\n",
    )
    .expect("write the wrk script");

    let sides: [(&str, &Fleetgate, Option<&Path>); 3] = [
        ("gateway_redis_limit", &fg_limit, None),
        ("payment_verified_cached", &fg_paid, Some(&session)),
        ("idempotency_replay", &fg_paid, Some(&replays)),
    ];
    for (name, fg, script) in sides {
        let w = wrk::run_script(fg.port, WARM, cpus.load, script);
        eprintln!("payment: warm-up {name}: {:.0} req/s", w.rps);
    }
    let mut rps: [Vec<f64>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..3 {
            let side = (round + k) % 3;
            let (name, fg, script) = sides[side];
            let w = wrk::run_script(fg.port, ROUND, cpus.load, script);
            eprintln!("payment: round {}: {name}: {:.0} req/s", round + 1, w.rps);
            rps[side].push(w.rps);
        }
    }
    let sessions = fg_paid.metric_sum("fleetgate_payments_total", "outcome=\"session\"");
    let replayed = fg_paid.metric_sum("fleetgate_idempotency_total", "outcome=\"replayed\"");
    let upstream_calls = fg_paid.metric_sum("fleetgate_idempotency_total", "outcome=\"first\"");
    assert!(sessions > 0.0, "no request was admitted by its payment session");
    assert!(replayed > 0.0, "no idempotent response was replayed");
    assert_eq!(upstream_calls, 1.0, "the idempotent POST ran more than once");
    let limit = median(&mut rps[0]);
    let peer = "fleetgate gateway_redis_limit (a never-reached rate limit on the same Redis), same run";
    report::ratio("payment_verified_cached", median(&mut rps[1]), "req/s", peer, limit);
    report::ratio("idempotency_replay", median(&mut rps[2]), "req/s", peer, limit);
    ExitCode::SUCCESS
}

fn config(redis_url: &str, upstream_port: u16) -> String {
    let (port, admin) = (free_port(), free_port());
    format!(
        "listen: 127.0.0.1:{port}
admin: {{ listen: 127.0.0.1:{admin} }}
log: {{ level: error, access_log: false }}
store: {{ url: \"{redis_url}\" }}
{EVENTS_OFF}upstreams:
  up:
    targets: [\"http://127.0.0.1:{upstream_port}\"]
routes:
  - name: paid
    match: {{ path_prefix: /paid }}
    upstream: up
    payment:
      facilitator: http://127.0.0.1:9
      accepts:
        - {{ scheme: exact, network: \"eip155:84532\", asset: \"0x036CbD53842c5426634e7929541eC2318f3dCF7e\", pay_to: \"0x209693Bc6afc0C5328bA36FaF03C514EF312287C\", amount: \"10000\" }}
      session: 1h
  - name: idem
    match: {{ path_prefix: /idem }}
    upstream: up
    idempotency: {{ ttl: 1h }}
  - name: rest
    upstream: up
"
    )
}

/// One POST of the replayed request, on a fresh connection; the raw answer.
fn post(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to fleetgate");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    s.write_all(b"POST /idem HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nIdempotency-Key: \"bench-1\"\r\nContent-Length: 1\r\n\r\nx")
        .expect("send the POST");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
