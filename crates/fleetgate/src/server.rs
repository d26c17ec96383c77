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
//! A connection that sends no request at all is closed after one to two `server.idle_timeout`s.
//!
//! The TLS listener (`tls`, [`WorkerTls`]) is served by the same workers: after the handshake
//! (bounded by `server.idle_timeout`; a failure is counted by reason and ends only that
//! connection, see `crate::tls::server`) a connection is served exactly as a plain one is, with
//! HTTP/2 when ALPN chose `h2` (its preface is what the `auto` builder sees).
//!
//! Client connections are capped per instance (all workers share one count): one past the cap
//! is closed as soon as it is accepted, so the kernel's backlog does not fill with clients that
//! wait for nothing. Writes to a client that stops reading fail after `write_timeout`.

use crate::idle::WriteBound;
use crate::reload::{LiveGateway, LiveWorker};
use fleetgate_http::StoreCtx;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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

/// The TLS side of a worker: its listener and the handshake settings.
pub struct WorkerTls {
    pub listener: std::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// Runs one worker until `shutdown` turns true, then drains. Blocks the calling thread. Each
/// request takes the configuration current when it arrives ([`LiveWorker::snapshot`]).
/// With `tls`, the worker also accepts on the TLS listener: each connection's handshake is
/// bounded by `server.idle_timeout`, and then it is served as a plain one is (HTTP/1.1 or
/// HTTP/2, as ALPN chose), its requests marked [`crate::tls::ArrivedOverTls`].
pub fn run_worker(
    listener: std::net::TcpListener,
    tls: Option<WorkerTls>,
    live: Arc<LiveGateway>,
    make_ctx: impl FnOnce() -> Result<StoreCtx, String>,
    started: std::sync::mpsc::Sender<Result<(), String>>,
    settings: ServerSettings,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (tls_listener, acceptor) = match tls {
            Some(t) => (Some(tokio::net::TcpListener::from_std(t.listener)?), Some(t.acceptor)),
            None => (None, None),
        };
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
        let worker = Arc::new(LiveWorker::new(live, ctx));
        let builder = Arc::new(connection_builder(&settings));
        // Each connection task holds a sender; when all are gone, the drain is over.
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
        let registry = Arc::new(Registry::default());
        let sweeper = tokio::spawn(registry.clone().sweep(settings.idle_timeout));
        loop {
            let (accepted, over_tls) = tokio::select! {
                accepted = listener.accept() => (accepted, false),
                accepted = accept_on(tls_listener.as_ref()) => (accepted, true),
                _ = shutdown.changed() => break,
            };
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
            let state = registry.add();
            let conn = Connection {
                worker: worker.clone(),
                builder: builder.clone(),
                state,
                peer,
            };
            let open = open_tx.clone();
            match (over_tls, &acceptor) {
                (true, Some(acceptor)) => {
                    let (accept, bound) = (acceptor.accept(stream), settings.idle_timeout);
                    tokio::spawn(async move {
                        let handshake = tokio::time::timeout(bound, accept).await.unwrap_or_else(|_| {
                            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no TLS handshake within server.idle_timeout"))
                        });
                        match handshake {
                            // A drain that began during the handshake: nothing was asked yet.
                            Ok(_) if conn.state.stop.load(Ordering::Acquire) => {}
                            Ok(tls) => conn.serve(tls, true).await,
                            Err(e) => crate::tls::server::handshake_failed(&e, peer),
                        }
                        drop(slot);
                        drop(open);
                    });
                }
                _ => {
                    tokio::spawn(async move {
                        conn.serve(stream, false).await;
                        drop(slot);
                        drop(open);
                    });
                }
            }
        }
        drop(listener);
        drop(tls_listener);
        drop(open_tx);
        registry.stop_all();
        tokio::select! {
            _ = open_rx.recv() => {}
            _ = tokio::time::sleep(settings.drain_timeout) => {
                tracing::warn!(bound_ms = settings.drain_timeout.as_millis() as u64, "drain bound reached; closing remaining connections");
            }
        }
        sweeper.abort();
        Ok::<(), std::io::Error>(())
    })
}

