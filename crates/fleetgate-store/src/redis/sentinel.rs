//! Following a Sentinel-managed primary: ask the sentinels for it at start, again when a call
//! fails on the connection or answers READONLY (the old primary was demoted), and whenever a
//! sentinel announces `+switch-master`. A changed address swaps the connection pool and the
//! pub/sub target; calls in between fail fast under the failure policies.

use super::conn::{Backend, Pool};
use super::topology::SentinelSpec;
use super::RedisOptions;
use futures_util::StreamExt;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::TlsMode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Mutex;

pub(super) struct SentinelWatch {
    client: Mutex<SentinelClient>,
    spec_sentinels: Vec<redis::ConnectionAddr>,
    sentinel_auth: (Option<String>, Option<String>),
    tls: Option<redis::TlsCertificates>,
    master: String,
    refreshing: AtomicBool,
}

impl SentinelWatch {
    pub fn new(spec: &SentinelSpec, options: &RedisOptions) -> redis::RedisResult<SentinelWatch> {
        let mut b = SentinelClientBuilder::new(spec.sentinels.clone(), &spec.master, SentinelServerType::Master)?
            .set_client_to_redis_db(spec.db);
        if let Some(u) = &spec.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &spec.password {
            b = b.set_client_to_redis_password(p);
        }
        if let Some(u) = &options.sentinel_username {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = &options.sentinel_password {
            b = b.set_client_to_sentinel_password(p);
        }
        if let Some(certs) = &spec.tls {
            b = b
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_certificates(certs.clone());
        }
        Ok(SentinelWatch {
            client: Mutex::new(b.build()?),
            spec_sentinels: spec.sentinels.clone(),
            sentinel_auth: (options.sentinel_username.clone(), options.sentinel_password.clone()),
            tls: spec.tls.clone(),
            master: spec.master.clone(),
            refreshing: AtomicBool::new(false),
        })
    }

    /// Asks the sentinels for the current primary.
    pub async fn resolve(&self) -> redis::RedisResult<redis::Client> {
        self.client.lock().await.async_get_client().await
    }

    /// Re-resolves in the background (at most one at a time); swaps pool and pub/sub target
    /// when the primary moved.
    pub fn refresh(
        self: &Arc<Self>,
        backend: Arc<Backend>,
        hub_target: Arc<parking_lot::RwLock<Option<redis::Client>>>,
        options: RedisOptions,
        stale: Arc<AtomicBool>,
    ) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let resolved = tokio::time::timeout(options.connect_timeout * 2, me.resolve()).await;
            match resolved {
                Ok(Ok(client)) => {
                    let addr = client.get_connection_info().addr().to_string();
                    if addr != backend.target() {
                        match Pool::new(&client, &options) {
                            Ok(pool) => {
                                let old = backend.swap_pool(pool);
                                *hub_target.write() = Some(client);
                                stale.store(true, Ordering::Relaxed);
                                tracing::warn!(master = %me.master, from = ?old, to = %addr, "sentinel reports a new primary; following it");
                            }
                            Err(e) => tracing::warn!(error = %super::describe(&e), "cannot connect to the new primary"),
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(master = %me.master, error = %super::describe(&e), "sentinels could not name a primary")
                }
                Err(_) => tracing::warn!(master = %me.master, "sentinels did not answer in time"),
            }
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// Listens for `+switch-master` on the sentinels (rotating through them) and refreshes.
    pub async fn watch_switches(
        self: Arc<Self>,
        backend: Arc<Backend>,
        hub_target: Arc<parking_lot::RwLock<Option<redis::Client>>>,
        options: RedisOptions,
        stale: Arc<AtomicBool>,
    ) {
        let mut i = 0usize;
        loop {
            let addr = self.spec_sentinels[i % self.spec_sentinels.len()].clone();
            i += 1;
            let mut redis_info = redis::RedisConnectionInfo::default();
            if let Some(u) = &self.sentinel_auth.0 {
                redis_info = redis_info.set_username(u);
            }
            if let Some(p) = &self.sentinel_auth.1 {
                redis_info = redis_info.set_password(p);
            }
            let info = redis::IntoConnectionInfo::into_connection_info(addr).map(|i| i.set_redis_settings(redis_info));
            let client = info.and_then(|info| match &self.tls {
                Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
                None => redis::Client::open(info),
            });
            if let Ok(client) = client {
                if let Ok(Ok(mut pubsub)) =
                    tokio::time::timeout(options.connect_timeout, client.get_async_pubsub()).await
                {
                    if pubsub.subscribe("+switch-master").await.is_ok() {
                        let mut stream = pubsub.on_message();
                        while let Some(msg) = stream.next().await {
                            let text: String = msg.get_payload().unwrap_or_default();
                            if text.split(' ').next() == Some(self.master.as_str()) {
                                tracing::info!(event = %text, "sentinel announced +switch-master");
                                self.refresh(backend.clone(), hub_target.clone(), options.clone(), stale.clone());
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(options.reconnect_max).await;
        }
    }
}
