//! Live events: every completed request becomes one [`Event`], published fleet-wide through
//! the store so that every subscriber on every instance sees each event exactly once.
//!
//! * [`EventStage`]: the stage whose complete phase hands the event to a bounded channel
//!   ([`EventSink`]); a full channel drops the event and counts it
//!   (`fleetgate_events_dropped_total`): publishing never blocks nor slows the request path.
//! * [`run_publisher`]: the background task that drains the channel in batches into the
//!   store's stream ([`StoreDriver::stream_append`](fleetgate_store::StoreDriver::stream_append):
//!   Redis Streams, pipelined `XADD` with `MAXLEN ~`). When the store fails, the batch goes to
//!   the instance's local bus (an in-process ring) marked `"local": true`; the next batch tries
//!   the store again, so publishing resumes by itself when the store returns.
//! * [`EventFeed`]: one subscriber's reader: the fleet stream after its last id (no loss across
//!   a reconnect while the stream still holds it, no duplicate: ids only grow), and the local
//!   bus while the store is down.
//!
//! Exactly once: each event is appended once (by the instance that served the request) to one
//! stream; each subscriber reads that stream in order from its own cursor, and a reconnecting
//! subscriber names its last id (`Last-Event-ID`).

mod event;
mod feed;
mod publisher;
mod stage;

pub use event::{Event, EventView};
pub use feed::{EventFeed, FeedItem, FeedStart};
pub use publisher::{run_publisher, EventSettings};
pub use stage::{EventSink, EventStage};

/// The fleet's event stream (and the local bus's) in `keyspace`.
pub fn stream_key(keyspace: &fleetgate_store::Keyspace) -> fleetgate_store::StoreKey {
    keyspace.key(fleetgate_store::Concern::Events, "stream", b"fleet")
}

/// Events dropped because the publisher's buffer was full.
pub const EVENTS_DROPPED: &str = "fleetgate_events_dropped_total";
/// Events published, by where they went: `fleet` (the store) or `local` (the local bus).
pub const EVENTS_PUBLISHED: &str = "fleetgate_events_published_total";
/// Subscribers dropped because they did not read fast enough.
pub const SUBSCRIBERS_DROPPED: &str = "fleetgate_events_subscribers_dropped_total";
