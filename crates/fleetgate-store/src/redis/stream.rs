//! Streams on Redis (live events): `XADD ... MAXLEN ~ N` pipelined for a batch, `XREAD BLOCK`
//! on reader connections of their own (a blocked `XREAD` would hold up every call queued
//! behind it on a shared multiplexed connection), `XINFO STREAM` for where a stream stands.
//!
//! On a cluster the hub connection may not own the stream's slot, so reads go through the
//! slot-aware connection without `BLOCK`, polling every [`CLUSTER_POLL`] until `block` ends.

use super::{describe, map_error, RedisStore};
use crate::error::StoreError;
use crate::keyspace::StoreKey;
use crate::seam::StoreResult;
use crate::stream::{StreamEntry, StreamFrom, StreamId, StreamRead};
use bytes::Bytes;
use redis::Value;
use std::time::Duration;

/// The field each entry's payload is stored under.
const FIELD: &str = "e";
const CLUSTER_POLL: Duration = Duration::from_millis(50);
/// Idle reader connections kept for reuse.
const IDLE_READERS: usize = 8;

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn id_of(v: &Value) -> StoreResult<StreamId> {
    text(v)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Protocol("stream reply holds no entry id".into()))
}

/// Items of an array, or the key/value pairs of a map flattened (RESP3).
fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `XREAD` reply for one stream (`Nil` when it timed out).
fn entries_of(reply: Value) -> StoreResult<Vec<StreamEntry>> {
    let mut out = Vec::new();
    let streams = items(reply);
    // [key, entries, key, entries...] once flattened.
    for pair in streams.into_iter().collect::<Vec<_>>().chunks(2).map(|c| c.to_vec()) {
        let entries = match pair.as_slice() {
            [_key, entries] => entries.clone(),
            [Value::Array(inner)] if inner.len() == 2 => inner[1].clone(),
            _ => continue,
        };
        for entry in items(entries) {
            let mut parts = items(entry).into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                return Err(StoreError::Protocol("stream entry without id and fields".into()));
            };
            let id = id_of(&id)?;
            let fields = items(fields);
            let payload = fields
                .chunks(2)
                .find(|kv| text(&kv[0]) == Some(FIELD.as_bytes()))
                .and_then(|kv| kv.get(1).and_then(text))
                .map(Bytes::copy_from_slice)
                .unwrap_or_default();
            out.push(StreamEntry { id, payload });
        }
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct Position {
    last: StreamId,
    first: StreamId,
    trimmed: bool,
}

impl RedisStore {
    pub(super) async fn xadd_batch(
        &self,
        key: &StoreKey,
        payloads: &[Bytes],
        max_len: u64,
    ) -> StoreResult<Vec<StreamId>> {
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for p in payloads {
            pipe.cmd("XADD")
                .arg(key.as_str())
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len.max(1))
                .arg("*")
                .arg(FIELD)
                .arg(p.as_ref());
        }
        let pipe = &pipe;
        let replies: Vec<Value> = self
            .bounded(|mut conn| async move { pipe.query_async::<Vec<Value>>(&mut conn).await })
            .await?;
        replies.iter().map(id_of).collect()
    }

    /// Where the stream stands: `last-generated-id`, the oldest entry kept (`first-entry`),
    /// and whether trimming removed any entry (`entries-added` above `length`; when the server
    /// does not say, assumed so). Zero and false for a stream that does not exist.
    async fn xinfo(&self, key: &StoreKey) -> StoreResult<Position> {
        let reply = match self.query(redis::cmd("XINFO").arg("STREAM").arg(key.as_str())).await {
            Ok(v) => v,
            Err(StoreError::Server(t)) if t.to_ascii_lowercase().contains("no such key") => {
                return Ok(Position::default())
            }
            Err(e) => return Err(e),
        };
        let fields = items(reply);
        let mut pos = Position::default();
        let (mut length, mut added) = (None, None);
        for kv in fields.chunks(2) {
            match (text(&kv[0]), kv.get(1)) {
                (Some(b"last-generated-id"), Some(v)) => pos.last = id_of(v)?,
                (Some(b"first-entry"), Some(v @ (Value::Array(_) | Value::Map(_)))) => {
                    if let Some(id) = items(v.clone()).first() {
                        pos.first = id_of(id)?;
                    }
                }
                (Some(b"length"), Some(Value::Int(n))) => length = Some(*n),
                (Some(b"entries-added"), Some(Value::Int(n))) => added = Some(*n),
                _ => {}
            }
        }
        pos.trimmed = match (added, length) {
            (Some(a), Some(l)) => a > l,
            _ => true,
        };
        Ok(pos)
    }

    pub(super) async fn xread(
        &self,
        key: &StoreKey,
        from: StreamFrom,
        count: usize,
        block: Duration,
    ) -> StoreResult<StreamRead> {
        let (after, gap) = match from {
            StreamFrom::Now => {
                let pos = self.xinfo(key).await?;
                return Ok(StreamRead {
                    entries: Vec::new(),
                    cursor: pos.last,
                    gap: false,
                });
            }
            StreamFrom::After(id) => (id, false),
            // Trimming removes the oldest entries: once it has removed some, a reader whose
            // last id is older than the oldest kept may have missed some (it is told so even
            // when the very next entry happens to be the oldest kept: Redis records how many
            // entries trimming removed, not which).
            StreamFrom::Resume(id) => {
                let pos = self.xinfo(key).await?;
                (id, pos.trimmed && pos.first != StreamId::ZERO && id < pos.first)
            }
        };
        let count = count.max(1);
        let entries = if self.inner.cluster_nodes.is_some() || block.is_zero() {
            self.xread_polling(key, after, count, block).await?
        } else {
            self.xread_blocking(key, after, count, block).await?
        };
        let cursor = entries.last().map_or(after, |e| e.id);
        Ok(StreamRead { entries, cursor, gap })
    }

    async fn xread_polling(
        &self,
        key: &StoreKey,
        after: StreamId,
        count: usize,
        block: Duration,
    ) -> StoreResult<Vec<StreamEntry>> {
        let deadline = tokio::time::Instant::now() + block;
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(key.as_str())
            .arg(after.to_string());
        loop {
            let entries = entries_of(self.query(&cmd).await?)?;
            let now = tokio::time::Instant::now();
            if !entries.is_empty() || now >= deadline {
                return Ok(entries);
            }
            tokio::time::sleep(CLUSTER_POLL.min(deadline - now)).await;
        }
    }

    async fn xread_blocking(
        &self,
        key: &StoreKey,
        after: StreamId,
        count: usize,
        block: Duration,
    ) -> StoreResult<Vec<StreamEntry>> {
        let health = &self.inner.health;
        let super::Admission::Call(period) = health.admit() else {
            return Err(super::HealthGroup::rejection());
        };
        let options = &self.inner.options;
        let idle = self.inner.readers.lock().pop();
        let mut conn = match idle {
            Some(c) => c,
            None => {
                let client = self.inner.hub_target.read().clone();
                let Some(client) = client else {
                    return Err(StoreError::Unavailable("no primary known yet".into()));
                };
                // No response timeout of the client's own (500 ms by default, shorter than a
                // block): each read is bounded below, by its block and the store timeout.
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(options.connect_timeout))
                    .set_response_timeout(None);
                let connect = client.get_multiplexed_async_connection_with_config(&config);
                match tokio::time::timeout(options.connect_timeout, connect).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        health.on_failure(period);
                        return Err(map_error(&e));
                    }
                    Err(_) => {
                        health.on_failure(period);
                        return Err(StoreError::Timeout(options.connect_timeout));
                    }
                }
            }
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(key.as_str())
            .arg(after.to_string());
        let bound = block + options.timeout.max(Duration::from_millis(100)) * 2;
        match tokio::time::timeout(bound, cmd.query_async::<Value>(&mut conn)).await {
            Ok(Ok(reply)) => {
                health.on_success();
                let mut idle = self.inner.readers.lock();
                if idle.len() < IDLE_READERS {
                    idle.push(conn);
                }
                drop(idle);
                entries_of(reply)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %describe(&e), "stream read failed");
                let err = map_error(&e);
                if err.is_connectivity() {
                    health.on_failure(period);
                }
                Err(err)
            }
            Err(_) => {
                health.on_failure(period);
                Err(StoreError::Timeout(bound))
            }
        }
    }
}
