//! The domain cache: `GET /api/domains/{host}` maps a host (a tenant's subdomain under the
//! parent domain, or its custom domain) to the tenant's public configuration. Answers are cached
//! in memory for a short time; a change made through this replica clears the cache at once, and
//! the TTL bounds how long another replica's change can go unseen.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    routing::get,
};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    error::{ApiError, ApiResult},
    startup::AppState,
};

/// Domain routes (public: the sign-in page needs them before anyone is signed in).
pub fn router() -> Router<AppState> {
    Router::new().route("/api/domains/{host}", get(lookup))
}

/// What a host resolves to.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
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
    pub features: sqlx::types::Json<Vec<String>>,
    /// Theme.
    pub theme: serde_json::Value,
}

/// Host → tenant cache.
#[derive(Debug)]
pub struct DomainCache {
    ttl: Duration,
    parent: Option<String>,
    entries: Mutex<HashMap<String, (Instant, Option<DomainInfo>)>>,
}

impl DomainCache {
    /// A cache trusting entries for `ttl`. With a `parent` domain (e.g. `.yourapp.test`) only
    /// hosts directly under it name a tenant by subdomain.
    pub fn new(ttl: Duration, parent: Option<String>) -> Self {
        let parent = parent.map(|p| format!(".{}", p.trim_start_matches('.').to_lowercase()));
        Self {
            ttl,
            parent,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn subdomain_of<'a>(&self, host: &'a str) -> &'a str {
        match &self.parent {
            Some(parent) => host
                .strip_suffix(parent.as_str())
                .filter(|s| !s.contains('.'))
                .unwrap_or(""),
            None => host.split('.').next().unwrap_or(""),
        }
    }

    /// Forget everything (after a tenant changed).
    pub fn invalidate(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
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
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, info)| info.clone());
        if let Some(info) = cached {
            return Ok(info);
        }
        let subdomain = if host.contains('.') {
            self.subdomain_of(&host)
        } else {
            host.as_str()
        };
        let info: Option<DomainInfo> = sqlx::query_as(
            "select id as tenant_id, name, subdomain, domain, plan, features, theme from tenants
             where status = 'active' and (domain = $1 or subdomain = $2)
             order by (domain = $1) desc nulls last limit 1",
        )
        .bind(&host)
        .bind(subdomain)
        .fetch_optional(db)
        .await?;
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host, (Instant::now(), info.clone()));
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

async fn lookup(
    State(state): State<AppState>,
    Path(host): Path<String>,
) -> ApiResult<Json<DomainInfo>> {
    state
        .domains
        .lookup(&state.db, &host)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("tenant for this host"))
}
