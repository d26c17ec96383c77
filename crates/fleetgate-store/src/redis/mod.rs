//! The Redis driver: every decision is one EVALSHA (or one command) over a multiplexed,
//! automatically reconnecting connection, timed by the server's `TIME` and bounded by a timeout;
//! rate decisions that queue behind a call in flight on their key go as one (`rate_batch.rs`).
//!
//! * Topologies: one server (`redis://`, `rediss://`), a Sentinel-managed primary that the
//!   driver follows through failovers (`redis-sentinel://`), or a Cluster (`redis-cluster://`,
//!   every multi-key script's keys share one hash tag, so one decision is one slot).
//! * Connections: a small pool of `redis::aio::ConnectionManager`s (multiplexed: concurrent
//!   calls are pipelined on each), reconnecting by themselves on I/O errors.
//! * Scripts: loaded on every (re)connect; on NOSCRIPT (a restarted or new node) the call is
//!   sent once more as EVAL, which also caches the script there.
//! * Timeouts: every call is bounded (default 50 ms) and fails with [`StoreError::Timeout`];
//!   a breaker stops calling a store that keeps failing and probes for its return.
//! * Pub/sub: one subscriber connection per store, resubscribing after a reconnect.

mod breaker;
mod conn;
mod pubsub;
mod rate_batch;
mod scripts;
mod sentinel;
mod stream;
mod topology;
pub mod url;

use crate::error::StoreError;
use crate::keyspace::StoreKey;
use crate::rate::{Algorithm, LeaseReceipt, RateCharge, RateDecision, RateLimit, Reservation};
use crate::seam::*;
use crate::stream::{StreamFrom, StreamId, StreamRead};
use breaker::{Admission, Member};
pub use breaker::{BreakerSettings, HealthGroup};
use bytes::Bytes;
use conn::{Backend, Conn, Pool};
use rate_batch::{RateBatches, Turn, Waiter};
use redis::{Cmd, RedisError, Value};
use scripts::Scripts;
use sentinel::SentinelWatch;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use topology::Topology;

/// TLS files (PEM) for `rediss://`, and for Sentinel and Cluster nodes when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA that signed the server certificates (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for servers that require them (`tls-auth-clients`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Connection settings for the Redis driver.
#[derive(Clone)]
pub struct RedisOptions {
    /// Bound on every store call (default 50 ms).
    pub timeout: Duration,
    /// Bound on establishing one connection (default 1 s).
    pub connect_timeout: Duration,
    /// Multiplexed connections to spread calls over (default 1: one connection pipelines all
    /// concurrent calls; 2 measured slower in `scripts/bench store`).
    pub pool_size: usize,
    /// First and longest delay between reconnection attempts (defaults 50 ms and 500 ms).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// When to stop calling a failing store and how often to probe it.
    pub breaker: BreakerSettings,
    /// TLS files; `None` uses the system roots for `rediss://`.
    pub tls: Option<TlsFiles>,
    /// ACL user and password, overriding the URL's.
    pub username: Option<String>,
    pub password: Option<String>,
    /// ACL user and password for the sentinels themselves.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// After every claim won (replay markers, idempotency keys), wait for this many replicas
    /// to acknowledge it, at most this long (`WAIT replicas timeout`); fewer acknowledgements
    /// fail the claim. `None` (the default): no wait.
    pub markers_wait_replicas: Option<WaitReplicas>,
    /// Most rate decisions on one key sent in one call while an earlier call on that key is
    /// in flight (`store.rate_batch_max`, default 64; 1: every decision its own call). See
    /// `rate_batch.rs`.
    pub rate_batch_max: usize,
}

/// `store.markers_wait_replicas`: how many replicas must acknowledge a claim, and how long to
/// wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |o: &Option<String>| o.as_ref().map(|_| "***");
        f.debug_struct("RedisOptions")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_size", &self.pool_size)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("breaker", &self.breaker)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &hide(&self.password))
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &hide(&self.sentinel_password))
            .field("markers_wait_replicas", &self.markers_wait_replicas)
            .field("rate_batch_max", &self.rate_batch_max)
            .finish()
    }
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            pool_size: 1,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(500),
            breaker: BreakerSettings::default(),
            tls: None,
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            markers_wait_replicas: None,
            rate_batch_max: 64,
        }
    }
}

/// The Redis driver (standalone, Sentinel or Cluster). Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<Backend>,
    sentinel: Option<Arc<SentinelWatch>>,
    /// Where pub/sub connects; Sentinel failover replaces it.
    hub_target: Arc<parking_lot::RwLock<Option<redis::Client>>>,
    scripts: Scripts,
    /// Set after a connectivity error: the next call reloads the scripts first.
    scripts_stale: Arc<AtomicBool>,
    options: RedisOptions,
    pubsub: pubsub::Hub,
    redacted_url: String,
    /// The instance's shared view of this store's health (one breaker for every worker).
    health: Arc<HealthGroup>,
    /// This connection set's place in the group.
    member: Arc<Member>,
    /// Cluster only: how to reach one node directly (credentials and TLS), for prefix flushes.
    cluster_nodes: Option<topology::ClusterSpec>,
    /// Idle connections for blocking stream reads (see `stream.rs`).
    readers: parking_lot::Mutex<Vec<redis::aio::MultiplexedConnection>>,
    /// Rate decisions queued behind a call in flight on their key.
    batches: Arc<RateBatches>,
}

impl RedisStore {
    /// Prepares the driver for `url`: `redis://[user:pass@]host:port[/db]`, `rediss://...`,
    /// `redis-sentinel://h1:26379,h2:26379[/db]?master=NAME` or `redis-cluster://h1:7000,h2:7001`.
    ///
    /// An unreachable server is not an error here: connections are made lazily and retried, so a
    /// gateway can start during an outage and serve under its failure policies. A malformed URL,
    /// or a TLS file that cannot be read, is an error. Must be called within a Tokio runtime.
    pub fn open(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let health = HealthGroup::new(options.breaker);
        Self::open_in(url, options, &health)
    }

