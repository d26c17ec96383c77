//! Response bodies that finish a request: they hold its guards (permits) and run the
//! pipeline's complete phase when the body has ended or, if it never ends, when it is dropped
//! (the client left).

use crate::context::{Completion, Guard};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

type Complete = Box<dyn FnOnce(&Completion) + Send>;

/// What is left to do once a response is over: drop the guards, then run the complete phase.
pub struct Finish {
    guards: Vec<Guard>,
    complete: Option<(Complete, Completion)>,
    /// Body bytes sent so far (counted only while a complete phase waits).
    sent: u64,
}

impl Finish {
    /// Drops `guards` when done, then calls `complete` (if any) with `completion`.
    pub fn new(guards: Vec<Guard>, complete: Option<(Complete, Completion)>) -> Self {
        Finish {
            guards,
            complete,
            sent: 0,
        }
    }

    fn run(&mut self, body_finished: bool) {
        self.guards.clear();
        if let Some((complete, mut completion)) = self.complete.take() {
            completion.body_finished = body_finished;
            completion.bytes = self.sent;
            complete(&completion);
        }
    }

    /// Whether a complete phase is waiting (so the body's bytes are worth counting).
    fn completes(&self) -> bool {
        self.complete.is_some()
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.run(false);
    }
}

pin_project_lite::pin_project! {
    /// A body that finishes its request when it ends or is dropped.
    pub struct Finishing<B> {
        #[pin]
        inner: B,
        finish: Option<Finish>,
    }
}

impl<B> Finishing<B> {
    pub fn new(inner: B, finish: Finish) -> Self {
        Finishing {
            inner,
            finish: Some(finish),
        }
    }

    /// Replaces what is done when the body is over.
    pub fn set_finish(&mut self, finish: Finish) {
        self.finish = Some(finish);
    }

    /// The wrapped body, before it is polled.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Body> Body for Finishing<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(f) = this.finish.as_mut().filter(|f| f.completes()) {
                    if let Some(data) = frame.data_ref() {
                        f.sent += bytes::Buf::remaining(data) as u64;
                    }
                }
                // A body that knows it has ended is not polled again (hyper stops at
                // `is_end_stream`): it finished whole with this frame.
                if this.inner.is_end_stream() {
                    if let Some(mut f) = this.finish.take() {
                        f.run(true);
                    }
                }
            }
            // Finished: give the permits back now rather than when the server drops the body.
            Poll::Ready(None) => {
                if let Some(mut f) = this.finish.take() {
                    f.run(true);
                }
            }
            // A body that failed did not reach the client whole.
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut f) = this.finish.take() {
                    f.run(false);
                }
            }
            _ => {}
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

pin_project_lite::pin_project! {
    /// The body of a response from a stage layer: the inner service's body, or a stage's answer.
    #[project = StageBodyProj]
    pub enum StageBody<B> {
        Service { #[pin] body: Finishing<crate::cache::Tee<crate::idempotency::tee::Tee<B>>> },
        Answer { body: Option<Bytes>, finish: Option<Finish> },
    }
}

impl<B: Body<Data = Bytes>> Body for StageBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            StageBodyProj::Service { body } => body.poll_frame(cx),
            StageBodyProj::Answer { body, finish } => match body.take() {
                Some(b) if !b.is_empty() => {
                    if let Some(f) = finish.as_mut() {
                        f.sent = b.len() as u64;
                    }
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                _ => {
                    if let Some(mut f) = finish.take() {
                        f.run(true);
                    }
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            StageBody::Service { body } => body.is_end_stream(),
            // Not before the finish has run: the server then polls once more.
            StageBody::Answer { body, finish } => body.is_none() && finish.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            StageBody::Service { body } => body.size_hint(),
            StageBody::Answer { body, .. } => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
