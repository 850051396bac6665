//! The suite's apps: each registers its manifest at start-up (`PUT /api/apps/{name}` with its
//! own service token; platform admins may too), and anyone signed in may list them.

use axum::{
    Json,
    extract::{Path, State},
};
use sync_contract::AppManifest;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::ApiJson;
use crate::{
    audit,
    auth::Caller,
    context::Ctx,
    error::{ApiError, ApiResult},
    model::apps,
    state::AppState,
};

/// App registry routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(register))
}

#[utoipa::path(get, path = "/api/apps", tag = "apps", responses((status = 200, description = "Every registered app with its paid operations and their default prices", body = Vec<AppManifest>)))]
async fn list(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<Vec<AppManifest>>> {
    let mut conn = state.db.acquire().await?;
    Ok(Json(apps::all(&mut conn).await?))
}

#[utoipa::path(put, path = "/api/apps/{name}", tag = "apps", request_body = AppManifest, responses((status = 200, description = "The app's manifest as registered (an app's own service token, or a platform admin)", body = AppManifest)))]
async fn register(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(manifest): ApiJson<AppManifest>,
) -> ApiResult<Json<AppManifest>> {
    match &caller {
        Caller::Service { app } if *app == name => {}
        Caller::Service { .. } => {
            return Err(ApiError::Forbidden("an app registers only itself"));
        }
        Caller::User(_) => {
            caller.require_platform_admin()?;
        }
    }
    let manifest = apps::checked(&name, manifest)?;
    let mut tx = state.db.begin().await?;
    // The feature decides which tenants an app may load, serve and charge: once registered,
    // only a platform admin changes it (an app dropping its feature would reach every tenant).
    if let Caller::Service { .. } = &caller
        && let Some(registered) = apps::registered_feature(&mut tx, &name).await?
        && registered != manifest.feature
    {
        return Err(ApiError::Forbidden(
            "only a platform admin changes the feature an app requires",
        ));
    }
    apps::register(&mut tx, &manifest).await?;
    let entry = audit::Entry {
        tenant_id: None,
        actor_id: caller.user().ok().map(|u| u.id),
        action: "app.registered",
        target: Some(manifest.name.clone()),
        outcome: "success",
        details: serde_json::to_value(&manifest).unwrap_or_default(),
    };
    audit::record(&mut *tx, &ctx, entry).await;
    tx.commit().await?;
    // The fast path prices from its own table: bring it to the new defaults now (the
    // reconciliation would, later).
    if let Err(e) =
        apps::publish_prices_of_app(&state.db, &state.redis, &state.stream_keys, &name).await
    {
        tracing::warn!(error = %e, app = %name, "publishing the app's prices failed; the reconciliation will");
    }
    Ok(Json(manifest))
}
