//! Memberships: a user holding a role. Granting and revoking are audited role changes.

use crate::domain::users::AdminGuard;
use crate::error::OnConstraint;
use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use sqlx::PgConnection;
use sync_contract::{Event, MembershipState};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiJson, ApiQuery, Page, PageQuery};
use crate::{
    audit,
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    outbox,
    state::AppState,
};

/// Membership routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MembershipRow {
    id: Uuid,
    tenant_id: Uuid,
    user_id: Uuid,
    role_id: Uuid,
    active: bool,
    pub(crate) version: i64,
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

pub(crate) const COLUMNS: &str = "id, tenant_id, user_id, role_id, active, version";

/// Grant `role_id` to `user_id` (both of `tenant_id`), reactivating a revoked membership.
pub(crate) async fn grant(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant_id: Uuid,
    user_id: Uuid,
    role_id: Uuid,
) -> ApiResult<MembershipState> {
    let valid: (bool, bool) = sqlx::query_as(
        "select exists(select 1 from users where id = $2 and tenant_id = $1 and deleted_at is null),
                exists(select 1 from roles where id = $3 and tenant_id = $1 and not deleted)",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(role_id)
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
    .bind(tenant_id)
    .bind(user_id)
    .bind(role_id)
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
        tenant_id,
        aggregate,
        Event::MembershipGranted,
        &membership,
    )
    .await?;
    Ok(membership)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Grant {
    user_id: Uuid,
    role_id: Uuid,
}

#[utoipa::path(post, path = "/api/tenants/{tenant_id}/memberships", tag = "memberships", request_body = Grant, responses((status = 201, description = "The membership", body = MembershipState)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiJson(req): ApiJson<Grant>,
) -> ApiResult<(StatusCode, Json<MembershipState>)> {
    let me = caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    let membership =
        grant_audited(&state, &ctx, me.id, tenant_id, req.user_id, req.role_id).await?;
    Ok((StatusCode::CREATED, Json(membership)))
}

/// [`grant`] for `actor` (already authorized as the tenant's admin), in its own transaction
/// with an audit entry.
pub(crate) async fn grant_audited(
    state: &AppState,
    ctx: &Ctx,
    actor: Uuid,
    tenant_id: Uuid,
    user_id: Uuid,
    role_id: Uuid,
) -> ApiResult<MembershipState> {
    let mut tx = state.db.begin().await?;
    super::users::ensure_active_tenant(&mut tx, tenant_id).await?;
    let membership = grant(&mut tx, ctx, tenant_id, user_id, role_id).await?;
    change_audit(&mut tx, ctx, actor, &membership, "membership.granted").await;
    tx.commit().await?;
    Ok(membership)
}

async fn change_audit(
    tx: &mut PgConnection,
    ctx: &Ctx,
    actor: Uuid,
    m: &MembershipState,
    action: &str,
) {
    let entry = audit::Entry {
        tenant_id: Some(m.tenant_id),
        actor_id: Some(actor),
        action,
        target: Some(m.user_id.to_string()),
        outcome: "success",
        details: serde_json::json!({"roleId": m.role_id, "membershipId": m.id}),
    };
    audit::record(tx, ctx, entry).await;
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}/memberships", tag = "memberships", params(PageQuery), responses((status = 200, description = "A page of memberships", body = Page<MembershipState>)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<MembershipState>>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Read)
        .await?;
    let limit = page.limit()?;
    let rows: Vec<MembershipRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from memberships
         where tenant_id = $1 and active and id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') order by id limit $3"
    ))
    .bind(tenant_id)
    .bind(page.cursor)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let items = rows.into_iter().map(MembershipState::from).collect();
    Ok(Json(Page::from_rows(items, limit, |m| m.id)))
}

#[utoipa::path(delete, path = "/api/tenants/{tenant_id}/memberships/{membership_id}", tag = "memberships", responses((status = 200, description = "The revoked membership", body = MembershipState)))]
async fn revoke(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant_id, membership_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<MembershipState>> {
    let me = caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    Ok(Json(
        revoke_membership(&state, &ctx, me.id, tenant_id, membership_id).await?,
    ))
}

/// Revoke a membership for `actor` (already authorized): `membership.revoked` and an audit
/// entry in its transaction.
pub(crate) async fn revoke_membership(
    state: &AppState,
    ctx: &Ctx,
    actor: Uuid,
    tenant_id: Uuid,
    membership_id: Uuid,
) -> ApiResult<MembershipState> {
    let mut tx = state.db.begin().await?;
    let guard = AdminGuard::before(&mut tx, tenant_id).await?;
    let row: MembershipRow = sqlx::query_as(&format!(
        "update memberships set active = false, version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 and active returning {COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(membership_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("membership"))?;
    guard.after(&mut tx).await?;
    let aggregate = (row.id, row.version);
    let membership = MembershipState::from(row);
    outbox::record(
        &mut tx,
        ctx,
        tenant_id,
        aggregate,
        Event::MembershipRevoked,
        &membership,
    )
    .await?;
    change_audit(&mut tx, ctx, actor, &membership, "membership.revoked").await;
    tx.commit().await?;
    Ok(membership)
}
