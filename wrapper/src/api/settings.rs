//! A tenant's settings: one JSON object, replaced as a whole by `PUT` (its event carries the
//! whole new state, like every state event).

use std::collections::BTreeMap;
use utoipa_axum::{router::OpenApiRouter, routes};

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Deserialize;
use sync_contract::SettingsState;
use uuid::Uuid;

use super::ApiJson;
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::ApiResult,
    model::{
        ids::TenantId,
        settings::{self, Values},
    },
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
    Ok(Json(settings::get(&state.db, TenantId(tenant_id)).await?))
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
    let values = Values::parse(req.values)?;
    Ok(Json(
        settings::replace(&state.db, &ctx, TenantId(tenant_id), values).await?,
    ))
}
