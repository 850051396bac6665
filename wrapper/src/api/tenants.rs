//! Tenants: create (platform admins, with the built-in admin role and optionally a first
//! admin), read, update, archive. Each change is one transaction with its events.

use crate::error::OnConstraint;
use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use sqlx::PgConnection;
use sync_contract::{Event, TenantState, TenantStatus, UserState};
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
    },
    outbox,
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

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TenantRow {
    id: Uuid,
    name: String,
    subdomain: String,
    domain: Option<String>,
    plan: String,
    features: sqlx::types::Json<Vec<String>>,
    theme: serde_json::Value,
    status: String,
    pub(crate) version: i64,
}

impl From<TenantRow> for TenantState {
    fn from(r: TenantRow) -> Self {
        TenantState {
            id: r.id,
            name: r.name,
            subdomain: r.subdomain,
            domain: r.domain,
            plan: r.plan,
            features: r.features.0,
            theme: r.theme,
            status: match r.status.as_str() {
                // Purging: gone for everyone but the purge.
                "archived" | "purging" => TenantStatus::Archived,
                "suspended" => TenantStatus::Suspended,
                _ => TenantStatus::Active,
            },
        }
    }
}

pub(crate) const TENANT_COLUMNS: &str =
    "id, name, subdomain, domain, plan, features, theme, status, version";

