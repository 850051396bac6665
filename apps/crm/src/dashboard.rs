//! The browser's dashboard: the tenant, the signed-in user and the latest accounts.

use axum::{extract::State, http::StatusCode, response::Response};
use mongodb::bson::doc;
use sync_sdk::{
    html::table,
    http::{AppResult, serve_tenant},
    web::{PageUser, html},
};

use crate::{AppState, accounts::Account};

pub(crate) async fn dashboard(State(s): State<AppState>, PageUser(user): PageUser) -> Response {
    let t = user.tenant_id;
    serve_tenant(&s.loader, t, |_| async {
        let mut body = s.dashboard_header(&user, "CRM").await;
        let mut cursor = s
            .accounts
            .find(doc! {"tenantId": t.to_string()})
            .sort(doc! {"_id": -1})
            .limit(10)
            .await?;
        let mut rows = Vec::new();
        while cursor.advance().await? {
            let a = Account::load(&s.store, t, &cursor.deserialize_current()?).await;
            rows.push(vec![a.name, a.value.to_string(), a.owner.name]);
        }
        body.push_str("<h2>Latest accounts</h2>");
        body.push_str(&table(
            "accounts",
            &["Account", "Value", "Owner"],
            &rows,
            "No accounts yet.",
        ));
        AppResult::Ok(html(StatusCode::OK, "CRM", &body))
    })
    .await
}
