//! Calls to the x402 facilitator: `POST {facilitator}/verify` and `POST {facilitator}/settle`
//! with `{x402Version, paymentPayload, paymentRequirements}`, each bounded in time and size.
//!
//! The HTTP client is a [`FacilitatorClient`]: the gateway binary gives a hyper-util one; a
//! library user or a test gives its own.

use super::wire::{SettleAnswer, VerifyAnswer};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Largest facilitator answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A boxed future, as [`FacilitatorClient`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sends one JSON POST: `url`, the body, an optional bearer token. Answers the status and at
/// most [`MAX_ANSWER_BYTES`] of body, or why no answer came.
pub trait FacilitatorClient: Send + Sync + 'static {
    fn post_json<'a>(
        &'a self,
        url: &'a str,
        body: Bytes,
        bearer: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(u16, Bytes), String>>;
}

/// Why a facilitator call gave no usable answer (502).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FacilitatorError {
    #[error("the facilitator did not answer within {0} ms")]
    Timeout(u128),
    #[error("the facilitator could not be reached: {0}")]
    Unreachable(String),
    #[error("the facilitator answered {0}")]
    Status(u16),
    #[error("the facilitator's answer is not JSON of the expected shape: {0}")]
    BadAnswer(String),
}

/// One facilitator: its URLs, token, time bound and client.
#[derive(Clone)]
pub struct Facilitator {
    verify_url: String,
    settle_url: String,
    token: Option<String>,
    timeout: Duration,
    client: Arc<dyn FacilitatorClient>,
}

impl Facilitator {
    pub fn new(base: &str, token: Option<String>, timeout: Duration, client: Arc<dyn FacilitatorClient>) -> Self {
        let base = base.trim_end_matches('/');
        Facilitator {
            verify_url: format!("{base}/verify"),
            settle_url: format!("{base}/settle"),
            token,
            timeout,
            client,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        url: &str,
        body: Bytes,
    ) -> Result<(T, serde_json::Value), FacilitatorError> {
        let answer = tokio::time::timeout(self.timeout, self.client.post_json(url, body, self.token.as_deref())).await;
        let (status, bytes) = match answer {
            Err(_) => return Err(FacilitatorError::Timeout(self.timeout.as_millis())),
            Ok(Err(e)) => return Err(FacilitatorError::Unreachable(e)),
            Ok(Ok(a)) => a,
        };
        // x402 facilitators answer an invalid payment with 400 and the same JSON shape; other
        // statuses carry no verdict.
        if !(200..300).contains(&status) && status != 400 {
            return Err(FacilitatorError::Status(status));
        }
        let bad = |e: serde_json::Error| FacilitatorError::BadAnswer(e.to_string());
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(bad)?;
        let typed = serde_json::from_value(value.clone()).map_err(bad)?;
        Ok((typed, value))
    }

    /// Asks whether the payment is valid.
    pub async fn verify(&self, body: Bytes) -> Result<VerifyAnswer, FacilitatorError> {
        self.call(&self.verify_url, body).await.map(|(t, _)| t)
    }

    /// Asks for the payment to be settled; the answer, and its JSON as received.
    pub async fn settle(&self, body: Bytes) -> Result<(SettleAnswer, serde_json::Value), FacilitatorError> {
        self.call(&self.settle_url, body).await
    }
}
