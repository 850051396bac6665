//! Lazy loading: a tenant is loaded the first time one of its users visits, from the wrapper's
//! snapshot, and kept current by the stream from then on.
//!
//! Guarantees (docs/architecture.md, invariant 4):
//! * **No gap at the handoff.** Before the snapshot is read the tenant is marked *loading*, and
//!   the consumer applies every event of a loading tenant. The snapshot carries the tenant's seq
//!   watermark read in the same transaction; once it is written (version-gated, so it never
//!   overwrites a newer event already applied) the watermark is recorded and the consumer skips
//!   events at or below it. An event the consumer ignored before the mark was committed before
//!   the snapshot was read, so the snapshot has it.
//! * **One fetch for many visitors.** Concurrent first visits of one tenant share one load
//!   (single-flight); the others wait for it and find the tenant loaded.
//! * **Re-sync on demand, until it succeeds.** [`Loader::reload`] runs the same load for a
//!   tenant already loaded. [`Loader::request_resync`] (the consumer's gap hook) retries it in
//!   the background with capped backoff until it succeeds, so a tenant left wrong by a wrapper
//!   outage is repaired when the wrapper returns, not at the next nightly sync. Pending
//!   re-syncs are counted (`tsync_loader_resyncs_pending`, and in the apps' readiness report).
//! * **Loads and the consumer take turns.** Loads hold a per-tenant lock; the consumer applies
//!   a tenant's events only when it can take that lock and no re-sync of the tenant is pending
//!   ([`crate::consumer::Resync::claim`]), so the two never write the same tenant at once.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    consumer::{Resync, ResyncHook, TenantTurn},
    store::{EntityKind, SnapshotItem, StoreError, SyncState, TenantStore},
};

/// Why a tenant could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The wrapper could not be reached or failed: serve what is loaded, retry later.
    #[error("wrapper unavailable: {0}")]
    Unavailable(String),
    /// The wrapper does not know the tenant.
    #[error("no such tenant")]
    NotFound,
    /// The app's credentials were refused.
    #[error("the wrapper refused the app's credentials")]
    Unauthorized,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How an app reaches the wrapper: base URL and service credentials.
#[derive(Clone)]
pub struct WrapperConfig {
    /// e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The service client id (the app's name).
    pub client_id: String,
    /// The service client secret.
    pub client_secret: String,
    /// Users per snapshot page.
    pub page_size: u32,
    /// Timeout of one wrapper request.
    pub timeout: Duration,
}

