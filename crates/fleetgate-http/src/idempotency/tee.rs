//! A bounded tee: passes a response body through unchanged while keeping a copy of up to `max`
//! bytes, and hands the copy on when the body has ended, before the client is given its end.
//!
//! When the last data frame arrives (the inner body then says it has ended) or the end itself,
//! the [`Finisher`] runs with the whole body and the tee waits for it before passing that frame
//! on: a client that has the whole response can count on its replay being stored. A body over
//! `max` calls the finisher with `None` (the claim is released) and waits for it too, then is
//! passed on untouched; a body that fails, or one dropped before its end (the client left),
//! calls it with `None` in a task of its own.
//! Trailers are passed on and not kept.

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// A boxed future of the finisher's store call.
pub type Finishing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Called once: `Some(body)` when the body ended within the cap, `None` otherwise.
pub type Finisher = Box<dyn FnOnce(Option<Bytes>) -> Finishing + Send>;

enum State {
    Capturing {
        finisher: Finisher,
        buf: BytesMut,
        max: usize,
    },
    /// Waiting for the finisher; then `then` is passed on (`None`: the end).
    Storing {
        call: Finishing,
        then: Option<Frame<Bytes>>,
    },
    Passing,
}

/// Runs a finisher in a task of its own (it must not hold up the client, or the drop).
pub(crate) fn spawn(call: Finishing) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(call);
        }
        Err(_) => tracing::warn!("idempotency: no runtime to finish a claim on; it expires by itself"),
    }
}

/// The tee's state, with a drop that gives up on a capture the client did not wait for.
struct Guarded(State);

impl Guarded {
    fn give_up(&mut self) {
        match std::mem::replace(&mut self.0, State::Passing) {
            State::Capturing { finisher, .. } => spawn(finisher(None)),
            State::Storing { call, .. } => spawn(call),
            State::Passing => {}
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.give_up();
    }
}

pin_project_lite::pin_project! {
    /// See the module documentation.
    pub struct Tee<B> {
        #[pin]
        inner: B,
        state: Guarded,
    }
}

impl<B> Tee<B> {
    /// Tees `inner`, keeping up to `max` bytes for `finisher`.
    pub fn new(inner: B, max: usize, finisher: Finisher) -> Self {
        Tee {
            inner,
            state: Guarded(State::Capturing {
                finisher,
                buf: BytesMut::new(),
                max,
            }),
        }
    }
}

impl<B> Tee<B> {
    /// `inner` passed through, keeping nothing (until [`Tee::arm`]).
    pub fn passthrough(inner: B) -> Self {
        Tee {
            inner,
            state: Guarded(State::Passing),
        }
    }

    /// Starts keeping up to `max` bytes for `finisher` (before the first poll); a capture
    /// already armed is given up first.
    pub fn arm(&mut self, max: usize, finisher: Finisher) {
        self.state.give_up();
        self.state.0 = State::Capturing {
            finisher,
            buf: BytesMut::new(),
            max,
        };
    }
}

impl<B: Body<Data = Bytes>> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            match &mut this.state.0 {
                State::Passing => return this.inner.poll_frame(cx),
                State::Storing { call, then } => {
                    ready!(call.as_mut().poll(cx));
                    let then = then.take();
                    this.state.0 = State::Passing;
                    return Poll::Ready(then.map(Ok));
                }
                State::Capturing { .. } => {
                    let State::Capturing { finisher, mut buf, max } =
                        std::mem::replace(&mut this.state.0, State::Passing)
                    else {
                        continue;
                    };
                    let frame = match this.inner.as_mut().poll_frame(cx) {
                        Poll::Pending => {
                            this.state.0 = State::Capturing { finisher, buf, max };
                            return Poll::Pending;
                        }
                        Poll::Ready(None) => None,
                        Poll::Ready(Some(Err(e))) => {
                            spawn(finisher(None));
                            return Poll::Ready(Some(Err(e)));
                        }
                        Poll::Ready(Some(Ok(frame))) => Some(frame),
                    };
                    if let Some(data) = frame.as_ref().and_then(Frame::data_ref) {
                        if buf.len() + data.len() > max {
                            // Given up before the client has the frame: a retry it sends next
                            // finds the claim released.
                            this.state.0 = State::Storing {
                                call: finisher(None),
                                then: frame,
                            };
                            continue;
                        }
                        buf.extend_from_slice(data);
                    }
                    if frame.is_some() && !this.inner.is_end_stream() {
                        this.state.0 = State::Capturing { finisher, buf, max };
                        return Poll::Ready(frame.map(Ok));
                    }
                    this.state.0 = State::Storing {
                        call: finisher(Some(buf.freeze())),
                        then: frame,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state.0, State::Passing) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use parking_lot::Mutex;
    use std::sync::Arc;

    fn recorder() -> (Finisher, Arc<Mutex<Vec<Option<Bytes>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let finisher: Finisher = Box::new(move |body| {
            Box::pin(async move {
                s.lock().push(body);
            })
        });
        (finisher, seen)
    }

    #[tokio::test]
    async fn a_body_within_the_cap_is_kept_before_its_end_is_passed_on() {
        let (finisher, seen) = recorder();
        let tee = Tee::new(Full::new(Bytes::from_static(b"hello")), 5, finisher);
        let out = tee.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello");
        assert_eq!(*seen.lock(), vec![Some(Bytes::from_static(b"hello"))]);

        let chunks = futures_util::stream::iter(
            [&b"ab"[..], b"cd"].map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c)))),
        );
        let (finisher, seen) = recorder();
        let out = Tee::new(StreamBody::new(chunks), 16, finisher)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&out[..], b"abcd");
        assert_eq!(*seen.lock(), vec![Some(Bytes::from_static(b"abcd"))]);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_or_dropped_is_passed_on_and_given_up() {
        let (finisher, seen) = recorder();
        let out = Tee::new(Full::new(Bytes::from_static(b"toolong")), 3, finisher)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&out[..], b"toolong", "passed on whole");
        assert_eq!(*seen.lock(), vec![None], "given up before the body was passed on");

        let (finisher, seen) = recorder();
        drop(Tee::new(Full::new(Bytes::from_static(b"x")), 3, finisher));
        tokio::task::yield_now().await;
        assert_eq!(*seen.lock(), vec![None], "the client left");
    }
}
