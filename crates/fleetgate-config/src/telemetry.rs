//! `telemetry`: trace export. `telemetry.otlp` turns on OTLP export of one span per request
//! (HTTP/protobuf to a collector); without it no span is recorded.

use crate::fields::{nullable, refuse};
use serde::{Deserialize, Deserializer};

/// The `telemetry` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP trace export (`telemetry.otlp`); off when left out.
    #[serde(deserialize_with = "nullable")]
    pub otlp: Option<OtlpConfig>,
}

/// `telemetry.otlp`: where spans go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's traces URL (`telemetry.otlp.endpoint`): `http://HOST:PORT` gets
    /// `/v1/traces` appended; a URL whose path already ends in `/v1/traces` is used as written.
    pub endpoint: OtlpEndpoint,
    /// `service.name` of the spans (`telemetry.otlp.service_name`, default `fleetgate`).
    #[serde(default = "default_service_name", deserialize_with = "service_name")]
    pub service_name: String,
}

fn default_service_name() -> String {
    "fleetgate".to_string()
}

fn service_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = Option::<String>::deserialize(d)?.unwrap_or_else(default_service_name);
    let name = name.trim().to_string();
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(refuse(format!(
            "{name:?} is not a service name; accepted: {SERVICE_NAME_ACCEPTED}"
        )));
    }
    Ok(name)
}

/// What `service_name` accepts.
pub const SERVICE_NAME_ACCEPTED: &str = "1 to 256 characters, no control characters";
/// What `endpoint` accepts.
pub const ENDPOINT_ACCEPTED: &str = "an http:// URL of the collector, e.g. http://127.0.0.1:4318";

/// The collector's full traces URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint(pub String);

impl<'de> Deserialize<'de> for OtlpEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let url = String::deserialize(d)?;
        let trimmed = url.trim();
        let Some(rest) = trimmed.strip_prefix("http://") else {
            return Err(refuse(format!(
                "{trimmed:?} is not an http:// URL (https collectors are not supported yet); accepted: {ENDPOINT_ACCEPTED}"
            )));
        };
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let bad = |why: &str| refuse(format!("{trimmed:?}: {why}; accepted: {ENDPOINT_ACCEPTED}"));
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not accepted"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) || path.contains(['?', '#']) {
            return Err(bad("spaces, a query or a fragment are not accepted"));
        }
        let path = path.trim_end_matches('/');
        let full = if path.ends_with("v1/traces") {
            format!("http://{authority}/{path}")
        } else if path.is_empty() {
            format!("http://{authority}/v1/traces")
        } else {
            format!("http://{authority}/{path}/v1/traces")
        };
        Ok(OtlpEndpoint(full))
    }
}