/// The next connection on the TLS listener; never, without one.
async fn accept_on(listener: Option<&tokio::net::TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// One accepted client connection and what serving it needs.
struct Connection {
    worker: Arc<LiveWorker>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<ConnState>,
    peer: SocketAddr,
}

impl Connection {
    /// Serves the connection's requests until it ends, is idle too long, or the drain asks it
    /// to stop.
    async fn serve<S>(self, stream: S, over_tls: bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            worker,
            builder,
            state,
            peer,
        } = self;
        let seen = state.clone();
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            if req.version() == http::Version::HTTP_2 {
                seen.stream_opened();
            } else {
                seen.request();
            }
            if over_tls {
                req.extensions_mut().insert(crate::tls::ArrivedOverTls);
            }
            let snap = worker.snapshot();
            // Not boxed: hyper's HTTP/1 dispatcher keeps the future in one box per connection
            // (a box per request cost an allocation of the future's size each), and an HTTP/2
            // stream's task holds it inline.
            crate::gateway::Gateway::handle(snap, peer, req)
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let mut stopping = false;
        let mut registered = false;
        // One load per poll: the drain and the idle sweep set `stop` and wake this task
        // (rather than a select! that would poll their futures on every wake-up of every
        // request).
        let result = std::future::poll_fn(|cx| {
            if !stopping && state.stop.load(Ordering::Acquire) {
                stopping = true;
                // HTTP/1 finishes the request in flight and closes; HTTP/2 sends GOAWAY and
                // lets open streams finish; a connection still before its first bytes is
                // dropped.
                conn.as_mut().graceful_shutdown();
            }
            if !registered {
                // This future only ever runs in this task: its waker does not change.
                state.waker.register(cx.waker());
                registered = true;
            }
            conn.as_mut().poll(cx)
        })
        .await;
        if let Err(e) = result {
            report_connection_error(&*e, peer);
        }
    }
}

/// The connection builder: HTTP/1.1 with the server's bounds, and h2c with its own.
fn connection_builder(settings: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .writev(false)
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

/// What the worker knows of one client connection: whether it has sent a request, how many
/// HTTP/2 streams it opened, and the way to ask it to stop.
#[derive(Default)]
struct ConnState {
    any: AtomicBool,
    h2: AtomicBool,
    streams: AtomicU64,
    stop: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

impl ConnState {
    /// An HTTP/1 request: one relaxed load once the first has been seen.
    #[inline]
    fn request(&self) {
        if !self.any.load(Ordering::Relaxed) {
            self.any.store(true, Ordering::Relaxed);
        }
    }

    fn stream_opened(&self) {
        self.any.store(true, Ordering::Relaxed);
        self.h2.store(true, Ordering::Relaxed);
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    fn ask_to_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The worker's open connections, for the drain and for one idle sweep per `server.idle_timeout`
/// (instead of a timer per connection polled on every wake-up).
#[derive(Default)]
struct Registry {
    /// Connections accepted since the last sweep.
    new: parking_lot::Mutex<Vec<std::sync::Weak<ConnState>>>,
    /// Connections the sweeper has seen: streams counted at the last sweep, and whether the
    /// connection looked idle then.
    known: parking_lot::Mutex<Vec<(std::sync::Weak<ConnState>, u64, bool)>>,
}

impl Registry {
    fn add(&self) -> Arc<ConnState> {
        let state = Arc::new(ConnState::default());
        self.new.lock().push(Arc::downgrade(&state));
        state
    }

    /// Every `bound`: a connection that has sent no request, or an HTTP/2 one that opened no
    /// stream, at two sweeps in a row (so for between one and two bounds) is asked to stop.
    /// hyper's header read timeout already bounds HTTP/1 connections between requests; before
    /// the first one the protocol is not known yet and nothing else would.
    async fn sweep(self: Arc<Self>, bound: Duration) {
        let mut tick = tokio::time::interval(bound);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let fresh = std::mem::take(&mut *self.new.lock());
            let mut known = self.known.lock();
            known.extend(fresh.into_iter().map(|w| (w, 0, false)));
            known.retain_mut(|(weak, seen, idle)| {
                let Some(state) = weak.upgrade() else {
                    return false;
                };
                let streams = state.streams.load(Ordering::Relaxed);
                let quiet =
                    !state.any.load(Ordering::Relaxed) || (state.h2.load(Ordering::Relaxed) && streams == *seen);
                *seen = streams;
                if quiet && *idle {
                    if !state.h2.load(Ordering::Relaxed) {
                        tracing::debug!("connection closed: no request within server.idle_timeout");
                    }
                    state.ask_to_stop();
                    return false;
                }
                *idle = quiet;
                true
            });
        }
    }

    fn stop_all(&self) {
        let fresh = std::mem::take(&mut *self.new.lock());
        let known = std::mem::take(&mut *self.known.lock());
        for state in fresh
            .iter()
            .chain(known.iter().map(|(w, _, _)| w))
            .filter_map(|w| w.upgrade())
        {
            state.ask_to_stop();
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
