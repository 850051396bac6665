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

use fred::prelude::{Client, Error, HashesInterface};
use tracing::Instrument;
use uuid::Uuid;

use crate::{
    consumer::{Resync, ResyncHook, TenantTurn},
    contract::StreamKeys,
    store::{StoreError, SyncState, TenantStore},
    wrapper_client::{LoadError, WrapperClient},
};

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
    journal: std::sync::OnceLock<ResyncJournal>,
    feature: std::sync::OnceLock<String>,
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
            journal: std::sync::OnceLock::new(),
            feature: std::sync::OnceLock::new(),
        })
    }

    /// Retry failed re-syncs after `first`, doubling up to `cap` (default 500 ms to 30 s).
    pub fn with_resync_backoff(mut self: Arc<Self>, first: Duration, cap: Duration) -> Arc<Self> {
        if let Some(loader) = Arc::get_mut(&mut self) {
            loader.resync_backoff = (first, cap);
        }
        self
    }

    /// Serve only tenants whose plan has `feature` (the app manifest's): every other tenant is
    /// refused with [`LoadError::FeatureMissing`] by [`availability`](Self::availability) and
    /// [`ensure_tenant`](Self::ensure_tenant), read from the synced copy, so a tenant that
    /// loses the feature is refused as soon as that change is applied. Set once; later calls
    /// are ignored.
    pub fn require_feature(&self, feature: &str) {
        let _ = self.feature.set(feature.to_owned());
    }

    /// Refuse `tenant_id` unless its synced plan has the required feature (if any).
    async fn entitled(&self, tenant_id: Uuid) -> Result<(), LoadError> {
        let Some(feature) = self.feature.get() else {
            return Ok(());
        };
        let tenant = self
            .store
            .get(crate::store::EntityKind::Tenant, tenant_id, tenant_id)
            .await?;
        let has = tenant.is_some_and(|t| {
            t.state["features"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str())
                .any(|f| f.eq_ignore_ascii_case(feature))
        });
        if has {
            Ok(())
        } else {
            Err(LoadError::FeatureMissing(feature.clone()))
        }
    }

    /// Whether the tenant can be served, loading it if needed, refreshing it in the background
    /// when stale, and degrading to the local copy when the wrapper is unreachable.
    pub async fn availability(
        self: &Arc<Self>,
        tenant_id: Uuid,
    ) -> Result<Availability, LoadError> {
        if let Some(state) = self.loaded(tenant_id).await? {
            self.entitled(tenant_id).await?;
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
            Err(LoadError::FeatureMissing(f)) => Err(LoadError::FeatureMissing(f)),
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
        let state = self.ensure_loaded(tenant_id).await?;
        self.entitled(tenant_id).await?;
        Ok(state)
    }

    async fn ensure_loaded(&self, tenant_id: Uuid) -> Result<SyncState, LoadError> {
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

    /// Keep the re-syncs in `journal` too (in Redis, where they outlive the process and a live
    /// replica takes over those of a dead one). Set once; later calls are ignored.
    pub fn journal_resyncs(&self, journal: ResyncJournal) {
        let _ = self.journal.set(journal);
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
            if let Some(journal) = loader.journal.get() {
                journal.record(tenant_id).await;
            }
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
            if let Some(journal) = loader.journal.get() {
                journal.done(tenant_id).await;
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

    /// Wait for the tenant's turn and hold it: no load and no consumer round of the tenant runs
    /// in this process until the turn is dropped (a purge must not race a batch in flight).
    pub async fn exclusive(&self, tenant_id: Uuid) -> crate::consumer::TenantTurn {
        crate::consumer::TenantTurn::held(self.gate(tenant_id).lock_owned().await)
    }

    fn gate(&self, tenant_id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(tenant_id).or_default().clone()
    }

    async fn load(&self, tenant_id: Uuid) -> Result<SyncState, LoadError> {
        // The snapshot requests carry this span's trace context to the wrapper.
        let span = tracing::info_span!("lazy_load", %tenant_id);
        let result = self.load_once(tenant_id).instrument(span).await;
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

/// The re-syncs of an app not yet done, in Redis: tenant → the replica retrying it.
#[derive(Clone)]
pub struct ResyncJournal {
    redis: Client,
    key: String,
    replica: String,
}

impl ResyncJournal {
    /// The journal of `app`, written as `replica`.
    pub fn new(redis: Client, keys: &StreamKeys, app: &str, replica: &str) -> Self {
        Self {
            redis,
            key: keys.resyncs(app),
            replica: replica.to_owned(),
        }
    }

    /// Note that this replica retries `tenant`'s re-sync. A failure to write is logged, not
    /// fatal: the re-sync itself goes on.
    pub async fn record(&self, tenant: Uuid) {
        let written: Result<i64, Error> = self
            .redis
            .hset(&self.key, (tenant.to_string(), self.replica.as_str()))
            .await;
        if let Err(e) = written {
            tracing::warn!(%tenant, error = %e, "re-sync journal: could not record");
        }
    }

    /// Note that `tenant`'s re-sync is done.
    pub async fn done(&self, tenant: Uuid) {
        let removed: Result<i64, Error> = self.redis.hdel(&self.key, tenant.to_string()).await;
        if let Err(e) = removed {
            tracing::warn!(%tenant, error = %e, "re-sync journal: could not clear");
        }
    }

    /// Every re-sync not yet done, with the replica that retries it.
    pub async fn pending(&self) -> Result<Vec<(Uuid, String)>, Error> {
        let all: std::collections::HashMap<String, String> = self.redis.hgetall(&self.key).await?;
        Ok(all
            .into_iter()
            .filter_map(|(t, r)| Some((t.parse().ok()?, r)))
            .collect())
    }

    /// The re-syncs whose replica is not among `live` (and is not this one): a replica that
    /// died with them pending.
    pub async fn orphaned(&self, live: &HashSet<String>) -> Result<Vec<Uuid>, Error> {
        Ok(self
            .pending()
            .await?
            .into_iter()
            .filter(|(_, r)| *r != self.replica && !live.contains(r))
            .map(|(t, _)| t)
            .collect())
    }
}
