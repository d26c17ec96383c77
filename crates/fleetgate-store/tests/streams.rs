//! Streams (live events) on every driver: the same scenarios on the in-process ring buffer and
//! on a real redis-server. Readers on separate handles (separate connections, as separate
//! instances are) see every entry once, in order; a resume after a trim says so.

use bytes::Bytes;
use fleetgate_store::*;
use fleetgate_testkit::RedisServer;
use std::time::Duration;

fn key(name: &str) -> StoreKey {
    Keyspace::new("streamtest")
        .unwrap()
        .key(Concern::Events, name, b"stream")
}

fn payloads(range: std::ops::Range<u32>) -> Vec<Bytes> {
    range.map(|i| Bytes::from(i.to_string())).collect()
}

fn numbers(read: &StreamRead) -> Vec<u32> {
    read.entries
        .iter()
        .map(|e| std::str::from_utf8(&e.payload).unwrap().parse().unwrap())
        .collect()
}

/// Reads everything after `from` in pages of `page`.
async fn read_all<S: StoreDriver>(s: &S, k: &StoreKey, mut from: StreamId, page: usize) -> Vec<u32> {
    let mut out = Vec::new();
    loop {
        let r = s
            .stream_read(k, StreamFrom::After(from), page, Duration::ZERO)
            .await
            .unwrap();
        if r.entries.is_empty() {
            return out;
        }
        out.extend(numbers(&r));
        from = r.cursor;
    }
}

async fn every_reader_sees_each_entry_once_in_order<S: StoreDriver>(writers: [&S; 2], readers: [&S; 2]) {
    let k = key("once");
    let start = readers[0]
        .stream_read(&k, StreamFrom::Now, 10, Duration::ZERO)
        .await
        .unwrap();
    assert!(start.entries.is_empty(), "Now returns the position only");
    // Two writers interleave batches; the stream orders them.
    let mut written = Vec::new();
    for batch in 0..10u32 {
        let w = writers[(batch % 2) as usize];
        let ids = w
            .stream_append(&k, &payloads(batch * 10..batch * 10 + 10), 10_000)
            .await
            .unwrap();
        assert_eq!(ids.len(), 10);
        assert!(ids.windows(2).all(|p| p[0] < p[1]), "ids grow within a batch");
        written.extend(batch * 10..batch * 10 + 10);
    }
    for r in readers {
        assert_eq!(
            read_all(r, &k, start.cursor, 7).await,
            written,
            "pages of 7 join up with no loss or repeat"
        );
    }
    // A reader that stops half-way and resumes after its last id loses and repeats nothing.
    let first = readers[1]
        .stream_read(&k, StreamFrom::After(start.cursor), 33, Duration::ZERO)
        .await
        .unwrap();
    let resumed = readers[0]
        .stream_read(&k, StreamFrom::Resume(first.cursor), 1000, Duration::ZERO)
        .await
        .unwrap();
    assert!(!resumed.gap);
    let mut joined = numbers(&first);
    joined.extend(numbers(&resumed));
    assert_eq!(joined, written);
}

async fn a_resume_past_the_bound_reports_a_gap<S: StoreDriver>(s: &S) {
    let k = key("gap");
    let start = s.stream_read(&k, StreamFrom::Now, 1, Duration::ZERO).await.unwrap();
    // Nothing trimmed yet: reading from the very start is no gap.
    s.stream_append(&k, &payloads(0..5), 10).await.unwrap();
    let whole = s
        .stream_read(&k, StreamFrom::Resume(StreamId::ZERO), 100, Duration::ZERO)
        .await
        .unwrap();
    assert!(!whole.gap, "nothing was trimmed");
    assert_eq!(numbers(&whole), vec![0, 1, 2, 3, 4]);
    for chunk in 0..10u32 {
        s.stream_append(&k, &payloads(chunk * 100..chunk * 100 + 100), 10)
            .await
            .unwrap();
    }
    let r = s
        .stream_read(&k, StreamFrom::Resume(start.cursor), 5000, Duration::ZERO)
        .await
        .unwrap();
    assert!(r.gap, "the bound trimmed entries the reader never saw");
    assert!(
        r.entries.len() < 1000,
        "the stream is bounded: {} entries kept",
        r.entries.len()
    );
    assert_eq!(numbers(&r).last(), Some(&999));
}

async fn a_blocked_reader_wakes_for_another_handles_append<S: StoreDriver + Clone>(writer: S, reader: &S) {
    let k = key("wake");
    let start = reader
        .stream_read(&k, StreamFrom::Now, 1, Duration::ZERO)
        .await
        .unwrap();
    let k2 = k.clone();
    let w = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer.stream_append(&k2, &payloads(7..8), 100).await.unwrap();
    });
    let r = reader
        .stream_read(&k, StreamFrom::After(start.cursor), 10, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(numbers(&r), vec![7]);
    w.await.unwrap();
    // Nothing new: an empty read once the block ends, not an error (a block longer than the
    // Redis client's own 500 ms response timeout included).
    let idle = reader
        .stream_read(&k, StreamFrom::After(r.cursor), 10, Duration::from_millis(1200))
        .await
        .unwrap();
    assert!(idle.entries.is_empty());
    assert_eq!(idle.cursor, r.cursor);
}

#[tokio::test]
async fn memory_streams() {
    let s = MemoryStore::new();
    every_reader_sees_each_entry_once_in_order([&s, &s], [&s, &s]).await;
    a_resume_past_the_bound_reports_a_gap(&s).await;
    a_blocked_reader_wakes_for_another_handles_append(s.clone(), &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams() {
    let server = RedisServer::start();
    let open = || RedisStore::open(&server.url(), RedisOptions::default()).unwrap();
    let (a, b, c, d) = (open(), open(), open(), open());
    every_reader_sees_each_entry_once_in_order([&a, &b], [&c, &d]).await;
    a_resume_past_the_bound_reports_a_gap(&a).await;
    a_blocked_reader_wakes_for_another_handles_append(a.clone(), &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stream_reads_recover_after_a_restart() {
    let mut server = RedisServer::start();
    // A store timeout long enough for the reconnection the first call after the restart makes.
    let options = RedisOptions {
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };
    let s = RedisStore::open(&server.url(), options).unwrap();
    let k = key("restart");
    s.stream_append(&k, &payloads(0..3), 100).await.unwrap();
    let r = s
        .stream_read(&k, StreamFrom::After(StreamId::ZERO), 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(numbers(&r), vec![0, 1, 2]);
    server.kill();
    assert!(s
        .stream_read(&k, StreamFrom::After(r.cursor), 10, Duration::from_millis(10))
        .await
        .is_err());
    assert!(s.stream_append(&k, &payloads(3..4), 100).await.is_err());
    server.restart();
    // The connections reconnect in the background; the store says when it answers again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.health().await != StoreHealth::Ok {
        assert!(
            std::time::Instant::now() < deadline,
            "the store never answered after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stream_append(&k, &payloads(4..5), 100).await.unwrap();
    let r = s
        .stream_read(&k, StreamFrom::After(StreamId::ZERO), 10, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(
        numbers(&r),
        vec![4],
        "a fresh server holds only what came after it started"
    );
}
