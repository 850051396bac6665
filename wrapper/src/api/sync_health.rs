//! `GET /api/admin/sync-health`: how every registered app keeps up, for operators' scripts (and
//! the console to come): each replica's last report (readiness, per partition the live reader,
//! group lag, pending entries and the age of the oldest, parked tenants, re-syncs, tenants
//! loaded), the app's dead letters and pending re-syncs, and its recent full syncs. Read from
//! what the SDK writes into Redis (`{ns}:status:{app}`, `{ns}:dlq:{app}`, `{ns}:resyncs:{app}`,
//! `{ns}:fullsyncs:{app}`); the wrapper does not interpret the reports beyond their age.
//!
//! And the operator's actions, each audited: list an app's dead letters, redrive them (by
//! tenant or event type: back onto their streams, where every app skips what it processed; the
//! wrapper republishes its own copy of each event from the outbox, never the letter's fields,
//! which the app wrote),
//! and ask an app to re-sync one tenant (a request in the app's re-sync journal, which a live
//! replica takes over within one status tick, as it takes over a dead replica's).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use fred::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use sync_contract::dlq;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiJson, ApiQuery};
use crate::{
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    lag_history::{FRESH_MS, now_ms},
    state::AppState,
};

/// The replica name the wrapper's re-sync requests carry in an app's re-sync journal: no
/// replica reports under it, so a live one takes the request over.
pub const RESYNC_REQUESTER: &str = "requested-by-wrapper";

/// Sync-health routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sync_health))
        .routes(routes!(dead_letters))
        .routes(routes!(redrive))
        .routes(routes!(resync))
        .routes(routes!(lag_history))
        .routes(routes!(tenant_sync_health))
}

/// Every registered app's sync state (platform admins).
#[utoipa::path(get, path = "/api/admin/sync-health", tag = "sync", responses((status = 200, description = "Every app's replicas, dead letters, re-syncs and full syncs, and `creditsWaiting`: fast-path consumptions not charged yet, with the reason", body = Value)))]
async fn sync_health(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_platform_admin()?;
    Ok(Json(report(&state).await?))
}

/// Every registered app's sync state (the JSON of `GET /api/admin/sync-health`).
pub(crate) async fn report(state: &AppState) -> ApiResult<Value> {
    Ok(json!({
        "apps": apps_report(state).await?,
        "creditsWaiting": credits_waiting(state, None).await?,
    }))
}

/// Every registered app's replicas, dead letters, re-syncs and full syncs.
async fn apps_report(state: &AppState) -> ApiResult<Vec<Value>> {
    let apps: Vec<String> = sqlx::query_scalar("select name from applications order by name")
        .fetch_all(&state.db)
        .await?;
    let keys = &state.stream_keys;
    let redis = &state.redis;
    let now = now_ms();
    let mut out = Vec::new();
    for app in apps {
        let reports: std::collections::HashMap<String, String> = redis
            .hgetall(keys.status(&app))
            .await
            .map_err(anyhow::Error::from)?;
        let mut replicas: Vec<Value> = reports
            .into_values()
            .filter_map(|r| serde_json::from_str::<Value>(&r).ok())
            .map(|mut r| {
                let age = now.saturating_sub(r["reportedAtMs"].as_u64().unwrap_or(0));
                r["ageMs"] = json!(age);
                r["fresh"] = json!(age <= FRESH_MS);
                r
            })
            .collect();
        replicas.sort_by_key(|r| r["replica"].as_str().unwrap_or_default().to_owned());
        let dead_letters: u64 = redis
            .xlen(keys.dlq(&app))
            .await
            .map_err(anyhow::Error::from)?;
        let resyncs: u64 = redis
            .hlen(keys.resyncs(&app))
            .await
            .map_err(anyhow::Error::from)?;
        let runs: Vec<String> = redis
            .lrange(keys.full_syncs(&app), 0, 9)
            .await
            .map_err(anyhow::Error::from)?;
        let full_syncs: Vec<Value> = runs
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        out.push(json!({
            "app": app,
            "replicas": replicas,
            "deadLetters": dead_letters,
            "resyncsPending": resyncs,
            "recentFullSyncs": full_syncs,
        }));
    }
    Ok(out)
}

