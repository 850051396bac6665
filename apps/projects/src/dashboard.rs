//! The browser's dashboard: the tenant, the signed-in user and the latest projects.

use sync_sdk::{
    axum::{extract::State, http::StatusCode, response::Response},
    html::table,
    http::{AppResult, serve_tenant},
    mongodb::bson::doc,
    web::{PageUser, html},
};

use crate::{AppState, projects::Project};

pub(crate) async fn dashboard(State(s): State<AppState>, PageUser(user): PageUser) -> Response {
    let t = user.tenant_id;
    serve_tenant(&s.loader, t, |_| async {
        let mut body = s.dashboard_header(&user, "Projects").await;
        let mut cursor = s
            .projects
            .find(doc! {"tenantId": t.to_string()})
            .sort(doc! {"_id": -1})
            .limit(10)
            .await?;
        let mut rows = Vec::new();
        while cursor.advance().await? {
            let p = Project::load(&s.store, t, &cursor.deserialize_current()?).await;
            let members: Vec<String> = p.members.into_iter().map(|m| m.name).collect();
            rows.push(vec![p.name, p.owner.name, members.join(", ")]);
        }
        body.push_str("<h2>Latest projects</h2>");
        body.push_str(&table(
            "projects",
            &["Project", "Owner", "Members"],
            &rows,
            "No projects yet.",
        ));
        AppResult::Ok(html(StatusCode::OK, "Projects", &body))
    })
    .await
}
