//! Webhook endpoints of a tenant and their deliveries (tenant admins): register an endpoint
//! for chosen event types (its signing secret is shown once), list and remove endpoints, see
//! every delivery with its attempts, and send a dead delivery again. See `crate::webhooks` for
//! how deliveries are made, signed and retried.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use sync_contract::EventType;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiJson, ApiQuery};
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    state::AppState,
};

/// Webhook routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(remove))
        .routes(routes!(deliveries))
        .routes(routes!(delivery))
        .routes(routes!(retry))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewEndpoint {
    /// Where deliveries are posted: HTTPS at a public address.
    url: String,
    /// The event types to deliver, e.g. `credit.threshold_reached`, `user.erased`.
    event_types: Vec<String>,
}

/// A registered endpoint (its secret only in the reply to its registration).
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct WebhookEndpoint {
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

#[utoipa::path(post, path = "/api/tenants/{id}/webhooks", tag = "webhooks", request_body = NewEndpoint, params(("id" = Uuid, Path, description = "The tenant")), responses((status = 201, description = "The endpoint, with its signing secret (shown this once; tenant admins)", body = WebhookEndpoint)))]
async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant): Path<Uuid>,
    ApiJson(req): ApiJson<NewEndpoint>,
) -> ApiResult<(StatusCode, Json<WebhookEndpoint>)> {
    let admin = caller
        .authorize(&state, &ctx, tenant, Access::Admin)
        .await?
        .id;
    let url = crate::webhooks::check_url(&req.url, &state.settings.webhook_insecure_hosts)?;
    let mut types: Vec<String> = Vec::new();
    for t in &req.event_types {
        let parsed: EventType = t
            .parse()
            .map_err(|_| ApiError::invalid("eventTypes", format!("'{t}' is not an event type")))?;
        if !types.iter().any(|k| k == parsed.as_str()) {
            types.push(parsed.as_str().to_owned());
        }
    }
    if types.is_empty() {
        return Err(ApiError::invalid(
            "eventTypes",
            "name at least one event type",
        ));
    }
    let secret = crate::webhooks::new_secret()?;
    let mut tx = state.db.begin().await?;
    crate::model::users::ensure_active_tenant(&mut tx, tenant).await?;
    crate::model::limits::Limit {
        setting: "WRAPPER_MAX_WEBHOOK_ENDPOINTS",
        what: "active webhook endpoints per tenant",
        max: state.settings.max_webhook_endpoints,
    }
    .check(
        &mut tx,
        tenant,
        "",
        "select count(*) from webhook_endpoints where tenant_id = $1 and active and $2 = $2",
    )
    .await?;
    let id = Uuid::now_v7();
    let (kek, sealed) = crate::webhooks::seal_secret(state.keys.keks(), id, &secret)?;
    let mut endpoint: WebhookEndpoint = sqlx::query_as(&format!(
        "insert into webhook_endpoints (id, tenant_id, url, event_types, secret_sealed, kek_id)
         values ($1, $2, $3, $4, $5, $6) returning {ENDPOINT_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(url.as_str())
    .bind(&types)
    .bind(sealed)
    .bind(kek)
    .fetch_one(&mut *tx)
    .await?;
    audit(&mut tx, &ctx, tenant, admin, "webhook.created", endpoint.id).await;
    tx.commit().await?;
    endpoint.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(endpoint)))
}

async fn audit(
    tx: &mut sqlx::PgConnection,
    ctx: &Ctx,
    tenant: Uuid,
    admin: Uuid,
    action: &str,
    endpoint: Uuid,
) {
    let entry = crate::audit::Entry {
        tenant_id: Some(tenant),
        actor_id: Some(admin),
        action,
        target: Some(endpoint.to_string()),
        outcome: "success",
        details: serde_json::json!({}),
    };
    crate::audit::record(tx, ctx, entry).await;
}

#[utoipa::path(get, path = "/api/tenants/{id}/webhooks", tag = "webhooks", params(("id" = Uuid, Path, description = "The tenant")), responses((status = 200, description = "The tenant's endpoints, without secrets (tenant admins)", body = Vec<WebhookEndpoint>)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant): Path<Uuid>,
) -> ApiResult<Json<Vec<WebhookEndpoint>>> {
    caller
        .authorize(&state, &ctx, tenant, Access::Admin)
        .await?;
    Ok(Json(
        sqlx::query_as(&format!(
            "select {ENDPOINT_COLUMNS} from webhook_endpoints where tenant_id = $1 and active order by id"
        ))
        .bind(tenant)
        .fetch_all(&state.db)
        .await?,
    ))
}

/// The endpoint, if it is the tenant's.
async fn endpoint_of(state: &AppState, tenant: Uuid, endpoint: Uuid) -> ApiResult<()> {
    let found: Option<bool> =
        sqlx::query_scalar("select true from webhook_endpoints where id = $1 and tenant_id = $2")
            .bind(endpoint)
            .bind(tenant)
            .fetch_optional(&state.db)
            .await?;
    found
        .map(|_| ())
        .ok_or(ApiError::NotFound("webhook endpoint"))
}

