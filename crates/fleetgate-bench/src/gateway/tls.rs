//! `gateway_tls_memory_limit`: HTTPS clients (h2load over TLS, HTTP/2 chosen by ALPN) through
//! fleetgate's `tls` listener (in-process store, the bench's limit) against nginx terminating
//! TLS (`listen ... ssl http2`) in front of the same upstream, with the same certificate (ECDSA
//! P-256, made here with rcgen); rotated rounds, medians. Every fleetgate round is checked: the
//! limit decided at least as many requests as h2load counted.

use super::procs::{Fleetgate, FleetgateSetup, Nginx, Scratch, EVENTS_OFF};
use super::{h2load, median, Cpus, ROUND, ROUNDS, WARM};
use crate::report;
use fleetgate_testkit::free_port;
use std::path::Path;

pub(super) fn tls_rounds(fleetgate_bin: &Path, scratch: &Scratch, cpus: &Cpus, upstream: &Nginx, peer_desc: &str) {
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .and_then(|p| p.self_signed(&key))
        .expect("a self-signed certificate");
    let (cert_file, key_file) = (scratch.dir.join("tls-cert.pem"), scratch.dir.join("tls-key.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write the certificate");
    std::fs::write(&key_file, key.serialize_pem()).expect("write the key");
    let peer_tls_port = free_port();
    // Serves until the rounds are over (dropped at the end).
    let _peer = Nginx::tls_proxy(
        scratch,
        free_port(),
        peer_tls_port,
        upstream.port,
        cpus.workers,
        cpus.proxy,
        &cert_file,
        &key_file,
    );
    let fg_tls_port = free_port();
    let sections = format!(
        "{EVENTS_OFF}tls:\n  listen: 127.0.0.1:{fg_tls_port}\n  certificates:\n    - {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
        cert_file.display(),
        key_file.display()
    );
    let setup = FleetgateSetup {
        name: "fleetgate-tls",
        store_url: "memory://".into(),
        store_extra: "",
        limit_extra: "",
        limit: None,
        workers: cpus.workers,
    };
    let fg = Fleetgate::start_with(fleetgate_bin, scratch, &setup, upstream.port, cpus.proxy, &sections);
    let urls = [
        format!("https://127.0.0.1:{fg_tls_port}/"),
        format!("https://127.0.0.1:{peer_tls_port}/"),
    ];
    let names = ["fleetgate https (memory store)", "nginx https"];
    for (i, url) in urls.iter().enumerate() {
        let w = h2load::run_url(url, WARM, cpus.load);
        eprintln!("gateway: tls warm-up {}: {:.0} req/s", names[i], w.rps);
    }
    let mut rps: [Vec<f64>; 2] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..2 {
            let side = (round + k) % 2;
            let allowed = || fg.metric_sum("fleetgate_rate_limit_decisions_total", "outcome=\"allowed\"") as u64;
            let before = allowed();
            let w = h2load::run_url(&urls[side], ROUND, cpus.load);
            if side == 0 {
                let decided = allowed() - before;
                assert!(
                    decided >= w.requests,
                    "fleetgate (https) allowed {decided} requests, h2load counted {}",
                    w.requests
                );
            }
            eprintln!(
                "gateway: tls round {}: {}: {:.0} req/s ({} requests in {:.2} s)",
                round + 1,
                names[side],
                w.rps,
                w.requests,
                w.secs
            );
            rps[side].push(w.rps);
        }
    }
    let [ours, nginx] = rps.map(|mut v| median(&mut v));
    eprintln!("gateway: tls medians of {ROUNDS} rounds: fleetgate {ours:.0}, nginx {nginx:.0} req/s");
    report::ratio(
        "gateway_tls_memory_limit",
        ours,
        "req/s",
        &format!(
            "{peer_desc}; TLS (listen ssl http2, ECDSA P-256), h2load over https -c{} -m{} -t{}",
            h2load::CONNECTIONS,
            h2load::STREAMS,
            h2load::THREADS
        ),
        nginx,
    );
}
