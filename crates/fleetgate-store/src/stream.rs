//! Bounded, ordered streams of entries with ids (live events): the types of
//! [`stream_append`](crate::StoreDriver::stream_append) and
//! [`stream_read`](crate::StoreDriver::stream_read).
//!
//! Ids are `MS-SEQ` (milliseconds, then a sequence within the millisecond), as Redis Streams
//! write them: they only grow, so a reader that remembers the last id it saw and reads after it
//! sees every entry once, in order, across reconnects, for as long as the stream still holds it.

use bytes::Bytes;
use std::fmt;
use std::str::FromStr;

/// The id of one stream entry. Ordered as the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// The id before every entry (`0-0`).
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a text is not a stream id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a stream id; accepted: MS-SEQ, two whole numbers (e.g. 1700000000000-0)")]
pub struct BadStreamId(pub String);

impl FromStr for StreamId {
    type Err = BadStreamId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadStreamId(s.chars().take(64).collect());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        let digits = |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(StreamId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// One entry of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: StreamId,
    pub payload: Bytes,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrom {
    /// Entries appended from now on: the read returns no entries, only the cursor (the last id
    /// the stream holds), to read after next time.
    Now,
    /// Entries after this id.
    After(StreamId),
    /// Entries after this id, and say whether some entries after it are gone already (trimmed
    /// by the stream's bound): [`StreamRead::gap`].
    Resume(StreamId),
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRead {
    /// In stream order, all after the read's starting id.
    pub entries: Vec<StreamEntry>,
    /// Where the next read continues: the last entry's id, or the starting id when none came.
    pub cursor: StreamId,
    /// [`StreamFrom::Resume`] only: entries after the starting id may have been trimmed before
    /// they could be read (the reader missed some). The in-process ring knows exactly; Redis
    /// says so whenever trimming has removed entries and the starting id is older than the
    /// oldest entry kept.
    pub gap: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_print_and_order() {
        let id: StreamId = "1700000000000-7".parse().unwrap();
        assert_eq!(
            id,
            StreamId {
                ms: 1_700_000_000_000,
                seq: 7
            }
        );
        assert_eq!(id.to_string(), "1700000000000-7");
        assert!(StreamId { ms: 1, seq: 9 } < StreamId { ms: 2, seq: 0 });
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "a-1",
            "1-1-1",
            "1 -1",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?}");
        }
    }
}
