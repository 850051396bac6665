//! CRM: accounts owned by the wrapper's users, on MongoDB. Everything about tenants, users,
//! sessions and credits comes from sync-sdk; this crate is only the CRM's own domain.
//!
//! * Accounts reference their owner by user id; listings show the owner's current name and email
//!   from the synced copy, and "[Deleted User]" when the owner is gone upstream.
//! * Creating an account consumes the `crm.accounts.create` cost (35 unless the tenant's credit
//!   config says otherwise) and is refused without credits.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use clap::Parser;
use mongodb::{
    Collection,
    bson::{Document, doc},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;
use sync_sdk::{
    app::{AppArgs, AppKit, BoundApp, FieldReferences},
    auth::TenantUser,
    consumer::NoHandler,
    credits::offline::{Consumed, CreditError},
    html::table,
    http::{PageQuery, problem, serve_tenant},
    store::{TenantStore, live_user, mongo::MongoStore},
    web::{PageUser, dashboard_header, html},
};
use uuid::Uuid;

/// The header that makes account creation safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(
        &*e.kind,
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000
    )
}

/// Whether two account documents describe the same request (tenant, name, value, owner).
fn same_account(a: &Document, b: &Document) -> bool {
    ["tenantId", "name", "value", "ownerId"]
        .iter()
        .all(|k| a.get(k) == b.get(k))
}

/// The operation code of account creation.
pub const CREATE_ACCOUNT: &str = "crm.accounts.create";
/// Its cost when the tenant has no credit config for it.
pub const DEFAULT_COST: i64 = 35;
/// Shown for owners deleted or missing upstream.
pub const DELETED_USER: &str = "[Deleted User]";

/// CRM settings (`crm --help`).
#[derive(Debug, Clone, Parser)]
#[command(name = "crm", version, about = "Tenantsync example CRM")]
pub struct Settings {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CRM_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// What every Tenantsync app is configured with.
    #[command(flatten)]
    pub app: AppArgs,
}

/// The CRM's own part of the router state (the SDK's part is in [`sync_sdk::app::AppState`]).
struct Crm {
    accounts: Collection<Document>,
}

type AppState = sync_sdk::app::AppState<Crm>;

/// Connect, create indexes and groups, bind: the app, ready to run.
pub async fn build(settings: Settings) -> anyhow::Result<BoundApp<NoHandler, FieldReferences>> {
    let kit = AppKit::start("crm", &settings.app, NoHandler).await?;
    let accounts = kit.database.collection::<Document>("accounts");
    accounts
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"tenantId": 1, "_id": 1})
                .build(),
        )
        .await?;
    // The nightly integrity pass: accounts whose owner is gone upstream are kept and marked
    // `ownerOrphaned`.
    let owners = FieldReferences::new(accounts.clone(), "account", "ownerId");
    let state = kit.state(Crm { accounts });
    let router = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/", get(dashboard))
        .route("/accounts", get(list).post(create))
        .route("/accounts/{id}", get(read).patch(update).delete(remove))
        .with_state(state);
    kit.bind_with_integrity(settings.listen, router, owners)
        .await
}

/// The owner as listings show it: current name and email, or "[Deleted User]".
async fn owner(store: &MongoStore, tenant: Uuid, owner_id: Uuid) -> Value {
    match live_user(store, tenant, owner_id).await {
        Some(u) => json!({"id": owner_id, "name": u.full_name, "email": u.email}),
        None => json!({"id": owner_id, "name": DELETED_USER, "email": null}),
    }
}

async fn account_json(store: &MongoStore, tenant: Uuid, d: &Document) -> Value {
    let owner_id = d
        .get_str("ownerId")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    json!({
        "id": d.get_str("_id").unwrap_or_default(),
        "name": d.get_str("name").unwrap_or_default(),
        "value": d.get_i64("value").unwrap_or_default(),
        "owner": owner(store, tenant, owner_id).await,
        "ownerOrphaned": d.get_str("ownerOrphaned").ok(),
    })
}

