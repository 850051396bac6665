//! The admin console: server-rendered pages under `/admin/`, signed in with the session cookie,
//! under the sign-in pages' rules (no script, inline styles only, forms post to this origin
//! and carry its `Origin`, checked by the CSRF guard; no external asset, so it works offline).
//!
//! * On a tenant's host, for its admins: users, roles, memberships, credits (with a chart of
//!   consumption per application and day drawn on the server as SVG, and the ledger with
//!   filters), the organisation's own sync state in every app, settings with the custom domain's
//!   verification state, and the audit log.
//! * On the platform host (`WRAPPER_ADMIN_HOST`), for platform admins: every app's sync health
//!   (replicas, lag now and over the last hour, dead letters with a redrive form, a re-sync
//!   form) and every tenant (plan and features edited in place, pending domains approved).
//!
//! Every form calls the function its REST route calls, so it is validated, evented and audited
//! the same way; a refusal names the field and writes nothing.
//!
//! Anyone else gets the 403 page (a user of another tenant is audited as a cross-tenant attempt
//! by the same check the API uses); a visitor without a session is sent to sign in.

mod access;
mod audit;
mod chart;
mod credits;
mod organisation;
mod platform;
mod sync;
mod tenant_sync;
mod users;

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, StatusCode, request::Parts},
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
    lag_history::now_ms,
    state::AppState,
};

/// The console's routes (documented as pages in the OpenAPI document, like the sign-in pages).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(home))
        .merge(credits::router())
        .merge(users::router())
        .merge(access::router())
        .merge(organisation::router())
        .merge(audit::router())
        .merge(sync::router())
        .merge(tenant_sync::router())
        .merge(platform::router())
}

/// A wider page than the sign-in pages' (tables and charts), and the console's look.
const STYLE: &str = "<style>main { max-width: 74rem; margin: 1.5rem auto; } \
    nav a { font-weight: 600; } h2 { margin-top: 2rem; font-size: 1.2rem; } \
    td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; } \
    form.inline { display: flex; gap: .5rem; align-items: end; flex-wrap: wrap; } \
    form.inline input { width: auto; } .ok { color: #176b2c; } .bad { color: #8a1c1c; } \
    svg { max-width: 100%; height: auto; background: #fbfcfd; border: 1px solid #e4e7ec; \
    border-radius: 6px; margin-top: .6rem; } code { font-size: .85rem; } \
    td { vertical-align: middle; } td form { margin: 0; } td button { margin-top: 0; } dt { font-weight: 600; margin-top: .5rem; } \
    textarea { box-sizing: border-box; } select { padding: .5rem; font: inherit; }</style>";

/// A tenant admin (or a platform admin) on the tenant's host.
struct TenantAdmin {
    /// The tenant.
    id: Uuid,
    /// Its name.
    name: String,
    /// Who is looking (the actor of what they do).
    user: UserCaller,
}

/// Who is looking, once allowed.
enum Viewer {
    /// On a tenant's host.
    Tenant(TenantAdmin),
    /// A platform admin on the platform host.
    Platform(UserCaller),
}

/// Which console: the tenant's pages or the platform's.
#[derive(Clone, Copy)]
enum Host {
    Tenant,
    Platform,
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
            Ok(user) => Ok(Viewer::Platform(user.clone())),
            Err(_) => Err(forbidden("only platform admins use the console here")),
        };
    }
    let tenant = page_tenant(state, headers).await?;
    match caller
        .authorize(state, ctx, tenant.tenant_id, Access::Admin)
        .await
    {
        Ok(user) => Ok(Viewer::Tenant(TenantAdmin {
            id: tenant.tenant_id,
            name: tenant.name.clone(),
            user: user.clone(),
        })),
        Err(_) => Err(forbidden(
            "the console is for this organisation's admins; ask one of them",
        )),
    }
}

