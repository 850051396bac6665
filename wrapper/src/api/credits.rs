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

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use chrono::{Datelike, Timelike};
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
        .routes(routes!(list_grants))
        .routes(routes!(void_grant))
        .routes(routes!(list_thresholds, set_threshold))
        .routes(routes!(delete_threshold))
}

use crate::model::apps;
use crate::model::credits::{
    Allocation, Consumption, LEDGER_COLUMNS, LedgerEntry, MAX_AMOUNT, POOL, amount, app_scope,
    charge, charged, record_allocation,
};
use crate::model::grants::{
    CreditGrant, CreditThreshold, DEFAULT_PRIORITY, GRANT_COLUMNS, Recurrence, THRESHOLD_COLUMNS,
    Terms,
};

/// A grant: credits with their terms, to a tenant's pool, an entity in it, or an application.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Allocate {
    tenant_id: Uuid,
    /// Grant to an entity inside the tenant (not with `application`).
    entity_id: Option<String>,
    /// Grant straight to an application (not with `entityId`); else the tenant's pool.
    application: Option<String>,
    /// Credits (per period, for a recurring grant).
    amount: i64,
    /// `paid` (default) or `promotional`.
    category: Option<String>,
    /// 0–100, lower drawn first (default 50).
    #[schema(minimum = 0, maximum = 100)]
    priority: Option<i32>,
    /// When the credits can first be consumed (default: now).
    effective_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When the remaining credits expire (whole seconds; after `effectiveAt` and now).
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `daily`, `weekly` or `monthly`: the grant renews each period from `effectiveAt`.
    recurrence: Option<String>,
    /// What a renewal keeps of the credits left: `none` (default), `all` or `capped`.
    rollover: Option<String>,
    /// For `capped`: the most credits a renewal keeps.
    rollover_cap: Option<i64>,
}

/// The terms of a grant request, each field checked by name.
fn terms(req: &Allocate) -> ApiResult<Terms> {
    let standard = Terms::standard();
    let category = match req.category.as_deref() {
        None | Some("paid") => "paid",
        Some("promotional") => "promotional",
        Some(_) => return Err(ApiError::invalid("category", "must be paid or promotional")),
    };
    let priority = req.priority.unwrap_or(DEFAULT_PRIORITY);
    if !(0..=100).contains(&priority) {
        return Err(ApiError::invalid("priority", "must be between 0 and 100"));
    }
    let effective_at = req.effective_at.unwrap_or(standard.effective_at);
    let expires_at = req.expires_at.map(|t| t.with_nanosecond(0).unwrap_or(t));
    let horizon = |t: chrono::DateTime<chrono::Utc>| (2000..3000).contains(&t.year());
    if !horizon(effective_at) {
        return Err(ApiError::invalid(
            "effectiveAt",
            "must be in the years 2000 to 2999",
        ));
    }
    if expires_at.is_some_and(|t| !horizon(t)) {
        return Err(ApiError::invalid(
            "expiresAt",
            "must be in the years 2000 to 2999",
        ));
    }
    if let Some(t) = expires_at
        && (t <= effective_at || t <= chrono::Utc::now())
    {
        return Err(ApiError::invalid(
            "expiresAt",
            "must be after effectiveAt and in the future",
        ));
    }
    let recurrence =
        match req.recurrence.as_deref() {
            None => None,
            Some(r) => Some(Recurrence::parse(r).ok_or_else(|| {
                ApiError::invalid("recurrence", "must be daily, weekly or monthly")
            })?),
        };
    // At most one renewal is due when a recurring grant is made: a start further back would
    // make the job catch up period after period.
    if let Some(r) = recurrence
        && r.nth(effective_at, 1)
            .is_none_or(|first| first <= chrono::Utc::now())
    {
        return Err(ApiError::invalid(
            "effectiveAt",
            "a recurring grant starts less than one period ago",
        ));
    }
    let rollover = req.rollover.as_deref().unwrap_or("none");
    if !["none", "all", "capped"].contains(&rollover) {
        return Err(ApiError::invalid("rollover", "must be none, all or capped"));
    }
    if rollover != "none" && recurrence.is_none() {
        return Err(ApiError::invalid(
            "rollover",
            "applies to recurring grants only",
        ));
    }
    match (rollover, req.rollover_cap) {
        ("capped", Some(cap)) if (0..=MAX_AMOUNT).contains(&cap) => {}
        ("capped", _) => {
            return Err(ApiError::invalid(
                "rolloverCap",
                format!("a capped rollover needs a cap between 0 and {MAX_AMOUNT}"),
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "rolloverCap",
                "only for a capped rollover",
            ));
        }
        _ => {}
    }
    Ok(Terms {
        category: category.to_owned(),
        priority,
        effective_at,
        expires_at,
        recurrence,
        rollover: rollover.to_owned(),
        rollover_cap: req.rollover_cap,
    })
}

