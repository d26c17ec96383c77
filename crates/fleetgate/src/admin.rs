//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use crate::gateway::Gateway;
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
struct AdminState {
    gateway: Arc<Gateway>,
    store: Store,
}

pub fn router(gateway: Arc<Gateway>, store: Store) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { gateway, store })
}

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    let store: StoreHealth = s.store.health().await;
    let upstreams: serde_json::Map<String, serde_json::Value> = s
        .gateway
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
        "store_url": s.gateway.store_url_redacted,
        "instance": s.gateway.instance_id,
        "live_instances": s.gateway.live_instances.load(Ordering::Relaxed),
        "draining": s.gateway.draining.load(Ordering::Relaxed),
        "upstreams": upstreams,
    }))
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let ready = s.gateway.ready.load(Ordering::Relaxed) && !s.gateway.draining.load(Ordering::Relaxed);
    if ready {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        let why = if s.gateway.draining.load(Ordering::Relaxed) {
            "draining"
        } else {
            "starting"
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": why })))
    }
}

async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render_metrics())
}
