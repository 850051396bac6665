//! Tenants: their rows and pages, creating one, changing one (a custom domain active at once or
//! pending its proof), and the status transitions (archive, suspend, resume, restore), each with
//! its event in one transaction.

use sqlx::{PgConnection, PgPool};
use sync_contract::{Event, TenantState, TenantStatus};
use uuid::Uuid;

use super::{
    ids::{TenantId, UserId},
    paging::Keyset,
};
use crate::{
    audit,
    context::Ctx,
    error::{ApiError, ApiResult, OnConstraint},
    outbox,
};

/// A tenant as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct TenantRow {
    id: Uuid,
    name: String,
    subdomain: String,
    domain: Option<String>,
    plan: String,
    features: sqlx::types::Json<Vec<String>>,
    theme: serde_json::Value,
    status: String,
    version: i64,
}

impl TenantRow {
    /// The row's version (its outbox aggregate version).
    pub fn version(&self) -> i64 {
        self.version
    }
}

impl From<TenantRow> for TenantState {
    fn from(r: TenantRow) -> Self {
        TenantState {
            id: r.id,
            name: r.name,
            subdomain: r.subdomain,
            domain: r.domain,
            plan: r.plan,
            features: r.features.0,
            theme: r.theme,
            status: match r.status.as_str() {
                // Purging: gone for everyone but the purge.
                "archived" | "purging" => TenantStatus::Archived,
                "suspended" => TenantStatus::Suspended,
                _ => TenantStatus::Active,
            },
        }
    }
}

const COLUMNS: &str = "id, name, subdomain, domain, plan, features, theme, status, version";

const DOMAIN_TAKEN: (&str, &str, &str) = ("tenants_domain_key", "domain", "this domain is taken");

/// One tenant, whatever its status.
pub async fn get(db: &mut PgConnection, tenant: TenantId) -> ApiResult<TenantRow> {
    sqlx::query_as(&format!("select {COLUMNS} from tenants where id = $1"))
        .bind(tenant)
        .fetch_optional(db)
        .await?
        .ok_or(ApiError::NotFound("tenant"))
}

/// One tenant for an app's snapshot, with the last event it was given (the watermark); a tenant
/// being purged is not found (loading it again would bring back what the apps just deleted).
pub async fn for_snapshot(tx: &mut PgConnection, tenant: TenantId) -> ApiResult<(TenantRow, i64)> {
    let row: TenantRow = sqlx::query_as(&format!(
        "select {COLUMNS} from tenants where id = $1 and status <> 'purging'"
    ))
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("tenant"))?;
    let watermark: i64 = sqlx::query_scalar("select last_seq from tenants where id = $1")
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
    Ok((row, watermark))
}

/// A page of every tenant.
pub async fn page(db: &PgPool, keyset: Keyset) -> ApiResult<Vec<TenantState>> {
    let rows: Vec<TenantRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from tenants where true {}",
        Keyset::clause("id", 1, 2)
    ))
    .bind(keyset.cursor)
    .bind(keyset.fetch())
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(TenantState::from).collect())
}

/// A new tenant, every field parsed at the edge.
#[derive(Debug)]
pub struct NewTenant {
    /// Its id (it decides the partition).
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Its subdomain of the platform's domain.
    pub subdomain: String,
    /// A custom domain, active at once.
    pub domain: Option<String>,
    /// Plan.
    pub plan: String,
    /// Feature flags.
    pub features: Vec<String>,
    /// Theme (JSON object).
    pub theme: serde_json::Value,
    /// Its stream partition.
    pub partition: u32,
}

