//! An HTTP/1.1 connection to an upstream target, driven by the task that uses it.
//!
//! hyper splits a client connection in two: the `SendRequest` handle and the connection future
//! that does the reading and writing. The usual way spawns the future as a task of its own;
//! every request then crosses between two tasks several times (the request handed over, the
//! response head handed back, the body taken), and each crossing wakes and polls the other
//! task. Measured under callgrind, the spawned task was polled three times per proxied
//! request. Here the request's own task polls the connection future: while it waits for the
//! handle to be ready, for the response head, and while the response body is read
//! ([`Driven::poll_with`]). The upstream's socket then wakes that task directly.
//!
//! Every part of hyper's connection registers a waker: the socket, the request queue, the
//! response channel, the body channel. They are all given the connection's [`Relay`] waker
//! instead of the task's: a wake that comes while the task is inside `poll_with` (most are
//! caused by the task itself, such as taking a body chunk) only marks that the connection
//! should be polled again, which `poll_with` does before it returns. A wake that comes from
//! outside (the socket, a timer) goes on to the task. Without it, the task would wake itself
//! and be polled once more for nothing.
//!
//! Between requests, while the connection waits in its pool, nobody polls it: the relay wakes
//! the pool's sweeper instead (a target that closes idle connections is seen at once, and the
//! socket closed; see [`Relay::park`]).

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Rounds of "poll the caller's future, then the connection" within one `poll_with`, before
/// it gives up and asks to be polled again (a connection that keeps waking itself).
const ROUNDS: usize = 8;

/// The waker given to everything inside one connection.
pub(crate) struct Relay {
    /// Where a wake from outside goes: the task using the connection, or the pool's sweeper
    /// while the connection is idle.
    target: AtomicWaker,
    /// The task is inside `poll_with` (or the sweeper inside its poll): wakes only mark `woken`.
    polling: AtomicBool,
    /// A wake came since it was last cleared.
    woken: AtomicBool,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.target.wake();
        }
    }
}

impl Relay {
    /// While the connection is idle, wakes go to `sweeper`.
    pub(crate) fn park(&self, sweeper: &Waker) {
        self.target.register(sweeper);
    }
}

/// hyper's HTTP/1.1 client connection future, polled by whoever uses the connection.
pub(crate) struct Driven<F> {
    conn: Pin<Box<F>>,
    /// The connection future finished (closed, or failed): the handle reports it closed.
    ended: bool,
    relay: Arc<Relay>,
    waker: Waker,
}

impl<F: Future> Driven<F> {
    pub(crate) fn new(conn: F) -> Self {
        let relay = Arc::new(Relay {
            target: AtomicWaker::new(),
            polling: AtomicBool::new(false),
            woken: AtomicBool::new(false),
        });
        Driven {
            conn: Box::pin(conn),
            ended: false,
            waker: Waker::from(relay.clone()),
            relay,
        }
    }

    /// Whether the connection has ended (closed by either side, or failed). Its handle may
    /// not say so yet: it learns it when this is dropped.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    pub(crate) fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Polls `step` (something that waits on the connection: its handle's readiness, a
    /// response, a body) and the connection, in turns, until `step` is ready or neither can
    /// move. Both are polled with the relay's waker; `cx` is woken when something from
    /// outside moves them.
    pub(crate) fn poll_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let Driven {
            conn,
            ended,
            relay,
            waker,
        } = self;
        relay.target.register(cx.waker());
        relay.polling.store(true, Ordering::SeqCst);
        let mut inner = Context::from_waker(waker);
        let mut out = Poll::Pending;
        for _ in 0..ROUNDS {
            if let Poll::Ready(v) = step(&mut inner) {
                out = Poll::Ready(v);
                break;
            }
            relay.woken.store(false, Ordering::SeqCst);
            let was_open = !*ended;
            drive(conn, ended, &mut inner);
            // Whatever `step` waits on wakes the relay when it changes, and only the
            // connection changes it: no wake (and the connection did not just end), nothing
            // new for `step`.
            let just_ended = was_open && *ended;
            if !relay.woken.load(Ordering::SeqCst) && !just_ended {
                break;
            }
        }
        relay.polling.store(false, Ordering::SeqCst);
        if out.is_pending() && relay.woken.load(Ordering::SeqCst) {
            // A wake from outside came while polling (or the rounds ran out): poll again.
            cx.waker().wake_by_ref();
        }
        out
    }

    /// Polls the connection once with wakes held back (the caller polls it again at once, or
    /// only wants what is already there: an idle connection's close).
    pub(crate) fn settle(&mut self) {
        self.relay.polling.store(true, Ordering::SeqCst);
        let mut inner = Context::from_waker(&self.waker);
        drive(&mut self.conn, &mut self.ended, &mut inner);
        self.relay.polling.store(false, Ordering::SeqCst);
    }

    /// Runs `f` with wakes held back: for what the caller does to the connection right before
    /// polling it (handing it a request), so that the hand-over does not wake the caller.
    pub(crate) fn quietly<T>(&self, f: impl FnOnce() -> T) -> T {
        self.relay.polling.store(true, Ordering::SeqCst);
        let out = f();
        self.relay.polling.store(false, Ordering::SeqCst);
        out
    }
}

/// Polls the connection future, unless it has ended.
fn drive<F: Future>(conn: &mut Pin<Box<F>>, ended: &mut bool, cx: &mut Context<'_>) {
    if !*ended && conn.as_mut().poll(cx).is_ready() {
        *ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection stand-in: ready after `polls_left` polls, waking its waker on each poll
    /// before that (as hyper's dispatcher does when it hands over a response).
    struct SelfWaking {
        polls: Arc<AtomicUsize>,
        done_after: usize,
    }
    impl Future for SelfWaking {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.done_after {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn wakes_from_inside_poll_with_do_not_wake_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut driven = Driven::new(SelfWaking {
            polls: polls.clone(),
            done_after: 3,
        });
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        // The step is ready once the connection has been polled three times (it ended).
        let out = driven.poll_with(&mut cx, |_| {
            if polls.load(Ordering::SeqCst) >= 3 {
                Poll::Ready("done")
            } else {
                Poll::Pending
            }
        });
        assert_eq!(out, Poll::Ready("done"));
        assert_eq!(task.0.load(Ordering::SeqCst), 0, "the task was woken by its own polls");
        assert!(driven.ended);
    }

    #[test]
    fn a_wake_from_outside_reaches_the_task_and_an_idle_one_the_sweeper() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut driven = Driven::new(SelfWaking {
            polls: polls.clone(),
            done_after: usize::MAX,
        });
        let task = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        // A connection that always wakes itself: the rounds run out and the task is asked
        // to poll again.
        assert_eq!(driven.poll_with(&mut cx, |_| Poll::<()>::Pending), Poll::Pending);
        assert_eq!(polls.load(Ordering::SeqCst), ROUNDS);
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        // Outside poll_with, a wake goes on to the task.
        driven.waker.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
        // Parked: to the sweeper, not the task.
        let sweeper = Arc::new(Count(AtomicUsize::new(0)));
        driven.relay().park(&Waker::from(sweeper.clone()));
        driven.waker.wake_by_ref();
        assert_eq!(sweeper.0.load(Ordering::SeqCst), 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 2);
        // Held back while quiet.
        driven.relay().park(&Waker::from(sweeper.clone()));
        driven.quietly(|| driven.waker.wake_by_ref());
        assert_eq!(sweeper.0.load(Ordering::SeqCst), 1);
    }
}
