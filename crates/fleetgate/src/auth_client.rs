//! The gateway's HTTP client for forward auth services: hyper-util's pooled client over plain
//! HTTP (as the x402 facilitator client), sending `GET` with the headers the stage chose and
//! reading at most [`MAX_AUTH_ANSWER_BYTES`] of the answer. The stage bounds each call in time
//! (`forward_auth.timeout`).

use bytes::Bytes;
use fleetgate_http::forward_auth::{AuthAnswer, AuthClient, MAX_AUTH_ANSWER_BYTES};
use fleetgate_http::payment::BoxFuture;
use http::HeaderMap;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

/// One client for every forward auth route of the gateway (connections pooled per service).
pub struct HyperAuthClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HyperAuthClient {
    pub fn shared() -> Arc<dyn AuthClient> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(HyperAuthClient { client })
    }
}

impl AuthClient for HyperAuthClient {
    fn check<'a>(&'a self, url: &'a str, headers: HeaderMap) -> BoxFuture<'a, Result<AuthAnswer, String>> {
        Box::pin(async move {
            let mut req = http::Request::get(url)
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            *req.headers_mut() = headers;
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let (head, body) = resp.into_parts();
            let body = Limited::new(body, MAX_AUTH_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer (at most {MAX_AUTH_ANSWER_BYTES} bytes): {e}"))?
                .to_bytes();
            Ok(AuthAnswer {
                status: head.status.as_u16(),
                headers: head.headers,
                body,
            })
        })
    }
}