#[utoipa::path(post, path = "/api/admin/credits/allocate", tag = "credits", request_body = Allocate, responses((status = 201, description = "The ledger entry of the new grant, `grantId` naming it (platform admins)", body = LedgerEntry)))]
async fn allocate(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiJson(req): ApiJson<Allocate>,
) -> ApiResult<(StatusCode, Json<LedgerEntry>)> {
    caller.require_platform_admin()?;
    let amount = amount("amount", req.amount)?;
    let terms = terms(&req)?;
    let (scope, application) = match (&req.entity_id, &req.application) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "application",
                "a grant goes to an entity or an application, not both",
            ));
        }
        (Some(e), None) => (
            format!("entity:{}", validate::short_text("entityId", e, 100)?),
            None,
        ),
        (None, Some(a)) => {
            let a = validate::short_text("application", a, 40)?;
            (app_scope(&a), Some(a))
        }
        (None, None) => (POOL.to_owned(), None),
    };
    let mut tx = state.db.begin().await?;
    crate::model::users::ensure_active_tenant(&mut tx, req.tenant_id).await?;
    let into = Allocation {
        tenant_id: req.tenant_id,
        scope: &scope,
        amount,
        terms,
        from_pool: false,
    };
    let entry = record_allocation(
        &mut tx,
        &ctx,
        into,
        req.entity_id.clone(),
        application.clone(),
    )
    .await?;
    tx.commit().await?;
    if let Some(app) = &application {
        mirror_allocation(&state, &entry, app).await;
    }
    Ok((StatusCode::CREATED, Json(entry)))
}

