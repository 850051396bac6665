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
use sqlx::PgConnection;
use sync_sdk::contract::{CreditAllocated, CreditConsumed, Event};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::ApiJson;
use super::ApiQuery;
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    outbox::{self, Aggregate},
    startup::AppState,
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

/// Largest amount accepted in one request.
const MAX_AMOUNT: i64 = 1_000_000_000;
const POOL: &str = "tenant";

fn app_scope(application: &str) -> String {
    format!("app:{application}")
}

fn amount(field: &str, value: i64) -> ApiResult<i64> {
    if (1..=MAX_AMOUNT).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::invalid(
            field,
            format!("must be between 1 and {MAX_AMOUNT}"),
        ))
    }
}

/// A ledger entry as the API returns it (a consumption's reply, replayed verbatim).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// Ledger position (cursor).
    pub id: i64,
    /// The entry's id (for allocations, the allocation id).
    pub entry_id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// `allocation` or `consumption`.
    pub kind: String,
    /// The balance that received or paid.
    pub scope: String,
    /// For application allocations, the pool the credits came from.
    pub source_scope: Option<String>,
    /// Credits.
    pub amount: i64,
    /// The consuming or receiving application.
    pub application: Option<String>,
    /// What was done.
    pub operation_code: Option<String>,
    /// The consumption's idempotency key.
    pub operation_id: Option<String>,
    /// The balance of `scope` after this entry.
    pub balance_after: i64,
    /// When.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const LEDGER_COLUMNS: &str =
    "id, entry_id, tenant_id, kind, scope, source_scope, amount, application,
     operation_code, operation_id, balance_after, created_at";

struct NewEntry<'a> {
    tenant_id: Uuid,
    kind: &'a str,
    scope: &'a str,
    source_scope: Option<&'a str>,
    amount: i64,
    application: Option<&'a str>,
    operation_code: Option<&'a str>,
    operation_id: Option<&'a str>,
    balance_after: i64,
}

async fn insert_entry(tx: &mut PgConnection, e: NewEntry<'_>) -> ApiResult<LedgerEntry> {
    Ok(sqlx::query_as(&format!(
        "insert into credit_ledger (entry_id, tenant_id, kind, scope, source_scope, amount,
             application, operation_code, operation_id, balance_after)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) returning {LEDGER_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(e.tenant_id)
    .bind(e.kind)
    .bind(e.scope)
    .bind(e.source_scope)
    .bind(e.amount)
    .bind(e.application)
    .bind(e.operation_code)
    .bind(e.operation_id)
    .bind(e.balance_after)
    .fetch_one(tx)
    .await?)
}

/// Add `amount` to a balance (creating it); returns (balance, version).
async fn credit(
    tx: &mut PgConnection,
    tenant: Uuid,
    scope: &str,
    amount: i64,
) -> ApiResult<(i64, i64)> {
    Ok(sqlx::query_as(
        "insert into credit_balances (tenant_id, scope, balance) values ($1, $2, $3)
         on conflict (tenant_id, scope) do update
           set balance = credit_balances.balance + excluded.balance, version = credit_balances.version + 1
         returning balance, version",
    )
    .bind(tenant)
    .bind(scope)
    .bind(amount)
    .fetch_one(tx)
    .await?)
}

/// Take `amount` from a balance if it covers it; otherwise a 402 with the balance.
async fn debit(
    tx: &mut PgConnection,
    tenant: Uuid,
    scope: &str,
    amount: i64,
) -> ApiResult<(i64, i64)> {
    let taken: Option<(i64, i64)> = sqlx::query_as(
        "update credit_balances set balance = balance - $3, version = version + 1
         where tenant_id = $1 and scope = $2 and balance >= $3 returning balance, version",
    )
    .bind(tenant)
    .bind(scope)
    .bind(amount)
    .fetch_optional(&mut *tx)
    .await?;
    match taken {
        Some(b) => Ok(b),
        None => {
            let balance: Option<i64> = sqlx::query_scalar(
                "select balance from credit_balances where tenant_id = $1 and scope = $2",
            )
            .bind(tenant)
            .bind(scope)
            .fetch_optional(&mut *tx)
            .await?;
            Err(ApiError::InsufficientCredits {
                balance: balance.unwrap_or(0),
                required: amount,
            })
        }
    }
}

/// Credits going into a balance.
struct Allocation<'a> {
    tenant_id: Uuid,
    scope: &'a str,
    source_scope: Option<&'a str>,
    amount: i64,
}

