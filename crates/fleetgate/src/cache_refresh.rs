//! The cache's background revalidations (`stale-while-revalidate`): a GET the gateway sends
//! to its own listener over loopback, marked so that the cache revalidates instead of
//! answering (see `fleetgate_http::cache::refresh`). Its answer is read to the end, so the
//! cache stores it, and dropped. It runs through the route's stages like any request.

use bytes::Bytes;
use fleetgate_http::cache::Refresh;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Longest a background revalidation may take, body included.
const BOUND: Duration = Duration::from_secs(30);

pub struct LoopbackRefresh {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// `http://ADDR`, the plain listener as a client reaches it.
    base: String,
}

impl LoopbackRefresh {
    /// The refresher of a gateway whose plain listener is `listen`.
    pub fn shared(listen: SocketAddr) -> Arc<dyn Refresh> {
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(LoopbackRefresh {
            client,
            base: format!("http://{addr}"),
        })
    }
}

impl Refresh for LoopbackRefresh {
    fn refresh(&self, request: http::request::Parts) {
        let pq = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("{}{pq}", self.base).parse::<http::Uri>() else {
            return;
        };
        let mut req = http::Request::new(Empty::new());
        *req.uri_mut() = uri;
        *req.headers_mut() = request.headers;
        let client = self.client.clone();
        tokio::spawn(async move {
            let run = async {
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                resp.into_body().collect().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            };
            match tokio::time::timeout(BOUND, run).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "cache background revalidation failed"),
                Err(_) => tracing::debug!("cache background revalidation timed out"),
            }
        });
    }
}
