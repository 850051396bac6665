//! The employee API: a listing (salaries only for tenant admins) and creation (tenant admins).

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use mongodb::bson::{Document, doc};
use serde::Deserialize;
use serde_json::{Value, json};
use sync_sdk::{
    auth::TenantUser,
    contract::UserState,
    http::{AppError, AppResult, PageQuery, serve_tenant},
    store::{live_user, mongo::MongoStore},
};
use uuid::Uuid;

use crate::{ADMIN_PERMISSION, AppState};

/// The employee's user: their id, and their synced state while they are a live user.
pub(crate) async fn person(
    store: &MongoStore,
    tenant: Uuid,
    employee: &Document,
) -> (Uuid, Option<UserState>) {
    let user_id: Uuid = employee
        .get_str("userId")
        .ok()
        .and_then(|u| u.parse().ok())
        .unwrap_or_default();
    (user_id, live_user(store, tenant, user_id).await)
}

pub(crate) async fn list(State(s): State<AppState>, user: TenantUser, page: PageQuery) -> Response {
    let t = user.tenant_id;
    let limit = page.limit;
    serve_tenant(&s.loader, t, |_| async {
        let admin = user.has(ADMIN_PERMISSION);
        let mut cursor = page.find(&s.employees, t).await?;
        let mut items = Vec::new();
        while cursor.advance().await? {
            let e = cursor.deserialize_current()?;
            let (user_id, person) = person(&s.store, t, &e).await;
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
    let req: NewEmployee = sync_sdk::http::parse_body(body)?;
    if req.department.trim().is_empty() || req.department.len() > 100 {
        return Err(AppError::invalid("department", "must be 1-100 characters"));
    }
    if req.salary < 0 {
        return Err(AppError::invalid("salary", "must not be negative"));
    }
    Ok(req)
}

pub(crate) async fn create(
    State(s): State<AppState>,
    user: TenantUser,
    body: axum::body::Bytes,
) -> Response {
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
