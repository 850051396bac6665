//! The REST API, one module per resource, composed here.

pub mod apps;
pub mod audit_log;
pub mod console;
pub mod credit_configs;
pub mod credits;
pub mod domains;
pub mod health;
pub mod lifecycle;
pub mod memberships;
pub mod openapi;
pub mod roles;
pub mod settings;
pub mod sync;
pub mod sync_health;
pub mod tenants;
pub mod usage;
pub mod users;
pub mod webhooks;

pub use crate::extract::{ApiJson, ApiQuery, Page, PageQuery, typed_body};

use axum::{http::StatusCode, response::Response};
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Every route of the API, each with its OpenAPI operation (`#[utoipa::path]` on the handler):
/// a route cannot be served without being documented, nor documented without being served.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::router())
        .merge(crate::auth::routes::router())
        .merge(crate::auth::oidc::router())
        .merge(tenants::router())
        .merge(lifecycle::router())
        .merge(users::router())
        .merge(roles::router())
        .merge(memberships::router())
        .merge(settings::router())
        .merge(domains::router())
        .merge(audit_log::router())
        .merge(sync::router())
        .merge(sync_health::router())
        .merge(credits::router())
        .merge(credit_configs::router())
        .merge(usage::router())
        .merge(apps::router())
        .merge(webhooks::router())
        .merge(console::router())
        .merge(openapi::router())
        .fallback(not_found)
}

async fn not_found() -> Response {
    crate::error::problem(
        StatusCode::NOT_FOUND,
        "Not Found",
        serde_json::json!({"detail": "no such route"}),
    )
}