    /// Like [`open`](Self::open), with connections of its own but the health (breaker and
    /// probes) of `health`: every worker of an instance joins the instance's one group, so they
    /// and `/healthz` agree on whether the store is usable.
    pub fn open_in(url: &str, options: RedisOptions, health: &Arc<HealthGroup>) -> Result<Self, StoreError> {
        let redacted_url = url::redact(url);
        let config_err = |e: RedisError| StoreError::Config(format!("{redacted_url}: {}", describe(&e)));
        let mut cluster_nodes = None;
        let (backend, hub_client, sentinel) = match topology::parse(url, &options)? {
            Topology::Standalone(client) => {
                let pool = Pool::new(&client, &options).map_err(config_err)?;
                (Backend::pool(Some(pool)), Some(client), None)
            }
            Topology::Sentinel(spec) => {
                let watch = SentinelWatch::new(&spec, &options).map_err(config_err)?;
                (Backend::pool(None), None, Some(Arc::new(watch)))
            }
            Topology::Cluster(spec) => {
                let mut b = redis::cluster::ClusterClientBuilder::new(spec.nodes.clone())
                    .connection_timeout(options.connect_timeout)
                    .response_timeout(options.timeout.max(Duration::from_millis(1)) * 4)
                    .retries(2);
                if let Some(u) = &spec.username {
                    b = b.username(u);
                }
                if let Some(p) = &spec.password {
                    b = b.password(p);
                }
                if let Some(certs) = &spec.tls {
                    b = b.tls(redis::TlsMode::Secure).certs(certs.clone());
                }
                let client = b.build().map_err(config_err)?;
                // Cluster nodes forward PUBLISH to every node, so pub/sub may use any one of them.
                let hub_client = topology::node_client(&spec, &spec.nodes[0].addr().to_string())?;
                cluster_nodes = Some(spec);
                (Backend::cluster(client), Some(hub_client), None)
            }
        };
        let hub_target = Arc::new(parking_lot::RwLock::new(hub_client));
        let store = RedisStore {
            inner: Arc::new(Inner {
                backend: Arc::new(backend),
                sentinel,
                pubsub: pubsub::Hub::new(hub_target.clone(), options.clone()),
                hub_target,
                scripts: Scripts::new(),
                scripts_stale: Arc::new(AtomicBool::new(true)),
                batches: RateBatches::new(options.rate_batch_max),
                member: health.join(),
                health: health.clone(),
                options,
                redacted_url,
                cluster_nodes,
                readers: parking_lot::Mutex::new(Vec::new()),
            }),
        };
        tokio::spawn(run_prober(Arc::downgrade(&store.inner)));
        if let Some(watch) = &store.inner.sentinel {
            store.follow_primary();
            tokio::spawn(watch.clone().watch_switches(
                store.inner.backend.clone(),
                store.inner.hub_target.clone(),
                store.inner.options.clone(),
                store.inner.scripts_stale.clone(),
            ));
        }
        Ok(store)
    }

    /// Sentinel only: asks the sentinels for the primary again (in the background).
    fn follow_primary(&self) {
        if let Some(watch) = &self.inner.sentinel {
            watch.refresh(
                self.inner.backend.clone(),
                self.inner.hub_target.clone(),
                self.inner.options.clone(),
                self.inner.scripts_stale.clone(),
            );
        }
    }

