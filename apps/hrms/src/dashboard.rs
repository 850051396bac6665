//! The browser's dashboard: the tenant, the signed-in user and the first employees.

use crate::{AppState, employees::person};
use axum::{extract::State, http::StatusCode, response::Response};
use mongodb::bson::doc;
use sync_sdk::{
    html::table,
    http::{AppResult, serve_tenant},
    web::{PageUser, html},
};

pub(crate) async fn dashboard(State(s): State<AppState>, PageUser(user): PageUser) -> Response {
    let t = user.tenant_id;
    serve_tenant(&s.loader, t, |_| async {
        let mut body = s.dashboard_header(&user, "HRMS").await;
        let mut cursor = s
            .employees
            .find(doc! {"tenantId": t.to_string()})
            .sort(doc! {"_id": 1})
            .limit(10)
            .await?;
        let mut rows = Vec::new();
        while cursor.advance().await? {
            let e = cursor.deserialize_current()?;
            let name = person(&s.store, t, &e)
                .await
                .1
                .map_or_else(|| "[Deleted User]".to_owned(), |p| p.full_name);
            rows.push(vec![
                name,
                e.get_str("department").unwrap_or_default().to_owned(),
            ]);
        }
        body.push_str("<h2>Employees</h2>");
        body.push_str(&table(
            "employees",
            &["Name", "Department"],
            &rows,
            "No employees yet.",
        ));
        AppResult::Ok(html(StatusCode::OK, "HRMS", &body))
    })
    .await
}
