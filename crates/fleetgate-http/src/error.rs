//! Why a stage could not be built from its parameters. The configuration file's loader checks
//! the same things with file positions; a library user building stages in code gets these.

/// A stage's parameters are not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// A name that cannot be part of a store key.
    #[error("{what} {name:?} cannot name store keys: {why}")]
    BadName {
        what: &'static str,
        name: String,
        why: String,
    },
    /// A limit whose key lists no part.
    #[error("limit {limit}: the key lists no part; accepted: {}", crate::KeyPart::ACCEPTED)]
    EmptyKey { limit: String },
    /// Lease mode on a limit that cannot lease, or with bad lease settings.
    #[error("limit {limit}: {why}")]
    Lease { limit: String, why: String },
    /// A value out of its range.
    #[error("limit {limit}: {field} is {value}; accepted: {accepted}")]
    OutOfRange {
        limit: String,
        field: &'static str,
        value: u64,
        accepted: String,
    },
}
