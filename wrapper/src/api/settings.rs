//! A tenant's settings: one JSON object, replaced as a whole by `PUT` (its event carries the
//! whole new state, like every state event).

use std::collections::BTreeMap;
use utoipa_axum::{router::OpenApiRouter, routes};

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Deserialize;
use sync_contract::{Event, SettingsState};
use uuid::Uuid;

use super::ApiJson;
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    outbox::{self, Aggregate},
    state::AppState,
};

/// Settings routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read, replace))
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}/settings", tag = "settings", responses((status = 200, description = "The tenant's settings", body = SettingsState)))]
async fn read(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Json<SettingsState>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Read)
        .await?;
    let values: Option<sqlx::types::Json<BTreeMap<String, serde_json::Value>>> =
        sqlx::query_scalar(r#"select "values" from settings where tenant_id = $1"#)
            .bind(tenant_id)
            .fetch_optional(&state.db)
            .await?;
    Ok(Json(SettingsState {
        tenant_id,
        values: values.map(|v| v.0).unwrap_or_default(),
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Replace {
    values: BTreeMap<String, serde_json::Value>,
}

#[utoipa::path(put, path = "/api/tenants/{tenant_id}/settings", tag = "settings", request_body = Replace, responses((status = 200, description = "The tenant's settings", body = SettingsState)))]
async fn replace(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiJson(req): ApiJson<Replace>,
) -> ApiResult<Json<SettingsState>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    Ok(Json(
        replace_settings(&state, &ctx, tenant_id, req.values).await?,
    ))
}

/// Replace `tenant_id`'s settings (the caller already authorized as its admin), with the
/// `settings.updated` event in the same transaction.
pub(crate) async fn replace_settings(
    state: &AppState,
    ctx: &Ctx,
    tenant_id: Uuid,
    values: BTreeMap<String, serde_json::Value>,
) -> ApiResult<SettingsState> {
    if let Some(key) = values.keys().find(|k| k.is_empty() || k.len() > 100) {
        return Err(ApiError::invalid(
            "values",
            format!("key `{key}` must be 1-100 characters"),
        ));
    }
    let mut tx = state.db.begin().await?;
    crate::model::users::ensure_active_tenant(&mut tx, tenant_id).await?;
    let version: i64 = sqlx::query_scalar(
        r#"insert into settings (tenant_id, "values") values ($1, $2)
           on conflict (tenant_id) do update
             set "values" = excluded."values", version = settings.version + 1, updated_at = now()
           returning version"#,
    )
    .bind(tenant_id)
    .bind(sqlx::types::Json(&values))
    .fetch_one(&mut *tx)
    .await?;
    let settings = SettingsState { tenant_id, values };
    let aggregate = Aggregate {
        id: tenant_id,
        version,
    };
    outbox::append(
        &mut tx,
        ctx,
        tenant_id,
        aggregate,
        Event::SettingsUpdated(settings.clone()),
    )
    .await?;
    tx.commit().await?;
    Ok(settings)
}
