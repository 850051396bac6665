//! Roles of a tenant: named sets of permissions. The built-in `admin` role (permission
//! `tenant.admin`) makes its holders tenant admins; it cannot be renamed or deleted.

use sqlx::{PgConnection, PgPool};
use sync_contract::{Event, RoleState};
use uuid::Uuid;

use super::{
    ids::{RoleId, TenantId, UserId},
    paging::Keyset,
    users::{AdminGuard, TENANT_ADMIN_PERMISSION, ensure_active_tenant},
};
use crate::{
    audit,
    context::Ctx,
    error::{ApiError, ApiResult, OnConstraint},
    outbox, validate,
};

/// A role as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct RoleRow {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    permissions: sqlx::types::Json<Vec<String>>,
    deleted: bool,
    version: i64,
}

impl RoleRow {
    /// The row's version (its outbox aggregate version).
    pub fn version(&self) -> i64 {
        self.version
    }
}

impl From<RoleRow> for RoleState {
    fn from(r: RoleRow) -> Self {
        RoleState {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            permissions: r.permissions.0,
            deleted: r.deleted,
        }
    }
}

const COLUMNS: &str = "id, tenant_id, name, permissions, deleted, version";

const NAME_TAKEN: [(&str, &str, &str); 1] = [(
    "roles_name_unique",
    "name",
    "a role with this name already exists",
)];

/// A role's name: 1–60 characters, trimmed.
#[derive(Debug, Clone)]
pub struct RoleName(String);

impl RoleName {
    /// Parse the field `name`.
    pub fn parse(value: &str) -> ApiResult<Self> {
        validate::short_text("name", value, 60).map(Self)
    }
}

/// A role's permissions: names of letters, digits and `._:-*`, up to 100 characters each.
#[derive(Debug, Clone)]
pub struct Permissions(Vec<String>);

impl Permissions {
    /// Parse the field `permissions`.
    pub fn parse(value: &[String]) -> ApiResult<Self> {
        value
            .iter()
            .map(|p| {
                let ok = !p.is_empty()
                    && p.len() <= 100
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._:-*".contains(c));
                ok.then(|| p.clone()).ok_or_else(|| {
                    ApiError::invalid("permissions", format!("`{p}` is not a permission name"))
                })
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(Self)
    }
}

/// Create a role in `tenant` for `actor` (authorized as its admin): `role.created` and an audit
/// entry in its transaction.
pub async fn create(
    db: &PgPool,
    ctx: &Ctx,
    actor: UserId,
    tenant: TenantId,
    name: RoleName,
    permissions: Permissions,
) -> ApiResult<RoleState> {
    let role = RoleState {
        id: Uuid::now_v7(),
        tenant_id: tenant.0,
        name: name.0,
        permissions: permissions.0,
        deleted: false,
    };
    let mut tx = db.begin().await?;
    ensure_active_tenant(&mut tx, tenant.0).await?;
    insert(&mut tx, ctx, &role).await?;
    audit_change(&mut tx, ctx, actor, &role, "role.created").await;
    tx.commit().await?;
    Ok(role)
}

/// The built-in `admin` role of a new tenant, with its `role.created`, in the tenant's creating
/// transaction.
pub async fn create_admin(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant: TenantId,
) -> ApiResult<RoleState> {
    let role = RoleState {
        id: Uuid::now_v7(),
        tenant_id: tenant.0,
        name: "admin".into(),
        permissions: vec![TENANT_ADMIN_PERMISSION.into()],
        deleted: false,
    };
    insert(tx, ctx, &role).await?;
    Ok(role)
}

/// Insert a new role with its `role.created` event.
async fn insert(tx: &mut PgConnection, ctx: &Ctx, role: &RoleState) -> ApiResult<()> {
    sqlx::query("insert into roles (id, tenant_id, name, permissions) values ($1, $2, $3, $4)")
        .bind(role.id)
        .bind(role.tenant_id)
        .bind(&role.name)
        .bind(sqlx::types::Json(&role.permissions))
        .execute(&mut *tx)
        .await
        .on_constraint(&NAME_TAKEN)?;
    outbox::record(
        tx,
        ctx,
        role.tenant_id,
        (role.id, 1),
        Event::RoleCreated,
        role,
    )
    .await?;
    Ok(())
}

async fn audit_change(
    tx: &mut PgConnection,
    ctx: &Ctx,
    actor: UserId,
    role: &RoleState,
    action: &str,
) {
    let entry = audit::Entry {
        tenant_id: Some(role.tenant_id),
        actor_id: Some(actor.0),
        action,
        target: Some(role.id.to_string()),
        outcome: "success",
        details: serde_json::json!({"name": role.name, "permissions": role.permissions}),
    };
    audit::record(tx, ctx, entry).await;
}

/// A page of `tenant`'s roles (deleted ones left out).
pub async fn page(db: &PgPool, tenant: TenantId, keyset: Keyset) -> ApiResult<Vec<RoleState>> {
    let rows: Vec<RoleRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from roles where tenant_id = $1 and not deleted {}",
        Keyset::clause("id", 2, 3)
    ))
    .bind(tenant)
    .bind(keyset.cursor)
    .bind(keyset.fetch())
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(RoleState::from).collect())
}

