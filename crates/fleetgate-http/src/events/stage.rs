//! The event stage: its complete phase turns the request's [`Completion`] into an [`Event`]
//! and hands it to the publisher's bounded channel without waiting.

use super::event::Event;
use super::EVENTS_DROPPED;
use crate::context::{Completion, RequestCtx};
use crate::stage::{Flow, Stage};
use crate::store_ctx::StageStore;
use http::request::Parts;
use metrics::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// The sending side of the publisher's channel, shared by every route's stage.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    instance: Arc<str>,
    seq: Arc<AtomicU64>,
    dropped: Counter,
}

impl EventSink {
    /// A sink of at most `buffer` waiting events, and the receiver for [`super::run_publisher`].
    pub fn new(instance: &str, buffer: usize) -> (EventSink, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let sink = EventSink {
            tx,
            instance: instance.into(),
            seq: Arc::new(AtomicU64::new(0)),
            dropped: metrics::counter!(EVENTS_DROPPED),
        };
        (sink, rx)
    }

    /// Hands `event` over, or drops it (counted) when the buffer is full or the publisher gone.
    pub fn send(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.dropped.increment(1);
        }
    }

    pub fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    fn next_id(&self) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.instance)
    }
}

/// The stage of one route: publishes an event for each of its completed requests.
pub struct EventStage {
    sink: EventSink,
    route: Arc<str>,
}

impl EventStage {
    pub fn for_route(sink: &EventSink, route: &str) -> Self {
        EventStage {
            sink: sink.clone(),
            route: route.into(),
        }
    }

    /// The event for `done` (without sending it).
    pub fn event(&self, done: &Completion) -> Event {
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let duration_ms = done.started.map_or(0.0, |s| {
            let us = s.elapsed().as_micros() as f64;
            (us / 10.0).round() / 100.0
        });
        Event {
            id: self.sink.next_id(),
            time_ms,
            instance: self.sink.instance.clone(),
            route: self.route.clone(),
            method: done.method.as_str().to_string(),
            path: done.path.clone(),
            status: done.status,
            duration_ms,
            upstream: done.upstream.clone(),
            limit: if done.answered_by_stage && done.status == 429 {
                "refused"
            } else {
                "passed"
            },
            bytes: done.bytes,
            complete: done.body_finished,
            local: false,
        }
    }
}

impl<D: StageStore> Stage<D> for EventStage {
    const COMPLETES: bool = true;

    async fn request(&self, cx: &mut RequestCtx<'_, D>, req: &mut Parts) -> Flow {
        Stage::<D>::request_now(self, cx, req).unwrap_or(Flow::Continue)
    }

    fn request_now(&self, cx: &mut RequestCtx<'_, D>, _req: &mut Parts) -> Option<Flow> {
        if cx.started.is_none() {
            cx.started = Some(std::time::Instant::now());
        }
        Some(Flow::Continue)
    }

    fn response_now<B: Send>(&self, _cx: &mut RequestCtx<'_, D>, _resp: &mut http::Response<B>) -> bool {
        true
    }

    fn complete(&self, done: &Completion) {
        self.sink.send(self.event(done));
    }
}
