//! `GET /events` on the admin listener: Server-Sent Events, one `data:` JSON object per
//! completed request anywhere in the fleet, `id:` its stream id.
//!
//! * `Last-Event-ID` (header, as `EventSource` sends it on reconnect, or `?last_event_id=`)
//!   resumes after that event; one that is not an id, or older than the stream keeps, starts
//!   from now, and an `event: notice` says so.
//! * Filters: `?route=NAME`, `?status=2xx` (a class, `1xx` to `5xx`) or `?status=404`,
//!   `?instance=ID`; several may be combined.
//! * Each subscriber has a bounded queue ([`QUEUE`] messages): one that does not read is
//!   dropped when it fills, and counted (`fleetgate_events_subscribers_dropped_total`).
//! * What one read of the feed gave is encoded into one chunk of the response (every event's
//!   `id:` and `data:` lines), not one chunk per event: at tens of thousands of events a second
//!   the subscriber costs a few writes a millisecond.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use fleetgate_http::events::{EventFeed, EventView, FeedItem, FeedStart, SUBSCRIBERS_DROPPED};
use fleetgate_store::{MemoryStore, Store, StoreKey};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Messages queued for one subscriber, at most.
pub const QUEUE: usize = 1024;
/// A comment line this long after the last thing sent keeps idle connections open through
/// proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Longest a read waits for new events before looking again (and noticing a gone client).
const BLOCK: Duration = Duration::from_millis(1000);

/// What `/events` reads.
#[derive(Clone)]
pub struct EventsSource {
    pub store: Store,
    /// The instance's local bus (`None` when the store is in-process: it is the bus).
    pub local: Option<MemoryStore>,
    pub key: StoreKey,
}

/// Which events a subscriber wants.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    route: Option<String>,
    instance: Option<String>,
    /// `(low, high)` inclusive.
    status: Option<(u16, u16)>,
}

impl Filter {
    /// Reads `route`, `status` and `instance` from a query string.
    pub fn parse(query: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "route" => f.route = Some(v.into_owned()),
                "instance" => f.instance = Some(v.into_owned()),
                "status" => {
                    let s = v.trim().to_ascii_lowercase();
                    let range = match s.as_bytes() {
                        [c @ b'1'..=b'5', b'x', b'x'] => {
                            let low = u16::from(c - b'0') * 100;
                            Some((low, low + 99))
                        }
                        _ => s
                            .parse::<u16>()
                            .ok()
                            .filter(|n| (100..=599).contains(n))
                            .map(|n| (n, n)),
                    };
                    f.status = Some(range.ok_or_else(|| {
                        format!(
                            "status filter {:?} is not accepted; accepted: a class 1xx to 5xx, or a status 100 to 599",
                            v.chars().take(16).collect::<String>()
                        )
                    })?);
                }
                "last_event_id" | "token" => {}
                other => {
                    return Err(format!(
                        "unknown filter {:?}; accepted: route, status, instance, last_event_id",
                        other.chars().take(32).collect::<String>()
                    ))
                }
            }
        }
        Ok(f)
    }

    pub fn admits(&self, payload: &[u8]) -> bool {
        if *self == Filter::default() {
            return true;
        }
        let Ok(e) = serde_json::from_slice::<EventView>(payload) else {
            return false;
        };
        self.route.as_ref().is_none_or(|r| *r == e.route)
            && self.instance.as_ref().is_none_or(|i| *i == e.instance)
            && self.status.is_none_or(|(lo, hi)| (lo..=hi).contains(&e.status))
    }
}

