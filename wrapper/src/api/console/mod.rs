//! The admin console: server-rendered pages under `/admin/`, signed in with the session cookie,
//! under the sign-in pages' rules (no script, inline styles only, forms post to this origin
//! and carry its `Origin`, checked by the CSRF guard; no external asset, so it works offline).
//!
//! * On a tenant's host, for its admins: `/admin/credits` (balances, grants, a chart of
//!   consumption per application and day drawn on the server as SVG, thresholds, the ledger).
//! * On the platform host (`WRAPPER_ADMIN_HOST`), for platform admins: `/admin/sync-health`
//!   (each app's replicas and partitions with a lag chart, its dead letters with a redrive form,
//!   a re-sync form), the actions audited like the API's.
//!
//! Anyone else gets the 403 page (a user of another tenant is audited as a cross-tenant attempt
//! by the same check the API uses); a visitor without a session is sent to sign in.

mod audit;
mod chart;
mod credits;
mod platform;
mod sync;
mod users;

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use sync_web::{
    html::{escape, url_encode},
    page::{html, see_other},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::{
        Access, Caller, UserCaller,
        pages::{is_admin_host, page_tenant},
    },
    context::Ctx,
    error::ApiError,
    state::AppState,
};

/// The console's routes (documented as pages in the OpenAPI document, like the sign-in pages).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(home))
        .merge(credits::router())
        .merge(users::router())
        .merge(audit::router())
        .merge(sync::router())
        .merge(platform::router())
}

/// A wider page than the sign-in pages' (tables and charts), and the console's look.
const STYLE: &str = "<style>main { max-width: 74rem; margin: 1.5rem auto; } \
    nav a { font-weight: 600; } h2 { margin-top: 2rem; font-size: 1.2rem; } \
    td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; } \
    form.inline { display: flex; gap: .5rem; align-items: end; flex-wrap: wrap; } \
    form.inline input { width: auto; } .ok { color: #176b2c; } .bad { color: #8a1c1c; } \
    svg { max-width: 100%; height: auto; background: #fbfcfd; border: 1px solid #e4e7ec; \
    border-radius: 6px; margin-top: .6rem; } code { font-size: .85rem; }</style>";

/// Who is looking, once allowed.
enum Viewer {
    /// A tenant admin (or a platform admin) on the tenant's host.
    Tenant { id: Uuid, name: String },
    /// A platform admin on the platform host.
    Platform { user: UserCaller },
}

fn forbidden(message: &str) -> Response {
    html(
        StatusCode::FORBIDDEN,
        "Not allowed",
        &format!(
            r#"{STYLE}<h1>Not allowed</h1><p class="error" id="error">{}</p><p><a href="/">Back</a></p>"#,
            escape(message)
        ),
    )
}

/// The viewer of `path`, or the page to answer instead (sign in, 403).
async fn viewer(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    caller: Result<Caller, ApiError>,
    path: &str,
) -> Result<Viewer, Response> {
    let sign_in = || see_other(&format!("/auth/login?return_to={}", url_encode(path)));
    let caller = match caller {
        Ok(c @ Caller::User(_)) => c,
        Ok(Caller::Service { .. }) => return Err(forbidden("the console is for people")),
        Err(_) => return Err(sign_in()),
    };
    if is_admin_host(state, headers) {
        return match caller.require_platform_admin() {
            Ok(user) => Ok(Viewer::Platform { user: user.clone() }),
            Err(_) => Err(forbidden("only platform admins use the console here")),
        };
    }
    let tenant = page_tenant(state, headers).await?;
    match caller
        .authorize(state, ctx, tenant.tenant_id, Access::Admin)
        .await
    {
        Ok(_) => Ok(Viewer::Tenant {
            id: tenant.tenant_id,
            name: tenant.name.clone(),
        }),
        Err(_) => Err(forbidden(
            "the console is for this organisation's admins; ask one of them",
        )),
    }
}

fn nav(viewer: &Viewer) -> String {
    let links = match viewer {
        Viewer::Tenant { .. } => {
            r#"<a href="/admin/users">Users</a><a href="/admin/credits">Credits</a><a href="/admin/audit">Audit log</a><a href="/">Apps</a>"#
        }
        Viewer::Platform { .. } => {
            r#"<a href="/admin/sync-health">Sync health</a><a href="/admin/tenants">Tenants</a>"#
        }
    };
    format!(
        r#"{STYLE}<nav>{links}<form method="post" action="/auth/logout"><input type="hidden" name="return_to" value="/admin/"><button type="submit" class="secondary">Sign out</button></form></nav>"#
    )
}

#[utoipa::path(get, path = "/admin/", tag = "pages", responses((status = 303, description = "To the viewer's console page, or to sign in"), (status = 403, description = "Not an admin here", body = String, content_type = "text/html")))]
async fn home(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
) -> Response {
    match viewer(&state, &ctx, &headers, caller, "/admin/").await {
        Ok(Viewer::Tenant { .. }) => see_other("/admin/credits"),
        Ok(Viewer::Platform { .. }) => see_other("/admin/sync-health"),
        Err(page) => page,
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console page failed");
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        r#"<h1>Something went wrong</h1><p class="error">The page could not be built; see the server log.</p>"#,
    )
}

fn num(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The platform admin acting on the sync-health page, or the page to answer instead.
async fn platform_viewer(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    caller: Result<Caller, ApiError>,
) -> Result<UserCaller, Response> {
    match viewer(state, ctx, headers, caller, "/admin/sync-health").await? {
        Viewer::Platform { user } => Ok(user),
        Viewer::Tenant { .. } => Err(forbidden(
            "sync health is for platform admins, on the platform's host",
        )),
    }
}
/// The tenant admin viewing a tenant page, or the page to answer instead.
async fn tenant_viewer(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    caller: Result<Caller, ApiError>,
    path: &str,
) -> Result<(Viewer, Uuid, String), Response> {
    match viewer(state, ctx, headers, caller, path).await? {
        Viewer::Tenant { id, name } => Ok((
            Viewer::Tenant {
                id,
                name: name.clone(),
            },
            id,
            name,
        )),
        Viewer::Platform { .. } => {
            Err(forbidden("this page is on each organisation's own address"))
        }
    }
}

fn refused_on(back: &str, e: ApiError) -> Response {
    let status = e.status();
    let detail = match &e {
        ApiError::Validation { field, message } => format!("{field}: {message}"),
        other => other.to_string(),
    };
    html(
        if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        },
        "Refused",
        &format!(
            r#"{STYLE}<h1>Refused</h1><p class="error" id="error">{}</p><p><a href="{}">Back</a></p>"#,
            escape(&detail),
            escape(back)
        ),
    )
}
