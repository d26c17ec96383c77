//! What the store holds for one upstream's login: the credential (sealed) with its
//! generation and when it was made, or the last login's failure while the fleet backs off.
//!
//! `C` generation:u64 made_at_ms:u64 sealed... | `F` attempt:u32 backoff_ms:u64 reason...
//! (big-endian). The failure's reason is a message without secrets.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Credential {
        generation: u64,
        /// Wall-clock milliseconds (Unix) when the login was made, so every instance stops
        /// using it `ttl` after that, whenever it read it.
        made_at_ms: u64,
        sealed: Vec<u8>,
    },
    Failed {
        attempt: u32,
        backoff_ms: u64,
        reason: String,
    },
}

impl Record {
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        match self {
            Record::Credential {
                generation,
                made_at_ms,
                sealed,
            } => {
                out.push(b'C');
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(&made_at_ms.to_be_bytes());
                out.extend_from_slice(sealed);
            }
            Record::Failed {
                attempt,
                backoff_ms,
                reason,
            } => {
                out.push(b'F');
                out.extend_from_slice(&attempt.to_be_bytes());
                out.extend_from_slice(&backoff_ms.to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
        }
        Bytes::from(out)
    }

    /// `None` for bytes this code did not write (they are then ignored and replaced).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (&tag, rest) = bytes.split_first()?;
        match tag {
            b'C' if rest.len() >= 16 => Some(Record::Credential {
                generation: u64::from_be_bytes(rest[..8].try_into().ok()?),
                made_at_ms: u64::from_be_bytes(rest[8..16].try_into().ok()?),
                sealed: rest[16..].to_vec(),
            }),
            b'F' if rest.len() >= 12 => Some(Record::Failed {
                attempt: u32::from_be_bytes(rest[..4].try_into().ok()?),
                backoff_ms: u64::from_be_bytes(rest[4..12].try_into().ok()?),
                reason: String::from_utf8_lossy(&rest[12..]).into_owned(),
            }),
            _ => None,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_foreign_bytes_are_ignored() {
        let c = Record::Credential {
            generation: 7,
            made_at_ms: 1_700_000_000_000,
            sealed: b"\x00tok".to_vec(),
        };
        assert_eq!(Record::decode(&c.encode()), Some(c));
        let f = Record::Failed {
            attempt: 3,
            backoff_ms: 20_000,
            reason: "the login answered HTML".into(),
        };
        assert_eq!(Record::decode(&f.encode()), Some(f));
        assert_eq!(Record::decode(b""), None);
        assert_eq!(Record::decode(b"C\x00"), None);
        assert_eq!(Record::decode(b"pending"), None);
    }
}
