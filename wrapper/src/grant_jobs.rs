//! Grants changing on their own terms, on time: expiries and renewals of recurring grants run
//! from a scheduled job (once per tick across the wrapper's replicas, [`crate::jobs::claim_tick`]),
//! and voids on request. Each is a ledger entry and a `credit.grant_changed` event, written in
//! one transaction under the balance's lock, and lands once: the grant row is re-read under its
//! lock and the change applies only if it is still due (two replicas, or a job and a void,
//! cannot both apply it).
//!
//! For an application's grant the mirror is taken out first ([`Mirror::take`]): the fast path
//! cannot draw it afterwards, and what the mirror held tells what of the ledger's remaining
//! credits are consumptions still to be ingested — those stay with the grant, the rest expire.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use sync_contract::{CreditGrantChanged, Event};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    mirror::{MIRROR_COLUMNS, Mirror, MirrorGrant},
    model::{
        credits::{LedgerEntry, NewEntry, insert_entry},
        grants::{self, Recurrence},
    },
    outbox::{self, Aggregate},
};

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Grants expired.
    pub expired: usize,
    /// Renewals applied.
    pub renewed: usize,
}

/// How a grant ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its expiry came.
    Expired,
    /// A platform admin voided it.
    Voided,
}

fn job_ctx(what: &str) -> Ctx {
    Ctx {
        request_id: format!("grants:{what}:{}", Uuid::now_v7()),
        correlation_id: what.to_owned(),
        client_ip: None,
        traceparent: None,
    }
}

/// Expire every grant whose expiry has come and renew every recurring grant whose period ended
/// (catching up period by period after a pause).
pub async fn run_due(db: &PgPool, mirror: &Mirror) -> anyhow::Result<Run> {
    let mut run = Run::default();
    loop {
        let due: Vec<Uuid> = sqlx::query_scalar(
            "select id from credit_grants where status = 'active' and expires_at <= now()
             order by expires_at limit 500",
        )
        .fetch_all(db)
        .await?;
        if due.is_empty() {
            break;
        }
        for id in &due {
            if end_grant(db, mirror, &job_ctx("expiry"), *id, End::Expired)
                .await?
                .is_some()
            {
                run.expired += 1;
                metrics::counter!("tsync_wrapper_credit_grant_changes_total", "change" => "expired")
                    .increment(1);
            }
        }
    }
    for _round in 0..1000 {
        let due: Vec<Uuid> = sqlx::query_scalar(
            "select id from credit_grants where status = 'active' and next_renewal_at <= now()
               and (expires_at is null or expires_at > next_renewal_at)
             order by next_renewal_at limit 500",
        )
        .fetch_all(db)
        .await?;
        if due.is_empty() {
            break;
        }
        for id in &due {
            if renew_grant(db, mirror, *id).await? {
                run.renewed += 1;
                metrics::counter!("tsync_wrapper_credit_grant_changes_total", "change" => "renewed")
                    .increment(1);
            }
        }
    }
    Ok(run)
}

/// The application of an `app:<name>` scope.
fn app_of(scope: &str) -> Option<&str> {
    scope.strip_prefix("app:")
}

/// Take a grant out of its mirror (if it is an application's) and say what of `remaining` is
/// still to be ingested; call before the transaction that changes the grant.
async fn take_from_mirror(
    mirror: &Mirror,
    tenant: Uuid,
    scope: &str,
    grant: Uuid,
) -> anyhow::Result<Option<i64>> {
    match app_of(scope) {
        Some(app) => mirror.take(tenant, app, grant).await,
        None => Ok(None),
    }
}

/// Consumptions of `grant` drawn by the fast path and not ingested yet, given what its mirror
/// held when taken (`None`: not mirrored, so read the stream).
async fn in_flight(
    mirror: &Mirror,
    tenant: Uuid,
    scope: &str,
    grant: Uuid,
    remaining: i64,
    held: Option<i64>,
) -> anyhow::Result<i64> {
    Ok(match (held, app_of(scope)) {
        (Some(held), _) => (remaining - held).max(0),
        (None, Some(app)) => mirror
            .in_flight(tenant, app)
            .await?
            .by_grant
            .get(&grant)
            .copied()
            .unwrap_or(0)
            .min(remaining),
        (None, None) => 0,
    })
}

struct Locked {
    tenant_id: Uuid,
    scope: String,
    remaining: i64,
}

