//! Each thread's recent keys: a direct-mapped table from (head, identifier) to the key built
//! for them.
//!
//! Building a key hashes head and identifier with BLAKE3, formats 32 hex digits, allocates the
//! text twice (a `String`, then the shared `Arc<str>`) and hashes the text again for its digest:
//! about 1,500 instructions, measured per proxied request with callgrind, for a `key: ip`
//! limit. A client's next request asks for the same key; a hit here costs a short hash, a
//! comparison and a reference count. The table is per thread (so it takes no lock and its
//! reference counts stay on the thread's own cache lines), bounded (`SLOTS` entries, each
//! identifier at most `MAX_IDENTIFIER` bytes; longer ones are always built), and can only
//! evict: a miss builds the key as before, and an entry is only ever used for the exact head
//! and identifier bytes it was built from.

use super::StoreKey;
use std::cell::RefCell;

const SLOTS: usize = 256;
const MAX_IDENTIFIER: usize = 64;

struct Entry {
    head: u64,
    len: u8,
    identifier: [u8; MAX_IDENTIFIER],
    key: StoreKey,
}

thread_local! {
    static RECENT: RefCell<Vec<Option<Entry>>> = const { RefCell::new(Vec::new()) };
}

/// The key for `identifier` under the head numbered `head`, from this thread's table or from
/// `build` (then remembered).
pub(super) fn key(head: u64, identifier: &[u8], build: impl FnOnce() -> StoreKey) -> StoreKey {
    if identifier.len() > MAX_IDENTIFIER {
        return build();
    }
    let slot = (xxhash_rust::xxh3::xxh3_64_with_seed(identifier, head) as usize) % SLOTS;
    let cached = RECENT.try_with(|recent| {
        let recent = recent.try_borrow().ok()?;
        match recent.get(slot)? {
            Some(e) if e.head == head && &e.identifier[..usize::from(e.len)] == identifier => Some(e.key.clone()),
            _ => None,
        }
    });
    if let Ok(Some(key)) = cached {
        return key;
    }
    let key = build();
    // A thread being torn down, or a re-entrant borrow (none today), just skips remembering.
    let _ = RECENT.try_with(|recent| {
        if let Ok(mut recent) = recent.try_borrow_mut() {
            if recent.is_empty() {
                recent.resize_with(SLOTS, || None);
            }
            let mut bytes = [0u8; MAX_IDENTIFIER];
            bytes[..identifier.len()].copy_from_slice(identifier);
            recent[slot] = Some(Entry {
                head,
                len: identifier.len() as u8,
                identifier: bytes,
                key: key.clone(),
            });
        }
    });
    key
}