    /// Opens and waits until the server answers (tests and `fleetgate check` use this).
    pub async fn connect(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let store = Self::open(url, options)?;
        let deadline = tokio::time::Instant::now() + store.inner.options.connect_timeout * 3;
        loop {
            match store.ping().await {
                Ok(()) => return Ok(store),
                Err(e) if tokio::time::Instant::now() >= deadline || !e.is_connectivity() => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Checks at start-up that the configuration can work: wrong credentials, a master name the
    /// sentinels do not know, or a cluster URL naming a node without cluster mode are
    /// [`StoreError::Config`] or [`StoreError::Auth`] (refuse to start); an unreachable store
    /// is a connectivity error (start anyway, under the failure policies).
    pub async fn startup_check(&self) -> Result<(), StoreError> {
        let wait = self.inner.options.connect_timeout * 2;
        let url = &self.inner.redacted_url;
        if let Some(watch) = &self.inner.sentinel {
            match tokio::time::timeout(wait, watch.resolve()).await {
                Err(_) => return Err(StoreError::Timeout(wait)),
                Ok(Err(e)) if e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel => {
                    return Err(StoreError::Config(format!(
                        "{url}: the sentinels answer but name no primary for this master; check ?master=NAME"
                    )));
                }
                Ok(Err(e)) => return Err(map_error(&e)),
                Ok(Ok(_)) => {}
            }
        }
        let probe = tokio::time::timeout(wait, self.inner.backend.probe_cluster()).await;
        if let Some(Err(e)) = probe.map_err(|_| StoreError::Timeout(wait))? {
            let text = describe(&e);
            if text.contains("cluster support disabled") {
                return Err(StoreError::Config(format!(
                    "{url}: a node is not in cluster mode: {text}"
                )));
            }
            return Err(map_error(&e));
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.ping().await {
                Ok(()) => return Ok(()),
                Err(e) if !e.is_connectivity() || tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The URL with its password hidden, for logs.
    pub fn redacted_url(&self) -> &str {
        &self.inner.redacted_url
    }

    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    /// The server calls currently go to (`host:port`, or `cluster`).
    pub fn target(&self) -> String {
        self.inner.backend.target()
    }

    /// Runs `call` on a connection under the breaker and the store timeout, mapping errors.
    /// Sentinel: a connectivity error or READONLY makes the driver ask for the primary again.
    async fn bounded<T, F, Fut>(&self, call: F) -> StoreResult<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let breaker = &self.inner.health;
        let Admission::Call(period) = breaker.admit() else {
            return Err(HealthGroup::rejection());
        };
        let backend = &self.inner.backend;
        let attempt = async {
            let conn = match backend.conn() {
                Some(c) => c,
                // Cluster still connecting or no primary known yet: wait within the timeout.
                None => backend.conn_wait(|| self.follow_primary()).await,
            };
            call(conn).await
        };
        let result = match tokio::time::timeout(self.inner.options.timeout, attempt).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(&e)),
            Err(_) => Err(StoreError::Timeout(self.inner.options.timeout)),
        };
        match &result {
            Err(err) if err.is_connectivity() => {
                self.inner.scripts_stale.store(true, Ordering::Relaxed);
                breaker.on_failure(period);
                breaker.suspect_all();
                self.follow_primary();
            }
            Err(StoreError::Server(text)) if text.contains("READONLY") => {
                breaker.on_success();
                self.follow_primary();
            }
            // Any answer, even an error reply, proves the store is reachable.
            _ => breaker.on_success(),
        }
        result
    }

    /// Whether the breaker currently refuses calls.
    pub fn breaker_open(&self) -> bool {
        self.inner.health.is_open()
    }

    /// Connects and loads the scripts now, within the connect timeout, so that the first
    /// decision does not pay for the connection inside its store timeout. An unreachable store
    /// is left to the breaker and the failure policies: this never fails.
    pub async fn warm_up(&self) {
        let inner = &self.inner;
        let backend = &inner.backend;
        let attempt = async {
            let mut conn = backend.conn_wait(|| self.follow_primary()).await;
            if matches!(conn, Conn::Single(_)) && inner.scripts_stale.swap(false, Ordering::Relaxed) {
                if let Err(e) = inner.scripts.load_pipeline().exec_async(&mut conn).await {
                    inner.scripts_stale.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            redis::cmd("PING").query_async::<Value>(&mut conn).await.map(|_| ())
        };
        if let Ok(Err(e)) | Err(e) = tokio::time::timeout(inner.options.connect_timeout, attempt)
            .await
            .map_err(|_| RedisError::from((redis::ErrorKind::Io, "timed out")))
        {
            tracing::debug!(error = %describe(&e), "store warm-up failed; decisions follow the failure policies until it answers");
        }
    }

    /// Waits until the breaker is closed, at most `bound`; returns whether it is.
    pub async fn wait_usable(&self, bound: Duration) -> bool {
        !self.inner.health.is_open() || self.inner.health.wait_closed(bound).await
    }

    /// The health group this store belongs to.
    pub fn health_group(&self) -> &Arc<HealthGroup> {
        &self.inner.health
    }

    /// PING past the breaker on every connection of this store (each of the pool's managers),
    /// so that none is left dead for a client's call to find; a connection whose first PING
    /// only found it dead is PINGed once more after a short pause (that first attempt starts
    /// the reconnection the second one uses). Returns whether some connection had to be
    /// revived (the server went away since it was last used).
    async fn ping_every(&self) -> StoreResult<bool> {
        let mut conns = self.inner.backend.all_conns();
        if conns.is_empty() {
            // Nothing connected yet (cluster connecting, no primary named): wait for one.
            let timeout = self.inner.options.timeout;
            let wait = self.inner.backend.conn_wait(|| self.follow_primary());
            conns.push(
                tokio::time::timeout(timeout, wait)
                    .await
                    .map_err(|_| StoreError::Timeout(timeout))?,
            );
        }
        let mut revived = false;
        for conn in conns {
            match self.ping_on(conn.clone()).await {
                Ok(()) => {}
                Err(e) if e.is_connectivity() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    self.ping_on(conn).await?;
                    revived = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(revived)
    }

    /// PING on `conn`, past the breaker, within the store timeout.
    async fn ping_on(&self, mut conn: Conn) -> StoreResult<()> {
        let ping = redis::cmd("PING");
        let attempt = ping.query_async::<Value>(&mut conn);
        match tokio::time::timeout(self.inner.options.timeout, attempt).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(map_error(&e)),
            Err(_) => Err(StoreError::Timeout(self.inner.options.timeout)),
        }
    }

    async fn query(&self, cmd: &Cmd) -> StoreResult<Value> {
        self.bounded(|mut conn| async move { cmd.query_async::<Value>(&mut conn).await })
            .await
    }

    /// EVALSHA within one timeout: scripts are loaded first on a fresh connection to one
    /// server; a NOSCRIPT answer (restarted server, new cluster node) is retried as EVAL.
    async fn eval(&self, script: &scripts::LuaScript, keys: &[&str], args: &[ScriptArg<'_>]) -> StoreResult<Value> {
        let inner = &self.inner;
        // Sized up front: building a command argument by argument regrows its buffers.
        let data = 7
            + script.hash().len()
            + 2
            + keys.iter().map(|k| k.len()).sum::<usize>()
            + args.iter().map(ScriptArg::len).sum::<usize>();
        let mut cmd = Cmd::with_capacity(3 + keys.len() + args.len(), data);
        cmd.arg("EVALSHA")
            .arg(script.hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args);
        self.bounded(|mut conn| async move {
            // A plain load first: the read-modify-write only when a reload is due.
            let stale =
                || inner.scripts_stale.load(Ordering::Relaxed) && inner.scripts_stale.swap(false, Ordering::Relaxed);
            if matches!(conn, Conn::Single(_)) && stale() {
                if let Err(e) = inner.scripts.load_pipeline().exec_async(&mut conn).await {
                    inner.scripts_stale.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            match cmd.query_async::<Value>(&mut conn).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    let mut full = redis::cmd("EVAL");
                    full.arg(script.source).arg(keys.len()).arg(keys).arg(args);
                    full.query_async::<Value>(&mut conn).await
                }
                other => other,
            }
        })
        .await
    }

    /// A claim, then, when it was won, `WAIT replicas timeout` (`store.markers_wait_replicas`):
    /// a won claim that fewer replicas acknowledged fails (and is taken back, best effort), so
    /// that a failover cannot lose a marker the gateway acted on. A claim that found a holder
    /// wrote nothing and waits for nothing (a replay is served even with every replica down),
    /// which is why the WAIT is a second call rather than part of the claim's pipeline.
    async fn claim_replicated(
        &self,
        key: &StoreKey,
        value: Bytes,
        ttl: Duration,
        wait: WaitReplicas,
    ) -> StoreResult<ClaimOutcome> {
        let args = [ScriptArg::Bytes(&value), ScriptArg::Int(ms(ttl))];
        let outcome = claim_outcome(self.eval(&self.inner.scripts.claim, &[key.as_str()], &args).await?)?;
        if outcome != ClaimOutcome::Won {
            return Ok(outcome);
        }
        let acks = self
            .query(redis::cmd("WAIT").arg(wait.replicas).arg(ms(wait.timeout)))
            .await
            .and_then(|v| redis::from_redis_value::<i64>(v).map_err(|e| StoreError::Protocol(e.to_string())));
        let failure = match acks {
            Ok(n) if n >= i64::from(wait.replicas) => return Ok(outcome),
            Ok(n) => StoreError::Unavailable(format!(
                "{n} of {} replicas acknowledged the claim within {} ms (store.markers_wait_replicas)",
                wait.replicas,
                wait.timeout.as_millis()
            )),
            Err(e) => e,
        };
        let _ = self.release_claim(key, &value).await;
        Err(failure)
    }

    /// Deletes every key under `prefix:` (SCAN and UNLINK in batches of 1000, on every
    /// primary of a cluster), never FLUSHDB. Returns how many keys were deleted.
    /// Dangerous: meant for `store.flush_on_startup` in test and staging deployments.
    pub async fn flush_prefix(&self, prefix: &str) -> StoreResult<u64> {
        crate::keyspace::Keyspace::new(prefix).map_err(|e| StoreError::Config(e.to_string()))?;
        let pattern = format!("{prefix}:*");
        let step = Duration::from_secs(5).max(self.inner.options.timeout);
        let mut deleted = 0;
        match &self.inner.cluster_nodes {
            None => {
                let conn = tokio::time::timeout(step, self.inner.backend.conn_wait(|| self.follow_primary()))
                    .await
                    .map_err(|_| StoreError::Timeout(step))?;
                deleted += scan_unlink(conn, &pattern, step).await?;
            }
            Some(spec) => {
                let Some(conn) = self.inner.backend.conn() else {
                    return Err(StoreError::Unavailable("cluster not connected yet".into()));
                };
                let mut c = conn;
                let nodes: String = tokio::time::timeout(step, redis::cmd("CLUSTER").arg("NODES").query_async(&mut c))
                    .await
                    .map_err(|_| StoreError::Timeout(step))?
                    .map_err(|e| map_error(&e))?;
                for addr in cluster_primaries(&nodes) {
                    let client = topology::node_client(spec, &addr)?;
                    let pool = Pool::new(&client, &self.inner.options).map_err(|e| map_error(&e))?;
                    let node = Arc::new(Backend::pool(Some(pool)));
                    let conn = node.conn().expect("a pool always has a connection");
                    deleted += scan_unlink(conn, &pattern, step).await?;
                }
            }
        }
        Ok(deleted)
    }

    /// PING within the timeout.
    pub async fn ping(&self) -> StoreResult<()> {
        self.query(&redis::cmd("PING")).await.map(|_| ())
    }
}

/// The `host:port` of every primary in a `CLUSTER NODES` reply.
fn cluster_primaries(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, flags) = (fields.get(1)?, fields.get(2)?);
            let primary = flags.split(',').any(|f| f == "master") && !flags.contains("fail");
            primary.then(|| addr.split('@').next().unwrap_or(addr).to_string())
        })
        .collect()
}

async fn scan_unlink(mut conn: Conn, pattern: &str, step: Duration) -> StoreResult<u64> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = tokio::time::timeout(
            step,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Timeout(step))?
        .map_err(|e| map_error(&e))?;
        if !keys.is_empty() {
            // One UNLINK per key, pipelined: keys of one batch may live in different cluster slots.
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("UNLINK").arg(k);
            }
            let counts: Vec<u64> = tokio::time::timeout(step, pipe.query_async(&mut conn))
                .await
                .map_err(|_| StoreError::Timeout(step))?
                .map_err(|e| map_error(&e))?;
            deleted += counts.iter().sum::<u64>();
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// An argument of a script call: a number or raw bytes, written straight into the command.
/// The claim script's reply: `{1}` or `{0, held value}`.
fn claim_outcome(reply: Value) -> StoreResult<ClaimOutcome> {
    match reply {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(1)] => Ok(ClaimOutcome::Won),
            [Value::Int(0), Value::BulkString(held)] => Ok(ClaimOutcome::Held(Bytes::from(held.clone()))),
            other => Err(StoreError::Protocol(format!("claim reply of {} items", other.len()))),
        },
        _ => Err(StoreError::Protocol("claim reply is not an array".into())),
    }
}

enum ScriptArg<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

impl ScriptArg<'_> {
    /// Bytes the argument takes in the command (at most 20 digits for a number).
    fn len(&self) -> usize {
        match self {
            ScriptArg::Int(_) => 20,
            ScriptArg::Bytes(b) => b.len(),
        }
    }
}

impl redis::ToRedisArgs for ScriptArg<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        match self {
            ScriptArg::Int(n) => out.write_arg(itoa::Buffer::new().format(*n).as_bytes()),
            ScriptArg::Bytes(b) => out.write_arg(b),
        }
    }
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// The first `N` integers of a script's array reply, read in place: the scripts answer with
/// arrays of integers, so the common case allocates nothing (other shapes go through
/// `FromRedisValue`, which says precisely what did not fit).
fn ints<const N: usize>(v: Value) -> StoreResult<[i64; N]> {
    let protocol = |e: redis::ParsingError| StoreError::Protocol(e.to_string());
    let items = match v {
        Value::Array(items) => items,
        other => {
            let all: Vec<i64> = redis::from_redis_value(other).map_err(protocol)?;
            return Err(StoreError::Protocol(format!(
                "expected {N} integers, got {}",
                all.len()
            )));
        }
    };
    if items.len() < N {
        return Err(StoreError::Protocol(format!(
            "expected {N} integers, got {}",
            items.len()
        )));
    }
    let mut out = [0i64; N];
    for (o, item) in out.iter_mut().zip(items) {
        *o = match item {
            Value::Int(n) => n,
            other => redis::from_redis_value(other).map_err(protocol)?,
        };
    }
    Ok(out)
}

