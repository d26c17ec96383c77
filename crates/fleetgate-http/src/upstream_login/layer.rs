//! Upstream login as a tower layer around an outbound client, for a Rust service that calls an
//! API needing a login: every request gets the fleet's credential, and one answered with a
//! `refresh_on` status is sent again once with a new one (one re-login for the fleet).
//!
//! The inner service takes `Request<Bytes>` (buffered, so a request can be sent again); map
//! it onto your client's body type, e.g. with `tower::ServiceBuilder::map_request`. The login
//! request goes through the same inner service; its answer is read up to
//! [`MAX_LOGIN_ANSWER_BYTES`](super::MAX_LOGIN_ANSWER_BYTES).
//!
//! ```no_run
//! use fleetgate_http::upstream_login::{layer::LoginLayer, Capture, Inject, LoginConfig, UpstreamLogin};
//! use fleetgate_http::StoreCtx;
//! use fleetgate_store::{Keyspace, Store};
//! # fn demo(store: Store) {
//! let config = LoginConfig::new(http::Method::POST, "/login", Capture::Cookie("sid".into()), Inject::Cookie("sid".into()));
//! let login = UpstreamLogin::new(&Keyspace::new("myapp").unwrap(), "billing", config);
//! let layer = LoginLayer::new(login, StoreCtx::new(store, "instance-1"));
//! // tower::ServiceBuilder::new().layer(layer).service(your_client)
//! # }
//! ```

use super::{BoxFuture, Credential, LoginClient, LoginError, UpstreamLogin, MAX_LOGIN_ANSWER_BYTES};
use crate::store_ctx::{StageStore, StoreCtx};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::ServiceExt;

/// What the layered service answers: the inner service's response, or the login's refusal.
#[derive(Debug)]
pub enum LoginLayerError<E> {
    /// The inner service failed.
    Inner(E),
    /// No credential (the response [`LoginError::answer`] gives is the gateway's answer).
    Login(LoginError),
}

impl<E: std::fmt::Display> std::fmt::Display for LoginLayerError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginLayerError::Inner(e) => e.fmt(f),
            LoginLayerError::Login(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoginLayerError<E> {}

/// Injects the fleet's credential into every request of the inner client.
pub struct LoginLayer<D> {
    login: Arc<UpstreamLogin>,
    ctx: StoreCtx<D>,
}

impl<D: Clone> Clone for LoginLayer<D> {
    fn clone(&self) -> Self {
        LoginLayer {
            login: self.login.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

impl<D: StageStore> LoginLayer<D> {
    pub fn new(login: UpstreamLogin, ctx: StoreCtx<D>) -> Self {
        LoginLayer {
            login: Arc::new(login),
            ctx,
        }
    }
}

impl<S, D: Clone> tower::Layer<S> for LoginLayer<D> {
    type Service = LoginService<S, D>;
    fn layer(&self, inner: S) -> Self::Service {
        LoginService {
            inner,
            login: self.login.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

/// The service made by [`LoginLayer`].
pub struct LoginService<S, D> {
    inner: S,
    login: Arc<UpstreamLogin>,
    ctx: StoreCtx<D>,
}

impl<S: Clone, D: Clone> Clone for LoginService<S, D> {
    fn clone(&self) -> Self {
        LoginService {
            inner: self.inner.clone(),
            login: self.login.clone(),
            ctx: self.ctx.clone(),
        }
    }
}

/// The inner service as the login's HTTP client.
struct Through<S>(S);

impl<S, B> LoginClient for Through<S>
where
    S: tower::Service<Request<Bytes>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, String>> {
        let svc = self.0.clone();
        Box::pin(async move {
            let resp = svc.oneshot(req).await.map_err(|e| e.to_string())?;
            let (head, mut body) = resp.into_parts();
            let mut buf = BytesMut::new();
            while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
                let frame = frame.map_err(|e| e.to_string())?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > MAX_LOGIN_ANSWER_BYTES {
                        return Err(format!("the login answer exceeds {MAX_LOGIN_ANSWER_BYTES} bytes"));
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Response::from_parts(head, buf.freeze()))
        })
    }
}

impl<S, D, B> tower::Service<Request<Bytes>> for LoginService<S, D>
where
    S: tower::Service<Request<Bytes>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: std::fmt::Display + Send,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
    D: StageStore,
{
    type Response = Response<B>;
    type Error = LoginLayerError<S::Error>;
    type Future = BoxFuture<'static, Result<Response<B>, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(LoginLayerError::Inner)
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (login, ctx) = (self.login.clone(), self.ctx.clone());
        Box::pin(async move {
            let client = Through(inner.clone());
            let cred = login.credential(&ctx, &client).await.map_err(LoginLayerError::Login)?;
            let (head, body) = req.into_parts();
            let again = |cred: &Credential| {
                let mut req = Request::new(body.clone());
                *req.method_mut() = head.method.clone();
                *req.uri_mut() = head.uri.clone();
                *req.version_mut() = head.version;
                *req.headers_mut() = head.headers.clone();
                login.inject(cred, req.headers_mut());
                req
            };
            let resp = inner
                .clone()
                .oneshot(again(&cred))
                .await
                .map_err(LoginLayerError::Inner)?;
            if !login.config().refreshes_on(resp.status().as_u16()) {
                return Ok(resp);
            }
            drop(resp);
            let fresh = login
                .refresh(&ctx, &client, &cred)
                .await
                .map_err(LoginLayerError::Login)?;
            inner.oneshot(again(&fresh)).await.map_err(LoginLayerError::Inner)
        })
    }
}
