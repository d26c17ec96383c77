//! Fleet membership: each instance announces itself every second with a leased permit in the
//! store (`{prefix}:instance:fleet:{...}`, lease 3 s); the answer is the number of live
//! instances. The `local` failure policy divides limits by the last count known before the
//! store went away, so N instances falling back together still approximate one budget.

use crate::store_ctx::StageStore;
use fleetgate_store::{Concern, Keyspace};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
pub const MEMBER_LEASE: Duration = Duration::from_secs(3);
/// Upper bound on fleet size accepted by the membership set.
const MAX_MEMBERS: u64 = 100_000;

/// Announces `instance` until the process ends, keeping `live` up to date.
pub async fn run_heartbeat<D: StageStore>(store: D, keyspace: Keyspace, instance: String, live: Arc<AtomicU64>) {
    if store.in_process() {
        return;
    }
    let key = keyspace.key(Concern::Instance, "fleet", b"members");
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match store.acquire_permit(&key, &instance, MAX_MEMBERS, MEMBER_LEASE).await {
            Ok(d) => {
                let before = live.swap(d.in_use.max(1), Ordering::Relaxed);
                if before != d.in_use.max(1) {
                    tracing::info!(live_instances = d.in_use, "fleet size changed");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, last_known = live.load(Ordering::Relaxed), "heartbeat failed; keeping the last known fleet size")
            }
        }
    }
}

/// Leaves the fleet at shutdown so the others stop counting this instance at once.
pub async fn leave<D: StageStore>(store: &D, keyspace: &Keyspace, instance: &str) {
    if store.in_process() {
        return;
    }
    let key = keyspace.key(Concern::Instance, "fleet", b"members");
    let _ = store.release_permit(&key, instance).await;
}
