//! `upstreams.NAME.tls` and `upstreams.NAME.protocol`: how the gateway speaks to an upstream's
//! `https://` targets (the CA to trust, a client certificate, the name to verify) and which
//! HTTP version it uses.

use crate::fields::{flag, refuse, refuse_at};
use crate::tls::checked_files;
use serde::{Deserialize, Deserializer};
use std::path::PathBuf;

/// What `protocol` accepts, for messages.
pub(crate) const PROTOCOL_ACCEPTED: &str =
    "auto (ALPN for https targets: HTTP/2 when the target offers it; HTTP/1.1 for http targets), http1, http2 (ALPN h2 for https targets, prior knowledge for http targets)";

/// TLS to an upstream's `https://` targets (`upstreams.NAME.tls`). Without it, `https://`
/// targets are verified against the system's CA roots, with the target's host as the name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CA certificates to trust instead of the system's roots (`ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain presented to the targets (`cert_file`, with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (`key_file`, with `cert_file`).
    pub key_file: Option<PathBuf>,
    /// Name sent as SNI and verified in the target's certificate (`server_name`; default: the
    /// target's host).
    pub server_name: Option<String>,
    /// Accept any certificate from the targets (`insecure_skip_verify`, default false). For
    /// tests against self-signed targets only: it makes TLS open to interception.
    pub insecure_skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    server_name: Option<String>,
    #[serde(default, deserialize_with = "flag::<_, false>")]
    insecure_skip_verify: bool,
}

impl<'de> Deserialize<'de> for UpstreamTlsConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Some(w) = Option::<Written>::deserialize(d)? else {
            return Ok(UpstreamTlsConfig::default());
        };
        let (ca_file, cert_file, key_file) = checked_files(w.ca_file, w.cert_file, w.key_file)?;
        let server_name = match w.server_name {
            None => None,
            Some(n) => Some(server_name(&n).map_err(|why| refuse_at(".server_name", why))?),
        };
        Ok(UpstreamTlsConfig {
            ca_file,
            cert_file,
            key_file,
            server_name,
            insecure_skip_verify: w.insecure_skip_verify,
        })
    }
}

/// A DNS name or IP address, lowercase.
fn server_name(name: &str) -> Result<String, String> {
    let n = name.trim().to_ascii_lowercase();
    let accepted = "accepted: a DNS name (e.g. api.internal) or an IP address, as in the target's certificate";
    let dns = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if dns || n.parse::<std::net::IpAddr>().is_ok() {
        Ok(n)
    } else {
        Err(format!("{name:?} is not a DNS name or IP address; {accepted}"))
    }
}

/// The HTTP version spoken to an upstream's targets (`upstreams.NAME.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// ALPN for `https://` targets (HTTP/2 when the target offers `h2`), HTTP/1.1 for `http://`
    /// ones (gRPC requests always go over HTTP/2).
    #[default]
    Auto,
    /// HTTP/1.1 (gRPC requests still go over HTTP/2, which gRPC needs).
    Http1,
    /// HTTP/2: ALPN `h2` for `https://` targets, prior knowledge for `http://` ones.
    Http2,
}

impl<'de> Deserialize<'de> for UpstreamProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(UpstreamProtocol::Auto);
        };
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(UpstreamProtocol::Auto),
            "http1" | "http/1.1" | "h1" => Ok(UpstreamProtocol::Http1),
            "http2" | "h2" => Ok(UpstreamProtocol::Http2),
            _ => Err(refuse(format!(
                "unknown protocol {text:?}; accepted: {PROTOCOL_ACCEPTED}"
            ))),
        }
    }
}
