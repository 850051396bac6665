//! Hosts and tenants. A host names at most one tenant: a host directly under the platform's
//! parent domain (`acme.yourapp.test`) names a tenant by subdomain, any other host only by an
//! *active* custom domain. A custom domain can never lie under the parent domain, is unique, and
//! becomes active only when proven: a tenant admin's request waits as the pending domain until
//! the wrapper has fetched its challenge token from the domain itself
//! (`http://{domain}/.well-known/tenantsync-challenge/{token}`), or a platform admin approves it.
//!
//! `GET /api/domains/{host}` (service callers and platform admins: the tenant list is not public)
//! maps a host to the tenant's configuration. Answers are cached in memory for a short time; a
//! change made through this replica clears the cache at once, and the TTL bounds how long another
//! replica's change can go unseen.

use std::{sync::Arc, time::Duration};
use utoipa_axum::{router::OpenApiRouter, routes};

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Serialize;
use sqlx::PgPool;
use sync_contract::TenantState;
use uuid::Uuid;

use crate::{
    audit,
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    state::AppState,
};

/// Domain routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(lookup))
        .routes(routes!(read_domain))
        .routes(routes!(verify))
        .routes(routes!(approve))
}

/// The path a custom domain serves its challenge token under.
pub const CHALLENGE_PATH: &str = "/.well-known/tenantsync-challenge/";

pub use crate::model::hosts::{DomainCache, DomainInfo, NEGATIVE_TTL};

#[utoipa::path(get, path = "/api/domains/{host}", tag = "domains", responses((status = 200, description = "The tenant a host names (app service tokens and platform admins)", body = DomainInfo)))]
async fn lookup(
    State(state): State<AppState>,
    caller: Caller,
    Path(host): Path<String>,
) -> ApiResult<Json<DomainInfo>> {
    if !matches!(&caller, Caller::Service { .. }) {
        caller.require_platform_admin()?;
    }
    state
        .domains
        .lookup(&state.db, &host)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("tenant for this host"))
}

/// A tenant's custom domain: the active one and the one waiting for proof.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomDomain {
    /// The active custom domain (it names the tenant).
    pub domain: Option<String>,
    /// The requested domain, not active until verified or approved.
    pub pending_domain: Option<String>,
    /// The token the pending domain must serve.
    pub challenge_token: Option<String>,
    /// Where the token must be served (`http://{pendingDomain}{CHALLENGE_PATH}{token}`).
    pub challenge_url: Option<String>,
}

pub(crate) async fn custom_domain(db: &PgPool, tenant_id: Uuid) -> ApiResult<CustomDomain> {
    let (domain, pending_domain, challenge_token): (
        Option<String>,
        Option<String>,
        Option<String>,
    ) = sqlx::query_as(
        "select domain, pending_domain, domain_challenge from tenants
             where id = $1 and status = 'active'",
    )
    .bind(tenant_id)
    .fetch_optional(db)
    .await?
    .ok_or(ApiError::NotFound("active tenant"))?;
    let challenge_url = pending_domain
        .as_ref()
        .zip(challenge_token.as_ref())
        .map(|(d, t)| format!("http://{d}{CHALLENGE_PATH}{t}"));
    Ok(CustomDomain {
        domain,
        pending_domain,
        challenge_token,
        challenge_url,
    })
}

