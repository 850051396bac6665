//! `GET /health` (database and Redis reachability) and `GET /metrics` (Prometheus text).

use std::time::Duration;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use fred::interfaces::ClientLike;
use serde_json::json;

use crate::startup::AppState;

/// Health and metrics routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
}

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
