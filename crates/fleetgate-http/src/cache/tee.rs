//! The bounded tee: a response body passed on to the client frame by frame while a copy is
//! kept, up to a cap, for the store. Only a body that ends cleanly within the cap is handed
//! on ([`Fill`]): one that fails, is cut off (the upstream died mid-body, the client left) or
//! grows past the cap is never stored, so nothing half-written is ever served.

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

type Finished = Box<dyn FnOnce(Bytes) + Send>;

/// What to do with a whole body: set on the request context by the cache's response phase,
/// applied by the server where the response body is wrapped.
pub struct Fill {
    cap: usize,
    finished: Option<Finished>,
    /// Run instead when the body is not handed on (failed, cut off, over the cap).
    abandoned: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Fill {
    fn drop(&mut self) {
        if let Some(abandoned) = self.abandoned.take() {
            abandoned();
        }
    }
}

impl Fill {
    /// Calls `finished` with the body if it ends cleanly within `cap` bytes.
    pub fn new(cap: usize, finished: impl FnOnce(Bytes) + Send + 'static) -> Self {
        Fill {
            cap,
            finished: Some(Box::new(finished)),
            abandoned: None,
        }
    }

    /// Runs `abandoned` if the body is never handed on.
    pub fn on_abandon(mut self, abandoned: impl FnOnce() + Send + 'static) -> Self {
        self.abandoned = Some(Box::new(abandoned));
        self
    }

    fn finish(mut self, body: Bytes) {
        self.abandoned = None;
        if let Some(finished) = self.finished.take() {
            finished(body);
        }
    }

    /// `body`, teed. A body that has already ended (a 204, an empty body) is handed on at
    /// once: it will never be polled.
    pub fn tee<B: Body>(self, body: B) -> Tee<B> {
        if body.is_end_stream() {
            self.finish(Bytes::new());
            return Tee {
                inner: body,
                copy: None,
            };
        }
        Tee {
            inner: body,
            copy: Some((BytesMut::new(), self)),
        }
    }
}

impl<B: Body> Tee<B> {
    /// `body`, not teed (yet): see [`Tee::fill`].
    pub fn passthrough(body: B) -> Self {
        Tee {
            inner: body,
            copy: None,
        }
    }

    /// The wrapped body, before it is polled (another tee inside arms itself there).
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Tees the rest of the body (before it is polled: the whole of it) into `fill`.
    pub fn fill(&mut self, fill: Fill) {
        if self.inner.is_end_stream() {
            fill.finish(Bytes::new());
        } else {
            self.copy = Some((BytesMut::new(), fill));
        }
    }
}

pin_project_lite::pin_project! {
    /// A body whose data is copied until it ends (see the module documentation).
    pub struct Tee<B> {
        #[pin]
        inner: B,
        copy: Option<(BytesMut, Fill)>,
    }
}

impl<B: Body<Data = Bytes>> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let mut this = this;
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((buf, fill))) = (frame.data_ref(), this.copy.as_mut()) {
                    if buf.len() + data.len() > fill.cap {
                        *this.copy = None;
                    } else {
                        buf.extend_from_slice(data);
                    }
                }
                // hyper stops polling a body that says it has ended (a known length reached).
                if this.inner.is_end_stream() {
                    if let Some((buf, fill)) = this.copy.take() {
                        fill.finish(buf.freeze());
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => *this.copy = None,
            Poll::Ready(None) => {
                if let Some((buf, fill)) = this.copy.take() {
                    fill.finish(buf.freeze());
                }
            }
            Poll::Pending => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;

    async fn run(frames: Frames, cap: usize) -> Option<Bytes> {
        let got = Arc::new(Mutex::new(None));
        let g = got.clone();
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let tee = Fill::new(cap, move |b| *g.lock().unwrap() = Some(b)).tee(body);
        let _ = tee.collect().await;
        let out = got.lock().unwrap().take();
        out
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, std::io::Error> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test]
    async fn a_whole_body_within_the_cap_is_kept() {
        assert_eq!(
            run(vec![data("ab"), data("cd")], 4).await.as_deref(),
            Some(&b"abcd"[..])
        );
    }

    #[tokio::test]
    async fn over_the_cap_or_failed_is_not() {
        assert_eq!(run(vec![data("ab"), data("cde")], 4).await, None);
        let broken = vec![data("ab"), Err(std::io::Error::other("upstream died"))];
        assert_eq!(run(broken, 100).await, None);
    }
}
