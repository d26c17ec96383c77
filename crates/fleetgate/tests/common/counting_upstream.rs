//! A stand-in for a metered upstream: records when each request arrived, and answers what the
//! test sets (by default 200; for example 429 with `Retry-After: 3`).

use super::stand_in::StandIn;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the upstream answers now: a status and an optional `Retry-After` value.
#[derive(Clone)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
}

pub struct CountingUpstream {
    pub port: u16,
    arrivals: Arc<Mutex<Vec<Instant>>>,
    answer: Arc<Mutex<Answer>>,
    _server: StandIn,
}

impl CountingUpstream {
    pub fn start() -> CountingUpstream {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Answer {
            status: 200,
            retry_after: None,
        }));
        let (arr, ans) = (arrivals.clone(), answer.clone());
        let server = StandIn::start(move |_req: Request<Incoming>| {
            arr.lock().push(Instant::now());
            let a = ans.lock().clone();
            async move {
                let mut b = Response::builder().status(a.status);
                if let Some(r) = &a.retry_after {
                    b = b.header("retry-after", r.as_str());
                }
                b.body(Full::new(Bytes::from("counted"))).unwrap()
            }
        });
        CountingUpstream {
            port: server.port,
            arrivals,
            answer,
            _server: server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.arrivals.lock().len()
    }

    /// When each request arrived, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().clone()
    }

    /// From now on, answer `status` with `retry_after` (if any).
    pub fn answer(&self, status: u16, retry_after: Option<&str>) {
        *self.answer.lock() = Answer {
            status,
            retry_after: retry_after.map(str::to_string),
        };
    }

    /// The most requests that arrived within any window of `window` (sliding, from each
    /// arrival).
    pub fn most_within(&self, window: Duration) -> usize {
        let mut a = self.arrivals();
        a.sort();
        (0..a.len())
            .map(|i| a[i..].iter().take_while(|t| t.duration_since(a[i]) < window).count())
            .max()
            .unwrap_or(0)
    }
}