/// Fast-path consumptions the ledger has not charged yet (retried every few seconds; each with
/// the last reason), oldest first, of one tenant or all; at most 100.
pub(crate) async fn credits_waiting(
    state: &AppState,
    tenant: Option<Uuid>,
) -> ApiResult<Vec<Value>> {
    let all: std::collections::HashMap<String, String> = state
        .redis
        .hgetall(state.stream_keys.credit_failures())
        .await
        .map_err(anyhow::Error::from)?;
    let mut items: Vec<Value> = all
        .into_values()
        .filter_map(|v| serde_json::from_str::<Value>(&v).ok())
        .filter(|v| tenant.is_none_or(|t| v["tenantId"] == t.to_string()))
        .collect();
    items.sort_by_key(|v| v["firstFailedAt"].as_str().unwrap_or_default().to_owned());
    items.truncate(100);
    Ok(items)
}

/// The app, if registered.
async fn registered(state: &AppState, app: &str) -> ApiResult<()> {
    let found: Option<bool> = sqlx::query_scalar("select true from applications where name = $1")
        .bind(app)
        .fetch_optional(&state.db)
        .await?;
    found.map(|_| ()).ok_or(ApiError::NotFound("application"))
}

/// Which dead letters: by tenant and/or event type (none: all).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LetterFilter {
    /// Only this tenant's.
    pub(crate) tenant_id: Option<Uuid>,
    /// Only this event type's.
    pub(crate) event_type: Option<String>,
}

impl LetterFilter {
    pub(crate) fn dlq(&self) -> ApiResult<dlq::Filter> {
        if let Some(t) = &self.event_type
            && t.parse::<sync_contract::EventType>().is_err()
        {
            return Err(ApiError::invalid(
                "eventType",
                format!("'{t}' is not an event type"),
            ));
        }
        Ok(dlq::Filter {
            event_type: self.event_type.clone(),
            tenant_id: self.tenant_id,
        })
    }
}

/// An app's dead letters (at most 500), oldest first, matching `filter`.
pub(crate) async fn letters(
    state: &AppState,
    app: &str,
    filter: &LetterFilter,
) -> ApiResult<Vec<Value>> {
    let f = filter.dlq()?;
    let all = dlq::list(&state.redis, &state.stream_keys, app, None)
        .await
        .map_err(anyhow::Error::from)?;
    Ok(all
        .into_iter()
        .filter(|(_, l)| f.matches(l))
        .take(500)
        .map(|(id, l)| {
            json!({
                "id": id, "tenantId": l.tenant_id, "eventType": l.event_type, "error": l.error,
                "attempts": l.attempts, "at": l.at, "stream": l.stream, "entryId": l.entry_id,
            })
        })
        .collect())
}

#[utoipa::path(get, path = "/api/admin/sync-health/{app}/dead-letters", tag = "sync", params(("app" = String, Path, description = "A registered app"), LetterFilter), responses((status = 200, description = "The app's dead letters, oldest first, at most 500 (platform admins)", body = Value)))]
async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiQuery(filter): ApiQuery<LetterFilter>,
) -> ApiResult<Json<Value>> {
    caller.require_platform_admin()?;
    registered(&state, &app).await?;
    Ok(Json(
        json!({"items": letters(&state, &app, &filter).await?}),
    ))
}

