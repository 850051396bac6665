//! Roles of a tenant: named sets of permissions. The built-in `admin` role (permission
//! `tenant.admin`) makes its holders tenant admins and cannot be deleted.

use crate::domain::users::AdminGuard;
use crate::error::OnConstraint;
use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use sync_contract::{Event, RoleState};
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
    validate,
};

/// Role routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, delete))
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RoleRow {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    permissions: sqlx::types::Json<Vec<String>>,
    deleted: bool,
    pub(crate) version: i64,
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

pub(crate) const ROLE_COLUMNS: &str = "id, tenant_id, name, permissions, deleted, version";

fn permissions(value: &[String]) -> ApiResult<Vec<String>> {
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
        .collect()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateRole {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) permissions: Vec<String>,
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
    let role = create_role(&state, &ctx, me.id, tenant_id, req).await?;
    Ok((StatusCode::CREATED, Json(role)))
}

/// Create a role in `tenant_id` for `actor` (already authorized as its admin): validated,
/// `role.created` and an audit entry in its transaction.
pub(crate) async fn create_role(
    state: &AppState,
    ctx: &Ctx,
    actor: Uuid,
    tenant_id: Uuid,
    req: CreateRole,
) -> ApiResult<RoleState> {
    let role = RoleState {
        id: Uuid::now_v7(),
        tenant_id,
        name: validate::short_text("name", &req.name, 60)?,
        permissions: permissions(&req.permissions)?,
        deleted: false,
    };
    let mut tx = state.db.begin().await?;
    super::users::ensure_active_tenant(&mut tx, tenant_id).await?;
    sqlx::query("insert into roles (id, tenant_id, name, permissions) values ($1, $2, $3, $4)")
        .bind(role.id)
        .bind(tenant_id)
        .bind(&role.name)
        .bind(sqlx::types::Json(&role.permissions))
        .execute(&mut *tx)
        .await
        .on_constraint(&[(
            "roles_name_unique",
            "name",
            "a role with this name already exists",
        )])?;
    outbox::record(
        &mut tx,
        ctx,
        tenant_id,
        (role.id, 1),
        Event::RoleCreated,
        &role,
    )
    .await?;
    role_audit(&mut tx, ctx, actor, &role, "role.created").await;
    tx.commit().await?;
    Ok(role)
}

async fn role_audit(
    tx: &mut sqlx::PgConnection,
    ctx: &Ctx,
    actor: Uuid,
    role: &RoleState,
    action: &str,
) {
    let entry = audit::Entry {
        tenant_id: Some(role.tenant_id),
        actor_id: Some(actor),
        action,
        target: Some(role.id.to_string()),
        outcome: "success",
        details: serde_json::json!({"name": role.name, "permissions": role.permissions}),
    };
    audit::record(tx, ctx, entry).await;
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
    let limit = page.limit()?;
    let rows: Vec<RoleRow> = sqlx::query_as(&format!(
        "select {ROLE_COLUMNS} from roles
         where tenant_id = $1 and not deleted and id > coalesce($2::uuid, '00000000-0000-0000-0000-000000000000') order by id limit $3"
    ))
    .bind(tenant_id)
    .bind(page.cursor)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let items = rows.into_iter().map(RoleState::from).collect();
    Ok(Json(Page::from_rows(items, limit, |r| r.id)))
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
    let row: RoleRow = sqlx::query_as(&format!(
        "select {ROLE_COLUMNS} from roles where tenant_id = $1 and id = $2"
    ))
    .bind(tenant_id)
    .bind(role_id)
    .fetch_optional(&state.db)
    .await?
    .ok_or(ApiError::NotFound("role"))?;
    Ok(Json(row.into()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UpdateRole {
    pub(crate) name: Option<String>,
    pub(crate) permissions: Option<Vec<String>>,
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
    Ok(Json(
        update_role(&state, &ctx, me.id, tenant_id, role_id, req).await?,
    ))
}

/// Rename a role or replace its permissions (not the built-in `admin` role), for `actor`
/// (already authorized): `role.updated` and an audit entry in its transaction.
pub(crate) async fn update_role(
    state: &AppState,
    ctx: &Ctx,
    actor: Uuid,
    tenant_id: Uuid,
    role_id: Uuid,
    req: UpdateRole,
) -> ApiResult<RoleState> {
    let name = req
        .name
        .as_deref()
        .map(|n| validate::short_text("name", n, 60))
        .transpose()?;
    let perms = req.permissions.as_deref().map(permissions).transpose()?;
    let mut tx = state.db.begin().await?;
    let guard = AdminGuard::before(&mut tx, tenant_id).await?;
    let row: RoleRow = sqlx::query_as(&format!(
        "update roles set name = coalesce($3, name), permissions = coalesce($4, permissions),
                version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 and not deleted and name <> 'admin' returning {ROLE_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(role_id)
    .bind(name)
    .bind(perms.map(sqlx::types::Json))
    .fetch_optional(&mut *tx)
    .await
    .on_constraint(&[("roles_name_unique", "name", "a role with this name already exists")])?
    .ok_or(ApiError::NotFound("editable role"))?;
    guard.after(&mut tx).await?;
    let aggregate = (role_id, row.version);
    let role = RoleState::from(row);
    outbox::record(
        &mut tx,
        ctx,
        tenant_id,
        aggregate,
        Event::RoleUpdated,
        &role,
    )
    .await?;
    role_audit(&mut tx, ctx, actor, &role, "role.updated").await;
    tx.commit().await?;
    Ok(role)
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
        delete_role(&state, &ctx, me.id, tenant_id, role_id).await?,
    ))
}

/// Delete a role (not the built-in `admin` role) for `actor` (already authorized):
/// `role.deleted` and an audit entry in its transaction.
pub(crate) async fn delete_role(
    state: &AppState,
    ctx: &Ctx,
    actor: Uuid,
    tenant_id: Uuid,
    role_id: Uuid,
) -> ApiResult<RoleState> {
    let mut tx = state.db.begin().await?;
    let guard = AdminGuard::before(&mut tx, tenant_id).await?;
    let row: RoleRow = sqlx::query_as(&format!(
        "update roles set deleted = true, version = version + 1, updated_at = now()
         where tenant_id = $1 and id = $2 and not deleted and name <> 'admin' returning {ROLE_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(role_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("deletable role"))?;
    guard.after(&mut tx).await?;
    let aggregate = (role_id, row.version);
    let role = RoleState::from(row);
    outbox::record(
        &mut tx,
        ctx,
        tenant_id,
        aggregate,
        Event::RoleDeleted,
        &role,
    )
    .await?;
    role_audit(&mut tx, ctx, actor, &role, "role.deleted").await;
    tx.commit().await?;
    Ok(role)
}
