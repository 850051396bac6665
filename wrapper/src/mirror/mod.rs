//! The Redis mirror of each application's credit balance, grant by grant, which the fast path
//! (`sync_sdk::credits::CreditMirror`, `consume.lua`) draws. The wrapper alone writes it:
//!
//! * [`Mirror::add`] sets the grants of a change — an allocation to an application, a renewal —
//!   in an existing mirror, once per change (its ledger entry id), right after the change
//!   commits (mirrors are provisioned by the reconciliation);
//! * [`Mirror::take`] takes a grant out before it expires, renews or is voided in the ledger,
//!   and returns what it held there: the ledger's remaining credits less that are the fast
//!   path's consumptions still to be ingested, which stay with the grant;
//! * [`Mirror::reconcile`] resets a mirror to the ledger (less what the credit stream holds
//!   that is not ingested yet), for example after Redis lost its data; grants that are due to
//!   expire or renew are left out (the scheduled job handles them).
//!
//! Invariant: for every grant in a mirror, its credits there are the ledger's remaining credits
//! less its drawn-but-not-ingested ones, so the fast path never spends what the ledger would
//! refuse.

use std::{collections::HashMap, sync::LazyLock};

use chrono::{DateTime, Utc};
use fred::{prelude::*, types::scripts::Script};
use serde::Serialize;
use sqlx::PgPool;
use sync_contract::StreamKeys;
use uuid::Uuid;

use crate::model::grants::GrantDraw;

/// A mirror that did not match the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Correction {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The application.
    pub application: String,
    /// What the mirror held (None: missing).
    pub mirror: Option<i64>,
    /// What it holds now.
    pub ledger: i64,
}

/// One grant as the mirror holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MirrorGrant {
    /// The grant.
    pub id: Uuid,
    /// Credits the fast path may draw.
    pub remaining: i64,
    /// When it takes effect.
    pub effective_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// Its priority (the order's first key).
    pub priority: i32,
}

impl MirrorGrant {
    /// The five script arguments of this grant: id, remaining, effective ms, expiry ms, score.
    fn args(&self) -> [String; 5] {
        // The ledger's order: priority, then expiry (whole seconds; none last), then the id,
        // which a sorted set compares as text, the order of UUIDv7 bytes. The API keeps expiries
        // before the year 3000 (under 10^12 s), so the score is exact in a double (< 2^53).
        let expiry_secs = self
            .expires_at
            .map_or(999_999_999_999, |t| t.timestamp().clamp(0, 999_999_999_998));
        let score = i64::from(self.priority) * 1_000_000_000_000 + expiry_secs;
        [
            self.id.to_string(),
            self.remaining.to_string(),
            self.effective_at.timestamp_millis().to_string(),
            self.expires_at
                .map_or(0, |t| t.timestamp_millis())
                .to_string(),
            score.to_string(),
        ]
    }

    fn window(&self) -> String {
        format!(
            "{} {}",
            self.effective_at.timestamp_millis(),
            self.expires_at.map_or(0, |t| t.timestamp_millis())
        )
    }
}

/// Fast-path consumptions on a credit stream that the ledger does not hold yet.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Credits in all.
    pub total: i64,
    /// Credits by grant drawn.
    pub by_grant: HashMap<Uuid, i64>,
}

/// The mirrors of one namespace.
pub struct Mirror {
    db: PgPool,
    redis: Client,
    keys: StreamKeys,
}

// The scripts, hashed once per process (a `Mirror` is made per request).
static ADD: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("add.lua")));
static TAKE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("take.lua")));
static RESET: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("reset.lua")));
static DEBIT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("debit.lua")));

/// A grant's columns as the mirror needs them.
pub const MIRROR_COLUMNS: &str = "id, remaining, effective_at, expires_at, priority";

impl Mirror {
    /// The mirrors in `redis` under `keys`, checked against `db`.
    pub fn new(db: PgPool, redis: Client, keys: StreamKeys) -> Self {
        Self { db, redis, keys }
    }

