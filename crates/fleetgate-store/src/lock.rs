//! Lease locks with fencing tokens, for any service that needs one holder across a fleet
//! (a job that must run once, a single writer, a login made once for every instance).
//!
//! A [`LeaseLock`] names one lock in the store. [`acquire`](LeaseLock::acquire) waits (up to a
//! bound) until this owner holds it and returns its [`LockGrant`]; the lease expires by itself
//! if the holder dies, so call [`renew`](LeaseLock::renew) before `ttl` while the work lasts,
//! and [`release`](LeaseLock::release) when done.
//!
//! **Fencing**: a lease can run out while its holder is paused (GC, swap, a slow network), and
//! then another instance takes the lock. The grant's `fence` grows with every new holder, so
//! the resource the lock protects can refuse a write whose fence is lower than one it has
//! already seen: the stale holder's late write is turned away. Pass the fence along with every
//! write the lock guards.
//!
//! ```
//! use fleetgate_store::{lock::LeaseLock, Concern, Keyspace, MemoryStore};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), fleetgate_store::StoreError> {
//! let store = MemoryStore::new(); // a RedisStore shared by the fleet in production
//! let key = Keyspace::new("myapp").unwrap().key(Concern::Lock, "jobs", b"nightly-report");
//! let a = LeaseLock::new(store.clone(), key.clone(), "instance-a", Duration::from_secs(10));
//! let b = LeaseLock::new(store.clone(), key, "instance-b", Duration::from_secs(10));
//!
//! let first = a.acquire(Duration::from_secs(1)).await?.expect("free: a takes it");
//! assert!(b.try_acquire().await?.is_none(), "one holder at a time");
//! assert_eq!(a.renew().await?, Some(first), "renewing keeps the fence");
//!
//! a.release().await?;
//! let second = b.acquire(Duration::from_secs(1)).await?.expect("b takes it once a let go");
//! assert!(second.fence > first.fence, "every new holder gets a higher fence");
//!
//! // The guarded resource keeps the highest fence it has seen and refuses lower ones.
//! let mut highest = 0;
//! let mut write = |fence: u64| if fence >= highest { highest = fence; true } else { false };
//! assert!(write(second.fence));
//! assert!(!write(first.fence), "a's late write (stale lease) is refused");
//! # Ok(()) }
//! ```

use crate::keyspace::StoreKey;
use crate::seam::{LockGrant, StoreDriver, StoreResult};
use std::time::Duration;

/// The first wait between tries of [`LeaseLock::acquire`]; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);

/// One named lock, held by `owner` for leases of `ttl`.
#[derive(Debug, Clone)]
pub struct LeaseLock<S> {
    store: S,
    key: StoreKey,
    owner: String,
    ttl: Duration,
}

impl<S: StoreDriver> LeaseLock<S> {
    /// `owner` must be unique to the holder (an instance id and a task id, say): the store
    /// tells holders apart by it.
    pub fn new(store: S, key: StoreKey, owner: impl Into<String>, ttl: Duration) -> Self {
        LeaseLock {
            store,
            key,
            owner: owner.into(),
            ttl,
        }
    }

    /// One try: the grant if this owner holds the lock now, `None` if another does.
    pub async fn try_acquire(&self) -> StoreResult<Option<LockGrant>> {
        self.store.lock(&self.key, &self.owner, self.ttl).await
    }

    /// Tries until this owner holds the lock or `within` has passed (`None` then). Store
    /// errors end the wait at once: whether to go on without the lock is the caller's call.
    pub async fn acquire(&self, within: Duration) -> StoreResult<Option<LockGrant>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut pause = FIRST_POLL;
        loop {
            if let Some(grant) = self.try_acquire().await? {
                return Ok(Some(grant));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// Extends the lease of a lock this owner holds, keeping its fence. `None`: the lease ran
    /// out and another owner took the lock (stop the guarded work). If the lease ran out and
    /// nobody took it, the owner holds it again with a new, higher fence.
    pub async fn renew(&self) -> StoreResult<Option<LockGrant>> {
        self.try_acquire().await
    }

    /// Lets go of the lock if this owner still holds it; whether it did.
    pub async fn release(&self) -> StoreResult<bool> {
        self.store.unlock(&self.key, &self.owner).await
    }

    /// The lease each acquisition or renewal asks for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
