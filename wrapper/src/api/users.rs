//! Users of a tenant: create, list (paged), read, update, soft delete. Responses and events
//! carry [`UserState`], which has no field for a password hash, MFA secret or token.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use sync_contract::UserState;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiJson, ApiQuery, Page, PageQuery};
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    model::{
        ids::{TenantId, UserId},
        users::{self, UserChange, ensure_active_tenant, insert},
    },
    state::AppState,
    validate,
};

/// User routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, soft_delete))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateUser {
    pub(crate) email: String,
    pub(crate) full_name: String,
    pub(crate) password: Option<String>,
    pub(crate) avatar_url: Option<String>,
}

#[utoipa::path(post, path = "/api/tenants/{tenant_id}/users", tag = "users", request_body = CreateUser, responses((status = 201, description = "The user", body = UserState)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserState>)> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    let user = create_user(&state, &ctx, tenant_id, req).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Create a user of `tenant_id` (the caller is allowed to): checked field by field, with its
/// `user.created` event. The API and the console both call it.
pub(crate) async fn create_user(
    state: &AppState,
    ctx: &Ctx,
    tenant_id: Uuid,
    req: CreateUser,
) -> ApiResult<UserState> {
    let email = validate::email("email", &req.email)?;
    let full_name = validate::full_name("fullName", &req.full_name)?;
    let hash = match req.password {
        Some(p) => {
            validate::password("password", &p)?;
            Some(state.hash_password(p).await?)
        }
        None => None,
    };
    let user = UserState {
        id: Uuid::now_v7(),
        tenant_id,
        email,
        full_name,
        avatar_url: req.avatar_url,
        email_verified: false,
        active: true,
        deleted_at: None,
    };
    let mut tx = state.db.begin().await?;
    ensure_active_tenant(&mut tx, tenant_id).await?;
    insert(&mut tx, ctx, &user, hash).await?;
    tx.commit().await?;
    Ok(user)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    cursor: Option<Uuid>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    #[serde(rename = "includeDeleted")]
    include_deleted: Option<bool>,
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}/users", tag = "users", params(ListQuery), responses((status = 200, description = "A page of users", body = Page<UserState>)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<UserState>>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Read)
        .await?;
    let keyset = PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .keyset()?;
    let include_deleted = q.include_deleted.unwrap_or(false);
    let items = users::page(&state.db, TenantId(tenant_id), keyset, include_deleted).await?;
    Ok(Json(Page::from_rows(items, keyset.limit, |u| u.id)))
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}/users/{user_id}", tag = "users", responses((status = 200, description = "The user", body = UserState)))]
async fn read(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant_id, user_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<UserState>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Read)
        .await?;
    Ok(Json(
        users::get(&state.db, TenantId(tenant_id), UserId(user_id)).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateUser {
    email: Option<String>,
    full_name: Option<String>,
    avatar_url: Option<String>,
    active: Option<bool>,
    password: Option<String>,
}

#[utoipa::path(patch, path = "/api/tenants/{tenant_id}/users/{user_id}", tag = "users", request_body = UpdateUser, responses((status = 200, description = "The user", body = UserState)))]
async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant_id, user_id)): Path<(Uuid, Uuid)>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserState>> {
    let me = caller
        .authorize(&state, &ctx, tenant_id, Access::Read)
        .await?;
    let is_self = me.id == user_id;
    let admin = me.platform_admin || me.tenant_admin;
    // Users may edit their own name, avatar and password; everything else is for admins.
    if !admin && (!is_self || req.email.is_some() || req.active.is_some()) {
        return Err(ApiError::Forbidden("tenant admins only"));
    }
    Ok(Json(
        update_user(&state, &ctx, tenant_id, user_id, req).await?,
    ))
}

/// Change a user of `tenant_id` (the caller is allowed to), with the event the change is:
/// `user.deactivated`, `user.email_changed` or `user.updated`. The API and the console call it.
async fn update_user(
    state: &AppState,
    ctx: &Ctx,
    tenant_id: Uuid,
    user_id: Uuid,
    req: UpdateUser,
) -> ApiResult<UserState> {
    let email = req
        .email
        .as_deref()
        .map(|e| validate::email("email", e))
        .transpose()?;
    let full_name = req
        .full_name
        .as_deref()
        .map(|n| validate::full_name("fullName", n))
        .transpose()?;
    let hash = match req.password {
        Some(p) => {
            validate::password("password", &p)?;
            Some(state.hash_password(p).await?)
        }
        None => None,
    };
    let change = UserChange {
        email,
        full_name,
        avatar_url: req.avatar_url,
        active: req.active,
        password_hash: hash,
    };
    users::update(&state.db, ctx, TenantId(tenant_id), UserId(user_id), change).await
}

#[utoipa::path(delete, path = "/api/tenants/{tenant_id}/users/{user_id}", tag = "users", responses((status = 200, description = "The soft-deleted user", body = UserState)))]
async fn soft_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant_id, user_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<UserState>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    Ok(Json(
        users::soft_delete(&state.db, &ctx, TenantId(tenant_id), UserId(user_id)).await?,
    ))
}
