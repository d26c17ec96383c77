//! The gateway's HTTP client for x402 facilitators: hyper-util's pooled client over plain
//! HTTP, POSTing JSON, reading at most [`MAX_ANSWER_BYTES`] of the answer. The payment stage
//! bounds each call in time (`payment.facilitator_timeout`).

use bytes::Bytes;
use fleetgate_http::payment::{BoxFuture, FacilitatorClient, MAX_ANSWER_BYTES};
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

/// One client for every paid route of the gateway (connections are pooled per facilitator).
pub struct HyperFacilitatorClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HyperFacilitatorClient {
    pub fn shared() -> Arc<dyn FacilitatorClient> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(HyperFacilitatorClient { client })
    }
}

impl FacilitatorClient for HyperFacilitatorClient {
    fn post_json<'a>(
        &'a self,
        url: &'a str,
        body: Bytes,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(u16, Bytes), String>> {
        Box::pin(async move {
            let mut req = http::Request::post(url)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json");
            if let Some(token) = bearer {
                let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;
                req = req.header(header::AUTHORIZATION, value);
            }
            let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok((status, body))
        })
    }
}
