//! Credit grants: every credit in a balance belongs to a grant with its terms (category,
//! priority, when it takes effect and expires, recurrence with a rollover rule). A balance is
//! the sum of its grants' remaining credits, kept in the transaction of every change; a
//! consumption draws the grants in effect in one order — priority (lower first), then the
//! earliest expiry (none last), then the oldest grant (ids are UUIDv7) — and the ledger records
//! what it drew from each. The Redis fast path draws in the same order (`consume.lua`).
//!
//! Every change to a scope takes its balance row's lock first ([`lock_balance`]), so changes to
//! one balance — consumptions, moves, expiries, renewals, voids, threshold checks — are
//! serialised, and a threshold is evaluated against a balance no one else is changing.

use chrono::{DateTime, Months, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sync_contract::{CreditThresholdReached, Event};
use uuid::Uuid;

use crate::{
    audit,
    context::Ctx,
    error::{ApiError, ApiResult},
    outbox::{self, Aggregate},
};

/// The priority of a grant made without one (and of the balances that predate grants).
pub const DEFAULT_PRIORITY: i32 = 50;

/// Credits taken from one grant (by a consumption or a move to an application).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantDraw {
    /// The grant drawn.
    pub grant_id: Uuid,
    /// Credits taken from it.
    pub amount: i64,
    /// For a move to an application: the application's grant that received them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub into: Option<Uuid>,
}

/// How often a recurring grant renews.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recurrence {
    /// Every day.
    Daily,
    /// Every seven days.
    Weekly,
    /// On the same day every month (the month's last day where it has fewer days).
    Monthly,
}

impl Recurrence {
    /// Parse the API's and the table's name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "daily" => Some(Self::Daily),
            "weekly" => Some(Self::Weekly),
            "monthly" => Some(Self::Monthly),
            _ => None,
        }
    }

    /// The `n`th period boundary after `anchor` (counted from the anchor, so a month of 28
    /// days does not shift the following ones).
    pub fn nth(self, anchor: DateTime<Utc>, n: u32) -> Option<DateTime<Utc>> {
        match self {
            Self::Daily => anchor.checked_add_signed(TimeDelta::days(i64::from(n))),
            Self::Weekly => anchor.checked_add_signed(TimeDelta::weeks(i64::from(n))),
            Self::Monthly => anchor.checked_add_months(Months::new(n)),
        }
    }

    /// The first period boundary after `after`, counted from `anchor`.
    pub fn next_after(self, anchor: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (1..=100_000)
            .map_while(|n| self.nth(anchor, n))
            .find(|t| *t > after)
    }
}

/// The terms of a new grant.
#[derive(Debug, Clone)]
pub struct Terms {
    /// `paid` or `promotional`.
    pub category: String,
    /// 0–100, lower drawn first.
    pub priority: i32,
    /// When its credits can first be consumed.
    pub effective_at: DateTime<Utc>,
    /// When its remaining credits expire (whole seconds).
    pub expires_at: Option<DateTime<Utc>>,
    /// How often it renews, if at all.
    pub recurrence: Option<Recurrence>,
    /// `none`, `all` or `capped`: what a renewal keeps of the credits left.
    pub rollover: String,
    /// For `capped`: the most credits a renewal keeps.
    pub rollover_cap: Option<i64>,
}

impl Terms {
    /// A paid grant of default priority, in effect now, that never expires (what an
    /// allocation without terms makes).
    pub fn standard() -> Self {
        Self {
            category: "paid".to_owned(),
            priority: DEFAULT_PRIORITY,
            effective_at: Utc::now(),
            expires_at: None,
            recurrence: None,
            rollover: "none".to_owned(),
            rollover_cap: None,
        }
    }
}

/// A grant as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditGrant {
    /// The grant.
    pub id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The balance holding it: `tenant`, `app:<name>` or `entity:<id>`.
    pub scope: String,
    /// For an application's grant: the tenant's grant its credits were moved from.
    pub parent_id: Option<Uuid>,
    /// `paid` or `promotional`.
    pub category: String,
    /// 0–100, lower drawn first.
    pub priority: i32,
    /// When its credits can first be consumed.
    pub effective_at: DateTime<Utc>,
    /// When its remaining credits expire.
    pub expires_at: Option<DateTime<Utc>>,
    /// `daily`, `weekly` or `monthly`.
    pub recurrence: Option<String>,
    /// `none`, `all` or `capped`.
    pub rollover: String,
    /// For `capped`: the most credits a renewal keeps.
    pub rollover_cap: Option<i64>,
    /// Credits a period brings (a recurring grant), else the credits granted.
    pub amount: i64,
    /// Credits at the start of the current period.
    pub initial: i64,
    /// Credits left.
    pub remaining: i64,
    /// When a recurring grant renews next.
    pub next_renewal_at: Option<DateTime<Utc>>,
    /// `active`, `expired` or `voided`.
    pub status: String,
    /// Whether its credits can be consumed now (active, effective, not expired).
    pub in_effect: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// The columns of [`CreditGrant`].
