//! The platform admin's tenants page: every tenant with its status, users and credits; its plan
//! and features, edited in place; custom domains waiting for approval, approved with a button.
//! Changes go through the REST API's functions (events, audit).

use axum::{
    Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use sync_web::{html::escape, page::html};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use serde_json::Value;

use super::{Host, PlatformAdmin, back_to, internal, nav, num};
use crate::{
    api::{domains, tenants},
    auth::Caller,
    context::Ctx,
    state::AppState,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tenants_page))
        .routes(routes!(update_plan))
        .routes(routes!(approve_domain))
        .routes(routes!(suspend))
        .routes(routes!(resume))
}

const PAGE: &str = "/admin/tenants";

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TenantsQuery {
    /// Part of a name or subdomain.
    q: Option<String>,
}

#[utoipa::path(get, path = "/admin/tenants", tag = "pages", params(TenantsQuery), responses((status = 200, description = "Every tenant with its plan, features, status, users and credits, plan and features editable, pending domains to approve (platform admins, on the platform host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not a platform admin here", body = String, content_type = "text/html")))]
async fn tenants_page(
    State(state): State<AppState>,
    _: PlatformAdmin,
    Query(q): Query<TenantsQuery>,
) -> Response {
    let search = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    type Row = (
        Uuid,
        String,
        String,
        String,
        Value,
        String,
        i64,
        i64,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = match sqlx::query_as(
        "select t.id, t.name, t.subdomain, t.plan, t.features, t.status,
                (select count(*) from users u where u.tenant_id = t.id and u.deleted_at is null),
                coalesce((select sum(b.balance) from credit_balances b where b.tenant_id = t.id), 0)::bigint,
                t.pending_domain, t.domain
         from tenants t
         where $1::text is null or t.name ilike $1 or t.subdomain ilike $1
         order by t.created_at desc limit 500",
    )
    .bind(search.map(super::like_pattern))
    .fetch_all(&state.db)
    .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut list = String::from(
        r#"<table id="tenants"><tr><th>Name</th><th>Subdomain</th><th>Domain</th><th>Status</th><th class="num">Users</th><th class="num">Credits</th><th>Plan and features</th></tr>"#,
    );
    let mut pending = Vec::new();
    for (id, name, subdomain, plan, features, status, users, credits, waiting, domain) in &rows {
        let features: Vec<&str> = features
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let plan_cell = if status == "active" {
            format!(
                r#"<form class="inline" method="post" action="/admin/tenants/{id}/plan" id="plan-{id}"><input type="text" name="plan" value="{p}" aria-label="Plan" size="8"><input type="text" name="features" value="{f}" aria-label="Features" size="24" placeholder="features, comma separated"><button type="submit" class="secondary">Save</button></form>"#,
                p = escape(plan),
                f = escape(&features.join(", ")),
            )
        } else {
            format!("{} · {}", escape(plan), escape(&features.join(", ")))
        };
        let switch = match status.as_str() {
            "active" => format!(
                r#" <form method="post" action="/admin/tenants/{id}/suspend"><button type="submit" class="secondary" id="suspend-{id}">Suspend</button></form>"#
            ),
            "suspended" => format!(
                r#" <form method="post" action="/admin/tenants/{id}/resume"><button type="submit" class="secondary" id="resume-{id}">Resume</button></form>"#
            ),
            _ => String::new(),
        };
        list.push_str(&format!(
            r#"<tr id="tenant-{id}"><td>{}</td><td>{}</td><td>{}</td><td>{}{switch}</td><td class="num">{users}</td><td class="num">{}</td><td>{plan_cell}</td></tr>"#,
            escape(name),
            escape(subdomain),
            escape(domain.as_deref().unwrap_or("")),
            escape(status),
            num(*credits),
        ));
        if let Some(waiting) = waiting {
            pending.push(format!(
                r#"<tr><td>{}</td><td><code>{}</code></td><td><form method="post" action="/admin/tenants/{id}/approve-domain"><button type="submit" id="approve-{id}">Approve</button></form></td></tr>"#,
                escape(name),
                escape(waiting),
            ));
        }
    }
    list.push_str("</table>");
    if rows.is_empty() {
        list.push_str(r#"<p class="muted">No tenant matches.</p>"#);
    }
    let pending = if pending.is_empty() {
        r#"<p class="muted">None.</p>"#.to_owned()
    } else {
        format!(
            r#"<table id="pending-domains"><tr><th>Tenant</th><th>Domain</th><th></th></tr>{}</table>"#,
            pending.concat()
        )
    };
    let body = format!(
        r#"{nav}<h1 id="page-title">Tenants</h1>
<form class="inline" method="get" action="{PAGE}" id="search"><label>Search <input type="text" name="q" value="{q}" placeholder="name or subdomain"></label><button type="submit" class="secondary">Search</button></form>
{list}
<h2>Custom domains waiting for approval</h2>
<p class="muted">Approve only a domain you know belongs to the tenant; the tenant's admins can prove it themselves from their settings page.</p>{pending}"#,
        nav = nav(Host::Platform),
        q = escape(search.unwrap_or("")),
    );
    html(StatusCode::OK, "Tenants", &body)
}

/// The plan form: a plan name and features separated by commas or spaces.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct PlanForm {
    #[serde(default)]
    plan: String,
    #[serde(default)]
    features: String,
}

#[utoipa::path(post, path = "/admin/tenants/{tenant_id}/plan", tag = "pages", params(("tenant_id" = Uuid, Path, description = "The tenant")), request_body(content = PlanForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Saved (`tenant.updated` reaches every app): back to the tenants page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 403, description = "Not a platform admin here, or not from this origin", body = String, content_type = "text/html"), (status = 404, description = "No such active tenant", body = String, content_type = "text/html")))]
async fn update_plan(
    State(state): State<AppState>,
    ctx: Ctx,
    PlatformAdmin(user): PlatformAdmin,
    Path(tenant_id): Path<Uuid>,
    Form(form): Form<PlanForm>,
) -> Response {
    let req = tenants::UpdateTenant {
        plan: Some(form.plan.trim().to_owned()),
        features: Some(super::word_list(&form.features)),
        ..Default::default()
    };
    back_to(
        PAGE,
        tenants::update_tenant(&state, &ctx, &user, tenant_id, req).await,
    )
}

#[utoipa::path(post, path = "/admin/tenants/{tenant_id}/approve-domain", tag = "pages", params(("tenant_id" = Uuid, Path, description = "The tenant")), responses((status = 303, description = "Approved: the domain is active; back to the tenants page"), (status = 403, description = "Not a platform admin here, or not from this origin", body = String, content_type = "text/html"), (status = 404, description = "No such active tenant", body = String, content_type = "text/html"), (status = 409, description = "No domain waits for approval", body = String, content_type = "text/html")))]
async fn approve_domain(
    State(state): State<AppState>,
    ctx: Ctx,
    PlatformAdmin(user): PlatformAdmin,
    Path(tenant_id): Path<Uuid>,
) -> Response {
    back_to(
        PAGE,
        domains::approve_domain(&state, &ctx, user.id, tenant_id).await,
    )
}

#[utoipa::path(post, path = "/admin/tenants/{tenant_id}/suspend", tag = "pages", params(("tenant_id" = Uuid, Path, description = "The tenant")), responses((status = 303, description = "Suspended (`tenant.suspended`: sign-ins refused at once, every app refuses its requests): back to the tenants page"), (status = 403, description = "Not a platform admin here, or not from this origin", body = String, content_type = "text/html"), (status = 404, description = "No such active tenant", body = String, content_type = "text/html")))]
async fn suspend(
    State(state): State<AppState>,
    ctx: Ctx,
    PlatformAdmin(user): PlatformAdmin,
    Path(tenant_id): Path<Uuid>,
) -> Response {
    let caller = Caller::User(user);
    back_to(
        PAGE,
        tenants::suspend_or_resume(&state, &ctx, &caller, tenant_id, true).await,
    )
}

#[utoipa::path(post, path = "/admin/tenants/{tenant_id}/resume", tag = "pages", params(("tenant_id" = Uuid, Path, description = "The tenant")), responses((status = 303, description = "Resumed (`tenant.resumed`): back to the tenants page"), (status = 403, description = "Not a platform admin here, or not from this origin", body = String, content_type = "text/html"), (status = 404, description = "No such suspended tenant", body = String, content_type = "text/html")))]
async fn resume(
    State(state): State<AppState>,
    ctx: Ctx,
    PlatformAdmin(user): PlatformAdmin,
    Path(tenant_id): Path<Uuid>,
) -> Response {
    let caller = Caller::User(user);
    back_to(
        PAGE,
        tenants::suspend_or_resume(&state, &ctx, &caller, tenant_id, false).await,
    )
}
