//! Runs h2load (nghttp2-client) against a loopback port with HTTP/2 prior knowledge and reads
//! its figures. A round with any failed or errored request, or any non-2xx answer, is refused.

use std::process::Command;
use std::time::Duration;

/// `h2load -t2 -c64 -m10`: the connections of wrk's runs, 10 streams each at a time.
pub const THREADS: u32 = 2;
pub const CONNECTIONS: u32 = 64;
pub const STREAMS: u32 = 10;

#[derive(Debug, Clone, Copy)]
pub struct H2load {
    pub requests: u64,
    pub secs: f64,
    pub rps: f64,
}

/// `h2load -t2 -c64 -m10 -D SECS http://127.0.0.1:PORT/`, under `taskset -c CPUS` if given.
pub fn run(port: u16, duration: Duration, cpus: Option<&str>) -> H2load {
    run_url(&format!("http://127.0.0.1:{port}/"), duration, cpus)
}

/// [`run`] against `url`: `https://...` is HTTP/2 over TLS, chosen by ALPN (h2load does not
/// verify the certificate).
pub fn run_url(url: &str, duration: Duration, cpus: Option<&str>) -> H2load {
    let mut cmd = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, "h2load"]);
            c
        }
        None => Command::new("h2load"),
    };
    let out = cmd
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-m{STREAMS}"))
        .arg(format!("-D{}", duration.as_secs().max(1)))
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("run h2load ({e}); install it with: apt-get install -y nghttp2-client"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "h2load failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "finished in 5.00s, 123456.70 req/s, 4.71MB/s"
    let (secs, rps) = text
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("finished in ")?;
            let mut parts = rest.split(", ");
            let secs = parts.next()?;
            let secs: f64 = match secs.strip_suffix("ms") {
                Some(ms) => ms.parse::<f64>().ok()? / 1000.0,
                None => secs.strip_suffix('s')?.parse().ok()?,
            };
            let rps: f64 = parts.next()?.strip_suffix(" req/s")?.parse().ok()?;
            Some((secs, rps))
        })
        .unwrap_or_else(|| panic!("no 'finished in' line in h2load's output:\n{text}"));
    // "requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, 0 errored, 0 timeout"
    let counts = |line: &str| -> Vec<u64> {
        line.split(", ")
            .filter_map(|f| f.split_whitespace().find_map(|w| w.parse().ok()))
            .collect()
    };
    let requests = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests: "))
        .map(counts)
        .unwrap_or_else(|| panic!("no requests line in h2load's output:\n{text}"));
    let statuses = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("status codes: "))
        .map(counts)
        .unwrap_or_else(|| panic!("no status codes line in h2load's output:\n{text}"));
    let (done, succeeded, failed, errored) = (requests[2], requests[3], requests[4], requests[5]);
    if failed != 0 || errored != 0 || succeeded != done {
        panic!("h2load on {url}: failed or errored requests:\n{text}");
    }
    if statuses.iter().skip(1).any(|n| *n != 0) {
        panic!("h2load on {url}: answers that were not 2xx:\n{text}");
    }
    H2load {
        requests: succeeded,
        secs,
        rps,
    }
}
