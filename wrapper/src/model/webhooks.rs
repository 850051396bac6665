//! Webhook endpoints of a tenant and their deliveries: registering an endpoint (its secret
//! sealed), listing and removing endpoints, reading deliveries with their attempts, and sending a
//! dead delivery again, each audited. How deliveries are made, signed and retried is
//! `crate::webhooks`.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    ids::{TenantId, UserId},
    limits::Limit,
    users::ensure_active_tenant,
};
use crate::{
    context::Ctx,
    error::{ApiError, ApiResult},
};

/// A registered endpoint (its secret only in the reply to its registration).
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    id: Uuid,
    tenant_id: Uuid,
    url: String,
    event_types: Vec<String>,
    active: bool,
    created_at: chrono::DateTime<chrono::Utc>,
    /// The signing secret (`whsec_…`): returned once, when the endpoint is registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[sqlx(default)]
    secret: Option<String>,
}

const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, event_types, active, created_at";

/// A delivery of one event to one endpoint.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    id: Uuid,
    endpoint_id: Uuid,
    event_id: Uuid,
    event_type: String,
    /// `pending`, `delivered` or `dead` (dead-lettered after the last attempt).
    status: String,
    attempts: i32,
    last_error: Option<String>,
    /// When a pending delivery is tried next.
    next_attempt_at: chrono::DateTime<chrono::Utc>,
    created_at: chrono::DateTime<chrono::Utc>,
    delivered_at: Option<chrono::DateTime<chrono::Utc>>,
}

const DELIVERY_COLUMNS: &str =
    "id, endpoint_id, event_id, event_type, status, attempts, last_error,
    next_attempt_at, created_at, delivered_at";

/// One attempt of a delivery.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAttempt {
    attempt: i32,
    at: chrono::DateTime<chrono::Utc>,
    /// The endpoint's HTTP status, if it answered.
    status_code: Option<i32>,
    /// Why it failed, if it did.
    error: Option<String>,
    duration_ms: i32,
}

/// An endpoint to register, its secret sealed by the caller.
#[derive(Debug)]
pub struct NewEndpoint {
    /// Its id (the secret is sealed under it).
    pub id: Uuid,
    /// Where deliveries are posted (checked).
    pub url: String,
    /// The event types to deliver (parsed, without repeats).
    pub event_types: Vec<String>,
    /// The id of the key that sealed the secret.
    pub kek: String,
    /// The sealed secret.
    pub sealed: Vec<u8>,
}

/// Register an endpoint of `tenant` for `admin`, within `limit` active endpoints: audited.
pub(crate) async fn create(
    db: &PgPool,
    ctx: &Ctx,
    admin: UserId,
    tenant: TenantId,
    new: NewEndpoint,
    limit: Limit,
) -> ApiResult<WebhookEndpoint> {
    let mut tx = db.begin().await?;
    ensure_active_tenant(&mut tx, tenant.0).await?;
    limit
        .check(
            &mut tx,
            tenant.0,
            "",
            "select count(*) from webhook_endpoints where tenant_id = $1 and active and $2 = $2",
        )
        .await?;
    let endpoint: WebhookEndpoint = sqlx::query_as(&format!(
        "insert into webhook_endpoints (id, tenant_id, url, event_types, secret_sealed, kek_id)
         values ($1, $2, $3, $4, $5, $6) returning {ENDPOINT_COLUMNS}"
    ))
    .bind(new.id)
    .bind(tenant)
    .bind(&new.url)
    .bind(&new.event_types)
    .bind(new.sealed)
    .bind(new.kek)
    .fetch_one(&mut *tx)
    .await?;
    audit(&mut tx, ctx, tenant, admin, "webhook.created", endpoint.id).await;
    tx.commit().await?;
    Ok(endpoint)
}

impl WebhookDelivery {
    /// The delivery's id (the deliveries' paging cursor).
    pub fn id(&self) -> Uuid {
        self.id
    }
}

impl WebhookEndpoint {
    /// Show the signing secret (in the reply to the registration only).
    pub fn with_secret(mut self, secret: String) -> Self {
        self.secret = Some(secret);
        self
    }
}

async fn audit(
    tx: &mut PgConnection,
    ctx: &Ctx,
    tenant: TenantId,
    admin: UserId,
    action: &str,
    endpoint: Uuid,
) {
    let entry = crate::audit::Entry {
        tenant_id: Some(tenant.0),
        actor_id: Some(admin.0),
        action,
        target: Some(endpoint.to_string()),
        outcome: "success",
        details: serde_json::json!({}),
    };
    crate::audit::record(tx, ctx, entry).await;
}

