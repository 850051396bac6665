//! Credit configs: what an operation costs for a tenant (e.g. `crm.accounts.create` = 35).
//! Platform admins set them; they reach apps as `credit.config_updated` and in the snapshot.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Deserialize;
use sqlx::PgConnection;
use sync_contract::{CreditConfigState, Event};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::ApiJson;
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    outbox,
    state::AppState,
    validate,
};

/// Credit config routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upsert))
        .routes(routes!(remove))
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ConfigRow {
    id: Uuid,
    tenant_id: Uuid,
    application: String,
    operation_code: String,
    cost: i64,
    active: bool,
    pub(crate) version: i64,
}

impl From<ConfigRow> for CreditConfigState {
    fn from(r: ConfigRow) -> Self {
        CreditConfigState {
            id: r.id,
            tenant_id: r.tenant_id,
            application: r.application,
            operation_code: r.operation_code,
            cost: r.cost,
            active: r.active,
        }
    }
}

pub(crate) const COLUMNS: &str =
    "id, tenant_id, application, operation_code, cost, active, version";

/// Every config of a tenant (active or not), in id order.
pub(crate) async fn all(db: &mut PgConnection, tenant_id: Uuid) -> ApiResult<Vec<ConfigRow>> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from credit_configs where tenant_id = $1 order by id"
    ))
    .bind(tenant_id)
    .fetch_all(db)
    .await?)
}

/// The fast path's price table follows the new price at once (reconciliation repairs a failure).
async fn publish_prices(state: &AppState, tenant_id: Uuid, application: &str) {
    if let Err(e) = crate::model::apps::publish_prices(
        &state.db,
        &state.redis,
        &state.stream_keys,
        tenant_id,
        application,
    )
    .await
    {
        tracing::warn!(error = %e, %tenant_id, application, "publishing prices failed; the reconciliation will");
    }
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}/credit-configs", tag = "credits", responses((status = 200, description = "The costs of operations", body = Vec<CreditConfigState>)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Json<Vec<CreditConfigState>>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Read)
        .await?;
    let mut conn = state.db.acquire().await?;
    let rows = all(&mut conn, tenant_id).await?;
    Ok(Json(
        rows.into_iter()
            .filter(|r| r.active)
            .map(Into::into)
            .collect(),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Upsert {
    application: String,
    operation_code: String,
    cost: i64,
}

#[utoipa::path(put, path = "/api/tenants/{tenant_id}/credit-configs", tag = "credits", request_body = Upsert, responses((status = 200, description = "The cost of the operation", body = CreditConfigState)))]
async fn upsert(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiJson(req): ApiJson<Upsert>,
) -> ApiResult<Json<CreditConfigState>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Platform)
        .await?;
    let application = validate::short_text("application", &req.application, 40)?;
    let code = validate::short_text("operationCode", &req.operation_code, 100)?;
    if !(0..=1_000_000_000).contains(&req.cost) {
        return Err(ApiError::invalid(
            "cost",
            "must be between 0 and 1000000000",
        ));
    }
    let mut tx = state.db.begin().await?;
    crate::model::users::ensure_active_tenant(&mut tx, tenant_id).await?;
    let row: ConfigRow = sqlx::query_as(&format!(
        "insert into credit_configs (id, tenant_id, application, operation_code, cost)
         values ($1, $2, $3, $4, $5)
         on conflict (tenant_id, application, operation_code) do update
           set cost = excluded.cost, active = true, version = credit_configs.version + 1, updated_at = now()
         returning {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(&application)
    .bind(&code)
    .bind(req.cost)
    .fetch_one(&mut *tx)
    .await?;
    let aggregate = (row.id, row.version);
    let config = CreditConfigState::from(row);
    outbox::record(
        &mut tx,
        &ctx,
        tenant_id,
        aggregate,
        Event::CreditConfigUpdated,
        &config,
    )
    .await?;
    tx.commit().await?;
    publish_prices(&state, tenant_id, &config.application).await;
    Ok(Json(config))
}

#[utoipa::path(delete, path = "/api/tenants/{tenant_id}/credit-configs/{config_id}", tag = "credits", responses((status = 200, description = "The removed cost", body = CreditConfigState)))]
async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant_id, config_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<CreditConfigState>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Platform)
        .await?;
    let mut tx = state.db.begin().await?;
    let row: ConfigRow = sqlx::query_as(&format!(
        "update credit_configs set active = false, version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 and active returning {COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(config_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("credit config"))?;
    let aggregate = (row.id, row.version);
    let config = CreditConfigState::from(row);
    outbox::record(
        &mut tx,
        &ctx,
        tenant_id,
        aggregate,
        Event::CreditConfigUpdated,
        &config,
    )
    .await?;
    tx.commit().await?;
    publish_prices(&state, tenant_id, &config.application).await;
    Ok(Json(config))
}