/// The console's navigation and its look (every page starts with it).
fn nav(host: Host) -> String {
    let links = match host {
        Host::Tenant => {
            r#"<a href="/admin/users">Users</a><a href="/admin/roles">Roles</a><a href="/admin/memberships">Memberships</a><a href="/admin/credits">Credits</a><a href="/admin/sync">Sync</a><a href="/admin/settings">Settings</a><a href="/admin/audit">Audit log</a><a href="/">Apps</a>"#
        }
        Host::Platform => {
            r#"<a href="/admin/sync-health">Sync health</a><a href="/admin/tenants">Tenants</a>"#
        }
    };
    format!(
        r#"{STYLE}<nav>{links}<form method="post" action="/auth/logout"><input type="hidden" name="return_to" value="/admin/"><button type="submit" class="secondary">Sign out</button></form></nav>"#
    )
}

#[utoipa::path(get, path = "/admin/", tag = "pages", responses((status = 303, description = "To the viewer's console page, or to sign in"), (status = 403, description = "Not an admin here", body = String, content_type = "text/html")))]
async fn home(viewer: Viewer) -> Response {
    match viewer {
        Viewer::Tenant(_) => see_other("/admin/credits"),
        Viewer::Platform(_) => see_other("/admin/sync-health"),
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

/// Minutes of lag history the console charts.
const HISTORY_MINUTES: u64 = 60;

/// A lag history chart: for each minute of the last [`HISTORY_MINUTES`], the most entries
/// behind among that minute's samples (`(at_ms, lag, pending)`), stacked as not yet read and
/// read but not acknowledged; a minute without a sample (nobody reported) stays empty.
fn history_chart(id: &str, title: &str, samples: &[(u64, u64, u64)], now_ms: u64) -> String {
    let minute = 60_000;
    let last = now_ms / minute;
    let first = last + 1 - HISTORY_MINUTES;
    let n = HISTORY_MINUTES as usize;
    let (mut lag, mut pending) = (vec![0i64; n], vec![0i64; n]);
    for &(at, l, p) in samples {
        let m = at / minute;
        if (first..=last).contains(&m) {
            let i = (m - first) as usize;
            lag[i] = lag[i].max(l as i64);
            pending[i] = pending[i].max(p as i64);
        }
    }
    let labels: Vec<String> = (first..=last)
        .map(|m| {
            chrono::DateTime::from_timestamp_millis((m * minute) as i64)
                .map(|t| t.format("%H:%M").to_string())
                .unwrap_or_default()
        })
        .collect();
    let series = std::collections::BTreeMap::from([
        ("not yet read".to_owned(), lag),
        ("read, not acknowledged".to_owned(), pending),
    ]);
    chart::stacked_bars(
        id,
        title,
        &labels,
        &series,
        "Nothing behind in the last hour (or no samples yet).",
    )
}

/// An RFC 3339 time from the sync-health JSON as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc_text(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .map(|t| t.chars().take(19).collect::<String>().replace('T', " "))
}

/// The fast-path consumptions not charged yet (`creditsWaiting` of the sync-health JSON) as a
/// table, with their tenant when `with_tenant`.
fn waiting_table(items: &[serde_json::Value], with_tenant: bool) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().unwrap_or_default().to_owned();
            let mut row = vec![
                utc_text(&i["firstFailedAt"]).unwrap_or_default(),
                s("application"),
                s("operationCode"),
                i["amount"].as_i64().map(num).unwrap_or_default(),
                s("error"),
            ];
            if with_tenant {
                row.insert(1, s("tenantId"));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "Since (UTC)",
        "Application",
        "Operation",
        "Credits",
        "Why not yet",
    ];
    if with_tenant {
        headers.insert(1, "Tenant");
    }
    sync_web::html::table(
        "credits-waiting",
        &headers,
        &rows,
        "None: every fast-path consumption is charged.",
    )
}

