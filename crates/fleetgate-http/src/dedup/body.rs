//! The response bodies of dedup: the leader's bounded tee (its client's body, shared chunk by
//! chunk with the followers on this instance and kept, up to the cap, for the store), and a
//! follower's body (the leader's chunks as they arrive).

use super::flight::{End, Flight, State};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a leader's call ended.
pub(crate) enum Outcome {
    /// Whole, within the cap: these chunks.
    Complete(Vec<Bytes>),
    /// Nothing worth sharing: a 5xx, a body that failed or outgrew the cap. Followers call the
    /// upstream themselves.
    Failed,
    /// The leader's client left before the end (its call was dropped): a waiter takes over.
    Gone,
}

/// What the leader does once its body is over.
pub(crate) type OnEnd = Box<dyn FnOnce(Outcome) + Send>;

pin_project_lite::pin_project! {
    /// The leader's body: passes every frame on, and tees the data into its flight.
    pub struct TeeBody<B> {
        #[pin]
        inner: B,
        flight: Arc<Flight>,
        kept: Vec<Bytes>,
        over: bool,
        on_end: Option<OnEnd>,
        // Each chunk, for the followers on other instances (a streamed answer only).
        remote: Option<tokio::sync::mpsc::UnboundedSender<Bytes>>,
    }

    impl<B> PinnedDrop for TeeBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(on_end) = this.on_end.take() {
                this.flight.end(End::Failed);
                on_end(Outcome::Gone);
            }
        }
    }
}

impl<B> TeeBody<B> {
    pub(crate) fn new(inner: B, flight: Arc<Flight>, on_end: OnEnd) -> Self {
        TeeBody {
            inner,
            flight,
            kept: Vec::new(),
            over: false,
            on_end: Some(on_end),
            remote: None,
        }
    }

    /// Also sends each chunk to `remote` (the writer of the chunks other instances read).
    pub(crate) fn with_remote(mut self, remote: tokio::sync::mpsc::UnboundedSender<Bytes>) -> Self {
        self.remote = Some(remote);
        self
    }
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !*this.over && !data.is_empty() {
                        if this.flight.push(data.clone()) {
                            this.kept.push(data.clone());
                            if let Some(remote) = this.remote.as_ref() {
                                let _ = remote.send(data.clone());
                            }
                        } else {
                            *this.remote = None;
                            // Over the cap: the followers waiting elsewhere need not wait for
                            // the end to call the upstream themselves.
                            *this.over = true;
                            this.kept.clear();
                            if let Some(on_end) = this.on_end.take() {
                                on_end(Outcome::Failed);
                            }
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    finish(this.flight, this.kept, *this.over, this.on_end);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                finish(this.flight, this.kept, *this.over, this.on_end);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(on_end) = this.on_end.take() {
                    this.flight.end(End::Failed);
                    on_end(Outcome::Failed);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish(flight: &Flight, kept: &mut Vec<Bytes>, over: bool, on_end: &mut Option<OnEnd>) {
    if let Some(on_end) = on_end.take() {
        if over {
            flight.end(End::Failed);
            on_end(Outcome::Failed);
        } else {
            flight.end(End::Complete);
            on_end(Outcome::Complete(std::mem::take(kept)));
        }
    }
}

/// Waits for the flight's next change; gives the receiver back, and whether the flight lives.
type Changed = Pin<Box<dyn std::future::Future<Output = (watch::Receiver<State>, bool)> + Send>>;

/// A follower's body: the flight's chunks from the first, as they arrive, until it ends.
pub struct FollowBody {
    state: watch::Receiver<State>,
    next: usize,
    changed: Option<Changed>,
    done: bool,
}

impl FollowBody {
    pub(crate) fn new(state: watch::Receiver<State>) -> Self {
        FollowBody {
            state,
            next: 0,
            changed: None,
            done: false,
        }
    }
}

/// The follower's stream ended because the leader's did not end whole.
#[derive(Debug, thiserror::Error)]
#[error("the deduplicated response's upstream body failed or outgrew the dedup cap")]
pub struct LeaderFailed;

impl Body for FollowBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(wait) = this.changed.as_mut() {
                match wait.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready((rx, alive)) => {
                        this.state = rx;
                        this.changed = None;
                        if !alive {
                            this.done = true;
                            return Poll::Ready(Some(Err(Box::new(LeaderFailed))));
                        }
                    }
                }
            }
            {
                let s = this.state.borrow_and_update();
                if let Some(chunk) = s.chunks.get(this.next) {
                    this.next += 1;
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                match s.end {
                    Some(End::Complete) => {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    Some(End::Failed | End::Pass) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(Box::new(LeaderFailed))));
                    }
                    None => {}
                }
            }
            let mut rx = this.state.clone();
            this.changed = Some(Box::pin(async move {
                let alive = rx.changed().await.is_ok();
                (rx, alive)
            }));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
