//! One identity's flight on this instance: the response its leader is receiving (head, then
//! chunks, then how it ended), shared with every identical request that arrives meanwhile.
//! Followers on this instance read it as it grows (live fan-out); the first request of an
//! identity on this instance (its driver) is the only one that talks to the store.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// The identity of a request: sha256 over its key parts.
pub(crate) type Id = [u8; 32];

/// A response head as shared with followers.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// How a flight ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The whole response is in `chunks`.
    Complete,
    /// The body failed or outgrew the cap after its head was shared: followers that started
    /// sending it end with an error, like the leader's client would.
    Failed,
    /// Nothing to share (the leader fell through, its call failed, or it went away before a
    /// head): followers call the upstream themselves.
    Pass,
}

/// What a flight holds so far.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub head: Option<Arc<Head>>,
    pub chunks: Vec<Bytes>,
    pub size: usize,
    pub end: Option<End>,
}

/// One flight: its state, watched by its followers.
pub(crate) struct Flight {
    state: watch::Sender<State>,
    /// Most body bytes shared.
    cap: usize,
}

impl Flight {
    fn new(cap: usize) -> Self {
        Flight {
            state: watch::Sender::new(State::default()),
            cap,
        }
    }

    pub(crate) fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    pub(crate) fn head(&self) -> Option<Arc<Head>> {
        self.state.borrow().head.clone()
    }

    pub(crate) fn set_head(&self, head: Head) {
        self.state.send_modify(|s| {
            if s.end.is_none() && s.head.is_none() {
                s.head = Some(Arc::new(head));
            }
        });
    }

    /// Shares one chunk; false once the body outgrew the cap (the flight has then failed).
    pub(crate) fn push(&self, chunk: Bytes) -> bool {
        let mut fits = true;
        self.state.send_modify(|s| {
            if s.end.is_some() {
                fits = false;
            } else if s.size + chunk.len() > self.cap {
                s.end = Some(End::Failed);
                s.chunks = Vec::new();
                fits = false;
            } else {
                s.size += chunk.len();
                s.chunks.push(chunk);
            }
        });
        fits
    }

    /// Ends the flight (the first end wins); `Complete` or `Failed` without a head is `Pass`.
    pub(crate) fn end(&self, end: End) {
        self.state.send_modify(|s| {
            if s.end.is_none() {
                s.end = Some(if s.head.is_none() { End::Pass } else { end });
            }
        });
    }

    /// A whole response (read from the store) as a completed flight.
    pub(crate) fn complete(&self, head: Head, body: Bytes) {
        self.set_head(head);
        if !body.is_empty() {
            self.push(body);
        }
        self.end(End::Complete);
    }

    /// The whole body, if the flight completed.
    pub(crate) fn completed_body(&self) -> Option<(Arc<Head>, Vec<Bytes>)> {
        let s = self.state.borrow();
        match (s.end, &s.head) {
            (Some(End::Complete), Some(h)) => Some((h.clone(), s.chunks.clone())),
            _ => None,
        }
    }
}

/// The flights in progress on this instance, by identity.
pub(crate) struct Flights {
    running: Mutex<HashMap<Id, Arc<Flight>>>,
    cap: usize,
}

impl Flights {
    pub(crate) fn new(cap: usize) -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// The flight of `id` and whether this caller started it (it then drives it).
    pub(crate) fn join(self: &Arc<Self>, id: Id) -> (Arc<Flight>, Option<Driving>) {
        let mut running = self.running.lock();
        if let Some(f) = running.get(&id) {
            return (f.clone(), None);
        }
        let flight = Arc::new(Flight::new(self.cap));
        running.insert(id, flight.clone());
        let driving = Driving {
            flights: self.clone(),
            id,
            flight: flight.clone(),
        };
        (flight, Some(driving))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.running.lock().len()
    }
}

/// Held by whoever drives a flight: when dropped, the flight ends (`Pass` if nothing ended it
/// yet, so followers never wait on a driver that went away) and leaves the map, so that later
/// requests ask the store.
pub(crate) struct Driving {
    flights: Arc<Flights>,
    id: Id,
    pub(crate) flight: Arc<Flight>,
}

impl Drop for Driving {
    fn drop(&mut self) {
        self.flight.end(End::Pass);
        let mut running = self.flights.running.lock();
        if running.get(&self.id).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            running.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Head {
        Head {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        }
    }

    #[test]
    fn one_driver_per_identity_and_it_leaves_the_map() {
        let flights = Arc::new(Flights::new(10));
        let (a, driving) = flights.join([1; 32]);
        let (b, second) = flights.join([1; 32]);
        assert!(driving.is_some() && second.is_none());
        assert!(Arc::ptr_eq(&a, &b));
        drop(driving);
        assert_eq!(flights.len(), 0);
        assert_eq!(
            a.watch().borrow().end,
            Some(End::Pass),
            "followers of a gone driver fall through"
        );
    }

    #[test]
    fn chunks_are_shared_up_to_the_cap() {
        let flights = Arc::new(Flights::new(10));
        let (f, _d) = flights.join([2; 32]);
        f.set_head(head());
        assert!(f.push(Bytes::from_static(b"12345")));
        assert!(f.push(Bytes::from_static(b"12345")));
        assert!(!f.push(Bytes::from_static(b"1")), "over the cap");
        assert_eq!(f.watch().borrow().end, Some(End::Failed));
        assert!(f.completed_body().is_none());
    }

    #[test]
    fn an_end_without_a_head_is_a_pass() {
        let flights = Arc::new(Flights::new(10));
        let (f, _d) = flights.join([3; 32]);
        f.end(End::Complete);
        assert_eq!(f.watch().borrow().end, Some(End::Pass));
    }
}
