//! Hosts and tenants: which tenant a request's host names. A host directly under the platform's
//! parent domain names a tenant by subdomain; any other host only by an *active* custom domain
//! (see `api::domains` for how one becomes active). Answers are cached in memory for a short
//! time; a change made through this replica clears the cache at once, and the TTL bounds how
//! long another replica's change can go unseen.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

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
