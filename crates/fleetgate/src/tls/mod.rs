//! TLS, both ways, on rustls (ring):
//! - termination on the `tls` listener ([`server`]): certificates chosen by SNI from a
//!   swappable [`CertStore`] ([`certs`]), reloaded when their files change ([`reload`]),
//!   HTTP/1.1 or HTTP/2 by ALPN; handshake failures are logged and counted by reason;
//! - TLS to `https://` upstream targets ([`client`]): system roots or a CA file, SNI from the
//!   target's host (or `server_name`), an optional client certificate, ALPN for HTTP/2.

pub mod certs;
pub mod client;
pub mod reload;
pub mod server;

pub use certs::{CertSet, CertStore};

/// The crypto provider of every TLS configuration of the gateway.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Marks a request that arrived on the TLS listener (a request extension), so that
/// `X-Forwarded-Proto` says `https` and gateway session cookies are `Secure`.
pub use fleetgate_http::ArrivedOverTls;
