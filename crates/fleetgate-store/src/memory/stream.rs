//! Streams of the in-process driver: per key, a ring buffer of the last `max_len` entries with
//! ids that only grow (wall-clock milliseconds, then a sequence), and a wake-up for readers
//! waiting on it.

use crate::stream::{StreamEntry, StreamFrom, StreamId, StreamRead};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

#[derive(Default)]
pub(super) struct Streams {
    rings: Mutex<HashMap<Arc<str>, Arc<Ring>>>,
}

#[derive(Default)]
struct Ring {
    state: Mutex<RingState>,
    appended: Notify,
}

#[derive(Default)]
struct RingState {
    entries: VecDeque<StreamEntry>,
    /// The last id given out (kept when every entry is trimmed).
    last: StreamId,
    /// The newest id trimmed away.
    trimmed: StreamId,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Streams {
    fn ring(&self, key: &str) -> Arc<Ring> {
        let mut rings = self.rings.lock();
        if let Some(r) = rings.get(key) {
            return r.clone();
        }
        let r = Arc::new(Ring::default());
        rings.insert(key.into(), r.clone());
        r
    }

    pub fn append(&self, key: &str, payloads: &[Bytes], max_len: u64) -> Vec<StreamId> {
        let ring = self.ring(key);
        let max_len = max_len.max(1) as usize;
        let mut ids = Vec::with_capacity(payloads.len());
        {
            let mut s = ring.state.lock();
            let ms = now_ms();
            for p in payloads {
                let id = if ms > s.last.ms {
                    StreamId { ms, seq: 0 }
                } else {
                    StreamId {
                        ms: s.last.ms,
                        seq: s.last.seq + 1,
                    }
                };
                s.last = id;
                s.entries.push_back(StreamEntry { id, payload: p.clone() });
                ids.push(id);
            }
            while s.entries.len() > max_len {
                if let Some(old) = s.entries.pop_front() {
                    s.trimmed = old.id;
                }
            }
        }
        ring.appended.notify_waiters();
        ids
    }

    pub async fn read(&self, key: &str, from: StreamFrom, count: usize, block: Duration) -> StreamRead {
        let ring = self.ring(key);
        let (after, resume) = match from {
            StreamFrom::Now => {
                let cursor = ring.state.lock().last;
                return StreamRead {
                    entries: Vec::new(),
                    cursor,
                    gap: false,
                };
            }
            StreamFrom::After(id) => (id, false),
            StreamFrom::Resume(id) => (id, true),
        };
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notified = ring.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = ring.state.lock();
                let start = s.entries.partition_point(|e| e.id <= after);
                let entries: Vec<StreamEntry> = s.entries.iter().skip(start).take(count.max(1)).cloned().collect();
                if !entries.is_empty() || tokio::time::Instant::now() >= deadline {
                    let cursor = entries.last().map_or(after, |e| e.id);
                    return StreamRead {
                        entries,
                        cursor,
                        gap: resume && after < s.trimmed,
                    };
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ring_keeps_the_last_entries_and_reports_a_gap() {
        let s = Streams::default();
        let p = |n: u8| Bytes::from(vec![n]);
        let ids = s.append("k", &[p(1), p(2), p(3)], 2);
        assert!(ids[0] < ids[1] && ids[1] < ids[2]);
        let r = s
            .read("k", StreamFrom::Resume(StreamId::ZERO), 10, Duration::ZERO)
            .await;
        assert_eq!(r.entries.iter().map(|e| e.payload[0]).collect::<Vec<_>>(), vec![2, 3]);
        assert!(r.gap, "entry 1 was trimmed before it was read");
        assert_eq!(r.cursor, ids[2]);
        let r = s.read("k", StreamFrom::Resume(ids[0]), 10, Duration::ZERO).await;
        assert!(!r.gap, "nothing after ids[0] was trimmed");
        let now = s.read("k", StreamFrom::Now, 10, Duration::ZERO).await;
        assert!(now.entries.is_empty());
        assert_eq!(now.cursor, ids[2]);
    }

    #[tokio::test]
    async fn a_blocked_reader_wakes_on_append() {
        let s = Arc::new(Streams::default());
        let reader = {
            let s = s.clone();
            tokio::spawn(async move {
                s.read("k", StreamFrom::After(StreamId::ZERO), 10, Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        s.append("k", &[Bytes::from_static(b"x")], 10);
        let r = reader.await.unwrap();
        assert_eq!(r.entries.len(), 1);
    }
}
