//! The call to the auth service: `GET {url}` with the listed request headers and the
//! `X-Forwarded-*` headers describing the original request (the convention of Traefik's
//! ForwardAuth and nginx's `auth_request`), bounded in time and in the size of the answer.
//!
//! The HTTP client is an [`AuthClient`]: the gateway binary gives a hyper-util one; a library
//! user or a test gives its own.

use crate::payment::BoxFuture;
use bytes::Bytes;
use http::HeaderMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest auth service answer body read (a denial's body is passed to the client).
pub const MAX_AUTH_ANSWER_BYTES: usize = 16 * 1024;

/// What the auth service answered.
#[derive(Debug, Clone)]
pub struct AuthAnswer {
    pub status: u16,
    pub headers: HeaderMap,
    /// At most [`MAX_AUTH_ANSWER_BYTES`].
    pub body: Bytes,
}

/// Sends one `GET url` with `headers`; the answer, or why none came.
pub trait AuthClient: Send + Sync + 'static {
    fn check<'a>(&'a self, url: &'a str, headers: HeaderMap) -> BoxFuture<'a, Result<AuthAnswer, String>>;
}

/// Why the auth service gave no verdict (the client gets 502).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("the auth service did not answer within {0} ms")]
    Timeout(u128),
    #[error("the auth service could not be reached: {0}")]
    Unreachable(String),
    #[error("the auth service answered {0}, which is no verdict")]
    Status(u16),
}

impl AuthError {
    /// The `error` field of the 502 body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Timeout(_) => "forward_auth_timeout",
            AuthError::Unreachable(_) => "forward_auth_unreachable",
            AuthError::Status(_) => "forward_auth_error",
        }
    }
}

/// One auth service: its URL, time bound and client.
#[derive(Clone)]
pub struct AuthService {
    url: String,
    timeout: Duration,
    client: Arc<dyn AuthClient>,
}

impl AuthService {
    pub fn new(url: &str, timeout: Duration, client: Arc<dyn AuthClient>) -> Self {
        AuthService {
            url: url.to_string(),
            timeout,
            client,
        }
    }

    /// Asks; a 5xx answer is an error, not a verdict (it is never cached nor shown).
    pub async fn ask(&self, headers: HeaderMap) -> Result<AuthAnswer, AuthError> {
        match tokio::time::timeout(self.timeout, self.client.check(&self.url, headers)).await {
            Err(_) => Err(AuthError::Timeout(self.timeout.as_millis())),
            Ok(Err(e)) => Err(AuthError::Unreachable(e)),
            Ok(Ok(a)) if a.status >= 500 || a.status < 200 => Err(AuthError::Status(a.status)),
            Ok(Ok(a)) => Ok(a),
        }
    }
}
