//! One completed request, as published.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A completed request. Serialized as one JSON object (the `data:` of `GET /events`).
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique in the fleet: the instance, then a sequence number within it.
    pub id: String,
    /// When the request completed, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub instance: Arc<str>,
    pub route: Arc<str>,
    pub method: String,
    /// The path, without its query.
    pub path: String,
    pub status: u16,
    pub duration_ms: f64,
    /// The upstream target that answered, if the request went upstream.
    pub upstream: Option<String>,
    /// `refused` when a stage (a rate or concurrency limit) answered with 429, else `passed`.
    pub limit: &'static str,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Whether the whole response body was sent (false: the client left early).
    pub complete: bool,
    /// Set when the store was down: the event went to this instance's local bus only.
    pub local: bool,
}

/// What filters read of a published event.
#[derive(Debug, Clone, Deserialize)]
pub struct EventView {
    #[serde(default)]
    pub instance: String,
    #[serde(default)]
    pub route: String,
    #[serde(default)]
    pub status: u16,
}
