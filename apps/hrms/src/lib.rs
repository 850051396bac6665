//! HRMS: employees (a wrapper user, a department, a salary) on MongoDB. Salaries are visible
//! to tenant admins only; who is an admin comes from the synced roles and memberships.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Parser;
use mongodb::bson::{Document, doc};
use serde::Deserialize;
use serde_json::{Value, json};
use sync_sdk::{
    app::{AppArgs, AppKit, BoundApp, FieldReferences},
    auth::TenantUser,
    consumer::NoHandler,
    html::table,
    http::{AppError, AppResult, PageQuery, serve_tenant},
    store::live_user,
    web::{PageUser, dashboard_header, html},
};
use uuid::Uuid;

/// The permission of tenant admins (the wrapper's built-in `admin` role).
pub const ADMIN_PERMISSION: &str = "tenant.admin";

/// HRMS settings (`hrms --help`).
#[derive(Debug, Clone, Parser)]
#[command(name = "hrms", version, about = "Tenantsync example HRMS")]
pub struct Settings {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "HRMS_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// What every Tenantsync app is configured with.
    #[command(flatten)]
    pub app: AppArgs,
}

/// The HRMS's own part of the router state (the SDK's part is in [`sync_sdk::app::AppState`]).
struct Hrms {
    employees: mongodb::Collection<Document>,
}

type AppState = sync_sdk::app::AppState<Hrms>;

/// Connect, prepare, bind: the app, ready to run.
pub async fn build(settings: Settings) -> anyhow::Result<BoundApp<NoHandler, FieldReferences>> {
    let kit = AppKit::start("hrms", &settings.app, NoHandler).await?;
    let employees = kit.database.collection::<Document>("employees");
    employees
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"tenantId": 1, "userId": 1})
                .build(),
        )
        .await?;
    let references = FieldReferences::new(employees.clone(), "employee", "userId");
    let state = kit.state(Hrms { employees });
    let router = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/", get(dashboard))
        .route("/employees", get(list).post(create))
        .with_state(state);
    // The nightly integrity pass: employees whose user is gone upstream are kept and marked
    // `userOrphaned`.
    kit.bind_with_integrity(settings.listen, router, references)
        .await
}

/// The browser's dashboard: the tenant, the signed-in user and the first employees.
async fn dashboard(State(s): State<AppState>, PageUser(user): PageUser) -> Response {
    let t = user.tenant_id;
    serve_tenant(&s.loader, t, |_| async {
        let mut body = dashboard_header(&*s.store, &s.pages, &user, "HRMS").await;
        let first = s
            .employees
            .find(doc! {"tenantId": t.to_string()})
            .sort(doc! {"_id": 1})
            .limit(10)
            .await;
        let mut rows = Vec::new();
        if let Ok(mut cursor) = first {
            while cursor.advance().await.unwrap_or(false) {
                let Ok(e) = cursor.deserialize_current() else {
                    continue;
                };
                let user_id: Uuid = e
                    .get_str("userId")
                    .ok()
                    .and_then(|u| u.parse().ok())
                    .unwrap_or_default();
                let person = live_user(&*s.store, t, user_id).await;
                let name = person.as_ref().map(|p| p.full_name.clone());
                rows.push(vec![
                    name.unwrap_or_else(|| "[Deleted User]".into()),
                    e.get_str("department").unwrap_or_default().to_owned(),
                ]);
            }
        }
        body.push_str("<h2>Employees</h2>");
        body.push_str(&table(
            "employees",
            &["Name", "Department"],
            &rows,
            "No employees yet.",
        ));
        html(StatusCode::OK, "HRMS", &body)
    })
    .await
}

async fn list(State(s): State<AppState>, user: TenantUser, page: PageQuery) -> Response {
    let t = user.tenant_id;
    let limit = page.limit;
    serve_tenant(&s.loader, t, |_| async {
        let admin = user.has(ADMIN_PERMISSION);
        let mut filter = doc! {"tenantId": t.to_string()};
        if let Some(after) = &page.cursor {
            filter.insert("_id", doc! {"$gt": after});
        }
        let mut cursor = s
            .employees
            .find(filter)
            .sort(doc! {"_id": 1})
            .limit(limit + 1)
            .await?;
        let mut items = Vec::new();
        while cursor.advance().await? {
            let e = cursor.deserialize_current()?;
            let user_id: Uuid = e
                .get_str("userId")
                .ok()
                .and_then(|u| u.parse().ok())
                .unwrap_or_default();
            let person = live_user(&*s.store, t, user_id).await;
            let mut item = json!({
                "id": e.get_str("_id").unwrap_or_default(),
                "userId": user_id,
                "name": person.as_ref().map_or(json!("[Deleted User]"), |p| json!(p.full_name)),
                "email": person.as_ref().map_or(Value::Null, |p| json!(p.email)),
                "department": e.get_str("department").unwrap_or_default(),
            });
            if admin {
                item["salary"] = json!(e.get_i64("salary").unwrap_or_default());
            }
            items.push(item);
        }
        let mut body = PageQuery::page(items, limit, |e| e["id"].clone());
        body["salariesVisible"] = json!(admin);
        AppResult::Ok(Json(body))
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewEmployee {
    user_id: Uuid,
    department: String,
    salary: i64,
}

fn new_employee(body: &[u8]) -> AppResult<NewEmployee> {
    let req: NewEmployee =
        serde_json::from_slice(body).map_err(|e| AppError::invalid("body", e.to_string()))?;
    if req.department.trim().is_empty() || req.department.len() > 100 {
        return Err(AppError::invalid("department", "must be 1-100 characters"));
    }
    if req.salary < 0 {
        return Err(AppError::invalid("salary", "must not be negative"));
    }
    Ok(req)
}

async fn create(State(s): State<AppState>, user: TenantUser, body: axum::body::Bytes) -> Response {
    let t = user.tenant_id;
    let req = match new_employee(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    serve_tenant(&s.loader, t, |_| async {
        if !user.has(ADMIN_PERMISSION) {
            return Err(AppError::Forbidden("tenant admins only"));
        }
        if live_user(&*s.store, t, req.user_id).await.is_none() {
            return Err(AppError::invalid("userId", "no such user in this tenant"));
        }
        let id = Uuid::now_v7().to_string();
        let doc = doc! {"_id": &id, "tenantId": t.to_string(), "userId": req.user_id.to_string(),
        "department": req.department.trim(), "salary": req.salary};
        s.employees.insert_one(doc).await?;
        Ok((StatusCode::CREATED, Json(json!({"id": id}))))
    })
    .await
}