/// What the wrapper puts back for one dead letter. Never the letter's own fields: the app wrote
/// them (its Redis user may write its dead letters), and the wrapper's user may append to the
/// event streams, so republishing them would publish whatever the app chose (a confused deputy).
enum Vouched {
    /// The wrapper's own copy of the event (from the outbox), for its partition stream.
    Event(String, Vec<(&'static str, String)>),
    /// The lifecycle operation is still pending: its command was sent again.
    Resent,
    /// Nothing the wrapper can vouch for (an unknown event, one older than the outbox keeps, a
    /// finished or unknown operation, another stream): left in the dead letters.
    Refused,
}

async fn vouch(state: &AppState, letter: &dlq::DeadLetter) -> ApiResult<Vouched> {
    let keys = &state.stream_keys;
    if keys.all_events().contains(&letter.stream) {
        let event_id = letter
            .fields
            .get(sync_contract::FIELD_ENVELOPE)
            .and_then(|e| serde_json::from_str::<Value>(e).ok())
            .and_then(|v| v["eventId"].as_str()?.parse::<Uuid>().ok());
        let Some(event_id) = event_id else {
            return Ok(Vouched::Refused);
        };
        let row: Option<(String, Uuid, i64, i32, String)> = sqlx::query_as(
            "select event_type, tenant_id, seq, partition, envelope from outbox
             where event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&state.db)
        .await?;
        return Ok(match row {
            Some((event_type, tenant, seq, partition, envelope)) => Vouched::Event(
                keys.events(partition as u32),
                sync_contract::stream_fields(&event_type, tenant, seq, envelope),
            ),
            None => Vouched::Refused,
        });
    }
    if letter.stream == keys.lifecycle() {
        let operation = letter
            .fields
            .get("operationId")
            .and_then(|o| o.parse::<Uuid>().ok());
        if let Some(id) = operation
            && crate::lifecycle::read(&state.db, id)
                .await?
                .is_some_and(|o| o.status == "pending")
        {
            crate::lifecycle::send(&state.db, &state.redis, keys, id).await;
            return Ok(Vouched::Resent);
        }
    }
    Ok(Vouched::Refused)
}

/// Redrive `app`'s dead letters matching `filter` with what the wrapper can vouch for, and
/// audit it: (how many went back, how many were refused and left in the dead letters).
pub(crate) async fn redrive_letters(
    state: &AppState,
    ctx: &Ctx,
    actor: Uuid,
    app: &str,
    filter: &LetterFilter,
) -> ApiResult<(usize, usize)> {
    registered(state, app).await?;
    let f = filter.dlq()?;
    let keys = &state.stream_keys;
    let (mut moved, mut refused) = (0, 0);
    let all = dlq::list(&state.redis, keys, app, None)
        .await
        .map_err(anyhow::Error::from)?;
    for (id, letter) in all.into_iter().filter(|(_, l)| f.matches(l)) {
        match vouch(state, &letter).await? {
            Vouched::Event(stream, fields) => {
                let _: String = state
                    .redis
                    .xadd(stream, false, None::<()>, "*", fields)
                    .await
                    .map_err(anyhow::Error::from)?;
            }
            Vouched::Resent => {}
            Vouched::Refused => {
                refused += 1;
                continue;
            }
        }
        let _: u64 = state
            .redis
            .xdel(keys.dlq(app), id.as_str())
            .await
            .map_err(anyhow::Error::from)?;
        moved += 1;
    }
    let entry = crate::audit::Entry {
        tenant_id: filter.tenant_id,
        actor_id: Some(actor),
        action: "sync.redrive",
        target: Some(app.to_owned()),
        outcome: "success",
        details: json!({"eventType": filter.event_type, "redriven": moved, "refused": refused}),
    };
    crate::audit::record(&state.db, ctx, entry).await;
    Ok((moved, refused))
}

#[utoipa::path(post, path = "/api/admin/sync-health/{app}/dead-letters/redrive", tag = "sync", request_body = LetterFilter, params(("app" = String, Path, description = "A registered app")), responses((status = 200, description = "How many dead letters went back onto their streams as the wrapper's own copy (`redriven`), and how many it could not vouch for and left (`refused`) (platform admins; audited)", body = Value)))]
async fn redrive(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(filter): ApiJson<LetterFilter>,
) -> ApiResult<Json<Value>> {
    let actor = caller.require_platform_admin()?.id;
    let (moved, refused) = redrive_letters(&state, &ctx, actor, &app, &filter).await?;
    Ok(Json(json!({"redriven": moved, "refused": refused})))
}

/// Ask `app` to re-sync `tenant` and audit it.
pub(crate) async fn request_resync(
    state: &AppState,
    ctx: &Ctx,
    actor: Uuid,
    app: &str,
    tenant: Uuid,
) -> ApiResult<()> {
    registered(state, app).await?;
    let exists: Option<bool> = sqlx::query_scalar("select true from tenants where id = $1")
        .bind(tenant)
        .fetch_optional(&state.db)
        .await?;
    if exists.is_none() {
        return Err(ApiError::invalid("tenantId", "no such tenant"));
    }
    let _: i64 = state
        .redis
        .hset(
            state.stream_keys.resyncs(app),
            (tenant.to_string(), RESYNC_REQUESTER),
        )
        .await
        .map_err(anyhow::Error::from)?;
    let entry = crate::audit::Entry {
        tenant_id: Some(tenant),
        actor_id: Some(actor),
        action: "sync.resync",
        target: Some(app.to_owned()),
        outcome: "success",
        details: json!({}),
    };
    crate::audit::record(&state.db, ctx, entry).await;
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Resync {
    tenant_id: Uuid,
}

#[utoipa::path(post, path = "/api/admin/sync-health/{app}/resync", tag = "sync", request_body = Resync, params(("app" = String, Path, description = "A registered app")), responses((status = 202, description = "The app re-syncs the tenant within a status tick of a live replica (platform admins; audited)", body = Value)))]
async fn resync(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(app): Path<String>,
    ApiJson(req): ApiJson<Resync>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let actor = caller.require_platform_admin()?.id;
    request_resync(&state, &ctx, actor, &app, req.tenant_id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"requested": true}))))
}

