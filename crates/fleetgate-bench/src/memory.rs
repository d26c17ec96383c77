//! `memory_1m_keys`: resident memory of the in-process store holding 1,000,000 live gcra keys.
//!
//! Measured in a fresh child process (this binary re-executed with a hidden subcommand), so
//! nothing the other benchmarks allocated is counted: VmRSS is read from /proc/self/status
//! before and after the keys are inserted, and the growth is reported. Each key is built with
//! `Keyspace::key`, decided once and dropped, as the gateway does per request: what remains is
//! what the store keeps. The limit (100/1d: one unit every 864 s) keeps every key live for
//! the whole measurement; the child checks that all of them are.

use fleetgate_store::{Concern, Keyspace, MemoryStore, RateLimit};
use std::process::Command;

pub const CHILD_COMMAND: &str = "__memory-child";
pub const KEYS: u64 = 1_000_000;
/// MB as 10^6 bytes.
const MB: f64 = 1_000_000.0;

fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value in kB");
    kb * 1024
}

/// In the child: inserts `n` live keys and prints the VmRSS growth in bytes.
pub fn child(n: u64) {
    let store = MemoryStore::new();
    let ks = Keyspace::new("bench").expect("valid prefix");
    let limit = RateLimit::gcra("100/1d").expect("valid limit");
    // Warm the allocator and the key path on a throwaway store before the first reading.
    let scratch = MemoryStore::new();
    for i in 0..1000u64 {
        let key = ks.key(Concern::RateLimit, "mem", format!("w-{i}").as_bytes());
        scratch.rate_now(&key, &limit, 1).expect("decision");
    }
    drop(scratch);
    let before = vm_rss_bytes();
    for i in 0..n {
        let key = ks.key(Concern::RateLimit, "mem", format!("client-{i}").as_bytes());
        let d = store.rate_now(&key, &limit, 1).expect("decision");
        assert!(d.allowed);
    }
    let after = vm_rss_bytes();
    let live = store.len() as u64;
    assert_eq!(live, n, "every key must still be live when measured");
    println!("{}", after.saturating_sub(before));
}

/// In the parent: runs the child and returns the growth in MB.
pub fn measure() -> f64 {
    let exe = std::env::current_exe().expect("path of this binary");
    let out = Command::new(exe)
        .arg(CHILD_COMMAND)
        .arg(KEYS.to_string())
        .output()
        .expect("run the memory child");
    if !out.status.success() {
        panic!(
            "memory child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bytes: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("memory child prints a byte count");
    eprintln!("memory_1m_keys: VmRSS grew by {bytes} bytes for {KEYS} live gcra keys");
    bytes as f64 / MB
}
