//! The credits ledger: balances per scope (the tenant's pool, an application, an entity), the
//! ledger rows, and the operations on them, each inside the caller's transaction. The HTTP
//! handlers (`api::credits`) and the fast-path ingester (`credit_ingest`) both call these.
//!
//! Guarantees (docs/architecture.md, invariant 8): never overspent (a debit only where the
//! balance covers it, under the row lock), never double-charged (idempotent by operation id),
//! and the ledger is the truth (every change is a ledger row with its `credit.*` event).

use serde::Serialize;
use sqlx::PgConnection;
use sync_contract::{CreditAllocated, CreditConsumed, Event};
use uuid::Uuid;

use super::grants::{self, GrantDraw, Terms};
use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    outbox::{self, Aggregate},
};

/// Largest amount accepted in one request.
pub(crate) const MAX_AMOUNT: i64 = 1_000_000_000;
pub(crate) const POOL: &str = "tenant";

pub(crate) fn app_scope(application: &str) -> String {
    format!("app:{application}")
}

pub(crate) fn amount(field: &str, value: i64) -> ApiResult<i64> {
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
    /// For consumptions, the user the app acted for, when it said.
    pub user_id: Option<Uuid>,
    /// The grant this entry concerns: the one an allocation created, or the one that expired,
    /// renewed or was voided.
    pub grant_id: Option<Uuid>,
    /// For a consumption or a move to an application: the grants drawn, in order.
    #[schema(value_type = Option<Vec<GrantDraw>>)]
    pub draws: Option<sqlx::types::Json<Vec<GrantDraw>>>,
    /// When.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

pub(crate) const LEDGER_COLUMNS: &str =
    "id, entry_id, tenant_id, kind, scope, source_scope, amount, application,
     operation_code, operation_id, balance_after, user_id, grant_id, draws, created_at";

pub(crate) struct NewEntry<'a> {
    pub(crate) tenant_id: Uuid,
    pub(crate) kind: &'a str,
    pub(crate) scope: &'a str,
    pub(crate) source_scope: Option<&'a str>,
    pub(crate) amount: i64,
    pub(crate) application: Option<&'a str>,
    pub(crate) operation_code: Option<&'a str>,
    pub(crate) operation_id: Option<&'a str>,
    pub(crate) balance_after: i64,
    pub(crate) user_id: Option<Uuid>,
    pub(crate) grant_id: Option<Uuid>,
    pub(crate) draws: Option<&'a [GrantDraw]>,
}

pub(crate) async fn insert_entry(tx: &mut PgConnection, e: NewEntry<'_>) -> ApiResult<LedgerEntry> {
    Ok(sqlx::query_as(&format!(
        "insert into credit_ledger (entry_id, tenant_id, kind, scope, source_scope, amount,
             application, operation_code, operation_id, balance_after, user_id, grant_id, draws)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) returning {LEDGER_COLUMNS}"
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
    .bind(e.user_id)
    .bind(e.grant_id)
    .bind(e.draws.map(sqlx::types::Json))
    .fetch_one(tx)
    .await?)
}

use grants::check_thresholds;

/// Credits going into a balance: a new grant under `terms`, or, for a move from the tenant's
/// pool to an application, child grants of the pool's grants drawn (`from_pool`).
pub(crate) struct Allocation<'a> {
    pub(crate) tenant_id: Uuid,
    pub(crate) scope: &'a str,
    pub(crate) amount: i64,
    pub(crate) terms: Terms,
    pub(crate) from_pool: bool,
}