    /// Set `grants` in `app`'s mirror once for the change `change` (a ledger entry id). Nothing
    /// happens where no mirror exists: the periodic reconciliation provisions mirrors, and until
    /// then the app consumes on the direct path.
    pub async fn add(
        &self,
        tenant: Uuid,
        app: &str,
        change: Uuid,
        grants: &[MirrorGrant],
    ) -> anyhow::Result<()> {
        let mut args = vec![change.to_string()];
        args.extend(grants.iter().flat_map(MirrorGrant::args));
        let keys = self.keys.credit_mirror_keys(tenant, app);
        let _added: i64 = ADD.evalsha_with_reload(&self.redis, keys, args).await?;
        Ok(())
    }

    /// Set the grants `ids` as the ledger holds them now in `app`'s mirror, once for `change`.
    pub async fn add_from_ledger(
        &self,
        tenant: Uuid,
        app: &str,
        change: Uuid,
        ids: &[Uuid],
    ) -> anyhow::Result<()> {
        let grants: Vec<MirrorGrant> = sqlx::query_as(&format!(
            "select {MIRROR_COLUMNS} from credit_grants where id = any($1) and status = 'active'"
        ))
        .bind(ids)
        .fetch_all(&self.db)
        .await?;
        self.add(tenant, app, change, &grants).await
    }

    /// Take `grant` out of `app`'s mirror; the credits it held there, if it was mirrored.
    pub async fn take(&self, tenant: Uuid, app: &str, grant: Uuid) -> anyhow::Result<Option<i64>> {
        let keys = vec![
            self.keys.credit_balance(tenant, app),
            self.keys.credit_grants(tenant, app),
            self.keys.credit_grant_order(tenant, app),
        ];
        let held: i64 = TAKE
            .evalsha_with_reload(&self.redis, keys, vec![grant.to_string()])
            .await?;
        Ok((held >= 0).then_some(held))
    }

    /// Take what a direct-path consumption drew from the ledger's grants out of `app`'s
    /// mirror too (when mirrored), so both paths spend one balance.
    pub async fn debit(&self, tenant: Uuid, app: &str, draws: &[GrantDraw]) -> anyhow::Result<()> {
        let keys = vec![
            self.keys.credit_balance(tenant, app),
            self.keys.credit_grants(tenant, app),
        ];
        let args: Vec<String> = draws
            .iter()
            .flat_map(|d| [d.grant_id.to_string(), d.amount.to_string()])
            .collect();
        let _: i64 = DEBIT.evalsha_with_reload(&self.redis, keys, args).await?;
        Ok(())
    }

    /// What `app`'s fast path charged `tenant` that the ledger has not ingested yet.
    pub async fn in_flight(&self, tenant: Uuid, app: &str) -> anyhow::Result<InFlight> {
        // The app's own stream, and the shared one older SDKs appended to.
        let partition = self.keys.partition_of(tenant);
        let mut entries: Vec<(String, HashMap<String, String>)> = self
            .redis
            .xrange(self.keys.app_credit_stream(partition, app), "-", "+", None)
            .await?;
        let legacy: Vec<(String, HashMap<String, String>)> = self
            .redis
            .xrange(self.keys.credit_stream(partition), "-", "+", None)
            .await?;
        entries.extend(legacy);
        let tenant_text = tenant.to_string();
        let mine: Vec<HashMap<String, String>> = entries
            .into_iter()
            .map(|(_, f)| f)
            .filter(|f| {
                f.get("tenantId") == Some(&tenant_text)
                    && f.get("application").map(String::as_str) == Some(app)
                    && f.contains_key("operationId")
            })
            .collect();
        if mine.is_empty() {
            return Ok(InFlight::default());
        }
        let ops: Vec<&str> = mine.iter().map(|f| f["operationId"].as_str()).collect();
        let ingested: Vec<String> = sqlx::query_scalar(
            "select operation_id from credit_ledger
             where tenant_id = $1 and kind = 'consumption' and application = $3
               and operation_id = any($2)",
        )
        .bind(tenant)
        .bind(&ops)
        .bind(app)
        .fetch_all(&self.db)
        .await?;
        let mut flight = InFlight::default();
        for f in mine {
            if ingested.contains(&f["operationId"]) {
                continue;
            }
            flight.total += f.get("amount").and_then(|a| a.parse().ok()).unwrap_or(0);
            for d in drawn(f.get("draws").map_or("", String::as_str)) {
                *flight.by_grant.entry(d.grant_id).or_default() += d.amount;
            }
        }
        Ok(flight)
    }

