//! `GET /api/sync/tenant/{tenantId}`: the snapshot an app lazy-loads a tenant from.
//!
//! Everything is read in one REPEATABLE READ transaction together with the tenant's `last_seq`
//! (the watermark), so the snapshot is exactly the state after event `watermark`: the app
//! applies stream events above it and skips those at or below (invariant 4). Users are paged by
//! cursor for large tenants; each page is its own consistent read with its own watermark, and
//! the app keeps the first page's (lowest) watermark, so events between pages are applied again
//! from the stream, harmlessly (version gating). Only app service tokens may call it, and every
//! first-page read is audited as an export.

use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::ApiQuery;
use crate::{
    audit,
    auth::Caller,
    context::Ctx,
    error::{ApiError, ApiResult},
    model::{self, ids::TenantId, paging::Keyset},
    state::AppState,
};
use sync_contract::{MembershipState, RoleState, TenantState, UserState};

/// Sync routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(snapshot))
        .routes(routes!(digest))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SnapshotQuery {
    /// Continue the user list after this id (later pages carry users only).
    cursor: Option<Uuid>,
    /// Users per page (1–10,000, default 5,000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

/// An aggregate with its version.
#[derive(Debug, Serialize)]
struct Versioned<T> {
    version: i64,
    state: T,
}

fn versioned<R, T: From<R>>(version: i64, row: R) -> Versioned<T> {
    Versioned {
        version,
        state: T::from(row),
    }
}

#[utoipa::path(get, path = "/api/sync/tenant/{tenant_id}", tag = "sync", params(SnapshotQuery), responses((status = 200, description = "A page of the tenant's snapshot with its watermark (app service tokens)", body = Value)))]
async fn snapshot(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiQuery(q): ApiQuery<SnapshotQuery>,
) -> ApiResult<Json<Value>> {
    let Caller::Service { app } = &caller else {
        return Err(ApiError::Forbidden("app service tokens only"));
    };
    let limit = match q.limit {
        None => 5_000,
        Some(n) if (1..=10_000).contains(&n) => n,
        Some(_) => return Err(ApiError::invalid("limit", "must be between 1 and 10000")),
    };
    // An app loads only tenants whose plan has its feature.
    crate::model::apps::require_tenant_has_app(&state.db, app, tenant_id).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let (tenant, watermark) = model::tenants::for_snapshot(&mut tx, TenantId(tenant_id)).await?;
    let keyset = Keyset {
        cursor: q.cursor,
        limit,
    };
    let users = model::users::snapshot_page(&mut tx, TenantId(tenant_id), keyset).await?;
    let more = users.len() as i64 > limit;
    let users: Vec<Versioned<UserState>> = users
        .into_iter()
        .take(limit as usize)
        .map(|u| versioned(u.version(), u))
        .collect();
    let next_cursor = if more {
        users.last().map(|u| u.state.id)
    } else {
        None
    };
    let mut body = json!({
        "tenantId": tenant_id,
        "users": users,
        "watermark": watermark,
        "nextCursor": next_cursor,
    });
    if q.cursor.is_none() {
        let roles = model::roles::all_of(&mut tx, TenantId(tenant_id)).await?;
        let mut permissions: Vec<String> = Vec::new();
        let roles: Vec<Versioned<RoleState>> = roles
            .into_iter()
            .map(|r| {
                let r: Versioned<RoleState> = versioned(r.version(), r);
                if !r.state.deleted {
                    permissions.extend(r.state.permissions.iter().cloned());
                }
                r
            })
            .collect();
        permissions.sort();
        permissions.dedup();
        let members = model::memberships::all_of(&mut tx, TenantId(tenant_id)).await?;
        let members: Vec<Versioned<MembershipState>> = members
            .into_iter()
            .map(|m| versioned(m.version(), m))
            .collect();
        let settings = model::settings::versioned(&mut tx, TenantId(tenant_id)).await?;
        let tenant_version = tenant.version();
        body["tenant"] = json!(versioned::<_, TenantState>(tenant_version, tenant));
        body["roles"] = json!(roles);
        body["permissions"] = json!(permissions);
        body["memberships"] = json!(members);
        body["settings"] = settings.map_or(
            Value::Null,
            |(version, state)| json!({"version": version, "state": state}),
        );
        let configs: Vec<Versioned<sync_contract::CreditConfigState>> =
            super::credit_configs::all(&mut tx, tenant_id)
                .await?
                .into_iter()
                .map(|c| versioned(c.version, c))
                .collect();
        body["creditConfigs"] = json!(configs);
    }
    tx.commit().await?;
    if q.cursor.is_none() {
        metrics::counter!("tsync_wrapper_snapshots_total", "app" => app.clone()).increment(1);
        let entry = audit::Entry {
            tenant_id: Some(tenant_id),
            actor_id: None,
            action: "snapshot.export",
            target: Some(app.clone()),
            outcome: "success",
            details: json!({"watermark": watermark}),
        };
        audit::record(&state.db, &ctx, entry).await;
    }
    Ok(Json(body))
}

/// The digest of one entity kind: SHA-256 over `id:version` lines in id order (empty input for
/// none). The SDK computes the same over its copy, so a difference means drift.
const DIGEST_SQL: &str = "select encode(sha256(convert_to(coalesce(
        string_agg(id::text || ':' || version::text, E'\\n' order by id), ''), 'UTF8')), 'hex')";

/// `GET /api/sync/tenant/{id}/digest`: per-kind digests and the watermark, read together.
#[utoipa::path(get, path = "/api/sync/tenant/{tenant_id}/digest", tag = "sync", responses((status = 200, description = "Digests of the tenant's aggregates, per kind (app service tokens)", body = Value)))]
async fn digest(
    State(state): State<AppState>,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Json<Value>> {
    let Caller::Service { app } = &caller else {
        return Err(ApiError::Forbidden("app service tokens only"));
    };
    crate::model::apps::require_tenant_has_app(&state.db, app, tenant_id).await?;
    let mut tx = state.db.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let watermark: i64 = sqlx::query_scalar("select last_seq from tenants where id = $1")
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    let mut digests = serde_json::Map::new();
    let sources = [
        ("tenants", "(select id, version from tenants where id = $1)"),
        (
            "users",
            "(select id, version from users where tenant_id = $1)",
        ),
        (
            "roles",
            "(select id, version from roles where tenant_id = $1)",
        ),
        (
            "memberships",
            "(select id, version from memberships where tenant_id = $1)",
        ),
        (
            "settings",
            "(select tenant_id as id, version from settings where tenant_id = $1)",
        ),
        (
            "credit_configs",
            "(select id, version from credit_configs where tenant_id = $1)",
        ),
    ];
    for (kind, source) in sources {
        let hash: String = sqlx::query_scalar(&format!("{DIGEST_SQL} from {source} s"))
            .bind(tenant_id)
            .fetch_one(&mut *tx)
            .await?;
        digests.insert(kind.to_owned(), Value::String(hash));
    }
    tx.commit().await?;
    Ok(Json(
        json!({"tenantId": tenant_id, "watermark": watermark, "digests": digests}),
    ))
}
