//! Ending things everywhere, with receipts (`crate::lifecycle` has the guarantees):
//!
//! * `POST /api/tenants/{t}/users/{u}/erase`: the right to erasure. The wrapper replaces the
//!   user's personal data with a pseudonymous tombstone (`[Deleted User]`, an address under
//!   `erased.invalid`) so references still resolve, removes their identities, sign-in counters
//!   and the address from the audit log and from retained events, publishes `user.erased`, and
//!   answers `202 Accepted` with the operation every app must confirm.
//! * `DELETE /api/tenants/{t}` archives (restorable); `POST /api/tenants/{t}/restore`
//!   (`api::tenants`) undoes it within the grace period (`WRAPPER_PURGE_GRACE_SECS`); `POST /api/tenants/{t}/purge` (or the
//!   end of the grace period) starts the purge, `202 Accepted` with its operation.
//! * `POST /api/tenants/{t}/export`: everything of the tenant at the wrapper and in every app,
//!   as one archive of JSON Lines files (`202 Accepted`; `GET /api/operations/{id}/archive`
//!   once the operation is done). Apps upload their part with
//!   `PUT /api/sync/operations/{id}/parts/{collection}/{chunk}`.
//! * `GET /api/operations/{id}`: the operation with every registered app's receipt.
//! * `PUT /api/sync/operations/{id}/receipt`: an app's receipt (service tokens).

use crate::model::users::AdminGuard;
use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use sync_contract::{Event, UserState};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::ApiJson;
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    lifecycle::{self, Kind, Operation},
    model::{
        self,
        ids::{TenantId, UserId},
    },
    outbox,
    state::AppState,
};

/// Lifecycle routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(erase_user))
        .routes(routes!(purge))
        .routes(routes!(operation))
        .routes(routes!(receipt))
        .routes(routes!(vouch))
        .routes(routes!(export))
        .routes(routes!(export_part))
        .routes(routes!(export_archive))
}

async fn accepted(state: &AppState, id: Uuid) -> ApiResult<Response> {
    lifecycle::send(&state.db, &state.redis, &state.stream_keys, id).await;
    answer(state, id).await
}

