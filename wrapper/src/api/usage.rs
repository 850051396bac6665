//! `GET /api/tenants/{id}/credits/usage`: the tenant's consumption aggregated by any of app,
//! operation, user and day over a time range, as JSON or CSV, paged — the numbers behind a
//! billing export and the console's credit chart (`by=app,day`). Read from the ledger itself,
//! so a report always adds up to the ledger to the credit.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::ApiQuery;
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    state::AppState,
};

/// The largest cursor a page can hand out (an offset into the grouped rows).
const MAX_CURSOR: i64 = 1_000_000_000;

/// Usage routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(usage))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UsageQuery {
    /// What to group by, comma-separated: `app`, `operation`, `user`, `day` (default
    /// `app,operation,day`).
    by: Option<String>,
    /// Start of the range, inclusive (RFC 3339; default 30 days before `to`).
    from: Option<DateTime<Utc>>,
    /// End of the range, exclusive (RFC 3339; default now).
    to: Option<DateTime<Utc>>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// Rows per page.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The `next` of the previous page.
    #[param(minimum = 0, maximum = 1000000000)]
    cursor: Option<i64>,
}

/// One group of consumptions.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UsageRow {
    /// The day (UTC), when grouped by day.
    day: Option<NaiveDate>,
    /// The application, when grouped by app.
    application: Option<String>,
    /// The operation, when grouped by operation.
    operation_code: Option<String>,
    /// The user the app acted for, when grouped by user (null: the app did not say).
    user_id: Option<Uuid>,
    /// Consumptions.
    operations: i64,
    /// Credits consumed.
    credits: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Dimensions {
    app: bool,
    operation: bool,
    user: bool,
    day: bool,
}

fn dimensions(by: Option<&str>) -> ApiResult<Dimensions> {
    let mut d = Dimensions::default();
    for part in by.unwrap_or("app,operation,day").split(',') {
        match part.trim() {
            "app" => d.app = true,
            "operation" => d.operation = true,
            "user" => d.user = true,
            "day" => d.day = true,
            other => {
                return Err(ApiError::invalid(
                    "by",
                    format!("`{other}` is not one of app, operation, user, day"),
                ));
            }
        }
    }
    Ok(d)
}

/// Consumption of the tenant grouped as asked (tenant admins, platform admins).
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/credits/usage", tag = "credits", params(UsageQuery), responses((status = 200, description = "A page of usage rows with their totals (JSON), or the rows as CSV", body = Value)))]
async fn usage(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Response> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    let by = dimensions(q.by.as_deref())?;
    let to = q.to.unwrap_or_else(Utc::now);
    let from = q.from.unwrap_or(to - Duration::days(30));
    if from >= to {
        return Err(ApiError::invalid("to", "must be after `from`"));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::invalid("format", "json or csv")),
    };
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit", "must be between 1 and 1000")),
    };
    let offset = match q.cursor {
        None => 0,
        Some(n) if (0..=MAX_CURSOR).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("cursor", "the `next` of a previous page")),
    };
    // The grouping is chosen by flags, not by building SQL: an unselected dimension is null
    // for every row and so groups nothing apart.
    let mut rows: Vec<UsageRow> = sqlx::query_as(
        "select case when $4 then (created_at at time zone 'UTC')::date end as day,
                case when $5 then application end as application,
                case when $6 then operation_code end as operation_code,
                case when $7 then user_id end as user_id,
                count(*) as operations, sum(amount)::bigint as credits
         from credit_ledger
         where tenant_id = $1 and kind = 'consumption' and created_at >= $2 and created_at < $3
         group by 1, 2, 3, 4
         order by 1, 2, 3, 4 nulls first
         offset $8 limit $9",
    )
    .bind(tenant_id)
    .bind(from)
    .bind(to)
    .bind(by.day)
    .bind(by.app)
    .bind(by.operation)
    .bind(by.user)
    .bind(offset)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let next = (rows.len() as i64 > limit).then_some(offset + limit);
    rows.truncate(limit as usize);
    if csv {
        return Ok(as_csv(&rows, by, next));
    }
    let totals: (i64, Option<i64>) = sqlx::query_as(
        "select count(*), sum(amount)::bigint from credit_ledger
         where tenant_id = $1 and kind = 'consumption' and created_at >= $2 and created_at < $3",
    )
    .bind(tenant_id)
    .bind(from)
    .bind(to)
    .fetch_one(&state.db)
    .await?;
    Ok(Json(serde_json::json!({
        "from": from, "to": to,
        "items": rows,
        "totals": {"operations": totals.0, "credits": totals.1.unwrap_or(0)},
        "next": next,
    }))
    .into_response())
}

/// The rows as CSV, the selected dimensions first; the next page's cursor in `X-Next-Cursor`.
fn as_csv(rows: &[UsageRow], by: Dimensions, next: Option<i64>) -> Response {
    let mut header = Vec::new();
    for (on, name) in [
        (by.day, "day"),
        (by.app, "application"),
        (by.operation, "operation_code"),
        (by.user, "user_id"),
    ] {
        if on {
            header.push(name);
        }
    }
    header.extend(["operations", "credits"]);
    let mut out = header.join(",") + "\n";
    for r in rows {
        let mut cells = Vec::new();
        if by.day {
            cells.push(r.day.map(|d| d.to_string()).unwrap_or_default());
        }
        if by.app {
            cells.push(csv_cell(r.application.as_deref()));
        }
        if by.operation {
            cells.push(csv_cell(r.operation_code.as_deref()));
        }
        if by.user {
            cells.push(r.user_id.map(|u| u.to_string()).unwrap_or_default());
        }
        cells.push(r.operations.to_string());
        cells.push(r.credits.to_string());
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    let mut response = out.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n.to_string()).ok()) {
        headers.insert("x-next-cursor", next);
    }
    response
}

/// A CSV cell: quoted when it holds a separator, a quote or a line break; a leading `=`, `+`,
/// `-` or `@` is prefixed with `'` so a spreadsheet does not run it as a formula.
fn csv_cell(value: Option<&str>) -> String {
    let value = value.unwrap_or_default();
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell(Some("crm")), "crm");
        assert_eq!(csv_cell(Some("a,b")), "\"a,b\"");
        assert_eq!(csv_cell(Some("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell(Some("=1+1")), "'=1+1");
        assert_eq!(csv_cell(None), "");
    }

    #[test]
    fn unknown_dimensions_are_named() {
        assert!(dimensions(Some("app,day")).is_ok());
        let refused = dimensions(Some("app,tenant"));
        assert!(matches!(refused, Err(ApiError::Validation { ref field, .. }) if field == "by"));
    }
}
