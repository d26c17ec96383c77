//! `tls`: TLS termination beside the plain `listen` (HTTP/1.1 and HTTP/2 chosen by ALPN), with
//! one or more certificates chosen by SNI. The files are checked when the configuration is read
//! (they exist, are readable, and are PEM holding a certificate or a private key); whether a
//! key belongs to its certificate is checked when the gateway is built (`fleetgate check` and
//! start), where the certificates are parsed.

use crate::fields::{listen, nullable, refuse, refuse_at};
use crate::tls::pem_file;
use serde::{Deserialize, Deserializer};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// What `tls.certificates` accepts, for messages.
pub(crate) const CERTIFICATES_ACCEPTED: &str =
    "a non-empty list of { cert_file: PATH, key_file: PATH } (PEM files); the first is the default, the others are chosen by SNI";

/// The TLS listener (`tls`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Address of the TLS listener (`tls.listen`, default `127.0.0.1:8443`).
    #[serde(default = "default_tls_listen", deserialize_with = "listen::<_, 8443>")]
    pub listen: SocketAddr,
    /// Certificates with their keys (`tls.certificates`, at least one). The first is served
    /// when the client's SNI matches no certificate's names (or it sent none).
    #[serde(deserialize_with = "certificates")]
    pub certificates: Vec<CertificatePair>,
    /// How often the certificate files are checked for changes (`tls.reload_interval`,
    /// default 5s); a changed pair is loaded without a restart.
    #[serde(default = "default_reload", deserialize_with = "crate::duration::dur::<_, 5000>")]
    pub reload_interval: Duration,
}

fn default_tls_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 8443))
}

fn default_reload() -> Duration {
    Duration::from_secs(5)
}

/// One certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertificatePair {
    /// PEM file with the certificate chain, leaf first (`cert_file`).
    pub cert_file: PathBuf,
    /// PEM file with the certificate's private key (`key_file`).
    pub key_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pair {
    cert_file: Option<String>,
    key_file: Option<String>,
}

impl<'de> Deserialize<'de> for CertificatePair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = Pair::deserialize(d)?;
        let pair = "accepted: { cert_file: PATH, key_file: PATH }, both PEM files";
        let (Some(cert), Some(key)) = (p.cert_file, p.key_file) else {
            return Err(refuse(format!(
                "a certificate needs both cert_file and key_file; {pair}"
            )));
        };
        Ok(CertificatePair {
            cert_file: pem_file(&cert, true).map_err(|why| refuse_at(".cert_file", why))?,
            key_file: pem_file(&key, false).map_err(|why| refuse_at(".key_file", why))?,
        })
    }
}

fn certificates<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CertificatePair>, D::Error> {
    let list: Vec<CertificatePair> = nullable(d)?;
    if list.is_empty() {
        return Err(refuse(format!("no certificates; accepted: {CERTIFICATES_ACCEPTED}")));
    }
    Ok(list)
}
