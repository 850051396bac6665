//! `GET /api/admin/sync-health`: how every registered app keeps up, for operators' scripts (and
//! the console to come): each replica's last report (readiness, per partition the live reader,
//! group lag, pending entries and the age of the oldest, parked tenants, re-syncs, tenants
//! loaded), the app's dead letters and pending re-syncs, and its recent full syncs. Read from
//! what the SDK writes into Redis (`{ns}:status:{app}`, `{ns}:dlq:{app}`, `{ns}:resyncs:{app}`,
//! `{ns}:fullsyncs:{app}`); the wrapper does not interpret the reports beyond their age.

use axum::{Json, extract::State};
use fred::prelude::*;
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{auth::Caller, error::ApiResult, state::AppState};

/// A replica silent for longer than this is shown as not fresh (the SDK reports every 5 s).
const FRESH_MS: u64 = 20_000;

/// Sync-health routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sync_health))
}

/// Every registered app's sync state (platform admins).
#[utoipa::path(get, path = "/api/admin/sync-health", tag = "sync", responses((status = 200, description = "Every app's replicas, dead letters, re-syncs and full syncs", body = Value)))]
async fn sync_health(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_platform_admin()?;
    let apps: Vec<String> = sqlx::query_scalar("select name from applications order by name")
        .fetch_all(&state.db)
        .await?;
    let keys = &state.stream_keys;
    let redis = &state.redis;
    let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut out = Vec::new();
    for app in apps {
        let reports: std::collections::HashMap<String, String> = redis
            .hgetall(keys.status(&app))
            .await
            .map_err(anyhow::Error::from)?;
        let mut replicas: Vec<Value> = reports
            .into_values()
            .filter_map(|r| serde_json::from_str::<Value>(&r).ok())
            .map(|mut r| {
                let age = now.saturating_sub(r["reportedAtMs"].as_u64().unwrap_or(0));
                r["ageMs"] = json!(age);
                r["fresh"] = json!(age <= FRESH_MS);
                r
            })
            .collect();
        replicas.sort_by_key(|r| r["replica"].as_str().unwrap_or_default().to_owned());
        let dead_letters: u64 = redis
            .xlen(keys.dlq(&app))
            .await
            .map_err(anyhow::Error::from)?;
        let resyncs: u64 = redis
            .hlen(keys.resyncs(&app))
            .await
            .map_err(anyhow::Error::from)?;
        let runs: Vec<String> = redis
            .lrange(keys.full_syncs(&app), 0, 9)
            .await
            .map_err(anyhow::Error::from)?;
        let full_syncs: Vec<Value> = runs
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        out.push(json!({
            "app": app,
            "replicas": replicas,
            "deadLetters": dead_letters,
            "resyncsPending": resyncs,
            "recentFullSyncs": full_syncs,
        }));
    }
    Ok(Json(json!({ "apps": out })))
}
