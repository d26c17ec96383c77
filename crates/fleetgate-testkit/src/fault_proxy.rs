//! A TCP proxy for fault injection: sits between a client and a server on loopback and can add
//! latency to every chunk, cut every open connection, or refuse new ones.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Faults {
    latency_ms: AtomicU64,
    refuse: AtomicBool,
    stopped: AtomicBool,
    /// Chunks read and not yet written on (sleeping out their latency).
    delaying: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Faults>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `target`.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind fault proxy");
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if f.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if f.refuse.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = f.open.lock().unwrap();
                    open.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                }
                pump(client.try_clone().unwrap(), server.try_clone().unwrap(), f.clone());
                pump(server, client, f.clone());
            }
        });
        FaultProxy { addr, faults }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.addr.port())
    }

    /// Delays every forwarded chunk by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.faults
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// Waits (at most `bound`) until no chunk is still sleeping out a latency set earlier, so
    /// that after `set_latency(Duration::ZERO)` every byte sent during the slow period has been
    /// delivered and nothing sent later waits behind it. Returns whether that happened.
    pub fn wait_drained(&self, bound: Duration) -> bool {
        let deadline = std::time::Instant::now() + bound;
        while std::time::Instant::now() < deadline {
            if self.faults.delaying.load(Ordering::SeqCst) == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Closes every open connection (both sides see a reset or EOF).
    pub fn cut(&self) {
        for s in self.faults.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// While set, new connections are accepted and closed at once.
    pub fn set_refuse(&self, refuse: bool) {
        self.faults.refuse.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.faults.stopped.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, faults: Arc<Faults>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            faults.delaying.fetch_add(1, Ordering::SeqCst);
            let latency = faults.latency_ms.load(Ordering::SeqCst);
            if latency > 0 {
                std::thread::sleep(Duration::from_millis(latency));
            }
            let written = to.write_all(&buf[..n]);
            faults.delaying.fetch_sub(1, Ordering::SeqCst);
            if written.is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