pub const GRANT_COLUMNS: &str = "id, tenant_id, scope, parent_id, category, priority,
    effective_at, expires_at, recurrence, rollover, rollover_cap, amount, initial, remaining,
    next_renewal_at, status, created_at,
    (status = 'active' and effective_at <= now() and (expires_at is null or expires_at > now())) as in_effect";

/// The grants of a scope in effect now, in draw order.
pub(crate) const IN_EFFECT: &str = "tenant_id = $1 and scope = $2 and status = 'active'
    and effective_at <= now() and (expires_at is null or expires_at > now())";
pub(crate) const DRAW_ORDER: &str = "priority, expires_at nulls last, id";

/// Lock a balance row for the rest of the transaction; its balance, if it exists.
pub async fn lock_balance(
    tx: &mut PgConnection,
    tenant: Uuid,
    scope: &str,
) -> ApiResult<Option<i64>> {
    Ok(sqlx::query_scalar(
        "select balance from credit_balances where tenant_id = $1 and scope = $2 for update",
    )
    .bind(tenant)
    .bind(scope)
    .fetch_optional(tx)
    .await?)
}

/// Plan taking `amount` from `grants` (id, remaining, in draw order): the draws, or the credits
/// available when they do not cover it.
pub fn plan_draws(grants: &[(Uuid, i64)], amount: i64) -> Result<Vec<GrantDraw>, i64> {
    let mut left = amount;
    let mut draws = Vec::new();
    for &(grant_id, remaining) in grants {
        if left == 0 {
            break;
        }
        let take = remaining.min(left);
        if take > 0 {
            draws.push(GrantDraw {
                grant_id,
                amount: take,
                into: None,
            });
            left -= take;
        }
    }
    if left > 0 {
        Err(grants.iter().map(|g| g.1).sum())
    } else {
        Ok(draws)
    }
}

/// Take the planned draws from their grants (each must still cover its part) and the sum from
/// the scope's balance; returns (balance, version) after.
/// A balance after credits were taken from it.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    /// The balance after.
    pub balance: i64,
    /// Its version after.
    pub version: i64,
    /// Whether a threshold watches it (then [`check_thresholds`] has work to do).
    pub watched: bool,
}

async fn take(
    tx: &mut PgConnection,
    tenant: Uuid,
    scope: &str,
    draws: &[GrantDraw],
) -> ApiResult<Option<Taken>> {
    let ids: Vec<Uuid> = draws.iter().map(|d| d.grant_id).collect();
    let amounts: Vec<i64> = draws.iter().map(|d| d.amount).collect();
    // All or nothing: the draws apply only if every one holds (the caller holds the balance
    // lock, under which no one else changes the scope's grants).
    let taken = sqlx::query(
        "with d as (select * from unnest($1::uuid[], $2::bigint[]) as d(id, amount)),
              holds as (select count(*) = cardinality($1::uuid[]) as all_hold
                        from credit_grants g join d on g.id = d.id
                        where g.tenant_id = $3 and g.scope = $4 and g.remaining >= d.amount)
         update credit_grants g set remaining = g.remaining - d.amount
         from d, holds where holds.all_hold and g.id = d.id",
    )
    .bind(&ids)
    .bind(&amounts)
    .bind(tenant)
    .bind(scope)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if taken != draws.len() as u64 {
        return Ok(None);
    }
    let total: i64 = amounts.iter().sum();
    let (balance, version, watched) = sqlx::query_as(
        "update credit_balances b set balance = balance - $3, version = version + 1
         where tenant_id = $1 and scope = $2
         returning balance, version, exists(select 1 from credit_thresholds t
                                            where t.tenant_id = $1 and t.scope = $2)",
    )
    .bind(tenant)
    .bind(scope)
    .bind(total)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Some(Taken {
        balance,
        version,
        watched,
    }))
}

