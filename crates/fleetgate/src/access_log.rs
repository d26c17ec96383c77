//! The access log (`log.access_log`): one record per request, written when its response is
//! over (the body ended, failed, or the client left), so it holds the bytes sent and the whole
//! duration.
//!
//! - `text`: one `tracing` event (target `fleetgate::access`) through the normal logger.
//! - `json`: one JSON object per line on standard output, through its own non-blocking writer
//!   (a slow terminal never stalls a request; lines may be dropped under extreme back-pressure,
//!   as with the text log).
//!
//! With the access log off nothing of this runs: the request path keeps `None` and reads no
//! clock for it.

use crate::body::GatewayBody;
use bytes::Bytes;
use http::{Method, Version};
use http_body::{Body, Frame, SizeHint};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use fleetgate_config::AccessLog as Form;

/// What one request's access log record says; filled in along the request path.
pub struct Record {
    pub form: Form,
    pub started: Instant,
    pub method: Method,
    /// The path as the client sent it, without the query (which may carry secrets).
    pub path: String,
    pub version: Version,
    pub peer: SocketAddr,
    pub client_ip: Option<IpAddr>,
    pub request_id: http::HeaderValue,
    pub route: Option<String>,
    pub upstream: Option<String>,
    /// The target URL the request went to.
    pub target: Option<String>,
    /// From sending the request upstream to receiving the upstream's response head.
    pub upstream_time: Option<Duration>,
    /// The request's `Content-Length`, when it had one.
    pub bytes_in: Option<u64>,
    pub status: u16,
    /// The limit that refused the request, and the refusal's `error`.
    pub refused_by: Option<(String, &'static str)>,
    /// The response's `RateLimit` header: each limit passed and its units remaining.
    pub ratelimit: Option<String>,
    pub trace_id: Option<String>,
    /// How long the upstream's throttle held the request before it went (`throttle`).
    pub throttle_wait: Option<Duration>,
    /// The response's `Cache-Status` (routes with `cache`).
    pub cache: Option<String>,
    /// What dedup did (`leader`, `follower`, `replay`, `fallthrough`), on a route with `dedup`.
    pub dedup: Option<&'static str>,
}

impl Record {
    pub fn new(form: Form, method: Method, path: &str, version: Version, peer: SocketAddr) -> Box<Record> {
        Box::new(Record {
            form,
            started: Instant::now(),
            method,
            path: path.to_string(),
            version,
            peer,
            client_ip: None,
            request_id: http::HeaderValue::from_static(""),
            route: None,
            upstream: None,
            target: None,
            upstream_time: None,
            bytes_in: None,
            status: 0,
            refused_by: None,
            ratelimit: None,
            trace_id: None,
            throttle_wait: None,
            cache: None,
            dedup: None,
        })
    }

    /// Writes the record: `bytes_out` body bytes were sent; `completed` is false when the body
    /// failed or the client left before its end.
    pub fn write(&self, bytes_out: u64, completed: bool) {
        let total = self.started.elapsed();
        match self.form {
            Form::Off => {}
            Form::Text => tracing::info!(
                target: "fleetgate::access",
                method = %self.method,
                path = %self.path,
                status = self.status,
                route = self.route.as_deref().unwrap_or("-"),
                peer = %self.peer,
                upstream = self.target.as_deref().unwrap_or("-"),
                request_id = self.request_id.to_str().unwrap_or("-"),
                bytes_out,
                micros = total.as_micros() as u64,
            ),
            Form::Json => {
                let mut line = self.json(total, bytes_out, completed).to_string();
                line.push('\n');
                write_json_line(line.as_bytes());
            }
        }
    }

    fn json(&self, total: Duration, bytes_out: u64, completed: bool) -> serde_json::Value {
        let ms = |d: Duration| (d.as_micros() as f64) / 1000.0;
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        serde_json::json!({
            "unix_ms": unix_ms,
            "request_id": self.request_id.to_str().unwrap_or(""),
            "method": self.method.as_str(),
            "path": self.path,
            "protocol": protocol(self.version),
            "status": self.status,
            "route": self.route,
            "upstream": self.upstream,
            "target": self.target,
            "duration_ms": ms(total),
            "upstream_ms": self.upstream_time.map(ms),
            "bytes_in": self.bytes_in,
            "bytes_out": bytes_out,
            "completed": completed,
            "client_ip": self.client_ip.unwrap_or(self.peer.ip()).to_string(),
            "peer": self.peer.to_string(),
            "limited_by": self.refused_by.as_ref().map(|(l, _)| l),
            "limit_error": self.refused_by.as_ref().map(|(_, e)| e),
            "ratelimit": self.ratelimit,
            "trace_id": self.trace_id,
            "throttle_wait_ms": self.throttle_wait.map(ms),
            "cache": self.cache,
            "dedup": self.dedup,
        })
    }
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

static JSON_WRITER: OnceLock<tracing_appender::non_blocking::NonBlocking> = OnceLock::new();

/// Starts the JSON lines writer (standard output, non-blocking); keep the guard alive so the
/// last lines are flushed at exit.
pub fn init_json_writer() -> Option<tracing_appender::non_blocking::WorkerGuard> {
    if JSON_WRITER.get().is_some() {
        return None;
    }
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    JSON_WRITER.set(writer).ok().map(|_| guard)
}

fn write_json_line(line: &[u8]) {
    use std::io::Write;
    if let Some(w) = JSON_WRITER.get() {
        let _ = w.clone().write_all(line);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and writes the request's record at its end
    /// (or when dropped before it: the client left).
    pub struct Logged {
        #[pin]
        inner: GatewayBody,
        record: Option<Box<Record>>,
        sent: u64,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(r) = this.record.take() {
                // Dropped at its end (a bodiless answer, never polled) or before it.
                let whole = this.inner.is_end_stream();
                r.write(*this.sent, whole);
            }
        }
    }
}

impl Logged {
    pub fn new(inner: GatewayBody, record: Box<Record>) -> Self {
        Logged {
            inner,
            record: Some(record),
            sent: 0,
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.sent += data.len() as u64;
                }
                // A body of known length is not polled past its last bytes.
                if this.inner.is_end_stream() {
                    if let Some(r) = this.record.take() {
                        r.write(*this.sent, true);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(r) = this.record.take() {
                    r.write(*this.sent, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = this.record.take() {
                    r.write(*this.sent, false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Not before the record is written: the server then polls once more.
        self.inner.is_end_stream() && self.record.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
