//! Operations every app must carry out and confirm: erasing a user's personal data, purging a
//! tenant. The guarantee: an operation is *done* only when every registered app has sent a
//! receipt for it, and until then it is sent again.
//!
//! * **Recorded with the change.** The operation row is written in the transaction that makes
//!   the change at the wrapper (the user scrubbed, the tenant marked `purging`).
//! * **Sent until answered.** After the commit, and then every `WRAPPER_LIFECYCLE_RESEND_SECS`
//!   while it is pending, the command goes on the lifecycle stream (`{ns}:lifecycle`), which
//!   every app reads with its own consumer group: an app that is down finds it when it returns,
//!   an app registered later gets it from a resend. Apps act idempotently.
//! * **Receipts.** Each app answers `PUT /api/sync/operations/{id}/receipt` (its service token
//!   names the app) with what it removed. The operation completes when every app registered at
//!   that moment has a `done` receipt; a purge then deletes the tenant's rows (the audit log
//!   and the operation itself stay) and its Redis keys; an export packages the wrapper's rows
//!   and the parts each app uploaded into one tar archive of JSON Lines files.

use std::time::Duration;

use fred::{prelude::*, types::scan::Scanner};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use sync_contract::StreamKeys;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub mod export;
pub mod redis_copies;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Erase a user's personal data (`subject`).
    EraseUser,
    /// Delete everything of a tenant.
    PurgeTenant,
    /// Gather everything of a tenant into one archive.
    ExportTenant,
}

impl Kind {
    /// The wire name (`erase_user`, `purge_tenant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EraseUser => "erase_user",
            Kind::PurgeTenant => "purge_tenant",
            Kind::ExportTenant => "export_tenant",
        }
    }
}