/// Lock the grant's balance, then the grant, if `still` holds for it.
async fn lock_grant(tx: &mut PgConnection, grant: Uuid, still: &str) -> ApiResult<Option<Locked>> {
    let Some((tenant_id, scope)): Option<(Uuid, String)> =
        sqlx::query_as("select tenant_id, scope from credit_grants where id = $1")
            .bind(grant)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(None);
    };
    grants::lock_balance(tx, tenant_id, &scope).await?;
    let remaining: Option<i64> = sqlx::query_scalar(&format!(
        "select remaining from credit_grants where id = $1 and {still} for update"
    ))
    .bind(grant)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(remaining.map(|remaining| Locked {
        tenant_id,
        scope,
        remaining,
    }))
}

/// Record a grant change: its ledger entry, its event and the thresholds after it.
#[allow(clippy::too_many_arguments)]
async fn record_change(
    tx: &mut PgConnection,
    ctx: &Ctx,
    g: &Locked,
    grant: Uuid,
    kind: &str,
    change: &str,
    amount: i64,
    balance_delta: i64,
) -> ApiResult<LedgerEntry> {
    let (balance_after, remaining, version): (i64, i64, i64) = sqlx::query_as(
        "with b as (
             update credit_balances set balance = balance + $3, version = version + 1
             where tenant_id = $1 and scope = $2 returning balance)
         select b.balance, g.remaining, g.version from b, credit_grants g where g.id = $4",
    )
    .bind(g.tenant_id)
    .bind(&g.scope)
    .bind(balance_delta)
    .bind(grant)
    .fetch_one(&mut *tx)
    .await?;
    let entry = insert_entry(
        tx,
        NewEntry {
            tenant_id: g.tenant_id,
            kind,
            scope: &g.scope,
            source_scope: None,
            amount,
            application: app_of(&g.scope),
            operation_code: None,
            operation_id: None,
            balance_after,
            user_id: None,
            grant_id: Some(grant),
            draws: None,
        },
    )
    .await?;
    let event = Event::CreditGrantChanged(CreditGrantChanged {
        entry_id: entry.entry_id,
        grant_id: grant,
        tenant_id: g.tenant_id,
        scope: g.scope.clone(),
        change: change.to_owned(),
        amount,
        remaining,
        balance_after,
    });
    let aggregate = Aggregate { id: grant, version };
    outbox::append(tx, ctx, g.tenant_id, aggregate, event).await?;
    grants::check_thresholds(tx, ctx, g.tenant_id, &g.scope, balance_after).await?;
    Ok(entry)
}

/// End a grant (expired or voided): its remaining credits leave the balance, except the fast
/// path's consumptions still to be ingested. `None` when it had ended already (or, for an
/// expiry, is not due).
pub async fn end_grant(
    db: &PgPool,
    mirror: &Mirror,
    ctx: &Ctx,
    grant: Uuid,
    end: End,
) -> ApiResult<Option<LedgerEntry>> {
    let (still, status, kind, change) = match end {
        End::Expired => (
            "status = 'active' and expires_at <= now()",
            "expired",
            "expiry",
            "expired",
        ),
        End::Voided => ("status = 'active'", "voided", "void", "voided"),
    };
    let Some((tenant, scope)): Option<(Uuid, String)> = sqlx::query_as(&format!(
        "select tenant_id, scope from credit_grants where id = $1 and {still}"
    ))
    .bind(grant)
    .fetch_optional(db)
    .await?
    else {
        return Ok(None);
    };
    let held = take_from_mirror(mirror, tenant, &scope, grant).await?;
    let mut tx = db.begin().await?;
    let Some(g) = lock_grant(&mut tx, grant, still).await? else {
        return Ok(None);
    };
    let keep = in_flight(mirror, tenant, &scope, grant, g.remaining, held).await?;
    let removed = g.remaining - keep;
    sqlx::query(
        "update credit_grants set remaining = remaining - $2, status = $3, version = version + 1
         where id = $1",
    )
    .bind(grant)
    .bind(removed)
    .bind(status)
    .execute(&mut *tx)
    .await?;
    let entry = record_change(&mut tx, ctx, &g, grant, kind, change, removed, -removed).await?;
    tx.commit().await?;
    tracing::info!(%grant, %tenant, scope, removed, kept_in_flight = keep, change, "credit grant ended");
    Ok(Some(entry))
}

