//! Memberships: a user holding a role of the same tenant. Granting and revoking are audited
//! role changes; revoking the last tenant admin is refused ([`AdminGuard`]).

use sqlx::{PgConnection, PgPool};
use sync_contract::{Event, MembershipState};
use uuid::Uuid;

use super::{
    ids::{MembershipId, RoleId, TenantId, UserId},
    paging::Keyset,
    users::{AdminGuard, ensure_active_tenant},
};
use crate::{
    audit,
    context::Ctx,
    error::{ApiError, ApiResult, OnConstraint},
    outbox,
};

/// A membership as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct MembershipRow {
    id: Uuid,
    tenant_id: Uuid,
    user_id: Uuid,
    role_id: Uuid,
    active: bool,
    version: i64,
}

impl MembershipRow {
    /// The row's version (its outbox aggregate version).
    pub fn version(&self) -> i64 {
        self.version
    }
}

impl From<MembershipRow> for MembershipState {
    fn from(r: MembershipRow) -> Self {
        MembershipState {
            id: r.id,
            tenant_id: r.tenant_id,
            user_id: r.user_id,
            role_id: r.role_id,
            active: r.active,
        }
    }
}

const COLUMNS: &str = "id, tenant_id, user_id, role_id, active, version";

/// Grant `role` to `user` (both of `tenant`) in the caller's transaction, reactivating a revoked
/// membership: `membership.granted`.
pub async fn grant(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    role: RoleId,
) -> ApiResult<MembershipState> {
    let valid: (bool, bool) = sqlx::query_as(
        "select exists(select 1 from users where id = $2 and tenant_id = $1 and deleted_at is null),
                exists(select 1 from roles where id = $3 and tenant_id = $1 and not deleted)",
    )
    .bind(tenant)
    .bind(user)
    .bind(role)
    .fetch_one(&mut *tx)
    .await?;
    if !valid.0 {
        return Err(ApiError::invalid("userId", "no such user in this tenant"));
    }
    if !valid.1 {
        return Err(ApiError::invalid("roleId", "no such role in this tenant"));
    }
    let row: MembershipRow = sqlx::query_as(&format!(
        "insert into memberships (id, tenant_id, user_id, role_id) values ($1, $2, $3, $4)
         on conflict (user_id, role_id) do update
           set active = true, version = memberships.version + 1, updated_at = now()
           where not memberships.active
         returning {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(user)
    .bind(role)
    .fetch_optional(&mut *tx)
    .await
    .on_constraint(&[(
        "memberships_user_id_role_id_key",
        "roleId",
        "the user already has this role",
    )])?
    .ok_or_else(|| ApiError::Conflict("the user already has this role".into()))?;
    let aggregate = (row.id, row.version);
    let membership = MembershipState::from(row);
    outbox::record(
        tx,
        ctx,
        tenant.0,
        aggregate,
        Event::MembershipGranted,
        &membership,
    )
    .await?;
    Ok(membership)
}

/// [`grant`] for `actor` (authorized as the tenant's admin), in its own transaction with an
/// audit entry.
pub async fn grant_audited(
    db: &PgPool,
    ctx: &Ctx,
    actor: UserId,
    tenant: TenantId,
    user: UserId,
    role: RoleId,
) -> ApiResult<MembershipState> {
    let mut tx = db.begin().await?;
    ensure_active_tenant(&mut tx, tenant.0).await?;
    let membership = grant(&mut tx, ctx, tenant, user, role).await?;
    audit_change(&mut tx, ctx, actor, &membership, "membership.granted").await;
    tx.commit().await?;
    Ok(membership)
}

async fn audit_change(
    tx: &mut PgConnection,
    ctx: &Ctx,
    actor: UserId,
    m: &MembershipState,
    action: &str,
) {
    let entry = audit::Entry {
        tenant_id: Some(m.tenant_id),
        actor_id: Some(actor.0),
        action,
        target: Some(m.user_id.to_string()),
        outcome: "success",
        details: serde_json::json!({"roleId": m.role_id, "membershipId": m.id}),
    };
    audit::record(tx, ctx, entry).await;
}

/// A page of `tenant`'s active memberships.
pub async fn page(
    db: &PgPool,
    tenant: TenantId,
    keyset: Keyset,
) -> ApiResult<Vec<MembershipState>> {
    let rows: Vec<MembershipRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from memberships where tenant_id = $1 and active {}",
        Keyset::clause("id", 2, 3)
    ))
    .bind(tenant)
    .bind(keyset.cursor)
    .bind(keyset.fetch())
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(MembershipState::from).collect())
}

/// Every membership of `tenant`, revoked ones included, with its version (the snapshot).
pub async fn all_of(tx: &mut PgConnection, tenant: TenantId) -> ApiResult<Vec<MembershipRow>> {
    Ok(sqlx::query_as(&format!(
        "select {COLUMNS} from memberships where tenant_id = $1 order by id"
    ))
    .bind(tenant)
    .fetch_all(tx)
    .await?)
}

/// Revoke a membership for `actor` (authorized): `membership.revoked` and an audit entry in its
/// transaction.
pub async fn revoke(
    db: &PgPool,
    ctx: &Ctx,
    actor: UserId,
    tenant: TenantId,
    membership: MembershipId,
) -> ApiResult<MembershipState> {
    let mut tx = db.begin().await?;
    let guard = AdminGuard::before(&mut tx, tenant.0).await?;
    let row: MembershipRow = sqlx::query_as(&format!(
        "update memberships set active = false, version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 and active returning {COLUMNS}"
    ))
    .bind(tenant)
    .bind(membership)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("membership"))?;
    guard.after(&mut tx).await?;
    let aggregate = (row.id, row.version);
    let state = MembershipState::from(row);
    outbox::record(
        &mut tx,
        ctx,
        tenant.0,
        aggregate,
        Event::MembershipRevoked,
        &state,
    )
    .await?;
    audit_change(&mut tx, ctx, actor, &state, "membership.revoked").await;
    tx.commit().await?;
    Ok(state)
}
