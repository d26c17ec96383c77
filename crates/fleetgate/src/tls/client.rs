//! TLS to `https://` upstream targets: the CA roots (a `ca_file`, else the system's), an
//! optional client certificate, the name sent as SNI and verified (`server_name`, else the
//! target's host), and ALPN. Three connectors share one configuration and differ in the
//! protocols they offer: `http/1.1` only, `h2` only, or both (`protocol: auto`, the target
//! chooses). `insecure_skip_verify` (tests only) accepts any certificate.

use crate::idle::WriteBound;
use fleetgate_config::UpstreamTlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Which protocols a connection offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    Http2,
    Either,
}

/// TLS settings of one upstream.
pub struct UpstreamTls {
    http1: TlsConnector,
    http2: TlsConnector,
    either: TlsConnector,
    /// `server_name`, when set: used for every target instead of its host.
    server_name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// The settings of `upstreams.NAME.tls`; the message names the upstream's files.
    pub fn new(config: &UpstreamTlsConfig) -> Result<Self, String> {
        let builder = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let builder = if config.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(super::provider())))
        } else {
            builder.with_root_certificates(roots(config.ca_file.as_deref())?)
        };
        let mut base = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                // Checked first for a message naming both files when they do not match.
                let pair = super::certs::load_pair(cert, key).map_err(|why| format!("tls: {why}"))?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("tls.key_file {:?} cannot be read: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(pair.cert, key)
                    .map_err(|e| format!("tls: the client certificate cannot be used: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        let with = |alpn: &[&[u8]], base: &rustls::ClientConfig| {
            let mut c = base.clone();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(c))
        };
        base.alpn_protocols = Vec::new();
        let server_name = match &config.server_name {
            None => None,
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| format!("tls.server_name {n:?}: {e}"))?),
        };
        Ok(UpstreamTls {
            http1: with(&[b"http/1.1"], &base),
            http2: with(&[b"h2"], &base),
            either: with(&[b"h2", b"http/1.1"], &base),
            server_name,
        })
    }

    /// The name verified for a target whose host is `host`.
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => ServerName::try_from(host.to_string())
                .map_err(|e| format!("target host {host:?} cannot be verified by TLS: {e}")),
        }
    }

    /// TLS over `tcp`, offering `alpn`; also says whether the target chose HTTP/2.
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: WriteBound<TcpStream>,
        alpn: Alpn,
    ) -> std::io::Result<(UpstreamIo, bool)> {
        let connector = match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::Http2 => &self.http2,
            Alpn::Either => &self.either,
        };
        let tls = connector.connect(name, tcp).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((UpstreamIo::Tls(Box::new(tls)), h2))
    }
}

/// The CA roots: the certificates of `ca_file`, else the system's (read once per process).
fn roots(ca_file: Option<&std::path::Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            let name = file.display();
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("tls.ca_file {name:?} cannot be read: {e}"))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("tls.ca_file {name:?} holds no usable CA certificate"));
            }
        }
        None => {
            static SYSTEM: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
            let system = SYSTEM.get_or_init(|| rustls_native_certs::load_native_certs().certs);
            store.add_parsable_certificates(system.iter().cloned());
            if store.is_empty() {
                return Err("tls: no CA roots found on this system for https targets; accepted: tls.ca_file, or the system's roots (apt-get install -y ca-certificates)".to_string());
            }
        }
    }
    Ok(store)
}

/// A connection to a target, plain or TLS.
pub enum UpstreamIo {
    Plain(WriteBound<TcpStream>),
    Tls(Box<tokio_rustls::client::TlsStream<WriteBound<TcpStream>>>),
}

impl AsyncRead for UpstreamIo {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `insecure_skip_verify`: every certificate is taken (signatures are still checked, so the
/// handshake itself is sound; who holds the key is not).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
