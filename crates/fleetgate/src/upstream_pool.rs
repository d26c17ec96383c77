//! Per-worker connection pools to upstream targets, on hyper's HTTP/1 client connections.
//!
//! Each worker keeps, per target, a stack of idle keep-alive connections. A request takes the
//! most recently used one (or connects). A connection goes back to the stack only when it is
//! done both ways: the response body read to the end and the request body sent whole. One
//! whose upstream answered before taking the whole request body (an early 413 or 401) is
//! closed instead: hyper would keep streaming the rest of that body on it, and the next request
//! would wait behind it. Everything stays on the worker's own thread: no shared pool lock, no
//! background task per request (hyper-util's pooled client measured at 0.6x nginx here; see
//! `scripts/bench gateway`). A request that found a stale idle connection (closed by the
//! upstream before it was sent) is retried once on a fresh one.
//!
//! HTTP/2 to a target (gRPC, `protocol: http2`, or an `https://` target that chose `h2` by
//! ALPN under `protocol: auto`; see `crate::gateway`): one multiplexed connection per worker
//! and target, opened on first use (prior knowledge for `http://`, ALPN `h2` for `https://`)
//! and replaced when it closes. Under `auto`, the first request to an `https://` target
//! connects offering both and keeps the connection for the protocol the target chose
//! ([`TargetPool::learn_protocol`]); a target that later stops offering `h2` is spoken to over
//! HTTP/1.1 again from its next connection on.
//!
//! `https://` targets ([`TargetLink::tls`]): the TLS handshake is part of connecting, within
//! `connect_timeout`; a failed one is a connection failure (502, passive ejection). Upgrade
//! requests (WebSocket) get a fresh HTTP/1.1 connection of their own, never pooled: after a
//! 101 it belongs to the tunnel.
//!
//! Bounds ([`crate::idle`]): a request body that stops arriving, a response body that stops
//! arriving, and an upstream that stops taking our writes each end the exchange after their
//! bound instead of holding both sides open.

use crate::body::BoxError;
use crate::idle::{is_write_stall, IdleBound, WriteBound};
use crate::tls::client::{Alpn, UpstreamIo, UpstreamTls};
use crate::upstream::Upstream;
use bytes::Bytes;
use fleetgate_config::UpstreamProtocol;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The request body as the gateway hands it over.
pub type UpstreamRequestBody = OutboundBody;
type Sender = SendRequest<OutboundBody>;

/// The upstream gave no answer within the request timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// `fut`, or [`TimedOut`] once `bound` has passed, with `fut` polled where it lies: a macro,
/// not a function, because moving a future into a function (or into `tokio::time::timeout`'s
/// `Timeout`, then that into the caller's state) copies its whole size each time, and the
/// send future is copied on every proxied request.
macro_rules! within {
    ($bound:expr, $fut:expr) => {{
        let fut = $fut;
        let sleep = tokio::time::sleep($bound);
        tokio::pin!(fut, sleep);
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(out) = std::future::Future::poll(fut.as_mut(), cx) {
                return std::task::Poll::Ready(Ok(out));
            }
            std::future::Future::poll(sleep.as_mut(), cx).map(|()| Err($crate::upstream_pool::TimedOut))
        })
        .await
    }};
}
pub(crate) use within;

/// Why a request to a target failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect(std::io::Error),
    /// The exchange failed after connecting.
    Request(hyper::Error),
    /// The client stopped sending its request body for longer than this.
    ClientBodyIdle(Duration),
    /// The upstream took none of the request for longer than this.
    UpstreamStalled(Duration),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Request(e) => write!(f, "request: {e}"),
            UpstreamError::ClientBodyIdle(d) => {
                write!(f, "the client sent no request body bytes for {} ms", d.as_millis())
            }
            UpstreamError::UpstreamStalled(d) => write!(f, "the upstream read nothing for {} ms", d.as_millis()),
        }
    }
}

