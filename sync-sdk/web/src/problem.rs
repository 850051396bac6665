//! RFC 7807 `application/problem+json` answers: one constructor naming the field at fault, and
//! a middleware that makes every refusal of a router a problem, whichever layer made it.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

/// An RFC 7807 `application/problem+json` response, naming the field at fault if any.
pub fn problem(status: StatusCode, field: Option<&str>, detail: &str) -> Response {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(field) = field {
        body["field"] = serde_json::json!(field);
    }
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// Middleware for every API (the wrapper's and the apps'): each refusal is
/// `application/problem+json`, whichever layer made it.
///
/// * A path or query holding an encoded NUL (`%00`) is refused up front (400 naming `path` or
///   `query`): no handler or store sees it.
/// * An error response from a layer or extractor that answers in plain text — the body limit's
///   413, the router's 400 for a path parameter that does not parse, 405, a timeout's 408 — is
///   turned into a problem carrying the same status and its text as `detail`. HTML pages and
///   problems pass unchanged.
///
/// ```no_run
/// # fn f(router: axum::Router) -> axum::Router {
/// router.layer(axum::middleware::from_fn(sync_web::problem::problems_only))
/// # }
/// ```
pub async fn problems_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uri = request.uri();
    let has_nul = |s: &str| s.to_ascii_lowercase().contains("%00");
    if has_nul(uri.path()) {
        return problem(
            StatusCode::BAD_REQUEST,
            Some("path"),
            "must not contain NUL characters (%00)",
        );
    }
    if uri.query().is_some_and(has_nul) {
        return problem(
            StatusCode::BAD_REQUEST,
            Some("query"),
            "must not contain NUL characters (%00)",
        );
    }
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/problem+json") || content_type.starts_with("text/html")
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let detail = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.trim().chars().take(500).collect()
    };
    // A path parameter the router could not parse names the path.
    let field = (status == StatusCode::BAD_REQUEST && detail.contains("URL")).then_some("path");
    let mut converted = problem(status, field, &detail);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            converted.headers_mut().insert(name.clone(), value.clone());
        }
    }
    converted
}
