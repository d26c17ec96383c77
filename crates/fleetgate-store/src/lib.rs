//! # fleetgate-store
//!
//! The seam behind which fleetgate keeps every piece of state that must agree across gateway
//! instances: rate-limit counters, concurrency permits, sessions, replay markers and
//! idempotency keys, cached values, locks and live events.
//!
//! * [`StoreDriver`]: the operations, each one atomic decision.
//! * [`algo`]: the rate-limit algorithms as pure functions, shared by every driver.
//! * [`MemoryStore`]: the in-process driver (default). [`RedisStore`]: the shared driver.
//! * [`Store`]: either driver behind one type, built from a URL.
//! * [`Keyspace`]: safe, namespaced, hashed keys.
//! * [`lock::LeaseLock`]: lease locks with fencing tokens, one holder across a fleet.
//! * [`StreamId`], [`StreamFrom`], [`StreamRead`]: bounded streams with ids (live events).
#![forbid(unsafe_code)]

pub mod algo;
mod clock;
mod error;
mod keyspace;
pub mod lease;
pub mod lock;
pub mod memory;
mod rate;
pub mod redis;
mod seam;
mod store;
mod stream;
mod sync;

pub use clock::{Clock, ManualClock, MonotonicClock};
pub use error::StoreError;
pub use keyspace::{identifier_hash, Concern, KeyError, Keyspace, ScopedKeys, StoreKey};
pub use memory::MemoryStore;
pub use rate::{Algorithm, LeaseReceipt, LimitError, Rate, RateCharge, RateDecision, RateLimit, Reservation};
pub use redis::{BreakerSettings, HealthGroup, RedisOptions, RedisStore, TlsFiles, WaitReplicas};
pub use seam::*;
pub use store::Store;
pub use stream::{BadStreamId, StreamEntry, StreamFrom, StreamId, StreamRead};