/// The timeouts of one worker's connections to one target.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Longest wait for the next bytes of a response body.
    pub response_body_idle: Duration,
    /// Longest wait for the next bytes of the client's request body.
    pub request_body_idle: Duration,
    /// Longest time a write to the target may make no progress.
    pub write_timeout: Duration,
    /// Largest request body forwarded (`server.max_body_bytes`).
    pub max_body_bytes: u64,
}

impl PoolSettings {
    /// The settings of `upstream`'s targets, with the server's bounds on request bodies.
    pub fn for_upstream(upstream: &Upstream, request_body_idle: Duration, max_body_bytes: u64) -> Self {
        PoolSettings {
            max_body_bytes,
            connect_timeout: upstream.connect_timeout,
            idle_timeout: upstream.idle_timeout,
            response_body_idle: upstream.body_idle_timeout,
            request_body_idle,
            write_timeout: upstream.write_timeout,
        }
    }
}

/// What a connection's pool and its current request body share. Behind one `Arc` made per
/// connection, so that a request pays no allocation and its body stays one word bigger than
/// hyper's own (the request is moved several times on its way: at 256 bytes, a move is a few
/// inline copies; past it, a call to memcpy, measured under callgrind). A connection carries
/// one request at a time, so the request body's state can live here.
struct ConnShared {
    /// The current request's body has been handed to hyper whole.
    request_sent: AtomicBool,
    /// Bytes the current request body may still carry (`server.max_body_bytes` at the start).
    remaining: AtomicU64,
    max_body_bytes: u64,
    /// Whether `idle` may be waiting (so that progress takes its lock only then).
    waiting: AtomicBool,
    /// The bound on the current request body's waits.
    idle: Mutex<IdleBound>,
    /// Longest wait for the next bytes of the client's request body.
    request_body_idle: Duration,
    /// The task driving the connection: aborting it closes the socket at once, even while
    /// hyper is still writing a request body. `None` for an HTTP/2 stream (the connection is
    /// shared by other streams and is never closed for one of them).
    task: Option<tokio::task::AbortHandle>,
}

/// One client connection to a target.
struct Conn {
    sender: Sender,
    shared: Arc<ConnShared>,
}

impl Conn {
    fn close(self) {
        if let Some(task) = &self.shared.task {
            task.abort();
        }
    }
}

/// How a target is reached: over TLS or not, and in which HTTP version.
#[derive(Clone)]
pub struct TargetLink {
    /// For an `https://` target: the upstream's TLS settings and the name to verify.
    pub tls: Option<(Arc<UpstreamTls>, ServerName<'static>)>,
    pub protocol: UpstreamProtocol,
}

impl TargetLink {
    /// Plain HTTP/1.1 (gRPC aside).
    pub fn plain() -> Self {
        TargetLink {
            tls: None,
            protocol: UpstreamProtocol::Auto,
        }
    }
}

/// What is known of the HTTP version a target speaks (`TargetPool::h2`).
const PROTO_UNKNOWN: u8 = 0;
const PROTO_HTTP1: u8 = 1;
const PROTO_HTTP2: u8 = 2;

/// Idle connections of one worker to one target.
pub struct TargetPool {
    authority: String,
    settings: PoolSettings,
    link: TargetLink,
    /// [`PROTO_UNKNOWN`] until an `auto` TLS target's choice is known.
    proto: AtomicU8,
    idle: Mutex<Vec<(Conn, Instant)>>,
    /// The HTTP/2 connection, once one was asked for.
    h2: Mutex<Option<H2Sender>>,
}

type H2Sender = hyper::client::conn::http2::SendRequest<OutboundBody>;

/// Idle connections kept per target and worker.
const MAX_IDLE: usize = 256;

impl TargetPool {
    pub fn new(authority: String, settings: PoolSettings, link: TargetLink) -> Arc<Self> {
        let proto = match (link.protocol, link.tls.is_some()) {
            (UpstreamProtocol::Http2, _) => PROTO_HTTP2,
            (UpstreamProtocol::Http1, _) | (UpstreamProtocol::Auto, false) => PROTO_HTTP1,
            (UpstreamProtocol::Auto, true) => PROTO_UNKNOWN,
        };
        Arc::new(TargetPool {
            authority,
            settings,
            link,
            proto: AtomicU8::new(proto),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
        })
    }

    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock();
        while let Some((conn, since)) = idle.pop() {
            if !conn.sender.is_closed() && since.elapsed() < self.settings.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// Idle connections (tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().len()
    }