/// Every role of `tenant`, deleted ones included, with its version (the snapshot).
pub async fn all_of(tx: &mut PgConnection, tenant: TenantId) -> ApiResult<Vec<RoleRow>> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from roles where tenant_id = $1 order by id"
    ))
    .bind(tenant)
    .fetch_all(tx)
    .await?)
}

/// One role of `tenant` (deleted or not).
pub async fn get(db: &PgPool, tenant: TenantId, role: RoleId) -> ApiResult<RoleState> {
    let row: RoleRow = sqlx::query_as(&format!(
        "select {COLUMNS} from roles where tenant_id = $1 and id = $2"
    ))
    .bind(tenant)
    .bind(role)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("role"))?;
    Ok(row.into())
}

/// Rename a role or replace its permissions (not the built-in `admin` role), for `actor`
/// (authorized): `role.updated` and an audit entry in its transaction.
pub async fn update(
    db: &PgPool,
    ctx: &Ctx,
    actor: UserId,
    tenant: TenantId,
    role: RoleId,
    name: Option<RoleName>,
    permissions: Option<Permissions>,
) -> ApiResult<RoleState> {
    let mut tx = db.begin().await?;
    let guard = AdminGuard::before(&mut tx, tenant.0).await?;
    let row: RoleRow = sqlx::query_as(&format!(
        "update roles set name = coalesce($3, name), permissions = coalesce($4, permissions),
                version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 and not deleted and name <> 'admin' returning {COLUMNS}"
    ))
    .bind(tenant)
    .bind(role)
    .bind(name.map(|n| n.0))
    .bind(permissions.map(|p| sqlx::types::Json(p.0)))
    .fetch_optional(&mut *tx)
    .await
    .on_constraint(&NAME_TAKEN)?
    .ok_or(ApiError::NotFound("editable role"))?;
    guard.after(&mut tx).await?;
    let state = changed(&mut tx, ctx, actor, row, Event::RoleUpdated, "role.updated").await?;
    tx.commit().await?;
    Ok(state)
}

/// Delete a role (not the built-in `admin` role) for `actor` (authorized): `role.deleted` and
/// an audit entry in its transaction.
pub async fn delete(
    db: &PgPool,
    ctx: &Ctx,
    actor: UserId,
    tenant: TenantId,
    role: RoleId,
) -> ApiResult<RoleState> {
    let mut tx = db.begin().await?;
    let guard = AdminGuard::before(&mut tx, tenant.0).await?;
    let row: RoleRow = sqlx::query_as(&format!(
        "update roles set deleted = true, version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 and not deleted and name <> 'admin' returning {COLUMNS}"
    ))
    .bind(tenant)
    .bind(role)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("deletable role"))?;
    guard.after(&mut tx).await?;
    let state = changed(&mut tx, ctx, actor, row, Event::RoleDeleted, "role.deleted").await?;
    tx.commit().await?;
    Ok(state)
}

/// The event and audit entry of a changed role.
async fn changed(
    tx: &mut PgConnection,
    ctx: &Ctx,
    actor: UserId,
    row: RoleRow,
    event: fn(RoleState) -> Event,
    action: &str,
) -> ApiResult<RoleState> {
    let aggregate = (row.id, row.version);
    let role = RoleState::from(row);
    outbox::record(tx, ctx, role.tenant_id, aggregate, event, &role).await?;
    audit_change(tx, ctx, actor, &role, action).await;
    Ok(role)
}
