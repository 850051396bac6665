//! The credits page: balances, grants, a chart of consumption per application and day, thresholds,
//! the latest ledger entries, and the form that moves credits from the pool to an application.

use axum::{
    Form,
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

use std::collections::BTreeMap;

use super::{
    Host, TenantAdmin, back_to, chart, day_bounds, field, internal, keep_filters, nav, num,
    refused_on, waiting_table,
};
use crate::api::credits::{LedgerCursor, LedgerFilter, ledger_page};
use crate::{context::Ctx, error::ApiError, state::AppState};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(credits))
        .routes(routes!(move_credits))
}

/// Days of consumption the credits chart shows.
const CHART_DAYS: i64 = 14;

/// The ledger's filters on the credits page.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LedgerFilters {
    /// Only this kind: `allocation`, `consumption`, `expiry`, `renewal` or `void`.
    kind: Option<String>,
    /// Only this application's entries.
    application: Option<String>,
    /// Only this operation (e.g. `crm.account.create`).
    operation: Option<String>,
    /// From this day (`YYYY-MM-DD`, UTC).
    from: Option<String>,
    /// To this day, included (`YYYY-MM-DD`, UTC).
    to: Option<String>,
    /// Entries older than this position (paging; anything else starts at the newest).
    before: Option<String>,
}

/// Ledger entries per page of the credits page.
const LEDGER_PAGE: i64 = 50;

/// The ledger's kinds, for the filter.
const KINDS: [&str; 5] = ["allocation", "consumption", "expiry", "renewal", "void"];

#[utoipa::path(get, path = "/admin/credits", tag = "pages", params(LedgerFilters), responses((status = 200, description = "The tenant's credits page (its admins, on its host)", body = String, content_type = "text/html"), (status = 303, description = "Not signed in: to the sign-in page"), (status = 403, description = "Not an admin of this organisation", body = String, content_type = "text/html")))]
async fn credits(
    State(state): State<AppState>,
    admin: TenantAdmin,
    Query(q): Query<LedgerFilters>,
) -> Response {
    let (id, name) = (admin.id, &admin.name);
    match credits_body(&state, id, &q).await {
        Ok(body) => html(
            StatusCode::OK,
            &format!("Credits · {name}"),
            &format!(
                r#"{nav}<h1 id="page-title">Credits · {}</h1>{body}"#,
                escape(name),
                nav = nav(Host::Tenant)
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
async fn credits_body(
    state: &AppState,
    tenant: Uuid,
    q: &LedgerFilters,
) -> Result<String, sqlx::Error> {
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
    let waiting = crate::api::sync_health::credits_waiting(state, Some(tenant))
        .await
        .map(|items| waiting_table(&items, false))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "credits page: waiting consumptions unreadable");
            r#"<p class="muted">Not available right now.</p>"#.to_owned()
        });
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
    let (from, to) = day_bounds(&q.from, &q.to);
    let filter = LedgerFilter {
        scope: None,
        application: field(&q.application),
        operation_code: field(&q.operation),
        kind: field(&q.kind),
        from,
        to,
    };
    let before = field(&q.before).and_then(|b| b.parse().ok());
    let (ledger, next) = ledger_page(
        db,
        tenant,
        &filter,
        LedgerCursor::Before(before),
        LEDGER_PAGE,
    )
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
        .map(|e| {
            vec![
                when(&e.created_at),
                e.kind.clone(),
                e.scope.clone(),
                num(e.amount),
                e.operation_code.clone().unwrap_or_default(),
                num(e.balance_after),
            ]
        })
        .collect();
    let chosen = field(&q.kind);
    let kinds: String = KINDS
        .iter()
        .map(|k| {
            let selected = if chosen.as_deref() == Some(*k) {
                " selected"
            } else {
                ""
            };
            format!(r#"<option value="{k}"{selected}>{k}</option>"#)
        })
        .collect();
    let value = |v: &Option<String>| escape(&field(v).unwrap_or_default());
    let filters = format!(
        r#"<form class="inline" method="get" action="/admin/credits" id="ledger-filters">
<label>Kind <select name="kind"><option value="">any</option>{kinds}</select></label>
<label>Application <input type="text" name="application" value="{app}" size="10"></label>
<label>Operation <input type="text" name="operation" value="{op}" size="18"></label>
<label>From <input type="text" name="from" value="{from}" placeholder="YYYY-MM-DD" size="10"></label>
<label>To <input type="text" name="to" value="{to}" placeholder="YYYY-MM-DD" size="10"></label>
<button type="submit" class="secondary">Filter</button></form>"#,
        app = value(&q.application),
        op = value(&q.operation),
        from = value(&q.from),
        to = value(&q.to),
    );
    let more = next
        .map(|b| {
            format!(
                r#"<p><a id="ledger-next" href="/admin/credits?before={b}{}">Older entries</a></p>"#,
                escape(&keep_filters(&[
                    ("kind", &q.kind),
                    ("application", &q.application),
                    ("operation", &q.operation),
                    ("from", &q.from),
                    ("to", &q.to)
                ]))
            )
        })
        .unwrap_or_default();
    Ok(format!(
        r#"<h2>Balances</h2>{}
<form class="inline" method="post" action="/admin/credits/move" id="move-credits">
<label>Move <input type="text" name="amount" inputmode="numeric" placeholder="credits" required></label>
<label>from the organisation's pool to <input type="text" name="application" placeholder="e.g. crm" required></label>
<button type="submit">Move</button></form>
<h2>Consumption</h2>{svg}
<h2>Grants in use</h2>{}
<h2>Waiting to be charged</h2>{waiting}
<h2>Thresholds</h2>{}
<h2 id="ledger-title">Ledger</h2>{filters}{}{more}"#,
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
            "No entry matches."
        ),
    ))
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
    admin: TenantAdmin,
    Form(form): Form<MoveForm>,
) -> Response {
    let tenant = admin.id;
    let Ok(amount) = form.amount.trim().parse::<i64>() else {
        return refused_on(
            "/admin/credits",
            ApiError::invalid("amount", "a whole number of credits"),
        );
    };
    back_to(
        "/admin/credits",
        crate::api::credits::move_to_application(&state, &ctx, tenant, &form.application, amount)
            .await,
    )
}
