//! Single flight on one instance: concurrent identical checks (same credentials, method and
//! URI) are one check (one cache read, at most one auth call). The first to arrive runs it; the
//! others wait for its result. If the one running it goes away (its client left), a waiter takes
//! over. An entry is dropped once its check has finished, so a later request reads the fleet's
//! cache.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::OnceCell;

type Cell<T> = Arc<OnceCell<T>>;

pub(crate) struct Flights<T> {
    running: Mutex<HashMap<u128, Cell<T>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
        }
    }
}

/// Takes a participant's cell out of the map when it leaves, if the check is over or no one
/// else waits for it.
struct Leave<'a, T> {
    flights: &'a Flights<T>,
    key: u128,
    cell: Cell<T>,
}

impl<T> Drop for Leave<'_, T> {
    fn drop(&mut self) {
        let mut running = self.flights.running.lock();
        if let Some(c) = running.get(&self.key) {
            // The map and this participant hold it: no one else waits.
            if Arc::ptr_eq(c, &self.cell) && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
                running.remove(&self.key);
            }
        }
    }
}

impl<T: Clone + Send + Sync> Flights<T> {
    /// The result of `check` for `key`, run once for every concurrent caller; and whether this
    /// caller ran it.
    pub(crate) async fn run<F, Fut>(&self, key: u128, check: F) -> (T, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let cell = self.running.lock().entry(key).or_default().clone();
        let leave = Leave {
            flights: self,
            key,
            cell,
        };
        let mut ran = false;
        let value = leave
            .cell
            .get_or_init(|| {
                ran = true;
                check()
            })
            .await
            .clone();
        drop(leave);
        (value, ran)
    }

    #[cfg(test)]
    fn running(&self) -> usize {
        self.running.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run_and_later_ones_run_again() {
        let flights = Arc::new(Flights::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (flights, runs, gate) = (flights.clone(), runs.clone(), gate.clone());
                tokio::spawn(async move {
                    flights
                        .run(7, || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            gate.notified().await;
                            42
                        })
                        .await
                })
            })
            .collect();
        // Every task joins the flight (the test runtime has one thread: yielding runs them).
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
        assert_eq!(flights.running(), 1);
        gate.notify_waiters();
        let mut ran = 0;
        for t in tasks {
            let (v, r) = t.await.unwrap();
            assert_eq!(v, 42);
            ran += r as usize;
        }
        assert_eq!((runs.load(Ordering::SeqCst), ran), (1, 1), "one run for all");
        assert_eq!(flights.running(), 0, "finished flights are dropped");
        let (v, r) = flights.run(7, || async { 43 }).await;
        assert_eq!((v, r), (43, true), "a later caller runs again");
    }

    #[tokio::test]
    async fn a_waiter_takes_over_when_the_runner_leaves() {
        let flights = Arc::new(Flights::<u32>::default());
        let f = flights.clone();
        let runner = tokio::spawn(async move { f.run(1, std::future::pending::<u32>).await });
        while flights.running() == 0 {
            tokio::task::yield_now().await;
        }
        let f = flights.clone();
        let waiter = tokio::spawn(async move { f.run(1, || async { 5 }).await });
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        runner.abort();
        assert_eq!(waiter.await.unwrap(), (5, true));
        assert_eq!(flights.running(), 0);
    }
}