/// How far back a lag history goes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    /// Minutes back from now (1-1440, default 60).
    #[param(minimum = 1, maximum = 1440)]
    minutes: Option<u64>,
}

impl HistoryQuery {
    fn since_ms(&self) -> ApiResult<u64> {
        let minutes = self.minutes.unwrap_or(60);
        if !(1..=1440).contains(&minutes) {
            return Err(ApiError::invalid("minutes", "between 1 and 1440"));
        }
        Ok(now_ms().saturating_sub(minutes * 60_000))
    }
}

/// `app`'s lag samples since `since_ms`, oldest first.
pub(crate) async fn history(
    state: &AppState,
    app: &str,
    since_ms: u64,
) -> ApiResult<Vec<crate::lag_history::Sample>> {
    Ok(
        crate::lag_history::read(&state.redis, &state.stream_keys, app, since_ms)
            .await
            .map_err(anyhow::Error::from)?,
    )
}

#[utoipa::path(get, path = "/api/admin/sync-health/{app}/lag-history", tag = "sync", params(("app" = String, Path, description = "A registered app"), HistoryQuery), responses((status = 200, description = "The app's lag over time: per sample its time (Unix ms) and `[lag, pending]` per partition (platform admins)", body = Value)))]
async fn lag_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(app): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_platform_admin()?;
    registered(&state, &app).await?;
    let samples = history(&state, &app, q.since_ms()?).await?;
    let items: Vec<Value> = samples
        .iter()
        .map(|s| json!({"atMs": s.at_ms, "partitions": s.partitions.iter().map(|(l, p)| [l, p]).collect::<Vec<_>>()}))
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// One tenant's sync state in every app, as its admins see it: the partition its events
/// travel on (that partition's lag, pending entries and the age of the oldest, whether a
/// reader is live), whether the app holds the tenant's events back (parked) or is re-syncing
/// it, its dead letters, when the app last loaded its snapshot, the app's replicas (how many
/// report and are ready, not their names) and its last full sync, and the lag history of the
/// tenant's partition since `since_ms`.
pub(crate) async fn tenant_report(
    state: &AppState,
    tenant: Uuid,
    since_ms: u64,
) -> ApiResult<Value> {
    // The partition the tenant's events are published on (given at its creation).
    let partition: i32 = sqlx::query_scalar("select partition from tenants where id = $1")
        .bind(tenant)
        .fetch_optional(&state.db)
        .await?
        .ok_or(ApiError::NotFound("tenant"))?;
    let partition = partition.max(0) as u32;
    let all = apps_report(state).await?;
    let mut apps = Vec::new();
    for app in &all {
        let name = app["app"].as_str().unwrap_or_default().to_owned();
        let replicas: Vec<&Value> = app["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["fresh"] == true)
            .collect();
        let freshest = replicas
            .iter()
            .max_by_key(|r| r["reportedAtMs"].as_u64().unwrap_or(0));
        let part = freshest
            .and_then(|r| {
                r["health"]["partitions"]
                    .as_array()?
                    .iter()
                    .find(|p| p["partition"] == partition)
                    .cloned()
            })
            .unwrap_or(Value::Null);
        let parked: Vec<Value> = replicas
            .iter()
            .flat_map(|r| r["health"]["partitions"].as_array().into_iter().flatten())
            .flat_map(|p| p["parked"].as_array().into_iter().flatten())
            .filter(|p| p["tenantId"] == tenant.to_string())
            .map(|p| json!({"reason": p["reason"], "entries": p["entries"]}))
            .collect();
        let resyncing: bool = state
            .redis
            .hexists(state.stream_keys.resyncs(&name), tenant.to_string())
            .await
            .map_err(anyhow::Error::from)?;
        let filter = LetterFilter {
            tenant_id: Some(tenant),
            event_type: None,
        };
        let letters = letters(state, &name, &filter).await?;
        let loaded: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "select created_at from audit_log
             where tenant_id = $1 and action = 'snapshot.export' and target = $2
               and reported_by is null
             order by id desc limit 1",
        )
        .bind(tenant)
        .bind(&name)
        .fetch_optional(&state.db)
        .await?;
        let samples: Vec<Value> = history(state, &name, since_ms)
            .await?
            .into_iter()
            .filter_map(|s| {
                let (lag, pending) = *s.partitions.get(partition as usize)?;
                Some(json!([s.at_ms, lag, pending]))
            })
            .collect();
        apps.push(json!({
            "app": name,
            "partition": partition,
            "replicasReporting": replicas.len(),
            "replicasReady": replicas.iter().filter(|r| r["health"]["ready"] == true).count(),
            "lag": part.get("lag"),
            "pending": part.get("pending"),
            "oldestPendingAgeMs": part.get("oldestPendingAgeMs"),
            "readerAlive": part.get("alive"),
            "parked": parked,
            "resyncPending": resyncing,
            "deadLetters": letters.len(),
            "letters": letters.into_iter().take(50).collect::<Vec<_>>(),
            "lastLoadedAt": loaded,
            // When the app last checked every tenant, and what it repaired (no replica names).
            "lastFullSync": app["recentFullSyncs"].get(0).map(|r| json!({
                "scheduledFor": r["scheduledFor"],
                "tenantsChecked": r["tenantsChecked"],
                "repaired": r["repaired"],
            })),
            "lagHistory": samples,
        }));
    }
    Ok(json!({
        "tenantId": tenant,
        "apps": apps,
        "creditsWaiting": credits_waiting(state, Some(tenant)).await?,
    }))
}

#[utoipa::path(get, path = "/api/tenants/{tenant_id}/sync-health", tag = "sync", params(HistoryQuery), responses((status = 200, description = "The tenant's sync state in every app: its partition's lag, parked events, re-sync, dead letters (at most 50 shown), last snapshot load, replicas ready, last full sync, and `lagHistory` as `[atMs, lag, pending]` (tenant admins)", body = Value)))]
async fn tenant_sync_health(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<Value>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    Ok(Json(tenant_report(&state, tenant_id, q.since_ms()?).await?))
}
