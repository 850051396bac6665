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

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use axum::{
    Json,
    extract::{Path, State},
};
use serde::Serialize;
use sqlx::PgPool;
use sync_sdk::contract::TenantState;
use uuid::Uuid;

use crate::{
    audit,
    auth::{Access, Caller},
    context::Ctx,
    error::{ApiError, ApiResult},
    startup::AppState,
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

/// What a host resolves to.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainInfo {
    /// The tenant.
    pub tenant_id: Uuid,
    /// Its display name.
    pub name: String,
    /// Its subdomain.
    pub subdomain: String,
    /// Its custom domain.
    pub domain: Option<String>,
    /// Its plan.
    pub plan: String,
    /// Enabled features.
    #[schema(value_type = Vec<String>)]
    pub features: sqlx::types::Json<Vec<String>>,
    /// Theme.
    pub theme: serde_json::Value,
}

/// Host → tenant cache.
///
/// "No tenant here" is cached too (made-up hosts must not each cost a query), but for at most
/// [`NEGATIVE_TTL`], and an answer read before an invalidation is never stored after it: a
/// lookup that raced the creation of its tenant (an app's audit report naming a tenant about to
/// be created, say) used to pin "no such tenant" for the whole TTL.
#[derive(Debug)]
pub struct DomainCache {
    ttl: Duration,
    parent: Option<String>,
    entries: Mutex<HashMap<String, (Instant, Option<DomainInfo>)>>,
    generation: std::sync::atomic::AtomicU64,
}

/// How long "no tenant at this host" is trusted.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(2);

