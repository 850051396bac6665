//! `GET /api/tenants/{id}/audit`: the tenant's security events, newest first, for its admins.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::ApiQuery;
use crate::{
    audit::AuditRecord,
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    state::AppState,
};

/// Audit routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(report))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct AuditQuery {
    /// Entries older than this id.
    before: Option<i64>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// Only this action, e.g. `cross_tenant_attempt`, `login`, `credit.threshold_reached`, or an
    /// app's report, `crm:cross_tenant_attempt`.
    action: Option<String>,
    /// Only what this user did.
    actor_id: Option<Uuid>,
    /// Only entries at or after this time.
    from: Option<chrono::DateTime<chrono::Utc>>,
    /// Only entries before this time.
    to: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which audit entries of a tenant: newest first, older than `before`, at most `limit`.
#[derive(Debug, Default)]
pub(crate) struct AuditFilter {
    pub(crate) before: Option<i64>,
    pub(crate) action: Option<String>,
    pub(crate) actor_id: Option<Uuid>,
    pub(crate) from: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) to: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) limit: i64,
}

/// A page of `tenant_id`'s audit log matching `f`, and the cursor of the next page.
pub(crate) async fn page(
    state: &AppState,
    tenant_id: Uuid,
    f: &AuditFilter,
) -> ApiResult<(Vec<AuditRecord>, Option<i64>)> {
    let mut items: Vec<AuditRecord> = sqlx::query_as(
        "select id, tenant_id, actor_id, action, target, outcome, details, reported_by,
           request_id, created_at
         from audit_log where tenant_id = $1 and id < coalesce($2::bigint, 9223372036854775807)
           and ($3::text is null or action = $3) and ($4::uuid is null or actor_id = $4)
           and ($5::timestamptz is null or created_at >= $5)
           and ($6::timestamptz is null or created_at < $6)
         order by id desc limit $7",
    )
    .bind(tenant_id)
    .bind(f.before)
    .bind(&f.action)
    .bind(f.actor_id)
    .bind(f.from)
    .bind(f.to)
    .bind(f.limit + 1)
    .fetch_all(&state.db)
    .await?;
    let more = items.len() as i64 > f.limit;
    items.truncate(f.limit as usize);
    let next_before = if more {
        items.last().map(|r| r.id)
    } else {
        None
    };
    Ok((items, next_before))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AuditPage {
    items: Vec<AuditRecord>,
    next_before: Option<i64>,
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}/audit", tag = "audit", params(AuditQuery), responses((status = 200, description = "A page of the tenant's audit log (tenant admins)", body = AuditPage)))]
async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    let limit = match q.limit {
        None => 50,
        Some(n) if (1..=500).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit", "must be between 1 and 500")),
    };
    let filter = AuditFilter {
        before: q.before,
        action: q.action,
        actor_id: q.actor_id,
        from: q.from,
        to: q.to,
        limit,
    };
    let (items, next_before) = page(&state, tenant_id, &filter).await?;
    Ok(Json(AuditPage { items, next_before }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AppEvent {
    /// The tenant the event is about: its id or subdomain.
    tenant: String,
    /// The user the app says acted (kept as the app's claim in the details, never as the
    /// entry's actor: only the wrapper names actors).
    actor_id: Option<Uuid>,
    /// What the app saw, 1-60 lowercase letters, digits, '.', '_' or '-'; recorded as
    /// `<app>:<action>`.
    action: String,
    target: Option<String>,
    /// Free-form details of the event (an object).
    #[serde(default)]
    #[schema(value_type = Object)]
    details: serde_json::Value,
}

/// The largest `details` an app may report, in bytes of JSON.
const MAX_APP_EVENT_DETAILS: usize = 4096;

/// `POST /api/audit/events`: apps report security events (e.g. a cross-tenant attempt they
/// refused) into the tenant's audit log, in the app's own namespace: the entry's action is
/// `<app>:<action>` and `reportedBy` names the app, so nothing an app reports reads as a fact
/// the wrapper recorded. App service tokens only, for tenants that have the app's feature.
#[utoipa::path(post, path = "/api/audit/events", tag = "audit", request_body = AppEvent, responses((status = 202, description = "Recorded (app service tokens only)")))]
async fn report(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    super::ApiJson(event): super::ApiJson<AppEvent>,
) -> ApiResult<axum::http::StatusCode> {
    let Caller::Service { app } = &caller else {
        return Err(ApiError::Forbidden("app service tokens only"));
    };
    let action = app_action(&event.action)?;
    if !(event.details.is_object() || event.details.is_null()) {
        return Err(ApiError::invalid("details", "must be an object"));
    }
    if event.details.to_string().len() > MAX_APP_EVENT_DETAILS {
        return Err(ApiError::invalid(
            "details",
            format!("at most {MAX_APP_EVENT_DETAILS} bytes of JSON"),
        ));
    }
    let target = match &event.target {
        Some(t) => Some(crate::validate::short_text("target", t, 200)?),
        None => None,
    };
    let tenant_id = state
        .domains
        .resolve_tenant_ref(&state.db, &event.tenant)
        .await?
        .ok_or(ApiError::invalid("tenant", "no such tenant"))?;
    crate::model::apps::require_tenant_has_app(&state.db, app, tenant_id).await?;
    let namespaced = format!("{app}:{action}");
    let entry = crate::audit::Entry {
        tenant_id: Some(tenant_id),
        actor_id: None,
        action: &namespaced,
        target,
        outcome: "denied",
        details: serde_json::json!({
            "reportedBy": app,
            "claimedActorId": event.actor_id,
            "details": event.details,
        }),
    };
    crate::audit::record_reported(&state.db, &ctx, app, entry).await;
    Ok(axum::http::StatusCode::ACCEPTED)
}

/// An app's action name: 1-60 lowercase letters, digits, '.', '_' or '-'.
fn app_action(text: &str) -> ApiResult<String> {
    let ok = (1..=60).contains(&text.len())
        && text.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(text.to_owned())
    } else {
        Err(ApiError::invalid(
            "action",
            "must be 1-60 lowercase letters, digits, '.', '_' or '-'",
        ))
    }
}