/// The browser's dashboard: the tenant, the signed-in user and the latest accounts.
async fn dashboard(State(s): State<AppState>, PageUser(user): PageUser) -> Response {
    let t = user.tenant_id;
    serve_tenant(&s.loader, t, |_| async {
        let mut body = dashboard_header(&*s.store, &s.pages, &user, "CRM").await;
        let latest = s
            .accounts
            .find(doc! {"tenantId": t.to_string()})
            .sort(doc! {"_id": -1})
            .limit(10)
            .await;
        let mut rows = Vec::new();
        if let Ok(mut cursor) = latest {
            while cursor.advance().await.unwrap_or(false) {
                let Ok(d) = cursor.deserialize_current() else {
                    continue;
                };
                let a = account_json(&s.store, t, &d).await;
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                rows.push(vec![
                    text(&a["name"]),
                    a["value"].to_string(),
                    text(&a["owner"]["name"]),
                ]);
            }
        }
        body.push_str("<h2>Latest accounts</h2>");
        body.push_str(&table(
            "accounts",
            &["Account", "Value", "Owner"],
            &rows,
            "No accounts yet.",
        ));
        html(StatusCode::OK, "CRM", &body)
    })
    .await
}

async fn list(State(s): State<AppState>, user: TenantUser, page: PageQuery) -> Response {
    let t = user.tenant_id;
    let limit = page.limit;
    serve_tenant(&s.loader, t, |_| async {
        let mut filter = doc! {"tenantId": t.to_string()};
        if let Some(after) = &page.cursor {
            filter.insert("_id", doc! {"$gt": after});
        }
        let found = async {
            let mut cursor = s
                .accounts
                .find(filter)
                .sort(doc! {"_id": 1})
                .limit(limit + 1)
                .await?;
            let mut out = Vec::new();
            while cursor.advance().await? {
                out.push(account_json(&s.store, t, &cursor.deserialize_current()?).await);
            }
            Ok::<_, mongodb::error::Error>(out)
        };
        match found.await {
            Ok(items) => Json(PageQuery::page(items, limit, |a| a["id"].clone())).into_response(),
            Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string()),
        }
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewAccount {
    name: String,
    value: i64,
    owner_id: Uuid,
}

/// The tenant's cost of creating an account (its synced credit config, else the default).
async fn cost(store: &MongoStore, tenant: Uuid) -> i64 {
    store
        .credit_cost(tenant, "crm", CREATE_ACCOUNT)
        .await
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_COST)
}

/// The account id of a request: random, or — with an `Idempotency-Key` header — derived from
/// the tenant and the key, so a retried request names the same account and the same credit
/// operation (charged once, created once).
fn account_id(tenant: Uuid, headers: &HeaderMap) -> Result<(Uuid, bool), &'static str> {
    let Some(key) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok((Uuid::now_v7(), false));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("must be 1-200 visible ASCII characters")?;
    let digest = sha2::Sha256::digest(format!("{tenant}\n{key}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8: custom, name-based
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    Ok((Uuid::from_bytes(bytes), true))
}

async fn create(
    State(s): State<AppState>,
    user: TenantUser,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let t = user.tenant_id;
    let req: NewAccount = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, Some("body"), &e.to_string()),
    };
    let (id, idempotent) = match account_id(t, &headers) {
        Ok(id) => id,
        Err(reason) => return problem(StatusCode::BAD_REQUEST, Some(IDEMPOTENCY_KEY), reason),
    };
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return problem(
            StatusCode::BAD_REQUEST,
            Some("name"),
            "must be 1-200 characters",
        );
    }
    if req.value < 0 {
        return problem(
            StatusCode::BAD_REQUEST,
            Some("value"),
            "must not be negative",
        );
    }
    serve_tenant(&s.loader, t, |_| async {
        let owner_known = live_user(&*s.store, t, req.owner_id).await.is_some();
        if !owner_known {
            return problem(
                StatusCode::BAD_REQUEST,
                Some("ownerId"),
                "no such user in this tenant",
            );
        }
        let charged = s
            .credits
            .consume(
                t,
                "crm",
                CREATE_ACCOUNT,
                &id.to_string(),
                cost(&s.store, t).await,
            )
            .await;
        match charged {
            Ok(Consumed::Charged(_) | Consumed::Queued) => {}
            Err(CreditError::Insufficient { balance }) => {
                let mut r = problem(
                    StatusCode::PAYMENT_REQUIRED,
                    None,
                    "not enough credits to create an account",
                );
                r.headers_mut().insert(
                    "x-credit-balance",
                    balance.to_string().parse().expect("digits"),
                );
                return r;
            }
            Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string()),
        }
        let doc = doc! {"_id": id.to_string(), "tenantId": t.to_string(), "name": &name,
        "value": req.value, "ownerId": req.owner_id.to_string()};
        match s.accounts.insert_one(doc.clone()).await {
            Ok(_) => (
                StatusCode::CREATED,
                Json(account_json(&s.store, t, &doc).await),
            )
                .into_response(),
            Err(e) if idempotent && is_duplicate_key(&e) => {
                // A retry (or a concurrent twin) of a request that created the account.
                let existing = s.accounts.find_one(doc! {"_id": id.to_string()}).await;
                match existing {
                    Ok(Some(found)) if same_account(&found, &doc) => (
                        StatusCode::OK,
                        Json(account_json(&s.store, t, &found).await),
                    )
                        .into_response(),
                    Ok(Some(_)) => problem(
                        StatusCode::CONFLICT,
                        Some(IDEMPOTENCY_KEY),
                        "this key was used for a different account",
                    ),
                    Ok(None) => problem(StatusCode::SERVICE_UNAVAILABLE, None, "try again"),
                    Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string()),
                }
            }
            Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string()),
        }
    })
    .await
}

