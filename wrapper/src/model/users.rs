//! Users of a tenant: their rows and pages, creating one (with its `user.created` event) inside
//! the caller's transaction, changing and soft-deleting one (each with the event the change is),
//! the check that a tenant takes new users, and the guard that keeps a tenant's last admin.
//! Called by the REST API, the console and OpenID Connect sign-in (which may create the user it
//! signs in).

use sqlx::{PgConnection, PgPool};
use sync_contract::{Event, UserState};
use uuid::Uuid;

use super::{
    ids::{TenantId, UserId},
    paging::Keyset,
};
use crate::{
    context::Ctx,
    error::{ApiError, ApiResult, OnConstraint},
    outbox::{self, Aggregate},
};

/// A user as stored (without the password hash).
#[derive(Debug, sqlx::FromRow)]
pub struct UserRow {
    id: Uuid,
    tenant_id: Uuid,
    email: String,
    full_name: String,
    avatar_url: Option<String>,
    email_verified: bool,
    active: bool,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    version: i64,
}

impl UserRow {
    /// The row's version (its outbox aggregate version).
    pub fn version(&self) -> i64 {
        self.version
    }
}

impl From<UserRow> for UserState {
    fn from(r: UserRow) -> Self {
        UserState {
            id: r.id,
            tenant_id: r.tenant_id,
            email: r.email,
            full_name: r.full_name,
            avatar_url: r.avatar_url,
            email_verified: r.email_verified,
            active: r.active,
            deleted_at: r.deleted_at,
        }
    }
}

const COLUMNS: &str =
    "id, tenant_id, email, full_name, avatar_url, email_verified, active, deleted_at, version";

const EMAIL_TAKEN: [(&str, &str, &str); 1] = [(
    "users_email_unique",
    "email",
    "a user with this email already exists",
)];

/// A page of `tenant`'s users (soft-deleted ones only with `include_deleted`).
pub async fn page(
    db: &PgPool,
    tenant: TenantId,
    keyset: Keyset,
    include_deleted: bool,
) -> ApiResult<Vec<UserState>> {
    let rows: Vec<UserRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from users where tenant_id = $1 and ($4 or deleted_at is null) {}",
        Keyset::clause("id", 2, 3)
    ))
    .bind(tenant)
    .bind(keyset.cursor)
    .bind(keyset.fetch())
    .bind(include_deleted)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(UserState::from).collect())
}

/// A page of `tenant`'s users, deleted ones included, with their versions (the snapshot's).
pub async fn snapshot_page(
    tx: &mut PgConnection,
    tenant: TenantId,
    keyset: Keyset,
) -> ApiResult<Vec<UserRow>> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from users where tenant_id = $1 {}",
        Keyset::clause("id", 2, 3)
    ))
    .bind(tenant)
    .bind(keyset.cursor)
    .bind(keyset.fetch())
    .fetch_all(tx)
    .await?)
}

/// One user of `tenant` (soft-deleted or not).
pub async fn get(db: &PgPool, tenant: TenantId, user: UserId) -> ApiResult<UserState> {
    let row: UserRow = sqlx::query_as(&format!(
        "select {COLUMNS} from users where tenant_id = $1 and id = $2"
    ))
    .bind(tenant)
    .bind(user)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("user"))?;
    Ok(row.into())
}

/// A change to a user, every field parsed (and the password hashed) at the edge.
#[derive(Debug, Default)]
pub struct UserChange {
    /// A new address (its verification is reset when it differs).
    pub email: Option<String>,
    /// A new name.
    pub full_name: Option<String>,
    /// A new avatar URL.
    pub avatar_url: Option<String>,
    /// Activate or deactivate.
    pub active: Option<bool>,
    /// A new password's hash.
    pub password_hash: Option<String>,
}

