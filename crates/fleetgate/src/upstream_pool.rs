//! Per-worker connection pools to upstream targets, on hyper's HTTP/1 client connections.
//!
//! Each worker keeps, per target, a stack of idle keep-alive connections. A request takes the
//! most recently used one (or connects), and its connection goes back to the stack when the
//! response body has been read to the end. Everything stays on the worker's own thread: no
//! shared pool lock, no background task per request (hyper-util's pooled client measured at
//! 0.6x nginx here; see `scripts/bench gateway`). A request that found a stale idle connection
//! (closed by the upstream before it was sent) is retried once on a fresh one.

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub type UpstreamRequestBody = Limited<Incoming>;
type Sender = SendRequest<UpstreamRequestBody>;

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
    idle: Mutex<Vec<(Sender, Instant)>>,
}

/// Idle connections kept per target and worker.
const MAX_IDLE: usize = 256;

impl TargetPool {
    pub fn new(authority: String, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(TargetPool {
            authority,
            connect_timeout,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock();
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn checkin(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(&self.authority))
            .await
            .map_err(|_| {
                UpstreamError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))
            })?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req`; the response body returns the connection to the pool when read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamRequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        loop {
            let (mut sender, fresh) = match self.checkout() {
                Some(s) => (s, false),
                None => (self.connect().await?, true),
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(UpstreamError::Connect(std::io::Error::other(
                        "connection closed at once",
                    )));
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|body| PooledBody {
                        inner: body,
                        home: Some((sender, pool)),
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
    /// An upstream response body that gives its connection back once fully read.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        home: Option<(Sender, Arc<TargetPool>)>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.inner.is_end_stream() {
                if let Some((sender, pool)) = this.home.take() {
                    pool.checkin(sender);
                }
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some((sender, pool)) = this.home.take() {
                pool.checkin(sender);
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