impl std::fmt::Debug for WrapperConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrapperConfig")
            .field("base_url", &self.base_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A client of the wrapper's sync endpoints, with a cached service token.
pub struct WrapperClient {
    http: reqwest::Client,
    config: WrapperConfig,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

#[derive(Debug, Deserialize)]
struct Versioned {
    version: i64,
    state: Value,
}

/// One page of a tenant snapshot.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPage {
    /// The tenant's seq when the page was read.
    pub watermark: i64,
    /// Continue with this cursor; None on the last page.
    pub next_cursor: Option<Uuid>,
    #[serde(default)]
    tenant: Option<Versioned>,
    #[serde(default)]
    users: Vec<Versioned>,
    #[serde(default)]
    roles: Vec<Versioned>,
    #[serde(default)]
    memberships: Vec<Versioned>,
    #[serde(default)]
    settings: Option<Versioned>,
    #[serde(default)]
    credit_configs: Vec<Versioned>,
}

impl SnapshotPage {
    /// The page's aggregates as store items.
    pub fn items(self, tenant_id: Uuid) -> Vec<SnapshotItem> {
        let id_of = |v: &Versioned, field: &str| {
            v.state
                .get(field)
                .and_then(|i| i.as_str())
                .and_then(|s| s.parse().ok())
        };
        let mut items = Vec::new();
        let mut push = |kind: EntityKind, v: Versioned, field: &str| {
            if let Some(id) = id_of(&v, field) {
                items.push((kind, id, v.version, v.state));
            }
        };
        if let Some(v) = self.tenant {
            push(EntityKind::Tenant, v, "id");
        }
        for v in self.users {
            push(EntityKind::User, v, "id");
        }
        for v in self.roles {
            push(EntityKind::Role, v, "id");
        }
        for v in self.memberships {
            push(EntityKind::Membership, v, "id");
        }
        if let Some(v) = self.settings {
            push(EntityKind::Settings, v, "tenantId");
        }
        for v in self.credit_configs {
            push(EntityKind::CreditConfig, v, "id");
        }
        // Settings are keyed by tenant: a page for another tenant would be a wrapper bug.
        items.retain(|i| i.0 != EntityKind::Settings || i.1 == tenant_id);
        items
    }
}

fn unavailable(e: impl std::fmt::Display) -> LoadError {
    LoadError::Unavailable(e.to_string())
}

impl WrapperClient {
    /// A client for `config`.
    pub fn new(config: WrapperConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .unwrap_or_default();
        Self {
            http,
            config,
            token: tokio::sync::Mutex::new(None),
        }
    }

    async fn token(&self, refresh: bool) -> Result<String, LoadError> {
        let mut cached = self.token.lock().await;
        let fresh = cached
            .as_ref()
            .filter(|(_, until)| !refresh && Instant::now() < *until);
        if let Some((token, _)) = fresh {
            return Ok(token.clone());
        }
        let resp = self
            .http
            .post(format!("{}/auth/service-token", self.config.base_url))
            .json(&serde_json::json!({
                "clientId": self.config.client_id, "clientSecret": self.config.client_secret,
            }))
            .send()
            .await
            .map_err(unavailable)?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => return Err(LoadError::Unauthorized),
            s => return Err(unavailable(format!("service token: HTTP {s}"))),
        }
        let body: Value = resp.json().await.map_err(unavailable)?;
        let token = body["accessToken"].as_str().unwrap_or_default().to_owned();
        let ttl = body["expiresIn"].as_u64().unwrap_or(60);
        // Renew a little before expiry.
        let until = Instant::now() + Duration::from_secs(ttl.saturating_sub(ttl / 5).max(1));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    /// One page of `tenant_id`'s snapshot.
    pub async fn snapshot_page(
        &self,
        tenant_id: Uuid,
        cursor: Option<Uuid>,
    ) -> Result<SnapshotPage, LoadError> {
        let mut url = format!(
            "{}/api/sync/tenant/{tenant_id}?limit={}",
            self.config.base_url, self.config.page_size
        );
        if let Some(c) = cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        self.get_json(&url).await
    }
}

/// A tenant's digests as the wrapper computes them.
#[derive(Debug, Clone, Deserialize)]
pub struct RemoteDigest {
    /// The tenant's seq when the digests were computed.
    pub watermark: i64,
    /// Digest per kind name (`users`, `roles`, …).
    pub digests: HashMap<String, String>,
}

impl WrapperClient {
    /// The wrapper's digests of `tenant_id`.
    pub async fn digest(&self, tenant_id: Uuid) -> Result<RemoteDigest, LoadError> {
        let url = format!(
            "{}/api/sync/tenant/{tenant_id}/digest",
            self.config.base_url
        );
        self.get_json(&url).await
    }

    /// Report a security event (e.g. a refused cross-tenant attempt) into the audit log of
    /// `tenant` (its id or subdomain).
    pub async fn report_audit(
        &self,
        tenant: &str,
        actor_id: Option<Uuid>,
        action: &str,
        details: Value,
    ) -> Result<(), LoadError> {
        let url = format!("{}/api/audit/events", self.config.base_url);
        let body = serde_json::json!({"tenant": tenant, "actorId": actor_id, "action": action, "details": details});
        let token = self.token(false).await?;
        let resp = self
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(unavailable)?;
        match resp.status().as_u16() {
            202 => Ok(()),
            s => Err(unavailable(format!("audit: HTTP {s}"))),
        }
    }

    /// Consume credits directly at the wrapper (idempotent by `operation_id`). `Ok(Err(balance))`
    /// is a refusal for insufficient credits (nothing charged); the receipt is the ledger entry.
    pub async fn consume(
        &self,
        tenant_id: Uuid,
        application: &str,
        operation_code: &str,
        operation_id: &str,
        amount: i64,
    ) -> Result<Result<Value, i64>, LoadError> {
        let url = format!("{}/api/credits/consume", self.config.base_url);
        let body = serde_json::json!({
            "tenantId": tenant_id, "application": application, "creditAmount": amount,
            "operationCode": operation_code, "operationId": operation_id,
        });
        for refresh in [false, true] {
            let token = self.token(refresh).await?;
            let resp = self
                .http
                .post(&url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map_err(unavailable)?;
            match resp.status().as_u16() {
                200 => return resp.json().await.map(Ok).map_err(unavailable),
                402 => {
                    let problem: Value = resp.json().await.map_err(unavailable)?;
                    return Ok(Err(problem["balance"].as_i64().unwrap_or(0)));
                }
                401 if !refresh => continue,
                401 | 403 => return Err(LoadError::Unauthorized),
                404 => return Err(LoadError::NotFound),
                s => return Err(unavailable(format!("consume: HTTP {s}"))),
            }
        }
        Err(LoadError::Unauthorized)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, LoadError> {
        for refresh in [false, true] {
            let token = self.token(refresh).await?;
            let resp = self
                .http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(unavailable)?;
            match resp.status().as_u16() {
                200 => return resp.json().await.map_err(unavailable),
                401 if !refresh => continue,
                401 | 403 => return Err(LoadError::Unauthorized),
                404 => return Err(LoadError::NotFound),
                s => return Err(unavailable(format!("{url}: HTTP {s}"))),
            }
        }
        Err(LoadError::Unauthorized)
    }
}

/// The loader as the consumer's [`Resync`].
struct LoaderResync<S>(Arc<Loader<S>>);

impl<S: TenantStore> Resync for LoaderResync<S> {
    fn request(&self, tenant_id: Uuid) {
        self.0.request_resync(tenant_id);
    }

    fn claim(&self, tenant_id: Uuid) -> Option<TenantTurn> {
        if self.0.resyncs().contains(&tenant_id) {
            return None;
        }
        self.0
            .gate(tenant_id)
            .try_lock_owned()
            .ok()
            .map(TenantTurn::held)
    }

    fn pending(&self) -> usize {
        self.0.resyncs().len()
    }
}

/// How a request for a tenant can be served (graceful degradation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Loaded, and the wrapper is reachable.
    Fresh(SyncState),
    /// Loaded, but the wrapper is unreachable: serve from the store and say so (the SDK's HTTP
    /// layer sets a header); a background refresh keeps trying.
    Degraded(SyncState),
    /// Not loaded and the wrapper is unreachable: answer 503 with this Retry-After.
    Unavailable {
        /// When to try again.
        retry_after: Duration,
    },
}

/// Loads tenants into a store on first visit; one load per tenant at a time.
pub struct Loader<S> {
    client: WrapperClient,
    store: Arc<S>,
    inflight: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    refreshed: Mutex<HashMap<Uuid, Instant>>,
    wrapper_down: AtomicBool,
    staleness: Duration,
    resyncs: Mutex<HashSet<Uuid>>,
    resync_backoff: (Duration, Duration),
}

impl<S: TenantStore> Loader<S> {
    /// A loader writing into `store`; loaded tenants are refreshed in the background once their
    /// last load is older than 15 minutes (see [`with_staleness`](Self::with_staleness)).
    pub fn new(client: WrapperClient, store: Arc<S>) -> Arc<Self> {
        Self::with_staleness(client, store, Duration::from_secs(15 * 60))
    }

    /// A loader refreshing tenants whose last load is older than `staleness`.
    pub fn with_staleness(client: WrapperClient, store: Arc<S>, staleness: Duration) -> Arc<Self> {
        Arc::new(Self {
            client,
            store,
            inflight: Mutex::new(HashMap::new()),
            refreshed: Mutex::new(HashMap::new()),
            wrapper_down: AtomicBool::new(false),
            staleness,
            resyncs: Mutex::new(HashSet::new()),
            resync_backoff: (Duration::from_millis(500), Duration::from_secs(30)),
        })
    }

    /// Retry failed re-syncs after `first`, doubling up to `cap` (default 500 ms to 30 s).
    pub fn with_resync_backoff(mut self: Arc<Self>, first: Duration, cap: Duration) -> Arc<Self> {
        if let Some(loader) = Arc::get_mut(&mut self) {
            loader.resync_backoff = (first, cap);
        }
        self
    }

    /// Whether the tenant can be served, loading it if needed, refreshing it in the background
    /// when stale, and degrading to the local copy when the wrapper is unreachable.
    pub async fn availability(
        self: &Arc<Self>,
        tenant_id: Uuid,
    ) -> Result<Availability, LoadError> {
        if let Some(state) = self.loaded(tenant_id).await? {
            if self.is_stale(tenant_id) {
                let loader = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = loader.reload(tenant_id).await {
                        tracing::warn!(%tenant_id, error = %e, "background refresh failed");
                    }
                });
            }
            return Ok(if self.wrapper_down.load(Ordering::SeqCst) {
                Availability::Degraded(state)
            } else {
                Availability::Fresh(state)
            });
        }
        match self.ensure_tenant(tenant_id).await {
            Ok(state) => Ok(Availability::Fresh(state)),
            Err(LoadError::Unavailable(_)) => Ok(Availability::Unavailable {
                retry_after: Duration::from_secs(5),
            }),
            Err(e) => Err(e),
        }
    }

    fn is_stale(&self, tenant_id: Uuid) -> bool {
        let refreshed = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
        refreshed
            .get(&tenant_id)
            .is_none_or(|at| at.elapsed() >= self.staleness)
    }

    /// The wrapper client the loader fetches with.
    pub fn client(&self) -> &WrapperClient {
        &self.client
    }

    /// The tenant's sync state, loading it first if it was never loaded.
    pub async fn ensure_tenant(&self, tenant_id: Uuid) -> Result<SyncState, LoadError> {
        if let Some(state) = self.loaded(tenant_id).await? {
            return Ok(state);
        }
        let gate = self.gate(tenant_id);
        let _turn = gate.lock().await;
        // Whoever held the gate before us may have loaded it.
        if let Some(state) = self.loaded(tenant_id).await? {
            return Ok(state);
        }
        self.load(tenant_id).await
    }

    /// Load the tenant again (after a gap, or when local data is stale).
    pub async fn reload(&self, tenant_id: Uuid) -> Result<SyncState, LoadError> {
        let gate = self.gate(tenant_id);
        let _turn = gate.lock().await;
        self.load(tenant_id).await
    }

    /// The consumer's re-sync hook: [`request_resync`](Self::request_resync) on a gap, and
    /// turns taken with this loader's loads.
    pub fn resync_hook(self: &Arc<Self>) -> ResyncHook {
        Arc::new(LoaderResync(self.clone()))
    }

    /// Re-sync the tenant in the background, retrying with capped backoff until it succeeds
    /// (or the wrapper says the tenant does not exist). A request for a tenant whose re-sync is
    /// pending already joins it.
    pub fn request_resync(self: &Arc<Self>, tenant_id: Uuid) {
        if !self.resyncs().insert(tenant_id) {
            return;
        }
        self.count_resyncs();
        let loader = self.clone();
        tokio::spawn(async move {
            let (first, cap) = loader.resync_backoff;
            let mut failures = 0u32;
            loop {
                match loader.reload(tenant_id).await {
                    Ok(_) => break,
                    Err(LoadError::NotFound) => {
                        tracing::warn!(%tenant_id, "re-sync: the wrapper does not know the tenant; giving up");
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        let delay = first.saturating_mul(1 << (failures - 1).min(16)).min(cap);
                        tracing::warn!(%tenant_id, error = %e, failures, ?delay, "re-sync failed; retrying");
                        metrics::counter!("tsync_loader_resync_failures_total").increment(1);
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            loader.resyncs().remove(&tenant_id);
            loader.count_resyncs();
        });
    }

    /// Tenants whose re-sync is pending.
    pub fn pending_resyncs(&self) -> Vec<Uuid> {
        self.resyncs().iter().copied().collect()
    }

    fn resyncs(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.resyncs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_resyncs(&self) {
        metrics::gauge!("tsync_loader_resyncs_pending").set(self.resyncs().len() as f64);
    }

    async fn loaded(&self, tenant_id: Uuid) -> Result<Option<SyncState>, LoadError> {
        Ok(self
            .store
            .sync_state(tenant_id)
            .await?
            .filter(|s| !s.is_loading()))
    }

    fn gate(&self, tenant_id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(tenant_id).or_default().clone()
    }

    async fn load(&self, tenant_id: Uuid) -> Result<SyncState, LoadError> {
        let result = self.load_once(tenant_id).await;
        match &result {
            Ok(_) => {
                self.wrapper_down.store(false, Ordering::SeqCst);
                self.refreshed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(tenant_id, Instant::now());
            }
            Err(LoadError::Unavailable(_)) => self.wrapper_down.store(true, Ordering::SeqCst),
            Err(_) => {}
        }
        result
    }

    async fn load_once(&self, tenant_id: Uuid) -> Result<SyncState, LoadError> {
        let started = Instant::now();
        // A first load marks the tenant loading so the consumer stops ignoring its events. A
        // reload of a loaded tenant needs no mark (its events are being applied) and must not
        // make the tenant unservable if the wrapper fails halfway.
        let previous = self.store.sync_state(tenant_id).await?;
        if previous.is_none_or(|s| s.is_loading()) {
            self.store.mark_loading(tenant_id).await?;
        }
        let first = self.client.snapshot_page(tenant_id, None).await?;
        let watermark = first.watermark;
        let mut cursor = first.next_cursor;
        self.store
            .upsert_many(tenant_id, first.items(tenant_id))
            .await?;
        while let Some(c) = cursor {
            let page = self.client.snapshot_page(tenant_id, Some(c)).await?;
            cursor = page.next_cursor;
            self.store
                .upsert_many(tenant_id, page.items(tenant_id))
                .await?;
        }
        // The first page's watermark is the lowest: events after it are applied from the stream.
        self.store.mark_loaded(tenant_id, watermark).await?;
        metrics::histogram!("tsync_loader_load_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(%tenant_id, watermark, elapsed_ms = started.elapsed().as_millis() as u64, "tenant loaded");
        self.store
            .sync_state(tenant_id)
            .await?
            .ok_or_else(|| LoadError::Store(StoreError::transient("tenant vanished after loading")))
    }
}
