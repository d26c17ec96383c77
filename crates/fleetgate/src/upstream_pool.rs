//! Per-worker connection pools to upstream targets, on hyper's HTTP/1 client connections.
//!
//! Each worker keeps, per target, a stack of idle keep-alive connections. A request takes the
//! most recently used one (or connects), and its connection goes back to the stack when the
//! response body has been read to the end. Everything stays on the worker's own thread: no
//! shared pool lock, no background task per request (hyper-util's pooled client measured at
//! 0.6x nginx here; see `scripts/bench gateway`). A request that found a stale idle connection
//! (closed by the upstream before it was sent) is retried once on a fresh one.
//!
//! No task of its own drives a connection either: hyper's `Connection` future is polled by
//! whoever uses it, the request future until the response head arrives and then the response
//! body as the server side reads it. A proxied request thus runs in one task, with no
//! channel hand-offs or wake-ups between a request task and a connection task. An idle
//! connection is polled by nobody: an upstream's close is noticed when the connection is next
//! taken (and it is then dropped), and idle connections past `idle_timeout` are dropped as
//! connections go back to the pool.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub type UpstreamRequestBody = Limited<Incoming>;
type Sender = SendRequest<UpstreamRequestBody>;
type Driver = Connection<TokioIo<tokio::net::TcpStream>, UpstreamRequestBody>;

/// One keep-alive connection: the handle requests are sent on, and the connection's I/O state
/// machine, which makes progress only while somebody polls it (see the module docs).
pub struct UpstreamConn {
    sender: Sender,
    /// `None` once the connection has ended (closed by either side, or failed).
    driver: Option<Driver>,
}

impl UpstreamConn {
    /// Moves the connection's I/O along: writes what is queued, reads what has arrived, and
    /// registers `cx` to be woken for more.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver {
            if let Poll::Ready(result) = Pin::new(driver).poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
                self.driver = None;
            }
        }
    }

    fn is_open(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }

    /// Drives the connection until it can take a request; false if it ended instead.
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            self.drive(cx);
            match self.sender.poll_ready(cx) {
                Poll::Ready(ready) => Poll::Ready(ready.is_ok()),
                Poll::Pending if self.driver.is_none() => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// Why a request to a target failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect(std::io::Error),
    /// The exchange failed after connecting.
    Request(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Request(e) => write!(f, "request: {e}"),
        }
    }
}

/// Idle connections of one worker to one target.
pub struct TargetPool {
    authority: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Most recently used last.
    idle: Mutex<VecDeque<(UpstreamConn, Instant)>>,
}

/// Idle connections kept per target and worker.
const MAX_IDLE: usize = 256;

impl TargetPool {
    pub fn new(authority: String, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(TargetPool {
            authority,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    fn checkout(&self) -> Option<UpstreamConn> {
        let mut idle = self.idle.lock();
        while let Some((conn, since)) = idle.pop_back() {
            if conn.is_open() && since.elapsed() < self.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, conn: UpstreamConn) {
        if !conn.is_open() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock();
        // The least recently used connections sit at the front: drop those gone stale.
        while idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((conn, now));
        }
    }

    async fn connect(&self) -> Result<UpstreamConn, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                UpstreamError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
            })?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Request)?;
        Ok(UpstreamConn {
            sender,
            driver: Some(driver),
        })
    }

    /// Sends `req`; the response body returns the connection to the pool when read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamRequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        loop {
            let (mut conn, fresh) = match self.checkout() {
                Some(c) => (c, false),
                None => (self.connect().await?, true),
            };
            if !conn.ready().await {
                if fresh {
                    return Err(UpstreamError::Connect(std::io::Error::other(
                        "connection closed at once",
                    )));
                }
                continue;
            }
            let mut response = std::pin::pin!(conn.sender.try_send_request(req));
            // The connection first (it writes the request and reads the answer), then the
            // answer's future, which the connection has completed if the answer is in.
            let result = std::future::poll_fn(|cx| {
                conn.drive(cx);
                response.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|body| PooledBody {
                        inner: body,
                        home: Some((conn, pool)),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: the idle connection had gone stale. Try again on another.
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body. Reading it drives its connection, which goes back to the
    /// pool once the body has been read to the end.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        home: Option<(UpstreamConn, Arc<TargetPool>)>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.inner.is_end_stream() {
                if let Some((conn, pool)) = this.home.take() {
                    pool.checkin(conn);
                }
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let mut polled = this.inner.as_mut().poll_frame(cx);
        if polled.is_pending() {
            // Nothing buffered: let the connection read (or hand over what it has read).
            if let Some((conn, _)) = this.home.as_mut() {
                conn.drive(cx);
                polled = this.inner.as_mut().poll_frame(cx);
            }
        }
        if let Poll::Ready(None) = polled {
            if let Some((conn, pool)) = this.home.take() {
                pool.checkin(conn);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