    /// Keeps `conn` for the next request if it is done both ways; closes it otherwise.
    fn checkin(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        if !conn.shared.request_sent.load(Ordering::Acquire) {
            // The upstream answered before the request body was through: hyper would go on
            // streaming it here, and the next request would wait behind it.
            conn.close();
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }

    /// Whether requests go to the target over HTTP/2 (`None`: not known yet, see
    /// [`learn_protocol`](Self::learn_protocol)).
    #[inline]
    pub fn h2_known(&self) -> Option<bool> {
        match self.proto.load(Ordering::Relaxed) {
            PROTO_HTTP1 => Some(false),
            PROTO_HTTP2 => Some(true),
            _ => None,
        }
    }

    /// Connects once offering both protocols and keeps the connection for the one the target
    /// chose (`protocol: auto`, `https://`). Whether it chose HTTP/2; a failure says no (the
    /// HTTP/1.1 path then connects again and reports it).
    pub async fn learn_protocol(&self) -> bool {
        let Ok((io, h2)) = self.connect_io(Alpn::Either).await else {
            return false;
        };
        if h2 {
            match self.h2_handshake(io).await {
                Ok(sender) => {
                    *self.h2.lock() = Some(sender);
                    self.proto.store(PROTO_HTTP2, Ordering::Relaxed);
                    true
                }
                Err(_) => false,
            }
        } else {
            self.proto.store(PROTO_HTTP1, Ordering::Relaxed);
            if let Ok(conn) = self.h1_handshake(io).await {
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE {
                    idle.push((conn, Instant::now()));
                }
            }
            false
        }
    }

    /// One health check over a connection of its own (HTTP/1.1, TLS for an `https://` target):
    /// whether `GET path` answered 2xx. Bounded by the caller.
    pub async fn probe(&self, path: &str) -> bool {
        let Ok((io, _)) = self.connect_io(Alpn::Http1).await else {
            return false;
        };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(io).await
        else {
            return false;
        };
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::USER_AGENT, "fleetgate-health-check")
            .body(http_body_util::Empty::new());
        match req {
            Ok(req) => sender
                .send_request(req)
                .await
                .is_ok_and(|resp| resp.status().is_success()),
            Err(_) => false,
        }
    }

    /// A connection to the target: TCP, then TLS offering `alpn` for an `https://` target,
    /// both within `connect_timeout`. Also whether the target chose HTTP/2 by ALPN.
    async fn connect_io(&self, alpn: Alpn) -> Result<(TokioIo<UpstreamIo>, bool), UpstreamError> {
        let timed_out =
            || UpstreamError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"));
        let connecting = async {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(UpstreamError::Connect)?;
            let _ = stream.set_nodelay(true);
            let stream = WriteBound::new(stream, self.settings.write_timeout);
            match &self.link.tls {
                None => Ok((UpstreamIo::Plain(stream), false)),
                Some((tls, name)) => tls
                    .connect(name.clone(), stream, alpn)
                    .await
                    .map_err(UpstreamError::Connect),
            }
        };
        let (io, h2) = tokio::time::timeout(self.settings.connect_timeout, connecting)
            .await
            .map_err(|_| timed_out())??;
        Ok((TokioIo::new(io), h2))
    }

