//! The seam: every operation any concern needs, each one atomic decision.
//!
//! A driver implements [`StoreDriver`]; the in-process driver with sharded locks, the Redis
//! driver with one round trip (one command or one Lua script) per call. Nothing here reads and
//! then writes across calls: a concern asks for a decision and gets one.
//!
//! | concern (DESIGN.md)                      | operations                         |
//! |------------------------------------------|------------------------------------|
//! | rate limits, outbound throttle, login-failure throttle | [`rate`](StoreDriver::rate), [`refund`](StoreDriver::refund) |
//! | rate limits in lease mode ([`lease`](crate::lease)) | [`reserve`](StoreDriver::reserve), [`give_back`](StoreDriver::give_back) |
//! | concurrency limits                       | [`acquire_permit`](StoreDriver::acquire_permit), [`release_permit`](StoreDriver::release_permit) |
//! | replay markers, idempotency keys, dedup  | [`claim`](StoreDriver::claim), then [`set`](StoreDriver::set), or [`complete_claim`](StoreDriver::complete_claim) / [`release_claim`](StoreDriver::release_claim) by the holder |
//! | sessions, verification cache, response cache, upstream auth tokens, breaker cooldowns | [`get`](StoreDriver::get), [`get_extend`](StoreDriver::get_extend), [`set`](StoreDriver::set), [`delete`](StoreDriver::delete) |
//! | locks (single flight across instances)   | [`lock`](StoreDriver::lock), [`unlock`](StoreDriver::unlock) |
//! | live events (fleet-wide, each seen once)  | [`stream_append`](StoreDriver::stream_append), [`stream_read`](StoreDriver::stream_read) |
//! | breaker trips                            | [`publish`](StoreDriver::publish), [`subscribe`](StoreDriver::subscribe) |
//! | health                                   | [`health`](StoreDriver::health) |

use crate::error::StoreError;
use crate::keyspace::StoreKey;
use crate::rate::{LeaseReceipt, RateCharge, RateDecision, RateLimit, Reservation};
use crate::stream::{StreamFrom, StreamId, StreamRead};
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub type StoreResult<T> = Result<T, StoreError>;

/// Outcome of asking for one concurrency permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermitDecision {
    pub granted: bool,
    /// Permits held after this call (live leases only).
    pub in_use: u64,
    pub max: u64,
}

/// Outcome of a claim-once (set-if-absent) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This caller set the marker: it is the first and only one within the TTL.
    Won,
    /// Someone already holds the marker; here is the value they stored (e.g. "pending" or a
    /// completed response for idempotency keys).
    Held(Bytes),
}

/// A held lock and its fencing token, which grows with every new holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockGrant {
    pub fence: u64,
}

/// What `/healthz` reports for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreHealth {
    /// A shared store answers.
    Ok,
    /// A shared store is configured but does not answer.
    Down,
    /// In-process only: there is no shared store.
    Off,
}

impl StoreHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreHealth::Ok => "ok",
            StoreHealth::Down => "down",
            StoreHealth::Off => "off",
        }
    }
}

/// One message received on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub channel: Arc<str>,
    pub payload: Bytes,
}

/// A live subscription to one channel. Messages published anywhere in the fleet after the
/// subscription became active arrive here; a slow reader loses the oldest (counted in `lagged`).
pub struct Subscription {
    rx: broadcast::Receiver<Message>,
    lagged: u64,
}

impl Subscription {
    pub(crate) fn new(rx: broadcast::Receiver<Message>) -> Self {
        Subscription { rx, lagged: 0 }
    }

    /// The next message, or `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            match self.rx.recv().await {
                Ok(m) => return Some(m),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Messages this subscriber missed because it read too slowly.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}

