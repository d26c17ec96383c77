//! Least-request balancing (`balance: least_request`): two targets drawn at random, the one
//! with fewer requests in flight wins (power of two choices). Requests in flight are counted
//! per instance, from the choice until the response body has ended or the client left (the
//! count is a guard held with the request's other guards).

use crate::upstream::Upstream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Requests in flight per target of one upstream, on this instance.
pub struct LeastRequest {
    in_flight: Arc<[AtomicUsize]>,
}

impl LeastRequest {
    pub fn new(targets: usize) -> Self {
        LeastRequest {
            in_flight: (0..targets).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// The target for the next request: the less loaded of two random available ones; round
    /// robin among the available ones when neither drawn is available.
    pub fn choose(&self, upstream: &Upstream) -> usize {
        let n = self.in_flight.len();
        if n == 1 {
            return 0;
        }
        let a = fastrand::usize(..n);
        let mut b = fastrand::usize(..n - 1);
        if b >= a {
            b += 1;
        }
        match (upstream.is_healthy(a), upstream.is_healthy(b)) {
            (true, true) => {
                let load = |i: usize| self.in_flight[i].load(Ordering::Relaxed);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
            (true, false) => a,
            (false, true) => b,
            (false, false) => upstream.pick(),
        }
    }

    /// Counts a request in flight to `target` until the guard is dropped.
    pub fn start(&self, target: usize) -> InFlight {
        self.in_flight[target].fetch_add(1, Ordering::Relaxed);
        InFlight {
            counts: self.in_flight.clone(),
            target,
        }
    }

    /// Requests in flight to `target` now.
    pub fn in_flight(&self, target: usize) -> usize {
        self.in_flight[target].load(Ordering::Relaxed)
    }
}

/// One request in flight to a target; dropped when the response is over.
pub struct InFlight {
    counts: Arc<[AtomicUsize]>,
    target: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counts[self.target].fetch_sub(1, Ordering::Relaxed);
    }
}
