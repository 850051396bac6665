//! Webhook endpoints of a tenant and their deliveries (tenant admins): register an endpoint
//! for chosen event types (its signing secret is shown once), list and remove endpoints, see
//! every delivery with its attempts, and send a dead delivery again. See `crate::webhooks` for
//! how deliveries are made, signed and retried.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use serde::Deserialize;
use sync_contract::EventType;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiJson, ApiQuery};
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    model::{
        ids::{TenantId, UserId},
        limits::Limit,
        webhooks::{self, WebhookEndpoint},
    },
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
    let id = Uuid::now_v7();
    let (kek, sealed) = crate::webhooks::seal_secret(state.keys.keks(), id, &secret)?;
    let new = webhooks::NewEndpoint {
        id,
        url: url.as_str().to_owned(),
        event_types: types,
        kek,
        sealed,
    };
    let limit = Limit {
        setting: "WRAPPER_MAX_WEBHOOK_ENDPOINTS",
        what: "active webhook endpoints per tenant",
        max: state.settings.max_webhook_endpoints,
    };
    let endpoint = webhooks::create(&state.db, &ctx, UserId(admin), TenantId(tenant), new, limit)
        .await?
        .with_secret(secret);
    Ok((StatusCode::CREATED, Json(endpoint)))
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
    Ok(Json(webhooks::active(&state.db, TenantId(tenant)).await?))
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
    webhooks::remove(&state.db, &ctx, UserId(admin), TenantId(tenant), endpoint).await?;
    Ok(StatusCode::NO_CONTENT)
}

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
    webhooks::ensure_of(&state.db, TenantId(tenant), endpoint).await?;
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
    let mut items =
        webhooks::deliveries(&state.db, endpoint, q.status.as_deref(), q.after, limit).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = more.then(|| items.last().map(|d| d.id())).flatten();
    Ok(Json(serde_json::json!({"items": items, "nextAfter": next})))
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
    webhooks::ensure_of(&state.db, TenantId(tenant), endpoint).await?;
    let (found, attempts, body) = webhooks::delivery(&state.db, endpoint, delivery).await?;
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
    webhooks::ensure_of(&state.db, TenantId(tenant), endpoint).await?;
    webhooks::retry(
        &state.db,
        &ctx,
        UserId(admin),
        TenantId(tenant),
        endpoint,
        delivery,
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}
