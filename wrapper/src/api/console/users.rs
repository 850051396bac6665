//! The users page: search, paging, add, deactivate.

use axum::{
    Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use sync_web::{
    html::{escape, url_encode},
    page::{html, see_other},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{Host, TenantAdmin, back_to, internal, nav, refused_on};
use crate::{context::Ctx, state::AppState};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(users_page, create_user))
        .routes(routes!(deactivate_user))
}

/// Users shown per page.
const USERS_PAGE: i64 = 50;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UsersQuery {
    /// Part of a name or an email address.
    q: Option<String>,
    /// The page after this user id (paging; anything else starts at the first page).
    after: Option<String>,
    /// The user just created (an id; shown as a notice).
    created: Option<String>,
}

#[utoipa::path(get, path = "/admin/users", tag = "pages", params(UsersQuery), responses((status = 200, description = "The tenant's users, searchable and paged, with a form to add one (its admins, on its host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not an admin of this organisation", body = String, content_type = "text/html")))]
async fn users_page(
    State(state): State<AppState>,
    TenantAdmin {
        id: tenant, name, ..
    }: TenantAdmin,
    Query(q): Query<UsersQuery>,
) -> Response {
    let search = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let after = q.after.as_deref().and_then(|a| a.parse::<Uuid>().ok());
    let pattern = search.map(super::like_pattern);
    type Row = (Uuid, String, String, bool, Option<String>);
    let rows: Result<Vec<Row>, sqlx::Error> = sqlx::query_as(
        "select u.id, u.full_name, u.email, u.active,
                (select string_agg(r.name, ', ' order by r.name) from memberships m
                 join roles r on r.id = m.role_id where m.user_id = u.id and m.active and not r.deleted)
         from users u
         where u.tenant_id = $1 and u.deleted_at is null
           and ($2::text is null or u.email ilike $2 or u.full_name ilike $2)
           and u.id > coalesce($3::uuid, '00000000-0000-0000-0000-000000000000')
         order by u.id limit $4",
    )
    .bind(tenant)
    .bind(&pattern)
    .bind(after)
    .bind(USERS_PAGE + 1)
    .fetch_all(&state.db)
    .await;
    let mut rows = match rows {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let more = rows.len() as i64 > USERS_PAGE;
    rows.truncate(USERS_PAGE as usize);
    let mut list = String::from(
        r#"<table id="users"><tr><th>Name</th><th>Email</th><th>Roles</th><th>Status</th><th></th></tr>"#,
    );
    for (id, full_name, email, active, roles) in &rows {
        let action = if *active {
            format!(
                r#"<form method="post" action="/admin/users/{id}/deactivate"><button type="submit" class="secondary" id="deactivate-{id}">Deactivate</button></form>"#
            )
        } else {
            String::new()
        };
        list.push_str(&format!(
            r#"<tr><td>{}</td><td>{}</td><td>{} <a href="/admin/memberships?user={}">change</a></td><td>{}</td><td>{action}</td></tr>"#,
            escape(full_name),
            escape(email),
            escape(roles.as_deref().unwrap_or("")),
            escape(&url_encode(email)),
            if *active { "active" } else { "deactivated" },
        ));
    }
    list.push_str("</table>");
    if rows.is_empty() {
        list.push_str(r#"<p class="muted">No user matches.</p>"#);
    }
    if more && let Some((last, ..)) = rows.last() {
        list.push_str(&format!(
            r#"<p><a id="next-page" href="/admin/users?after={last}{}">Next page</a></p>"#,
            search
                .map(|t| format!("&q={}", url_encode(t)))
                .unwrap_or_default()
        ));
    }
    let notice = q
        .created
        .as_deref()
        .and_then(|c| c.parse::<Uuid>().ok())
        .and_then(|c| rows.iter().find(|r| r.0 == c).map(|r| r.2.clone()))
        .map(|email| {
            format!(
                r#"<p class="ok" id="notice">{} was added.</p>"#,
                escape(&email)
            )
        })
        .unwrap_or_default();
    let body = format!(
        r#"{nav}<h1 id="page-title">Users · {name}</h1>{notice}
<form class="inline" method="get" action="/admin/users" id="search"><label>Search <input type="text" name="q" value="{q}" placeholder="name or email"></label><button type="submit" class="secondary">Search</button></form>
{list}
<h2>Add a user</h2>
<form class="inline" method="post" action="/admin/users" id="create-user">
<label>Full name <input type="text" name="fullName" required></label>
<label>Email <input type="email" name="email" required></label>
<label>Password <input type="password" name="password" autocomplete="new-password"></label>
<button type="submit">Add</button></form>
<p class="muted">Without a password the user signs in with the organisation's identity provider.</p>"#,
        nav = nav(Host::Tenant),
        name = escape(&name),
        q = escape(search.unwrap_or("")),
    );
    html(StatusCode::OK, &format!("Users · {name}"), &body)
}

/// The user form of the console.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UserForm {
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// A refused form on a tenant page: the reason, naming the field, and the way back.
#[utoipa::path(post, path = "/admin/users", tag = "pages", request_body(content = UserForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Added: back to the users page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 409, description = "The email is taken", body = String, content_type = "text/html")))]
async fn create_user(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Form(form): Form<UserForm>,
) -> Response {
    let tenant = admin.id;
    let req = crate::api::users::CreateUser {
        email: form.email,
        full_name: form.full_name,
        password: Some(form.password).filter(|p| !p.is_empty()),
        avatar_url: None,
    };
    match crate::api::users::create_user(&state, &ctx, tenant, req).await {
        Ok(user) => see_other(&format!("/admin/users?created={}", user.id)),
        Err(e) => refused_on("/admin/users", e),
    }
}

#[utoipa::path(post, path = "/admin/users/{user_id}/deactivate", tag = "pages", params(("user_id" = Uuid, Path, description = "The user")), responses((status = 303, description = "Deactivated (`user.deactivated` reaches every app): back to the users page"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 404, description = "No such user here", body = String, content_type = "text/html")))]
async fn deactivate_user(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Path(user_id): Path<Uuid>,
) -> Response {
    let tenant = admin.id;
    let change = crate::model::users::UserChange {
        active: Some(false),
        ..Default::default()
    };
    let (tenant, user) = (
        crate::model::ids::TenantId(tenant),
        crate::model::ids::UserId(user_id),
    );
    back_to(
        "/admin/users",
        crate::model::users::update(&state.db, &ctx, tenant, user, change).await,
    )
}