/// A rate script's reply, the bulk string `"allowed remaining reset_us retry_us now_us"`
/// (`rate_reply` in now.lua), as a decision (with its refund receipt when it charged
/// something). Parsed in place: no array of values to build.
fn decision(v: Value, limit: u64, cost: u64) -> StoreResult<RateDecision> {
    Ok(decision_of(rate_reply(&v)?, limit, cost))
}

/// The decision the numbers `allowed remaining reset_us retry_us now_us` describe.
fn decision_of(r: [i64; 5], limit: u64, cost: u64) -> RateDecision {
    let us = |x: i64| Duration::from_micros(x.max(0) as u64);
    let allowed = r[0] == 1;
    RateDecision {
        allowed,
        limit,
        remaining: r[1].max(0) as u64,
        reset_after: us(r[2]),
        retry_after: us(r[3]),
        charge: (allowed && cost > 0).then(|| RateCharge {
            at_us: r[4].max(0) as u64,
            cost,
        }),
    }
}

/// Fills `out` with the space-separated whole numbers of a bulk-string reply: exactly
/// `out.len()` of them, or `None`. Parsed in place: no array of values to build.
fn whole_numbers<T: std::str::FromStr>(v: &Value, out: &mut [T]) -> Option<()> {
    let Value::BulkString(bytes) = v else {
        return None;
    };
    let mut fields = bytes.split(|b| *b == b' ');
    for o in out.iter_mut() {
        *o = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    }
    fields.next().is_none().then_some(())
}

