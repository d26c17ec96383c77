//! The Redis driver: every decision is one EVALSHA (or one command) over a multiplexed,
//! automatically reconnecting connection, timed by the server's `TIME` and bounded by a timeout.
//!
//! * Connections: a small pool of `redis::aio::ConnectionManager`s (multiplexed: concurrent
//!   calls are pipelined on each), reconnecting by themselves on I/O errors.
//! * Scripts: loaded on every (re)connect and on NOSCRIPT (e.g. after a restart that lost the
//!   script cache), then the call is retried once.
//! * Timeouts: every call is bounded (default 50 ms) and fails with [`StoreError::Timeout`].
//! * Pub/sub: one subscriber connection per store, resubscribing after a reconnect.

mod breaker;
mod pubsub;
mod scripts;
pub mod url;

use crate::error::StoreError;
use crate::keyspace::StoreKey;
use crate::rate::{Algorithm, RateDecision, RateLimit};
use crate::seam::*;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, RedisError, Value};
pub use breaker::BreakerSettings;
use breaker::{Admission, Breaker};
use scripts::Scripts;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connection settings for the Redis driver.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Bound on every store call (default 50 ms).
    pub timeout: Duration,
    /// Bound on establishing one connection (default 1 s).
    pub connect_timeout: Duration,
    /// Multiplexed connections to spread calls over (default 2).
    pub pool_size: usize,
    /// First and longest delay between reconnection attempts (defaults 50 ms and 2 s).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// When to stop calling a failing store and how often to probe it.
    pub breaker: BreakerSettings,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            pool_size: 2,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(500),
            breaker: BreakerSettings::default(),
        }
    }
}

/// The Redis (standalone, `redis://` and `rediss://`) driver. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    scripts: Scripts,
    /// Set after a connectivity error: the next call reloads the scripts first.
    scripts_stale: AtomicBool,
    options: RedisOptions,
    pubsub: pubsub::Hub,
    redacted_url: String,
    breaker: Breaker,
}