/// `GET /api/tenants/{id}/domain`: the custom domain and its challenge (tenant admins).
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/domain", tag = "domains", responses((status = 200, description = "The tenant's custom domain and its challenge (tenant admins)", body = CustomDomain)))]
async fn read_domain(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Json<CustomDomain>> {
    caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    Ok(Json(custom_domain(&state.db, tenant_id).await?))
}

/// `POST /api/tenants/{id}/domain/verify`: fetch the challenge token from the pending domain;
/// if it is served there, the domain becomes active (tenant admins).
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/domain/verify", tag = "domains", responses((status = 200, description = "The pending domain served its token and is now active", body = TenantState)))]
async fn verify(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Json<TenantState>> {
    let user = caller
        .authorize(&state, &ctx, tenant_id, Access::Admin)
        .await?;
    Ok(Json(verify_domain(&state, &ctx, user.id, tenant_id).await?))
}

/// Fetch the challenge token from the pending domain for `actor` (already authorized as the
/// tenant's admin); if it is served there, the domain becomes active. Audited either way.
pub(crate) async fn verify_domain(
    state: &AppState,
    ctx: &Ctx,
    actor: Uuid,
    tenant_id: Uuid,
) -> ApiResult<TenantState> {
    let pending = custom_domain(&state.db, tenant_id).await?;
    let (Some(domain), Some(token)) = (pending.pending_domain, pending.challenge_token) else {
        return Err(ApiError::Conflict(
            "no custom domain is waiting for verification".into(),
        ));
    };
    if let Err(reason) = fetch_challenge(state, &domain, &token).await {
        audit_domain(state, ctx, tenant_id, actor, &domain, "failure", &reason).await;
        return Err(ApiError::invalid(
            "domain",
            format!("the challenge token was not served at {CHALLENGE_PATH}{token}: {reason}"),
        ));
    }
    activate(state, ctx, tenant_id, actor, &domain, "verified").await
}

/// `POST /api/tenants/{id}/domain/approve`: a platform admin activates the pending domain.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/domain/approve", tag = "domains", responses((status = 200, description = "The pending domain is now active (platform admins)", body = TenantState)))]
async fn approve(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Json<TenantState>> {
    let admin = caller.require_platform_admin()?;
    Ok(Json(
        approve_domain(&state, &ctx, admin.id, tenant_id).await?,
    ))
}

/// Activate the tenant's pending domain for a platform admin (already checked), audited.
pub(crate) async fn approve_domain(
    state: &AppState,
    ctx: &Ctx,
    admin: Uuid,
    tenant_id: Uuid,
) -> ApiResult<TenantState> {
    let pending = custom_domain(&state.db, tenant_id).await?;
    let domain = pending
        .pending_domain
        .ok_or_else(|| ApiError::Conflict("no custom domain is waiting for approval".into()))?;
    activate(state, ctx, tenant_id, admin, &domain, "approved").await
}

/// Make `domain` the tenant's active domain (one transaction with its `tenant.updated` event).
async fn activate(
    state: &AppState,
    ctx: &Ctx,
    tenant_id: Uuid,
    actor: Uuid,
    domain: &str,
    how: &str,
) -> ApiResult<TenantState> {
    let mut tx = state.db.begin().await?;
    let tenant = crate::model::tenants::set_active_domain(
        &mut tx,
        ctx,
        crate::model::ids::TenantId(tenant_id),
        domain,
    )
    .await?;
    tx.commit().await?;
    state.domains.invalidate();
    audit_domain(state, ctx, tenant_id, actor, domain, "success", how).await;
    Ok(tenant)
}

async fn audit_domain(
    state: &AppState,
    ctx: &Ctx,
    tenant_id: Uuid,
    actor: Uuid,
    domain: &str,
    outcome: &'static str,
    reason: &str,
) {
    let entry = audit::Entry {
        tenant_id: Some(tenant_id),
        actor_id: Some(actor),
        action: "domain_verification",
        target: Some(domain.to_owned()),
        outcome,
        details: serde_json::json!({ "reason": reason }),
    };
    audit::record(&state.db, ctx, entry).await;
}

/// Fetch `http://{domain}{CHALLENGE_PATH}{token}` (no redirects, 5 s, at most 1 KiB read) and
/// compare the body with the token. With `WRAPPER_DOMAIN_CHALLENGE_ADDR` set, the domain is
/// reached at that address instead of its DNS answer (tests serve it on loopback).
async fn fetch_challenge(state: &AppState, domain: &str, token: &str) -> Result<(), String> {
    // The tenant names the host: it resolves through the public-only resolver, so a domain
    // pointed at the inside of the deployment is never fetched.
    let mut client = crate::public_net::public_client(Arc::default(), Duration::from_secs(5));
    let mut url = format!("http://{domain}{CHALLENGE_PATH}{token}");
    if let Some(addr) = state.settings.domain_challenge_addr {
        client = client.resolve(domain, addr);
        url = format!("http://{domain}:{}{CHALLENGE_PATH}{token}", addr.port());
    }
    let client = client.build().map_err(|e| e.to_string())?;
    let mut response = client.get(&url).send().await.map_err(|e| {
        if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            "could not connect".to_owned()
        } else {
            "request failed".to_owned()
        }
    })?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| "read failed".to_owned())?
    {
        body.extend_from_slice(&chunk);
        if body.len() > 1024 {
            return Err("the response is larger than a token".into());
        }
    }
    if String::from_utf8_lossy(&body).trim() == token {
        Ok(())
    } else {
        Err("the response is not the token".into())
    }
}