/// 202 with operation `id` and its Location.
async fn answer(state: &AppState, id: Uuid) -> ApiResult<Response> {
    let operation = lifecycle::read(&state.db, id)
        .await?
        .ok_or(ApiError::NotFound("operation"))?;
    let mut response = (StatusCode::ACCEPTED, Json(operation)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/operations/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Erase a user's personal data everywhere (tenant admins, platform admins).
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/users/{user_id}/erase", tag = "lifecycle", responses((status = 202, description = "Erased at the wrapper; the operation apps confirm (poll its Location)", body = Operation)))]
async fn erase_user(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path((tenant_id, user_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Response> {
    let admin = caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?
        .id;
    let mut tx = state.db.begin().await?;
    let guard = AdminGuard::before(&mut tx, tenant_id).await?;
    let (email, row) = model::users::erase(&mut tx, TenantId(tenant_id), UserId(user_id)).await?;
    guard.after(&mut tx).await?;
    let aggregate = (user_id, row.version());
    let tombstone = UserState::from(row);
    let wrapper_part = scrub(&mut tx, tenant_id, user_id, &email, &tombstone).await?;
    outbox::record(
        &mut tx,
        &ctx,
        tenant_id,
        aggregate,
        Event::UserErased,
        &tombstone,
    )
    .await?;
    let id = lifecycle::create(
        &mut tx,
        Kind::EraseUser,
        tenant_id,
        Some(user_id),
        Some(admin),
    )
    .await?;
    // The wrapper's part of the proof; Redis's is added when every app has confirmed.
    sqlx::query("update lifecycle_operations set result = $2 where id = $1")
        .bind(id)
        .bind(json!({"wrapper": wrapper_part}))
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        &ctx,
        (tenant_id, admin),
        "user_erased",
        user_id,
        id,
    )
    .await;
    tx.commit().await?;
    accepted(&state, id).await
}

/// Audit `action` on `target` by `admin` of `tenant`, naming the operation it started.
async fn audit(
    tx: &mut sqlx::PgConnection,
    ctx: &Ctx,
    (tenant_id, admin): (Uuid, Uuid),
    action: &str,
    target: Uuid,
    operation: Uuid,
) {
    let entry = crate::audit::Entry {
        tenant_id: Some(tenant_id),
        actor_id: Some(admin),
        action,
        target: Some(target.to_string()),
        outcome: "success",
        details: serde_json::json!({"operationId": operation}),
    };
    crate::audit::record(tx, ctx, entry).await;
}

/// Remove or replace every copy of user `user_id`'s personal data the wrapper's database holds
/// besides the user row: every address and name they ever had (their events in the outbox
/// hold each state they went through) in the outbox, webhook deliveries (stored and pending:
/// a pending one is then sent with the tombstone), the audit log (an address or a name becomes
/// the user's id), sign-in throttle counters, linked identities and the tenant's exports.
/// Returns what it changed per table: the wrapper's part of the operation's proof.
async fn scrub(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    user_id: Uuid,
    email: &str,
    tombstone: &UserState,
) -> Result<Value, sqlx::Error> {
    let user = user_id.to_string();
    // Every state the user went through: their addresses and names.
    let states: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "select distinct envelope::jsonb -> 'payload' ->> 'email',
                         envelope::jsonb -> 'payload' ->> 'fullName'
         from outbox where tenant_id = $1 and event_type like 'user.%'
           and envelope::jsonb ->> 'aggregateId' = $2",
    )
    .bind(tenant_id)
    .bind(&user)
    .fetch_all(&mut *tx)
    .await?;
    let mut emails: Vec<String> = states.iter().filter_map(|s| s.0.clone()).collect();
    emails.push(email.to_owned());
    let mut names: Vec<String> = states.iter().filter_map(|s| s.1.clone()).collect();
    for list in [&mut emails, &mut names] {
        list.retain(|v| !v.is_empty() && v != sync_contract::ERASED_NAME);
        list.sort_by_key(|v| v.to_lowercase());
        list.dedup_by_key(|v| v.to_lowercase());
    }
    let mut changed = serde_json::Map::new();
    let mut count = |table: &str, n: u64| {
        let before = changed.get(table).and_then(Value::as_u64).unwrap_or(0);
        changed.insert(table.to_owned(), json!(before + n));
    };
    // Exports of the tenant hold the person's data too: a pending one loses their lines (the
    // rest of it is still the tenant's), a built archive is deleted (export again).
    let values: Vec<String> = emails.iter().chain(&names).cloned().collect();
    let n = crate::lifecycle::export::drop_person(tx, tenant_id, user_id, &values).await?;
    count("export_parts (lines)", n);
    let n = sqlx::query(
        "delete from export_archive_chunks where operation_id in
             (select id from lifecycle_operations where tenant_id = $1)",
    )
    .bind(tenant_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    count("export_archive_chunks", n);
    let n = sqlx::query("delete from user_identities where user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    count("user_identities", n);
    // The tenant's counters, and the platform's: an address typed where platform admins sign
    // in is the person's too.
    let counters: Vec<String> = emails
        .iter()
        .flat_map(|e| {
            let e = e.to_lowercase();
            [
                format!("account:{tenant_id}:{e}"),
                format!("account:platform:{e}"),
            ]
        })
        .collect();
    let n = sqlx::query("delete from sign_in_failures where lower(key) = any($1)")
        .bind(&counters)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    count("sign_in_failures", n);
    // The audit log keeps what happened, with the user's id where an address or a name was:
    // an address anywhere in the tenant's entries and in the platform's (a sign-in attempt on
    // the admin host), a name in the entries about the user.
    for value in &emails {
        let n = sqlx::query(
            "update audit_log set target = case when lower(target) = lower($2) then $3 else target end,
                 details = regexp_replace(details::text, $4, $3, 'gi')::jsonb
             where (tenant_id = $1 or tenant_id is null)
               and (lower(target) = lower($2) or strpos(lower(details::text), lower($2)) > 0)",
        )
        .bind(tenant_id)
        .bind(value)
        .bind(&user)
        .bind(literal_pattern(value))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        count("audit_log", n);
    }
    for value in &names {
        // As it appears inside the JSON text.
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped.trim_matches('"');
        let n = sqlx::query(
            "update audit_log set details = regexp_replace(details::text, $4, $3, 'gi')::jsonb
             where tenant_id = $1 and strpos(lower(details::text), lower($2)) > 0
               and (target = $3 or strpos(details::text, $3) > 0)",
        )
        .bind(tenant_id)
        .bind(escaped)
        .bind(&user)
        .bind(literal_pattern(escaped))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        count("audit_log", n);
    }
    // The user's events: in the outbox and in every webhook delivery of them (stored, pending
    // or dead), their payload becomes the tombstone.
    let payload = serde_json::to_value(tombstone).unwrap_or(Value::Null);
    let n = sqlx::query(
        "update outbox set envelope = jsonb_set(envelope::jsonb, '{payload}', $3)::text
         where tenant_id = $1 and event_type like 'user.%'
           and envelope::jsonb ->> 'aggregateId' = $2",
    )
    .bind(tenant_id)
    .bind(&user)
    .bind(&payload)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    count("outbox", n);
    let n = sqlx::query(
        "update webhook_deliveries set body = jsonb_set(body::jsonb, '{payload}', $3)::text
         where tenant_id = $1 and event_type like 'user.%'
           and body::jsonb ->> 'aggregateId' = $2",
    )
    .bind(tenant_id)
    .bind(&user)
    .bind(&payload)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    count("webhook_deliveries", n);
    Ok(Value::Object(changed))
}

/// A regular expression matching `value` literally (every character that is not a letter or a
/// digit escaped), for a case-insensitive replacement.
fn literal_pattern(value: &str) -> String {
    let mut pattern = String::with_capacity(value.len() * 2);
    for c in value.chars() {
        if !c.is_alphanumeric() {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

/// Purge an archived tenant now, without waiting for the grace period (platform admins).
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/purge", tag = "lifecycle", responses((status = 202, description = "Purging; the operation apps confirm (poll its Location)", body = Operation)))]
async fn purge(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Response> {
    let admin = caller.require_platform_admin()?.id;
    let id = lifecycle::start_purge(&state.db, tenant_id, Some(admin))
        .await?
        .ok_or(ApiError::NotFound("archived tenant"))?;
    state.domains.invalidate();
    accepted(&state, id).await
}

/// An operation with every registered app's receipt (platform admins; tenant admins for their
/// tenant's erasures).
#[utoipa::path(get, path = "/api/operations/{operation_id}", tag = "lifecycle", responses((status = 200, description = "The operation", body = Operation)))]
async fn operation(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(operation_id): Path<Uuid>,
) -> ApiResult<Json<Operation>> {
    let operation = lifecycle::read(&state.db, operation_id)
        .await?
        .ok_or(ApiError::NotFound("operation"))?;
    authorize_operation(&state, &ctx, &caller, &operation).await?;
    Ok(Json(operation))
}

/// What an app asks before it carries out a command read from the lifecycle stream: the
/// operation as the wrapper recorded it (app service tokens). The stream is not proof; this
/// answer is (see `sync_contract::LifecycleOperation`).
#[utoipa::path(get, path = "/api/sync/operations/{operation_id}", tag = "sync", responses((status = 200, description = "The operation as the wrapper recorded it (app service tokens)", body = sync_contract::LifecycleOperation), (status = 404, description = "No such operation")))]
async fn vouch(
    State(state): State<AppState>,
    caller: Caller,
    Path(operation_id): Path<Uuid>,
) -> ApiResult<Json<sync_contract::LifecycleOperation>> {
    if !matches!(caller, Caller::Service { .. }) {
        return Err(ApiError::Forbidden("app service tokens only"));
    }
    let operation = lifecycle::read(&state.db, operation_id)
        .await?
        .ok_or(ApiError::NotFound("operation"))?;
    Ok(Json(sync_contract::LifecycleOperation {
        operation_id: operation.id,
        kind: operation.kind,
        tenant_id: operation.tenant_id,
        user_id: operation.subject,
        status: operation.status,
    }))
}

/// Purges are the platform admins'; erasures and exports also their tenant's admins'.
async fn authorize_operation(
    state: &AppState,
    ctx: &Ctx,
    caller: &Caller,
    operation: &Operation,
) -> ApiResult<()> {
    if operation.kind == Kind::PurgeTenant.as_str() {
        caller.require_platform_admin()?;
    } else {
        caller
            .authorize(state, ctx, operation.tenant_id, Access::Admin)
            .await?;
    }
    Ok(())
}

/// Export everything of a tenant (tenant admins, platform admins).
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/export", tag = "lifecycle", responses((status = 202, description = "Exporting; the archive is at the operation's /archive once it is done", body = Operation)))]
async fn export(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Response> {
    let admin = caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?
        .id;
    let mut tx = state.db.begin().await?;
    let exists: bool = sqlx::query_scalar(
        "select exists (select 1 from tenants where id = $1 and status <> 'purging')",
    )
    .bind(tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    if !exists {
        return Err(ApiError::NotFound("tenant"));
    }
    // One export at a time per tenant: each makes every app dump the whole tenant, so a repeat
    // while one is pending answers that one (and starts nothing).
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1 || ':export', 0))")
        .bind(tenant_id.to_string())
        .execute(&mut *tx)
        .await?;
    let pending: Option<Uuid> = sqlx::query_scalar(
        "select id from lifecycle_operations
         where tenant_id = $1 and kind = 'export_tenant' and status = 'pending'
         order by created_at limit 1",
    )
    .bind(tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = pending {
        tx.commit().await?;
        return answer(&state, id).await;
    }
    let id = lifecycle::create(&mut tx, Kind::ExportTenant, tenant_id, None, Some(admin)).await?;
    audit(
        &mut tx,
        &ctx,
        (tenant_id, admin),
        "tenant_exported",
        tenant_id,
        id,
    )
    .await;
    tx.commit().await?;
    accepted(&state, id).await
}

/// One chunk of an app's documents of a collection, as JSON Lines (app service tokens).
#[utoipa::path(put, path = "/api/sync/operations/{operation_id}/parts/{collection}/{chunk}", tag = "sync", request_body(content = String, content_type = "text/plain", description = "JSON Lines: one document a line"), responses((status = 204, description = "Stored")))]
async fn export_part(
    State(state): State<AppState>,
    caller: Caller,
    Path((operation_id, collection, chunk)): Path<(Uuid, String, i32)>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let Caller::Service { app } = &caller else {
        return Err(ApiError::Forbidden("app service tokens only"));
    };
    let valid = !collection.is_empty()
        && collection.len() <= 120
        && collection
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(ApiError::Validation {
            field: "collection".into(),
            message: "1 to 120 letters, digits, '_', '-' or '.'".into(),
        });
    }
    if chunk < 0 {
        return Err(ApiError::Validation {
            field: "chunk".into(),
            message: "0 or more".into(),
        });
    }
    let mut tx = state.db.begin().await?;
    // One app's parts of one export, counted under a lock per (export, app); a part sent
    // again replaces itself and does not count twice.
    let limit = crate::model::limits::Limit {
        setting: "WRAPPER_MAX_EXPORT_PARTS",
        what: "parts per app and export",
        max: state.settings.max_export_parts,
    };
    limit.lock(&mut tx, operation_id, app).await?;
    let others: i64 = sqlx::query_scalar(
        "select count(*) from export_parts where operation_id = $1 and source = $2
           and not (collection = $3 and chunk = $4)",
    )
    .bind(operation_id)
    .bind(app)
    .bind(&collection)
    .bind(chunk)
    .fetch_one(&mut *tx)
    .await?;
    limit.enforce(others)?;
    let stored =
        lifecycle::export::store_part(&mut *tx, operation_id, app, &collection, chunk, &body)
            .await?;
    tx.commit().await?;
    if !stored {
        return Err(ApiError::NotFound("pending export"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The archive of a finished export: a tar of JSON Lines files (see `crate::lifecycle::export`).
#[utoipa::path(get, path = "/api/operations/{operation_id}/archive", tag = "lifecycle", responses((status = 200, description = "The archive", body = Vec<u8>, content_type = "application/x-tar")))]
async fn export_archive(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(operation_id): Path<Uuid>,
) -> ApiResult<Response> {
    let operation = lifecycle::read(&state.db, operation_id)
        .await?
        .ok_or(ApiError::NotFound("operation"))?;
    authorize_operation(&state, &ctx, &caller, &operation).await?;
    let (chunks, size) = lifecycle::export::archive_chunks(&state.db, operation_id)
        .await?
        .ok_or(ApiError::NotFound("finished export"))?;
    let name = format!(
        "attachment; filename=\"tenant-{}-{operation_id}.tar\"",
        operation.tenant_id
    );
    // Streamed a stored chunk at a time.
    let db = state.db.clone();
    let body = futures_util::stream::iter(chunks).then(move |seq| {
        let db = db.clone();
        async move {
            lifecycle::export::archive_chunk(&db, operation_id, seq)
                .await
                .map(axum::body::Bytes::from)
        }
    });
    let mut response = axum::body::Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    if let Ok(value) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// An app's receipt for an operation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Receipt {
    /// The replica that did the work.
    replica: String,
    /// `done` or `failed`.
    status: ReceiptStatus,
    /// Why it failed.
    reason: Option<String>,
    /// What was removed: counts per collection, keys, ….
    #[serde(default)]
    details: Value,
}

#[derive(Debug, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum ReceiptStatus {
    Done,
    Failed,
}

/// Record the calling app's receipt (app service tokens).
#[utoipa::path(put, path = "/api/sync/operations/{operation_id}/receipt", tag = "sync", request_body = Receipt, responses((status = 204, description = "Recorded")))]
async fn receipt(
    State(state): State<AppState>,
    caller: Caller,
    Path(operation_id): Path<Uuid>,
    ApiJson(body): ApiJson<Receipt>,
) -> ApiResult<StatusCode> {
    let Caller::Service { app } = &caller else {
        return Err(ApiError::Forbidden("app service tokens only"));
    };
    if body.replica.trim().is_empty() || body.replica.len() > 200 {
        return Err(ApiError::Validation {
            field: "replica".into(),
            message: "1 to 200 characters".into(),
        });
    }
    let recorded = lifecycle::receipt(
        &state.db,
        &state.redis,
        &state.stream_keys,
        operation_id,
        app,
        &body.replica,
        body.status == ReceiptStatus::Done,
        body.reason.as_deref(),
        &body.details,
    )
    .await?;
    if !recorded {
        return Err(ApiError::NotFound("operation"));
    }
    Ok(StatusCode::NO_CONTENT)
}