/// Change a user of `tenant` (the caller is allowed to), with the event the change is:
/// `user.deactivated`, `user.email_changed` or `user.updated`. Deactivating the last tenant
/// admin is refused.
pub async fn update(
    db: &PgPool,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    change: UserChange,
) -> ApiResult<UserState> {
    let mut tx = db.begin().await?;
    // Only a deactivation can take an admin away: other changes (an address, a name) keep the
    // write path as it was.
    let guard = match change.active {
        Some(false) => Some(AdminGuard::before(&mut tx, tenant.0).await?),
        _ => None,
    };
    let before: Option<(String, bool)> = sqlx::query_as(
        "select email, active from users where tenant_id = $1 and id = $2 and deleted_at is null for update",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    let (old_email, was_active) = before.ok_or(ApiError::NotFound("user"))?;
    let row: UserRow = sqlx::query_as(&format!(
        "update users set email = coalesce($3, email), full_name = coalesce($4, full_name),
                avatar_url = coalesce($5, avatar_url), active = coalesce($6, active),
                password_hash = coalesce($7, password_hash),
                email_verified = case when $3 is not null and $3 <> email then false else email_verified end,
                version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 returning {COLUMNS}"
    ))
    .bind(tenant)
    .bind(user)
    .bind(&change.email)
    .bind(change.full_name)
    .bind(change.avatar_url)
    .bind(change.active)
    .bind(change.password_hash)
    .fetch_one(&mut *tx)
    .await
    .on_constraint(&EMAIL_TAKEN)?;
    let aggregate = Aggregate {
        id: user.0,
        version: row.version,
    };
    let state = UserState::from(row);
    let event = if was_active && !state.active {
        Event::UserDeactivated(state.clone())
    } else if state.email != old_email {
        Event::UserEmailChanged(state.clone())
    } else {
        Event::UserUpdated(state.clone())
    };
    if let Some(guard) = guard {
        guard.after(&mut tx).await?;
    }
    outbox::append(&mut tx, ctx, tenant.0, aggregate, event).await?;
    tx.commit().await?;
    Ok(state)
}

/// Erase a user of `tenant` in the caller's transaction: the row becomes a tombstone (erased
/// address and name, no avatar or password, inactive, deleted). Returns the address it had and
/// the tombstone; a user erased already is not found.
pub async fn erase(
    tx: &mut PgConnection,
    tenant: TenantId,
    user: UserId,
) -> ApiResult<(String, UserRow)> {
    let email: Option<String> = sqlx::query_scalar(
        "select email from users where tenant_id = $1 and id = $2 and email not like '%@erased.invalid'
         for update",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    let email = email.ok_or(ApiError::NotFound("user"))?;
    let row: UserRow = sqlx::query_as(&format!(
        "update users set email = $3, full_name = $4, avatar_url = null, password_hash = null,
             email_verified = false, active = false, deleted_at = coalesce(deleted_at, now()),
             version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 returning {COLUMNS}"
    ))
    .bind(tenant)
    .bind(user)
    .bind(sync_contract::erased_email(user.0))
    .bind(sync_contract::ERASED_NAME)
    .fetch_one(&mut *tx)
    .await?;
    Ok((email, row))
}

/// Soft-delete a user of `tenant` (deactivated, kept for the audit trail): `user.deleted`.
/// Deleting the last tenant admin is refused.
pub async fn soft_delete(
    db: &PgPool,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
) -> ApiResult<UserState> {
    let mut tx = db.begin().await?;
    let guard = AdminGuard::before(&mut tx, tenant.0).await?;
    let row: UserRow = sqlx::query_as(&format!(
        "update users set deleted_at = now(), active = false, version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 and deleted_at is null returning {COLUMNS}"
    ))
    .bind(tenant)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("user"))?;
    guard.after(&mut tx).await?;
    let aggregate = (user.0, row.version);
    let state = UserState::from(row);
    outbox::record(
        &mut tx,
        ctx,
        tenant.0,
        aggregate,
        Event::UserDeleted,
        &state,
    )
    .await?;
    tx.commit().await?;
    Ok(state)
}

/// Insert a new user of a tenant with its `user.created` event.
pub(crate) async fn insert(
    tx: &mut PgConnection,
    ctx: &Ctx,
    user: &UserState,
    password_hash: Option<String>,
) -> ApiResult<()> {
    sqlx::query(
        "insert into users (id, tenant_id, email, full_name, avatar_url, password_hash, email_verified)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(user.id)
    .bind(user.tenant_id)
    .bind(&user.email)
    .bind(&user.full_name)
    .bind(&user.avatar_url)
    .bind(password_hash)
    .bind(user.email_verified)
    .execute(&mut *tx)
    .await
    .on_constraint(&EMAIL_TAKEN)?;
    outbox::record(
        tx,
        ctx,
        user.tenant_id,
        (user.id, 1),
        Event::UserCreated,
        user,
    )
    .await?;
    Ok(())
}

/// The tenant exists and is active (it takes new users); else a 409 or 404.
pub(crate) async fn ensure_active_tenant(db: &mut PgConnection, tenant_id: Uuid) -> ApiResult<()> {
    let active: Option<bool> =
        sqlx::query_scalar("select status = 'active' from tenants where id = $1")
            .bind(tenant_id)
            .fetch_optional(db)
            .await?;
    match active {
        Some(true) => Ok(()),
        Some(false) => Err(ApiError::Conflict("the tenant is archived".into())),
        None => Err(ApiError::NotFound("tenant")),
    }
}

/// The rule that a tenant keeps an administrator: a change that may take the last one away (a
/// user deactivated, deleted or erased, a membership revoked, a role's `tenant.admin` removed
/// or the role deleted) takes a guard before it and checks it after, in one transaction. The
/// guard serialises such changes per tenant (a transaction-scoped advisory lock), so two
/// admins deactivating each other at once cannot both succeed. A platform admin offboards a
/// tenant by suspending or deleting the tenant, not by this path.
pub(crate) struct AdminGuard {
    tenant_id: Uuid,
    had_admin: bool,
}

/// The permission that makes a role's holders tenant admins.
pub const TENANT_ADMIN_PERMISSION: &str = "tenant.admin";

/// The statement taking tenant `$1`'s admin lock (held to the end of the transaction): every
/// change that may take an admin away takes it first.
pub const ADMIN_LOCK: &str =
    "select pg_advisory_xact_lock(hashtextextended('tenant-admins:' || $1::text, 0))";

/// Whether `tenant_id` has an active admin (an active user with an active membership in a
/// role granting `tenant.admin`).
async fn has_admin(db: &mut PgConnection, tenant_id: Uuid) -> ApiResult<bool> {
    Ok(sqlx::query_scalar(
        "select exists(select 1 from users u
           join memberships m on m.user_id = u.id and m.active
           join roles r on r.id = m.role_id and not r.deleted
          where u.tenant_id = $1 and u.active and u.deleted_at is null and r.permissions ? $2)",
    )
    .bind(tenant_id)
    .bind(TENANT_ADMIN_PERMISSION)
    .fetch_one(db)
    .await?)
}

impl AdminGuard {
    /// Before the change: take the tenant's admin lock, note whether it has an admin now.
    pub(crate) async fn before(db: &mut PgConnection, tenant_id: Uuid) -> ApiResult<Self> {
        sqlx::query(ADMIN_LOCK)
            .bind(tenant_id)
            .execute(&mut *db)
            .await?;
        Ok(Self {
            tenant_id,
            had_admin: has_admin(db, tenant_id).await?,
        })
    }

    /// After the change: refuse it (409, the transaction is to be dropped) when it took the
    /// tenant's last admin away.
    pub(crate) async fn after(self, db: &mut PgConnection) -> ApiResult<()> {
        if self.had_admin && !has_admin(db, self.tenant_id).await? {
            return Err(ApiError::Conflict(
                "this would leave the tenant without an admin: make another user an admin first \
                 (a platform admin can suspend or delete the tenant)"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}
