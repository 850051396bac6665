//! Who may do what: the roles page (each role's permissions and holders; create, edit,
//! delete; the built-in `admin` role is shown, never changed) and the memberships page (who
//! holds which role; grant by email address, revoke). Every change goes through the functions
//! the REST API uses, so it is validated, evented and audited the same way.

use axum::{
    Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use sync_web::{
    html::{escape, url_encode},
    page::html,
};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{Host, TenantAdmin, back_to, internal, nav, refused_on};
use crate::{
    context::Ctx,
    error::ApiError,
    model::{
        ids::{MembershipId, RoleId, TenantId, UserId},
        memberships,
        roles::{self, Permissions, RoleName},
    },
    state::AppState,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(roles_page, create_role))
        .routes(routes!(update_role))
        .routes(routes!(delete_role))
        .routes(routes!(memberships_page, grant))
        .routes(routes!(revoke))
}

const ROLES: &str = "/admin/roles";
const MEMBERSHIPS: &str = "/admin/memberships";

#[utoipa::path(get, path = "/admin/roles", tag = "pages", responses((status = 200, description = "The tenant's roles with their permissions and holders, with forms to add, edit and delete (its admins, on its host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not an admin of this organisation", body = String, content_type = "text/html")))]
async fn roles_page(
    State(state): State<AppState>,
    TenantAdmin { id, name, .. }: TenantAdmin,
) -> Response {
    type Row = (Uuid, String, sqlx::types::Json<Vec<String>>, i64);
    let rows: Vec<Row> = match sqlx::query_as(
        "select r.id, r.name, r.permissions,
                (select count(*) from memberships m join users u on u.id = m.user_id
                 where m.role_id = r.id and m.active and u.deleted_at is null)
         from roles r where r.tenant_id = $1 and not r.deleted order by r.name limit 500",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut list = String::from(
        r#"<table id="roles"><tr><th>Role</th><th>Permissions</th><th class="num">Holders</th><th></th></tr>"#,
    );
    for (role, role_name, permissions, holders) in &rows {
        let perms = permissions.0.join(", ");
        let holders_link = format!(
            r#"<a href="{MEMBERSHIPS}?role={role}">{holders}</a>"#,
            role = role
        );
        if role_name == "admin" {
            list.push_str(&format!(
                r#"<tr id="role-{role}"><td>{}</td><td><code>{}</code></td><td class="num">{holders_link}</td><td class="muted">built in</td></tr>"#,
                escape(role_name),
                escape(&perms),
            ));
            continue;
        }
        list.push_str(&format!(
            r#"<tr id="role-{role}"><td colspan="2"><form class="inline" method="post" action="/admin/roles/{role}" id="edit-role-{role}"><input type="text" name="name" value="{n}" aria-label="Name" size="14"><input type="text" name="permissions" value="{p}" aria-label="Permissions" size="40"><button type="submit" class="secondary">Save</button></form></td><td class="num">{holders_link}</td><td><form method="post" action="/admin/roles/{role}/delete"><button type="submit" class="secondary" id="delete-role-{role}">Delete</button></form></td></tr>"#,
            n = escape(role_name),
            p = escape(&perms),
        ));
    }
    list.push_str("</table>");
    let body = format!(
        r#"{nav}<h1 id="page-title">Roles · {name}</h1>
<p class="muted">A role is a named set of permissions; its holders have them in every app. Permissions are names such as <code>crm.accounts.write</code>; <code>tenant.admin</code> makes an admin.</p>
{list}
<h2>Add a role</h2>
<form class="inline" method="post" action="/admin/roles" id="create-role">
<label>Name <input type="text" name="name" required></label>
<label>Permissions <input type="text" name="permissions" placeholder="comma separated" size="40"></label>
<button type="submit">Add</button></form>"#,
        nav = nav(Host::Tenant),
        name = escape(&name),
    );
    html(StatusCode::OK, &format!("Roles · {name}"), &body)
}

/// The role form of the console.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct RoleForm {
    #[serde(default)]
    name: String,
    /// Permission names separated by commas or spaces.
    #[serde(default)]
    permissions: String,
}