impl RedisStore {
    /// Prepares the driver for `url` (`redis://[user:pass@]host:port[/db]` or `rediss://...`).
    ///
    /// An unreachable server is not an error here: connections are made lazily and retried, so a
    /// gateway can start during an outage and serve under its failure policies. A malformed URL
    /// is an error.
    pub fn open(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let redacted_url = url::redact(url);
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Config(format!("{redacted_url}: {}", describe(&e))))?;
        Self::from_client(client, redacted_url, options)
    }

    fn from_client(
        client: redis::Client,
        redacted_url: String,
        options: RedisOptions,
    ) -> Result<Self, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.timeout.max(Duration::from_millis(1)) * 4))
            .set_min_delay(options.reconnect_min)
            .set_max_delay(options.reconnect_max)
            .set_number_of_retries(1);
        let mut pool = Vec::new();
        for _ in 0..options.pool_size.max(1) {
            let manager =
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map_err(|e| StoreError::Config(format!("{redacted_url}: {}", describe(&e))))?;
            pool.push(manager);
        }
        let store = RedisStore {
            inner: Arc::new(Inner {
                pool,
                next: AtomicUsize::new(0),
                scripts: Scripts::new(),
                scripts_stale: AtomicBool::new(true),
                pubsub: pubsub::Hub::new(client, options.clone()),
                breaker: Breaker::new(options.breaker),
                options,
                redacted_url,
            }),
        };
        Ok(store)
    }

    /// Opens and waits until the server answers (tests and `fleetgate check` use this).
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let store = Self::open(url, options)?;
        store.ping().await?;
        Ok(store)
    }

    /// The URL with its password hidden, for logs.
    pub fn redacted_url(&self) -> &str {
        &self.inner.redacted_url
    }

    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    fn conn(&self) -> ConnectionManager {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.pool.len();
        self.inner.pool[i].clone()
    }

    /// Runs `fut` under the breaker and the store timeout, mapping errors.
    async fn bounded<T>(&self, fut: impl std::future::Future<Output = Result<T, RedisError>>) -> StoreResult<T> {
        let breaker = &self.inner.breaker;
        let admission = breaker.admit();
        if admission == Admission::Reject {
            return Err(Breaker::rejection());
        }
        let result = match tokio::time::timeout(self.inner.options.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(&e)),
            Err(_) => Err(StoreError::Timeout(self.inner.options.timeout)),
        };
        match &result {
            Err(err) if err.is_connectivity() => {
                self.inner.scripts_stale.store(true, Ordering::Relaxed);
                breaker.on_failure(admission);
            }
            // Any answer, even an error reply, proves the store is reachable.
            _ => breaker.on_success(),
        }
        result
    }

    /// Whether the breaker currently refuses calls.
    pub fn breaker_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    async fn query(&self, cmd: &Cmd) -> StoreResult<Value> {
        let mut conn = self.conn();
        self.bounded(async move { cmd.query_async::<Value>(&mut conn).await })
            .await
    }

    /// EVALSHA with script preloading and NOSCRIPT recovery, all within one timeout.
    async fn eval(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[Vec<u8>],
    ) -> StoreResult<Value> {
        let mut conn = self.conn();
        let inner = &self.inner;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args);
        self.bounded(async move {
            if inner.scripts_stale.swap(false, Ordering::Relaxed) {
                if let Err(e) = inner.scripts.load_pipeline().exec_async(&mut conn).await {
                    inner.scripts_stale.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            match cmd.query_async::<Value>(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    inner.scripts.load_pipeline().exec_async(&mut conn).await?;
                    cmd.query_async::<Value>(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }

    /// PING within the timeout.
    pub async fn ping(&self) -> StoreResult<()> {
        self.query(&redis::cmd("PING")).await.map(|_| ())
    }
}

fn num(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

fn ints(v: Value, n: usize) -> StoreResult<Vec<i64>> {
    let out: Vec<i64> =
        redis::from_redis_value(v).map_err(|e| StoreError::Protocol(e.to_string()))?;
    if out.len() < n {
        return Err(StoreError::Protocol(format!(
            "expected {n} integers, got {}",
            out.len()
        )));
    }
    Ok(out)
}

fn decision(v: Value, limit: u64) -> StoreResult<RateDecision> {
    let r = ints(v, 4)?;
    let us = |x: i64| Duration::from_micros(x.max(0) as u64);
    Ok(RateDecision {
        allowed: r[0] == 1,
        limit,
        remaining: r[1].max(0) as u64,
        reset_after: us(r[2]),
        retry_after: us(r[3]),
    })
}

/// Error text without anything a caller passed in (keys, values, URLs).
fn describe(e: &RedisError) -> String {
    let mut text = e.to_string();
    if text.len() > 300 {
        text.truncate(300);
    }
    text
}

fn map_error(e: &RedisError) -> StoreError {
    let text = describe(e);
    if e.is_timeout() {
        StoreError::Timeout(Duration::ZERO)
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
    {
        StoreError::Unavailable(text)
    } else if e.code() == Some("WRONGTYPE") || text.contains("WRONGTYPE") {
        StoreError::WrongType(text)
    } else {
        StoreError::Server(text)
    }
}

impl StoreDriver for RedisStore {
    async fn rate(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        cost: u64,
    ) -> StoreResult<RateDecision> {
        let s = &self.inner.scripts;
        let reply = match limit.algorithm() {
            Algorithm::Gcra => {
                let args = [
                    num(limit.interval_us()),
                    num(limit.capacity()),
                    num(cost),
                    num(limit.period_us()),
                ];
                self.eval(&s.gcra, &[key.as_str()], &args).await?
            }
            Algorithm::SlidingWindow => {
                let total = format!("{key}:n");
                let args = [num(limit.period_us()), num(limit.capacity()), num(cost)];
                self.eval(&s.sliding_window, &[key.as_str(), &total], &args)
                    .await?
            }
            Algorithm::FixedWindow => {
                let args = [num(limit.period_us()), num(limit.capacity()), num(cost)];
                self.eval(&s.fixed_window, &[key.as_str()], &args).await?
            }
        };
        decision(reply, limit.capacity())
    }

    async fn acquire_permit(
        &self,
        key: &StoreKey,
        permit: &str,
        max: u64,
        lease: Duration,
    ) -> StoreResult<PermitDecision> {
        let args = [
            permit.as_bytes().to_vec(),
            num(max),
            num(lease.as_micros() as u64),
        ];
        let r = ints(
            self.eval(&self.inner.scripts.acquire_permit, &[key.as_str()], &args)
                .await?,
            2,
        )?;
        Ok(PermitDecision {
            granted: r[0] == 1,
            in_use: r[1].max(0) as u64,
            max,
        })
    }

    async fn release_permit(&self, key: &StoreKey, permit: &str) -> StoreResult<bool> {
        let args = [permit.as_bytes().to_vec()];
        let v = self
            .eval(&self.inner.scripts.release_permit, &[key.as_str()], &args)
            .await?;
        Ok(
            redis::from_redis_value::<i64>(v).map_err(|e| StoreError::Protocol(e.to_string()))?
                == 1,
        )
    }

    async fn claim(
        &self,
        key: &StoreKey,
        value: Bytes,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome> {
        let args = [value.to_vec(), num(ms(ttl))];
        match self
            .eval(&self.inner.scripts.claim, &[key.as_str()], &args)
            .await?
        {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(1)] => Ok(ClaimOutcome::Won),
                [Value::Int(0), Value::BulkString(held)] => {
                    Ok(ClaimOutcome::Held(Bytes::from(held.clone())))
                }
                other => Err(StoreError::Protocol(format!(
                    "claim reply of {} items",
                    other.len()
                ))),
            },
            _ => Err(StoreError::Protocol("claim reply is not an array".into())),
        }
    }

    async fn get(&self, key: &StoreKey) -> StoreResult<Option<Bytes>> {
        match self.query(redis::cmd("GET").arg(key.as_str())).await? {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(Bytes::from(b))),
            _ => Err(StoreError::Protocol("GET reply is not a string".into())),
        }
    }

    async fn set(&self, key: &StoreKey, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.query(
            redis::cmd("SET")
                .arg(key.as_str())
                .arg(value.as_ref())
                .arg("PX")
                .arg(ms(ttl)),
        )
        .await
        .map(|_| ())
    }

    async fn delete(&self, key: &StoreKey) -> StoreResult<bool> {
        let v = self.query(redis::cmd("UNLINK").arg(key.as_str())).await?;
        Ok(matches!(v, Value::Int(n) if n > 0))
    }

    async fn lock(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<Option<LockGrant>> {
        let fence = format!("{key}:fence");
        let args = [owner.as_bytes().to_vec(), num(ms(ttl))];
        let r = ints(
            self.eval(&self.inner.scripts.lock, &[key.as_str(), &fence], &args)
                .await?,
            2,
        )?;
        Ok((r[0] == 1).then_some(LockGrant {
            fence: r[1].max(0) as u64,
        }))
    }

    async fn unlock(&self, key: &StoreKey, owner: &str) -> StoreResult<bool> {
        let args = [owner.as_bytes().to_vec()];
        let v = self
            .eval(&self.inner.scripts.unlock, &[key.as_str()], &args)
            .await?;
        Ok(
            redis::from_redis_value::<i64>(v).map_err(|e| StoreError::Protocol(e.to_string()))?
                == 1,
        )
    }

    async fn publish(&self, channel: &str, payload: Bytes) -> StoreResult<()> {
        self.query(redis::cmd("PUBLISH").arg(channel).arg(payload.as_ref()))
            .await
            .map(|_| ())
    }

    async fn subscribe(&self, channel: &str) -> StoreResult<Subscription> {
        self.inner
            .pubsub
            .subscribe(
                channel,
                self.inner.options.timeout.max(Duration::from_secs(1)),
            )
            .await
    }

    async fn health(&self) -> StoreHealth {
        match self.ping().await {
            Ok(()) => StoreHealth::Ok,
            Err(_) => StoreHealth::Down,
        }
    }
}