/// Insert a new tenant with its `tenant.created` event, in the caller's transaction.
pub async fn insert(tx: &mut PgConnection, ctx: &Ctx, new: NewTenant) -> ApiResult<TenantState> {
    sqlx::query(
        "insert into tenants (id, name, subdomain, domain, plan, features, theme, partition)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new.id)
    .bind(&new.name)
    .bind(&new.subdomain)
    .bind(&new.domain)
    .bind(&new.plan)
    .bind(sqlx::types::Json(&new.features))
    .bind(&new.theme)
    .bind(new.partition as i32)
    .execute(&mut *tx)
    .await
    .on_constraint(&[
        (
            "tenants_subdomain_key",
            "subdomain",
            "this subdomain is taken",
        ),
        DOMAIN_TAKEN,
    ])?;
    let tenant = TenantState::from(get(&mut *tx, new.id).await?);
    outbox::record(
        tx,
        ctx,
        new.id.0,
        (new.id.0, 1),
        Event::TenantCreated,
        &tenant,
    )
    .await?;
    Ok(tenant)
}

/// Whether another tenant than `except` has `domain` as its active custom domain.
pub async fn domain_taken(db: &PgPool, domain: &str, except: TenantId) -> ApiResult<bool> {
    Ok(
        sqlx::query_scalar("select exists(select 1 from tenants where domain = $1 and id <> $2)")
            .bind(domain)
            .bind(except)
            .fetch_one(db)
            .await?,
    )
}

/// A change to an active tenant, every field parsed at the edge.
#[derive(Debug, Default)]
pub struct TenantChange {
    /// A new name.
    pub name: Option<String>,
    /// A custom domain active at once (a platform admin's word).
    pub active_domain: Option<String>,
    /// A custom domain that waits for its proof (a tenant admin's request): a new challenge.
    pub pending_domain: Option<String>,
    /// A new plan.
    pub plan: Option<String>,
    /// New feature flags.
    pub features: Option<Vec<String>>,
    /// A new theme.
    pub theme: Option<serde_json::Value>,
}

/// Change an active tenant: `tenant.updated`.
pub async fn update(
    db: &PgPool,
    ctx: &Ctx,
    tenant: TenantId,
    change: TenantChange,
) -> ApiResult<TenantState> {
    let mut tx = db.begin().await?;
    let row: Option<TenantRow> = sqlx::query_as(&format!(
        "update tenants set name = coalesce($2, name), domain = coalesce($3, domain),
                plan = coalesce($4, plan), features = coalesce($5, features),
                theme = coalesce($6, theme), version = version + 1, updated_at = now(),
                pending_domain = case when $3::text is not null then null
                                      else coalesce($7, pending_domain) end,
                domain_challenge = case when $3::text is not null then null
                                        when $7::text is not null
                                        then replace(gen_random_uuid()::text, '-', '')
                                        else domain_challenge end
         where id = $1 and status = 'active' returning {COLUMNS}"
    ))
    .bind(tenant)
    .bind(change.name)
    .bind(&change.active_domain)
    .bind(change.plan)
    .bind(change.features.map(sqlx::types::Json))
    .bind(&change.theme)
    .bind(&change.pending_domain)
    .fetch_optional(&mut *tx)
    .await
    .on_constraint(&[DOMAIN_TAKEN])?;
    let row = row.ok_or(ApiError::NotFound("active tenant"))?;
    let state = updated(&mut tx, ctx, row, Event::TenantUpdated).await?;
    tx.commit().await?;
    Ok(state)
}

/// Make the pending `domain` the tenant's active custom domain, with its `tenant.updated` event.
pub async fn set_active_domain(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant: TenantId,
    domain: &str,
) -> ApiResult<TenantState> {
    let row: Option<TenantRow> = sqlx::query_as(&format!(
        "update tenants set domain = $2, pending_domain = null, domain_challenge = null,
                version = version + 1, updated_at = now()
         where id = $1 and status = 'active' and pending_domain = $2 returning {COLUMNS}"
    ))
    .bind(tenant)
    .bind(domain)
    .fetch_optional(&mut *tx)
    .await
    .on_constraint(&[DOMAIN_TAKEN])?;
    let row = row.ok_or(ApiError::Conflict(
        "the pending domain changed meanwhile".into(),
    ))?;
    updated(tx, ctx, row, Event::TenantUpdated).await
}

/// The event of a changed tenant.
async fn updated(
    tx: &mut PgConnection,
    ctx: &Ctx,
    row: TenantRow,
    event: fn(TenantState) -> Event,
) -> ApiResult<TenantState> {
    let aggregate = (row.id, row.version);
    let tenant = TenantState::from(row);
    outbox::record(tx, ctx, tenant.id, aggregate, event, &tenant).await?;
    Ok(tenant)
}

/// A change of a tenant's status by a platform admin.
pub struct Transition {
    from: &'static [&'static str],
    to: &'static str,
    event: fn(TenantState) -> Event,
    refused: &'static str,
}

/// Archive an active tenant (offboarding).
pub const ARCHIVE: Transition = Transition {
    from: &["active"],
    to: "archived",
    event: Event::TenantArchived,
    refused: "active tenant",
};
/// Suspend an active tenant.
pub const SUSPEND: Transition = Transition {
    from: &["active"],
    to: "suspended",
    event: Event::TenantSuspended,
    refused: "active tenant",
};
/// Resume a suspended tenant.
pub const RESUME: Transition = Transition {
    from: &["suspended"],
    to: "active",
    event: Event::TenantResumed,
    refused: "suspended tenant",
};
/// Restore an archived tenant within its grace period.
pub const RESTORE: Transition = Transition {
    from: &["archived"],
    to: "active",
    event: Event::TenantUpdated,
    refused: "archived tenant",
};

impl Transition {
    /// Apply it for `admin` (a platform admin), with its event and audit entry, in one
    /// transaction; 404 when the tenant is not in one of the statuses it starts from.
    pub async fn apply(
        &self,
        db: &PgPool,
        ctx: &Ctx,
        admin: UserId,
        tenant: TenantId,
    ) -> ApiResult<TenantState> {
        let mut tx = db.begin().await?;
        let row: Option<TenantRow> = sqlx::query_as(&format!(
            "update tenants set status = $2, version = version + 1, updated_at = now(),
                 archived_at = case when $2 = 'archived' then now() end
             where id = $1 and status = any($3) returning {COLUMNS}"
        ))
        .bind(tenant)
        .bind(self.to)
        .bind(self.from)
        .fetch_optional(&mut *tx)
        .await?;
        let row = row.ok_or(ApiError::NotFound(self.refused))?;
        let state = updated(&mut tx, ctx, row, self.event).await?;
        let entry = audit::Entry {
            tenant_id: Some(tenant.0),
            actor_id: Some(admin.0),
            action: "tenant_status",
            target: Some(tenant.to_string()),
            outcome: "success",
            details: serde_json::json!({"status": self.to}),
        };
        audit::record(&mut *tx, ctx, entry).await;
        tx.commit().await?;
        Ok(state)
    }
}