/// A gcra or fixed_window batch's reply, `"now_us state"`: the instant and the state (the TAT;
/// the current window's count) the batch started from.
fn batch_start(v: &Value) -> StoreResult<[u64; 2]> {
    let mut out = [0u64; 2];
    whole_numbers(v, &mut out)
        .ok_or_else(|| StoreError::Protocol(format!("expected a batch reply of 2 whole numbers, got {v:?}")))?;
    Ok(out)
}

/// A sliding_window batch's reply: one decision per cost, in order (`rate_reply`s joined by spaces).
fn decisions(v: &Value, limit: u64, costs: &[u64]) -> StoreResult<Vec<RateDecision>> {
    let mut numbers = vec![0i64; 5 * costs.len()];
    whole_numbers(v, &mut numbers).ok_or_else(|| {
        StoreError::Protocol(format!(
            "expected {} rate replies of 5 whole numbers, got {v:?}",
            costs.len()
        ))
    })?;
    Ok(numbers
        .chunks_exact(5)
        .zip(costs)
        .map(|(r, &cost)| decision_of([r[0], r[1], r[2], r[3], r[4]], limit, cost))
        .collect())
}

/// The five whole numbers of a rate script's reply.
fn rate_reply(v: &Value) -> StoreResult<[i64; 5]> {
    let mut out = [0i64; 5];
    whole_numbers(v, &mut out)
        .ok_or_else(|| StoreError::Protocol(format!("expected a rate reply of 5 whole numbers, got {v:?}")))?;
    Ok(out)
}

/// The reserve and give-back scripts' algorithm name and parameter.
fn lease_params(limit: &RateLimit) -> (&'static str, u64) {
    match limit.algorithm() {
        Algorithm::Gcra => ("gcra", limit.interval_us()),
        Algorithm::FixedWindow => ("fixed_window", limit.period_us()),
        Algorithm::SlidingWindow => ("sliding_window", limit.period_us()),
    }
}