    /// Sends an upgrade request (WebSocket) on a connection of its own. The response, if 101,
    /// carries the upstream's side of the tunnel (`hyper::upgrade::on`).
    pub async fn send_upgrade(&self, req: Request<UpstreamRequestBody>) -> Result<Response<Incoming>, UpstreamError> {
        let (io, _) = self.connect_io(Alpn::Http1).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(UpstreamError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
            }
        });
        sender.send_request(req).await.map_err(|e| self.classify(e))
    }

    /// The worker's HTTP/2 connection to the target: the open one, or a new one (prior
    /// knowledge, or ALPN `h2` for an `https://` target).
    async fn h2_sender(&self) -> Result<H2Sender, UpstreamError> {
        if let Some(sender) = self.h2.lock().as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let (io, h2) = self.connect_io(Alpn::Http2).await?;
        if self.link.tls.is_some() && !h2 {
            if self.link.protocol == UpstreamProtocol::Auto {
                // Its next requests go over HTTP/1.1.
                self.proto.store(PROTO_HTTP1, Ordering::Relaxed);
            }
            return Err(UpstreamError::Connect(std::io::Error::other(
                "the target did not choose HTTP/2 (ALPN h2)",
            )));
        }
        let sender = self.h2_handshake(io).await?;
        // Two requests may race to connect: the last one in stays, the other connection ends
        // when its streams do.
        *self.h2.lock() = Some(sender.clone());
        Ok(sender)
    }

    async fn h2_handshake(&self, io: TokioIo<UpstreamIo>) -> Result<H2Sender, UpstreamError> {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(io)
            .await
            .map_err(UpstreamError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` over HTTP/2 (its URI absolute, so that `:scheme` and `:authority` are set).
    /// The request body keeps its bounds (size, idle); the response body is bounded between
    /// reads, and its trailers pass through.
    pub async fn send_h2(&self, mut req: Request<UpstreamRequestBody>) -> Result<Response<H2Body>, UpstreamError> {
        let mut sender = self.h2_sender().await?;
        sender.ready().await.map_err(UpstreamError::Request)?;
        let shared = Arc::new(ConnShared {
            request_sent: AtomicBool::new(true),
            remaining: AtomicU64::new(0),
            max_body_bytes: self.settings.max_body_bytes,
            waiting: AtomicBool::new(false),
            idle: Mutex::new(IdleBound::new()),
            request_body_idle: self.settings.request_body_idle,
            task: None,
        });
        req.body_mut().attach(&shared);
        let resp = sender.send_request(req).await.map_err(|e| self.classify(e))?;
        let bound = self.settings.response_body_idle;
        Ok(resp.map(|inner| H2Body {
            inner,
            idle: IdleBound::new(),
            bound,
        }))
    }

    async fn connect(&self) -> Result<Conn, UpstreamError> {
        let (io, _) = self.connect_io(Alpn::Http1).await?;
        self.h1_handshake(io).await
    }

    async fn h1_handshake(&self, io: TokioIo<UpstreamIo>) -> Result<Conn, UpstreamError> {
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(UpstreamError::Request)?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        })
        .abort_handle();
        Ok(Conn {
            sender,
            shared: Arc::new(ConnShared {
                request_sent: AtomicBool::new(true),
                remaining: AtomicU64::new(0),
                max_body_bytes: self.settings.max_body_bytes,
                waiting: AtomicBool::new(false),
                idle: Mutex::new(IdleBound::new()),
                request_body_idle: self.settings.request_body_idle,
                task: Some(task),
            }),
        })
    }

    /// Makes sure a connection to the target is at hand (an idle one, or a new one put in the
    /// pool), so that a connection failure is known before a request is given away: retries
    /// ([`crate::retry`]) send it elsewhere then.
    pub async fn warm(&self) -> Result<(), UpstreamError> {
        let conn = match self.checkout() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        self.checkin(conn);
        Ok(())
    }

    /// Sends `req`; the response body returns the connection to the pool when read to the end
    /// (and the request body went whole).
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamRequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        loop {
            let (mut conn, fresh) = match self.checkout() {
                Some(c) => (c, false),
                // Boxed: the connect and handshake futures are large, and inline they would be
                // copied with this future (several times per request) when a pooled
                // connection serves it, which is nearly always.
                None => (crate::boxed_future::boxed(|| self.connect()).await?, true),
            };
            if conn.sender.ready().await.is_err() {
                if fresh {
                    return Err(UpstreamError::Connect(std::io::Error::other(
                        "connection closed at once",
                    )));
                }
                continue;
            }
            req.body_mut().attach(&conn.shared);
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    let home = Some((conn, self.clone()));
                    return Ok(resp.map(|inner| PooledBody {
                        inner,
                        idle: IdleBound::new(),
                        home,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: the idle connection had gone stale. Try again on another.
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(self.classify(e.into_error())),
                },
            }
        }
    }

    /// Names the bound that ended an exchange, if one did.
    fn classify(&self, e: hyper::Error) -> UpstreamError {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = cur {
            if let Some(idle) = err.downcast_ref::<RequestBodyIdle>() {
                return UpstreamError::ClientBodyIdle(idle.0);
            }
            cur = err.source();
        }
        if is_write_stall(&e) {
            return UpstreamError::UpstreamStalled(self.settings.write_timeout);
        }
        UpstreamError::Request(e)
    }
}

/// The client sent no request body bytes for this long.
#[derive(Debug)]
pub struct RequestBodyIdle(pub Duration);

impl std::fmt::Display for RequestBodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no request body bytes for {} ms", self.0.as_millis())
    }
}

impl std::error::Error for RequestBodyIdle {}

/// The client's request body went past `server.max_body_bytes`.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body larger than server.max_body_bytes")
    }
}

impl std::error::Error for BodyTooLarge {}

/// The upstream sent no response body bytes for this long.
#[derive(Debug)]
pub struct ResponseBodyIdle(pub Duration);

impl std::fmt::Display for ResponseBodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no response body bytes from the upstream for {} ms",
            self.0.as_millis()
        )
    }
}

impl std::error::Error for ResponseBodyIdle {}

pin_project_lite::pin_project! {
    /// The client's request body on its way to the upstream: bounded between reads, and
    /// telling its connection when it has gone whole.
    /// The client's request body on its way to the upstream: at most `max_body_bytes`
    /// (else [`BodyTooLarge`]), bounded between reads,
    /// and telling its connection when it has gone whole.
    pub struct OutboundBody {
        #[pin]
        inner: crate::client_body::ClientBody,
        // `None` once sent whole (or when there was nothing to send).
        shared: Option<Arc<ConnShared>>,
    }
}

impl OutboundBody {
    /// The client's body as it arrives, or one kept in memory (`Bytes`).
    pub fn new(inner: impl Into<crate::client_body::ClientBody>) -> Self {
        OutboundBody {
            inner: inner.into(),
            shared: None,
        }
    }

    /// Rides on the connection of `shared` from now on.
    fn attach(&mut self, shared: &Arc<ConnShared>) {
        let empty = self.inner.is_end_stream();
        shared.request_sent.store(empty, Ordering::Release);
        shared.remaining.store(shared.max_body_bytes, Ordering::Relaxed);
        if shared.waiting.swap(false, Ordering::Relaxed) {
            shared.idle.lock().progressed();
        }
        // Bodiless requests (the common case) keep no reference: nothing to report.
        self.shared = if empty { None } else { Some(shared.clone()) };
    }
}

fn mark_sent(shared: &mut Option<Arc<ConnShared>>) {
    if let Some(s) = shared.take() {
        s.request_sent.store(true, Ordering::Release);
    }
}

impl Body for OutboundBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        // Polled only while not yet sent whole, so `shared` is there.
        let Some(shared) = this.shared.as_ref() else {
            return polled.map_err(|e| Box::new(e) as BoxError);
        };
        match polled {
            Poll::Pending => {
                shared.waiting.store(true, Ordering::Relaxed);
                match shared.idle.lock().poll_expired(shared.request_body_idle, cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(RequestBodyIdle(shared.request_body_idle))))),
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if shared.waiting.swap(false, Ordering::Relaxed) {
                    shared.idle.lock().progressed();
                }
                if let Some(data) = frame.data_ref() {
                    let (len, left) = (data.len() as u64, shared.remaining.load(Ordering::Relaxed));
                    if len > left {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    shared.remaining.store(left - len, Ordering::Relaxed);
                }
                // hyper stops polling after the last data (end of stream) or after trailers.
                if frame.is_trailers() || this.inner.is_end_stream() {
                    mark_sent(this.shared);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                mark_sent(this.shared);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body, bounded between reads, that gives its connection back once
    /// done both ways and closes it otherwise.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        idle: IdleBound,
        home: Option<(Conn, Arc<TargetPool>)>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((conn, pool)) = this.home.take() {
                if this.inner.is_end_stream() {
                    pool.checkin(conn);
                } else {
                    // Not read to the end (the client left, or a bound ended it): the rest of
                    // the answer is of no use, and neither is the connection.
                    conn.close();
                }
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => {
                // Polled only until the end, while the connection is still here.
                let Some(bound) = this.home.as_ref().map(|(_, pool)| pool.settings.response_body_idle) else {
                    return Poll::Pending;
                };
                match this.idle.poll_expired(bound, cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        // The error makes hyper abort the client's response (never completed as
                        // if whole); the upstream connection goes with it.
                        if let Some((conn, _)) = this.home.take() {
                            conn.close();
                        }
                        Poll::Ready(Some(Err(Box::new(ResponseBodyIdle(bound)))))
                    }
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                if let Some((conn, pool)) = this.home.take() {
                    pool.checkin(conn);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body from an HTTP/2 upstream, bounded between reads. Trailers pass through.
    pub struct H2Body {
        #[pin]
        inner: Incoming,
        idle: IdleBound,
        bound: Duration,
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => match this.idle.poll_expired(*this.bound, cx) {
                Poll::Pending => Poll::Pending,
                // Dropping the body resets the stream upstream.
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(ResponseBodyIdle(*this.bound))))),
            },
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings() -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            response_body_idle: Duration::from_secs(2),
            request_body_idle: Duration::from_secs(2),
            write_timeout: Duration::from_secs(2),
            max_body_bytes: 1 << 20,
        }
    }

    async fn get(pool: &Arc<TargetPool>) -> (u16, Bytes) {
        let req = Request::get("/")
            .header(http::header::HOST, "up")
            .body(OutboundBody::new(Bytes::new()))
            .unwrap();
        let resp = pool.send(req).await.expect("the upstream answers");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("the whole body").to_bytes();
        (status, body)
    }

    /// Reads one request head from `sock` and answers `200 ok`.
    async fn answer_one(sock: &mut tokio::net::TcpStream) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.expect("read the request");
            assert!(n > 0, "the gateway closed before sending a request");
            head.extend_from_slice(&buf[..n]);
        }
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .expect("write the response");
    }

    /// When the target closes an idle connection, the gateway closes its side at once (the
    /// target reads end of stream) and never hands that connection out again.
    #[tokio::test]
    async fn an_idle_connection_the_target_closes_is_closed_and_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let (close_now_tx, close_now_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            answer_one(&mut sock).await;
            close_now_rx.await.unwrap();
            // Half-close: the gateway's side stays open until it closes it.
            sock.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest)).await;
            let _ = closed_tx.send(matches!(read, Ok(Ok(0))));
        });
        let pool = TargetPool::new(addr.to_string(), settings(), TargetLink::plain());
        assert_eq!(get(&pool).await, (200, Bytes::from_static(b"ok")));
        assert_eq!(pool.idle_count(), 1, "the connection went back to the pool");
        close_now_tx.send(()).unwrap();
        assert!(
            closed_rx.await.unwrap(),
            "the gateway never closed its side of the idle connection"
        );
        assert!(pool.checkout().is_none(), "the closed connection was handed out");
    }

    /// Many requests in turn on one pooled connection: each finds it ready and gets its own
    /// response.
    #[tokio::test]
    async fn one_connection_serves_request_after_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    loop {
                        answer_one(&mut sock).await;
                    }
                });
            }
        });
        let pool = TargetPool::new(addr.to_string(), settings(), TargetLink::plain());
        for _ in 0..50 {
            assert_eq!(get(&pool).await, (200, Bytes::from_static(b"ok")));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "each request should reuse the one connection"
        );
    }
}
