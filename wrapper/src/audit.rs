//! The audit log: security events (sign-in success and failure, role changes, cross-tenant
//! attempts, exports) that tenant admins can read. Entries about refused requests are written
//! outside the refused request's transaction, so they survive its rollback.

use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::context::Ctx;

/// One audit entry to record.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The tenant the entry is about (readable by that tenant's admins).
    pub tenant_id: Option<Uuid>,
    /// Who acted, when known.
    pub actor_id: Option<Uuid>,
    /// What was attempted, e.g. `login`, `cross_tenant_attempt`, `membership.granted`.
    pub action: &'a str,
    /// What it was attempted on, e.g. a path or a user id.
    pub target: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: &'a str,
    /// Anything else worth keeping (never secrets).
    pub details: serde_json::Value,
}

/// Record `entry`, a fact the wrapper saw, logging (not failing) if the database refuses.
pub async fn record(db: impl PgExecutor<'_>, ctx: &Ctx, entry: Entry<'_>) {
    insert(db, ctx, None, entry).await
}

/// Record `entry` as reported by `app` (its action already `<app>:<action>`).
pub async fn record_reported(db: impl PgExecutor<'_>, ctx: &Ctx, app: &str, entry: Entry<'_>) {
    insert(db, ctx, Some(app), entry).await
}

async fn insert(db: impl PgExecutor<'_>, ctx: &Ctx, reported_by: Option<&str>, entry: Entry<'_>) {
    let result = sqlx::query(
        "insert into audit_log
           (tenant_id, actor_id, action, target, outcome, details, request_id, reported_by)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(entry.tenant_id)
    .bind(entry.actor_id)
    .bind(entry.action)
    .bind(&entry.target)
    .bind(entry.outcome)
    .bind(&entry.details)
    .bind(&ctx.request_id)
    .bind(reported_by)
    .execute(db)
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, action = entry.action, "could not write audit entry");
    }
    tracing::info!(target: "audit", action = entry.action, outcome = entry.outcome, tenant_id = ?entry.tenant_id, actor_id = ?entry.actor_id, "audit");
}

/// An audit entry as tenant admins read it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Entry id (cursor for paging).
    pub id: i64,
    /// The tenant.
    pub tenant_id: Option<Uuid>,
    /// Who acted.
    pub actor_id: Option<Uuid>,
    /// What was attempted.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: String,
    /// Extra details.
    pub details: serde_json::Value,
    /// The app that reported the entry (`POST /api/audit/events`; its action is then
    /// `<app>:<action>`), or none when the wrapper wrote it: only entries without it are the
    /// wrapper's own facts.
    pub reported_by: Option<String>,
    /// The request that caused it.
    pub request_id: Option<String>,
    /// When.
    pub created_at: chrono::DateTime<chrono::Utc>,
}