    /// Reset `app`'s mirror for `tenant` to the ledger unless it already matches; the
    /// correction made, if any. Also republishes the app's prices for the tenant.
    pub async fn reconcile(&self, tenant: Uuid, app: &str) -> anyhow::Result<Option<Correction>> {
        crate::model::apps::publish_prices(&self.db, &self.redis, &self.keys, tenant, app).await?;
        let scope = crate::model::credits::app_scope(app);
        let keys = self.keys.credit_mirror_keys(tenant, app);
        for _attempt in 0..5 {
            // The mirror first, then what is in flight, then the ledger: a consumption
            // ingested between the two reads is then counted twice — the target errs low, never
            // high — and the reset applies only if the mirror did not move since it was read.
            let balance: Option<String> = self.redis.get(&keys[0]).await?;
            let held: HashMap<String, String> = self.redis.hgetall(&keys[2]).await?;
            let flight = self.in_flight(tenant, app).await?;
            let (grants, changes) = self.ledger_state(tenant, &scope).await?;
            let target: Vec<MirrorGrant> = grants
                .into_iter()
                .map(|g| MirrorGrant {
                    remaining: (g.remaining - flight.by_grant.get(&g.id).copied().unwrap_or(0))
                        .max(0),
                    ..g
                })
                .collect();
            let total: i64 = target.iter().map(|g| g.remaining).sum();
            let expected: HashMap<String, String> = target
                .iter()
                .flat_map(|g| {
                    [
                        (g.id.to_string(), g.remaining.to_string()),
                        (format!("{}:w", g.id), g.window()),
                    ]
                })
                .collect();
            let mirror = balance.as_deref().and_then(|b| b.parse::<i64>().ok());
            if mirror == Some(total) && held == expected {
                return Ok(None);
            }
            let mut args = vec![
                balance.clone().unwrap_or_default(),
                total.to_string(),
                changes.len().to_string(),
            ];
            args.extend(changes.iter().map(Uuid::to_string));
            args.extend(target.iter().flat_map(MirrorGrant::args));
            let reset: i64 = RESET
                .evalsha_with_reload(&self.redis, keys.clone(), args)
                .await?;
            if reset == 1 {
                tracing::warn!(%tenant, app, ?mirror, total, "credit mirror corrected");
                metrics::counter!("tsync_wrapper_credit_mirror_corrections_total").increment(1);
                return Ok(Some(Correction {
                    tenant_id: tenant,
                    application: app.to_owned(),
                    mirror,
                    ledger: total,
                }));
            }
        }
        tracing::warn!(%tenant, app, "credit mirror kept moving; reconciled next time");
        Ok(None)
    }

    /// The grants a mirror should hold (active, not due to expire or renew) and the changes
    /// they reflect, read in one snapshot.
    async fn ledger_state(
        &self,
        tenant: Uuid,
        scope: &str,
    ) -> anyhow::Result<(Vec<MirrorGrant>, Vec<Uuid>)> {
        let mut tx = self.db.begin().await?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        let grants: Vec<MirrorGrant> = sqlx::query_as(&format!(
            "select {MIRROR_COLUMNS} from credit_grants
             where tenant_id = $1 and scope = $2 and status = 'active'
               and (expires_at is null or expires_at > now())
               and (next_renewal_at is null or next_renewal_at > now())"
        ))
        .bind(tenant)
        .bind(scope)
        .fetch_all(&mut *tx)
        .await?;
        let changes: Vec<Uuid> = sqlx::query_scalar(
            "select entry_id from credit_ledger
             where tenant_id = $1 and scope = $2 and kind in ('allocation', 'renewal')",
        )
        .bind(tenant)
        .bind(scope)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((grants, changes))
    }
}

/// The grants a credit stream entry drew (its `draws` field).
pub fn drawn(field: &str) -> Vec<GrantDraw> {
    sync_contract::credit_draws(field)
        .into_iter()
        .map(|(grant_id, amount)| GrantDraw {
            grant_id,
            amount,
            into: None,
        })
        .collect()
}
