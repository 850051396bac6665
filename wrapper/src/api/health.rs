//! `GET /health` (database and Redis reachability: readiness), `GET /health/live` (the process
//! serves: liveness, which must not fail when a dependency does, or an outage of Postgres would
//! restart every replica) and `GET /metrics` (Prometheus text).

use std::time::Duration;
use utoipa_axum::{router::OpenApiRouter, routes};

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use fred::interfaces::ClientLike;
use serde_json::json;

use crate::state::AppState;

/// Health and metrics routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(live))
        .routes(routes!(metrics_text))
}

#[utoipa::path(get, path = "/health/live", tag = "health", security(()), responses((status = 200, description = "The process serves requests", body = Value)))]
async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/health", tag = "health", security(()), responses((status = 200, description = "Database and Redis answer", body = Value), (status = 503, description = "Database or Redis does not answer", body = Value)))]
async fn health(State(state): State<AppState>) -> Response {
    let timeout = Duration::from_secs(2);
    let db = tokio::time::timeout(timeout, sqlx::query("select 1").execute(&state.db))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    let redis = tokio::time::timeout(timeout, state.redis.ping::<String>(None))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    let outbox_depth: Option<i64> = if db {
        sqlx::query_scalar("select count(*) from outbox_pending")
            .fetch_one(&state.db)
            .await
            .ok()
    } else {
        None
    };
    let status = if db && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let body = json!({
        "status": word(db && redis),
        "database": word(db),
        "redis": word(redis),
        "outboxDepth": outbox_depth,
    });
    (status, Json(body)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "health", security(()), responses((status = 200, description = "Prometheus metrics", body = String, content_type = "text/plain")))]
async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
        .into_response()
}