/// `tenant`'s active endpoints (without secrets).
pub async fn active(db: &PgPool, tenant: TenantId) -> ApiResult<Vec<WebhookEndpoint>> {
    Ok(sqlx::query_as(&format!(
        "select {ENDPOINT_COLUMNS} from webhook_endpoints where tenant_id = $1 and active order by id"
    ))
    .bind(tenant)
    .fetch_all(db)
    .await?)
}

/// The endpoint, if it is `tenant`'s (removed or not); else not found.
pub async fn ensure_of(db: &PgPool, tenant: TenantId, endpoint: Uuid) -> ApiResult<()> {
    let found: Option<bool> =
        sqlx::query_scalar("select true from webhook_endpoints where id = $1 and tenant_id = $2")
            .bind(endpoint)
            .bind(tenant)
            .fetch_optional(db)
            .await?;
    found
        .map(|_| ())
        .ok_or(ApiError::NotFound("webhook endpoint"))
}

/// Remove an active endpoint of `tenant` for `admin`: nothing more is delivered to it, its
/// pending deliveries are dead, its history stays; audited.
pub async fn remove(
    db: &PgPool,
    ctx: &Ctx,
    admin: UserId,
    tenant: TenantId,
    endpoint: Uuid,
) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    let removed = sqlx::query(
        "update webhook_endpoints set active = false where id = $1 and tenant_id = $2 and active",
    )
    .bind(endpoint)
    .bind(tenant)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if removed == 0 {
        return Err(ApiError::NotFound("webhook endpoint"));
    }
    sqlx::query(
        "update webhook_deliveries set status = 'dead', last_error = 'endpoint removed'
         where endpoint_id = $1 and status = 'pending'",
    )
    .bind(endpoint)
    .execute(&mut *tx)
    .await?;
    audit(&mut tx, ctx, tenant, admin, "webhook.removed", endpoint).await;
    tx.commit().await?;
    Ok(())
}

/// A page of an endpoint's deliveries (one more than `limit`), oldest first, after `after`,
/// in `status` if given.
pub async fn deliveries(
    db: &PgPool,
    endpoint: Uuid,
    status: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> ApiResult<Vec<WebhookDelivery>> {
    Ok(sqlx::query_as(&format!(
        "select {DELIVERY_COLUMNS} from webhook_deliveries
         where endpoint_id = $1 and ($4::text is null or status = $4) {}",
        super::paging::Keyset::clause("id", 2, 3)
    ))
    .bind(endpoint)
    .bind(after)
    .bind(limit + 1)
    .bind(status)
    .fetch_all(db)
    .await?)
}

/// A delivery of an endpoint with every attempt and the body it posts.
pub async fn delivery(
    db: &PgPool,
    endpoint: Uuid,
    delivery: Uuid,
) -> ApiResult<(WebhookDelivery, Vec<WebhookAttempt>, String)> {
    let found: Option<WebhookDelivery> = sqlx::query_as(&format!(
        "select {DELIVERY_COLUMNS} from webhook_deliveries where id = $1 and endpoint_id = $2"
    ))
    .bind(delivery)
    .bind(endpoint)
    .fetch_optional(db)
    .await?;
    let found = found.ok_or(ApiError::NotFound("delivery"))?;
    let attempts: Vec<WebhookAttempt> = sqlx::query_as(
        "select attempt, at, status_code, error, duration_ms from webhook_attempts
         where delivery_id = $1 order by id",
    )
    .bind(delivery)
    .fetch_all(db)
    .await?;
    let body: String = sqlx::query_scalar("select body from webhook_deliveries where id = $1")
        .bind(delivery)
        .fetch_one(db)
        .await?;
    Ok((found, attempts, body))
}

/// Send a dead delivery of an active endpoint once more, now, for `admin`; audited.
pub async fn retry(
    db: &PgPool,
    ctx: &Ctx,
    admin: UserId,
    tenant: TenantId,
    endpoint: Uuid,
    delivery: Uuid,
) -> ApiResult<()> {
    let mut tx = db.begin().await?;
    let retried = sqlx::query(
        "update webhook_deliveries d set status = 'pending', next_attempt_at = now()
         from webhook_endpoints e
         where d.id = $1 and d.endpoint_id = $2 and e.id = d.endpoint_id and e.active
           and d.status = 'dead'",
    )
    .bind(delivery)
    .bind(endpoint)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if retried == 0 {
        return Err(ApiError::Conflict(
            "only a dead delivery of an active endpoint is sent again".into(),
        ));
    }
    audit(&mut tx, ctx, tenant, admin, "webhook.retried", delivery).await;
    tx.commit().await?;
    Ok(())
}