/// A form field's text, trimmed; none when empty.
fn field(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// The start of day `from` and the end of day `to` (`YYYY-MM-DD`, UTC; anything else leaves
/// that end open).
fn day_bounds(
    from: &Option<String>,
    to: &Option<String>,
) -> (
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
) {
    let day = |v: &Option<String>| {
        field(v).and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
    };
    let start = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    (
        day(from).and_then(start),
        day(to).and_then(|d| d.succ_opt()).and_then(start),
    )
}

/// `&key=value` for each filter given, to carry the filters to the next page.
fn keep_filters(filters: &[(&str, &Option<String>)]) -> String {
    filters
        .iter()
        .filter_map(|(k, v)| field(v).map(|t| format!("&{k}={}", sync_web::html::url_encode(&t))))
        .collect()
}

/// Names typed into one field (permissions, features), separated by commas or white space.
fn word_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An `ilike` pattern matching `text` anywhere (its wildcards taken literally).
fn like_pattern(text: &str) -> String {
    format!(
        "%{}%",
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// Where a visitor without a session returns after signing in: the page itself, or the
/// console's home for a form post (its address answers only posts).
fn return_path(parts: &Parts) -> String {
    if parts.method == axum::http::Method::GET {
        parts.uri.path().to_owned()
    } else {
        "/admin/".to_owned()
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    /// Who is looking, or the page to answer instead (sign in, 403).
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let ctx = match Ctx::from_request_parts(parts, state).await {
            Ok(ctx) => ctx,
            Err(never) => match never {},
        };
        let caller = Caller::from_request_parts(parts, state).await;
        let path = return_path(parts);
        viewer(state, &ctx, &parts.headers, caller, &path).await
    }
}

impl FromRequestParts<AppState> for TenantAdmin {
    type Rejection = Response;

    /// A tenant admin on the tenant's host, or the page to answer instead.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match Viewer::from_request_parts(parts, state).await? {
            Viewer::Tenant(admin) => Ok(admin),
            Viewer::Platform(_) => {
                Err(forbidden("this page is on each organisation's own address"))
            }
        }
    }
}

/// A platform admin on the platform host.
struct PlatformAdmin(UserCaller);

impl FromRequestParts<AppState> for PlatformAdmin {
    type Rejection = Response;

    /// A platform admin on the platform host, or the page to answer instead.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match Viewer::from_request_parts(parts, state).await? {
            Viewer::Platform(user) => Ok(PlatformAdmin(user)),
            Viewer::Tenant(_) => Err(forbidden(
                "this page is for platform admins, on the platform's host",
            )),
        }
    }
}

/// A form's answer: back to `page` when it was done, else the refusal with the way back.
fn back_to<T>(page: &str, result: Result<T, ApiError>) -> Response {
    match result {
        Ok(_) => see_other(page),
        Err(e) => refused_on(page, e),
    }
}

/// A refused form on a tenant page: the reason, naming the field, and the way back.
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

#[cfg(test)]
mod tests {
    #[test]
    fn word_lists_split_on_commas_and_white_space() {
        assert_eq!(
            super::word_list(" crm.read, crm.write  hrms.read,,\n"),
            ["crm.read", "crm.write", "hrms.read"]
        );
        assert!(super::word_list(" , ").is_empty());
    }

    #[test]
    fn the_history_chart_keeps_each_minutes_worst_sample() {
        let now = 1_700_000_000_000 / 60_000 * 60_000 + 30_000;
        let samples = [
            (now - 20_000, 3, 1),
            (now - 10_000, 9, 0),
            (now - 61 * 60_000, 500, 500),
        ];
        let svg = super::history_chart("h", "t", &samples, now);
        assert!(svg.contains("<title>not yet read: 9 ("), "{svg}");
        assert!(svg.contains("<title>read, not acknowledged: 1 ("));
        assert!(!svg.contains(": 500 ("), "older than the hour");
        assert_eq!(svg.matches("<title>").count(), 2);
    }

    #[test]
    fn days_bound_whole_utc_days_and_ignore_anything_else() {
        let (from, to) =
            super::day_bounds(&Some(" 2026-11-02 ".into()), &Some("2026-11-03".into()));
        assert_eq!(from.unwrap().to_rfc3339(), "2026-11-02T00:00:00+00:00");
        assert_eq!(to.unwrap().to_rfc3339(), "2026-11-04T00:00:00+00:00");
        assert_eq!(
            super::day_bounds(&Some("yesterday".into()), &None),
            (None, None)
        );
        assert_eq!(
            super::keep_filters(&[
                ("kind", &Some("void".into())),
                ("app", &None),
                ("q", &Some("a b".into()))
            ]),
            "&kind=void&q=a%20b"
        );
    }

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(super::like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