#[utoipa::path(post, path = "/admin/roles", tag = "pages", request_body(content = RoleForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Added (`role.created` reaches every app): back to the roles page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 409, description = "A role with this name exists", body = String, content_type = "text/html")))]
async fn create_role(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Form(form): Form<RoleForm>,
) -> Response {
    let created = async {
        let name = RoleName::parse(&form.name)?;
        let permissions = Permissions::parse(&super::word_list(&form.permissions))?;
        let (actor, tenant) = (UserId(admin.user.id), TenantId(admin.id));
        roles::create(&state.db, &ctx, actor, tenant, name, permissions).await
    };
    back_to(ROLES, created.await)
}

#[utoipa::path(post, path = "/admin/roles/{role_id}", tag = "pages", params(("role_id" = Uuid, Path, description = "The role")), request_body(content = RoleForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Saved (`role.updated`): back to the roles page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 404, description = "No such editable role here (the admin role is not editable)", body = String, content_type = "text/html"), (status = 409, description = "A role with this name exists", body = String, content_type = "text/html")))]
async fn update_role(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Path(role_id): Path<Uuid>,
    Form(form): Form<RoleForm>,
) -> Response {
    let updated = async {
        let name = RoleName::parse(&form.name)?;
        let permissions = Permissions::parse(&super::word_list(&form.permissions))?;
        let (actor, tenant) = (UserId(admin.user.id), TenantId(admin.id));
        let role = RoleId(role_id);
        roles::update(
            &state.db,
            &ctx,
            actor,
            tenant,
            role,
            Some(name),
            Some(permissions),
        )
        .await
    };
    back_to(ROLES, updated.await)
}

#[utoipa::path(post, path = "/admin/roles/{role_id}/delete", tag = "pages", params(("role_id" = Uuid, Path, description = "The role")), responses((status = 303, description = "Deleted (`role.deleted`): back to the roles page"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 404, description = "No such deletable role here", body = String, content_type = "text/html")))]
async fn delete_role(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Path(role_id): Path<Uuid>,
) -> Response {
    back_to(
        ROLES,
        roles::delete(
            &state.db,
            &ctx,
            UserId(admin.user.id),
            TenantId(admin.id),
            RoleId(role_id),
        )
        .await,
    )
}

/// Memberships shown per page.
const MEMBERSHIPS_PAGE: i64 = 100;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct MembershipsQuery {
    /// Only this user's (part of an email address or a name).
    user: Option<String>,
    /// Only this role's (an id; anything else is ignored).
    role: Option<String>,
    /// The page after this membership id (paging).
    after: Option<String>,
}

