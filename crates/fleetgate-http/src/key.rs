//! What a limit counts by ([`KeyPart`]) and what it does with a request that lacks it
//! ([`MissingKey`]).

use std::fmt;

/// One part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    /// The client IP: the TCP peer, or `X-Forwarded-For` from a trusted proxy (`ip`).
    Ip,
    /// A request header's value (`header:NAME`); the name is lowercase.
    Header(String),
    /// A cookie's value (`cookie:NAME`); the name as written (cookie names are case-sensitive).
    Cookie(String),
    /// The route: one bucket per route (`route`).
    Route,
    /// One bucket for everything (`global`).
    Global,
}

impl KeyPart {
    /// The accepted forms, for error messages.
    pub const ACCEPTED: &'static str =
        "ip, header:NAME, cookie:NAME, route, global, or a list of these (e.g. [ip, header:x-api-key])";

    /// Whether a request can lack this part (headers and cookies can be absent).
    pub fn can_be_missing(&self) -> bool {
        matches!(self, KeyPart::Header(_) | KeyPart::Cookie(_))
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Ip => f.write_str("ip"),
            KeyPart::Header(n) => write!(f, "header:{n}"),
            KeyPart::Cookie(n) => write!(f, "cookie:{n}"),
            KeyPart::Route => f.write_str("route"),
            KeyPart::Global => f.write_str("global"),
        }
    }
}

/// What a limit does with a request that lacks the header or cookie its key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MissingKey {
    /// Count all such requests in one shared anonymous bucket.
    Shared,
    /// Refuse them with 400.
    Refuse,
}

impl MissingKey {
    /// The accepted spellings, for error messages.
    pub const ACCEPTED: &'static str = "shared, refuse";

    /// The policy as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            MissingKey::Shared => "shared",
            MissingKey::Refuse => "refuse",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "shared" => MissingKey::Shared,
            "refuse" => MissingKey::Refuse,
            _ => return None,
        })
    }
}

impl fmt::Display for MissingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
