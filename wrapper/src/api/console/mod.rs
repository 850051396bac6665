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

mod chart;

use std::collections::BTreeMap;

use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use serde::Deserialize;
use serde_json::Value;
use sync_web::{
    html::{escape, table, url_encode},
    page::{html, see_other},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    api::sync_health::{self, LetterFilter},
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
        .routes(routes!(credits))
        .routes(routes!(users_page, create_user))
        .routes(routes!(deactivate_user))
        .routes(routes!(audit_page))
        .routes(routes!(move_credits))
        .routes(routes!(tenants_page))
        .routes(routes!(sync_health_page))
        .routes(routes!(redrive))
        .routes(routes!(resync))
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

/// Days of consumption the credits chart shows.
const CHART_DAYS: i64 = 14;

#[utoipa::path(get, path = "/admin/credits", tag = "pages", responses((status = 200, description = "The tenant's credits page (its admins, on its host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not an admin of this organisation", body = String, content_type = "text/html")))]
async fn credits(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
) -> Response {
    let viewer = match viewer(&state, &ctx, &headers, caller, "/admin/credits").await {
        Ok(v @ Viewer::Tenant { .. }) => v,
        Ok(Viewer::Platform { .. }) => return see_other("/admin/sync-health"),
        Err(page) => return page,
    };
    let Viewer::Tenant { id, ref name, .. } = viewer else {
        return see_other("/admin/");
    };
    match credits_body(&state, id).await {
        Ok(body) => html(
            StatusCode::OK,
            &format!("Credits · {name}"),
            &format!(
                r#"{nav}<h1 id="page-title">Credits · {}</h1>{body}"#,
                escape(name),
                nav = nav(&viewer)
            ),
        ),
        Err(e) => internal(e),
    }
}

/// A grant row of the credits page: scope, category, priority, remaining, initial, expiry, status.
type GrantRow = (
    String,
    String,
    i32,
    i64,
    i64,
    Option<chrono::DateTime<chrono::Utc>>,
    String,
);
/// A ledger row of the credits page: when, kind, scope, amount, operation, balance after.
type LedgerRow = (
    chrono::DateTime<chrono::Utc>,
    String,
    String,
    i64,
    Option<String>,
    i64,
);

async fn credits_body(state: &AppState, tenant: Uuid) -> Result<String, sqlx::Error> {
    let db = &state.db;
    let balances: Vec<(String, i64, i64)> = sqlx::query_as(
        "select b.scope, b.balance, coalesce((select sum(g.remaining) from credit_grants g
             where g.tenant_id = b.tenant_id and g.scope = b.scope and g.status = 'active'
               and g.effective_at <= now() and (g.expires_at is null or g.expires_at > now())), 0)::bigint
         from credit_balances b where b.tenant_id = $1 order by b.scope",
    )
    .bind(tenant)
    .fetch_all(db)
    .await?;
    let usage: Vec<(String, chrono::NaiveDate, i64)> = sqlx::query_as(
        "select coalesce(application, '-'), (created_at at time zone 'UTC')::date, sum(amount)::bigint
         from credit_ledger where tenant_id = $1 and kind = 'consumption'
           and created_at >= (now() at time zone 'UTC')::date - ($2::int - 1)
         group by 1, 2 order by 2, 1",
    )
    .bind(tenant)
    .bind(CHART_DAYS as i32)
    .fetch_all(db)
    .await?;
    let grants: Vec<GrantRow> = sqlx::query_as(
        "select scope, category, priority, remaining, initial, expires_at, status
             from credit_grants where tenant_id = $1 and status = 'active'
             order by scope, priority, expires_at nulls last, id limit 200",
    )
    .bind(tenant)
    .fetch_all(db)
    .await?;
    let thresholds: Vec<(String, String, i64, bool)> = sqlx::query_as(
        "select scope, kind, value, armed from credit_thresholds where tenant_id = $1
         order by scope, kind, value",
    )
    .bind(tenant)
    .fetch_all(db)
    .await?;
    let ledger: Vec<LedgerRow> = sqlx::query_as(
        "select created_at, kind, scope, amount, operation_code, balance_after
             from credit_ledger where tenant_id = $1 order by id desc limit 25",
    )
    .bind(tenant)
    .fetch_all(db)
    .await?;

    let today = chrono::Utc::now().date_naive();
    let days: Vec<chrono::NaiveDate> = (0..CHART_DAYS)
        .rev()
        .map(|d| today - chrono::TimeDelta::days(d))
        .collect();
    let mut series: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (app, day, amount) in &usage {
        if let Some(i) = days.iter().position(|d| d == day) {
            series
                .entry(app.clone())
                .or_insert_with(|| vec![0; days.len()])[i] += amount;
        }
    }
    let labels: Vec<String> = days.iter().map(|d| d.format("%d %b").to_string()).collect();
    let svg = chart::stacked_bars(
        "usage-chart",
        &format!("Credits consumed per day, last {CHART_DAYS} days"),
        &labels,
        &series,
        "Nothing consumed in this period.",
    );

    let when = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M").to_string();
    let balance_rows: Vec<Vec<String>> = balances
        .iter()
        .map(|(s, b, a)| vec![s.clone(), num(*b), num(*a)])
        .collect();
    let grant_rows: Vec<Vec<String>> = grants
        .iter()
        .map(
            |(scope, category, priority, remaining, initial, expires, status)| {
                vec![
                    scope.clone(),
                    category.clone(),
                    priority.to_string(),
                    format!("{} of {}", num(*remaining), num(*initial)),
                    expires.as_ref().map(when).unwrap_or_else(|| "never".into()),
                    status.clone(),
                ]
            },
        )
        .collect();
    let threshold_rows: Vec<Vec<String>> = thresholds
        .iter()
        .map(|(scope, kind, value, armed)| {
            vec![
                scope.clone(),
                kind.replace('_', " "),
                if kind == "percent_used" {
                    format!("{value} %")
                } else {
                    num(*value)
                },
                if *armed {
                    "watching".into()
                } else {
                    "crossed".into()
                },
            ]
        })
        .collect();
    let ledger_rows: Vec<Vec<String>> = ledger
        .iter()
        .map(|(at, kind, scope, amount, op, after)| {
            vec![
                when(at),
                kind.clone(),
                scope.clone(),
                num(*amount),
                op.clone().unwrap_or_default(),
                num(*after),
            ]
        })
        .collect();
    Ok(format!(
        r#"<h2>Balances</h2>{}
<form class="inline" method="post" action="/admin/credits/move" id="move-credits">
<label>Move <input type="text" name="amount" inputmode="numeric" placeholder="credits" required></label>
<label>from the organisation's pool to <input type="text" name="application" placeholder="e.g. crm" required></label>
<button type="submit">Move</button></form>
<h2>Consumption</h2>{svg}
<h2>Grants in use</h2>{}
<h2>Thresholds</h2>{}
<h2>Latest ledger entries</h2>{}"#,
        table(
            "balances",
            &["Balance", "Credits", "Available now"],
            &balance_rows,
            "No credits yet."
        ),
        table(
            "grants",
            &[
                "Balance",
                "Category",
                "Priority",
                "Remaining",
                "Expires",
                "Status"
            ],
            &grant_rows,
            "No grants."
        ),
        table(
            "thresholds",
            &["Balance", "Kind", "Value", "State"],
            &threshold_rows,
            "No thresholds: set them with POST /api/tenants/{id}/credits/thresholds."
        ),
        table(
            "ledger",
            &[
                "When (UTC)",
                "Kind",
                "Balance",
                "Credits",
                "Operation",
                "Balance after"
            ],
            &ledger_rows,
            "No entries."
        ),
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Notice {
    /// The app the last action was for.
    app: Option<String>,
    /// How many dead letters the last redrive moved (a number; anything else is ignored).
    redriven: Option<String>,
    /// The tenant the last re-sync request was for (an id; anything else is ignored).
    resync: Option<String>,
}

#[utoipa::path(get, path = "/admin/sync-health", tag = "pages", params(Notice), responses((status = 200, description = "Every app's sync health with its dead letters (platform admins, on the platform host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not a platform admin here", body = String, content_type = "text/html")))]
async fn sync_health_page(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
    Query(notice): Query<Notice>,
) -> Response {
    let viewer = match platform_viewer(&state, &ctx, &headers, caller).await {
        Ok(user) => Viewer::Platform { user },
        Err(page) => return page,
    };
    let report = match sync_health::report(&state).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut body = format!(r#"{}<h1 id="page-title">Sync health</h1>"#, nav(&viewer));
    // Only figures and names the page knows are shown back (no text from the address).
    let known = notice.app.as_deref().filter(|a| {
        report["apps"]
            .as_array()
            .is_some_and(|apps| apps.iter().any(|x| x["app"] == *a))
    });
    let redriven = notice
        .redriven
        .as_deref()
        .and_then(|n| n.parse::<u32>().ok());
    let resynced = notice
        .resync
        .as_deref()
        .and_then(|t| t.parse::<Uuid>().ok());
    let done = match (known, redriven, resynced) {
        (Some(app), Some(n), _) => Some(format!("{n} dead letter(s) of {app} redriven.")),
        (Some(app), None, Some(t)) => Some(format!("{app} will re-sync tenant {t}.")),
        _ => None,
    };
    if let Some(done) = done {
        body.push_str(&format!(
            r#"<p class="ok" id="notice">{}</p>"#,
            escape(&done)
        ));
    }
    for app in report["apps"].as_array().into_iter().flatten() {
        let name = app["app"].as_str().unwrap_or_default();
        match app_section(&state, name, app).await {
            Ok(section) => body.push_str(&section),
            Err(e) => return internal(e),
        }
    }
    html(StatusCode::OK, "Sync health", &body)
}

async fn app_section(state: &AppState, name: &str, app: &Value) -> Result<String, ApiError> {
    let replicas = app["replicas"].as_array().cloned().unwrap_or_default();
    let replica_rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|r| {
            let h = &r["health"];
            vec![
                r["replica"].as_str().unwrap_or_default().to_owned(),
                if r["fresh"] == true {
                    "reporting"
                } else {
                    "silent"
                }
                .to_owned(),
                format!("{:.1} s ago", r["ageMs"].as_f64().unwrap_or(0.0) / 1000.0),
                if h["ready"] == true {
                    "ready".into()
                } else {
                    let reasons: Vec<&str> = h["reasons"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    format!("not ready: {}", reasons.join("; "))
                },
                r["tenantsLoaded"]
                    .as_u64()
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                h["resyncsPending"].as_u64().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    // The lag chart: the freshest replica's view of each partition (groups are per app).
    let mut lag: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut partitions: Vec<String> = Vec::new();
    if let Some(r) = replicas
        .iter()
        .find(|r| r["fresh"] == true)
        .or(replicas.first())
    {
        for p in r["health"]["partitions"].as_array().into_iter().flatten() {
            partitions.push(format!("P{}", p["partition"].as_u64().unwrap_or(0)));
            let value = |k: &str| p[k].as_i64().unwrap_or(0);
            lag.entry("not yet read".into())
                .or_default()
                .push(value("lag"));
            lag.entry("read, not acknowledged".into())
                .or_default()
                .push(value("pending"));
        }
    }
    let chart = chart::stacked_bars(
        &format!("lag-{name}"),
        &format!("{name}: entries behind, per partition"),
        &partitions,
        &lag,
        "Nothing behind: every entry read and acknowledged.",
    );
    let letters = sync_health::letters(state, name, &LetterFilter::default()).await?;
    let letter_rows: Vec<Vec<String>> = letters
        .iter()
        .take(50)
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            vec![
                s("at")
                    .chars()
                    .take(19)
                    .collect::<String>()
                    .replace('T', " "),
                s("tenantId"),
                s("eventType"),
                s("error"),
                l["attempts"].as_u64().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    let full_syncs: Vec<Vec<String>> = app["recentFullSyncs"]
        .as_array()
        .into_iter()
        .flatten()
        .take(5)
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or(0).to_string();
            let at = r["scheduledFor"].as_str().unwrap_or_default();
            vec![
                at.chars().take(19).collect::<String>().replace('T', " "),
                r["replica"].as_str().unwrap_or_default().to_owned(),
                n("tenantsChecked"),
                n("repaired"),
                n("orphans"),
            ]
        })
        .collect();
    let app_path = url_encode(name);
    Ok(format!(
        r#"<section id="app-{id}"><h2>{title}</h2>{replicas}{chart}
<h3>Dead letters: <span id="dead-letters-{id}">{dead}</span></h3>{letters}
<form class="inline" method="post" action="/admin/sync-health/{app_path}/redrive" id="redrive-{id}">
<label>Tenant <input type="text" name="tenantId" placeholder="all"></label>
<label>Event type <input type="text" name="eventType" placeholder="all"></label>
<button type="submit">Redrive</button></form>
<h3>Re-sync a tenant</h3>
<form class="inline" method="post" action="/admin/sync-health/{app_path}/resync" id="resync-{id}">
<label>Tenant <input type="text" name="tenantId" required></label><button type="submit" class="secondary">Re-sync</button></form>
<h3>Recent full syncs</h3>{full}</section>"#,
        id = escape(name),
        title = escape(name),
        replicas = table(
            &format!("replicas-{name}"),
            &[
                "Replica",
                "Reports",
                "Last report",
                "Ready",
                "Tenants loaded",
                "Re-syncs"
            ],
            &replica_rows,
            "No replica has reported in the last 20 seconds."
        ),
        dead = letters.len(),
        letters = table(
            &format!("letters-{name}"),
            &["When (UTC)", "Tenant", "Event type", "Reason", "Attempts"],
            &letter_rows,
            "None."
        ),
        full = table(
            &format!("fullsyncs-{name}"),
            &[
                "When (UTC)",
                "Replica",
                "Tenants checked",
                "Repaired",
                "Orphans"
            ],
            &full_syncs,
            "None yet."
        ),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct LetterForm {
    #[serde(default)]
    tenant_id: String,
    #[serde(default)]
    event_type: String,
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

/// A form's refusal on the sync-health page.
fn refused(e: ApiError) -> Response {
    refused_on("/admin/sync-health", e)
}

fn tenant_field(text: &str) -> Result<Option<Uuid>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| ApiError::invalid("tenantId", "not a tenant id"))
}

#[utoipa::path(post, path = "/admin/sync-health/{app}/redrive", tag = "pages", params(("app" = String, Path, description = "A registered app")), request_body(content = LetterForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Redriven: back to the sync-health page with what was done"), (status = 400, description = "Refused, with the reason", body = String, content_type = "text/html"), (status = 403, description = "Not a platform admin here, or not from this origin", body = String, content_type = "text/html")))]
async fn redrive(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
    Path(app): Path<String>,
    Form(form): Form<LetterForm>,
) -> Response {
    let user = match platform_viewer(&state, &ctx, &headers, caller).await {
        Ok(user) => user,
        Err(page) => return page,
    };
    let filter = match tenant_field(&form.tenant_id) {
        Ok(tenant_id) => LetterFilter {
            tenant_id,
            event_type: Some(form.event_type.trim().to_owned()).filter(|t| !t.is_empty()),
        },
        Err(e) => return refused(e),
    };
    match sync_health::redrive_letters(&state, &ctx, user.id, &app, &filter).await {
        Ok(n) => see_other(&format!(
            "/admin/sync-health?app={}&redriven={n}",
            url_encode(&app)
        )),
        Err(e) => refused(e),
    }
}

#[utoipa::path(post, path = "/admin/sync-health/{app}/resync", tag = "pages", params(("app" = String, Path, description = "A registered app")), request_body(content = LetterForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Requested: back to the sync-health page"), (status = 400, description = "Refused, with the reason", body = String, content_type = "text/html"), (status = 403, description = "Not a platform admin here, or not from this origin", body = String, content_type = "text/html")))]
async fn resync(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
    Path(app): Path<String>,
    Form(form): Form<LetterForm>,
) -> Response {
    let user = match platform_viewer(&state, &ctx, &headers, caller).await {
        Ok(user) => user,
        Err(page) => return page,
    };
    let tenant = match tenant_field(&form.tenant_id) {
        Ok(Some(t)) => t,
        Ok(None) => return refused(ApiError::invalid("tenantId", "name the tenant")),
        Err(e) => return refused(e),
    };
    match sync_health::request_resync(&state, &ctx, user.id, &app, tenant).await {
        Ok(()) => see_other(&format!(
            "/admin/sync-health?app={}&resync={tenant}",
            url_encode(&app)
        )),
        Err(e) => refused(e),
    }
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

#[utoipa::path(get, path = "/admin/users", tag = "pages", params(UsersQuery), responses((status = 200, description = "The tenant's users, searchable and paged, with a form to add one (its admins, on its host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not an admin of this organisation", body = String, content_type = "text/html")))]
async fn users_page(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
    Query(q): Query<UsersQuery>,
) -> Response {
    let (viewer, tenant, name) =
        match tenant_viewer(&state, &ctx, &headers, caller, "/admin/users").await {
            Ok(v) => v,
            Err(page) => return page,
        };
    let search = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let after = q.after.as_deref().and_then(|a| a.parse::<Uuid>().ok());
    let pattern = search.map(|t| {
        format!(
            "%{}%",
            t.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
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
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
            escape(full_name),
            escape(email),
            escape(roles.as_deref().unwrap_or("")),
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
        nav = nav(&viewer),
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

#[utoipa::path(post, path = "/admin/users", tag = "pages", request_body(content = UserForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Added: back to the users page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 409, description = "The email is taken", body = String, content_type = "text/html")))]
async fn create_user(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
    Form(form): Form<UserForm>,
) -> Response {
    let tenant = match tenant_viewer(&state, &ctx, &headers, caller, "/admin/users").await {
        Ok((_, tenant, _)) => tenant,
        Err(page) => return page,
    };
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
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
    Path(user_id): Path<Uuid>,
) -> Response {
    let tenant = match tenant_viewer(&state, &ctx, &headers, caller, "/admin/users").await {
        Ok((_, tenant, _)) => tenant,
        Err(page) => return page,
    };
    let req = crate::api::users::UpdateUser {
        email: None,
        full_name: None,
        avatar_url: None,
        active: Some(false),
        password: None,
    };
    match crate::api::users::update_user(&state, &ctx, tenant, user_id, req).await {
        Ok(_) => see_other("/admin/users"),
        Err(e) => refused_on("/admin/users", e),
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditPageQuery {
    /// The actor's email address or id.
    actor: Option<String>,
    /// The action, e.g. `cross_tenant_attempt`.
    action: Option<String>,
    /// From this day (`YYYY-MM-DD`, UTC).
    from: Option<String>,
    /// To this day, included (`YYYY-MM-DD`, UTC).
    to: Option<String>,
    /// Entries older than this one (paging).
    before: Option<String>,
}

#[utoipa::path(get, path = "/admin/audit", tag = "pages", params(AuditPageQuery), responses((status = 200, description = "The tenant's audit log with filters (its admins, on its host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not an admin of this organisation", body = String, content_type = "text/html")))]
async fn audit_page(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
    Query(q): Query<AuditPageQuery>,
) -> Response {
    let (viewer, tenant, name) =
        match tenant_viewer(&state, &ctx, &headers, caller, "/admin/audit").await {
            Ok(v) => v,
            Err(page) => return page,
        };
    let text = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    };
    let day = |v: &Option<String>| {
        text(v).and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
    };
    let (actor_text, action) = (text(&q.actor), text(&q.action));
    // An actor named by address is looked up in this tenant; one that matches nobody matches
    // no entry.
    let actor_id = match &actor_text {
        None => None,
        Some(a) => match a.parse::<Uuid>() {
            Ok(id) => Some(id),
            Err(_) => Some(
                sqlx::query_scalar::<_, Uuid>(
                    "select id from users where tenant_id = $1 and lower(email) = lower($2)",
                )
                .bind(tenant)
                .bind(a)
                .fetch_optional(&state.db)
                .await
                .ok()
                .flatten()
                .unwrap_or(Uuid::nil()),
            ),
        },
    };
    let (from, to) = (day(&q.from), day(&q.to));
    let filter = crate::api::audit_log::AuditFilter {
        before: text(&q.before).and_then(|b| b.parse().ok()),
        action: action.clone(),
        actor_id,
        from: from
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc()),
        to: to
            .and_then(|d| d.succ_opt())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc()),
        limit: 50,
    };
    let (items, next) = match crate::api::audit_log::page(&state, tenant, &filter).await {
        Ok(p) => p,
        Err(e) => return internal(e),
    };
    let emails: std::collections::HashMap<Uuid, String> =
        // Only this tenant's users are named: another tenant's user shows as an id.
        sqlx::query_as::<_, (Uuid, String)>(
            "select id, email from users where id = any($1) and tenant_id = $2",
        )
        .bind(items.iter().filter_map(|i| i.actor_id).collect::<Vec<_>>())
        .bind(tenant)
            .fetch_all(&state.db)
            .await
            .map(|rows| rows.into_iter().collect())
            .unwrap_or_default();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                i.actor_id
                    .map(|a| emails.get(&a).cloned().unwrap_or_else(|| a.to_string()))
                    .unwrap_or_default(),
                i.action.clone(),
                i.outcome.clone(),
                i.target.clone().unwrap_or_default(),
                if i.details.as_object().is_some_and(|o| o.is_empty()) {
                    String::new()
                } else {
                    i.details.to_string()
                },
            ]
        })
        .collect();
    let keep = |k: &str, v: &Option<String>| {
        text(v)
            .map(|t| format!("&{k}={}", url_encode(&t)))
            .unwrap_or_default()
    };
    let more = next
        .map(|b| {
            format!(
                r#"<p><a id="next-page" href="/admin/audit?before={b}{}{}{}{}">Older entries</a></p>"#,
                keep("actor", &q.actor),
                keep("action", &q.action),
                keep("from", &q.from),
                keep("to", &q.to)
            )
        })
        .unwrap_or_default();
    let value = |v: &Option<String>| escape(&text(v).unwrap_or_default());
    let body = format!(
        r#"{nav}<h1 id="page-title">Audit log · {name}</h1>
<form class="inline" method="get" action="/admin/audit" id="filters">
<label>Actor <input type="text" name="actor" value="{actor}" placeholder="email or id"></label>
<label>Action <input type="text" name="action" value="{action}" placeholder="e.g. cross_tenant_attempt"></label>
<label>From <input type="text" name="from" value="{from}" placeholder="YYYY-MM-DD"></label>
<label>To <input type="text" name="to" value="{to}" placeholder="YYYY-MM-DD"></label>
<button type="submit" class="secondary">Filter</button></form>
{table}{more}"#,
        nav = nav(&viewer),
        name = escape(&name),
        actor = value(&q.actor),
        action = value(&q.action),
        from = value(&q.from),
        to = value(&q.to),
        table = table(
            "audit",
            &[
                "When (UTC)",
                "Actor",
                "Action",
                "Outcome",
                "Target",
                "Details"
            ],
            &rows,
            "No entry matches."
        ),
    );
    html(StatusCode::OK, &format!("Audit log · {name}"), &body)
}

/// The credits form of the console: move credits from the pool to an application.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct MoveForm {
    #[serde(default)]
    amount: String,
    #[serde(default)]
    application: String,
}

#[utoipa::path(post, path = "/admin/credits/move", tag = "pages", request_body(content = MoveForm, content_type = "application/x-www-form-urlencoded"), responses((status = 303, description = "Moved: back to the credits page"), (status = 400, description = "Refused, naming the field", body = String, content_type = "text/html"), (status = 402, description = "The pool's grants in effect do not cover it", body = String, content_type = "text/html"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html")))]
async fn move_credits(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
    Form(form): Form<MoveForm>,
) -> Response {
    let tenant = match tenant_viewer(&state, &ctx, &headers, caller, "/admin/credits").await {
        Ok((_, tenant, _)) => tenant,
        Err(page) => return page,
    };
    let Ok(amount) = form.amount.trim().parse::<i64>() else {
        return refused_on(
            "/admin/credits",
            ApiError::invalid("amount", "a whole number of credits"),
        );
    };
    match crate::api::credits::move_to_application(&state, &ctx, tenant, &form.application, amount)
        .await
    {
        Ok(_) => see_other("/admin/credits"),
        Err(e) => refused_on("/admin/credits", e),
    }
}

#[utoipa::path(get, path = "/admin/tenants", tag = "pages", responses((status = 200, description = "Every tenant with its plan, features, status and users (platform admins, on the platform host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not a platform admin here", body = String, content_type = "text/html")))]
async fn tenants_page(
    State(state): State<AppState>,
    ctx: Ctx,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
) -> Response {
    let user = match platform_viewer(&state, &ctx, &headers, caller).await {
        Ok(user) => user,
        Err(page) => return page,
    };
    type Row = (String, String, String, Value, String, i64, i64);
    let rows: Vec<Row> = match sqlx::query_as(
        "select t.name, t.subdomain, t.plan, t.features, t.status,
                (select count(*) from users u where u.tenant_id = t.id and u.deleted_at is null),
                coalesce((select sum(b.balance) from credit_balances b where b.tenant_id = t.id), 0)::bigint
         from tenants t order by t.created_at desc limit 500",
    )
    .fetch_all(&state.db)
    .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let cells: Vec<Vec<String>> = rows
        .into_iter()
        .map(
            |(name, subdomain, plan, features, status, users, credits)| {
                let features: Vec<String> = features
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect();
                vec![
                    name,
                    subdomain,
                    plan,
                    features.join(", "),
                    status,
                    users.to_string(),
                    num(credits),
                ]
            },
        )
        .collect();
    let viewer = Viewer::Platform { user };
    let body = format!(
        r#"{}<h1 id="page-title">Tenants</h1>{}"#,
        nav(&viewer),
        table(
            "tenants",
            &[
                "Name",
                "Subdomain",
                "Plan",
                "Features",
                "Status",
                "Users",
                "Credits"
            ],
            &cells,
            "No tenants yet."
        )
    );
    html(StatusCode::OK, "Tenants", &body)
}
