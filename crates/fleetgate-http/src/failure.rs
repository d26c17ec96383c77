//! What a concern does when the store fails or times out.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// What a limit does when the store fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailurePolicy {
    /// Allow the request, and count it in metrics.
    Open,
    /// Refuse fast with 503.
    Closed,
    /// Fall back to the in-process store, dividing the limit by the number of live instances.
    Local,
}

impl FailurePolicy {
    /// The accepted spellings, for error messages.
    pub const ACCEPTED: &'static str = "open, closed, local";

    /// The policy as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Open => "open",
            FailurePolicy::Closed => "closed",
            FailurePolicy::Local => "local",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => FailurePolicy::Open,
            "closed" => FailurePolicy::Closed,
            "local" => FailurePolicy::Local,
            _ => return None,
        })
    }
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors follow [`crate::key::FIELD_MARK`]. Each concern has its own default (no `Default`):
/// a concern's field reads an `Option<FailurePolicy>`, null or missing being its default.
impl<'de> Deserialize<'de> for FailurePolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::key::policy(String::deserialize(d)?, FailurePolicy::parse, FailurePolicy::ACCEPTED)
    }
}

/// The limits' policy: `local` when not written (or written null).
pub(crate) fn local<'de, D: Deserializer<'de>>(d: D) -> Result<FailurePolicy, D::Error> {
    Ok(Option::<FailurePolicy>::deserialize(d)?.unwrap_or(FailurePolicy::Local))
}

pub(crate) fn default_local() -> FailurePolicy {
    FailurePolicy::Local
}
