//! The platform admin's tenants page.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::Response,
};
use sync_web::{html::table, page::html};
use utoipa_axum::{router::OpenApiRouter, routes};

use serde_json::Value;

use super::{Viewer, internal, nav, num, platform_viewer};
use crate::{auth::Caller, context::Ctx, error::ApiError, state::AppState};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(tenants_page))
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
