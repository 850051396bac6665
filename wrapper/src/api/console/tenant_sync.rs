//! The organisation's own sync page, for its admins: in every app, how far behind the
//! partition carrying its events is (now and over the last hour), whether the app holds its
//! events back or re-syncs it, its dead letters, when the app last loaded it, and a form to ask
//! the app to re-sync it (audited). Nothing of other tenants is shown: the partition's figures
//! are counts, the replicas are counted, not named. The JSON is
//! `GET /api/tenants/{id}/sync-health`.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use serde_json::Value;
use sync_web::{
    html::{escape, table, url_encode},
    page::{html, see_other},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    HISTORY_MINUTES, Host, TenantAdmin, history_chart, internal, nav, now_ms, refused_on, utc_text,
};
use crate::{api::sync_health, context::Ctx, state::AppState};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sync_page))
        .routes(routes!(resync_tenant))
}

const PAGE: &str = "/admin/sync";

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ResyncNotice {
    /// The app a re-sync was just requested from (a registered app; anything else is ignored).
    resync: Option<String>,
}

fn seconds(ms: Option<u64>) -> String {
    ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

#[utoipa::path(get, path = "/admin/sync", tag = "pages", params(ResyncNotice), responses((status = 200, description = "The organisation's sync state in every app with an hour of lag history, its dead letters and a re-sync form (its admins, on its host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not an admin of this organisation", body = String, content_type = "text/html")))]
async fn sync_page(
    State(state): State<AppState>,
    TenantAdmin { id, name, .. }: TenantAdmin,
    Query(notice): Query<ResyncNotice>,
) -> Response {
    let now = now_ms();
    let since = now.saturating_sub(HISTORY_MINUTES * 60_000);
    let report = match sync_health::tenant_report(&state, id, since).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let apps = report["apps"].as_array().cloned().unwrap_or_default();
    let mut body = format!(
        r#"{nav}<h1 id="page-title">Sync · {name}</h1>
<p class="muted">Each app keeps its own copy of the organisation, kept current from the hub's event streams. Here is how current each copy is.</p>"#,
        nav = nav(Host::Tenant),
        name = escape(&name),
    );
    if let Some(app) = notice
        .resync
        .as_deref()
        .filter(|a| apps.iter().any(|x| x["app"] == *a))
    {
        body.push_str(&format!(
            r#"<p class="ok" id="notice">{} will re-sync the organisation within a few seconds.</p>"#,
            escape(app)
        ));
    }
    for app in &apps {
        body.push_str(&app_section(app, now));
    }
    if apps.is_empty() {
        body.push_str(r#"<p class="muted">No app is registered.</p>"#);
    }
    html(StatusCode::OK, &format!("Sync · {name}"), &body)
}

fn app_section(app: &Value, now: u64) -> String {
    let name = app["app"].as_str().unwrap_or_default();
    let u = |k: &str| app[k].as_u64();
    let (reporting, ready) = (
        u("replicasReporting").unwrap_or(0),
        u("replicasReady").unwrap_or(0),
    );
    let state = if reporting == 0 {
        r#"<span class="bad">no replica reports</span>"#.to_owned()
    } else if ready == reporting && app["readerAlive"] == true {
        format!(
            r#"<span class="ok">{ready} of {reporting} replicas ready, this partition's reader live</span>"#
        )
    } else {
        format!(r#"<span class="bad">{ready} of {reporting} replicas ready</span>"#)
    };
    let parked: Vec<String> = app["parked"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} event(s) held back ({})",
                p["entries"].as_u64().unwrap_or(0),
                p["reason"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let full = &app["lastFullSync"];
    let rows = vec![
        vec![
            "Partition".into(),
            format!(
                "P{}: {} not yet read, {} read and not acknowledged (oldest {})",
                u("partition").unwrap_or(0),
                u("lag").map_or("?".into(), |n| n.to_string()),
                u("pending").map_or("?".into(), |n| n.to_string()),
                seconds(u("oldestPendingAgeMs")),
            ),
        ],
        vec![
            "Held back".into(),
            if parked.is_empty() {
                "nothing".into()
            } else {
                parked.join("; ")
            },
        ],
        vec![
            "Re-sync".into(),
            if app["resyncPending"] == true {
                "requested, not finished yet".into()
            } else {
                "none pending".into()
            },
        ],
        vec![
            "Last loaded (UTC)".into(),
            utc_text(&app["lastLoadedAt"])
                .unwrap_or_else(|| "not yet: the app loads it on its first visit".into()),
        ],
        vec![
            "Last full sync (UTC)".into(),
            utc_text(&full["scheduledFor"])
                .map(|t| {
                    format!(
                        "{t}: {} tenants checked, {} repaired",
                        full["tenantsChecked"].as_u64().unwrap_or(0),
                        full["repaired"].as_u64().unwrap_or(0)
                    )
                })
                .unwrap_or_else(|| "none yet".into()),
        ],
    ];
    let samples: Vec<(u64, u64, u64)> = app["lagHistory"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s[0].as_u64()?, s[1].as_u64()?, s[2].as_u64()?)))
        .collect();
    let chart = history_chart(
        &format!("history-{name}"),
        &format!("{name}: entries behind on this organisation's partition, last hour"),
        &samples,
        now,
    );
    let letters: Vec<Vec<String>> = app["letters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            vec![
                utc_text(&l["at"]).unwrap_or_default(),
                l["eventType"].as_str().unwrap_or_default().to_owned(),
                l["error"].as_str().unwrap_or_default().to_owned(),
                l["attempts"].as_u64().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    format!(
        r#"<section id="app-{id}"><h2>{title}</h2><p id="state-{id}">{state}</p>{facts}{chart}
<h3>Dead letters: <span id="dead-letters-{id}">{dead}</span></h3>{letters}
<p class="muted">Events the app could not apply after its retries. The platform's operators send them again once the app is fixed; a re-sync repairs the copy meanwhile.</p>
<form method="post" action="/admin/sync/{path}/resync" id="resync-{id}"><button type="submit" class="secondary">Re-sync in {title}</button></form></section>"#,
        id = escape(name),
        title = escape(name),
        path = url_encode(name),
        facts = table(&format!("facts-{name}"), &["", "Now"], &rows, ""),
        dead = u("deadLetters").unwrap_or(0),
        letters = table(
            &format!("letters-{name}"),
            &["When (UTC)", "Event type", "Reason", "Attempts"],
            &letters,
            "None."
        ),
    )
}

#[utoipa::path(post, path = "/admin/sync/{app}/resync", tag = "pages", params(("app" = String, Path, description = "A registered app")), responses((status = 303, description = "Requested (audited): back to the sync page"), (status = 403, description = "Not an admin here, or not from this origin", body = String, content_type = "text/html"), (status = 404, description = "No such app", body = String, content_type = "text/html")))]
async fn resync_tenant(
    State(state): State<AppState>,
    ctx: Ctx,
    admin: TenantAdmin,
    Path(app): Path<String>,
) -> Response {
    match sync_health::request_resync(&state, &ctx, admin.user.id, &app, admin.id).await {
        Ok(()) => see_other(&format!("{PAGE}?resync={}", url_encode(&app))),
        Err(e) => refused_on(PAGE, e),
    }
}
