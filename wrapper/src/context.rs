//! Per-request context: the request id (from `X-Request-Id`, or made here) and the correlation
//! id (from `X-Correlation-Id`, or made here). The correlation id is echoed in the response and
//! copied into every event the request causes, so a change can be followed from the API call to
//! every app that applied it.

use axum::{
    extract::{FromRequestParts, Request},
    http::{HeaderValue, request::Parts},
    middleware::Next,
    response::Response,
};
use tracing::Instrument;
use uuid::Uuid;

/// Header carrying the correlation id.
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// Header carrying the request id.
pub const REQUEST_HEADER: &str = "x-request-id";

/// Ids that identify a request and the work it causes.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Unique per HTTP request.
    pub request_id: String,
    /// Propagated across services and into events.
    pub correlation_id: String,
}

fn header_or_new(req: &Request, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned)
}

/// Middleware: attach a [`Ctx`], run the request inside a span carrying both ids, and echo them.
pub async fn attach(mut req: Request, next: Next) -> Response {
    let ctx = Ctx {
        request_id: header_or_new(&req, REQUEST_HEADER),
        correlation_id: header_or_new(&req, CORRELATION_HEADER),
    };
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %ctx.request_id,
        correlation_id = %ctx.correlation_id,
        status = tracing::field::Empty,
    );
    req.extensions_mut().insert(ctx.clone());
    let started = std::time::Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    metrics::histogram!("tsync_wrapper_http_request_duration_seconds", "status" => status.to_string())
        .record(started.elapsed().as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "request done"
        )
    });
    for (name, value) in [
        (REQUEST_HEADER, &ctx.request_id),
        (CORRELATION_HEADER, &ctx.correlation_id),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Ctx>().cloned().unwrap_or_else(|| {
            let id = Uuid::now_v7().to_string();
            Ctx {
                request_id: id.clone(),
                correlation_id: id,
            }
        }))
    }
}
