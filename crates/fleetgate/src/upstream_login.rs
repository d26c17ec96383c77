//! The proxy's side of an upstream login (`upstreams.NAME.login`, the fleet logic is
//! `fleetgate_http::upstream_login`): the credential goes onto the request, the request's body
//! is kept when small enough (`retry_body_limit`, and of known length), and a `refresh_on`
//! answer is followed by one refresh for the fleet and one more send with the new credential.
//! The login request itself goes over the worker's pool of connections to the upstream's
//! targets (TLS and HTTP/2 as the upstream says), redirects not followed.

use crate::body::{full, json_error, GatewayBody};
use crate::gateway::Worker;
use crate::upstream::Upstream;
use crate::upstream_pool::{OutboundBody, TargetPool, UpstreamError};
use bytes::Bytes;
use fleetgate_http::upstream_login::{BoxFuture, Credential, LoginClient, UpstreamLogin, MAX_LOGIN_ANSWER_BYTES};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub const UPSTREAM_LOGIN_RETRIES: &str = "fleetgate_upstream_login_retries_total";

/// What one exchange with the target gave (as the proxy's send does).
pub type SendResult = Result<Result<Response<GatewayBody>, UpstreamError>, crate::upstream_pool::TimedOut>;

/// The login's HTTP client: the worker's connections to the upstream's targets.
pub struct PoolLoginClient<'a> {
    pub upstream: &'a Upstream,
    pub pools: &'a [Arc<TargetPool>],
}

async fn read_answer<B>(resp: Response<B>) -> Result<Response<Bytes>, String>
where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    let (head, body) = resp.into_parts();
    match Limited::new(body, MAX_LOGIN_ANSWER_BYTES).collect().await {
        Ok(collected) => Ok(Response::from_parts(head, collected.to_bytes())),
        Err(e) => Err(format!(
            "reading the answer failed (more than {MAX_LOGIN_ANSWER_BYTES} bytes, or broken off): {e}"
        )),
    }
}

impl LoginClient for PoolLoginClient<'_> {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, String>> {
        Box::pin(async move {
            let t = self.upstream.pick();
            let target = &self.upstream.targets[t];
            let pool = &self.pools[t];
            let h2 = match pool.h2_known() {
                Some(known) => known,
                None => crate::boxed_future::boxed(|| pool.learn_protocol()).await,
            };
            let (mut parts, body) = req.into_parts();
            if h2 {
                let pq = parts
                    .uri
                    .path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or("/")
                    .to_string();
                parts.uri = Uri::builder()
                    .scheme(target.scheme.clone())
                    .authority(target.authority.clone())
                    .path_and_query(pq)
                    .build()
                    .map_err(|e| e.to_string())?;
                parts.version = Version::HTTP_2;
            } else {
                if let Ok(host) = HeaderValue::from_str(target.authority.as_str()) {
                    parts.headers.insert(header::HOST, host);
                }
                parts.version = Version::HTTP_11;
            }
            let req = Request::from_parts(parts, OutboundBody::new(body));
            if h2 {
                let resp = crate::boxed_future::boxed(|| pool.send_h2(req))
                    .await
                    .map_err(|e| e.to_string())?;
                read_answer(resp).await
            } else {
                let resp = pool.send(req).await.map_err(|e| e.to_string())?;
                read_answer(resp).await
            }
        })
    }
}

/// A request as it went upstream, to send again after a refresh.
pub struct KeptRequest {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

/// What the way back needs: the credential the request carried, and the request when kept.
pub struct LoginRetry {
    cred: Credential,
    kept: Option<KeptRequest>,
}

/// Before the send: the credential onto `parts`, and the body kept when it may be sent again.
/// An answer instead when there is no credential (502, or 503 under `closed`) or the client's
/// body could not be read (400, 408).
pub async fn prepare(
    login: &UpstreamLogin,
    worker: &Worker,
    idx: usize,
    upstream: &Upstream,
    parts: &mut http::request::Parts,
    body: crate::client_body::ClientBody,
    read_bound: Duration,
) -> Result<(OutboundBody, Option<LoginRetry>), Response<GatewayBody>> {
    let client = PoolLoginClient {
        upstream,
        pools: &worker.pools[idx],
    };
    let cred = match login.credential(&worker.ctx, &client).await {
        Ok(c) => c,
        Err(e) => return Err(e.answer(&upstream.name).map(full)),
    };
    login.inject(&cred, &mut parts.headers);
    let limit = login.config().retry_body_limit;
    let small = body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= limit);
    if !small {
        // Streamed as it comes: a refusal then goes to the client (counted as `not_kept`).
        return Ok((OutboundBody::new(body), Some(LoginRetry { cred, kept: None })));
    }
    let bytes = match tokio::time::timeout(read_bound, Limited::new(body, limit as usize).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            let mut resp = json_error(
                StatusCode::BAD_REQUEST,
                "bad_request_body",
                "the request body could not be read (it ended early or was longer than announced)",
                &[],
            );
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(resp);
        }
        Err(_) => {
            let msg = format!("the request body did not arrive within {} ms", read_bound.as_millis());
            let mut resp = json_error(StatusCode::REQUEST_TIMEOUT, "request_body_timeout", &msg, &[]);
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(resp);
        }
    };
    let kept = KeptRequest {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: bytes.clone(),
    };
    Ok((OutboundBody::new(bytes), Some(LoginRetry { cred, kept: Some(kept) })))
}

/// After the send: on a `refresh_on` status, one refresh for the fleet, then the kept request
/// once more with the new credential (through `send`). Anything else passes as it is.
pub async fn after<F, Fut>(
    login: &UpstreamLogin,
    retry: LoginRetry,
    worker: &Worker,
    idx: usize,
    upstream: &Upstream,
    result: SendResult,
    send: F,
) -> SendResult
where
    F: FnOnce(Request<OutboundBody>) -> Fut,
    Fut: Future<Output = SendResult>,
{
    let status = match &result {
        Ok(Ok(resp)) if login.config().refreshes_on(resp.status().as_u16()) => resp.status().as_u16(),
        _ => return result,
    };
    let client = PoolLoginClient {
        upstream,
        pools: &worker.pools[idx],
    };
    let counter = |outcome: &'static str| {
        metrics::counter!(UPSTREAM_LOGIN_RETRIES, "upstream" => upstream.name.clone(), "outcome" => outcome)
            .increment(1)
    };
    let Some(kept) = retry.kept else {
        counter("not_kept");
        tracing::info!(upstream = %upstream.name, status, "the upstream refused the credential and the request body was not kept (longer than retry_body_limit, or of unknown length): the refusal goes to the client, and the credential is refreshed for the next requests");
        // The next requests carry a good credential; this one's answer is the refusal.
        let _ = login.refresh(&worker.ctx, &client, &retry.cred).await;
        return result;
    };
    // The refused answer is of no use: its connection closes with it.
    drop(result);
    let fresh = match login.refresh(&worker.ctx, &client, &retry.cred).await {
        Ok(fresh) => fresh,
        Err(e) => {
            counter("login_failed");
            return Ok(Ok(e.answer(&upstream.name).map(full)));
        }
    };
    counter("retried");
    let mut req = Request::new(OutboundBody::new(kept.body));
    *req.method_mut() = kept.method;
    *req.uri_mut() = kept.uri;
    *req.version_mut() = kept.version;
    *req.headers_mut() = kept.headers;
    login.inject(&fresh, req.headers_mut());
    send(req).await
}
