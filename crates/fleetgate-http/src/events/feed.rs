//! One subscriber's reader of the fleet's events.
//!
//! Each stream entry holds one published batch: events' JSON, one per line. So an event's id is
//! its entry's stream id and its place in the entry: `MS-SEQ.INDEX` (index from 0). An event
//! from the local bus (the store was down) has `FLEET~local~LOCAL`: the subscriber's position in
//! the fleet stream, then the local event's id, so that a reconnect with that `Last-Event-ID`
//! continues in both. Resuming after `MS-SEQ.INDEX` reads that entry again and skips its
//! events up to INDEX; a bare `MS-SEQ` resumes after the whole entry.

use bytes::Bytes;
use fleetgate_store::{MemoryStore, StoreDriver, StoreKey, StreamFrom, StreamId};
use std::time::Duration;

/// Events read per call, at most.
const PAGE: usize = 256;
const LOCAL_MARK: &str = "~local~";

/// Where a subscriber stands: after every event of the entries up to `entry`, then, when
/// `index` is set, after the events of the next entry up to that index (a resume mid-entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    id: StreamId,
    /// The events of entry `id` up to this index were sent (resume inside an entry).
    index: Option<u32>,
}

impl Position {
    fn parse(text: &str) -> Option<Position> {
        let (id, index) = match text.rsplit_once('.') {
            Some((id, i)) if !i.is_empty() && i.len() <= 9 && i.bytes().all(|b| b.is_ascii_digit()) => {
                (id, Some(i.parse().ok()?))
            }
            Some(_) => return None,
            None => (text, None),
        };
        Some(Position {
            id: id.parse().ok()?,
            index,
        })
    }

    /// The cursor to read after: the entry itself when it was left part-way.
    fn read_after(&self) -> StreamId {
        match self.index {
            None => self.id,
            Some(_) => before(self.id),
        }
    }
}

/// The greatest id below `id` (a read after it starts at `id`).
fn before(id: StreamId) -> StreamId {
    match (id.ms, id.seq) {
        (_, s) if s > 0 => StreamId { ms: id.ms, seq: s - 1 },
        (0, _) => StreamId::ZERO,
        (m, _) => StreamId {
            ms: m - 1,
            seq: u64::MAX,
        },
    }
}