/// Take `amount` from the grants of `scope` in effect now, in draw order; a 402 with the
/// credits in effect when they do not cover it. Returns the draws and the balance after.
pub async fn draw(
    tx: &mut PgConnection,
    tenant: Uuid,
    scope: &str,
    amount: i64,
) -> ApiResult<(Vec<GrantDraw>, Taken)> {
    let insufficient = |balance| ApiError::InsufficientCredits {
        balance,
        required: amount,
    };
    if lock_balance(tx, tenant, scope).await?.is_none() {
        return Err(insufficient(0));
    }
    let grants: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
        "select id, remaining from credit_grants where {IN_EFFECT} and remaining > 0
         order by {DRAW_ORDER}"
    ))
    .bind(tenant)
    .bind(scope)
    .fetch_all(&mut *tx)
    .await?;
    let draws = plan_draws(&grants, amount).map_err(insufficient)?;
    // Under the balance lock nothing else changes these grants: the plan holds.
    let taken = take(tx, tenant, scope, &draws)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a planned draw did not hold")))?;
    Ok((draws, taken))
}

/// Take exactly `draws` (the grants the fast path drew, whatever their state now: a grant that
/// expired after the draw keeps the credits still to be ingested); `None` when they do not
/// hold (the mirror drifted from the ledger), and nothing is taken.
pub async fn draw_named(
    tx: &mut PgConnection,
    tenant: Uuid,
    scope: &str,
    draws: &[GrantDraw],
) -> ApiResult<Option<Taken>> {
    let mut ids: Vec<Uuid> = draws.iter().map(|d| d.grant_id).collect();
    ids.sort();
    ids.dedup();
    // A grant named twice (never the mirror's doing) or a non-positive part: not these draws.
    if draws.is_empty()
        || ids.len() != draws.len()
        || draws.iter().any(|d| d.amount <= 0)
        || lock_balance(tx, tenant, scope).await?.is_none()
    {
        return Ok(None);
    }
    take(tx, tenant, scope, draws).await
}

/// Add a grant of `amount` under `terms` to `scope` and the amount to its balance; returns the
/// grant's id and the balance's (balance, version) after.
pub async fn add_grant(
    tx: &mut PgConnection,
    tenant: Uuid,
    scope: &str,
    parent: Option<Uuid>,
    terms: &Terms,
    amount: i64,
) -> ApiResult<(Uuid, i64, i64)> {
    let id = Uuid::now_v7();
    let next_renewal = terms.recurrence.and_then(|r| r.nth(terms.effective_at, 1));
    let recurrence = terms.recurrence.map(|r| match r {
        Recurrence::Daily => "daily",
        Recurrence::Weekly => "weekly",
        Recurrence::Monthly => "monthly",
    });
    sqlx::query(
        "insert into credit_grants (id, tenant_id, scope, parent_id, category, priority,
             effective_at, expires_at, recurrence, rollover, rollover_cap, amount, initial,
             remaining, next_renewal_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $12, $13)",
    )
    .bind(id)
    .bind(tenant)
    .bind(scope)
    .bind(parent)
    .bind(&terms.category)
    .bind(terms.priority)
    .bind(terms.effective_at)
    .bind(terms.expires_at)
    .bind(recurrence)
    .bind(&terms.rollover)
    .bind(terms.rollover_cap)
    .bind(amount)
    .bind(next_renewal)
    .execute(&mut *tx)
    .await?;
    let (balance, version) = credit(tx, tenant, scope, amount).await?;
    Ok((id, balance, version))
}

