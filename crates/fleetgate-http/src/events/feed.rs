//! One subscriber's reader of the fleet's events.
//!
//! Ids: an event from the fleet's stream has its stream id (`MS-SEQ`); an event from the
//! local bus (the store was down) has `FLEET~local~LOCAL`: the subscriber's position in the
//! fleet stream, then the local event's id, so that a reconnect with that `Last-Event-ID`
//! continues in both.

use bytes::Bytes;
use fleetgate_store::{MemoryStore, StoreDriver, StoreKey, StreamFrom, StreamId};
use std::time::Duration;

/// Events read per call, at most.
const PAGE: usize = 256;
const LOCAL_MARK: &str = "~local~";

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
    fleet: Option<StreamId>,
    local_cursor: StreamId,
    down: bool,
    block: Duration,
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
        let mut local_cursor = match &local {
            Some(l) => l
                .stream_read(&key, StreamFrom::Now, 1, Duration::ZERO)
                .await
                .map(|r| r.cursor)
                .unwrap_or_default(),
            None => StreamId::ZERO,
        };
        let mut resume = None;
        if let FeedStart::After(text) = &start {
            let (fleet_text, local_text) = match text.split_once(LOCAL_MARK) {
                Some((f, l)) => (f, Some(l)),
                None => (text.as_str(), None),
            };
            if let Some(id) = local_text.and_then(|l| l.parse::<StreamId>().ok()) {
                local_cursor = id;
            }
            match fleet_text.parse::<StreamId>() {
                Ok(id) => resume = Some(id),
                Err(_) if local_text.is_some() && fleet_text == "now" => {}
                Err(_) => notices.push(FeedItem::Notice(format!(
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
            Some(id) => match feed
                .store
                .stream_read(&feed.key, StreamFrom::Resume(id), 1, Duration::ZERO)
                .await
            {
                Ok(r) if r.gap => {
                    notices.push(FeedItem::Notice(
                        "events after Last-Event-ID are no longer kept; starting from now".into(),
                    ));
                    feed.fleet = feed.position().await;
                }
                // Read again from `id` by `next` (this read only checked for a gap).
                Ok(_) => feed.fleet = Some(id),
                Err(_) => {
                    feed.fleet = Some(id);
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

    async fn position(&self) -> Option<StreamId> {
        self.store
            .stream_read(&self.key, StreamFrom::Now, 1, Duration::ZERO)
            .await
            .ok()
            .map(|r| r.cursor)
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
            .stream_read(&self.key, StreamFrom::After(self.local_cursor), PAGE, block)
            .await
        else {
            return Vec::new();
        };
        self.local_cursor = r.cursor;
        let fleet = self.fleet.map_or_else(|| "now".to_string(), |f| f.to_string());
        r.entries
            .into_iter()
            .map(|e| FeedItem::Event {
                id: format!("{fleet}{LOCAL_MARK}{}", e.id),
                payload: e.payload,
            })
            .collect()
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
                .stream_read(&self.key, StreamFrom::After(cursor), PAGE, self.block)
                .await
            {
                Ok(r) => {
                    if self.down {
                        self.down = false;
                        out.push(FeedItem::Notice("store answers again: fleet events resume".into()));
                    }
                    self.fleet = Some(r.cursor);
                    out.extend(r.entries.into_iter().map(|e| FeedItem::Event {
                        id: e.id.to_string(),
                        payload: e.payload,
                    }));
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