/// The reserve script's reply `{granted, lease_until_us, remaining, reset_us, now_us, mark}`.
fn reservation(v: Value, limit: u64) -> StoreResult<Reservation> {
    let r = ints::<6>(v)?;
    let n = |x: i64| x.max(0) as u64;
    let granted = n(r[0]);
    Ok(Reservation {
        granted,
        lease_until_us: n(r[1]),
        at_us: n(r[4]),
        remaining: n(r[2]),
        limit,
        reset_after: Duration::from_micros(n(r[3])),
        receipt: (granted > 0).then_some(LeaseReceipt { granted, mark: n(r[5]) }),
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
    if e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(e.code(), Some("WRONGPASS" | "NOAUTH")) {
        StoreError::Auth(text)
    } else if e.is_timeout() {
        StoreError::Timeout(Duration::ZERO)
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        StoreError::Unavailable(text)
    } else if e.code() == Some("WRONGTYPE") || text.contains("WRONGTYPE") {
        StoreError::WrongType(text)
    } else {
        StoreError::Server(text)
    }
}

impl RedisStore {
    /// One decision, one call.
    async fn rate_one(&self, key: &StoreKey, limit: &RateLimit, cost: u64) -> StoreResult<RateDecision> {
        let s = &self.inner.scripts;
        let reply = match limit.algorithm() {
            Algorithm::Gcra => {
                let args = [
                    ScriptArg::Int(limit.interval_us()),
                    ScriptArg::Int(limit.capacity()),
                    ScriptArg::Int(cost),
                    ScriptArg::Int(limit.period_us()),
                ];
                self.eval(&s.gcra, &[key.as_str()], &args).await?
            }
            Algorithm::SlidingWindow => {
                let total = format!("{key}:n");
                let args = [
                    ScriptArg::Int(limit.period_us()),
                    ScriptArg::Int(limit.capacity()),
                    ScriptArg::Int(cost),
                ];
                self.eval(&s.sliding_window, &[key.as_str(), &total], &args).await?
            }
            Algorithm::FixedWindow => {
                let args = [
                    ScriptArg::Int(limit.period_us()),
                    ScriptArg::Int(limit.capacity()),
                    ScriptArg::Int(cost),
                ];
                self.eval(&s.fixed_window, &[key.as_str()], &args).await?
            }
        };
        decision(reply, limit.capacity(), cost)
    }

    /// Several decisions on one key in one call, in the order of `costs` (the hot-key batch).
    async fn rate_many(&self, key: &StoreKey, limit: &RateLimit, costs: &[u64]) -> StoreResult<Vec<RateDecision>> {
        let s = &self.inner.scripts;
        let mut args = match limit.algorithm() {
            Algorithm::Gcra => vec![
                ScriptArg::Int(limit.interval_us()),
                ScriptArg::Int(limit.capacity()),
                ScriptArg::Int(limit.period_us()),
            ],
            Algorithm::SlidingWindow | Algorithm::FixedWindow => {
                vec![ScriptArg::Int(limit.period_us()), ScriptArg::Int(limit.capacity())]
            }
        };
        args.push(ScriptArg::Bytes(b"-"));
        args.extend(costs.iter().map(|c| ScriptArg::Int(*c)));
        // gcra and fixed_window answer with the instant and the state the batch started from;
        // each decision is the pure function's on it (what the script recorded, as
        // tests/batch_differential.rs checks). sliding_window answers every decision.
        match limit.algorithm() {
            Algorithm::Gcra => {
                let reply = self.eval(&s.gcra_batch, &[key.as_str()], &args).await?;
                let [now, tat] = batch_start(&reply)?;
                Ok(crate::algo::gcra::decide_many(Some(tat), now, limit, costs))
            }
            Algorithm::FixedWindow => {
                let reply = self.eval(&s.fixed_window_batch, &[key.as_str()], &args).await?;
                let [now, count] = batch_start(&reply)?;
                let state = crate::algo::fixed_window::WindowCount {
                    window: now / limit.period_us(),
                    count,
                };
                Ok(crate::algo::fixed_window::decide_many(Some(state), now, limit, costs))
            }
            Algorithm::SlidingWindow => {
                let total = format!("{key}:n");
                let reply = self
                    .eval(&s.sliding_window_batch, &[key.as_str(), &total], &args)
                    .await?;
                decisions(&reply, limit.capacity(), costs)
            }
        }
    }
}

/// The turn on a key, held by the caller whose call is in flight: when it is done (or its
/// future is dropped), what queued meanwhile goes as one call, from a task of its own.
struct Lead<'a> {
    store: &'a RedisStore,
    key: &'a StoreKey,
    limit: RateLimit,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let batch = self.store.inner.batches.next(self.key);
        if batch.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(send_batches(self.store.clone(), self.key.clone(), self.limit, batch));
            }
            Err(_) => {
                drop(batch);
                Abandon::queue(self.store, self.key);
            }
        }
    }
}

/// Held by the task sending a key's batches: should that task be dropped before the queue is
/// empty (the runtime shutting down), whoever still waits is answered, and the key freed.
struct Abandon {
    store: RedisStore,
    key: StoreKey,
    done: bool,
}

impl Abandon {
    /// The queue is empty and the key free: nothing to answer.
    fn disarm(&mut self) {
        self.done = true;
    }

    fn queue(store: &RedisStore, key: &StoreKey) {
        for w in store.inner.batches.abandon(key) {
            w.answer(Err(rate_batch::abandoned()));
        }
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.done {
            Abandon::queue(&self.store, &self.key);
        }
    }
}

/// Sends `batch`, then whatever queued on the key meanwhile, until nothing is left.
fn send_batches(
    store: RedisStore,
    key: StoreKey,
    limit: RateLimit,
    batch: Vec<Waiter>,
) -> impl std::future::Future<Output = ()> + Send {
    let mut held = Abandon {
        store,
        key,
        done: false,
    };
    async move {
        let mut batch = batch;
        let mut costs = Vec::with_capacity(batch.len());
        loop {
            costs.clear();
            costs.extend(batch.iter().map(|w| w.cost));
            match held.store.rate_many(&held.key, &limit, &costs).await {
                Ok(decisions) => {
                    for (w, d) in batch.drain(..).zip(decisions) {
                        w.answer(Ok(d));
                    }
                }
                Err(e) => {
                    for w in batch.drain(..) {
                        w.answer(Err(e.clone()));
                    }
                }
            }
            batch = held.store.inner.batches.next(&held.key);
            if batch.is_empty() {
                held.disarm();
                return;
            }
        }
    }
}

impl StoreDriver for RedisStore {
    /// One call per decision, but for a hot key: decisions that arrive while a call on their
    /// key is in flight go together in the next (`rate_batch.rs`).
    async fn rate(&self, key: &StoreKey, limit: &RateLimit, cost: u64) -> StoreResult<RateDecision> {
        let batches = &self.inner.batches;
        if !batches.enabled() {
            return self.rate_one(key, limit, cost).await;
        }
        match batches.join(key, limit, cost) {
            Turn::Alone => self.rate_one(key, limit, cost).await,
            Turn::Wait(reply) => reply.await.unwrap_or_else(|_| Err(rate_batch::abandoned())),
            Turn::Lead => {
                let _lead = Lead {
                    store: self,
                    key,
                    limit: *limit,
                };
                self.rate_one(key, limit, cost).await
            }
        }
    }

