//! A streamed answer for followers on other instances: the leader writes its head (chunk 0)
//! and each chunk to the store, each followed by a notice; on a follower instance one task
//! pumps them, in order, into that instance's flight.

use super::flight::{Driving, End, Id};
use super::record::{self, Stored};
use super::{notice_for, Dedup, POLL};
use crate::store_ctx::{StageStore, StoreCtx};
use bytes::Bytes;
use fleetgate_store::StoreKey;
use std::time::Duration;

/// Starts the writer of a streamed answer, given its head: the sender takes each chunk.
pub(super) type RemoteWriter = Box<dyn FnOnce(Bytes) -> tokio::sync::mpsc::UnboundedSender<Bytes> + Send>;

impl Dedup {
    pub(super) fn chunk_key(&self, id: &Id, seq: u32) -> StoreKey {
        let mut ident = [0u8; 36];
        ident[..32].copy_from_slice(id);
        ident[32..].copy_from_slice(&seq.to_be_bytes());
        self.chunks.key(&ident)
    }

    /// How long a streamed answer's chunks are kept: long enough for a follower that joins
    /// late (within `max_wait`) to read them from the first, and for the window.
    fn chunk_ttl(&self) -> Duration {
        self.config.max_wait + self.config.window
    }

    /// The leader's writer of a streamed answer for other instances: the head as chunk 0, then
    /// each chunk in order, each followed by a notice.
    pub(super) fn remote_writer<D: StageStore>(&self, sx: &StoreCtx<D>, id: Id) -> RemoteWriter {
        let (store, chunks, channel, ttl) = (
            sx.store.clone(),
            self.chunks.clone(),
            self.channel.clone(),
            self.chunk_ttl(),
        );
        Box::new(move |head: Bytes| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
            tokio::spawn(async move {
                let mut next = Some(head);
                let mut seq = 0u32;
                loop {
                    let bytes = match next.take() {
                        Some(b) => b,
                        None => match rx.recv().await {
                            Some(b) => b,
                            None => return,
                        },
                    };
                    let mut ident = [0u8; 36];
                    ident[..32].copy_from_slice(&id);
                    ident[32..].copy_from_slice(&seq.to_be_bytes());
                    if store.set(&chunks.key(&ident), bytes, ttl).await.is_err() {
                        // Followers elsewhere read the rest from the stored answer.
                        return;
                    }
                    let _ = store.publish(&channel, record::notice(&id)).await;
                    seq = seq.saturating_add(1);
                }
            });
            tx
        })
    }

    /// A follower instance's pump of a streamed answer led elsewhere: reads its chunks in order
    /// into this instance's flight (woken by the leader's notices, with the bounded poll), until
    /// the stored answer (the rest is taken from it), a pass marker, or the leader's lock gone
    /// without an answer (the flight then fails).
    pub(super) fn pump<D: StageStore>(
        &self,
        sx: &StoreCtx<D>,
        driving: Driving,
        id: Id,
        locks: StoreKey,
        records: StoreKey,
    ) {
        let store = sx.store.clone();
        let mut notices = self.listen(&sx.store);
        let poll = POLL.min(self.config.lease / 2);
        let chunk = {
            let chunks = self.chunks.clone();
            move |seq: u32| {
                let mut ident = [0u8; 36];
                ident[..32].copy_from_slice(&id);
                ident[32..].copy_from_slice(&seq.to_be_bytes());
                chunks.key(&ident)
            }
        };
        tokio::spawn(async move {
            let flight = driving.flight.clone();
            let (mut seq, mut received) = (1u32, 0usize);
            let end = loop {
                if let Ok(Some(bytes)) = store.get(&chunk(seq)).await {
                    received += bytes.len();
                    if !flight.push(bytes) {
                        break End::Failed;
                    }
                    seq = seq.saturating_add(1);
                    continue;
                }
                let finished = |stored: Option<Bytes>| match stored.as_ref().and_then(record::decode) {
                    Some(Stored::Response(_, body)) if body.len() >= received => {
                        Some((End::Complete, body.slice(received..)))
                    }
                    Some(_) => Some((End::Failed, Bytes::new())),
                    None => None,
                };
                if let Some((end, rest)) = finished(store.get(&records).await.ok().flatten()) {
                    if !rest.is_empty() && !flight.push(rest) {
                        break End::Failed;
                    }
                    break end;
                }
                if let Ok(None) = store.get(&locks).await {
                    // The lock is gone: the answer was kept just before, or the leader died.
                    match finished(store.get(&records).await.ok().flatten()) {
                        Some((end, rest)) => {
                            if !rest.is_empty() && !flight.push(rest) {
                                break End::Failed;
                            }
                            break end;
                        }
                        None => break End::Failed,
                    }
                }
                let _ = tokio::time::timeout(poll, notice_for(&mut notices, &id)).await;
            };
            flight.end(end);
            drop(driving);
        });
    }
}
