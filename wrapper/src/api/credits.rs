//! Credits: allocation to a tenant (or an entity in it), allocation from the tenant's pool to an
//! application, consumption by applications, balances and the ledger.
//!
//! Guarantees (docs/architecture.md, invariant 8):
//! * **Never overspent.** A consumption decrements the balance only where it covers the amount
//!   (`UPDATE … WHERE balance >= amount`, under the row lock), and a check constraint forbids a
//!   negative balance; concurrent consumers serialise on the balance row.
//! * **Never double-charged.** Consumption is idempotent by `(tenant, operationId)`: requests
//!   with one operation id are serialised by a transaction-scoped advisory lock, a repeat returns
//!   the original ledger entry unchanged and charges nothing, and a unique index backs it up.
//!   A refused consumption (402) is not recorded, so it may be retried after a top-up.
//! * **The ledger is the truth.** Every allocation and consumption is a ledger row written in
//!   the same transaction as the balance change and its `credit.*` event.

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::ApiJson;
use super::ApiQuery;
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    state::AppState,
    validate,
};

/// Credit routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(allocate))
        .routes(routes!(allocate_application))
        .routes(routes!(consume))
        .routes(routes!(balance))
        .routes(routes!(ledger))
}

use crate::domain::apps;
use crate::domain::credits::{
    Allocation, Consumption, LEDGER_COLUMNS, LedgerEntry, MAX_AMOUNT, POOL, amount, app_scope,
    charge, charged, debit, record_allocation,
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Allocate {
    tenant_id: Uuid,
    entity_id: Option<String>,
    amount: i64,
}

#[utoipa::path(post, path = "/api/admin/credits/allocate", tag = "credits", request_body = Allocate, responses((status = 201, description = "The ledger entry (platform admins)", body = LedgerEntry)))]
async fn allocate(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiJson(req): ApiJson<Allocate>,
) -> ApiResult<(StatusCode, Json<LedgerEntry>)> {
    caller.require_platform_admin()?;
    let amount = amount("amount", req.amount)?;
    let scope = match &req.entity_id {
        Some(e) => format!("entity:{}", validate::short_text("entityId", e, 100)?),
        None => POOL.to_owned(),
    };
    let mut tx = state.db.begin().await?;
    super::users::ensure_active_tenant(&mut tx, req.tenant_id).await?;
    let into = Allocation {
        tenant_id: req.tenant_id,
        scope: &scope,
        source_scope: None,
        amount,
    };
    let entry = record_allocation(&mut tx, &ctx, into, req.entity_id.clone(), None).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AllocateApplication {
    tenant_id: Uuid,
    application: String,
    amount: i64,
}

#[utoipa::path(post, path = "/api/admin/credits/allocate/application", tag = "credits", request_body = AllocateApplication, responses((status = 201, description = "The ledger entry (tenant admins: from the tenant's pool to an application)", body = LedgerEntry)))]
async fn allocate_application(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiJson(req): ApiJson<AllocateApplication>,
) -> ApiResult<(StatusCode, Json<LedgerEntry>)> {
    caller
        .authorize(&state, &ctx, req.tenant_id, Access::Admin)
        .await?;
    let amount = amount("amount", req.amount)?;
    let application = validate::short_text("application", &req.application, 40)?;
    let scope = app_scope(&application);
    let mut tx = state.db.begin().await?;
    super::users::ensure_active_tenant(&mut tx, req.tenant_id).await?;
    debit(&mut tx, req.tenant_id, POOL, amount).await?;
    let into = Allocation {
        tenant_id: req.tenant_id,
        scope: &scope,
        source_scope: Some(POOL),
        amount,
    };
    let entry = record_allocation(&mut tx, &ctx, into, None, Some(application)).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Consume {
    tenant_id: Uuid,
    application: String,
    /// The operation, declared in the app's manifest or priced by the tenant's credit config.
    operation_code: String,
    /// How many operations (default 1): the amount is `price × quantity`.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000000)]
    quantity: i64,
    /// Optional: the amount the app expects to be charged; refused when it is not the price.
    credit_amount: Option<i64>,
    operation_id: String,
    /// The user the app acted for (usage reports by user); optional.
    user_id: Option<Uuid>,
}

fn one() -> i64 {
    1
}

/// Most operations one consumption may count.
const MAX_QUANTITY: i64 = 1_000_000;

#[utoipa::path(post, path = "/api/credits/consume", tag = "credits", request_body = Consume, responses((status = 200, description = "The ledger entry, charged `price × quantity` at the tenant's price of the operation; the same operationId again answers the same entry (app service tokens). An operation without a price is refused (422, operationCode)", body = LedgerEntry)))]
async fn consume(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiJson(req): ApiJson<Consume>,
) -> ApiResult<Json<LedgerEntry>> {
    match &caller {
        Caller::Service { app } if *app == req.application => {}
        Caller::Service { .. } => {
            return Err(ApiError::Forbidden("an app consumes only its own credits"));
        }
        Caller::User(_) => return Err(ApiError::Forbidden("app service tokens only")),
    }
    let code = validate::short_text("operationCode", &req.operation_code, 100)?;
    let op = validate::short_text("operationId", &req.operation_id, 200)?;
    if !(1..=MAX_QUANTITY).contains(&req.quantity) {
        return Err(ApiError::invalid(
            "quantity",
            format!("must be between 1 and {MAX_QUANTITY}"),
        ));
    }
    let mut tx = state.db.begin().await?;
    let amount = match priced(&mut tx, &req, &code).await {
        Ok(amount) => amount,
        // A repeat answers the original entry even when the price has changed since.
        Err(refused) => match charged(&mut tx, req.tenant_id, &op).await? {
            Some(original) => return Ok(Json(original)),
            None => return Err(refused),
        },
    };
    let consumption = Consumption {
        tenant_id: req.tenant_id,
        application: &req.application,
        operation_code: &code,
        operation_id: &op,
        amount,
        user_id: req.user_id,
    };
    let (entry, replayed) = match charge(&mut tx, &ctx, &consumption).await {
        Ok(charged) => charged,
        Err(e) => {
            if matches!(e, ApiError::InsufficientCredits { .. }) {
                metrics::counter!("tsync_wrapper_credit_consumptions_total", "outcome" => "refused")
                    .increment(1);
            }
            return Err(e);
        }
    };
    tx.commit().await?;
    let outcome = if replayed { "replayed" } else { "charged" };
    metrics::counter!("tsync_wrapper_credit_consumptions_total", "outcome" => outcome).increment(1);
    Ok(Json(entry))
}

/// The amount of a consumption: the tenant's price of the operation times the quantity. The app
/// does not choose it: an operation without a price, or a `creditAmount` that is not the
/// price, is refused.
async fn priced(tx: &mut sqlx::PgConnection, req: &Consume, code: &str) -> ApiResult<i64> {
    let Some(price) = apps::price(tx, req.tenant_id, &req.application, code).await? else {
        return Err(ApiError::invalid(
            "operationCode",
            format!(
                "'{code}' is not a paid operation of '{}': declare it in the app's manifest",
                req.application
            ),
        ));
    };
    let amount = price
        .checked_mul(req.quantity)
        .filter(|a| *a <= MAX_AMOUNT)
        .ok_or_else(|| ApiError::invalid("quantity", "the amount would exceed the limit"))?;
    match req.credit_amount {
        Some(asked) if asked != amount => Err(ApiError::invalid(
            "creditAmount",
            format!(
                "the tenant's price of {req_quantity} × '{code}' is {amount}, not {asked}",
                req_quantity = req.quantity
            ),
        )),
        _ => Ok(amount),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct BalanceQuery {
    tenant_id: Uuid,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Balance {
    scope: String,
    balance: i64,
}

/// Users of the tenant (or platform admins) and app services may read credits.
async fn authorize_read(
    state: &AppState,
    ctx: &Ctx,
    caller: &Caller,
    tenant: Uuid,
) -> ApiResult<()> {
    match caller {
        Caller::Service { .. } => Ok(()),
        Caller::User(_) => caller
            .authorize(state, ctx, tenant, Access::Read)
            .await
            .map(|_| ()),
    }
}

#[utoipa::path(get, path = "/api/credits/balance", tag = "credits", params(BalanceQuery), responses((status = 200, description = "The tenant's balances by scope", body = Value)))]
async fn balance(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiQuery(q): ApiQuery<BalanceQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize_read(&state, &ctx, &caller, q.tenant_id).await?;
    let balances: Vec<Balance> = sqlx::query_as(
        "select scope, balance from credit_balances where tenant_id = $1 order by scope",
    )
    .bind(q.tenant_id)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        serde_json::json!({"tenantId": q.tenant_id, "balances": balances}),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct LedgerQuery {
    tenant_id: Uuid,
    application: Option<String>,
    operation_code: Option<String>,
    after: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/credits/ledger", tag = "credits", params(LedgerQuery), responses((status = 200, description = "A page of the tenant's ledger", body = Value)))]
async fn ledger(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiQuery(q): ApiQuery<LedgerQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    authorize_read(&state, &ctx, &caller, q.tenant_id).await?;
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit", "must be between 1 and 1000")),
    };
    let mut items: Vec<LedgerEntry> = sqlx::query_as(&format!(
        "select {LEDGER_COLUMNS} from credit_ledger
         where tenant_id = $1 and id > coalesce($2::bigint, 0)
           and ($3::text is null or application = $3) and ($4::text is null or operation_code = $4)
         order by id limit $5"
    ))
    .bind(q.tenant_id)
    .bind(q.after)
    .bind(&q.application)
    .bind(&q.operation_code)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = if more {
        items.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(serde_json::json!({"items": items, "nextAfter": next})))
}
