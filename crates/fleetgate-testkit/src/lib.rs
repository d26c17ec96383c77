//! Test harness: real `redis-server` processes that a test starts on a free loopback port, can
//! kill, pause (SIGSTOP), resume and restart, and that stop when the handle is dropped.
//!
//! Tests never use a server someone else started, and never skip silently: when the binary is
//! missing, [`RedisServer::start`] panics with the command that installs it.
#![forbid(unsafe_code)]

mod fault_proxy;
mod topologies;
pub use fault_proxy::FaultProxy;
pub use topologies::{RedisCluster, SentinelGroup, TestCerts, MASTER_NAME};

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The command that installs the Redis binaries the tests need.
pub const INSTALL_HINT: &str = "apt-get install -y redis-server redis-sentinel redis-tools openssl";

/// Finds a free TCP port on 127.0.0.1 by binding port 0 and releasing it.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// Locates a binary on PATH or panics with the install command.
pub fn require_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not on PATH; this test needs it (real Redis processes, or openssl for TLS certificates). Install with: {INSTALL_HINT}");
}

/// A `redis-server` child process owned by a test.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a standalone, non-persistent redis-server on a free port and waits until it answers
    /// PING.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts a redis-server with extra command-line arguments (e.g. `--requirepass`).
    pub fn start_with_args(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// Starts a redis-server on a given port (e.g. one a gateway was told about before).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("fleetgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis working directory");
        let mut server = RedisServer {
            port,
            dir,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let binary = require_binary("redis-server");
        let mut cmd = Command::new(binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn redis-server");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(10));
    }

    fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let password = self.password();
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "redis-server on port {} exited at start ({status}); arguments: {:?}",
                    self.port, self.extra_args
                );
            }
            if ping(self.addr(), password.as_deref()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within {limit:?}",
            self.port
        );
    }

    fn password(&self) -> Option<String> {
        let pos = self.extra_args.iter().position(|a| a == "--requirepass")?;
        self.extra_args.get(pos + 1).cloned()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: the server dies at once, losing all state.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server stalls, connections stay open and get no answer.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .arg(format!("-{name}"))
                .arg(pid.to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -{name} {pid} failed");
        }
    }

    /// Starts the server again, empty, on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends one command in RESP over a fresh connection and returns the raw reply text.
    pub fn command(&self, args: &[&str]) -> String {
        raw_command(self.addr(), self.password().as_deref(), args).expect("send command to redis")
    }

    /// How many times the server has run `name` (lowercase, e.g. `evalsha`) since it started or
    /// its stats were reset (`INFO commandstats`; 0 when never).
    pub fn command_calls(&self, name: &str) -> u64 {
        let prefix = format!("cmdstat_{name}:calls=");
        self.command(&["INFO", "commandstats"])
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A paused server must be resumed to die cleanly.
            let _ = Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends one command to a local port (no password) and returns the raw reply ("" on error).
pub(crate) fn raw_command_pub(port: u16, args: &[&str]) -> String {
    raw_command(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), None, args).unwrap_or_default()
}

fn ping(addr: SocketAddr, password: Option<&str>) -> bool {
    matches!(raw_command(addr, password, &["PING"]), Ok(r) if r.starts_with("+PONG"))
}

fn raw_command(addr: SocketAddr, password: Option<&str>, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut payload = Vec::new();
    if let Some(pw) = password {
        payload.extend(encode(&["AUTH", pw]));
    }
    payload.extend(encode(args));
    stream.write_all(&payload)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = String::new();
    // Read until at least one full reply per command arrived (good enough for short replies).
    let expected_lines = if password.is_some() { 2 } else { 1 };
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
        if out.matches("\r\n").count() >= expected_lines {
            break;
        }
    }
    if password.is_some() {
        if let Some(pos) = out.find("\r\n") {
            out = out[pos + 2..].to_string();
        }
    }
    Ok(out)
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).into_bytes());
        out.extend(a.as_bytes());
        out.extend(b"\r\n");
    }
    out
}