#[utoipa::path(get, path = "/admin/memberships", tag = "pages", params(MembershipsQuery), responses((status = 200, description = "Who holds which role, filtered and paged, with forms to grant and revoke (its admins, on its host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not an admin of this organisation", body = String, content_type = "text/html")))]
async fn memberships_page(
    State(state): State<AppState>,
    TenantAdmin { id, name, .. }: TenantAdmin,
    Query(q): Query<MembershipsQuery>,
) -> Response {
    let user = q.user.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let role = q.role.as_deref().and_then(|r| r.parse::<Uuid>().ok());
    let after = q.after.as_deref().and_then(|a| a.parse::<Uuid>().ok());
    let pattern = user.map(super::like_pattern);
    type Row = (Uuid, String, String, String, chrono::DateTime<chrono::Utc>);
    let rows: Result<Vec<Row>, sqlx::Error> = sqlx::query_as(
        "select m.id, u.email, u.full_name, r.name, m.updated_at
         from memberships m join users u on u.id = m.user_id join roles r on r.id = m.role_id
         where m.tenant_id = $1 and m.active and u.deleted_at is null and not r.deleted
           and ($2::text is null or u.email ilike $2 or u.full_name ilike $2)
           and ($3::uuid is null or m.role_id = $3)
           and m.id > coalesce($4::uuid, '00000000-0000-0000-0000-000000000000')
         order by m.id limit $5",
    )
    .bind(id)
    .bind(&pattern)
    .bind(role)
    .bind(after)
    .bind(MEMBERSHIPS_PAGE + 1)
    .fetch_all(&state.db)
    .await;
    let mut rows = match rows {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let roles: Vec<(Uuid, String)> = match sqlx::query_as(
        "select id, name from roles where tenant_id = $1 and not deleted order by name limit 500",
    )
    .bind(id)
    .fetch_all(&state.db)
    .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let more = rows.len() as i64 > MEMBERSHIPS_PAGE;
    rows.truncate(MEMBERSHIPS_PAGE as usize);
    let mut list = String::from(
        r#"<table id="memberships"><tr><th>User</th><th>Email</th><th>Role</th><th>Since (UTC)</th><th></th></tr>"#,
    );
    for (membership, email, full_name, role_name, since) in &rows {
        list.push_str(&format!(
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><form method="post" action="/admin/memberships/{membership}/revoke"><button type="submit" class="secondary" id="revoke-{membership}">Revoke</button></form></td></tr>"#,
            escape(full_name),
            escape(email),
            escape(role_name),
            since.format("%Y-%m-%d %H:%M"),
        ));
    }
    list.push_str("</table>");
    if rows.is_empty() {
        list.push_str(r#"<p class="muted">No membership matches.</p>"#);
    }
    if more && let Some((last, ..)) = rows.last() {
        let mut next = format!("{MEMBERSHIPS}?after={last}");
        if let Some(u) = user {
            next.push_str(&format!("&user={}", url_encode(u)));
        }
        if let Some(r) = role {
            next.push_str(&format!("&role={r}"));
        }
        list.push_str(&format!(
            r#"<p><a id="next-page" href="{}">Next page</a></p>"#,
            escape(&next)
        ));
    }
    let options: String = roles
        .iter()
        .map(|(rid, rname)| {
            let selected = if Some(*rid) == role { " selected" } else { "" };
            format!(
                r#"<option value="{rid}"{selected}>{}</option>"#,
                escape(rname)
            )
        })
        .collect();
    let body = format!(
        r#"{nav}<h1 id="page-title">Memberships · {name}</h1>
<form class="inline" method="get" action="{MEMBERSHIPS}" id="filter"><label>User <input type="text" name="user" value="{user}" placeholder="name or email"></label><button type="submit" class="secondary">Filter</button></form>
{list}
<h2>Grant a role</h2>
<form class="inline" method="post" action="{MEMBERSHIPS}" id="grant">
<label>User's email <input type="email" name="email" required></label>
<label>Role <select name="roleId">{options}</select></label>
<button type="submit">Grant</button></form>"#,
        nav = nav(Host::Tenant),
        name = escape(&name),
        user = escape(user.unwrap_or("")),
    );
    html(StatusCode::OK, &format!("Memberships · {name}"), &body)
}

/// The grant form of the console: a user of this tenant by email address, and a role.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct GrantForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    role_id: String,
}

#[utoipa::path(post, path = "/admin/memberships", tag = "pages", request_body(content = GrantForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Granted (`membership.granted` reaches every app): back to the memberships page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 409, description = "The user has this role already", body = String, content_type = "text/html")))]
async fn grant(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Form(form): Form<GrantForm>,
) -> Response {
    let Ok(role_id) = form.role_id.trim().parse::<Uuid>() else {
        return refused_on(MEMBERSHIPS, ApiError::invalid("roleId", "choose a role"));
    };
    let user: Result<Option<Uuid>, sqlx::Error> = sqlx::query_scalar(
        "select id from users where tenant_id = $1 and lower(email) = lower($2) and deleted_at is null",
    )
    .bind(admin.id)
    .bind(form.email.trim())
    .fetch_optional(&state.db)
    .await;
    let user_id = match user {
        Ok(Some(u)) => u,
        Ok(None) => {
            return refused_on(
                MEMBERSHIPS,
                ApiError::invalid("email", "no user of this organisation has this address"),
            );
        }
        Err(e) => return internal(e),
    };
    back_to(
        MEMBERSHIPS,
        memberships::grant_audited(
            &state.db,
            &ctx,
            UserId(admin.user.id),
            TenantId(admin.id),
            UserId(user_id),
            RoleId(role_id),
        )
        .await,
    )
}

#[utoipa::path(post, path = "/admin/memberships/{membership_id}/revoke", tag = "pages", params(("membership_id" = Uuid, Path, description = "The membership")), responses((status = 303, description = "Revoked (`membership.revoked` reaches every app): back to the memberships page"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 404, description = "No such membership here", body = String, content_type = "text/html")))]
async fn revoke(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Path(membership_id): Path<Uuid>,
) -> Response {
    back_to(
        MEMBERSHIPS,
        memberships::revoke(
            &state.db,
            &ctx,
            UserId(admin.user.id),
            TenantId(admin.id),
            MembershipId(membership_id),
        )
        .await,
    )
}
