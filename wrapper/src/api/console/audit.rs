//! The audit log page, filtered by actor, action and days.

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;
use sync_web::{
    html::{escape, table},
    page::html,
};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{Host, TenantAdmin, day_bounds, field, internal, keep_filters, nav};
use crate::state::AppState;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(audit_page))
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
    TenantAdmin {
        id: tenant, name, ..
    }: TenantAdmin,
    Query(q): Query<AuditPageQuery>,
) -> Response {
    let (actor_text, action) = (field(&q.actor), field(&q.action));
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
    let (from, to) = day_bounds(&q.from, &q.to);
    let filter = crate::api::audit_log::AuditFilter {
        before: field(&q.before).and_then(|b| b.parse().ok()),
        action: action.clone(),
        actor_id,
        from,
        to,
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
    let more = next
        .map(|b| {
            format!(
                r#"<p><a id="next-page" href="/admin/audit?before={b}{}">Older entries</a></p>"#,
                escape(&keep_filters(&[
                    ("actor", &q.actor),
                    ("action", &q.action),
                    ("from", &q.from),
                    ("to", &q.to)
                ]))
            )
        })
        .unwrap_or_default();
    let value = |v: &Option<String>| escape(&field(v).unwrap_or_default());
    let body = format!(
        r#"{nav}<h1 id="page-title">Audit log · {name}</h1>
<form class="inline" method="get" action="/admin/audit" id="filters">
<label>Actor <input type="text" name="actor" value="{actor}" placeholder="email or id"></label>
<label>Action <input type="text" name="action" value="{action}" placeholder="e.g. cross_tenant_attempt"></label>
<label>From <input type="text" name="from" value="{from}" placeholder="YYYY-MM-DD"></label>
<label>To <input type="text" name="to" value="{to}" placeholder="YYYY-MM-DD"></label>
<button type="submit" class="secondary">Filter</button></form>
{table}{more}"#,
        nav = nav(Host::Tenant),
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