/// Add `amount` to a balance (creating it); returns (balance, version).
pub(crate) async fn credit(
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

/// The terms of an existing grant (for a child grant: the parent's, without recurrence).
pub async fn terms_of(tx: &mut PgConnection, grant: Uuid) -> ApiResult<Terms> {
    let (category, priority, expires_at): (String, i32, Option<DateTime<Utc>>) =
        sqlx::query_as("select category, priority, expires_at from credit_grants where id = $1")
            .bind(grant)
            .fetch_one(tx)
            .await?;
    Ok(Terms {
        category,
        priority,
        effective_at: Utc::now(),
        expires_at,
        recurrence: None,
        rollover: "none".to_owned(),
        rollover_cap: None,
    })
}

/// A threshold's state, as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreditThreshold {
    /// The threshold.
    pub id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The balance it watches.
    pub scope: String,
    /// `balance_below` or `percent_used`.
    pub kind: String,
    /// Credits (`balance_below`) or percent (`percent_used`).
    pub value: i64,
    /// False from a crossing until the balance is back on the safe side.
    pub armed: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// The columns of [`CreditThreshold`].
pub const THRESHOLD_COLUMNS: &str = "id, tenant_id, scope, kind, value, armed, created_at";

/// Percent of `initial` used when `balance` is left (0 when nothing was granted).
pub fn percent_used(initial: i64, balance: i64) -> i64 {
    if initial <= 0 {
        0
    } else {
        (initial - balance).clamp(0, initial) * 100 / initial
    }
}

/// Evaluate the thresholds on `scope` after a change left it at `balance` (the caller holds the
/// balance lock): a crossed, armed threshold is disarmed and emits `credit.threshold_reached`
/// (and an audit entry) in this transaction; one back on the safe side is re-armed.
pub async fn check_thresholds(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant: Uuid,
    scope: &str,
    balance: i64,
) -> ApiResult<()> {
    let thresholds: Vec<(Uuid, String, i64, bool)> = sqlx::query_as(
        "select id, kind, value, armed from credit_thresholds where tenant_id = $1 and scope = $2",
    )
    .bind(tenant)
    .bind(scope)
    .fetch_all(&mut *tx)
    .await?;
    if thresholds.is_empty() {
        return Ok(());
    }
    let initial: i64 = sqlx::query_scalar(
        "select coalesce(sum(initial), 0)::bigint from credit_grants
         where tenant_id = $1 and scope = $2 and status = 'active'",
    )
    .bind(tenant)
    .bind(scope)
    .fetch_one(&mut *tx)
    .await?;
    let used = percent_used(initial, balance);
    for (id, kind, value, armed) in thresholds {
        let crossed = match kind.as_str() {
            "balance_below" => balance < value,
            _ => initial > 0 && used >= value,
        };
        if crossed != armed {
            continue;
        }
        let version: i64 = sqlx::query_scalar(
            "update credit_thresholds set armed = $2, version = version + 1 where id = $1
             returning version",
        )
        .bind(id)
        .bind(!crossed)
        .fetch_one(&mut *tx)
        .await?;
        if !crossed {
            continue;
        }
        let event = Event::CreditThresholdReached(CreditThresholdReached {
            threshold_id: id,
            tenant_id: tenant,
            scope: scope.to_owned(),
            kind: kind.clone(),
            value,
            balance,
            percent_used: used,
        });
        outbox::append(tx, ctx, tenant, Aggregate { id, version }, event).await?;
        audit::record(
            &mut *tx,
            ctx,
            audit::Entry {
                tenant_id: Some(tenant),
                actor_id: None,
                action: "credit.threshold_reached",
                target: Some(id.to_string()),
                outcome: "success",
                details: serde_json::json!({
                    "scope": scope, "kind": kind, "value": value,
                    "balance": balance, "percentUsed": used,
                }),
            },
        )
        .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn a_draw_takes_grants_in_the_order_given_and_crosses_a_boundary() {
        let grants = [(id(1), 30), (id(2), 0), (id(3), 100)];
        assert_eq!(
            plan_draws(&grants, 35).unwrap(),
            vec![
                GrantDraw {
                    grant_id: id(1),
                    amount: 30,
                    into: None
                },
                GrantDraw {
                    grant_id: id(3),
                    amount: 5,
                    into: None
                },
            ]
        );
        assert_eq!(plan_draws(&grants, 130).unwrap().len(), 2);
        assert_eq!(
            plan_draws(&grants, 131),
            Err(130),
            "short: what is available"
        );
        assert_eq!(plan_draws(&[], 1), Err(0));
    }

    #[test]
    fn monthly_periods_count_from_the_anchor_and_clamp_to_the_month_end() {
        let anchor = "2026-01-31T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let m = Recurrence::Monthly;
        assert_eq!(
            m.nth(anchor, 1).unwrap().to_rfc3339(),
            "2026-02-28T10:00:00+00:00"
        );
        assert_eq!(
            m.nth(anchor, 2).unwrap().to_rfc3339(),
            "2026-03-31T10:00:00+00:00"
        );
        let after = "2026-03-31T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            m.next_after(anchor, after).unwrap().to_rfc3339(),
            "2026-04-30T10:00:00+00:00"
        );
        assert_eq!(
            Recurrence::Weekly.nth(anchor, 2).unwrap().to_rfc3339(),
            "2026-02-14T10:00:00+00:00"
        );
    }

    #[test]
    fn percent_used_is_bounded_and_zero_without_credits() {
        assert_eq!(percent_used(1000, 190), 81);
        assert_eq!(percent_used(1000, 1000), 0);
        assert_eq!(percent_used(1000, 1200), 0);
        assert_eq!(percent_used(0, 0), 0);
    }
}
