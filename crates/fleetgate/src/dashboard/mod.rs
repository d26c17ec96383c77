//! `GET /dashboard`: one page, its script and style built into the binary (`include_str!`),
//! nothing fetched from elsewhere. It follows `/events` (EventSource) and polls
//! `/dashboard/state` (store health, live instances) every two seconds:
//! the live request feed, requests per second per instance and per route (a chart drawn on a
//! canvas by the page's own script), limit refusals, open breakers (as this instance knows
//! them: the fleet's, through the store and its notices), store health and live instances.

use crate::admin::AdminState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::Json;
use fleetgate_store::StoreDriver;
use serde_json::json;
use std::sync::atomic::Ordering;

const PAGE_HTML: &str = include_str!("dashboard.html");
/// The token form shown to a browser without the cookie (`admin.token` set).
pub const LOGIN_HTML: &str = include_str!("login.html");

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Everything is the page's own: no script, style or connection elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        PAGE_HTML,
    )
}

/// Without a token there is nothing to log in to.
pub async fn login() -> Redirect {
    Redirect::to("/dashboard")
}

/// What the page polls: this instance, the store's health, the fleet's size, the routes and
/// the open breakers (upstream, breaker, remaining cooldown), as `GET /breakers` lists them.
pub(crate) async fn state(State(s): State<AdminState>) -> impl IntoResponse {
    let store = s.store.health().await;
    let gateway = s.live.current();
    let routes: Vec<&str> = gateway.routes.iter().map(|r| r.name.as_str()).collect();
    Json(json!({
        "instance": gateway.instance_id,
        "store": store.as_str(),
        "live_instances": gateway.live_instances.load(Ordering::Relaxed),
        "routes": routes,
        "breakers": crate::upstream_side::open_breakers(&gateway)["open"],
    }))
}
