//! The TLS listener's side of a connection: the rustls configuration (certificates from the
//! [`CertStore`], ALPN `h2` and `http/1.1`), the handshake with its bound, and how a failed
//! handshake is reported: a count by reason (`fleetgate_tls_handshake_errors_total{reason}`), a
//! debug line per connection and at most one warning per [`WARN_EVERY`] for the instance,
//! so that a scan of the port cannot flood the log. Only that connection ends.

use super::CertStore;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::TlsAcceptor;

/// Least time between two warnings about failed handshakes.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The TLS listener: where it listens, and what its handshakes use.
pub struct TlsListener {
    pub listen: SocketAddr,
    pub store: Arc<CertStore>,
    pub acceptor: TlsAcceptor,
}

impl TlsListener {
    pub fn new(listen: SocketAddr, store: Arc<CertStore>) -> Result<Self, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsListener {
            listen,
            store,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Why a handshake failed, as the metric's `reason` label.
pub fn reason(e: &std::io::Error) -> &'static str {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::NoApplicationProtocol => "no_alpn",
            rustls::Error::PeerIncompatible(_) => "incompatible",
            rustls::Error::AlertReceived(_) => "alert",
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::DecryptError => "protocol",
            _ => "other",
        };
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut => "timeout",
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => "closed",
        _ => "other",
    }
}

/// Counts and logs one failed handshake.
pub fn handshake_failed(e: &std::io::Error, peer: SocketAddr) {
    let reason = reason(e);
    metrics::counter!(crate::telemetry::TLS_HANDSHAKE_ERRORS, "reason" => reason).increment(1);
    tracing::debug!(peer = %peer, reason, error = %e, "TLS handshake failed");
    if warn_now() {
        tracing::warn!(peer = %peer, reason, error = %e, "TLS handshake failed (more are counted in fleetgate_tls_handshake_errors_total, at most one warning per 10 s)");
    }
}

/// Whether a warning may be logged now (at most one per [`WARN_EVERY`], all workers together).
fn warn_now() -> bool {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    // Milliseconds since ORIGIN of the last warning, plus one (0: none yet).
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
    let last = LAST.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < WARN_EVERY.as_millis() as u64 {
        return false;
    }
    LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}