pub(crate) async fn fetch(db: &mut PgConnection, id: Uuid) -> ApiResult<TenantRow> {
    sqlx::query_as(&format!(
        "select {TENANT_COLUMNS} from tenants where id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("tenant"))
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
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "insert into tenants (id, name, subdomain, domain, plan, features, theme, partition)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(tenant_id)
    .bind(&name)
    .bind(&subdomain)
    .bind(&domain)
    .bind(&plan)
    .bind(sqlx::types::Json(&req.features))
    .bind(req.theme.clone().unwrap_or_else(|| serde_json::json!({})))
    .bind(state.stream_keys.partition_of(tenant_id) as i32)
    .execute(&mut *tx)
    .await
    .on_constraint(&[
        (
            "tenants_subdomain_key",
            "subdomain",
            "this subdomain is taken",
        ),
        ("tenants_domain_key", "domain", "this domain is taken"),
    ])?;
    let tenant = TenantState::from(fetch(&mut tx, tenant_id).await?);
    outbox::record(
        &mut tx,
        ctx,
        tenant_id,
        (tenant_id, 1),
        Event::TenantCreated,
        &tenant,
    )
    .await?;

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
    let limit = page.limit()?;
    let rows: Vec<TenantRow> = sqlx::query_as(&format!(
        "select {TENANT_COLUMNS} from tenants where id > coalesce($1::uuid, '00000000-0000-0000-0000-000000000000') order by id limit $2"
    ))
    .bind(page.cursor)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let items = rows.into_iter().map(TenantState::from).collect();
    Ok(Json(Page::from_rows(items, limit, |t| t.id)))
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
    Ok(Json(fetch(&mut conn, tenant_id).await?.into()))
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
            let taken: bool = sqlx::query_scalar(
                "select exists(select 1 from tenants where domain = $1 and id <> $2)",
            )
            .bind(&d)
            .bind(tenant_id)
            .fetch_one(&state.db)
            .await?;
            if taken {
                return Err(ApiError::Conflict("this domain is taken".into()));
            }
            (None, Some(d))
        }
        None => (None, None),
    };
    let mut tx = state.db.begin().await?;
    let row: Option<TenantRow> = sqlx::query_as(&format!(
        "update tenants set name = coalesce($2, name), domain = coalesce($3, domain),
                plan = coalesce($4, plan), features = coalesce($5, features),
                theme = coalesce($6, theme), version = version + 1, updated_at = now(),
                pending_domain = case when $3::text is not null then null
                                      else coalesce($7, pending_domain) end,
                domain_challenge = case when $3::text is not null then null
                                        when $7::text is not null
                                        then replace(gen_random_uuid()::text, '-', '')
                                        else domain_challenge end
         where id = $1 and status = 'active' returning {TENANT_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(name)
    .bind(&active_domain)
    .bind(plan)
    .bind(req.features.as_ref().map(sqlx::types::Json))
    .bind(&req.theme)
    .bind(&pending_domain)
    .fetch_optional(&mut *tx)
    .await
    .on_constraint(&[("tenants_domain_key", "domain", "this domain is taken")])?;
    let row = row.ok_or(ApiError::NotFound("active tenant"))?;
    let aggregate = (tenant_id, row.version);
    let tenant = TenantState::from(row);
    outbox::record(
        &mut tx,
        ctx,
        tenant_id,
        aggregate,
        Event::TenantUpdated,
        &tenant,
    )
    .await?;
    tx.commit().await?;
    state.domains.invalidate();
    Ok(tenant)
}

/// A requested custom domain: a valid host name outside the platform's domain.
fn custom_domain(state: &AppState, value: &str) -> ApiResult<String> {
    let domain = validate::host_name("domain", value)?;
    state.domains.check_custom_domain("domain", &domain)?;
    Ok(domain)
}

/// Make the pending `domain` the tenant's active custom domain, with its `tenant.updated` event.
pub(crate) async fn set_active_domain(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant_id: Uuid,
    domain: &str,
) -> ApiResult<TenantState> {
    let row: Option<TenantRow> = sqlx::query_as(&format!(
        "update tenants set domain = $2, pending_domain = null, domain_challenge = null,
                version = version + 1, updated_at = now()
         where id = $1 and status = 'active' and pending_domain = $2 returning {TENANT_COLUMNS}"
    ))
    .bind(tenant_id)
    .bind(domain)
    .fetch_optional(&mut *tx)
    .await
    .on_constraint(&[("tenants_domain_key", "domain", "this domain is taken")])?;
    let row = row.ok_or(ApiError::Conflict(
        "the pending domain changed meanwhile".into(),
    ))?;
    let aggregate = (tenant_id, row.version);
    let tenant = TenantState::from(row);
    outbox::record(tx, ctx, tenant_id, aggregate, Event::TenantUpdated, &tenant).await?;
    Ok(tenant)
}

#[utoipa::path(delete, path = "/api/tenants/{tenant_id}", tag = "tenants", responses((status = 200, description = "The archived tenant", body = TenantState)))]
async fn archive(s: State<AppState>, ctx: Ctx, caller: Caller, id: Path<Uuid>) -> TenantReply {
    ARCHIVE.run(&s, &ctx, &caller, id.0).await
}

/// Suspend a tenant (platform admins): the wrapper refuses its sign-ins and sessions at once,
/// and every app refuses its requests as soon as it applied `tenant.suspended` (its data is
/// kept). Resume with `POST /api/tenants/{id}/resume`.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/suspend", tag = "tenants", responses((status = 200, description = "The suspended tenant", body = TenantState)))]
async fn suspend(s: State<AppState>, ctx: Ctx, caller: Caller, id: Path<Uuid>) -> TenantReply {
    SUSPEND.run(&s, &ctx, &caller, id.0).await
}

/// Resume a suspended tenant (platform admins): `tenant.resumed`, and its users are served again.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/resume", tag = "tenants", responses((status = 200, description = "The resumed tenant", body = TenantState)))]
async fn resume(s: State<AppState>, ctx: Ctx, caller: Caller, id: Path<Uuid>) -> TenantReply {
    RESUME.run(&s, &ctx, &caller, id.0).await
}

/// Restore an archived tenant within its grace period (platform admins; offboarding, see
/// `api::lifecycle`).
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/restore", tag = "lifecycle", responses((status = 200, description = "The restored tenant", body = TenantState)))]
async fn restore(s: State<AppState>, ctx: Ctx, caller: Caller, id: Path<Uuid>) -> TenantReply {
    RESTORE.run(&s, &ctx, &caller, id.0).await
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
    let transition = if suspend { &SUSPEND } else { &RESUME };
    transition.run(state, ctx, caller, tenant_id).await
}

const ARCHIVE: Transition = Transition {
    from: &["active"],
    to: "archived",
    event: Event::TenantArchived,
    refused: "active tenant",
};
const SUSPEND: Transition = Transition {
    from: &["active"],
    to: "suspended",
    event: Event::TenantSuspended,
    refused: "active tenant",
};
const RESUME: Transition = Transition {
    from: &["suspended"],
    to: "active",
    event: Event::TenantResumed,
    refused: "suspended tenant",
};
const RESTORE: Transition = Transition {
    from: &["archived"],
    to: "active",
    event: Event::TenantUpdated,
    refused: "archived tenant",
};

/// A change of a tenant's status by a platform admin, with its event and audit entry, in one
/// transaction; 404 when the tenant is not in one of the `from` statuses.
struct Transition {
    from: &'static [&'static str],
    to: &'static str,
    event: fn(TenantState) -> Event,
    refused: &'static str,
}

impl Transition {
    async fn run(
        &self,
        state: &AppState,
        ctx: &Ctx,
        caller: &Caller,
        tenant_id: Uuid,
    ) -> TenantReply {
        let admin = caller.require_platform_admin()?.id;
        let mut tx = state.db.begin().await?;
        let row: Option<TenantRow> = sqlx::query_as(&format!(
            "update tenants set status = $2, version = version + 1, updated_at = now(),
                 archived_at = case when $2 = 'archived' then now() end
             where id = $1 and status = any($3) returning {TENANT_COLUMNS}"
        ))
        .bind(tenant_id)
        .bind(self.to)
        .bind(self.from)
        .fetch_optional(&mut *tx)
        .await?;
        let row = row.ok_or(ApiError::NotFound(self.refused))?;
        let aggregate = (tenant_id, row.version);
        let tenant = TenantState::from(row);
        outbox::record(&mut tx, ctx, tenant_id, aggregate, self.event, &tenant).await?;
        let entry = crate::audit::Entry {
            tenant_id: Some(tenant_id),
            actor_id: Some(admin),
            action: "tenant_status",
            target: Some(tenant_id.to_string()),
            outcome: "success",
            details: serde_json::json!({"status": self.to}),
        };
        crate::audit::record(&mut *tx, ctx, entry).await;
        tx.commit().await?;
        state.domains.invalidate();
        Ok(Json(tenant))
    }
}
