//! The account API: list, create (charging credits, retry-safe with `Idempotency-Key`), read,
//! update, delete. Handlers return [`AppResult`]: every refusal is a problem naming the field.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use mongodb::bson::{Document, doc};
use serde::{Deserialize, Serialize};
use sync_sdk::{
    auth::TenantUser,
    http::{AppError, AppResult, PageQuery, serve_tenant},
    idempotency::{IdempotencyKey, insert_paid},
    store::{live_user, mongo::MongoStore},
};
use uuid::Uuid;

use crate::{AppState, CREATE_ACCOUNT, DELETED_USER};

/// An account as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// Account id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: i64,
    /// Its owner, as the synced copy has them now.
    pub owner: Owner,
    /// Why the owner is no longer a live user (`inactive`, `deleted` or `missing`), set by the
    /// full sync and cleared by it once the owner is live again.
    pub owner_orphaned: Option<String>,
}

/// An account's owner.
#[derive(Debug, Serialize)]
pub struct Owner {
    /// The user id.
    pub id: Uuid,
    /// Their current name, or "[Deleted User]".
    pub name: String,
    /// Their current email, when they are a live user.
    pub email: Option<String>,
}

impl Account {
    /// The account stored as `d`, with its owner looked up in the synced copy.
    pub async fn load(store: &MongoStore, tenant: Uuid, d: &Document) -> Self {
        let owner_id = d
            .get_str("ownerId")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        let owner = match live_user(store, tenant, owner_id).await {
            Some(u) => Owner {
                id: owner_id,
                name: u.full_name,
                email: Some(u.email),
            },
            None => Owner {
                id: owner_id,
                name: DELETED_USER.into(),
                email: None,
            },
        };
        Account {
            id: d.get_str("_id").unwrap_or_default().to_owned(),
            name: d.get_str("name").unwrap_or_default().to_owned(),
            value: d.get_i64("value").unwrap_or_default(),
            owner,
            owner_orphaned: d.get_str("ownerOrphaned").ok().map(str::to_owned),
        }
    }
}

pub(crate) async fn list(State(s): State<AppState>, user: TenantUser, page: PageQuery) -> Response {
    let t = user.tenant_id;
    let limit = page.limit;
    serve_tenant(&s.loader, t, |_| async {
        let mut cursor = page.find(&s.accounts, t).await?;
        let mut items = Vec::new();
        while cursor.advance().await? {
            let account = Account::load(&s.store, t, &cursor.deserialize_current()?).await;
            items.push(serde_json::to_value(account).unwrap_or_default());
        }
        AppResult::Ok(Json(PageQuery::page(items, limit, |a| a["id"].clone())))
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

fn valid_name(name: &str) -> AppResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AppError::invalid("name", "must be 1-200 characters"));
    }
    Ok(name.to_owned())
}

fn valid_value(value: i64) -> AppResult<i64> {
    if value < 0 {
        return Err(AppError::invalid("value", "must not be negative"));
    }
    Ok(value)
}

async fn live_owner(store: &MongoStore, tenant: Uuid, owner: Uuid) -> AppResult<()> {
    match live_user(store, tenant, owner).await {
        Some(_) => Ok(()),
        None => Err(AppError::invalid("ownerId", "no such user in this tenant")),
    }
}

pub(crate) async fn create(
    State(s): State<AppState>,
    user: TenantUser,
    key: IdempotencyKey,
    bytes: axum::body::Bytes,
) -> Response {
    let t = user.tenant_id;
    let checked = (|| {
        let req: NewAccount = sync_sdk::http::parse_body(&bytes)?;
        AppResult::Ok((
            valid_name(&req.name)?,
            valid_value(req.value)?,
            req.owner_id,
        ))
    })();
    let (name, value, owner_id) = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    serve_tenant(&s.loader, t, |_| async {
        live_owner(&s.store, t, owner_id).await?;
        // Charged to the caller (usage reports break consumption down by user) and created
        // once, however often the client retries with its Idempotency-Key.
        let doc = doc! {"name": &name, "value": value, "ownerId": owner_id.to_string()};
        let same = ["name", "value", "ownerId"];
        let (status, stored) =
            insert_paid(&s, &user, CREATE_ACCOUNT, &s.accounts, &key, doc, &same).await?;
        AppResult::Ok((status, Json(Account::load(&s.store, t, &stored).await)))
    })
    .await
}

pub(crate) async fn read(
    State(s): State<AppState>,
    user: TenantUser,
    Path(id): Path<Uuid>,
) -> Response {
    let t = user.tenant_id;
    serve_tenant(&s.loader, t, |_| async {
        let found = s
            .accounts
            .find_one(doc! {"_id": id.to_string(), "tenantId": t.to_string()})
            .await?
            .ok_or(AppError::NotFound("no such account"))?;
        AppResult::Ok(Json(Account::load(&s.store, t, &found).await))
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

pub(crate) async fn update(
    State(s): State<AppState>,
    user: TenantUser,
    Path(id): Path<Uuid>,
    bytes: axum::body::Bytes,
) -> Response {
    let t = user.tenant_id;
    let checked = (|| {
        let change: AccountChange = sync_sdk::http::parse_body(&bytes)?;
        let mut set = Document::new();
        if let Some(name) = &change.name {
            set.insert("name", valid_name(name)?);
        }
        if let Some(value) = change.value {
            set.insert("value", valid_value(value)?);
        }
        AppResult::Ok((set, change.owner_id))
    })();
    let (mut set, owner_id) = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    serve_tenant(&s.loader, t, |_| async {
        if let Some(owner_id) = owner_id {
            live_owner(&s.store, t, owner_id).await?;
            set.insert("ownerId", owner_id.to_string());
        }
        let filter = doc! {"_id": id.to_string(), "tenantId": t.to_string()};
        let updated = s
            .accounts
            .find_one_and_update(filter, doc! {"$set": set})
            .return_document(mongodb::options::ReturnDocument::After)
            .await?
            .ok_or(AppError::NotFound("no such account"))?;
        AppResult::Ok(Json(Account::load(&s.store, t, &updated).await))
    })
    .await
}

pub(crate) async fn remove(
    State(s): State<AppState>,
    user: TenantUser,
    Path(id): Path<Uuid>,
) -> Response {
    let t = user.tenant_id;
    serve_tenant(&s.loader, t, |_| async {
        let deleted = s
            .accounts
            .delete_one(doc! {"_id": id.to_string(), "tenantId": t.to_string()})
            .await?;
        if deleted.deleted_count == 1 {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(AppError::NotFound("no such account"))
        }
    })
    .await
}
