//! Starts everything a configuration asks for and runs until SIGTERM or SIGINT; SIGHUP
//! reloads the configuration file ([`crate::reload`]).

use crate::build::build_gateway;
use crate::server::{bind_listeners, run_worker, ServerSettings};
use crate::telemetry::{install_metrics, StoreMetrics};
use fleetgate_config::Config;
use fleetgate_http::StoreCtx;
use fleetgate_store::{HealthGroup, MemoryStore, Store};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{:08x}", std::process::id(), nanos)
}

/// Number of worker threads: `FLEETGATE_WORKERS`, else one per available core.
fn worker_count() -> usize {
    std::env::var("FLEETGATE_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Runs the gateway until a shutdown signal; returns after draining. SIGHUP is ignored (there
/// is no file to reload); see [`run_with_reload`].
pub fn run(config: Config) -> Result<(), RunError> {
    run_with_reload(config, None)
}

/// Runs the gateway until a shutdown signal; on SIGHUP, reloads `config_file` when given.
pub fn run_with_reload(config: Config, config_file: Option<std::path::PathBuf>) -> Result<(), RunError> {
    install_metrics();
    if let Some(otlp) = &config.telemetry.otlp {
        crate::otlp::install(otlp).map_err(RunError::Setup)?;
    }
    // The control runtime (admin, health checks, signals) exists first: Redis connections are
    // bound to the runtime that opens them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Setup(e.to_string()))?;
    let _entered = runtime.enter();
    // Early, so that a SIGHUP sent during the start is a reload request rather than fatal.
    let mut signals = Signals::install();
    let instance = instance_id();
    // Limits (rate and concurrency) and fleet membership live in the rate-limit store.
    let limits_store = &config.stores.rate_limits;
    let options = limits_store.redis_options();
    let keyspace = limits_store.keyspace.clone();
    runtime.block_on(flush_on_startup(&config));
    // Opening is lazy: an unreachable Redis does not stop the start; each concern's failure
    // policy applies until it answers.
    // One view of the store's health for the whole instance: the admin store (healthz,
    // heartbeat) and every worker's connections share one breaker and its probes.
    let health = HealthGroup::new(options.breaker);
    let admin_store =
        Store::open_in(&limits_store.url, options.clone(), &health).map_err(|e| RunError::Setup(e.to_string()))?;
    if let Store::Redis(redis) = &admin_store {
        match runtime.block_on(redis.startup_check()) {
            Ok(()) => {}
            // Misconfiguration: refuse to start with one clear line.
            Err(e @ (fleetgate_store::StoreError::Config(_) | fleetgate_store::StoreError::Auth(_))) => {
                return Err(RunError::Setup(format!("store {}: {e}", redis.redacted_url())));
            }
            // Unreachable: start anyway; every limit follows its failure policy until it answers.
            Err(e) => {
                tracing::warn!(store = %redis.redacted_url(), error = %e, "store unreachable at start; serving under the failure policies and retrying")
            }
        }
    }
    let redacted = match &admin_store {
        Store::Redis(r) => r.redacted_url().to_string(),
        Store::Memory(_) => "memory://".to_string(),
    };
    let gateway =
        Arc::new(build_gateway(&config, &instance, redacted.clone()).map_err(|e| RunError::Setup(e.to_string()))?);
    let workers = worker_count();
    let listeners = bind_listeners(config.listen, workers).map_err(|source| RunError::Listen {
        addr: config.listen,
        source,
    })?;
    let local_addr = listeners[0].local_addr().ok();
    // The TLS listener, one socket per worker as for the plain one.
    let mut tls_listeners = match &gateway.tls {
        Some(tls) => bind_listeners(tls.listen, workers)
            .map_err(|source| RunError::Listen {
                addr: tls.listen,
                source,
            })?
            .into_iter()
            .map(Some)
            .collect(),
        None => Vec::new(),
    };
    tls_listeners.resize_with(workers, || None);
    let tls_addr = tls_listeners
        .first()
        .and_then(|l| l.as_ref())
        .and_then(|l| l.local_addr().ok());
    let admin_listener = std::net::TcpListener::bind(config.admin.listen).map_err(|source| RunError::Listen {
        addr: config.admin.listen,
        source,
    })?;
    admin_listener
        .set_nonblocking(true)
        .map_err(|e| RunError::Setup(e.to_string()))?;

    let local = MemoryStore::new();
    let metrics = Arc::new(StoreMetrics::new());
    let live_instances = gateway.live_instances.clone();
    let live = crate::reload::LiveGateway::new(gateway.clone());
    let settings = ServerSettings {
        max_header_bytes: config.server.max_header_bytes,
        idle_timeout: config.server.idle_timeout,
        drain_timeout: config.server.drain_timeout,
        write_timeout: config.server.write_timeout,
        connections: crate::server::ConnectionCap::new(config.server.max_connections),
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    for (i, (listener, tls_listener)) in listeners.into_iter().zip(tls_listeners).enumerate() {
        // The TLS listener and its certificates are fixed at start (a reload that changes
        // `tls` is refused); the certificate files themselves are watched and reloaded.
        let tls = tls_listener
            .zip(gateway.tls.as_ref())
            .map(|(listener, tls)| crate::server::WorkerTls {
                listener,
                acceptor: tls.acceptor.clone(),
            });
        let live_gateway = live.clone();
        let shared_memory = match &admin_store {
            Store::Memory(m) => Some(m.clone()),
            Store::Redis(_) => None,
        };
        let url = limits_store.url.clone();
        let (options, local, metrics, live) = (options.clone(), local.clone(), metrics.clone(), live_instances.clone());
        let instance: std::sync::Arc<str> = gateway.instance_id.as_str().into();
        let (health, opened) = (health.clone(), opened_tx.clone());
        let settings = settings.clone();
        let rx = shutdown_rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("fleetgate-worker-{i}"))
            .spawn(move || {
                // The in-process store is one state for all workers; Redis gets connections per
                // worker, driven by that worker's runtime, under the instance's one health group.
                // A worker whose store cannot be opened stops the start (never a silent fallback
                // to an undivided in-process store).
                let make_ctx = move || {
                    let store = match shared_memory {
                        Some(m) => Ok(Store::Memory(m)),
                        None => Store::open_in(&url, options, &health).map_err(|e| e.to_string()),
                    };
                    store.map(|store| StoreCtx {
                        store,
                        local,
                        metrics,
                        live_instances: live,
                        instance,
                    })
                };
                if let Err(e) = run_worker(listener, tls, live_gateway, make_ctx, opened, settings, rx) {
                    tracing::error!(error = %e, "worker stopped");
                }
            })
            .map_err(|e| RunError::Setup(e.to_string()))?;
        threads.push(handle);
    }
    drop(opened_tx);
    // Every worker has its store open and connected (or found it unreachable) before the
    // instance reports ready.
    for _ in 0..threads.len() {
        match opened_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RunError::Setup(format!("a worker cannot open the store: {e}"))),
            Err(_) => return Err(RunError::Setup("a worker stopped before opening the store".into())),
        }
    }

    runtime.block_on(async {
        // The Prometheus recorder buffers histogram samples until drained: drain them even if
        // nobody scrapes /metrics, so memory stays bounded.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                crate::telemetry::run_metrics_upkeep();
            }
        });
        let mut health_checks = spawn_health_checks(&gateway);
        health_checks.extend(crate::upstream_side::spawn_listeners(&gateway, &admin_store));
        if let (Some(tls), Some(listener)) = (&gateway.tls, &config.tls) {
            tokio::spawn(crate::tls::reload::watch(
                listener.certificates.clone(),
                tls.store.clone(),
                listener.reload_interval,
            ));
        }
        let admin = tokio::net::TcpListener::from_std(admin_listener).map_err(|e| RunError::Setup(e.to_string()))?;
        let app = crate::admin::router_with(
            live.clone(),
            admin_store.clone(),
            start_events(&gateway, &config, &admin_store),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin, app).await {
                tracing::error!(error = %e, "admin listener stopped");
            }
        });
        tokio::spawn(fleetgate_http::fleet::run_heartbeat(
            admin_store.clone(),
            keyspace.clone(),
            gateway.instance_id.clone(),
            live_instances.clone(),
        ));
        gateway.ready.store(true, Ordering::Relaxed);
        tracing::info!(
            listen = ?local_addr,
            tls = ?tls_addr,
            admin = %config.admin.listen,
            store = %redacted,
            workers,
            instance = %gateway.instance_id,
            "fleetgate started"
        );
        let mut config = config;
        while let Signal::Reload = signals.next().await {
            let Some(path) = &config_file else {
                tracing::info!("SIGHUP ignored: the gateway was started without a configuration file");
                continue;
            };
            if let crate::reload::Outcome::Applied(next) = crate::reload::reload(path, &config, &live) {
                config = *next;
                // The old upstreams' health checks stop; the new ones' start.
                for h in health_checks.drain(..) {
                    h.abort();
                }
                health_checks = spawn_health_checks(&live.current());
                health_checks.extend(crate::upstream_side::spawn_listeners(&live.current(), &admin_store));
            }
        }
        let gateway = live.current();
        tracing::info!(
            bound_ms = config.server.drain_timeout.as_millis() as u64,
            "shutdown requested; draining"
        );
        gateway.draining.store(true, Ordering::Relaxed);
        let _ = shutdown_tx.send(true);
        let given = crate::pipeline::give_back_leases(&gateway.routes, &admin_store).await;
        if given > 0 {
            tracing::info!(units = given, "gave unspent leased units back to the fleet");
        }
        fleetgate_http::fleet::leave(&admin_store, &keyspace, &gateway.instance_id).await;
        Ok::<(), RunError>(())
    })?;
    for t in threads {
        let _ = t.join();
    }
    // Spans still queued go out before the exit.
    crate::otlp::shutdown();
    tracing::info!("fleetgate stopped");
    Ok(())
}

