//! The platform's sync-health page: every app's replicas, lag, dead letters (with the redrive
//! form) and full syncs, and the re-sync form.

use axum::{
    Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use sync_web::{
    html::{escape, table, url_encode},
    page::{html, see_other},
};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    HISTORY_MINUTES, Host, PlatformAdmin, chart, history_chart, internal, nav, now_ms, refused_on,
    utc_text, waiting_table,
};
use crate::api::sync_health::{self, LetterFilter};
use crate::{context::Ctx, error::ApiError, state::AppState};

/// The page (and where its forms return).
const PAGE: &str = "/admin/sync-health";

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sync_health_page))
        .routes(routes!(redrive))
        .routes(routes!(resync))
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
    _: PlatformAdmin,
    Query(notice): Query<Notice>,
) -> Response {
    let report = match sync_health::report(&state).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let mut body = format!(
        r#"{}<h1 id="page-title">Sync health</h1>"#,
        nav(Host::Platform)
    );
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
    let waiting = report["creditsWaiting"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    body.push_str(&format!(
        r#"<h2>Credit consumptions waiting to be charged</h2><p class="muted">Served by an app on its mirrored balance, refused by the ledger so far (tried again every few seconds, charged once it can be).</p>{}"#,
        waiting_table(&waiting, true)
    ));
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
    let now = now_ms();
    let samples: Vec<(u64, u64, u64)> =
        sync_health::history(state, name, now.saturating_sub(HISTORY_MINUTES * 60_000))
            .await?
            .into_iter()
            .map(|s| {
                let (lag, pending) = s
                    .partitions
                    .iter()
                    .fold((0, 0), |(l, p), (a, b)| (l + a, p + b));
                (s.at_ms, lag, pending)
            })
            .collect();
    let history = history_chart(
        &format!("history-{name}"),
        &format!("{name}: entries behind, all partitions, last hour"),
        &samples,
        now,
    );
    let letters = sync_health::letters(state, name, &LetterFilter::default()).await?;
    let letter_rows: Vec<Vec<String>> = letters
        .iter()
        .take(50)
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            vec![
                utc_text(&l["at"]).unwrap_or_default(),
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
            vec![
                utc_text(&r["scheduledFor"]).unwrap_or_default(),
                r["replica"].as_str().unwrap_or_default().to_owned(),
                n("tenantsChecked"),
                n("repaired"),
                n("orphans"),
            ]
        })
        .collect();
    let app_path = url_encode(name);
    Ok(format!(
        r#"<section id="app-{id}"><h2>{title}</h2>{replicas}{chart}{history}
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

/// A form's refusal on the sync-health page.
fn refused(e: ApiError) -> Response {
    refused_on(PAGE, e)
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
    PlatformAdmin(user): PlatformAdmin,
    Path(app): Path<String>,
    Form(form): Form<LetterForm>,
) -> Response {
    let filter = match tenant_field(&form.tenant_id) {
        Ok(tenant_id) => LetterFilter {
            tenant_id,
            event_type: Some(form.event_type.trim().to_owned()).filter(|t| !t.is_empty()),
        },
        Err(e) => return refused(e),
    };
    match sync_health::redrive_letters(&state, &ctx, user.id, &app, &filter).await {
        Ok((n, _)) => see_other(&format!(
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
    PlatformAdmin(user): PlatformAdmin,
    Path(app): Path<String>,
    Form(form): Form<LetterForm>,
) -> Response {
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