/// Credit the receiving balance and record the allocation with its `credit.allocated` event.
async fn record_allocation(
    tx: &mut PgConnection,
    ctx: &Ctx,
    a: Allocation<'_>,
    entity_id: Option<String>,
    application: Option<String>,
) -> ApiResult<LedgerEntry> {
    let (balance_after, version) = credit(tx, a.tenant_id, a.scope, a.amount).await?;
    let new = NewEntry {
        tenant_id: a.tenant_id,
        kind: "allocation",
        scope: a.scope,
        source_scope: a.source_scope,
        amount: a.amount,
        application: application.as_deref(),
        operation_code: None,
        operation_id: None,
        balance_after,
    };
    let entry = insert_entry(tx, new).await?;
    let event = Event::CreditAllocated(CreditAllocated {
        allocation_id: entry.entry_id,
        tenant_id: a.tenant_id,
        entity_id,
        application,
        amount: a.amount,
        balance_after,
    });
    let aggregate = Aggregate {
        id: entry.entry_id,
        version,
    };
    outbox::append(tx, ctx, a.tenant_id, aggregate, event).await?;
    Ok(entry)
}

/// A consumption to charge to an application's balance.
pub(crate) struct Consumption<'a> {
    pub(crate) tenant_id: Uuid,
    pub(crate) application: &'a str,
    pub(crate) operation_code: &'a str,
    pub(crate) operation_id: &'a str,
    pub(crate) amount: i64,
}

/// Charge `c` inside `tx`, idempotently by operation id: returns the ledger entry and whether it
/// was charged before (then nothing is charged now). Requests with one operation id are
/// serialised by a transaction-scoped advisory lock. Used by the direct path and by the
/// fast-path ingester alike.
pub(crate) async fn charge(
    tx: &mut PgConnection,
    ctx: &Ctx,
    c: &Consumption<'_>,
) -> ApiResult<(LedgerEntry, bool)> {
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 0))")
        .bind(c.tenant_id.to_string())
        .bind(c.operation_id)
        .execute(&mut *tx)
        .await?;
    let original: Option<LedgerEntry> = sqlx::query_as(&format!(
        "select {LEDGER_COLUMNS} from credit_ledger
         where tenant_id = $1 and operation_id = $2 and kind = 'consumption'"
    ))
    .bind(c.tenant_id)
    .bind(c.operation_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(entry) = original {
        return Ok((entry, true));
    }
    let scope = app_scope(c.application);
    let (balance_after, version) = debit(tx, c.tenant_id, &scope, c.amount).await?;
    let new = NewEntry {
        tenant_id: c.tenant_id,
        kind: "consumption",
        scope: &scope,
        source_scope: None,
        amount: c.amount,
        application: Some(c.application),
        operation_code: Some(c.operation_code),
        operation_id: Some(c.operation_id),
        balance_after,
    };
    let entry = insert_entry(tx, new).await?;
    let event = Event::CreditConsumed(CreditConsumed {
        operation_id: c.operation_id.to_owned(),
        tenant_id: c.tenant_id,
        application: c.application.to_owned(),
        operation_code: c.operation_code.to_owned(),
        amount: c.amount,
        balance_after,
    });
    let aggregate = Aggregate {
        id: entry.entry_id,
        version,
    };
    outbox::append(tx, ctx, c.tenant_id, aggregate, event).await?;
    Ok((entry, false))
}

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
    credit_amount: i64,
    operation_code: String,
    operation_id: String,
}

#[utoipa::path(post, path = "/api/credits/consume", tag = "credits", request_body = Consume, responses((status = 200, description = "The ledger entry; the same operationId again answers the same entry (app service tokens)", body = LedgerEntry)))]
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
    let amount = amount("creditAmount", req.credit_amount)?;
    let code = validate::short_text("operationCode", &req.operation_code, 100)?;
    let op = validate::short_text("operationId", &req.operation_id, 200)?;
    let consumption = Consumption {
        tenant_id: req.tenant_id,
        application: &req.application,
        operation_code: &code,
        operation_id: &op,
        amount,
    };
    let mut tx = state.db.begin().await?;
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
         where tenant_id = $1 and ($2::bigint is null or id > $2)
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
