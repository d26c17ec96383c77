//! Optional OTLP trace export (`telemetry.otlp`): one server span per routed request, exported
//! by the OpenTelemetry SDK's batch processor over HTTP/protobuf to the collector.
//!
//! The request path never waits for export: ending a span puts it in the batch processor's
//! bounded queue (2048 spans; when full, spans are dropped and the SDK counts them), and the
//! processor's own thread sends a batch every 5 s, or sooner when 512 are queued. At shutdown
//! what is queued is flushed (bounded by the exporter's timeout).
//!
//! The span continues the request's W3C trace context: an incoming `traceparent` is its
//! remote parent (and the parent-based sampler follows its sampled flag); without one the span
//! starts a trace. The upstream's `traceparent` then names this span.

use crate::correlation::TraceContext;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::OnceLock;

struct Export {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static EXPORT: OnceLock<Export> = OnceLock::new();

/// Starts the exporter (once per process).
pub fn install(config: &fleetgate_config::OtlpConfig) -> Result<(), String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.0.clone())
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("telemetry.otlp: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("fleetgate");
    let _ = EXPORT.set(Export { provider, tracer });
    tracing::info!(endpoint = %config.endpoint.0, service = %config.service_name, "OTLP trace export on");
    Ok(())
}

/// Whether spans are exported.
#[inline]
pub fn enabled() -> bool {
    EXPORT.get().is_some()
}

/// Flushes what is queued and stops the exporter.
pub fn shutdown() {
    if let Some(e) = EXPORT.get() {
        if let Err(err) = e.provider.shutdown() {
            tracing::warn!(error = %err, "OTLP exporter shutdown");
        }
    }
}

/// One request's server span.
pub struct ServerSpan(opentelemetry_sdk::trace::Span);

/// Starts the request's span as a child of `trace`'s caller (if any), and makes `trace` name
/// it: its span id (and, for a new trace, its trace id) become the SDK's.
pub fn start(trace: &mut TraceContext, route: &str, method: &http::Method, path: &str) -> Option<ServerSpan> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let export = EXPORT.get()?;
    let parent = match trace.parent_id {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let span = export
        .tracer
        .span_builder(format!("{method} {route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("http.route", route.to_string()),
            KeyValue::new("url.path", path.to_string()),
        ])
        .start_with_context(&export.tracer, &parent);
    let cx = span.span_context();
    if cx.is_valid() {
        trace.trace_id = cx.trace_id().to_bytes();
        trace.span_id = cx.span_id().to_bytes();
        trace.flags = cx.trace_flags().to_u8();
    }
    Some(ServerSpan(span))
}

impl ServerSpan {
    /// Ends the span with the response's status and the request's id.
    pub fn end(mut self, status: u16, request_id: &http::HeaderValue, upstream: Option<&str>) {
        use opentelemetry::trace::Status;
        self.0
            .set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        if let Ok(id) = request_id.to_str() {
            self.0
                .set_attribute(KeyValue::new("fleetgate.request_id", id.to_string()));
        }
        if let Some(u) = upstream {
            self.0.set_attribute(KeyValue::new("fleetgate.upstream", u.to_string()));
        }
        if status >= 500 {
            self.0.set_status(Status::error(format!("HTTP {status}")));
        }
        self.0.end();
    }
}