/// Starts the live events' publisher (if events are on) and says what the admin listener
/// serves: `/events` and the admin token. Warns when the admin listener is reachable from
/// elsewhere without a token.
fn start_events(gateway: &crate::gateway::Gateway, config: &Config, store: &Store) -> crate::admin::AdminExtras {
    if config.admin.token.is_none() && !config.admin.listen.ip().is_loopback() {
        tracing::warn!(admin = %config.admin.listen, "the admin listener is not on loopback and admin.token is not set: anyone who reaches it can read events and metrics");
    }
    let token = config.admin.token.as_deref().map(crate::admin_auth::AdminToken::new);
    // Events get connections and a breaker of their own (`stores.events`, which defaults to
    // the instance's store): their calls failing or timing out during an outage, or right
    // after it, must not hold the limits' breaker open. The in-process store is shared.
    let events_store = &config.stores.events;
    let store = match store {
        Store::Memory(_) if events_store.is_memory() => store.clone(),
        _ => match Store::open(&events_store.url, events_store.redis_options()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(store = %events_store.redacted_url(), error = %e, "events: cannot open their store; using the instance's");
                store.clone()
            }
        },
    };
    let store = &store;
    let events = gateway.events_rx.lock().take().map(|rx| {
        let key = fleetgate_http::events::stream_key(&events_store.keyspace);
        let local = MemoryStore::new();
        let settings = fleetgate_http::events::EventSettings {
            key: key.clone(),
            batch: config.events.batch,
            max_len: config.events.stream_max_len,
        };
        tokio::spawn(fleetgate_http::events::run_publisher(
            store.clone(),
            local.clone(),
            settings,
            rx,
        ));
        crate::admin_events::EventsSource {
            store: store.clone(),
            local: (!store.is_memory()).then_some(local),
            key,
        }
    });
    crate::admin::AdminExtras { events, token }
}

