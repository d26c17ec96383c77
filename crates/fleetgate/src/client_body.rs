//! The request body sent upstream: the client's, streamed as it arrives, or one kept in memory
//! so that it can be sent again (an upstream login's retry after a refresh).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    #[project = ClientBodyProj]
    pub enum ClientBody {
        Streamed { #[pin] body: Incoming },
        Kept { #[pin] body: Full<Bytes> },
    }
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> Self {
        ClientBody::Streamed { body }
    }
}

impl From<Bytes> for ClientBody {
    fn from(bytes: Bytes) -> Self {
        ClientBody::Kept { body: Full::new(bytes) }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            ClientBodyProj::Streamed { body } => body.poll_frame(cx),
            ClientBodyProj::Kept { body } => body
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Streamed { body } => body.is_end_stream(),
            ClientBody::Kept { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Streamed { body } => body.size_hint(),
            ClientBody::Kept { body } => body.size_hint(),
        }
    }
}