/// The operations every driver implements. Each call is one atomic decision.
pub trait StoreDriver: Send + Sync + 'static {
    /// Decides one request of `cost` units against `limit` for `key`, and records it if admitted.
    fn rate(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        cost: u64,
    ) -> impl Future<Output = StoreResult<RateDecision>> + Send;

    /// Gives back what an admitted [`rate`](Self::rate) decision charged (its
    /// [`charge`](RateDecision::charge)), so that a request refused by a later limit is charged
    /// to no limit. Returns whether the state changed.
    ///
    /// Never more generous than if the charge had never been made: sliding_window and
    /// fixed_window give back exactly the units, from the log entry or window they were charged
    /// to (nothing once that entry or window is gone); gcra gives back exactly when nothing else
    /// was charged to the key in between, and less when time and other charges may have used the
    /// room (see [`algo::gcra::refund`](crate::algo::gcra::refund)). Pass the same `key` and
    /// `limit` as the charge, to the store that made it, at most once per charge: a refund is
    /// not idempotent, so one that timed out is not retried (a lost refund only errs strict).
    fn refund(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        charge: &RateCharge,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Reserves up to `want` units of `limit` for `key` in one atomic step, for local spending
    /// until the lease (at most `lease`) ends: lease mode ([`crate::lease`]). The units are
    /// charged so that, wherever in the lease they are spent, the fleet never admits more than
    /// the limit (docs/store.md, "Lease mode"): gcra charges them as taken now and refilling
    /// only from the lease's end; fixed_window takes them from the current window and ends the
    /// lease with it; sliding_window logs them at the lease's end (at most one window away).
    ///
    /// The default refuses: a driver must implement it to support lease mode.
    fn reserve(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        want: u64,
        lease: Duration,
    ) -> impl Future<Output = StoreResult<Reservation>> + Send {
        let _ = (key, want, lease);
        let algorithm = limit.algorithm();
        async move { Err(cannot_lease(algorithm)) }
    }

    /// Gives back `unused` units of a reservation (its [`receipt`](Reservation::receipt)), when
    /// an instance stops. Returns whether the state changed. Never more generous than if the
    /// reservation had been of `granted - unused` units: fixed_window gives back to the window
    /// it was taken from (nothing once it has passed); sliding_window to the log entry it was
    /// logged in (nothing once it has left the window); gcra only while nothing else was
    /// charged to the key since (otherwise the units expire with the lease). At most once per
    /// receipt.
    fn give_back(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        receipt: &LeaseReceipt,
        unused: u64,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        let _ = (key, receipt, unused);
        let algorithm = limit.algorithm();
        async move { Err(cannot_lease(algorithm)) }
    }

    /// Takes (or renews) the permit `permit` under `key` if fewer than `max` live leases exist.
    /// A lease lasts `lease`; leases of a crashed holder expire by themselves.
    fn acquire_permit(
        &self,
        key: &StoreKey,
        permit: &str,
        max: u64,
        lease: Duration,
    ) -> impl Future<Output = StoreResult<PermitDecision>> + Send;

    /// Gives a permit back. Returns whether it was still held.
    fn release_permit(&self, key: &StoreKey, permit: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Sets `key` to `value` for `ttl` only if it is absent (claim-once); otherwise returns the
    /// value that holds it.
    fn claim(
        &self,
        key: &StoreKey,
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<ClaimOutcome>> + Send;

    /// Replaces the value of a claim with `value` for `ttl`, only if `key` still holds `token`
    /// (the value this holder claimed it with, which carries a random part): one atomic
    /// compare-and-set, so only the holder of a claim can store its result, and not once the
    /// claim has expired and another holder has taken it. Returns whether it was replaced.
    fn complete_claim(
        &self,
        key: &StoreKey,
        token: &[u8],
        value: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Deletes a claim only if `key` still holds `token` (see
    /// [`complete_claim`](Self::complete_claim)), so that a retry can claim it again. Returns
    /// whether it was released.
    fn release_claim(&self, key: &StoreKey, token: &[u8]) -> impl Future<Output = StoreResult<bool>> + Send;

    fn get(&self, key: &StoreKey) -> impl Future<Output = StoreResult<Option<Bytes>>> + Send;

    /// Reads a value and, if it exists, makes it live `ttl` from now, in one atomic step (a
    /// sliding expiry: gateway sessions). A value deleted meanwhile is never brought back.
    fn get_extend(&self, key: &StoreKey, ttl: Duration) -> impl Future<Output = StoreResult<Option<Bytes>>> + Send;

    /// Sets a small value with a TTL (every key expires).
    fn set(&self, key: &StoreKey, value: Bytes, ttl: Duration) -> impl Future<Output = StoreResult<()>> + Send;

    /// Deletes a value. Returns whether it existed.
    fn delete(&self, key: &StoreKey) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Takes a lease lock for `owner` (or extends it if `owner` holds it already), returning the
    /// fencing token; `None` when another owner holds it.
    fn lock(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<Option<LockGrant>>> + Send;

    /// Releases the lock if `owner` still holds it.
    fn unlock(&self, key: &StoreKey, owner: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Publishes to every subscriber of `channel` across the fleet.
    fn publish(&self, channel: &str, payload: Bytes) -> impl Future<Output = StoreResult<()>> + Send;

    /// Subscribes to `channel`; the subscription is active when this returns.
    fn subscribe(&self, channel: &str) -> impl Future<Output = StoreResult<Subscription>> + Send;

    /// Appends `payloads` to the stream `key`, in order, in one batch (Redis: pipelined `XADD`
    /// with `MAXLEN ~ max_len`), keeping about the last `max_len` entries. Returns their ids.
    fn stream_append(
        &self,
        key: &StoreKey,
        payloads: &[Bytes],
        max_len: u64,
    ) -> impl Future<Output = StoreResult<Vec<StreamId>>> + Send;

    /// Reads up to `count` entries of the stream `key` (see [`StreamFrom`]), waiting up to
    /// `block` for the first when none is there yet (Redis: `XREAD BLOCK` on a connection of
    /// its own, so that a waiting reader never holds up other calls). An empty read after
    /// `block` is not an error.
    fn stream_read(
        &self,
        key: &StoreKey,
        from: StreamFrom,
        count: usize,
        block: Duration,
    ) -> impl Future<Output = StoreResult<StreamRead>> + Send;

    /// Whether the store answers now.
    fn health(&self) -> impl Future<Output = StoreHealth> + Send;
}

/// The error of a reservation that the algorithm (or driver) cannot make.
pub(crate) fn cannot_lease(algorithm: crate::rate::Algorithm) -> StoreError {
    StoreError::Config(format!(
        "{algorithm} limits cannot lease units with this store (lease mode supports gcra, fixed_window and sliding_window); use mode: exact"
    ))
}
