//! The publisher: drains the event channel in batches into the store's stream, or into the
//! local bus while the store fails.

use super::event::Event;
use super::EVENTS_PUBLISHED;
use bytes::Bytes;
use fleetgate_store::{MemoryStore, StoreDriver, StoreKey};
use tokio::sync::mpsc;

/// Where and how events are published.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// The fleet's stream (and the local bus's, under the same name).
    pub key: StoreKey,
    /// Most events in one store write.
    pub batch: usize,
    /// About how many events the stream keeps (it holds entries of whole batches: bounded at
    /// this over the mean batch size).
    pub max_len: u64,
}

/// One stream entry for a whole batch: the events' JSON, one per line (compact JSON never holds
/// a raw newline). One entry instead of one per event costs the store one `XADD` per batch, and
/// readers one entry to parse; the feed splits it again (see `feed.rs` for the ids).
fn encode(events: &[Event]) -> (Bytes, usize) {
    let mut out = Vec::with_capacity(events.len() * 320);
    let mut n = 0;
    for e in events {
        if serde_json::to_writer(&mut out, e).is_ok() {
            out.push(b'\n');
            n += 1;
        }
    }
    (Bytes::from(out), n)
}

/// Entries the stream keeps for about `max_events` events, given the batches written so far
/// (`mean` events per entry, a moving average): the stream's bound is in entries.
fn entries_for(max_events: u64, mean: f64) -> u64 {
    ((max_events as f64 / mean.max(1.0)).ceil() as u64).max(16)
}

/// How long the publisher lets a small batch gather before writing it: at a high rate, one
/// store write a millisecond instead of one every few events (fewer round trips and wakeups
/// for the store and the gateway); at a low rate, an event reaches subscribers about this much
/// later.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// Publishes every event `rx` receives until every sender is gone: a batch is what is waiting
/// (up to `settings.batch`), after a [`LINGER`] when that was less, written as one stream entry
/// in one call. A batch the store refuses goes to `local` marked `"local": true`, and the next
/// batch tries the store again.
pub async fn run_publisher<D: StoreDriver>(
    store: D,
    local: MemoryStore,
    settings: EventSettings,
    mut rx: mpsc::Receiver<Event>,
) {
    let fleet = metrics::counter!(EVENTS_PUBLISHED, "to" => "fleet");
    let local_count = metrics::counter!(EVENTS_PUBLISHED, "to" => "local");
    let mut batch = Vec::with_capacity(settings.batch);
    let mut down = false;
    // Events per entry, a moving average (the stream's bound is in entries).
    let mut mean = 1.0f64;
    loop {
        batch.clear();
        let max = settings.batch.max(1);
        if rx.recv_many(&mut batch, max).await == 0 {
            return;
        }
        if batch.len() < max {
            tokio::time::sleep(LINGER).await;
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
        }
        let (payload, n) = encode(&batch);
        if n == 0 {
            continue;
        }
        mean += (n as f64 - mean) / 16.0;
        let max_len = entries_for(settings.max_len, mean);
        match store
            .stream_append(&settings.key, std::slice::from_ref(&payload), max_len)
            .await
        {
            Ok(_) => {
                fleet.increment(n as u64);
                if down {
                    down = false;
                    tracing::info!("events: the store answers again; publishing fleet-wide");
                }
            }
            Err(e) => {
                if !down {
                    down = true;
                    tracing::warn!(error = %e, "events: the store failed; events go to this instance's local bus until it answers");
                }
                for event in &mut batch {
                    event.local = true;
                }
                let (payload, n) = encode(&batch);
                let _ = local.stream_append(&settings.key, &[payload], max_len).await;
                local_count.increment(n as u64);
            }
        }
    }
}