async fn read(State(s): State<AppState>, user: TenantUser, Path(id): Path<Uuid>) -> Response {
    let t = user.tenant_id;
    serve_tenant(&s.loader, t, |_| async {
        match s
            .accounts
            .find_one(doc! {"_id": id.to_string(), "tenantId": t.to_string()})
            .await
        {
            Ok(Some(d)) => Json(account_json(&s.store, t, &d).await).into_response(),
            Ok(None) => problem(StatusCode::NOT_FOUND, None, "no such account"),
            Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string()),
        }
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccountChange {
    name: Option<String>,
    value: Option<i64>,
    owner_id: Option<Uuid>,
}

async fn update(
    State(s): State<AppState>,
    user: TenantUser,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> Response {
    let t = user.tenant_id;
    let change: AccountChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return problem(StatusCode::BAD_REQUEST, Some("body"), &e.to_string()),
    };
    let mut set = Document::new();
    if let Some(name) = change.name.map(|n| n.trim().to_owned()) {
        if name.is_empty() || name.chars().count() > 200 {
            return problem(
                StatusCode::BAD_REQUEST,
                Some("name"),
                "must be 1-200 characters",
            );
        }
        set.insert("name", name);
    }
    if let Some(value) = change.value {
        if value < 0 {
            return problem(
                StatusCode::BAD_REQUEST,
                Some("value"),
                "must not be negative",
            );
        }
        set.insert("value", value);
    }
    serve_tenant(&s.loader, t, |_| async {
        if let Some(owner_id) = change.owner_id {
            if live_user(&*s.store, t, owner_id).await.is_none() {
                return problem(
                    StatusCode::BAD_REQUEST,
                    Some("ownerId"),
                    "no such user in this tenant",
                );
            }
            set.insert("ownerId", owner_id.to_string());
        }
        let filter = doc! {"_id": id.to_string(), "tenantId": t.to_string()};
        let updated = s
            .accounts
            .find_one_and_update(filter, doc! {"$set": set})
            .return_document(mongodb::options::ReturnDocument::After)
            .await;
        match updated {
            Ok(Some(d)) => Json(account_json(&s.store, t, &d).await).into_response(),
            Ok(None) => problem(StatusCode::NOT_FOUND, None, "no such account"),
            Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string()),
        }
    })
    .await
}

async fn remove(State(s): State<AppState>, user: TenantUser, Path(id): Path<Uuid>) -> Response {
    let t = user.tenant_id;
    serve_tenant(&s.loader, t, |_| async {
        match s
            .accounts
            .delete_one(doc! {"_id": id.to_string(), "tenantId": t.to_string()})
            .await
        {
            Ok(r) if r.deleted_count == 1 => StatusCode::NO_CONTENT.into_response(),
            Ok(_) => problem(StatusCode::NOT_FOUND, None, "no such account"),
            Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string()),
        }
    })
    .await
}
