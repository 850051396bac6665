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
