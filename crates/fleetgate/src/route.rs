//! Routes: matched in order on path prefix (at segment boundaries), host, method, headers and
//! query; the first
//! match wins. Matching itself lives with the configuration (`fleetgate_config::RouteMatch`).

use crate::pipeline::RoutePipeline;
use crate::telemetry::RouteMetrics;
use bytes::Bytes;
use fleetgate_config::RouteConfig;
use http::{HeaderMap, StatusCode};
use std::borrow::Cow;

pub enum Action {
    /// Answer from the gateway itself.
    Respond {
        status: StatusCode,
        body: Bytes,
        headers: HeaderMap,
    },
    /// Forward to the upstream at this index.
    Proxy(usize),
}

pub struct Route {
    pub name: String,
    pub config: RouteConfig,
    pub action: Action,
    /// The route's stages (limits...), compiled from its configuration at start-up; shared
    /// with the response bodies whose complete phase runs when they end.
    pub pipeline: std::sync::Arc<RoutePipeline>,
    pub metrics: RouteMetrics,
    /// How many request-body bytes to read before the pipeline runs (the largest `body_limit`
    /// of a limit whose key reads the body: `json:` or `form:`, the idempotency keys'
    /// `max_request_bytes`, or dedup's `max_body` when its key names `body`); `None`: the body
    /// streams.
    pub read_body_ahead: Option<usize>,
}

/// [`Route::read_body_ahead`] for `route`: its own limits and the global ones.
pub fn read_body_ahead(config: &fleetgate_config::Config, route: &RouteConfig) -> Option<usize> {
    let rate = route
        .rate_limits
        .iter()
        .chain(&config.global_rate_limits)
        .filter(|l| l.key.iter().any(fleetgate_http::KeyPart::reads_body))
        .map(|l| l.body_limit);
    let concurrency = route
        .concurrency_limits
        .iter()
        .filter(|l| l.key.iter().any(fleetgate_http::KeyPart::reads_body))
        .map(|_| fleetgate_http::body_fields::DEFAULT_BODY_LIMIT);
    let idempotency = route.idempotency.iter().map(|i| i.max_request_bytes);
    // `dedup` with `body` in its key hashes the whole body, up to its `max_body`.
    let dedup = route.dedup.as_ref().filter(|d| d.reads_body()).map(|d| d.max_body);
    rate.chain(concurrency).chain(idempotency).chain(dedup).max()
}

impl Route {
    /// Whether the request (its `host` and normalised `path` already found) matches.
    pub fn matches(&self, parts: &http::request::Parts, host: Option<&str>, path: &str) -> bool {
        let query = parts.uri.query();
        self.config
            .matcher
            .matches_request(parts.method.as_str(), host, path, &parts.headers, query)
    }

    /// The path (and query) to send upstream.
    pub fn upstream_path<'a>(&self, path_and_query: &'a str) -> Cow<'a, str> {
        self.config.upstream_path(path_and_query)
    }
}

pub fn respond(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}
