//! The data plane: one current-thread Tokio runtime per worker thread, each with its own
//! SO_REUSEPORT listener on the same address (the kernel spreads connections). This layout
//! measured fastest for a hyper proxy on small machines (DESIGN.md, performance notes).
//! Shutdown: stop accepting, let in-flight requests finish up to the drain bound.
//!
//! Each connection speaks HTTP/1.1 or, when it opens with the HTTP/2 preface, h2c with prior
//! knowledge (hyper-util's `auto` builder reads the first 24 bytes once per connection and
//! replays them; an HTTP/1.1 request pays nothing more). HTTP/1.1 connections may upgrade
//! (WebSocket): the gateway joins the tunnel itself (`crate::tunnel`).
//!
//! HTTP/2 bounds ([`H2_MAX_CONCURRENT_STREAMS`] and the others below): streams per connection,
//! header list size (`server.max_header_bytes`), resets a client may cause (rapid reset,
//! CVE-2023-44487) and CONTINUATION frames (bounded by h2 from the header list size). A client
//! over one of them gets GOAWAY ENHANCE_YOUR_CALM; that is logged (warn) and counted
//! (`fleetgate_h2_connection_errors_total{reason="flood"}`), and only that connection ends. An
//! h2 connection that opens no stream for `server.idle_timeout` is sent GOAWAY (its open
//! streams finish); a peer that stops answering pings for [`H2_KEEPALIVE_TIMEOUT`] is dropped.
//!
//! Client connections are capped per instance (all workers share one count): one past the cap
//! is closed as soon as it is accepted, so the kernel's backlog does not fill with clients that
//! wait for nothing. Writes to a client that stops reading fail after `write_timeout`.

use crate::gateway::{Gateway, Worker};
use crate::idle::WriteBound;
use fleetgate_http::StoreCtx;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// Streams one HTTP/2 client connection may have open at once (nginx's default is 128).
/// Should become `server.http2.max_concurrent_streams`.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may open and reset before the gateway accepted them (the rapid-reset
/// bound; hyper's default). Over it: GOAWAY ENHANCE_YOUR_CALM.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the gateway may reset because of the client's errors, per connection, before it
/// ends the connection (a client provoking resets in a loop).
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// How long a ping may go unanswered before an HTTP/2 connection is dropped.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

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
        let builder = Arc::new(connection_builder(&settings));
        // Each connection task holds a sender; when all are gone, the drain is over.
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
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
                    let activity = Arc::new(H2Activity::default());
                    let (gateway, worker, seen) = (gateway.clone(), worker.clone(), activity.clone());
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        if req.version() == http::Version::HTTP_2 {
                            seen.stream_opened();
                        } else {
                            seen.request();
                        }
                        let (gateway, worker) = (gateway.clone(), worker.clone());
                        async move { Ok::<_, Infallible>(gateway.handle(&worker, peer, req).await) }
                    });
                    let (builder, mut stop, open) = (builder.clone(), shutdown.clone(), open_tx.clone());
                    let idle_timeout = settings.idle_timeout;
                    tokio::spawn(async move {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let idle = activity.idle(idle_timeout);
                        // Until the first request: hyper's header read timeout starts only once
                        // the protocol is known, and a client that sends nothing (or part of
                        // the HTTP/2 preface) would hold its slot for ever.
                        let first = tokio::time::sleep(idle_timeout);
                        tokio::pin!(conn, idle, first);
                        let (mut draining, mut idled, mut first_done) = (false, false, false);
                        let result = loop {
                            tokio::select! {
                                r = conn.as_mut() => break r,
                                _ = &mut first, if !first_done => {
                                    first_done = true;
                                    if !activity.any.load(Ordering::Relaxed) {
                                        tracing::debug!(peer = %peer, "connection closed: no request within server.idle_timeout");
                                        break Ok(());
                                    }
                                }
                                // Drain: HTTP/1 finishes the request in flight and closes;
                                // HTTP/2 sends GOAWAY and lets open streams finish.
                                _ = stop.changed(), if !draining => {
                                    draining = true;
                                    conn.as_mut().graceful_shutdown();
                                }
                                _ = &mut idle, if !idled => {
                                    idled = true;
                                    conn.as_mut().graceful_shutdown();
                                }
                            }
                        };
                        if let Err(e) = result {
                            report_connection_error(&*e, peer);
                        }
                        drop(slot);
                        drop(open);
                    });
                }
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        drop(open_tx);
        tokio::select! {
            _ = open_rx.recv() => {}
            _ = tokio::time::sleep(settings.drain_timeout) => {
                tracing::warn!(bound_ms = settings.drain_timeout.as_millis() as u64, "drain bound reached; closing remaining connections");
            }
        }
        Ok::<(), std::io::Error>(())
    })
}

/// The connection builder: HTTP/1.1 with the server's bounds, and h2c with its own.
fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(settings.max_header_bytes.max(crate::request_head::MIN_HYPER_BUF))
        .header_read_timeout(settings.idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(settings.idle_timeout)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    builder
}

/// Whether a connection has sent a request, and whether an HTTP/2 one keeps opening streams.
/// HTTP/1 requests only read `any` (their idle bound is hyper's header read timeout).
#[derive(Default)]
struct H2Activity {
    any: AtomicBool,
    streams: AtomicU64,
    started: AtomicBool,
    first: Notify,
}

impl H2Activity {
    #[inline]
    fn request(&self) {
        if !self.any.load(Ordering::Relaxed) {
            self.any.store(true, Ordering::Relaxed);
        }
    }

    fn stream_opened(&self) {
        self.any.store(true, Ordering::Relaxed);
        self.streams.fetch_add(1, Ordering::Relaxed);
        if !self.started.swap(true, Ordering::Relaxed) {
            self.first.notify_one();
        }
    }

    /// Completes once the connection has spoken HTTP/2 and then opened no stream for `bound`
    /// (checked once per `bound`, so a connection idles between one and two bounds).
    async fn idle(&self, bound: Duration) {
        self.first.notified().await;
        let mut seen = self.streams.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(bound).await;
            let now = self.streams.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

/// How a client connection's error is reported: an h2 flood as a warning and a metric, other
/// HTTP/2 protocol errors as info and a metric, anything else (resets, timeouts) at debug.
fn report_connection_error(e: &(dyn std::error::Error + 'static), peer: SocketAddr) {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_io() {
                break;
            }
            let reason = h2.reason();
            if reason == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                metrics::counter!(crate::telemetry::H2_CONNECTION_ERRORS, "reason" => "flood").increment(1);
                tracing::warn!(peer = %peer, error = %h2, "HTTP/2 client connection closed: flood (too many resets, CONTINUATION frames or header bytes)");
            } else if h2.is_go_away() || h2.is_library() {
                metrics::counter!(crate::telemetry::H2_CONNECTION_ERRORS, "reason" => "protocol").increment(1);
                tracing::info!(peer = %peer, error = %h2, "HTTP/2 client connection closed on a protocol error");
            } else {
                tracing::debug!(peer = %peer, error = %h2, "HTTP/2 connection ended with an error");
            }
            return;
        }
        cur = err.source();
    }
    tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
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