/// `flush_on_startup`: deletes every key under each concern store's prefix (once per distinct
/// store and prefix). Dangerous by design; logged at warn level. A store that cannot be reached
/// is logged and skipped: the gateway still starts.
async fn flush_on_startup(config: &Config) {
    let mut done = std::collections::HashSet::new();
    for (concern, store) in config.stores.iter() {
        if !store.flush_on_startup
            || store.is_memory()
            || !done.insert((store.url.clone(), store.keyspace.prefix().to_string()))
        {
            continue;
        }
        let prefix = store.keyspace.prefix();
        let result = match fleetgate_store::RedisStore::open(&store.url, store.redis_options()) {
            Ok(redis) => redis.flush_prefix(prefix).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(n) => {
                tracing::warn!(concern, prefix, deleted = n, store = %store.redacted_url(), "flush_on_startup: deleted every key under the prefix")
            }
            Err(e) => tracing::error!(concern, prefix, error = %e, "flush_on_startup failed; starting anyway"),
        }
    }
}

/// The health checks of the gateway's upstreams, on the control runtime.
fn spawn_health_checks(gateway: &crate::gateway::Gateway) -> Vec<tokio::task::JoinHandle<()>> {
    gateway
        .upstreams
        .iter()
        .map(|u| tokio::spawn(crate::upstream::run_health_checks(u.clone())))
        .collect()
}

enum Signal {
    Stop,
    Reload,
}

/// The process's signal handlers, installed once at start so that a SIGHUP between two waits
/// is neither lost nor fatal.
struct Signals(Option<[tokio::signal::unix::Signal; 3]>);

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let all = (|| {
            Some([
                signal(SignalKind::terminate()).ok()?,
                signal(SignalKind::interrupt()).ok()?,
                signal(SignalKind::hangup()).ok()?,
            ])
        })();
        Signals(all)
    }

    /// The next signal that matters: SIGTERM or SIGINT (stop), SIGHUP (reload).
    async fn next(&mut self) -> Signal {
        let Some([term, int, hup]) = &mut self.0 else {
            // Without signal handlers the process still stops on the default action.
            std::future::pending::<()>().await;
            return Signal::Stop;
        };
        tokio::select! {
            _ = term.recv() => Signal::Stop,
            _ = int.recv() => Signal::Stop,
            _ = hup.recv() => Signal::Reload,
        }
    }
}
