//! Response bodies: small JSON/text bodies, and streamed upstream bodies that can carry a
//! concurrency permit, released when the body ends or the client goes away (dropped).

use crate::policy::PermitGuard;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON error response: `{"error": kind, "message": ..., extra...}`.
pub fn json_error(
    status: StatusCode,
    kind: &str,
    message: &str,
    extra: &[(&str, serde_json::Value)],
) -> Response<GatewayBody> {
    json_error_as(status, kind, message, extra, full)
}

/// [`json_error`] with any body type (`make` turns the JSON text into the body).
pub fn json_error_as<B>(
    status: StatusCode,
    kind: &str,
    message: &str,
    extra: &[(&str, serde_json::Value)],
    make: impl FnOnce(String) -> B,
) -> Response<B> {
    let mut obj = serde_json::Map::new();
    obj.insert("error".into(), kind.into());
    obj.insert("message".into(), message.into());
    for (k, v) in extra {
        obj.insert((*k).into(), v.clone());
    }
    let mut text = serde_json::Value::Object(obj).to_string();
    text.push('\n');
    let mut resp = Response::new(make(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pin_project_lite::pin_project! {
    /// A body that holds permits until it is finished or dropped.
    pub struct Guarded<B> {
        #[pin]
        inner: B,
        guards: Vec<PermitGuard>,
    }
}

impl<B> Guarded<B> {
    pub fn new(inner: B, guards: Vec<PermitGuard>) -> Self {
        Guarded { inner, guards }
    }
}

impl<B: Body> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            // Finished: give the permits back now rather than when hyper drops the body.
            this.guards.clear();
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