/// The events of one entry, after `skip` (the last index already sent), with their ids.
fn split(entry: fleetgate_store::StreamEntry, skip: Option<u32>, prefix: &str, out: &mut Vec<FeedItem>) {
    let payload = entry.payload;
    let mut index = 0u32;
    let mut start = 0;
    while start < payload.len() {
        let end = payload[start..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(payload.len(), |p| start + p);
        if end > start {
            if skip.is_none_or(|s| index > s) {
                out.push(FeedItem::Event {
                    id: format!("{prefix}{}.{index}", entry.id),
                    payload: payload.slice(start..end),
                });
            }
            index += 1;
        }
        start = end + 1;
    }
}
/// What a subscriber is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    /// One event: its id (for `Last-Event-ID`) and its JSON.
    Event { id: String, payload: Bytes },
    /// Something the subscriber should know (a restart from now, the store down or back).
    Notice(String),
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedStart {
    /// With events completed from now on.
    Now,
    /// After the event with this id (a `Last-Event-ID` as the client sent it).
    After(String),
}

/// One subscriber's position in the fleet's stream and in the local bus.
pub struct EventFeed<D> {
    store: D,
    /// The instance's local bus; `None` when the store is in-process (it is the bus).
    local: Option<MemoryStore>,
    key: StoreKey,
    /// `None` until the fleet stream's position is known (the store was down at the start).
    fleet: Option<Position>,
    local_cursor: Position,
    down: bool,
    block: Duration,
}

impl Position {
    /// How a local event's id names the fleet position (a resume there continues in both).
    fn to_text(self) -> String {
        match self.index {
            None => self.id.to_string(),
            Some(i) => format!("{}.{i}", self.id),
        }
    }
}

impl<D: StoreDriver> EventFeed<D> {
    /// Opens a feed on `key`, waiting up to `block` per read; returns it with what the
    /// subscriber should be told first.
    pub async fn open(
        store: D,
        local: Option<MemoryStore>,
        key: StoreKey,
        start: FeedStart,
        block: Duration,
    ) -> (Self, Vec<FeedItem>) {
        let mut notices = Vec::new();
        let mut local_cursor = Position {
            id: match &local {
                Some(l) => l
                    .stream_read(&key, StreamFrom::Now, 1, Duration::ZERO)
                    .await
                    .map(|r| r.cursor)
                    .unwrap_or_default(),
                None => StreamId::ZERO,
            },
            index: None,
        };
        let mut resume = None;
        if let FeedStart::After(text) = &start {
            let (fleet_text, local_text) = match text.split_once(LOCAL_MARK) {
                Some((f, l)) => (f, Some(l)),
                None => (text.as_str(), None),
            };
            if let Some(p) = local_text.and_then(Position::parse) {
                local_cursor = p;
            }
            match Position::parse(fleet_text) {
                Some(p) => resume = Some(p),
                None if local_text.is_some() && fleet_text == "now" => {}
                None => notices.push(FeedItem::Notice(format!(
                    "Last-Event-ID {:?} is not an event id; starting from now",
                    text.chars().take(64).collect::<String>()
                ))),
            }
        }
        let mut feed = EventFeed {
            store,
            local,
            key,
            fleet: None,
            local_cursor,
            down: false,
            block,
        };
        match resume {
            Some(p) => match feed
                .store
                .stream_read(&feed.key, StreamFrom::Resume(p.id), 1, Duration::ZERO)
                .await
            {
                Ok(r) if r.gap => {
                    notices.push(FeedItem::Notice(
                        "events after Last-Event-ID are no longer kept; starting from now".into(),
                    ));
                    feed.fleet = feed.position().await;
                }
                // Read again from `p` by `next` (this read only checked for a gap).
                Ok(_) => feed.fleet = Some(p),
                Err(_) => {
                    feed.fleet = Some(p);
                    feed.went_down(&mut notices);
                }
            },
            None => {
                feed.fleet = feed.position().await;
                if feed.fleet.is_none() {
                    feed.went_down(&mut notices);
                }
            }
        }
        (feed, notices)
    }

    async fn position(&self) -> Option<Position> {
        self.store
            .stream_read(&self.key, StreamFrom::Now, 1, Duration::ZERO)
            .await
            .ok()
            .map(|r| Position {
                id: r.cursor,
                index: None,
            })
    }

    fn went_down(&mut self, out: &mut Vec<FeedItem>) {
        if !self.down {
            self.down = true;
            out.push(FeedItem::Notice(
                "store down: events of this instance only (marked local) until it answers".into(),
            ));
        }
    }

    async fn local_events(&mut self, block: Duration) -> Vec<FeedItem> {
        let Some(local) = &self.local else {
            return Vec::new();
        };
        let Ok(r) = local
            .stream_read(
                &self.key,
                StreamFrom::After(self.local_cursor.read_after()),
                PAGE,
                block,
            )
            .await
        else {
            return Vec::new();
        };
        let skip = self.local_cursor;
        if r.entries.is_empty() {
            // Keep a part-way position as it is (the cursor would name the entry before).
            return Vec::new();
        }
        self.local_cursor = Position {
            id: r.cursor,
            index: None,
        };
        let fleet = self.fleet.map_or_else(|| "now".to_string(), |f| f.to_text());
        let prefix = format!("{fleet}{LOCAL_MARK}");
        let mut out = Vec::new();
        for e in r.entries {
            let skip = (e.id == skip.id).then_some(skip.index).flatten();
            split(e, skip, &prefix, &mut out);
        }
        out
    }

    /// The next items: waits up to about the feed's block for some; may return none.
    pub async fn next(&mut self) -> Vec<FeedItem> {
        let mut out = self.local_events(Duration::ZERO).await;
        if !out.is_empty() {
            return out;
        }
        if self.fleet.is_none() {
            self.fleet = self.position().await;
        }
        if let Some(cursor) = self.fleet {
            match self
                .store
                .stream_read(&self.key, StreamFrom::After(cursor.read_after()), PAGE, self.block)
                .await
            {
                Ok(r) => {
                    if self.down {
                        self.down = false;
                        out.push(FeedItem::Notice("store answers again: fleet events resume".into()));
                    }
                    if !r.entries.is_empty() {
                        self.fleet = Some(Position {
                            id: r.cursor,
                            index: None,
                        });
                    }
                    for e in r.entries {
                        let skip = (e.id == cursor.id).then_some(cursor.index).flatten();
                        split(e, skip, "", &mut out);
                    }
                    return out;
                }
                Err(_) => self.went_down(&mut out),
            }
        } else {
            self.went_down(&mut out);
        }
        if self.local.is_none() {
            // The in-process store does not fail; only pace a retry.
            tokio::time::sleep(self.block).await;
            return out;
        }
        let block = self.block;
        out.extend(self.local_events(block).await);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetgate_store::{Keyspace, StreamEntry};

    fn ids(items: &[FeedItem]) -> Vec<String> {
        items
            .iter()
            .filter_map(|i| match i {
                FeedItem::Event { id, .. } => Some(id.clone()),
                FeedItem::Notice(_) => None,
            })
            .collect()
    }

    #[test]
    fn positions_parse_with_or_without_an_index() {
        let p = Position::parse("17-3.5").unwrap();
        assert_eq!((p.id, p.index), (StreamId { ms: 17, seq: 3 }, Some(5)));
        assert_eq!(p.read_after(), StreamId { ms: 17, seq: 2 });
        let whole = Position::parse("17-3").unwrap();
        assert_eq!((whole.index, whole.read_after()), (None, StreamId { ms: 17, seq: 3 }));
        assert_eq!(before(StreamId { ms: 17, seq: 0 }), StreamId { ms: 16, seq: u64::MAX });
        assert_eq!(before(StreamId::ZERO), StreamId::ZERO);
        for bad in ["", "17-3.", "17-3.x", "17-3.-1", "17.3", "17-3.1234567890", "x-1.2"] {
            assert!(Position::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_entry_splits_into_its_events_after_the_skipped_ones() {
        let entry = StreamEntry {
            id: StreamId { ms: 9, seq: 1 },
            payload: Bytes::from_static(b"{\"a\":0}\n{\"a\":1}\n\n{\"a\":2}\n"),
        };
        let mut out = Vec::new();
        split(entry.clone(), None, "", &mut out);
        assert_eq!(ids(&out), ["9-1.0", "9-1.1", "9-1.2"]);
        let FeedItem::Event { payload, .. } = &out[2] else {
            panic!()
        };
        assert_eq!(payload.as_ref(), b"{\"a\":2}");
        let mut rest = Vec::new();
        split(entry, Some(1), "p~", &mut rest);
        assert_eq!(ids(&rest), ["p~9-1.2"]);
    }

    #[tokio::test]
    async fn a_resume_inside_an_entry_sends_only_what_followed_it() {
        let store = MemoryStore::new();
        let key = crate::events::stream_key(&Keyspace::new("t").unwrap());
        let batch = |n: std::ops::Range<u32>| Bytes::from(n.map(|i| format!("{{\"n\":{i}}}\n")).collect::<String>());
        store.stream_append(&key, &[batch(0..3)], 100).await.unwrap();
        store.stream_append(&key, &[batch(3..5)], 100).await.unwrap();
        let first = store
            .stream_read(&key, StreamFrom::After(StreamId::ZERO), 10, Duration::ZERO)
            .await
            .unwrap()
            .entries[0]
            .id;
        let start = FeedStart::After(format!("{first}.1"));
        let (mut feed, notices) = EventFeed::open(store.clone(), None, key.clone(), start, Duration::ZERO).await;
        assert!(notices.is_empty(), "{notices:?}");
        let got = feed.next().await;
        let payloads: Vec<_> = got
            .iter()
            .filter_map(|i| match i {
                FeedItem::Event { payload, .. } => Some(String::from_utf8_lossy(payload).into_owned()),
                FeedItem::Notice(_) => None,
            })
            .collect();
        assert_eq!(payloads, ["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]);
        assert!(ids(&feed.next().await).is_empty());
        // Resumed after the last event of the last entry: empty reads keep that part-way
        // position, so the entry is never sent again.
        let entries = store
            .stream_read(&key, StreamFrom::After(StreamId::ZERO), 10, Duration::ZERO)
            .await
            .unwrap()
            .entries;
        let start = FeedStart::After(format!("{}.1", entries[1].id));
        let (mut feed, _) = EventFeed::open(store.clone(), None, key.clone(), start, Duration::ZERO).await;
        assert!(ids(&feed.next().await).is_empty());
        assert!(ids(&feed.next().await).is_empty());
        store.stream_append(&key, &[batch(5..6)], 100).await.unwrap();
        assert_eq!(ids(&feed.next().await).len(), 1, "only the new event");
    }
}