    async fn refund(&self, key: &StoreKey, limit: &RateLimit, charge: &RateCharge) -> StoreResult<bool> {
        let (algorithm, param) = match limit.algorithm() {
            Algorithm::Gcra => ("gcra", limit.interval_us()),
            Algorithm::SlidingWindow => ("sliding_window", limit.period_us()),
            Algorithm::FixedWindow => ("fixed_window", limit.period_us()),
        };
        let args = [
            ScriptArg::Bytes(algorithm.as_bytes()),
            ScriptArg::Int(param),
            ScriptArg::Int(charge.cost),
            ScriptArg::Int(charge.at_us),
        ];
        let total = format!("{key}:n");
        let keys: &[&str] = match limit.algorithm() {
            Algorithm::SlidingWindow => &[key.as_str(), &total],
            _ => &[key.as_str()],
        };
        let v = self.eval(&self.inner.scripts.refund, keys, &args).await?;
        Ok(redis::from_redis_value::<i64>(v).map_err(|e| StoreError::Protocol(e.to_string()))? == 1)
    }

    async fn reserve(&self, key: &StoreKey, limit: &RateLimit, want: u64, lease: Duration) -> StoreResult<Reservation> {
        let (algorithm, param) = lease_params(limit);
        let lease_us = lease.as_micros().min(u128::from(crate::rate::MAX_CAPACITY_US)) as u64;
        let args = [
            ScriptArg::Bytes(algorithm.as_bytes()),
            ScriptArg::Int(param),
            ScriptArg::Int(limit.capacity()),
            ScriptArg::Int(want),
            ScriptArg::Int(lease_us),
        ];
        let total;
        let keys: &[&str] = match limit.algorithm() {
            Algorithm::SlidingWindow => {
                total = format!("{key}:n");
                &[key.as_str(), &total]
            }
            _ => &[key.as_str()],
        };
        let reply = self.eval(&self.inner.scripts.reserve, keys, &args).await?;
        reservation(reply, limit.capacity())
    }

    async fn give_back(
        &self,
        key: &StoreKey,
        limit: &RateLimit,
        receipt: &LeaseReceipt,
        unused: u64,
    ) -> StoreResult<bool> {
        let (algorithm, param) = lease_params(limit);
        let args = [
            ScriptArg::Bytes(algorithm.as_bytes()),
            ScriptArg::Int(param),
            ScriptArg::Int(unused),
            ScriptArg::Int(receipt.granted),
            ScriptArg::Int(receipt.mark),
        ];
        let total;
        let keys: &[&str] = match limit.algorithm() {
            Algorithm::SlidingWindow => {
                total = format!("{key}:n");
                &[key.as_str(), &total]
            }
            _ => &[key.as_str()],
        };
        let v = self.eval(&self.inner.scripts.give_back, keys, &args).await?;
        Ok(redis::from_redis_value::<i64>(v).map_err(|e| StoreError::Protocol(e.to_string()))? == 1)
    }

    async fn acquire_permit(
        &self,
        key: &StoreKey,
        permit: &str,
        max: u64,
        lease: Duration,
    ) -> StoreResult<PermitDecision> {
        let args = [
            ScriptArg::Bytes(permit.as_bytes()),
            ScriptArg::Int(max),
            ScriptArg::Int(lease.as_micros() as u64),
        ];
        let r = ints::<2>(
            self.eval(&self.inner.scripts.acquire_permit, &[key.as_str()], &args)
                .await?,
        )?;
        Ok(PermitDecision {
            granted: r[0] == 1,
            in_use: r[1].max(0) as u64,
            max,
        })
    }

    async fn release_permit(&self, key: &StoreKey, permit: &str) -> StoreResult<bool> {
        let args = [ScriptArg::Bytes(permit.as_bytes())];
        let v = self
            .eval(&self.inner.scripts.release_permit, &[key.as_str()], &args)
            .await?;
        Ok(redis::from_redis_value::<i64>(v).map_err(|e| StoreError::Protocol(e.to_string()))? == 1)
    }

    async fn claim(&self, key: &StoreKey, value: Bytes, ttl: Duration) -> StoreResult<ClaimOutcome> {
        if let Some(wait) = self.inner.options.markers_wait_replicas {
            return self.claim_replicated(key, value, ttl, wait).await;
        }
        let args = [ScriptArg::Bytes(&value), ScriptArg::Int(ms(ttl))];
        claim_outcome(self.eval(&self.inner.scripts.claim, &[key.as_str()], &args).await?)
    }

    async fn complete_claim(&self, key: &StoreKey, token: &[u8], value: Bytes, ttl: Duration) -> StoreResult<bool> {
        let args = [
            ScriptArg::Bytes(token),
            ScriptArg::Bytes(&value),
            ScriptArg::Int(ms(ttl)),
        ];
        let v = self
            .eval(&self.inner.scripts.complete_claim, &[key.as_str()], &args)
            .await?;
        Ok(redis::from_redis_value::<i64>(v).map_err(|e| StoreError::Protocol(e.to_string()))? == 1)
    }

    /// The unlock script: delete only if the key still holds this value.
    async fn release_claim(&self, key: &StoreKey, token: &[u8]) -> StoreResult<bool> {
        let args = [ScriptArg::Bytes(token)];
        let v = self.eval(&self.inner.scripts.unlock, &[key.as_str()], &args).await?;
        Ok(redis::from_redis_value::<i64>(v).map_err(|e| StoreError::Protocol(e.to_string()))? == 1)
    }

