//! Connections behind the driver: a swappable pool of multiplexed `ConnectionManager`s (one
//! server; Sentinel swaps it on failover), or one multiplexed cluster connection (slot-aware,
//! MOVED/ASK and topology refresh handled by redis-rs), connected lazily.

use super::RedisOptions;
use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// One connection handle for one call.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A pool of connection managers to one server.
pub(super) struct Pool {
    managers: Vec<ConnectionManager>,
    /// The server this pool talks to (for logs and failover comparisons).
    pub target: String,
}

impl Pool {
    /// No response timeout of redis-rs's own: every call on these connections is bounded by
    /// the driver (`tokio::time::timeout` around it: the store timeout, the connect timeout for
    /// the warm-up, a step bound for flushes), which always fired first (redis-rs's was 4x the
    /// store timeout) and which drops the call, and its timer, with it. A response timeout
    /// never made redis-rs reconnect either (a timed-out call is "retry immediately", not a
    /// dropped connection), so one timer per call does what two did.
    pub fn new(client: &redis::Client, options: &RedisOptions) -> redis::RedisResult<Pool> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(None)
            .set_min_delay(options.reconnect_min)
            .set_max_delay(options.reconnect_max)
            .set_number_of_retries(1);
        let managers = (0..options.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            managers,
            target: client.get_connection_info().addr().to_string(),
        })
    }
}

pub(super) enum BackendKind {
    /// `None` until a Sentinel named the primary.
    Pool {
        pool: RwLock<Option<Arc<Pool>>>,
        next: AtomicUsize,
    },
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        conn: RwLock<Option<ClusterConnection>>,
        connecting: AtomicBool,
    },
}

pub(super) struct Backend {
    kind: BackendKind,
    /// Woken when a connection becomes available (cluster connected, primary found).
    ready: tokio::sync::Notify,
}

impl Backend {
    pub fn pool(pool: Option<Pool>) -> Backend {
        Backend::new(BackendKind::Pool {
            pool: RwLock::new(pool.map(Arc::new)),
            next: AtomicUsize::new(0),
        })
    }

    pub fn cluster(client: redis::cluster::ClusterClient) -> Backend {
        Backend::new(BackendKind::Cluster {
            client: Box::new(client),
            conn: RwLock::new(None),
            connecting: AtomicBool::new(false),
        })
    }

    fn new(kind: BackendKind) -> Backend {
        Backend {
            kind,
            ready: tokio::sync::Notify::new(),
        }
    }

    /// A connection for one call, or `None` while a cluster connection is being made or no
    /// primary is known yet.
    pub fn conn(self: &Arc<Self>) -> Option<Conn> {
        match &self.kind {
            BackendKind::Pool { pool, next } => {
                let pool = pool.read();
                let pool = pool.as_ref()?;
                let i = next.fetch_add(1, Ordering::Relaxed) % pool.managers.len();
                Some(Conn::Single(pool.managers[i].clone()))
            }
            BackendKind::Cluster { conn, connecting, .. } => {
                if let Some(c) = conn.read().as_ref() {
                    return Some(Conn::Cluster(c.clone()));
                }
                if !connecting.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move { me.connect_cluster().await });
                }
                None
            }
        }
    }

    /// Every connection a call could be given now (each of the pool's managers, or the one
    /// cluster connection): what a probe must prove, not just the next one in turn. Empty while
    /// no connection exists yet.
    pub fn all_conns(self: &Arc<Self>) -> Vec<Conn> {
        match &self.kind {
            BackendKind::Pool { pool, .. } => pool
                .read()
                .as_ref()
                .map(|p| p.managers.iter().cloned().map(Conn::Single).collect())
                .unwrap_or_default(),
            BackendKind::Cluster { .. } => self.conn().into_iter().collect(),
        }
    }

    /// Like [`conn`](Self::conn), but waits for a connection to appear (the caller bounds it).
    pub async fn conn_wait(self: &Arc<Self>, on_missing: impl Fn()) -> Conn {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = self.conn() {
                return c;
            }
            on_missing();
            notified.await;
        }
    }

    async fn connect_cluster(self: Arc<Self>) {
        let BackendKind::Cluster {
            client,
            conn,
            connecting,
        } = &self.kind
        else {
            return;
        };
        match client.get_async_connection().await {
            Ok(c) => {
                *conn.write() = Some(c);
                self.ready.notify_waiters();
                tracing::info!("connected to the Redis cluster");
            }
            Err(e) => {
                tracing::warn!(error = %super::describe(&e), "Redis cluster connection failed; retrying on the next call")
            }
        }
        connecting.store(false, Ordering::Release);
    }

    /// Cluster only: connects once now and reports the outcome (start-up checks).
    pub async fn probe_cluster(&self) -> Option<redis::RedisResult<()>> {
        match &self.kind {
            BackendKind::Cluster { client, .. } => Some(client.get_async_connection().await.map(|_| ())),
            BackendKind::Pool { .. } => None,
        }
    }

    /// Replaces the pool (Sentinel failover). Returns the old target.
    pub fn swap_pool(&self, new: Pool) -> Option<String> {
        match &self.kind {
            BackendKind::Pool { pool, .. } => {
                let old = pool.write().replace(Arc::new(new));
                self.ready.notify_waiters();
                old.map(|p| p.target.clone())
            }
            BackendKind::Cluster { .. } => None,
        }
    }

    pub fn target(&self) -> String {
        match &self.kind {
            BackendKind::Pool { pool, .. } => pool.read().as_ref().map(|p| p.target.clone()).unwrap_or_default(),
            BackendKind::Cluster { .. } => "cluster".into(),
        }
    }
}