/// Put an application's new grants in its mirror (the fast path can draw them at once); a
/// failure leaves it to the periodic reconciliation.
async fn mirror_allocation(state: &AppState, entry: &LedgerEntry, app: &str) {
    let grants: Vec<Uuid> = match (&entry.grant_id, &entry.draws) {
        (Some(g), _) => vec![*g],
        (None, Some(draws)) => draws.0.iter().filter_map(|d| d.into).collect(),
        (None, None) => Vec::new(),
    };
    let mirrored = state
        .mirror()
        .add_from_ledger(entry.tenant_id, app, entry.entry_id, &grants)
        .await;
    if let Err(e) = mirrored {
        tracing::warn!(error = %e, tenant = %entry.tenant_id, app, "credit mirror not updated; the reconciliation will");
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AllocateApplication {
    tenant_id: Uuid,
    application: String,
    amount: i64,
}

#[utoipa::path(post, path = "/api/admin/credits/allocate/application", tag = "credits", request_body = AllocateApplication, responses((status = 201, description = "The ledger entry (tenant admins: from the tenant's pool to an application). The pool's grants in effect are drawn in order and the application receives one grant per grant drawn, with its category, priority and expiry (`draws`, `into`)", body = LedgerEntry), (status = 402, description = "The pool's grants in effect do not cover the amount (nothing moved)")))]
async fn allocate_application(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiJson(req): ApiJson<AllocateApplication>,
) -> ApiResult<(StatusCode, Json<LedgerEntry>)> {
    caller
        .authorize(&state, &ctx, req.tenant_id, Access::Admin)
        .await?;
    let entry =
        move_to_application(&state, &ctx, req.tenant_id, &req.application, req.amount).await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

/// Move `amount` credits of `tenant`'s pool to `application` (the caller is allowed to): the
/// pool's grants in effect are drawn in order and the application gets one grant per grant
/// drawn. The API and the console both call it.
pub(crate) async fn move_to_application(
    state: &AppState,
    ctx: &Ctx,
    tenant: Uuid,
    application: &str,
    amount_asked: i64,
) -> ApiResult<LedgerEntry> {
    let amount = amount("amount", amount_asked)?;
    let application = validate::short_text("application", application, 40)?;
    let scope = app_scope(&application);
    let mut tx = state.db.begin().await?;
    crate::model::users::ensure_active_tenant(&mut tx, tenant).await?;
    let into = Allocation {
        tenant_id: tenant,
        scope: &scope,
        amount,
        terms: Terms::standard(),
        from_pool: true,
    };
    let entry = record_allocation(&mut tx, ctx, into, None, Some(application.clone())).await?;
    tx.commit().await?;
    mirror_allocation(state, &entry, &application).await;
    Ok(entry)
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
    apps::require_tenant_has_app(&state.db, &req.application, req.tenant_id).await?;
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
        Err(refused) => match charged(&mut tx, req.tenant_id, &req.application, &op).await? {
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
        drawn: None,
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
    if !replayed && let Some(draws) = &entry.draws {
        // Both paths spend one balance: what the ledger charged leaves the mirror too (a
        // failure here is corrected by the reconciliation).
        if let Err(e) = state
            .mirror()
            .debit(req.tenant_id, &req.application, &draws.0)
            .await
        {
            tracing::warn!(error = %e, "credit mirror not debited; the reconciliation will");
        }
    }
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
#[serde(rename_all = "camelCase")]
struct Balance {
    scope: String,
    /// Every grant's remaining credits (what the ledger holds).
    balance: i64,
    /// The credits of the grants in effect now (what a consumption can draw).
    available: i64,
}

/// What a reader of a tenant's credits may see.
enum CreditReader {
    /// A member, an admin or a platform admin: every balance; other users' ids in the ledger
    /// only with `usage_reports` (tenant admins and platform admins, who may read usage reports).
    User { id: Uuid, usage_reports: bool },
    /// An app: only its own application's balance, grants and ledger, and only for a tenant
    /// whose plan has its feature.
    App { scope: String },
}

impl CreditReader {
    /// The one balance an app may read; none for users (every balance).
    fn only_scope(&self) -> Option<&str> {
        match self {
            CreditReader::App { scope } => Some(scope),
            CreditReader::User { .. } => None,
        }
    }

    /// `entries` with other users' ids removed unless the reader may see them.
    fn redact(&self, entries: &mut [LedgerEntry]) {
        if let CreditReader::User {
            id,
            usage_reports: false,
        } = self
        {
            for e in entries {
                if e.user_id.is_some_and(|u| u != *id) {
                    e.user_id = None;
                }
            }
        }
    }
}

/// Users of the tenant (or platform admins) may read its credits; app services only their own
/// application's, for tenants that have their feature.
async fn authorize_read(
    state: &AppState,
    ctx: &Ctx,
    caller: &Caller,
    tenant: Uuid,
) -> ApiResult<CreditReader> {
    match caller {
        Caller::Service { app } => {
            apps::require_tenant_has_app(&state.db, app, tenant).await?;
            Ok(CreditReader::App {
                scope: crate::model::credits::app_scope(app),
            })
        }
        Caller::User(_) => {
            let user = caller.authorize(state, ctx, tenant, Access::Read).await?;
            Ok(CreditReader::User {
                id: user.id,
                usage_reports: user.platform_admin || user.tenant_admin,
            })
        }
    }
}

#[utoipa::path(get, path = "/api/credits/balance", tag = "credits", params(BalanceQuery), responses((status = 200, description = "The tenant's balances by scope: `balance` (every grant's remaining credits) and `available` (the grants in effect now)", body = Value)))]
async fn balance(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiQuery(q): ApiQuery<BalanceQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let reader = authorize_read(&state, &ctx, &caller, q.tenant_id).await?;
    let balances: Vec<Balance> = sqlx::query_as(
        "select b.scope, b.balance, coalesce((select sum(g.remaining) from credit_grants g
             where g.tenant_id = b.tenant_id and g.scope = b.scope and g.status = 'active'
               and g.effective_at <= now() and (g.expires_at is null or g.expires_at > now())), 0)::bigint
             as available
         from credit_balances b where b.tenant_id = $1 and ($2::text is null or b.scope = $2)
         order by b.scope",
    )
    .bind(q.tenant_id)
    .bind(reader.only_scope())
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
    /// Only this kind: `allocation`, `consumption`, `expiry`, `renewal` or `void`.
    kind: Option<String>,
    /// Entries at or after this time (RFC 3339).
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Entries before this time (RFC 3339).
    to: Option<chrono::DateTime<chrono::Utc>>,
    after: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Which ledger entries (every part optional).
#[derive(Debug, Default)]
pub(crate) struct LedgerFilter {
    /// Only entries of this balance (an app reads only its own).
    pub(crate) scope: Option<String>,
    pub(crate) application: Option<String>,
    pub(crate) operation_code: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) from: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) to: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where a page of the ledger starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LedgerCursor {
    /// Oldest first, after this position (none: from the start).
    After(Option<i64>),
    /// Newest first, before this position (none: from the newest).
    Before(Option<i64>),
}

/// Up to `limit` of `tenant`'s ledger entries matching `f` from `cursor`, and the position to
/// continue from if there are more.
pub(crate) async fn ledger_page(
    db: &sqlx::PgPool,
    tenant: Uuid,
    f: &LedgerFilter,
    cursor: LedgerCursor,
    limit: i64,
) -> Result<(Vec<LedgerEntry>, Option<i64>), sqlx::Error> {
    let (position, order, at) = match cursor {
        LedgerCursor::After(a) => ("id > coalesce($2::bigint, 0)", "id", a),
        LedgerCursor::Before(b) => (
            "id < coalesce($2::bigint, 9223372036854775807)",
            "id desc",
            b,
        ),
    };
    let mut items: Vec<LedgerEntry> = sqlx::query_as(&format!(
        "select {LEDGER_COLUMNS} from credit_ledger
         where tenant_id = $1 and {position}
           and ($3::text is null or application = $3) and ($4::text is null or operation_code = $4)
           and ($5::text is null or kind = $5)
           and created_at >= coalesce($6::timestamptz, '-infinity')
           and created_at < coalesce($7::timestamptz, 'infinity')
           and ($9::text is null or scope = $9)
         order by {order} limit $8"
    ))
    .bind(tenant)
    .bind(at)
    .bind(&f.application)
    .bind(&f.operation_code)
    .bind(&f.kind)
    .bind(f.from)
    .bind(f.to)
    .bind(limit + 1)
    .bind(&f.scope)
    .fetch_all(db)
    .await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = if more {
        items.last().map(|e| e.id)
    } else {
        None
    };
    Ok((items, next))
}

#[utoipa::path(get, path = "/api/credits/ledger", tag = "credits", params(LedgerQuery), responses((status = 200, description = "A page of the tenant's ledger, oldest first", body = Value)))]
async fn ledger(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiQuery(q): ApiQuery<LedgerQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let reader = authorize_read(&state, &ctx, &caller, q.tenant_id).await?;
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit", "must be between 1 and 1000")),
    };
    let filter = LedgerFilter {
        scope: reader.only_scope().map(str::to_owned),
        application: q.application,
        operation_code: q.operation_code,
        kind: q.kind,
        from: q.from,
        to: q.to,
    };
    let (mut items, next) = ledger_page(
        &state.db,
        q.tenant_id,
        &filter,
        LedgerCursor::After(q.after),
        limit,
    )
    .await?;
    reader.redact(&mut items);
    Ok(Json(serde_json::json!({"items": items, "nextAfter": next})))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct GrantsQuery {
    tenant_id: Uuid,
    /// Only this balance: `tenant`, `app:<name>` or `entity:<id>`.
    scope: Option<String>,
    /// Include expired and voided grants (default: active only).
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/api/credits/grants", tag = "credits", params(GrantsQuery), responses((status = 200, description = "The tenant's grants in draw order (priority, earliest expiry, oldest) with their remaining credits", body = Vec<CreditGrant>)))]
async fn list_grants(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiQuery(q): ApiQuery<GrantsQuery>,
) -> ApiResult<Json<Vec<CreditGrant>>> {
    let reader = authorize_read(&state, &ctx, &caller, q.tenant_id).await?;
    if let (Some(mine), Some(asked)) = (reader.only_scope(), &q.scope)
        && mine != asked
    {
        return Err(ApiError::Forbidden(
            "an app reads only its own application's grants",
        ));
    }
    let scope = reader.only_scope().map(str::to_owned).or(q.scope);
    let grants: Vec<CreditGrant> = sqlx::query_as(&format!(
        "select {GRANT_COLUMNS} from credit_grants
         where tenant_id = $1 and ($2::text is null or scope = $2) and ($3 or status = 'active')
         order by scope, priority, expires_at nulls last, id limit 1000"
    ))
    .bind(q.tenant_id)
    .bind(&scope)
    .bind(q.all)
    .fetch_all(&state.db)
    .await?;
    Ok(Json(grants))
}

#[utoipa::path(post, path = "/api/admin/credits/grants/{id}/void", tag = "credits", params(("id" = Uuid, Path, description = "The grant")), responses((status = 200, description = "The void entries: the grant's remaining credits leave its balance, and those of the application grants its credits moved to (platform admins)", body = Vec<LedgerEntry>), (status = 409, description = "The grant has ended already")))]
async fn void_grant(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<LedgerEntry>>> {
    caller.require_platform_admin()?;
    let status: Option<String> =
        sqlx::query_scalar("select status from credit_grants where id = $1")
            .bind(id)
            .fetch_optional(&state.db)
            .await?;
    match status.as_deref() {
        None => return Err(ApiError::NotFound("grant")),
        Some("active") => {}
        Some(_) => return Err(ApiError::Conflict("the grant has ended already".into())),
    }
    let entries = crate::grant_jobs::void(&state.db, &state.mirror(), &ctx, id).await?;
    if entries.is_empty() {
        return Err(ApiError::Conflict("the grant has ended already".into()));
    }
    Ok(Json(entries))
}

/// A threshold on one of the tenant's balances.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SetThreshold {
    /// The balance: `tenant`, `app:<name>` or `entity:<id>`.
    scope: String,
    /// `balance_below` (credits) or `percent_used` (of the credits its live grants started
    /// their period with).
    kind: String,
    /// Credits, or percent (1–100).
    value: i64,
}

#[utoipa::path(post, path = "/api/tenants/{id}/credits/thresholds", tag = "credits", request_body = SetThreshold, params(("id" = Uuid, Path, description = "The tenant")), responses((status = 201, description = "The threshold (tenant admins). Crossing it emits one `credit.threshold_reached` per crossing; one already crossed fires at once", body = CreditThreshold)))]
async fn set_threshold(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant): Path<Uuid>,
    ApiJson(req): ApiJson<SetThreshold>,
) -> ApiResult<(StatusCode, Json<CreditThreshold>)> {
    caller
        .authorize(&state, &ctx, tenant, Access::Admin)
        .await?;
    let scope = validate::short_text("scope", &req.scope, 140)?;
    if !(scope == POOL || scope.starts_with("app:") || scope.starts_with("entity:")) {
        return Err(ApiError::invalid(
            "scope",
            "must be tenant, app:<name> or entity:<id>",
        ));
    }
    let max = match req.kind.as_str() {
        "balance_below" => MAX_AMOUNT,
        "percent_used" => 100,
        _ => {
            return Err(ApiError::invalid(
                "kind",
                "must be balance_below or percent_used",
            ));
        }
    };
    if !(1..=max).contains(&req.value) {
        return Err(ApiError::invalid(
            "value",
            format!("must be between 1 and {max}"),
        ));
    }
    let mut tx = state.db.begin().await?;
    // Each threshold is checked on every change of its balance and may fire at once.
    crate::model::limits::Limit {
        setting: "WRAPPER_MAX_THRESHOLDS_PER_BALANCE",
        what: "thresholds per balance",
        max: state.settings.max_thresholds_per_balance,
    }
    .check(
        &mut tx,
        tenant,
        &scope,
        "select count(*) from credit_thresholds where tenant_id = $1 and scope = $2",
    )
    .await?;
    let threshold: CreditThreshold = sqlx::query_as(&format!(
        "insert into credit_thresholds (id, tenant_id, scope, kind, value) values ($1, $2, $3, $4, $5)
         returning {THRESHOLD_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(&scope)
    .bind(&req.kind)
    .bind(req.value)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(balance) = crate::model::grants::lock_balance(&mut tx, tenant, &scope).await? {
        crate::model::grants::check_thresholds(&mut tx, &ctx, tenant, &scope, balance).await?;
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(threshold)))
}

#[utoipa::path(get, path = "/api/tenants/{id}/credits/thresholds", tag = "credits", params(("id" = Uuid, Path, description = "The tenant")), responses((status = 200, description = "The tenant's thresholds (tenant admins)", body = Vec<CreditThreshold>)))]
async fn list_thresholds(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant): Path<Uuid>,
) -> ApiResult<Json<Vec<CreditThreshold>>> {
    caller
        .authorize(&state, &ctx, tenant, Access::Admin)
        .await?;
    Ok(Json(
        sqlx::query_as(&format!(
            "select {THRESHOLD_COLUMNS} from credit_thresholds where tenant_id = $1 order by scope, kind, value"
        ))
        .bind(tenant)
        .fetch_all(&state.db)
        .await?,
    ))
}

#[utoipa::path(delete, path = "/api/tenants/{id}/credits/thresholds/{threshold}", tag = "credits", params(("id" = Uuid, Path, description = "The tenant"), ("threshold" = Uuid, Path, description = "The threshold")), responses((status = 204, description = "Removed (tenant admins)")))]
async fn delete_threshold(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant, threshold)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    caller
        .authorize(&state, &ctx, tenant, Access::Admin)
        .await?;
    let deleted = sqlx::query("delete from credit_thresholds where id = $1 and tenant_id = $2")
        .bind(threshold)
        .bind(tenant)
        .execute(&state.db)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::NotFound("threshold"));
    }
    Ok(StatusCode::NO_CONTENT)
}
