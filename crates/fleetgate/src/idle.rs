//! Bounds on waits that make no progress: the next bytes of a body, a socket write that the peer
//! does not take. One lazily armed deadline per body or connection, not a timer per read.
//!
//! The hot path pays nothing for it: a read or write that is ready at once never touches the
//! clock or the timer. Only when the guarded operation would wait is the wait's start read
//! from the clock and a timer armed (the first time, boxed: once per body or connection that
//! ever waits). Progress only clears the wait; the timer is re-armed when it fires early (the
//! wait it was set for ended and a later one started), so it moves at most once per bound.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The deadline of one kind of wait. One word until a wait first happens: it sits in bodies
/// and futures that are moved on every request, so its size counts. The bound itself is
/// passed in by the owner, which has it at hand.
#[derive(Default)]
pub struct IdleBound {
    armed: Option<Pin<Box<Armed>>>,
}

pin_project_lite::pin_project! {
    struct Armed {
        #[pin]
        sleep: Sleep,
        // When the current wait began; `None` while not waiting.
        waiting_since: Option<Instant>,
    }
}

impl IdleBound {
    pub const fn new() -> Self {
        IdleBound { armed: None }
    }

    /// The guarded operation made progress: any wait is over.
    #[inline]
    pub fn progressed(&mut self) {
        if let Some(armed) = &mut self.armed {
            *armed.as_mut().project().waiting_since = None;
        }
    }

    /// The guarded operation would wait (it returned `Pending` and registered `cx`).
    /// `Ready(())` once the wait has lasted `bound`; otherwise `cx` is woken when it would.
    pub fn poll_expired(&mut self, bound: Duration, cx: &mut Context<'_>) -> Poll<()> {
        let armed = self.armed.get_or_insert_with(|| {
            let now = Instant::now();
            Box::pin(Armed {
                sleep: tokio::time::sleep_until(now + bound),
                waiting_since: Some(now),
            })
        });
        let armed = armed.as_mut().project();
        let since = *armed.waiting_since.get_or_insert_with(Instant::now);
        let due = since + bound;
        let mut sleep = armed.sleep;
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if sleep.deadline() >= due {
            return Poll::Ready(());
        }
        // Armed for an earlier wait that ended: move it to this wait's deadline.
        sleep.as_mut().reset(due);
        sleep.poll(cx)
    }
}

/// A write that made no progress for the bound. Carried inside the `io::Error` (kind
/// `TimedOut`) that the stream returns.
#[derive(Debug)]
pub struct WriteStalled(pub Duration);

impl std::fmt::Display for WriteStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the peer took no bytes for {} ms", self.0.as_millis())
    }
}

impl std::error::Error for WriteStalled {}

/// Whether `e` (or an error it wraps) is a [`WriteStalled`] from a [`WriteBound`] stream.
pub fn is_write_stall(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<WriteStalled>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps: look inside it.
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            if inner.is::<WriteStalled>() {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

pin_project_lite::pin_project! {
    /// A stream whose writes fail with `TimedOut` once one has waited for the bound without the
    /// peer taking a byte (a client that does not read, an upstream that stopped reading).
    /// Reads pass through untouched.
    pub struct WriteBound<T> {
        #[pin]
        inner: T,
        bound: Duration,
        idle: IdleBound,
    }
}

impl<T> WriteBound<T> {
    pub fn new(inner: T, bound: Duration) -> Self {
        WriteBound {
            inner,
            bound,
            idle: IdleBound::new(),
        }
    }

    /// Bounds a `Pending` write; `wrote` says whether a ready result moved bytes (a flush or
    /// shutdown that is ready at once proves nothing about the peer).
    fn check<R>(
        idle: &mut IdleBound,
        bound: Duration,
        polled: Poll<std::io::Result<R>>,
        wrote: bool,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<R>> {
        match polled {
            Poll::Pending => match idle.poll_expired(bound, cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    WriteStalled(bound),
                ))),
            },
            ready => {
                if wrote {
                    idle.progressed();
                }
                ready
            }
        }
    }
}

impl<T: AsyncRead> AsyncRead for WriteBound<T> {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for WriteBound<T> {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, buf);
        Self::check(this.idle, *this.bound, polled, true, cx)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        Self::check(this.idle, *this.bound, polled, true, cx)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_flush(cx);
        Self::check(this.idle, *this.bound, polled, false, cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_shutdown(cx);
        Self::check(this.idle, *this.bound, polled, false, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_wait_expires_after_the_bound_and_progress_restarts_it() {
        let bound = Duration::from_secs(2);
        let mut idle = IdleBound::new();
        let start = Instant::now();
        // A wait of 1.5 s, then progress: not expired.
        let first = tokio::time::timeout(
            Duration::from_millis(1500),
            std::future::poll_fn(|cx| idle.poll_expired(bound, cx)),
        )
        .await;
        assert!(first.is_err(), "expired before its bound");
        idle.progressed();
        // A new wait runs its whole bound from its own start, although the timer was armed
        // for the first one.
        std::future::poll_fn(|cx| idle.poll_expired(bound, cx)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(3500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_read_fails_the_write() {
        let (a, _b) = tokio::io::duplex(16);
        let mut w = WriteBound::new(a, Duration::from_secs(1));
        w.write_all(&[0u8; 16]).await.expect("fits the buffer");
        let err = w.write_all(&[0u8; 1]).await.expect_err("nobody reads");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(is_write_stall(&err));
    }
}