    async fn get(&self, key: &StoreKey) -> StoreResult<Option<Bytes>> {
        match self.query(redis::cmd("GET").arg(key.as_str())).await? {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(Bytes::from(b))),
            _ => Err(StoreError::Protocol("GET reply is not a string".into())),
        }
    }

    /// GETEX (Redis 6.2 and later; Valkey and Dragonfly have it too): one command.
    async fn get_extend(&self, key: &StoreKey, ttl: Duration) -> StoreResult<Option<Bytes>> {
        match self
            .query(redis::cmd("GETEX").arg(key.as_str()).arg("PX").arg(ms(ttl)))
            .await?
        {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(Bytes::from(b))),
            _ => Err(StoreError::Protocol("GETEX reply is not a string".into())),
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

    async fn lock(&self, key: &StoreKey, owner: &str, ttl: Duration) -> StoreResult<Option<LockGrant>> {
        let fence = format!("{key}:fence");
        let args = [ScriptArg::Bytes(owner.as_bytes()), ScriptArg::Int(ms(ttl))];
        let r = ints::<2>(
            self.eval(&self.inner.scripts.lock, &[key.as_str(), &fence], &args)
                .await?,
        )?;
        Ok((r[0] == 1).then_some(LockGrant {
            fence: r[1].max(0) as u64,
        }))
    }

    async fn unlock(&self, key: &StoreKey, owner: &str) -> StoreResult<bool> {
        let args = [ScriptArg::Bytes(owner.as_bytes())];
        let v = self.eval(&self.inner.scripts.unlock, &[key.as_str()], &args).await?;
        Ok(redis::from_redis_value::<i64>(v).map_err(|e| StoreError::Protocol(e.to_string()))? == 1)
    }

    async fn publish(&self, channel: &str, payload: Bytes) -> StoreResult<()> {
        self.query(redis::cmd("PUBLISH").arg(channel).arg(payload.as_ref()))
            .await
            .map(|_| ())
    }

    async fn subscribe(&self, channel: &str) -> StoreResult<Subscription> {
        self.inner
            .pubsub
            .subscribe(channel, self.inner.options.timeout.max(Duration::from_secs(1)))
            .await
    }

    async fn stream_append(&self, key: &StoreKey, payloads: &[Bytes], max_len: u64) -> StoreResult<Vec<StreamId>> {
        self.xadd_batch(key, payloads, max_len).await
    }

    async fn stream_read(
        &self,
        key: &StoreKey,
        from: StreamFrom,
        count: usize,
        block: Duration,
    ) -> StoreResult<StreamRead> {
        self.xread(key, from, count, block).await
    }

    /// The instance's one answer. Closed breaker: PING this store's connection (a failure
    /// opens the breaker for every worker). Open breaker: ask every member to probe now and
    /// wait briefly for the breaker to close, which happens only once every worker's
    /// connection has answered; so `ok` means the next request on any worker uses the store.
    async fn health(&self) -> StoreHealth {
        let group = &self.inner.health;
        let bound = (self.inner.options.timeout * 4).max(Duration::from_millis(200));
        if !group.is_open() {
            let period = group.period();
            return match self.ping_every().await {
                Ok(revived) => {
                    // A dead connection here means the server went away: the workers'
                    // connections are as dead, so each must be proven before `ok`.
                    if revived {
                        group.suspect_all();
                    }
                    group.revived(&self.inner.member);
                    if group.wait_revived(bound).await {
                        StoreHealth::Ok
                    } else {
                        StoreHealth::Down
                    }
                }
                Err(_) => {
                    group.trip(period);
                    StoreHealth::Down
                }
            };
        }
        group.probe_now();
        if group.wait_closed(bound).await {
            StoreHealth::Ok
        } else {
            StoreHealth::Down
        }
    }
}

/// The prober of one member (see [`HealthGroup`]): while the breaker is open, PINGs this
/// store's own connections (on the runtime that drives them) after the group's backoff, or at
/// once when another member asks; while the breaker is closed but this member is suspect, PINGs
/// them until they answer (reviving dead connections before a client's call finds them). Ends
/// when the store is dropped.
async fn run_prober(inner: std::sync::Weak<Inner>) {
    enum Probe {
        Open(u64),
        Revive,
    }
    let Some(mut rx) = inner.upgrade().map(|i| i.health.watch()) else {
        return;
    };
    let mut revive_backoff = None;
    loop {
        // Wait for an opening this member has not answered yet, or for suspicion.
        let probe = {
            let Some(i) = inner.upgrade() else { return };
            let state = *rx.borrow_and_update();
            if state.open && i.member_answered() < state.generation {
                Some(Probe::Open(state.generation))
            } else if !state.open && i.member.is_suspect() {
                Some(Probe::Revive)
            } else {
                None
            }
        };
        let Some(probe) = probe else {
            revive_backoff = None;
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let Some(i) = inner.upgrade() else { return };
        let store = RedisStore { inner: i };
        let group = &store.inner.health;
        let backoff = match probe {
            Probe::Open(generation) => {
                match store.ping_every().await {
                    Ok(_) => group.probe_answered(&store.inner.member, generation),
                    Err(_) => group.probe_failed(),
                }
                group.backoff()
            }
            Probe::Revive => {
                let (min, max) = group.revive_backoff();
                match store.ping_every().await {
                    Ok(_) => {
                        group.revived(&store.inner.member);
                        revive_backoff = None;
                        Duration::ZERO
                    }
                    Err(_) => {
                        let next = revive_backoff.map_or(min, |b: Duration| (b * 2).min(max));
                        revive_backoff = Some(next);
                        next
                    }
                }
            }
        };
        drop(store);
        // Probe again after the backoff, or at once when asked (or when the state changes).
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

impl Inner {
    fn member_answered(&self) -> u64 {
        self.member.answered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_replies_parse_in_place_and_bad_ones_are_protocol_errors() {
        let reply = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let d = decision(reply("1 7 250000 0 1700000000000001"), 10, 2).unwrap();
        assert!(d.allowed);
        assert_eq!(
            (d.remaining, d.reset_after.as_micros(), d.retry_after.as_micros()),
            (7, 250_000, 0)
        );
        assert_eq!(
            d.charge,
            Some(RateCharge {
                at_us: 1_700_000_000_000_001,
                cost: 2
            })
        );
        let d = decision(reply("0 0 100 -5 1"), 10, 1).unwrap();
        assert!(!d.allowed && d.charge.is_none() && d.retry_after.is_zero());
        for bad in [
            reply("1 2 3 4"),
            reply("1 2 3 4 5 6"),
            reply("1 2 x 4 5"),
            reply(""),
            Value::Int(1),
        ] {
            let err = decision(bad.clone(), 10, 1).unwrap_err();
            assert!(
                matches!(&err, StoreError::Protocol(m) if m.contains("5 whole numbers")),
                "{bad:?}: {err:?}"
            );
        }
    }
}
