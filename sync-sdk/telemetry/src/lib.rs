//! # sync-telemetry
//!
//! Logs, traces and metrics, set up the same way in the wrapper and in every app.
//!
//! * [`prometheus`] is the process's Prometheus recorder (`/metrics` renders it).
//! * [`init`] installs the log output (pretty, or JSON lines) filtered by `RUST_LOG`, and —
//!   only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set — an OpenTelemetry layer that exports spans
//!   over OTLP/HTTP (protobuf) in batches. The standard `OTEL_*` variables apply
//!   (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//!   `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, …).
//! * W3C trace context travels with the work: [`traceparent_of`] writes a span's context as a
//!   `traceparent` value (into an HTTP header, an outbox row, a stream entry) and
//!   [`continue_trace`] makes a span the child of one it received.
//!
//! When nothing is exported the helpers return at once ([`exporting`] is one atomic load), so
//! callers create their per-event spans only when someone will see them: tracing costs nothing
//! when it is off.
//!
//! ```no_run
//! # async fn serve() {}
//! #[tokio::main]
//! async fn main() {
//!     // Kept until main returns: dropping it sends the spans still buffered.
//!     let _telemetry = sync_telemetry::init("crm", false);
//!     serve().await;
//! }
//! ```
#![warn(missing_docs)]

mod prometheus;
pub use prometheus::{PrometheusHandle, SECONDS_BUCKETS, prometheus};

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithHttpConfig};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::filter_fn, layer::SubscriberExt, util::SubscriberInitExt,
};

/// The header (and stream entry field) carrying W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The variable that turns export on.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The installed telemetry. Keep it until the process ends: dropping it flushes the spans not
/// yet exported and stops the exporter.
#[must_use = "dropping the guard stops the export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                eprintln!("telemetry: flushing the last spans failed: {e}");
            }
        }
    }
}

/// Install logging for `service` (JSON lines when `json`; `RUST_LOG` filters, `info` when it is
/// unset), and the OTLP span export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. A second call in
/// one process changes nothing.
pub fn init(service: &str, json: bool) -> Telemetry {
    init_with_default(service, json, "info")
}

/// [`init`], with the log filter used when `RUST_LOG` is unset (e.g. `warn`).
pub fn init_with_default(service: &str, json: bool, default_filter: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter).boxed()
    }];
    let provider = match std::env::var(ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.trim().is_empty() => match provider(service) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("telemetry: traces are not exported ({ENDPOINT_VAR}={endpoint}): {e}");
                None
            }
        },
        _ => None,
    };
    if let Some(provider) = &provider {
        // Spans only (log lines stay in the log), at info and above whatever RUST_LOG says:
        // a quiet log must not cut the trace.
        let spans = filter_fn(|meta| meta.is_span() && *meta.level() <= tracing::Level::INFO);
        let tracer = provider.tracer("tenantsync");
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(spans)
                .boxed(),
        );
    }
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    let provider = provider.filter(|_| installed);
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    Telemetry { provider }
}

fn provider(service: &str) -> Result<SdkTracerProvider, Box<dyn std::error::Error>> {
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(Sender::new()?)
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Whether spans are exported (one atomic load: check it before making spans only a trace
/// would show).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// `span`'s trace context as a W3C `traceparent` value; `None` when nothing is exported or the
/// span is not recorded.
pub fn traceparent_of(span: &Span) -> Option<String> {
    if !exporting() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The current span's trace context as a `traceparent` value (see [`traceparent_of`]).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// Make `span` a child of the remote span `traceparent` names (a header, an envelope, a stream
/// entry). Nothing happens when nothing is exported or the value is not valid trace context.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| exporting()) else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer, which exporting() ruled out.
        let _ = span.set_parent(parent);
    }
}

/// Whether `value` is a well-formed W3C `traceparent` (version 00): what a service may pass on
/// unchanged when it does not export traces itself.
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if *version == "00" && hex(trace, 32) && nonzero(trace) && hex(parent, 16)
            && nonzero(parent) && hex(flags, 2))
}

/// Sends the exporter's requests with reqwest on a runtime of its own: the batch processor
/// exports from its own thread, which has no runtime, and must not wait on the application's
/// (a single-threaded runtime blocked in shutdown would never run the request).
#[derive(Debug)]
struct Sender {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl Sender {
    fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            client,
            runtime: handle,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for Sender {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let sent = self.runtime.spawn(async move {
            let response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut answer = Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                *headers = response.headers().clone();
            }
            let body = response.bytes().await?;
            Ok::<_, HttpError>(answer.body(body)?)
        });
        sent.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_format_is_checked() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(!is_traceparent(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn nothing_is_made_when_nothing_is_exported() {
        let span = tracing::info_span!("x");
        assert_eq!(traceparent_of(&span), None);
        continue_trace(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
    }
}