/// Record an allocation with its `credit.allocated` event: a new grant, or a move that draws
/// the pool's grants in order and gives the application one child grant per grant drawn, with
/// its terms (category, priority, expiry).
pub(crate) async fn record_allocation(
    tx: &mut PgConnection,
    ctx: &Ctx,
    a: Allocation<'_>,
    entity_id: Option<String>,
    application: Option<String>,
) -> ApiResult<LedgerEntry> {
    let (grant_id, draws, balance_after, version) = if a.from_pool {
        let (mut draws, pool) = grants::draw(tx, a.tenant_id, POOL, a.amount).await?;
        if pool.watched {
            check_thresholds(tx, ctx, a.tenant_id, POOL, pool.balance).await?;
        }
        grants::lock_balance(tx, a.tenant_id, a.scope).await?;
        let mut after = (0, 0);
        for d in &mut draws {
            let terms = grants::terms_of(tx, d.grant_id).await?;
            let (child, balance, version) =
                grants::add_grant(tx, a.tenant_id, a.scope, Some(d.grant_id), &terms, d.amount)
                    .await?;
            d.into = Some(child);
            after = (balance, version);
        }
        (None, Some(draws), after.0, after.1)
    } else {
        let (id, balance, version) =
            grants::add_grant(tx, a.tenant_id, a.scope, None, &a.terms, a.amount).await?;
        (Some(id), None, balance, version)
    };
    let new = NewEntry {
        tenant_id: a.tenant_id,
        kind: "allocation",
        scope: a.scope,
        source_scope: a.from_pool.then_some(POOL),
        amount: a.amount,
        application: application.as_deref(),
        operation_code: None,
        operation_id: None,
        balance_after,
        user_id: None,
        grant_id,
        draws: draws.as_deref(),
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
    check_thresholds(tx, ctx, a.tenant_id, a.scope, balance_after).await?;
    Ok(entry)
}

/// A consumption to charge to an application's balance.
pub(crate) struct Consumption<'a> {
    pub(crate) tenant_id: Uuid,
    pub(crate) application: &'a str,
    pub(crate) operation_code: &'a str,
    pub(crate) operation_id: &'a str,
    pub(crate) amount: i64,
    /// The user the app acted for, when it said (usage reports).
    pub(crate) user_id: Option<Uuid>,
    /// The grants the fast path drew (the ingester): taken as they are when they still hold,
    /// else the grants in effect are drawn in order.
    pub(crate) drawn: Option<Vec<GrantDraw>>,
}

/// The consumption `application` charged under `operation_id`, if any. Operation ids are the
/// app's own: another app's entry under the same id is a different operation.
pub(crate) async fn charged(
    tx: &mut PgConnection,
    tenant: Uuid,
    application: &str,
    operation_id: &str,
) -> ApiResult<Option<LedgerEntry>> {
    Ok(sqlx::query_as(&format!(
        "select {LEDGER_COLUMNS} from credit_ledger
         where tenant_id = $1 and application = $2 and operation_id = $3
           and kind = 'consumption'"
    ))
    .bind(tenant)
    .bind(application)
    .bind(operation_id)
    .fetch_optional(tx)
    .await?)
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
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || ':' || $2 || ':' || $3, 0))")
        .bind(c.tenant_id.to_string())
        .bind(c.application)
        .bind(c.operation_id)
        .execute(&mut *tx)
        .await?;
    if let Some(entry) = charged(tx, c.tenant_id, c.application, c.operation_id).await? {
        return Ok((entry, true));
    }
    let scope = app_scope(c.application);
    let named = match &c.drawn {
        Some(drawn) if drawn.iter().map(|d| d.amount).sum::<i64>() == c.amount => {
            grants::draw_named(tx, c.tenant_id, &scope, drawn).await?
        }
        _ => None,
    };
    let (draws, taken) = match named {
        Some(taken) => (c.drawn.clone().unwrap_or_default(), taken),
        None => grants::draw(tx, c.tenant_id, &scope, c.amount).await?,
    };
    let (balance_after, version) = (taken.balance, taken.version);
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
        user_id: c.user_id,
        grant_id: None,
        draws: Some(&draws),
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
    if taken.watched {
        check_thresholds(tx, ctx, c.tenant_id, &scope, balance_after).await?;
    }
    Ok((entry, false))
}
