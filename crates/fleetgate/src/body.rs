//! Response bodies: the gateway's one boxed body type, and small JSON/text bodies. (Bodies
//! that hold permits until they end are `fleetgate_http::body::Finishing`.)

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON error response: `{"error": kind, "message": ..., extra...}`.
pub fn json_error(
    status: StatusCode,
    kind: &str,
    message: &str,
    extra: &[(&str, serde_json::Value)],
) -> Response<GatewayBody> {
    fleetgate_http::refusal::json_error(status, kind, message, extra).map(full)
}
