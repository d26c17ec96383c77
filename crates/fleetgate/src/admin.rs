//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/events` (live events, SSE),
//! `/dashboard` and its `/dashboard/state`; behind `admin.token` when set
//! ([`crate::admin_auth`]).

use crate::reload::LiveGateway;
use crate::telemetry::render_metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use fleetgate_store::{Store, StoreDriver, StoreHealth};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub live: Arc<LiveGateway>,
    pub store: Store,
}

/// What the admin listener serves besides health and metrics.
#[derive(Clone, Default)]
pub struct AdminExtras {
    /// Live events (`None`: `events.enabled: false`).
    pub events: Option<crate::admin_events::EventsSource>,
    /// `admin.token`.
    pub token: Option<crate::admin_auth::AdminToken>,
}

/// The admin routes; each request reads the configuration current then.
pub fn router(live: Arc<LiveGateway>, store: Store) -> Router {
    router_with(live, store, AdminExtras::default())
}

pub fn router_with(live: Arc<LiveGateway>, store: Store, extras: AdminExtras) -> Router {
    let events = Router::new()
        .route("/events", get(crate::admin_events::events))
        .with_state(extras.events);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/breakers", get(breakers))
        .route("/dashboard", get(crate::dashboard::page))
        .route("/dashboard/state", get(crate::dashboard::state))
        .route("/dashboard/login", axum::routing::post(crate::dashboard::login))
        .with_state(AdminState { live, store })
        .merge(events)
        .layer(axum::middleware::from_fn_with_state(
            extras.token,
            crate::admin_auth::require_token,
        ))
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    let store: StoreHealth = s.store.health().await;
    let gateway = s.live.current();
    let upstreams: serde_json::Map<String, serde_json::Value> = gateway
        .upstreams
        .iter()
        .map(|u| {
            let healthy = (0..u.targets.len()).filter(|i| u.is_healthy(*i)).count();
            (
                u.name.clone(),
                json!({ "healthy_targets": healthy, "targets": u.targets.len() }),
            )
        })
        .collect();
    Json(json!({
        "status": "ok",
        "store": store.as_str(),
        "store_url": gateway.store_url_redacted,
        "instance": gateway.instance_id,
        "live_instances": gateway.live_instances.load(Ordering::Relaxed),
        "draining": gateway.draining.load(Ordering::Relaxed),
        "upstreams": upstreams,
    }))
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let gateway = s.live.current();
    let ready = gateway.ready.load(Ordering::Relaxed) && !gateway.draining.load(Ordering::Relaxed);
    if ready {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        let why = if gateway.draining.load(Ordering::Relaxed) {
            "draining"
        } else {
            "starting"
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": why })))
    }
}

async fn breakers(State(s): State<AdminState>) -> impl IntoResponse {
    Json(crate::upstream_side::open_breakers(&s.live.current()))
}

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render_metrics())
}
