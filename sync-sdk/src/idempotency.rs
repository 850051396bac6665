//! Retry-safe creates (feature `app`): the `Idempotency-Key` header of a create names the
//! resource it makes, so a retried or duplicated request creates it once and charges its
//! credits once.
//!
//! Without the header a create gets a fresh id. With it, the id is derived from the tenant and
//! the key ([`IdempotencyKey::resource_id`]); use that id as the credit operation id too, then
//! [`insert_once`]: the first request inserts, a repeat finds the same document (`200` instead
//! of `201`, nothing charged again: the wrapper answers a repeated operation id with its first
//! receipt), and the same key with another body is a `409` naming the header.
//!
//! [`insert_paid`] does all of it in one call (charge the app's operation, then insert the
//! document with its id and `tenantId` set): what a handler of a paid create should use.
//!
//! ```no_run
//! # use sync_sdk::{http::AppResult, idempotency::{IdempotencyKey, insert_once}};
//! # use mongodb::bson::{Document, doc};
//! # async fn create(key: IdempotencyKey, tenant: uuid::Uuid, projects: mongodb::Collection<Document>,
//! #     credits: &sync_sdk::credits::offline::CreditClient<sync_sdk::store::mongo::MongoStore>) -> AppResult<()> {
//! let id = key.resource_id(tenant);
//! credits.consume(tenant, "projects", "projects.create", &id.to_string(), 1).await?;
//! let project = doc! {"_id": id.to_string(), "tenantId": tenant.to_string(), "name": "Apollo"};
//! let (status, stored) = insert_once(&projects, project, &key, &["tenantId", "name"]).await?;
//! # Ok(()) }
//! ```

use axum::{extract::FromRequestParts, http::StatusCode, http::request::Parts};
use mongodb::{
    Collection,
    bson::{Document, doc},
};
use sha2::Digest;
use uuid::Uuid;

use crate::http::{AppError, AppResult};

/// The header (lowercase, as `http` names it).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The `Idempotency-Key` of a request, if it has one (1–200 visible ASCII characters; anything
/// else is a problem naming the header).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdempotencyKey(Option<String>);

impl IdempotencyKey {
    /// A request with `key` (for tests and non-HTTP callers).
    pub fn new(key: Option<&str>) -> AppResult<Self> {
        match key {
            None => Ok(Self(None)),
            Some(k)
                if !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Ok(Self(Some(k.to_owned())))
            }
            Some(_) => Err(AppError::invalid(
                IDEMPOTENCY_KEY,
                "must be 1-200 visible ASCII characters",
            )),
        }
    }

    /// Whether the request carries a key.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The id of the resource this request creates: random without a key; with one, the same
    /// for every request of `tenant` with that key (a name-based UUID, version 8), so a retry
    /// names the same resource and the same credit operation.
    pub fn resource_id(&self, tenant: Uuid) -> Uuid {
        let Some(key) = &self.0 else {
            return Uuid::now_v7();
        };
        let digest = sha2::Sha256::digest(format!("{tenant}\n{key}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8: custom, name-based
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
        Uuid::from_bytes(bytes)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.headers.get(IDEMPOTENCY_KEY) {
            None => Ok(Self(None)),
            Some(v) => Self::new(Some(v.to_str().unwrap_or(""))),
        }
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(
        &*e.kind,
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000
    )
}

/// Insert `doc` (whose `_id` is [`IdempotencyKey::resource_id`]) once. `201` with it when
/// inserted now; for a repeat of a keyed request, `200` with the stored document when its
/// `same` fields equal the new one's, else `409` naming the header. Without a key a duplicate
/// id is an ordinary conflict.
pub async fn insert_once(
    collection: &Collection<Document>,
    doc: Document,
    key: &IdempotencyKey,
    same: &[&str],
) -> AppResult<(StatusCode, Document)> {
    match collection.insert_one(doc.clone()).await {
        Ok(_) => Ok((StatusCode::CREATED, doc)),
        Err(e) if key.is_set() && is_duplicate_key(&e) => {
            let id = doc.get("_id").cloned().unwrap_or(mongodb::bson::Bson::Null);
            match collection.find_one(doc! {"_id": id}).await? {
                Some(found) if same.iter().all(|k| found.get(k) == doc.get(k)) => {
                    Ok((StatusCode::OK, found))
                }
                Some(_) => Err(AppError::Conflict {
                    field: Some(IDEMPOTENCY_KEY),
                    message: "this key was used for a different request".into(),
                }),
                None => Err(AppError::Unavailable("the resource vanished; retry".into())),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A paid, retry-safe create in one call: charge `operation` (one unit, at the tenant's price)
/// to the app of `state`, for `caller` (the signed-in user of the tenant), under the key's resource id ([`IdempotencyKey::resource_id`]), then
/// insert `doc` once with that id as `_id` and the tenant's id as `tenantId` (any `_id` or
/// `tenantId` it had is replaced: a document of another tenant cannot be made here). The
/// caller is recorded in the ledger. Answers as [`insert_once`]: `201` with the document when
/// created now; a retry with the same key and the same `same` fields is `200` with the stored
/// one and charged nothing again (the wrapper answers a repeated operation id with its first
/// receipt); the same key with other fields is `409`. Without credits: `402` and nothing
/// inserted.
///
/// ```no_run
/// # use sync_sdk::{app::{AppState, LoadedTenant}, http::AppResult, idempotency::{IdempotencyKey, insert_paid}};
/// # use sync_sdk::mongodb::bson::{Document, doc};
/// # async fn create(s: AppState<()>, tenant: LoadedTenant, key: IdempotencyKey,
/// #     notes: sync_sdk::mongodb::Collection<Document>) -> AppResult<()> {
/// let note = doc! {"title": "Minutes", "authorId": tenant.user.user_id.to_string()};
/// let (status, stored) =
///     insert_paid(&s, &tenant.user, "notes.create", &notes, &key, note, &["title"]).await?;
/// # Ok(()) }
/// ```
pub async fn insert_paid<T>(
    state: &crate::app::AppState<T>,
    caller: &crate::auth::TenantUser,
    operation: &str,
    collection: &Collection<Document>,
    key: &IdempotencyKey,
    mut doc: Document,
    same: &[&str],
) -> AppResult<(StatusCode, Document)> {
    let t = caller.tenant_id;
    let id = key.resource_id(t);
    state
        .credits
        .consume_as(
            Some(caller.user_id),
            t,
            &state.name,
            operation,
            &id.to_string(),
            1,
        )
        .await?;
    doc.insert("_id", id.to_string());
    doc.insert("tenantId", t.to_string());
    let mut same: Vec<&str> = same.to_vec();
    same.push("tenantId");
    insert_once(collection, doc, key, &same).await
}
