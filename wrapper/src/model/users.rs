//! Users as the domain sees them: creating one (with its `user.created` event) inside the
//! caller's transaction, and the check that a tenant takes new users. Called by the REST API and
//! by OpenID Connect sign-in (which may create the user it signs in).

use crate::error::OnConstraint;
use sqlx::PgConnection;
use sync_contract::{Event, UserState};
use uuid::Uuid;

use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
    outbox,
};

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
    .on_constraint(&[("users_email_unique", "email", "a user with this email already exists")])?;
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