/// Void a grant and, for a tenant's grant, the application grants its credits moved to (their
/// credits came from it). Returns the ledger entries.
pub async fn void(
    db: &PgPool,
    mirror: &Mirror,
    ctx: &Ctx,
    grant: Uuid,
) -> ApiResult<Vec<LedgerEntry>> {
    let children: Vec<Uuid> = sqlx::query_scalar(
        "select id from credit_grants where parent_id = $1 and status = 'active' order by id",
    )
    .bind(grant)
    .fetch_all(db)
    .await?;
    let mut entries = Vec::new();
    for id in std::iter::once(grant).chain(children) {
        if let Some(e) = end_grant(db, mirror, ctx, id, End::Voided).await? {
            entries.push(e);
        }
    }
    Ok(entries)
}

/// Renew a recurring grant whose period ended: what the rollover rule keeps of its credits
/// stays, the rest expires (an `expiry` entry), and the period's amount is added (a `renewal`
/// entry). False when it was not due (or renewed by another replica).
pub async fn renew_grant(db: &PgPool, mirror: &Mirror, grant: Uuid) -> ApiResult<bool> {
    const DUE: &str = "status = 'active' and next_renewal_at <= now()";
    let Some((tenant, scope)): Option<(Uuid, String)> = sqlx::query_as(&format!(
        "select tenant_id, scope from credit_grants where id = $1 and {DUE}"
    ))
    .bind(grant)
    .fetch_optional(db)
    .await?
    else {
        return Ok(false);
    };
    let ctx = job_ctx("renewal");
    let held = take_from_mirror(mirror, tenant, &scope, grant).await?;
    let mut tx = db.begin().await?;
    let Some(g) = lock_grant(&mut tx, grant, DUE).await? else {
        tx.rollback().await?;
        // Another replica renewed it: put back what was taken, as the ledger holds it now.
        if let Some(app) = app_of(&scope) {
            mirror.reconcile(tenant, app).await?;
        }
        return Ok(false);
    };
    let (amount, rollover, cap, recurrence, anchor, due): (
        i64,
        String,
        Option<i64>,
        String,
        DateTime<Utc>,
        DateTime<Utc>,
    ) = sqlx::query_as(
        "select amount, rollover, rollover_cap, recurrence, effective_at, next_renewal_at
         from credit_grants where id = $1",
    )
    .bind(grant)
    .fetch_one(&mut *tx)
    .await?;
    let keep_in_flight = in_flight(mirror, tenant, &scope, grant, g.remaining, held).await?;
    let left = g.remaining - keep_in_flight;
    let kept = match rollover.as_str() {
        "all" => left,
        "capped" => left.min(cap.unwrap_or(0)),
        _ => 0,
    };
    let lost = left - kept;
    let next = Recurrence::parse(&recurrence)
        .and_then(|r| r.next_after(anchor, due))
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("grant {grant}: no next period")))?;
    if lost > 0 {
        sqlx::query(
            "update credit_grants set remaining = remaining - $2, version = version + 1 where id = $1",
        )
        .bind(grant)
        .bind(lost)
        .execute(&mut *tx)
        .await?;
        record_change(&mut tx, &ctx, &g, grant, "expiry", "expired", lost, -lost).await?;
    }
    sqlx::query(
        "update credit_grants set remaining = remaining + amount, initial = $2 + amount,
             next_renewal_at = $3, version = version + 1
         where id = $1",
    )
    .bind(grant)
    .bind(kept)
    .bind(next)
    .execute(&mut *tx)
    .await?;
    let renewal = record_change(
        &mut tx, &ctx, &g, grant, "renewal", "renewed", amount, amount,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%grant, %tenant, scope, kept, lost, amount, %next, "credit grant renewed");
    if let Some(app) = app_of(&scope) {
        let renewed: MirrorGrant = sqlx::query_as(&format!(
            "select {MIRROR_COLUMNS} from credit_grants where id = $1"
        ))
        .bind(grant)
        .fetch_one(db)
        .await?;
        let mirrored = MirrorGrant {
            remaining: kept + amount,
            ..renewed
        };
        mirror
            .add(tenant, app, renewal.entry_id, &[mirrored])
            .await?;
    }
    Ok(true)
}

/// Run [`run_due`] every `every` (zero: never) until cancelled, once per tick across replicas.
pub async fn run_periodically(
    db: PgPool,
    mirror: Mirror,
    every: Duration,
    cancel: CancellationToken,
) {
    crate::jobs::on_ticks(db.clone(), "credit_grants", every, cancel, || async {
        match run_due(&db, &mirror).await {
            Ok(run) if run != Run::default() => {
                tracing::info!(
                    expired = run.expired,
                    renewed = run.renewed,
                    "credit grants due"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "credit grants: run failed"),
        }
    })
    .await
}
