//! Memberships over HTTP: a user holding a role ([`crate::model::memberships`]).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use sync_contract::MembershipState;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiJson, ApiQuery, Page, PageQuery};
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::ApiResult,
    model::{
        ids::{MembershipId, RoleId, TenantId, UserId},
        memberships,
    },
    state::AppState,
};

/// Membership routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
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
    let membership = memberships::grant_audited(
        &state.db,
        &ctx,
        UserId(me.id),
        TenantId(tenant_id),
        UserId(req.user_id),
        RoleId(req.role_id),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(membership)))
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
    let keyset = page.keyset()?;
    let items = memberships::page(&state.db, TenantId(tenant_id), keyset).await?;
    Ok(Json(Page::from_rows(items, keyset.limit, |m| m.id)))
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
        memberships::revoke(
            &state.db,
            &ctx,
            UserId(me.id),
            TenantId(tenant_id),
            MembershipId(membership_id),
        )
        .await?,
    ))
}
