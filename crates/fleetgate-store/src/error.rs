//! The store's one error type. Every failure is typed so callers can apply their failure policy;
//! nothing here ever carries a password.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The call did not finish within the store timeout.
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
    /// The store cannot be reached (connection refused, reset, DNS, TLS).
    #[error("store unreachable: {0}")]
    Unavailable(String),
    /// The key holds a value of another kind (Redis WRONGTYPE); the state was left untouched.
    #[error("key {0} holds a value of another type; it was left untouched")]
    WrongType(String),
    /// The store refused our credentials (wrong password, unknown ACL user).
    #[error("store refused authentication: {0}")]
    Auth(String),
    /// The store answered with an error (OOM, READONLY, script error...).
    #[error("store answered an error: {0}")]
    Server(String),
    /// The store's reply did not have the expected shape.
    #[error("unexpected reply from store: {0}")]
    Protocol(String),
    /// The store URL or options are invalid.
    #[error("invalid store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether the failure is about reaching the store (as opposed to a bad request), so that a
    /// breaker should count it.
    pub fn is_connectivity(&self) -> bool {
        matches!(self, StoreError::Timeout(_) | StoreError::Unavailable(_))
    }
}
