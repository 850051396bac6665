//! Roles of a tenant over HTTP: named sets of permissions ([`crate::model::roles`]).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use sync_contract::RoleState;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiJson, ApiQuery, Page, PageQuery};
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::ApiResult,
    model::{
        ids::{RoleId, TenantId, UserId},
        roles::{self, Permissions, RoleName},
    },
    state::AppState,
};

/// Role routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, delete))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateRole {
    name: String,
    #[serde(default)]
    permissions: Vec<String>,
}

#[utoipa::path(post, path = "/api/tenants/{tenant_id}/roles", tag = "roles", request_body = CreateRole, responses((status = 201, description = "The role", body = RoleState)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiJson(req): ApiJson<CreateRole>,
) -> ApiResult<(StatusCode, Json<RoleState>)> {
    let me = caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    let role = roles::create(
        &state.db,
        &ctx,
        UserId(me.id),
        TenantId(tenant_id),
        RoleName::parse(&req.name)?,
        Permissions::parse(&req.permissions)?,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(role)))
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}/roles", tag = "roles", params(PageQuery), responses((status = 200, description = "A page of roles", body = Page<RoleState>)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<RoleState>>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Read)
        .await?;
    let keyset = page.keyset()?;
    let items = roles::page(&state.db, TenantId(tenant_id), keyset).await?;
    Ok(Json(Page::from_rows(items, keyset.limit, |r| r.id)))
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}/roles/{role_id}", tag = "roles", responses((status = 200, description = "The role", body = RoleState)))]
async fn read(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant_id, role_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<RoleState>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Read)
        .await?;
    Ok(Json(
        roles::get(&state.db, TenantId(tenant_id), RoleId(role_id)).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateRole {
    name: Option<String>,
    permissions: Option<Vec<String>>,
}

#[utoipa::path(patch, path = "/api/tenants/{tenant_id}/roles/{role_id}", tag = "roles", request_body = UpdateRole, responses((status = 200, description = "The role", body = RoleState)))]
async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant_id, role_id)): Path<(Uuid, Uuid)>,
    ApiJson(req): ApiJson<UpdateRole>,
) -> ApiResult<Json<RoleState>> {
    let me = caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    let name = req.name.as_deref().map(RoleName::parse).transpose()?;
    let permissions = req
        .permissions
        .as_deref()
        .map(Permissions::parse)
        .transpose()?;
    Ok(Json(
        roles::update(
            &state.db,
            &ctx,
            UserId(me.id),
            TenantId(tenant_id),
            RoleId(role_id),
            name,
            permissions,
        )
        .await?,
    ))
}

#[utoipa::path(delete, path = "/api/tenants/{tenant_id}/roles/{role_id}", tag = "roles", responses((status = 200, description = "The deleted role", body = RoleState)))]
async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant_id, role_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<RoleState>> {
    let me = caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    Ok(Json(
        roles::delete(
            &state.db,
            &ctx,
            UserId(me.id),
            TenantId(tenant_id),
            RoleId(role_id),
        )
        .await?,
    ))
}