impl DomainCache {
    /// A cache trusting entries for `ttl`. With a `parent` domain (e.g. `.yourapp.test`) only
    /// hosts directly under it name a tenant by subdomain.
    pub fn new(ttl: Duration, parent: Option<String>) -> Self {
        let parent = parent.map(|p| format!(".{}", p.trim_start_matches('.').to_lowercase()));
        Self {
            ttl,
            parent,
            entries: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How `host` may name a tenant: by subdomain (a host directly under the parent domain, or
    /// a bare label) or by custom domain (any other host), never both.
    fn host_ref<'a>(&self, host: &'a str) -> HostRef<'a> {
        if !host.contains('.') {
            return HostRef::Subdomain(host);
        }
        match &self.parent {
            Some(parent) => match host.strip_suffix(parent.as_str()) {
                Some(sub) if !sub.contains('.') && !sub.is_empty() => HostRef::Subdomain(sub),
                Some(_) => HostRef::None,
                None if host == &parent[1..] => HostRef::None,
                None => HostRef::Domain(host),
            },
            None => HostRef::Domain(host),
        }
    }

    /// Check that `domain` (a valid host name) may be a tenant's custom domain: it is neither
    /// the parent domain nor under it (those hosts are the tenants' subdomains).
    pub fn check_custom_domain(&self, field: &str, domain: &str) -> ApiResult<()> {
        match self.host_ref(domain) {
            HostRef::Domain(_) => Ok(()),
            _ => Err(ApiError::invalid(
                field,
                "must not be the platform's domain or lie under it",
            )),
        }
    }

    /// Forget everything (after a tenant changed).
    pub fn invalidate(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        entries.clear();
    }

    /// The active tenant `host` names: its custom domain, or its first label as the subdomain.
    pub async fn lookup(&self, db: &PgPool, host: &str) -> ApiResult<Option<DomainInfo>> {
        let host = host
            .split(':')
            .next()
            .unwrap_or("")
            .trim_end_matches('.')
            .to_lowercase();
        if host.is_empty() {
            return Ok(None);
        }
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host)
            .filter(|(at, info)| {
                at.elapsed()
                    < if info.is_some() {
                        self.ttl
                    } else {
                        self.ttl.min(NEGATIVE_TTL)
                    }
            })
            .map(|(_, info)| info.clone());
        if let Some(info) = cached {
            return Ok(info);
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        const COLUMNS: &str = "id as tenant_id, name, subdomain, domain, plan, features, theme";
        let query = match self.host_ref(&host) {
            HostRef::Subdomain(sub) => Some((
                format!("select {COLUMNS} from tenants where status = 'active' and subdomain = $1"),
                sub.to_owned(),
            )),
            HostRef::Domain(domain) => Some((
                format!("select {COLUMNS} from tenants where status = 'active' and domain = $1"),
                domain.to_owned(),
            )),
            HostRef::None => None,
        };
        let info: Option<DomainInfo> = match query {
            Some((sql, value)) => sqlx::query_as(&sql).bind(value).fetch_optional(db).await?,
            None => None,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // A change committed while this read ran invalidated the cache: do not store the answer.
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            entries.insert(host, (Instant::now(), info.clone()));
        }
        drop(entries);
        Ok(info)
    }

    /// A tenant named by id or by subdomain.
    pub async fn resolve_tenant_ref(
        &self,
        db: &PgPool,
        reference: &str,
    ) -> ApiResult<Option<Uuid>> {
        if let Ok(id) = reference.parse::<Uuid>() {
            let found: Option<Uuid> =
                sqlx::query_scalar("select id from tenants where id = $1 and status = 'active'")
                    .bind(id)
                    .fetch_optional(db)
                    .await?;
            return Ok(found);
        }
        Ok(self.lookup(db, reference).await?.map(|d| d.tenant_id))
    }
}

/// What a host can name.
enum HostRef<'a> {
    Subdomain(&'a str),
    Domain(&'a str),
    None,
}

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

async fn custom_domain(db: &PgPool, tenant_id: Uuid) -> ApiResult<CustomDomain> {
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
        .await?
        .clone();
    let pending = custom_domain(&state.db, tenant_id).await?;
    let (Some(domain), Some(token)) = (pending.pending_domain, pending.challenge_token) else {
        return Err(ApiError::Conflict(
            "no custom domain is waiting for verification".into(),
        ));
    };
    if let Err(reason) = fetch_challenge(&state, &domain, &token).await {
        audit_domain(
            &state, &ctx, tenant_id, user.id, &domain, "failure", &reason,
        )
        .await;
        return Err(ApiError::invalid(
            "domain",
            format!("the challenge token was not served at {CHALLENGE_PATH}{token}: {reason}"),
        ));
    }
    activate(&state, &ctx, tenant_id, user.id, &domain, "verified").await
}

/// `POST /api/tenants/{id}/domain/approve`: a platform admin activates the pending domain.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/domain/approve", tag = "domains", responses((status = 200, description = "The pending domain is now active (platform admins)", body = TenantState)))]
async fn approve(
    State(state): State<AppState>,
    ctx: Ctx,
    caller: Caller,
    Path(tenant_id): Path<Uuid>,
) -> ApiResult<Json<TenantState>> {
    let admin = caller.require_platform_admin()?.clone();
    let pending = custom_domain(&state.db, tenant_id).await?;
    let domain = pending
        .pending_domain
        .ok_or_else(|| ApiError::Conflict("no custom domain is waiting for approval".into()))?;
    activate(&state, &ctx, tenant_id, admin.id, &domain, "approved").await
}

/// Make `domain` the tenant's active domain (one transaction with its `tenant.updated` event).
async fn activate(
    state: &AppState,
    ctx: &Ctx,
    tenant_id: Uuid,
    actor: Uuid,
    domain: &str,
    how: &str,
) -> ApiResult<Json<TenantState>> {
    let mut tx = state.db.begin().await?;
    let tenant = super::tenants::set_active_domain(&mut tx, ctx, tenant_id, domain).await?;
    tx.commit().await?;
    state.domains.invalidate();
    audit_domain(state, ctx, tenant_id, actor, domain, "success", how).await;
    Ok(Json(tenant))
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
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5));
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
