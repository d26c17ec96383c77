//! Answers the stages give instead of the service's: a JSON body
//! `{"error": KIND, "message": ..., ...}` with the status and headers the refusal calls for.

use crate::rate_headers::ceil_secs;
use bytes::Bytes;
use fleetgate_store::RateDecision;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

/// Why a limit refused a request.
#[derive(Debug)]
pub enum Refusal {
    /// 429: the rate limit is spent.
    Limited { limit: String, decision: RateDecision },
    /// 429: every permit is taken.
    Concurrency { limit: String, max: u64 },
    /// 503: the store failed and the limit's policy is `closed`.
    StoreDown { limit: String },
    /// 400: the request lacks what the limit's key names (`on_missing_key: refuse`).
    MissingKey { limit: String, what: String },
}

/// Carried in the extensions of a refusal's answer: which limit refused and why (the answer's
/// `error`), for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedBy {
    pub limit: String,
    pub error: &'static str,
}

impl Refusal {
    /// The answer for a refusal on `route`, with [`RefusedBy`] in its extensions.
    pub fn response(self, route: &str) -> Response<Bytes> {
        let (limit, error) = match &self {
            Refusal::Limited { limit, .. } => (limit.clone(), "rate_limited"),
            Refusal::Concurrency { limit, .. } => (limit.clone(), "concurrency_limited"),
            Refusal::StoreDown { limit } => (limit.clone(), "store_unavailable"),
            Refusal::MissingKey { limit, .. } => (limit.clone(), "missing_key"),
        };
        let mut resp = self.answer(route);
        resp.extensions_mut().insert(RefusedBy { limit, error });
        resp
    }

    fn answer(self, route: &str) -> Response<Bytes> {
        let ids = |limit: &str| [("route", json!(route)), ("limit", json!(limit))];
        match self {
            Refusal::Limited { limit, decision } => {
                let retry = ceil_secs(decision.retry_after).max(1);
                let msg = format!("rate limit {limit} exceeded; retry in {retry} s");
                let [r, l] = ids(&limit);
                let mut resp = json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    &msg,
                    &[r, l, ("retry_after", json!(retry))],
                );
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
                resp
            }
            Refusal::Concurrency { limit, max } => {
                let msg = format!("concurrency limit {limit} reached ({max} in flight)");
                let mut resp = json_error(StatusCode::TOO_MANY_REQUESTS, "concurrency_limited", &msg, &ids(&limit));
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
            Refusal::StoreDown { limit } => {
                let msg = format!("limit {limit} cannot be checked: the store is unavailable and its policy is closed");
                json_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &msg, &ids(&limit))
            }
            Refusal::MissingKey { limit, what } => {
                let msg = format!("limit {limit} needs {what}, which the request lacks");
                json_error(StatusCode::BAD_REQUEST, "missing_key", &msg, &ids(&limit))
            }
        }
    }
}

/// A JSON error answer: `{"error": kind, "message": ..., extra...}` and a newline.
pub fn json_error(
    status: StatusCode,
    kind: &str,
    message: &str,
    extra: &[(&str, serde_json::Value)],
) -> Response<Bytes> {
    let mut obj = serde_json::Map::new();
    obj.insert("error".into(), kind.into());
    obj.insert("message".into(), message.into());
    for (k, v) in extra {
        obj.insert((*k).into(), v.clone());
    }
    let mut text = serde_json::Value::Object(obj).to_string();
    text.push('\n');
    let mut resp = Response::new(Bytes::from(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
