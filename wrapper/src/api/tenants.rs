//! Tenants: create (platform admins, with the built-in admin role and optionally a first
//! admin), read, update, archive. Each change is one transaction with its events.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use sync_contract::{TenantState, UserState};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiJson, ApiQuery, Page, PageQuery};
use crate::{
    auth::{Access, Caller, UserCaller},
    context::Ctx,
    error::{ApiError, ApiResult},
    model::{
        self,
        ids::{RoleId, TenantId, UserId},
        tenants::{self, NewTenant, TenantChange, Transition},
    },
    state::AppState,
    validate,
};

/// Tenant routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, archive))
        .routes(routes!(suspend))
        .routes(routes!(resume))
        .routes(routes!(restore))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FirstAdmin {
    email: String,
    full_name: String,
    password: String,
}

/// A tenant to create (the API's body; also `WRAPPER_BOOTSTRAP_TENANT`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
    pub(crate) subdomain: String,
    domain: Option<String>,
    plan: Option<String>,
    #[serde(default)]
    features: Vec<String>,
    theme: Option<serde_json::Value>,
    admin: Option<FirstAdmin>,
}

#[utoipa::path(post, path = "/api/tenants", tag = "tenants", request_body = CreateTenant, responses((status = 201, description = "The tenant, with `adminRoleId` and `adminUserId`", body = Value)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTenant>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    caller.require_platform_admin()?;
    Ok((
        StatusCode::CREATED,
        Json(create_tenant(&state, &ctx, req).await?),
    ))
}

/// Create the tenant `req` describes (the caller is allowed to): checked field by field, with
/// its admin role, its first admin if given, and their events; the tenant as the API answers
/// it, with `adminRoleId` and `adminUserId`.
pub async fn create_tenant(
    state: &AppState,
    ctx: &Ctx,
    req: CreateTenant,
) -> ApiResult<serde_json::Value> {
    let name = validate::short_text("name", &req.name, 100)?;
    let subdomain = validate::subdomain("subdomain", &req.subdomain)?;
    let plan = validate::short_text("plan", req.plan.as_deref().unwrap_or("free"), 40)?;
    // A platform admin's word makes a custom domain active at once.
    let domain = req
        .domain
        .as_deref()
        .map(|d| custom_domain(state, d))
        .transpose()?;
    let admin = match &req.admin {
        Some(a) => {
            let email = validate::email("admin.email", &a.email)?;
            let full_name = validate::full_name("admin.fullName", &a.full_name)?;
            validate::password("admin.password", &a.password)?;
            Some((
                email,
                full_name,
                state.hash_password(a.password.clone()).await?,
            ))
        }
        None => None,
    };

    let tenant_id = Uuid::now_v7();
    let new = NewTenant {
        id: TenantId(tenant_id),
        name,
        subdomain,
        domain,
        plan,
        features: req.features,
        theme: req.theme.unwrap_or_else(|| serde_json::json!({})),
        partition: state.stream_keys.partition_of(tenant_id),
    };
    let mut tx = state.db.begin().await?;
    let tenant = tenants::insert(&mut tx, ctx, new).await?;

    let role = model::roles::create_admin(&mut tx, ctx, TenantId(tenant_id)).await?;

    let mut admin_user_id = None;
    if let Some((email, full_name, hash)) = admin {
        let user = UserState {
            id: Uuid::now_v7(),
            tenant_id,
            email,
            full_name,
            avatar_url: None,
            email_verified: false,
            active: true,
            deleted_at: None,
        };
        crate::model::users::insert(&mut tx, ctx, &user, Some(hash)).await?;
        model::memberships::grant(
            &mut tx,
            ctx,
            TenantId(tenant_id),
            UserId(user.id),
            RoleId(role.id),
        )
        .await?;
        admin_user_id = Some(user.id);
    }
    tx.commit().await?;
    state.domains.invalidate();
    let mut body = serde_json::to_value(&tenant).map_err(anyhow::Error::from)?;
    body["adminRoleId"] = serde_json::json!(role.id);
    body["adminUserId"] = serde_json::json!(admin_user_id);
    Ok(body)
}

