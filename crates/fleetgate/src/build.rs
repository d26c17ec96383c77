//! Turns a validated configuration into the runtime structures of the request path.
//! This is the only module that reads configuration types.

use crate::gateway::Gateway;
use crate::route::{respond, Action, Route};
use crate::telemetry::RouteMetrics;
use crate::upstream::{HealthCheck, Upstream};
use bytes::Bytes;
use fleetgate_config::{Config, RouteTarget};
use fleetgate_http::TrustedProxies;
use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(String);

impl BuildError {
    pub fn new(message: String) -> Self {
        BuildError(message)
    }
}

pub fn build_gateway(config: &Config, instance_id: &str, store_url_redacted: String) -> Result<Gateway, BuildError> {
    build_gateway_sharing(config, instance_id, store_url_redacted, None)
}

/// [`build_gateway`] for a reload: with `events`, the running gateway's event sink, the new
/// routes send into the channel the publisher already reads.
pub fn build_gateway_sharing(
    config: &Config,
    instance_id: &str,
    store_url_redacted: String,
    events: Option<&fleetgate_http::EventSink>,
) -> Result<Gateway, BuildError> {
    let shared_events = events;
    // Limits live in the rate-limit store's keyspace.
    let keyspace = &config.stores.rate_limits.keyspace;
    let mut upstreams = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (name, u) in &config.upstreams {
        let mut targets = Vec::new();
        let mut links = Vec::new();
        // Built once per upstream, and only when it has https targets (reading the system's
        // roots, or its files).
        let mut tls = None;
        for t in &u.targets {
            let authority: Authority = t
                .authority
                .parse()
                .map_err(|e| BuildError(format!("upstream {name}: target {t}: {e}")))?;
            let link = if t.tls {
                let shared = match &tls {
                    Some(shared) => Arc::clone(shared),
                    None => {
                        let made = Arc::new(
                            crate::tls::client::UpstreamTls::new(&u.tls)
                                .map_err(|why| BuildError(format!("upstreams.{name}.{why}")))?,
                        );
                        tls = Some(made.clone());
                        made
                    }
                };
                let server_name = shared
                    .name_for(&t.host)
                    .map_err(|why| BuildError(format!("upstream {name}: target {t}: {why}")))?;
                crate::upstream_pool::TargetLink {
                    tls: Some((shared, server_name)),
                    protocol: u.protocol,
                }
            } else {
                crate::upstream_pool::TargetLink {
                    tls: None,
                    protocol: u.protocol,
                }
            };
            links.push(link);
            targets.push((if t.tls { Scheme::HTTPS } else { Scheme::HTTP }, authority));
        }
        let health_check = u.health_check.as_ref().map(|h| HealthCheck {
            path: h.path.clone(),
            interval: h.interval,
            timeout: h.timeout,
            unhealthy_threshold: h.unhealthy_threshold,
            healthy_threshold: h.healthy_threshold,
        });
        index.insert(name.clone(), upstreams.len());
        upstreams.push(Arc::new(
            Upstream::new(
                name,
                targets,
                u.connect_timeout,
                u.request_timeout,
                u.idle_timeout,
                health_check,
                u.passive.failures,
                u.passive.eject,
            )
            .with_io_bounds(u.body_idle_timeout, u.write_timeout)
            .with_links(links)
            .with_policies(
                u.balance == fleetgate_config::Balance::LeastRequest,
                match &u.affinity {
                    Some(a) => {
                        let authorities: Vec<String> = u.targets.iter().map(|t| t.authority.clone()).collect();
                        Some(
                            crate::affinity::Affinity::new(a, name, &authorities)
                                .map_err(|e| BuildError(format!("upstream {name}: {e}")))?,
                        )
                    }
                    None => None,
                },
                u.retries.as_ref().map(|r| crate::retry::RetryPolicy::new(r, name)),
            )
            .with_side(crate::upstream_side::UpstreamSide::build(keyspace, name, u)?)
            .with_login(
                u.login
                    .as_ref()
                    .map(|l| fleetgate_http::upstream_login::UpstreamLogin::new(keyspace, name, l.clone())),
            ),
        ));
    }
    // Live events: one sink for every route; the publisher takes the receiver at start.
    let (events, events_rx) = match (config.events.enabled, shared_events) {
        (true, Some(sink)) => (Some(sink.clone()), None),
        (true, None) => {
            let (sink, rx) = fleetgate_http::EventSink::new(instance_id, config.events.buffer);
            (Some(sink), Some(rx))
        }
        (false, _) => (None, None),
    };
    let mut routes = Vec::new();
    let facilitator = crate::facilitator::HyperFacilitatorClient::shared();
    let auth = crate::auth_client::HyperAuthClient::shared();
    for r in &config.routes {
        let action = match &r.target {
            RouteTarget::Upstream(name) => Action::Proxy(
                *index
                    .get(name)
                    .ok_or_else(|| BuildError(format!("route {}: unknown upstream {name}", r.name)))?,
            ),
            RouteTarget::Respond { status, body, headers } => {
                let mut map = HeaderMap::new();
                for (k, v) in headers {
                    let name = HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| BuildError(format!("route {}: invalid header name {k:?}", r.name)))?;
                    let value = HeaderValue::from_str(v)
                        .map_err(|_| BuildError(format!("route {}: invalid value for header {k}", r.name)))?;
                    map.append(name, value);
                }
                Action::Respond {
                    status: respond(*status),
                    body: Bytes::from(body.clone()),
                    headers: map,
                }
            }
        };
        routes.push(Route {
            name: r.name.clone(),
            config: r.clone(),
            action,
            pipeline: Arc::new(crate::pipeline::assemble(
                config,
                keyspace,
                r,
                &facilitator,
                &auth,
                events.as_ref(),
            )?),
            metrics: RouteMetrics::new(&r.name),
            read_body_ahead: crate::route::read_body_ahead(config, r),
        });
    }
    // Certificates are read and checked here, so that `fleetgate check` refuses what start would.
    let tls = match &config.tls {
        Some(t) => {
            let set = crate::tls::CertSet::load(&t.certificates).map_err(BuildError)?;
            Some(crate::tls::server::TlsListener::new(t.listen, crate::tls::CertStore::new(set)).map_err(BuildError)?)
        }
        None => None,
    };
    Ok(Gateway {
        tls,
        instance_id: instance_id.to_string(),
        routes,
        upstreams,
        trusted: TrustedProxies::new(config.trusted_proxies.clone()),
        max_body_bytes: config.server.max_body_bytes,
        header_limit: (config.server.max_header_bytes < crate::request_head::MIN_HYPER_BUF)
            .then_some(config.server.max_header_bytes),
        request_timeout: config.server.request_timeout,
        body_idle_timeout: config.server.body_idle_timeout,
        tunnel_idle_timeout: config.server.idle_timeout,
        access_log: config.log.access_log,
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        store_url_redacted,
        live_instances: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        events_rx: parking_lot::Mutex::new(events_rx),
        events_sink: events,
    })
}