/// One app's answer as the operation shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// The app.
    pub app: String,
    /// `pending` (no receipt yet), `done` or `failed`.
    pub status: String,
    /// The replica that answered.
    pub replica: Option<String>,
    /// Why it failed.
    pub reason: Option<String>,
    /// What it removed (counts per collection, keys, …).
    pub details: Option<Value>,
    /// When.
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An operation as its resource shows it (`GET /api/operations/{id}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Its id.
    pub id: Uuid,
    /// `erase_user` or `purge_tenant`.
    pub kind: String,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The user an erasure is about.
    pub subject: Option<Uuid>,
    /// `pending` until every registered app sent a `done` receipt, then `done`.
    pub status: String,
    /// When it was requested.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it completed.
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What the wrapper itself did: for an erasure, `wrapper` (rows changed or removed per
    /// table, at once) and `redis` (event entries and dead letters deleted once every app
    /// confirmed, entries still waiting for a consumer group); for a purge, rows and keys
    /// deleted; for an export, its files and size. With `apps`, the proof of the operation.
    pub result: Value,
    /// Every registered app with its receipt (or `pending`).
    pub apps: Vec<AppStatus>,
}

/// Record a new operation inside `tx` (the transaction of the change it carries out).
pub async fn create(
    tx: &mut PgConnection,
    kind: Kind,
    tenant_id: Uuid,
    subject: Option<Uuid>,
    requested_by: Option<Uuid>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into lifecycle_operations (id, tenant_id, kind, subject, requested_by)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(tenant_id)
    .bind(kind.as_str())
    .bind(subject)
    .bind(requested_by)
    .execute(tx)
    .await?;
    Ok(id)
}

/// Put the command of operation `id` on the lifecycle stream (again). Failures are logged: the
/// resend loop retries.
pub async fn send(db: &PgPool, redis: &Client, keys: &StreamKeys, id: Uuid) {
    if let Err(e) = try_send(db, redis, keys, id).await {
        tracing::warn!(operation = %id, error = %e, "lifecycle: command not sent yet; the resend loop retries");
    }
}

async fn try_send(db: &PgPool, redis: &Client, keys: &StreamKeys, id: Uuid) -> anyhow::Result<()> {
    let row: Option<(String, Uuid, Option<Uuid>)> = sqlx::query_as(
        "update lifecycle_operations set last_sent_at = now()
         where id = $1 and status = 'pending' returning kind, tenant_id, subject",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some((kind, tenant_id, subject)) = row else {
        return Ok(());
    };
    let mut fields = vec![
        ("operationId", id.to_string()),
        ("kind", kind),
        ("tenantId", tenant_id.to_string()),
    ];
    if let Some(user) = subject {
        fields.push(("userId", user.to_string()));
    }
    let _: String = redis
        .xadd(keys.lifecycle(), false, None, "*", fields)
        .await?;
    Ok(())
}

/// Record `app`'s receipt for operation `id` (the last word of an app wins), then complete the
/// operation if every registered app is done. Returns false when there is no such operation.
#[allow(clippy::too_many_arguments)]
pub async fn receipt(
    db: &PgPool,
    redis: &Client,
    keys: &StreamKeys,
    id: Uuid,
    app: &str,
    replica: &str,
    done: bool,
    reason: Option<&str>,
    details: &Value,
) -> anyhow::Result<bool> {
    let stored = sqlx::query(
        "insert into lifecycle_receipts (operation_id, app, replica, status, reason, details)
         select id, $2, $3, $4, $5, $6 from lifecycle_operations where id = $1
         on conflict (operation_id, app) do update set replica = excluded.replica,
             status = excluded.status, reason = excluded.reason, details = excluded.details,
             received_at = now()",
    )
    .bind(id)
    .bind(app)
    .bind(replica)
    .bind(if done { "done" } else { "failed" })
    .bind(reason)
    .bind(details)
    .execute(db)
    .await?
    .rows_affected()
        == 1;
    if stored {
        let outcome = if done { "done" } else { "failed" };
        metrics::counter!("tsync_lifecycle_receipts_total", "outcome" => outcome).increment(1);
        complete_if_answered(db, redis, keys, id).await?;
    }
    Ok(stored)
}

/// Complete operation `id` if every registered app sent a `done` receipt; a purge then deletes
/// the tenant. One transaction, the operation row locked: two receipts arriving together
/// complete it once.
pub async fn complete_if_answered(
    db: &PgPool,
    redis: &Client,
    keys: &StreamKeys,
    id: Uuid,
) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    let row: Option<(String, Uuid, Option<Uuid>, Option<Value>)> = sqlx::query_as(
        "select kind, tenant_id, subject, result from lifecycle_operations
         where id = $1 and status = 'pending' for update",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((kind, tenant_id, subject, so_far)) = row else {
        return Ok(false);
    };
    let waiting: i64 = sqlx::query_scalar(
        "select count(*) from applications a
         where not exists (select 1 from lifecycle_receipts r
                           where r.operation_id = $1 and r.app = a.name and r.status = 'done')",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if waiting > 0 {
        return Ok(false);
    }
    let result = if kind == Kind::PurgeTenant.as_str() {
        let rows = purge_rows(&mut tx, tenant_id).await?;
        let keys_removed = purge_redis(redis, keys, tenant_id).await?;
        json!({"rowsDeleted": rows, "redisKeysDeleted": keys_removed})
    } else if kind == Kind::ExportTenant.as_str() {
        // An erasure of the tenant still pending may have parts of this export to take the
        // person out of (uploaded by an app before it carried the erasure out): wait for it.
        let erasing: bool = sqlx::query_scalar(
            "select exists(select 1 from lifecycle_operations
                           where tenant_id = $1 and kind = 'erase_user' and status = 'pending')",
        )
        .bind(tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        if erasing {
            return Ok(false);
        }
        crate::lifecycle::export::package(&mut tx, id, tenant_id).await?
    } else if kind == Kind::EraseUser.as_str()
        && let Some(user_id) = subject
    {
        // Every app confirmed: what Redis still holds of the person goes now, or the
        // operation waits for the groups that have not read it (the resend loop asks again).
        let apps: Vec<String> = sqlx::query_scalar("select name from applications order by name")
            .fetch_all(&mut *tx)
            .await?;
        let since: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "select min(created_at) from outbox
             where tenant_id = $1 and event_type like 'user.%'
               and envelope::jsonb ->> 'aggregateId' = $2",
        )
        .bind(tenant_id)
        .bind(user_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let copies = redis_copies::erase(redis, keys, &apps, tenant_id, user_id, since).await?;
        let mut result = so_far.unwrap_or_else(|| json!({}));
        // Every app has carried the erasure out, so every export part it uploaded before is
        // here: the person's synced record leaves the tenant's pending exports.
        let lines = export::drop_person(&mut tx, tenant_id, user_id, &[]).await?;
        let before = result["wrapper"]["export_parts (lines)"]
            .as_u64()
            .unwrap_or(0);
        result["wrapper"]["export_parts (lines)"] = json!(before + lines);
        let redis_part = &mut result["redis"];
        let add = |v: &Value, n: u64| v.as_u64().unwrap_or(0) + n;
        *redis_part = json!({
            "eventEntriesDeleted": add(&redis_part["eventEntriesDeleted"], copies.events_deleted),
            "deadLettersDeleted": add(&redis_part["deadLettersDeleted"], copies.dead_letters_deleted),
            "eventEntriesWaiting": copies.events_waiting,
        });
        if copies.events_waiting > 0 {
            // Kept for the next round; the operation stays pending.
            sqlx::query("update lifecycle_operations set result = $2 where id = $1")
                .bind(id)
                .bind(&result)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(false);
        }
        result
    } else {
        json!({})
    };
    sqlx::query(
        "update lifecycle_operations set status = 'done', completed_at = now(), result = $2
         where id = $1",
    )
    .bind(id)
    .bind(&result)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(operation = %id, kind, %tenant_id, "lifecycle: every app answered; done");
    Ok(true)
}

/// Delete every row of `tenant_id` except its audit log: children first. Returns the count per
/// table.
async fn purge_rows(tx: &mut PgConnection, tenant_id: Uuid) -> Result<Value, sqlx::Error> {
    const TABLES: &[(&str, &str)] = &[
        (
            "outbox_pending",
            "id in (select id from outbox where tenant_id = $1)",
        ),
        ("outbox", "tenant_id = $1"),
        (
            "webhook_attempts",
            "delivery_id in (select id from webhook_deliveries where tenant_id = $1)",
        ),
        ("webhook_deliveries", "tenant_id = $1"),
        ("webhook_endpoints", "tenant_id = $1"),
        ("user_identities", "tenant_id = $1"),
        ("oidc_flows", "tenant_id = $1"),
        ("memberships", "tenant_id = $1"),
        ("roles", "tenant_id = $1"),
        ("settings", "tenant_id = $1"),
        ("credit_ledger", "tenant_id = $1"),
        ("credit_balances", "tenant_id = $1"),
        ("credit_grants", "tenant_id = $1"),
        ("credit_thresholds", "tenant_id = $1"),
        ("credit_configs", "tenant_id = $1"),
        ("users", "tenant_id = $1"),
        (
            "sign_in_failures",
            "key like 'account:' || $1::text || ':%'",
        ),
        ("tenants", "id = $1"),
    ];
    let mut counts = serde_json::Map::new();
    for (table, filter) in TABLES {
        // Table names and filters are the constants above, never input.
        let deleted = sqlx::query(&format!("delete from {table} where {filter}"))
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        counts.insert((*table).to_owned(), json!(deleted));
    }
    Ok(Value::Object(counts))
}

/// Delete the tenant's Redis keys (credit mirrors, prices, operation records). They share their
/// partition's hash tag, so the scan goes to one node of a cluster.
async fn purge_redis(redis: &Client, keys: &StreamKeys, tenant_id: Uuid) -> anyhow::Result<usize> {
    use futures_util::TryStreamExt;
    let pattern = keys.tenant_keys_pattern(tenant_id);
    let mut found: Vec<String> = Vec::new();
    let mut pages = redis.scan(pattern, Some(500), None);
    while let Some(mut page) = pages.try_next().await? {
        if let Some(keys) = page.take_results() {
            found.extend(keys.into_iter().filter_map(|k| k.into_string()));
        }
        page.next();
    }
    for key in &found {
        let _: i64 = redis.del(key.as_str()).await?;
    }
    Ok(found.len())
}

/// Every operation of `id` with its apps' receipts; None when unknown.
pub async fn read(db: &PgPool, id: Uuid) -> Result<Option<Operation>, sqlx::Error> {
    type Row = (
        Uuid,
        String,
        Uuid,
        Option<Uuid>,
        String,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
        Value,
    );
    let row: Option<Row> = sqlx::query_as(
        "select id, kind, tenant_id, subject, status, created_at, completed_at, result
         from lifecycle_operations where id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some((id, kind, tenant_id, subject, status, created_at, completed_at, result)) = row else {
        return Ok(None);
    };
    type AppRow = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<Value>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    // Registered apps, and apps that answered though no longer registered.
    let apps: Vec<AppRow> = sqlx::query_as(
        "select coalesce(a.name, r.app), r.status, r.replica, r.reason, r.details, r.received_at
         from (select name from applications) a
         full join (select * from lifecycle_receipts where operation_id = $1) r on r.app = a.name
         order by 1",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let apps = apps
        .into_iter()
        .map(
            |(app, status, replica, reason, details, received_at)| AppStatus {
                app,
                status: status.unwrap_or_else(|| "pending".into()),
                replica,
                reason,
                details,
                received_at,
            },
        )
        .collect();
    Ok(Some(Operation {
        id,
        kind,
        tenant_id,
        subject,
        status,
        created_at,
        completed_at,
        result,
        apps,
    }))
}

/// Until cancelled, every `every`: send again the operations not answered for `every`, complete
/// those whose apps all answered (an app may have been removed meanwhile), and start the purge
/// of tenants archived longer than `grace` (None: never automatically).
pub async fn run(
    db: PgPool,
    redis: Client,
    keys: StreamKeys,
    every: Duration,
    grace: Option<Duration>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {},
        }
        if let Some(grace) = grace
            && let Err(e) = purge_expired(&db, &redis, &keys, grace).await
        {
            tracing::warn!(error = %e, "lifecycle: purging archived tenants failed");
        }
        if let Err(e) = export_pending(&db).await {
            tracing::warn!(error = %e, "lifecycle: counting pending operations failed");
        }
        let due: Result<Vec<Uuid>, sqlx::Error> = sqlx::query_scalar(
            "select id from lifecycle_operations where status = 'pending'
             and (last_sent_at is null or last_sent_at < now() - make_interval(secs => $1))
             order by created_at limit 100",
        )
        .bind(every.as_secs_f64())
        .fetch_all(&db)
        .await;
        match due {
            Ok(ids) => {
                for id in ids {
                    match complete_if_answered(&db, &redis, &keys, id).await {
                        Ok(true) => {}
                        Ok(false) => send(&db, &redis, &keys, id).await,
                        Err(e) => {
                            tracing::warn!(operation = %id, error = %e, "lifecycle: completion check failed")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "lifecycle: reading pending operations failed"),
        }
    }
}

/// The pending operations per kind, as the gauge dashboards read.
async fn export_pending(db: &PgPool) -> Result<(), sqlx::Error> {
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "select kind, count(*) from lifecycle_operations where status = 'pending' group by kind",
    )
    .fetch_all(db)
    .await?;
    for kind in [Kind::EraseUser, Kind::PurgeTenant, Kind::ExportTenant] {
        let pending = counts
            .iter()
            .find(|(k, _)| k == kind.as_str())
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("tsync_lifecycle_operations_pending", "kind" => kind.as_str())
            .set(pending as f64);
    }
    Ok(())
}

/// Start the purge of every tenant archived longer than `grace` ago.
async fn purge_expired(
    db: &PgPool,
    redis: &Client,
    keys: &StreamKeys,
    grace: Duration,
) -> anyhow::Result<()> {
    let expired: Vec<Uuid> = sqlx::query_scalar(
        "select id from tenants where status = 'archived'
         and archived_at < now() - make_interval(secs => $1) limit 100",
    )
    .bind(grace.as_secs_f64())
    .fetch_all(db)
    .await?;
    for tenant_id in expired {
        if let Some(id) = start_purge(db, tenant_id, None).await? {
            tracing::info!(%tenant_id, operation = %id, "lifecycle: grace period over; purging");
            send(db, redis, keys, id).await;
        }
    }
    Ok(())
}

/// Mark archived tenant `tenant_id` as purging and record the purge operation; None when the
/// tenant is not archived (restored meanwhile, or already purging).
pub async fn start_purge(
    db: &PgPool,
    tenant_id: Uuid,
    requested_by: Option<Uuid>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let marked = sqlx::query(
        "update tenants set status = 'purging', updated_at = now()
         where id = $1 and status = 'archived'",
    )
    .bind(tenant_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !marked {
        return Ok(None);
    }
    let id = create(&mut tx, Kind::PurgeTenant, tenant_id, None, requested_by).await?;
    tx.commit().await?;
    Ok(Some(id))
}
