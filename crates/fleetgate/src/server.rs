//! The data plane: one current-thread Tokio runtime per worker thread, each with its own
//! SO_REUSEPORT listener on the same address (the kernel spreads connections), HTTP/1.1 only.
//! This layout measured fastest for a hyper proxy on small machines (DESIGN.md, performance
//! notes). Shutdown: stop accepting, let in-flight requests finish up to the drain bound.
//!
//! Client connections are capped per instance (all workers share one count): one past the cap
//! is closed as soon as it is accepted, so the kernel's backlog does not fill with clients that
//! wait for nothing. Writes to a client that stops reading fail after `write_timeout`.

use crate::gateway::{Gateway, Worker};
use crate::idle::WriteBound;
use fleetgate_http::StoreCtx;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Settings for the HTTP/1 server side.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub max_header_bytes: usize,
    pub idle_timeout: Duration,
    pub drain_timeout: Duration,
    /// Longest time a write to a client may make no progress.
    pub write_timeout: Duration,
    /// The instance's count of open client connections (clones share it).
    pub connections: ConnectionCap,
}

/// Open client connections of the instance, against `server.max_connections`.
#[derive(Debug, Clone)]
pub struct ConnectionCap(Arc<CapState>);

#[derive(Debug)]
struct CapState {
    max: usize,
    open: AtomicUsize,
    gauge: metrics::Gauge,
    refused: metrics::Counter,
}

impl ConnectionCap {
    pub fn new(max: usize) -> Self {
        ConnectionCap(Arc::new(CapState {
            max,
            open: AtomicUsize::new(0),
            gauge: metrics::gauge!(crate::telemetry::CLIENT_CONNECTIONS),
            refused: metrics::counter!(crate::telemetry::CLIENT_CONNECTIONS_REFUSED),
        }))
    }

    /// A slot for one more connection, held until dropped; `None` (counted) at the cap.
    fn admit(&self) -> Option<ConnectionSlot> {
        let before = self.0.open.fetch_add(1, Ordering::Relaxed);
        if before >= self.0.max {
            self.0.open.fetch_sub(1, Ordering::Relaxed);
            self.0.refused.increment(1);
            return None;
        }
        self.0.gauge.increment(1.0);
        Some(ConnectionSlot(self.0.clone()))
    }
}

/// One admitted connection; gives its slot back when dropped.
struct ConnectionSlot(Arc<CapState>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.decrement(1.0);
    }
}

/// Binds `count` listeners to `addr` with SO_REUSEPORT (the first resolves port 0).
///
/// SO_REUSEPORT would also let a second process (another fleetgate started by mistake on the
/// same port) bind silently and take half the connections. So the address is first probed
/// with a plain bind, which fails if anything listens there already.
pub fn bind_listeners(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let new_socket = |addr: SocketAddr| {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        Ok::<_, std::io::Error>(socket)
    };
    if addr.port() != 0 {
        let probe = new_socket(addr)?;
        probe.bind(&addr.into())?;
    }
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = new_socket(addr)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Runs one worker until `shutdown` turns true, then drains. Blocks the calling thread.
pub fn run_worker(
    listener: std::net::TcpListener,
    gateway: Arc<Gateway>,
    make_ctx: impl FnOnce() -> Result<StoreCtx, String>,
    started: std::sync::mpsc::Sender<Result<(), String>>,
    settings: ServerSettings,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let ctx = match make_ctx() {
            Ok(ctx) => ctx,
            Err(e) => {
                let _ = started.send(Err(e.clone()));
                return Err(std::io::Error::other(e));
            }
        };
        // Connected before the first request, so no first decision times out on a handshake.
        ctx.store.warm_up().await;
        let _ = started.send(Ok(()));
        let worker = Arc::new(Worker::new(&gateway, ctx));
        let graceful = GracefulShutdown::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            .max_buf_size(settings.max_header_bytes.max(crate::request_head::MIN_HYPER_BUF))
            .header_read_timeout(settings.idle_timeout);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let Some(slot) = settings.connections.admit() else {
                        tracing::debug!(peer = %peer, "connection refused: server.max_connections reached");
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let stream = WriteBound::new(stream, settings.write_timeout);
                    let (gateway, worker) = (gateway.clone(), worker.clone());
                    let service = service_fn(move |req| {
                        let (gateway, worker) = (gateway.clone(), worker.clone());
                        async move { Ok::<_, Infallible>(gateway.handle(&worker, peer, req).await) }
                    });
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
                        }
                        drop(slot);
                    });
                }
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(settings.drain_timeout) => {
                tracing::warn!(bound_ms = settings.drain_timeout.as_millis() as u64, "drain bound reached; closing remaining connections");
            }
        }
        Ok::<(), std::io::Error>(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_process_cannot_share_the_port() {
        let first = bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = first[0].local_addr().unwrap();
        let err = bind_listeners(addr, 2).expect_err("the port is taken");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(first);
        assert!(bind_listeners(addr, 2).is_ok(), "free again once the first let go");
    }
}
