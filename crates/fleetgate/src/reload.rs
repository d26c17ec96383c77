//! Configuration reload (SIGHUP) without dropping connections.
//!
//! The request path reads the configuration through [`LiveGateway`]: an `ArcSwap` holding the
//! current [`Gateway`] (routes, pipelines, upstreams, request bounds) and a generation number.
//! A reload builds a whole new `Gateway` from the file, exactly as `fleetgate check` does, and
//! swaps it in; nothing is changed in place. Each worker keeps a [`Snapshot`] (the gateway and
//! the worker's upstream connection pools for it) and rebuilds it on its next request once the
//! generation has moved. A request keeps the snapshot it started with to its end, so in-flight
//! requests finish under the old configuration while open keep-alive connections take the new
//! one from their next request; the old gateway (and its pools) is freed when its last request
//! is over.
//!
//! What reloads: routes, upstreams, limits, `trusted_proxies`, `log.access_log`,
//! `server.max_body_bytes`, `server.request_timeout_ms`, `server.body_idle_timeout`. What needs a
//! restart (a file that changes any of these is refused whole, with one log line naming them):
//! `listen`, `admin`, `tls` (the certificate files' contents reload by themselves), `events`, `store` and `stores`, `log.level`, and the connection-level `server`
//! settings (`max_header_bytes`, `idle_timeout_ms`, `drain_timeout_ms`, `write_timeout`,
//! `max_connections`). Limits keep their state: their keys are named by the key prefix, the
//! route and the limit, which a reload does not change.

use crate::build::build_gateway_sharing;
use crate::gateway::{Gateway, Worker};
use arc_swap::ArcSwap;
use fleetgate_config::Config;
use fleetgate_http::StoreCtx;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The current configuration of the request path, swapped whole on reload.
pub struct LiveGateway {
    current: ArcSwap<Gateway>,
    generation: AtomicU64,
}

impl LiveGateway {
    pub fn new(gateway: Arc<Gateway>) -> Arc<Self> {
        Arc::new(LiveGateway {
            current: ArcSwap::new(gateway),
            generation: AtomicU64::new(0),
        })
    }

    /// The gateway new requests use.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Times the gateway has been replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes `next` the gateway of new requests; returns the one it replaces.
    pub fn replace(&self, next: Arc<Gateway>) -> Arc<Gateway> {
        let old = self.current.swap(next);
        // After the swap: a worker that sees the new generation loads the new gateway.
        self.generation.fetch_add(1, Ordering::AcqRel);
        old
    }
}

/// One worker's view of a generation: the gateway and the worker's pools for its upstreams.
pub struct Snapshot {
    generation: u64,
    pub gateway: Arc<Gateway>,
    pub worker: Worker,
}

/// A worker's store handles and its current [`Snapshot`].
pub struct LiveWorker {
    ctx: StoreCtx,
    live: Arc<LiveGateway>,
    snapshot: ArcSwap<Snapshot>,
}

impl LiveWorker {
    pub fn new(live: Arc<LiveGateway>, ctx: StoreCtx) -> Self {
        let generation = live.generation();
        let gateway = live.current();
        let worker = Worker::new(&gateway, ctx.clone());
        LiveWorker {
            ctx,
            live,
            snapshot: ArcSwap::from_pointee(Snapshot {
                generation,
                gateway,
                worker,
            }),
        }
    }

    /// The snapshot for a new request: the current one, rebuilt first if a reload happened.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let snap = self.snapshot.load_full();
        let generation = self.live.generation();
        if snap.generation == generation {
            return snap;
        }
        // Loaded after the generation: at least as new as it.
        let gateway = self.live.current();
        let worker = Worker::new(&gateway, self.ctx.clone());
        let fresh = Arc::new(Snapshot {
            generation,
            gateway,
            worker,
        });
        self.snapshot.store(fresh.clone());
        fresh
    }
}

/// Reads and checks the file as `fleetgate check` does, building the gateway it describes.
/// The error is the text `check` prints after `error: `.
pub fn load_and_build(path: &Path, instance_id: &str, store_url_redacted: String) -> Result<(Config, Gateway), String> {
    load_and_build_sharing(path, instance_id, store_url_redacted, None)
}

/// [`load_and_build`] whose routes send their events into `events` (the running gateway's).
fn load_and_build_sharing(
    path: &Path,
    instance_id: &str,
    store_url_redacted: String,
    events: Option<&fleetgate_http::EventSink>,
) -> Result<(Config, Gateway), String> {
    let config = fleetgate_config::load(path).map_err(|e| e.to_string())?;
    let gateway = build_gateway_sharing(&config, instance_id, store_url_redacted, events)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((config, gateway))
}

/// The settings that `next` changes and that only a restart applies.
pub fn restart_only_changes(current: &Config, next: &Config) -> Vec<&'static str> {
    let (a, b) = (&current.server, &next.server);
    let checks = [
        ("listen", current.listen != next.listen),
        ("admin", current.admin != next.admin),
        ("tls", current.tls != next.tls),
        ("events", current.events != next.events),
        ("store", current.store != next.store || current.stores != next.stores),
        ("log.level", current.log.level != next.log.level),
        ("telemetry", current.telemetry != next.telemetry),
        ("server.max_header_bytes", a.max_header_bytes != b.max_header_bytes),
        ("server.idle_timeout_ms", a.idle_timeout != b.idle_timeout),
        ("server.drain_timeout_ms", a.drain_timeout != b.drain_timeout),
        ("server.write_timeout", a.write_timeout != b.write_timeout),
        ("server.max_connections", a.max_connections != b.max_connections),
    ];
    checks
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| *name)
        .collect()
}

/// How a reload ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The new configuration serves new requests.
    Applied(Box<Config>),
    /// The file was refused (the message `check` would print); the old configuration serves.
    Invalid(String),
    /// The file changes settings that need a restart; the old configuration serves.
    RestartRequired(Vec<&'static str>),
}

/// Reloads from `path`: builds, checks what needs a restart, swaps, and logs and counts the
/// outcome (`fleetgate_config_reloads_total{outcome}`: `applied`, `invalid`, `restart_required`).
pub fn reload(path: &Path, current: &Config, live: &LiveGateway) -> Outcome {
    let old = live.current();
    let built = load_and_build_sharing(
        path,
        &old.instance_id,
        old.store_url_redacted.clone(),
        old.events_sink.as_ref(),
    );
    let (config, mut gateway) = match built {
        Ok(x) => x,
        Err(e) => {
            crate::telemetry::config_reload("invalid");
            tracing::error!(file = %path.display(), error = %e, "configuration reload refused; the old configuration keeps serving");
            return Outcome::Invalid(e);
        }
    };
    let needs_restart = restart_only_changes(current, &config);
    if !needs_restart.is_empty() {
        crate::telemetry::config_reload("restart_required");
        tracing::error!(file = %path.display(), changed = ?needs_restart, "configuration reload refused: these settings take effect only on a restart; the old configuration keeps serving");
        return Outcome::RestartRequired(needs_restart);
    }
    // The new gateway shares the instance's lifecycle and fleet view.
    gateway.live_instances = old.live_instances.clone();
    gateway
        .ready
        .store(old.ready.load(Ordering::Relaxed), Ordering::Relaxed);
    let gateway = Arc::new(gateway);
    live.replace(gateway);
    crate::telemetry::config_reload("applied");
    tracing::info!(
        file = %path.display(),
        routes = config.routes.len(),
        upstreams = config.upstreams.len(),
        generation = live.generation(),
        "configuration reloaded"
    );
    Outcome::Applied(Box::new(config))
}
