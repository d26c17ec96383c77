//! The client's request body as the proxy sends it on: as it arrives, or with its first bytes
//! already read (by [`read_prefix`], for stages that look at the body: `json:` and `form:`
//! key forms) and the rest, if any, still streaming; or kept whole in memory, so that it can be
//! sent again (an upstream login's retry after a refresh). Trailers read early are sent on too.

use bytes::Bytes;
use fleetgate_http::body_fields::BufferedBody;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

pin_project_lite::pin_project! {
    /// A request body: bytes read ahead (sent first), then what is left of the client's body.
    pub struct ClientBody {
        read_ahead: Option<Bytes>,
        // Boxed: rare, and inline it would make every request (moved several times on its
        // way upstream) 88 bytes bigger.
        trailers: Option<Box<http::HeaderMap>>,
        #[pin]
        rest: Option<Incoming>,
    }
}

impl ClientBody {
    /// The client's body, untouched.
    pub fn streaming(body: Incoming) -> Self {
        ClientBody {
            read_ahead: None,
            trailers: None,
            rest: Some(body),
        }
    }
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> Self {
        ClientBody::streaming(body)
    }
}

/// A body kept in memory (sent again on an upstream login's retry after a refresh).
impl From<Bytes> for ClientBody {
    fn from(bytes: Bytes) -> Self {
        ClientBody {
            read_ahead: (!bytes.is_empty()).then_some(bytes),
            trailers: None,
            rest: None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        if let Some(bytes) = this.read_ahead.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        if let Some(rest) = this.rest.as_mut().as_pin_mut() {
            return rest.poll_frame(cx);
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(*t))))
    }

    fn is_end_stream(&self) -> bool {
        self.read_ahead.is_none() && self.trailers.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let ahead = self.read_ahead.as_ref().map_or(0, |b| b.len() as u64);
        match &self.rest {
            Some(rest) => {
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower() + ahead);
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper + ahead);
                }
                sum
            }
            None => SizeHint::with_exact(ahead),
        }
    }
}

/// Why the body could not be read ahead.
#[derive(Debug)]
pub enum ReadAheadError {
    /// No bytes arrived for this long.
    Idle(Duration),
    /// The client's body broke off or was malformed.
    Client(hyper::Error),
}

/// Reads up to `cap` bytes of `body` (each read bounded by `idle`): the whole body when it ends
/// within the cap, else the bytes read so far (`complete: false`), with the rest left streaming
/// in the returned [`ClientBody`].
pub async fn read_prefix(
    body: Incoming,
    cap: usize,
    idle: Duration,
) -> Result<(BufferedBody, ClientBody), ReadAheadError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut trailers = None;
    let mut ended = body.is_end_stream();
    while !ended && buf.len() <= cap {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ReadAheadError::Idle(idle)),
            Ok(None) => ended = true,
            Ok(Some(Err(e))) => return Err(ReadAheadError::Client(e)),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => buf.extend_from_slice(&data),
                Err(frame) => {
                    trailers = frame.into_trailers().ok().map(Box::new);
                    ended = true;
                }
            },
        }
        ended = ended || body.is_end_stream();
    }
    let bytes = buf.freeze();
    let buffered = BufferedBody {
        bytes: bytes.clone(),
        complete: ended && bytes.len() <= cap,
    };
    let body = ClientBody {
        read_ahead: (!bytes.is_empty()).then_some(bytes),
        trailers,
        rest: (!ended).then_some(body),
    };
    Ok((buffered, body))
}
