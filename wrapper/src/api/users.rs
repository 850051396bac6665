//! Users of a tenant: create, list (paged), read, update, soft delete. Responses and events
//! carry [`UserState`], which has no field for a password hash, MFA secret or token.

use crate::error::OnConstraint;
use crate::model::users::AdminGuard;
use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use sync_contract::{Event, UserState};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiJson, ApiQuery, Page, PageQuery};
pub(crate) use crate::model::users::{ensure_active_tenant, insert};
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    outbox::{self, Aggregate},
    state::AppState,
    validate,
};

/// User routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, soft_delete))
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UserRow {
    id: Uuid,
    tenant_id: Uuid,
    email: String,
    full_name: String,
    avatar_url: Option<String>,
    email_verified: bool,
    active: bool,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) version: i64,
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

pub(crate) const USER_COLUMNS: &str =
    "id, tenant_id, email, full_name, avatar_url, email_verified, active, deleted_at, version";

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
    let limit = PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    }
    .limit()?;
    let rows: Vec<UserRow> = sqlx::query_as(&format!(
        "select {USER_COLUMNS} from users
         where tenant_id = $1 and id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') and ($3 or deleted_at is null)
         order by id limit $4"
    ))
    .bind(tenant_id)
    .bind(q.cursor)
    .bind(q.include_deleted.unwrap_or(false))
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let items = rows.into_iter().map(UserState::from).collect();
    Ok(Json(Page::from_rows(items, limit, |u| u.id)))
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
    let row: UserRow = sqlx::query_as(&format!(
        "select {USER_COLUMNS} from users where tenant_id = $1 and id = $2"
    ))
    .bind(tenant_id)
    .bind(user_id)
    .fetch_optional(&state.db)
    .await?
    .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(row.into()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UpdateUser {
    pub(crate) email: Option<String>,
    pub(crate) full_name: Option<String>,
    pub(crate) avatar_url: Option<String>,
    pub(crate) active: Option<bool>,
    pub(crate) password: Option<String>,
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
pub(crate) async fn update_user(
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
    let mut tx = state.db.begin().await?;
    // Only a deactivation can take an admin away: other changes (an address, a name) keep the
    // write path as it was.
    let guard = match req.active {
        Some(false) => Some(AdminGuard::before(&mut tx, tenant_id).await?),
        _ => None,
    };
    let before: Option<(String, bool)> = sqlx::query_as(
        "select email, active from users where tenant_id = $1 and id = $2 and deleted_at is null for update",
    )
    .bind(tenant_id)
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (old_email, was_active) = before.ok_or(ApiError::NotFound("user"))?;
    let row: UserRow = sqlx::query_as(&format!(
        "update users set email = coalesce($3, email), full_name = coalesce($4, full_name),
                avatar_url = coalesce($5, avatar_url), active = coalesce($6, active),
                password_hash = coalesce($7, password_hash),
                email_verified = case when $3 is not null and $3 <> email then false else email_verified end,
                version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 returning {USER_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(user_id)
    .bind(&email)
    .bind(full_name)
    .bind(req.avatar_url)
    .bind(req.active)
    .bind(hash)
    .fetch_one(&mut *tx)
    .await
    .on_constraint(&[("users_email_unique", "email", "a user with this email already exists")])?;
    let aggregate = Aggregate {
        id: user_id,
        version: row.version,
    };
    let user = UserState::from(row);
    let event = if was_active && !user.active {
        Event::UserDeactivated(user.clone())
    } else if user.email != old_email {
        Event::UserEmailChanged(user.clone())
    } else {
        Event::UserUpdated(user.clone())
    };
    if let Some(guard) = guard {
        guard.after(&mut tx).await?;
    }
    outbox::append(&mut tx, ctx, tenant_id, aggregate, event).await?;
    tx.commit().await?;
    Ok(user)
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
    let mut tx = state.db.begin().await?;
    let guard = AdminGuard::before(&mut tx, tenant_id).await?;
    let row: UserRow = sqlx::query_as(&format!(
        "update users set deleted_at = now(), active = false, version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 and deleted_at is null returning {USER_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("user"))?;
    guard.after(&mut tx).await?;
    let aggregate = (user_id, row.version);
    let user = UserState::from(row);
    outbox::record(
        &mut tx,
        &ctx,
        tenant_id,
        aggregate,
        Event::UserDeleted,
        &user,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(user))
}