#[utoipa::path(delete, path = "/api/tenants/{id}/webhooks/{endpoint}", tag = "webhooks", params(("id" = Uuid, Path, description = "The tenant"), ("endpoint" = Uuid, Path, description = "The endpoint")), responses((status = 204, description = "Removed: nothing more is delivered to it, its pending deliveries are dead; its history stays (tenant admins)")))]
async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant, endpoint)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    let admin = caller
        .authorize(&state, &ctx, tenant, Access::Admin)
        .await?
        .id;
    let mut tx = state.db.begin().await?;
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
    audit(&mut tx, &ctx, tenant, admin, "webhook.removed", endpoint).await;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A delivery of one event to one endpoint.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct WebhookDelivery {
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct DeliveriesQuery {
    /// Only deliveries in this state: `pending`, `delivered` or `dead`.
    status: Option<String>,
    /// Deliveries after this id (paging).
    after: Option<Uuid>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/tenants/{id}/webhooks/{endpoint}/deliveries", tag = "webhooks", params(("id" = Uuid, Path, description = "The tenant"), ("endpoint" = Uuid, Path, description = "The endpoint"), DeliveriesQuery), responses((status = 200, description = "The endpoint's deliveries, oldest first (tenant admins)", body = Value)))]
async fn deliveries(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant, endpoint)): Path<(Uuid, Uuid)>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    caller
        .authorize(&state, &ctx, tenant, Access::Admin)
        .await?;
    endpoint_of(&state, tenant, endpoint).await?;
    if let Some(s) = &q.status
        && !["pending", "delivered", "dead"].contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            "must be pending, delivered or dead",
        ));
    }
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=500).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit", "must be between 1 and 500")),
    };
    let mut items: Vec<WebhookDelivery> = sqlx::query_as(&format!(
        "select {DELIVERY_COLUMNS} from webhook_deliveries
         where endpoint_id = $1 and ($2::text is null or status = $2)
           and id > coalesce($3::uuid, '00000000-0000-0000-0000-000000000000')
         order by id limit $4"
    ))
    .bind(endpoint)
    .bind(&q.status)
    .bind(q.after)
    .bind(limit + 1)
    .fetch_all(&state.db)
    .await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = more.then(|| items.last().map(|d| d.id)).flatten();
    Ok(Json(serde_json::json!({"items": items, "nextAfter": next})))
}

/// One attempt of a delivery.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct WebhookAttempt {
    attempt: i32,
    at: chrono::DateTime<chrono::Utc>,
    /// The endpoint's HTTP status, if it answered.
    status_code: Option<i32>,
    /// Why it failed, if it did.
    error: Option<String>,
    duration_ms: i32,
}

#[utoipa::path(get, path = "/api/tenants/{id}/webhooks/{endpoint}/deliveries/{delivery}", tag = "webhooks", params(("id" = Uuid, Path, description = "The tenant"), ("endpoint" = Uuid, Path, description = "The endpoint"), ("delivery" = Uuid, Path, description = "The delivery")), responses((status = 200, description = "The delivery with its body and every attempt (tenant admins)", body = Value)))]
async fn delivery(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant, endpoint, delivery)): Path<(Uuid, Uuid, Uuid)>,
) -> ApiResult<Json<serde_json::Value>> {
    caller
        .authorize(&state, &ctx, tenant, Access::Admin)
        .await?;
    endpoint_of(&state, tenant, endpoint).await?;
    let found: Option<WebhookDelivery> = sqlx::query_as(&format!(
        "select {DELIVERY_COLUMNS} from webhook_deliveries where id = $1 and endpoint_id = $2"
    ))
    .bind(delivery)
    .bind(endpoint)
    .fetch_optional(&state.db)
    .await?;
    let found = found.ok_or(ApiError::NotFound("delivery"))?;
    let attempts: Vec<WebhookAttempt> = sqlx::query_as(
        "select attempt, at, status_code, error, duration_ms from webhook_attempts
         where delivery_id = $1 order by id",
    )
    .bind(delivery)
    .fetch_all(&state.db)
    .await?;
    let body: String = sqlx::query_scalar("select body from webhook_deliveries where id = $1")
        .bind(delivery)
        .fetch_one(&state.db)
        .await?;
    let mut reply = serde_json::to_value(found).map_err(anyhow::Error::from)?;
    reply["attempts"] = serde_json::to_value(attempts).map_err(anyhow::Error::from)?;
    reply["body"] = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    Ok(Json(reply))
}

#[utoipa::path(post, path = "/api/tenants/{id}/webhooks/{endpoint}/deliveries/{delivery}/retry", tag = "webhooks", params(("id" = Uuid, Path, description = "The tenant"), ("endpoint" = Uuid, Path, description = "The endpoint"), ("delivery" = Uuid, Path, description = "The delivery")), responses((status = 202, description = "A dead delivery is sent once more, now (tenant admins)"), (status = 409, description = "Not dead, or the endpoint was removed")))]
async fn retry(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant, endpoint, delivery)): Path<(Uuid, Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    let admin = caller
        .authorize(&state, &ctx, tenant, Access::Admin)
        .await?
        .id;
    endpoint_of(&state, tenant, endpoint).await?;
    let mut tx = state.db.begin().await?;
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
    audit(&mut tx, &ctx, tenant, admin, "webhook.retried", delivery).await;
    tx.commit().await?;
    Ok(StatusCode::ACCEPTED)
}
