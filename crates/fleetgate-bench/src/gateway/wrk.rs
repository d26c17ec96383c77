//! Runs wrk against a loopback port and reads its figures. A round with any non-2xx answer or
//! socket error is refused: such a throughput is not one of the gateway's.

use std::process::Command;
use std::time::Duration;

/// wrk threads and connections: `wrk -t2 -c64`.
pub const THREADS: u32 = 2;
pub const CONNECTIONS: u32 = 64;

#[derive(Debug, Clone, Copy)]
pub struct Wrk {
    pub requests: u64,
    pub secs: f64,
    pub rps: f64,
}

fn field_after<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(label)).map(str::trim)
}

/// `wrk -t2 -c64 -dD --timeout 2s http://127.0.0.1:PORT/`, under `taskset -c CPUS` if given.
pub fn run(port: u16, duration: Duration, cpus: Option<&str>) -> Wrk {
    run_script(port, duration, cpus, None)
}

/// [`run`] with a wrk Lua script (`-s FILE`: the method, path, body and headers to send).
pub fn run_script(port: u16, duration: Duration, cpus: Option<&str>, script: Option<&std::path::Path>) -> Wrk {
    let mut cmd = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus, "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    let out = cmd
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", duration.as_secs()))
        .args(["--timeout", "2s"])
        .args(script.map(|s| ["-s".as_ref(), s.as_os_str()]).into_iter().flatten())
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap_or_else(|e| {
            panic!("run wrk ({e}); install it with: apt-get install -y nginx wrk redis-server redis-tools")
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(n) = field_after(&text, "Non-2xx or 3xx responses:") {
        panic!("wrk on port {port}: {n} answers were not 2xx:\n{text}");
    }
    if let Some(errors) = field_after(&text, "Socket errors:") {
        panic!("wrk on port {port}: socket errors ({errors}):\n{text}");
    }
    // "  1234567 requests in 5.00s, 123.45MB read"
    let (requests, secs) = text
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(" requests in ")?;
            let secs = rest.split(',').next()?.trim();
            let secs: f64 = match secs.strip_suffix("ms") {
                Some(ms) => ms.parse::<f64>().ok()? / 1000.0,
                None => secs.strip_suffix('s')?.parse().ok()?,
            };
            Some((n.parse::<u64>().ok()?, secs))
        })
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{text}"));
    let rps: f64 = field_after(&text, "Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    Wrk { requests, secs, rps }
}