#[utoipa::path(get, path = "/api/tenants", tag = "tenants", params(PageQuery), responses((status = 200, description = "A page of tenants", body = Page<TenantState>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<TenantState>>> {
    caller.require_platform_admin()?;
    let keyset = page.keyset()?;
    let items = tenants::page(&state.db, keyset).await?;
    Ok(Json(Page::from_rows(items, keyset.limit, |t| t.id)))
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}", tag = "tenants", responses((status = 200, description = "The tenant", body = TenantState)))]
async fn read(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Json<TenantState>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Read)
        .await?;
    let mut conn = state.db.acquire().await?;
    Ok(Json(
        tenants::get(&mut conn, TenantId(tenant_id)).await?.into(),
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UpdateTenant {
    pub(crate) name: Option<String>,
    pub(crate) domain: Option<String>,
    pub(crate) plan: Option<String>,
    pub(crate) features: Option<Vec<String>>,
    pub(crate) theme: Option<serde_json::Value>,
}

#[utoipa::path(patch, path = "/api/tenants/{tenant_id}", tag = "tenants", request_body = UpdateTenant, responses((status = 200, description = "The tenant; a custom domain requested by a tenant admin waits for proof (see /domain)", body = TenantState)))]
async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiJson(req): ApiJson<UpdateTenant>,
) -> ApiResult<Json<TenantState>> {
    let user = caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    Ok(Json(
        update_tenant(&state, &ctx, user, tenant_id, req).await?,
    ))
}

/// Change a tenant for `user` (already authorized as its admin): only platform admins change
/// plan and features; a tenant admin's custom domain waits for proof.
pub(crate) async fn update_tenant(
    state: &AppState,
    ctx: &Ctx,
    user: &UserCaller,
    tenant_id: Uuid,
    req: UpdateTenant,
) -> ApiResult<TenantState> {
    if (req.plan.is_some() || req.features.is_some()) && !user.platform_admin {
        return Err(ApiError::Forbidden(
            "only platform admins change plan and features",
        ));
    }
    let name = req
        .name
        .as_deref()
        .map(|n| validate::short_text("name", n, 100))
        .transpose()?;
    let plan = req
        .plan
        .as_deref()
        .map(|p| validate::short_text("plan", p, 40))
        .transpose()?;
    let domain = req
        .domain
        .as_deref()
        .map(|d| custom_domain(state, d))
        .transpose()?;
    // A tenant admin's domain waits for proof (see `api::domains`); a platform admin's is active.
    let (active_domain, pending_domain) = match domain {
        Some(d) if user.platform_admin => (Some(d), None),
        Some(d) => {
            if tenants::domain_taken(&state.db, &d, TenantId(tenant_id)).await? {
                return Err(ApiError::Conflict("this domain is taken".into()));
            }
            (None, Some(d))
        }
        None => (None, None),
    };
    let change = TenantChange {
        name,
        active_domain,
        pending_domain,
        plan,
        features: req.features,
        theme: req.theme,
    };
    let tenant = tenants::update(&state.db, ctx, TenantId(tenant_id), change).await?;
    state.domains.invalidate();
    Ok(tenant)
}

/// A requested custom domain: a valid host name outside the platform's domain.
fn custom_domain(state: &AppState, value: &str) -> ApiResult<String> {
    let domain = validate::host_name("domain", value)?;
    state.domains.check_custom_domain("domain", &domain)?;
    Ok(domain)
}

#[utoipa::path(delete, path = "/api/tenants/{tenant_id}", tag = "tenants", responses((status = 200, description = "The archived tenant", body = TenantState)))]
async fn archive(s: State<AppState>, ctx: Ctx, caller: Caller, id: Path<Uuid>) -> TenantReply {
    run(&tenants::ARCHIVE, &s, &ctx, &caller, id.0).await
}

/// Suspend a tenant (platform admins): the wrapper refuses its sign-ins and sessions at once,
/// and every app refuses its requests as soon as it applied `tenant.suspended` (its data is
/// kept). Resume with `POST /api/tenants/{id}/resume`.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/suspend", tag = "tenants", responses((status = 200, description = "The suspended tenant", body = TenantState)))]
async fn suspend(s: State<AppState>, ctx: Ctx, caller: Caller, id: Path<Uuid>) -> TenantReply {
    run(&tenants::SUSPEND, &s, &ctx, &caller, id.0).await
}

/// Resume a suspended tenant (platform admins): `tenant.resumed`, and its users are served again.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/resume", tag = "tenants", responses((status = 200, description = "The resumed tenant", body = TenantState)))]
async fn resume(s: State<AppState>, ctx: Ctx, caller: Caller, id: Path<Uuid>) -> TenantReply {
    run(&tenants::RESUME, &s, &ctx, &caller, id.0).await
}

/// Restore an archived tenant within its grace period (platform admins; offboarding, see
/// `api::lifecycle`).
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/restore", tag = "lifecycle", responses((status = 200, description = "The restored tenant", body = TenantState)))]
async fn restore(s: State<AppState>, ctx: Ctx, caller: Caller, id: Path<Uuid>) -> TenantReply {
    run(&tenants::RESTORE, &s, &ctx, &caller, id.0).await
}

type TenantReply = ApiResult<Json<TenantState>>;

/// Suspend (`suspend`) or resume a tenant for `caller` (platform admins), as
/// `POST /api/tenants/{id}/suspend` and `/resume` do.
pub(crate) async fn suspend_or_resume(
    state: &AppState,
    ctx: &Ctx,
    caller: &Caller,
    tenant_id: Uuid,
    suspend: bool,
) -> TenantReply {
    let transition = if suspend {
        &tenants::SUSPEND
    } else {
        &tenants::RESUME
    };
    run(transition, state, ctx, caller, tenant_id).await
}

/// Apply `transition` for `caller` (platform admins only).
async fn run(
    transition: &Transition,
    state: &AppState,
    ctx: &Ctx,
    caller: &Caller,
    tenant_id: Uuid,
) -> TenantReply {
    let admin = UserId(caller.require_platform_admin()?.id);
    let tenant = transition
        .apply(&state.db, ctx, admin, TenantId(tenant_id))
        .await?;
    state.domains.invalidate();
    Ok(Json(tenant))
}