pub async fn events(State(source): State<Option<EventsSource>>, uri: Uri, headers: HeaderMap) -> Response {
    let Some(source) = source else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                serde_json::json!({"error": "events_off", "message": "live events are off (events.enabled: false)"}),
            ),
        )
            .into_response();
    };
    let query = uri.query().unwrap_or("");
    let filter = match Filter::parse(query) {
        Ok(f) => f,
        Err(message) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({"error": "bad_filter", "message": message})),
            )
                .into_response()
        }
    };
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "last_event_id")
                .map(|(_, v)| v.into_owned())
        })
        .filter(|s| !s.is_empty());
    let start = last_id.map_or(FeedStart::Now, FeedStart::After);
    // The position is taken before the response starts: a client that sees the stream open
    // misses nothing completed after that.
    let (feed, first) = EventFeed::open(source.store, source.local, source.key, start, BLOCK).await;
    let queued = Arc::new(AtomicUsize::new(0));
    // Unbounded in chunks, bounded in messages by `queued` (the sender checks it).
    let (tx, rx) = mpsc::unbounded_channel::<(Bytes, usize)>();
    tokio::spawn(feed_subscriber(feed, first, filter, tx, queued.clone()));
    let stream = futures_util::stream::unfold((rx, queued), |(mut rx, queued)| async move {
        let (chunk, messages) = rx.recv().await?;
        queued.fetch_sub(messages, Ordering::Relaxed);
        Some((Ok::<_, Infallible>(chunk), (rx, queued)))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Appends one SSE message: an optional `event:` name and `id:`, then `data:` lines (one per
/// line of `data`, so a payload can never end the message early or forge fields).
fn encode(out: &mut BytesMut, event: Option<&str>, id: Option<&str>, data: &[u8]) {
    if let Some(name) = event {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split(|b| *b == b'\n' || *b == b'\r') {
        out.put_slice(b"data: ");
        out.put_slice(line);
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// Encodes what one read gave into one chunk (events the filter admits, and notices), and
/// how many messages it holds.
fn encode_items(items: Vec<FeedItem>, filter: &Filter) -> (BytesMut, usize) {
    let mut out = BytesMut::new();
    let mut messages = 0;
    for item in items {
        match item {
            FeedItem::Event { id, payload } => {
                if filter.admits(&payload) {
                    out.reserve(payload.len() + id.len() + 16);
                    encode(&mut out, None, Some(&id), &payload);
                    messages += 1;
                }
            }
            FeedItem::Notice(text) => {
                encode(&mut out, Some("notice"), None, text.as_bytes());
                messages += 1;
            }
        }
    }
    (out, messages)
}

/// Reads the feed into the subscriber's queue until it goes away or falls [`QUEUE`] messages
/// behind.
async fn feed_subscriber(
    mut feed: EventFeed<Store>,
    first: Vec<FeedItem>,
    filter: Filter,
    tx: mpsc::UnboundedSender<(Bytes, usize)>,
    queued: Arc<AtomicUsize>,
) {
    let mut items = first;
    let mut last_sent = Instant::now();
    loop {
        let (mut chunk, messages) = encode_items(std::mem::take(&mut items), &filter);
        if chunk.is_empty() && last_sent.elapsed() >= KEEP_ALIVE {
            chunk.put_slice(b":\n\n");
        }
        if !chunk.is_empty() {
            if queued.fetch_add(messages, Ordering::Relaxed) + messages > QUEUE {
                metrics::counter!(SUBSCRIBERS_DROPPED).increment(1);
                tracing::info!(queued = QUEUE, "events: a subscriber that does not read was dropped");
                return;
            }
            if tx.send((chunk.freeze(), messages)).is_err() {
                return;
            }
            last_sent = Instant::now();
        }
        if tx.is_closed() {
            return;
        }
        items = feed.next().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_refuse_precisely() {
        let f = Filter::parse("route=api&status=4xx&instance=a").unwrap();
        let ev = |route: &str, status: u16, inst: &str| {
            serde_json::to_vec(&serde_json::json!({"route": route, "status": status, "instance": inst})).unwrap()
        };
        assert!(f.admits(&ev("api", 404, "a")));
        assert!(!f.admits(&ev("api", 200, "a")));
        assert!(!f.admits(&ev("web", 404, "a")));
        assert!(!f.admits(&ev("api", 404, "b")));
        assert!(Filter::parse("status=404").unwrap().admits(&ev("x", 404, "y")));
        assert!(Filter::parse("status=6xx").unwrap_err().contains("1xx to 5xx"));
        assert!(Filter::parse("status=abc").is_err());
        assert!(Filter::parse("colour=red").unwrap_err().contains("unknown filter"));
        assert!(Filter::parse("").unwrap().admits(b"not json, no filter"));
    }

    #[test]
    fn a_chunk_holds_whole_messages_and_a_payload_cannot_forge_fields() {
        let items = vec![
            FeedItem::Notice("starting from now".into()),
            FeedItem::Event {
                id: "1-0.0".into(),
                payload: Bytes::from_static(b"{\"a\":1}"),
            },
            FeedItem::Event {
                id: "1-0.1".into(),
                payload: Bytes::from_static(b"x\n\nid: forged\r\ndata: y"),
            },
        ];
        let (chunk, messages) = encode_items(items, &Filter::default());
        assert_eq!(messages, 3);
        assert_eq!(
            std::str::from_utf8(&chunk).unwrap(),
            "event: notice\ndata: starting from now\n\n\
             id: 1-0.0\ndata: {\"a\":1}\n\n\
             id: 1-0.1\ndata: x\ndata: \ndata: id: forged\ndata: \ndata: data: y\n\n"
        );
    }
}
