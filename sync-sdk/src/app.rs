//! Starting an app service (feature `app`): the flags every app shares and the pieces they
//! configure — a MongoDB store, the lazy loader, the stream consumer (with the loader as its
//! re-sync hook), session verification and the credit client. An app adds its own routes and
//! handler, then [`AppKit::bind`] and [`BoundApp::run_until_stopped`].

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Jwks,
    consumer::{Consumer, ConsumerConfig, Handler},
    contract::{AppManifest, StreamKeys},
    credits::offline::CreditClient,
    fullsync::{FullSync, Integrity, NoIntegrity},
    loader::Loader,
    store::mongo::MongoStore,
    wrapper_client::{WrapperClient, WrapperConfig},
};

pub use crate::fullsync::FieldReferences;

/// The integrity checks an app's manifest declares, as [`AppKit::bind`] runs them.
pub type DeclaredChecks = Vec<FieldReferences>;
pub use crate::store::mongo::APP_COLLECTION_PREFIX;

/// Flags every app shares (`--help` of each app lists them).
#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    /// MongoDB URL.
    #[arg(
        long,
        env = "MONGODB_URL",
        hide_env_values = true,
        default_value = "mongodb://127.0.0.1:27017/"
    )]
    pub mongodb_url: String,
    /// MongoDB database of the app (default: the app's name).
    #[arg(long, env = "APP_MONGO_DB")]
    pub mongo_db: Option<String>,
    /// Redis URL (the event streams).
    #[arg(
        long,
        env = "REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Prefix of every Redis key.
    #[arg(long, env = "TSYNC_NAMESPACE", default_value = "tsync")]
    pub namespace: String,
    /// Number of partition streams.
    #[arg(long, env = "TSYNC_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
    /// The wrapper's base URL, or several separated by commas (each request goes to the one
    /// that answered last, and to the next when it cannot connect).
    #[arg(long, env = "WRAPPER_URL", default_value = "http://127.0.0.1:8080")]
    pub wrapper_url: String,
    /// Issuer of the wrapper's tokens.
    #[arg(long, env = "WRAPPER_ISSUER", default_value = "tenantsync")]
    pub issuer: String,
    /// The app's service client secret at the wrapper (the client id is the app's name).
    #[arg(long, env = "APP_SERVICE_SECRET", hide_env_values = true)]
    pub service_secret: String,
    /// Credits the app may consume per tenant while the wrapper is unreachable.
    #[arg(long, env = "APP_OFFLINE_ALLOWANCE", default_value_t = 0)]
    pub offline_allowance: i64,
    /// Path prefix the edge serves this app under (default: `/<app name>`); sign-in returns here.
    #[arg(long, env = "APP_PUBLIC_PATH")]
    pub public_path: Option<String>,
    /// The wrapper's sign-in page as browsers reach it (through the edge, on the tenant's host).
    #[arg(long, env = "APP_LOGIN_URL", default_value = "/auth/login")]
    pub login_url: String,
    /// The suite's apps linked from every dashboard, as `Title=/path/,…`.
    #[arg(long, env = "APP_SUITE_LINKS", default_value = "CRM=/crm/,HRMS=/hrms/")]
    pub suite_links: String,
    /// Refuse sessions (503) while Redis cannot say whether they were signed out, instead of
    /// accepting them (the default; deactivation is enforced from the synced copy either way).
    #[arg(long, env = "APP_REVOCATION_FAIL_CLOSED", default_value_t = false, action = clap::ArgAction::Set)]
    pub revocation_fail_closed: bool,
    /// When the full sync runs (cron with seconds; one replica per run, under a Redis lock).
    #[arg(long, env = "APP_FULL_SYNC_SCHEDULE", default_value = crate::fullsync::DEFAULT_SCHEDULE)]
    pub full_sync_schedule: String,
}

/// The SDK pieces of a running app.
pub struct AppKit<H> {
    /// The app's copy of tenant data.
    pub store: Arc<MongoStore>,
    /// Loads tenants on first visit.
    pub loader: Arc<Loader<MongoStore>>,
    /// Verifies sessions.
    pub jwks: Arc<Jwks>,
    /// Consumes credits (fast path where mirrored, else direct with the offline allowance).
    pub credits: Arc<CreditClient<MongoStore>>,
    /// The app's Mongo database (for its own collections).
    pub database: mongodb::Database,
    /// Where the app's pages live and where browsers sign in.
    pub pages: Arc<crate::web::Pages>,
    consumer: Arc<Consumer<MongoStore, H>>,
    status: crate::status::StatusReporter<MongoStore, H>,
    redis: fred::clients::Client,
    keys: StreamKeys,
    name: String,
    manifest: AppManifest,
    wrapper: Arc<WrapperClient>,
    suite: Arc<SuiteApps>,
    schedule: String,
    hooks: Arc<dyn crate::lifecycle::LifecycleHooks>,
}

impl<H: Handler> AppKit<H> {
    /// Connect and prepare everything for the app `manifest` describes, with `handler`
    /// reacting to events, and register the manifest with the wrapper (retried in the
    /// background while the wrapper is unreachable).
    pub async fn start(manifest: AppManifest, args: &AppArgs, handler: H) -> anyhow::Result<Self> {
        let manifest = match &args.public_path {
            Some(path) => manifest.served_at(path),
            None => manifest,
        };
        let name = manifest.name.as_str();
        let mongo = mongodb::Client::with_uri_str(&args.mongodb_url).await?;
        let database = mongo.database(args.mongo_db.as_deref().unwrap_or(name));
        let store = Arc::new(MongoStore::new(database.clone()));
        store.init().await?;
        let wrapper = || {
            WrapperClient::new(WrapperConfig {
                base_url: args.wrapper_url.clone(),
                client_id: name.to_owned(),
                client_secret: args.service_secret.clone(),
                page_size: 5_000,
                timeout: Duration::from_secs(10),
            })
        };
        let loader = Loader::new(wrapper(), store.clone());
        // The app serves, loads and charges only tenants whose plan has its feature.
        if let Some(feature) = &manifest.feature {
            loader.require_feature(feature);
        }
        let keys = StreamKeys::new(args.namespace.clone(), args.partitions)
            .ok_or_else(|| anyhow::anyhow!("invalid TSYNC_NAMESPACE or TSYNC_PARTITIONS"))?;
        // The recorder first: what is recorded before it is installed is lost.
        crate::telemetry::prometheus();
        crate::meters::describe(name, args.partitions);
        let mut config = ConsumerConfig::new(name, keys.clone());
        config.resync = Some(loader.resync_hook());
        let redis = crate::redis::connect(&args.redis_url)?;
        let consumer = Consumer::new(redis.clone(), store.clone(), Arc::new(handler), config);
        consumer.ensure_groups().await?;
        // Before anything can ask for a re-sync: they are journalled in Redis from the first.
        let status = crate::status::StatusReporter::new(
            redis.clone(),
            consumer.clone(),
            loader.clone(),
            store.clone(),
        );
        let credits = Arc::new(
            CreditClient::new(Arc::new(wrapper()), store.clone(), args.offline_allowance)
                .with_manifest(&manifest)
                .with_mirror(crate::credits::CreditMirror::new(
                    redis.clone(),
                    keys.clone(),
                )),
        );
        let jwks = Jwks::with_audit(
            &args.wrapper_url,
            &args.issuer,
            Duration::from_secs(10),
            Duration::from_secs(300),
            Arc::new(wrapper()),
        )
        .with_revocations(
            redis.clone(),
            keys.clone(),
            if args.revocation_fail_closed {
                crate::auth::RevocationPolicy::FailClosed
            } else {
                crate::auth::RevocationPolicy::FailOpen
            },
        )
        .with_sessions(crate::auth::SyncedSessions::new(
            loader.clone(),
            store.clone(),
        ));
        let client = Arc::new(wrapper());
        register(client.clone(), manifest.clone()).await;
        let suite = Arc::new(SuiteApps::default());
        suite.refresh(&client).await;
        let mut pages = crate::web::Pages::new(&manifest.public_path);
        pages.login_url = args.login_url.clone();
        pages.suite = crate::web::Pages::parse_suite(&args.suite_links);
        if let Some(base) = pages.login_url.strip_suffix("/login") {
            pages.logout_url = format!("{base}/logout");
        }
        Ok(Self {
            store,
            loader,
            jwks,
            credits,
            database,
            pages: Arc::new(pages),
            consumer,
            status,
            redis,
            keys,
            name: name.to_owned(),
            manifest: manifest.clone(),
            wrapper: client.clone(),
            suite,
            schedule: args.full_sync_schedule.clone(),
            hooks: Arc::new(crate::lifecycle::NoHooks),
        })
    }

    /// What the app removes beyond the SDK's own work when a user is erased or its tenant
    /// purged (the default: nothing more; see [`crate::lifecycle`]).
    pub fn lifecycle_hooks(mut self, hooks: impl crate::lifecycle::LifecycleHooks) -> Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// A collection for the app's own data: `app.<name>` in the app's database, a namespace
    /// apart from the SDK's synced copy (`users`, `roles`, `settings`, `tsync_*`, …), so an app
    /// collection can never collide with one of the SDK's.
    pub fn collection(&self, name: &str) -> mongodb::Collection<mongodb::bson::Document> {
        crate::store::mongo::app_collection(&self.database, name)
    }

    /// The router state of the app, with `app` as its own part.
    pub fn state<T>(&self, app: T) -> AppState<T> {
        AppState {
            jwks: self.jwks.clone(),
            pages: self.pages.clone(),
            loader: self.loader.clone(),
            store: self.store.clone(),
            credits: self.credits.clone(),
            suite: self.suite.clone(),
            app: Arc::new(app),
            name: self.name.as_str().into(),
        }
    }

    /// Bind `listen` for `router` (port 0 picks a free port). The nightly full sync checks the
    /// references the manifest declares ([`AppManifest::with_reference`]); for checks of your
    /// own, see [`bind_with_integrity`](Self::bind_with_integrity).
    pub async fn bind(
        self,
        listen: std::net::SocketAddr,
        router: axum::Router,
    ) -> anyhow::Result<BoundApp<H, DeclaredChecks>> {
        let checks = FieldReferences::declared(&self.database, &self.manifest);
        self.bind_with_integrity(listen, router, checks).await
    }

    /// Bind `listen` for `router`; the nightly full sync also reports the app's references to
    /// users who are gone upstream and applies the app's policy to them (`integrity`).
    pub async fn bind_with_integrity<I: Integrity>(
        self,
        listen: std::net::SocketAddr,
        router: axum::Router,
        integrity: I,
    ) -> anyhow::Result<BoundApp<H, I>> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let router = router
            .layer(axum::middleware::from_fn(degraded_header))
            .merge(health(self.consumer.clone()))
            .layer(axum::middleware::from_fn(crate::http::problems_only));
        let full_sync = FullSync::new(self.loader.clone(), self.store.clone(), Arc::new(integrity));
        Ok(BoundApp {
            listener,
            router,
            kit: self,
            full_sync,
        })
    }
}

/// `GET /health` and `GET /health/live`: a liveness check (`{"status": "ok"}` while the
/// process serves; the wrapper's `/health/live` is the same, so one probe fits every image).
/// `GET /metrics`: Prometheus metrics (docs/metrics.md).
/// `GET /health/ready`: 200 with the consumer's [`crate::consumer::HealthReport`] when every
/// partition has a live reader, else 503 with the reasons in the same report.
fn health<H: Handler>(consumer: Arc<Consumer<MongoStore, H>>) -> axum::Router {
    use axum::{http::StatusCode, routing::get};
    let ready = move || {
        let consumer = consumer.clone();
        async move {
            let report = consumer.health_report().await;
            let status = if report.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(report))
        }
    };
    axum::Router::new()
        .route("/health", get(live))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
}

async fn live() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// `GET /metrics`: the process's metrics in the Prometheus text format.
async fn metrics_text() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::prometheus().render(),
    )
}

/// The router state of an app: the SDK's pieces every handler may need, and the app's own
/// (`app`, also reached through `Deref`, so `state.accounts` reads the app's field). The session
/// extractors ([`crate::auth::TenantUser`], [`crate::web::PageUser`]) find their keys and page
/// settings here, so an app writes no `FromRef` of its own.
pub struct AppState<T> {
    /// Verifies sessions.
    pub jwks: Arc<Jwks>,
    /// Where the app's pages live and where browsers sign in.
    pub pages: Arc<crate::web::Pages>,
    /// Loads tenants on first visit.
    pub loader: Arc<Loader<MongoStore>>,
    /// The app's copy of tenant data.
    pub store: Arc<MongoStore>,
    /// Consumes credits.
    pub credits: Arc<CreditClient<MongoStore>>,
    /// The suite's registered apps (what dashboards link to).
    pub suite: Arc<SuiteApps>,
    /// The app's own state.
    pub app: Arc<T>,
    /// The app's name (its manifest's): its credit scope and service account.
    pub name: Arc<str>,
}

impl<T> AppState<T> {
    /// The top of a dashboard: the tenant, the signed-in user, links to the suite's apps this
    /// tenant has (the registered apps whose feature it has; `APP_SUITE_LINKS` before the
    /// registry could be read) and the sign-out button.
    pub async fn dashboard_header(&self, user: &crate::auth::TenantUser, title: &str) -> String {
        let features = crate::store::tenant(&*self.store, user.tenant_id)
            .await
            .map(|t| t.features)
            .unwrap_or_default();
        let links = self.suite.links_for(&features, &self.pages.suite);
        crate::web::header_with_links(&*self.store, &self.pages, user, title, &links).await
    }
}

/// The suite's registered apps as this app last read them from the wrapper (at start-up, then
/// every minute while it runs).
#[derive(Debug, Default)]
pub struct SuiteApps(std::sync::RwLock<Vec<AppManifest>>);

impl SuiteApps {
    /// Read the registry again; on failure the previous list stays.
    pub async fn refresh(&self, client: &WrapperClient) {
        match client.apps().await {
            Ok(apps) => *self.0.write().unwrap_or_else(|e| e.into_inner()) = apps,
            Err(e) => tracing::warn!(error = %e, "could not read the suite's apps"),
        }
    }

    /// The `(title, path)` of the apps a tenant with `features` has
    /// ([`crate::contract::suite_links`] over the registry and `APP_SUITE_LINKS`).
    pub fn links_for(
        &self,
        features: &[String],
        configured: &[(String, String)],
    ) -> Vec<(String, String)> {
        let apps = self.0.read().unwrap_or_else(|e| e.into_inner());
        crate::contract::suite_links(&apps, features, configured)
    }
}

impl<T> Clone for AppState<T> {
    fn clone(&self) -> Self {
        Self {
            jwks: self.jwks.clone(),
            pages: self.pages.clone(),
            loader: self.loader.clone(),
            store: self.store.clone(),
            credits: self.credits.clone(),
            suite: self.suite.clone(),
            app: self.app.clone(),
            name: self.name.clone(),
        }
    }
}

impl<T> std::ops::Deref for AppState<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.app
    }
}

impl<T> axum::extract::FromRef<AppState<T>> for Arc<Jwks> {
    fn from_ref(s: &AppState<T>) -> Self {
        s.jwks.clone()
    }
}

impl<T> axum::extract::FromRef<AppState<T>> for Arc<crate::web::Pages> {
    fn from_ref(s: &AppState<T>) -> Self {
        s.pages.clone()
    }
}

/// The signed-in user of a request, for a tenant the app has loaded: take it instead of
/// [`crate::auth::TenantUser`] and a handler runs only once the tenant is lazy-loaded, with no
/// [`crate::http::serve_tenant`] to remember. While the wrapper is unreachable a loaded tenant
/// is still served (the response carries `x-tsync-degraded`, added by the layer
/// [`AppKit::bind`] installs); a tenant never loaded is refused with 503 and `Retry-After`.
///
/// ```no_run
/// use sync_sdk::{app::{AppState, LoadedTenant}, axum::Json};
///
/// async fn whoami(tenant: LoadedTenant) -> Json<String> {
///     Json(tenant.user.user_id.to_string())
/// }
/// # let _: sync_sdk::axum::routing::MethodRouter<AppState<()>> = sync_sdk::axum::routing::get(whoami);
/// ```
#[derive(Debug, Clone)]
pub struct LoadedTenant {
    /// The caller, bound to the request's tenant.
    pub user: crate::auth::TenantUser,
    /// The tenant's sync state (its snapshot and last applied seq).
    pub sync: crate::store::SyncState,
}

impl LoadedTenant {
    /// The tenant's id.
    pub fn id(&self) -> uuid::Uuid {
        self.user.tenant_id
    }
}

/// Set by [`LoadedTenant`] when the tenant is served from local data; read by
/// [`degraded_header`] once the handler answered.
#[derive(Clone, Default)]
struct Degraded(Arc<std::sync::atomic::AtomicBool>);

impl<T: Send + Sync> axum::extract::FromRequestParts<AppState<T>> for LoadedTenant {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState<T>,
    ) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        let user = crate::auth::TenantUser::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let availability = state.loader.availability(user.tenant_id).await;
        let (sync, degraded) =
            crate::http::served(user.tenant_id, availability).map_err(|refusal| *refusal)?;
        if let (true, Some(flag)) = (degraded, parts.extensions.get::<Degraded>()) {
            flag.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(Self { user, sync })
    }
}

/// The layer that marks responses served degraded by [`LoadedTenant`].
async fn degraded_header(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let flag = Degraded::default();
    request.extensions_mut().insert(flag.clone());
    let mut response = next.run(request).await;
    if flag.0.load(std::sync::atomic::Ordering::Relaxed) {
        crate::http::mark_degraded(&mut response);
    }
    response
}

/// An app bound to its port, ready to serve and consume.
pub struct BoundApp<H, I = NoIntegrity> {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    kit: AppKit<H>,
    full_sync: Arc<FullSync<MongoStore, I>>,
}

impl<H: Handler, I: Integrity> BoundApp<H, I> {
    /// The app's full sync (what the schedule runs), to run on demand.
    pub fn full_sync(&self) -> Arc<FullSync<MongoStore, I>> {
        self.full_sync.clone()
    }

    /// The bound address (the real port when bound to port 0).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Run until Ctrl-C (SIGINT), then stop gracefully: what an app's `main` ends with.
    pub async fn run_until_ctrl_c(self) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr(), app = %self.kit.name, "listening");
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        self.run_until_stopped(cancel).await
    }

    /// Serve, consume events and run the scheduled full sync until `cancel` fires, then finish
    /// what is in flight.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        let kit = &self.kit;
        let full = self.full_sync.clone();
        let (schedule, redis, keys, name) = (
            kit.schedule.clone(),
            kit.redis.clone(),
            kit.keys.clone(),
            kit.name.clone(),
        );
        let replica = kit.consumer.config().consumer.clone();
        let stop_nightly = cancel.clone();
        tokio::spawn(async move {
            let lock_ttl = Duration::from_secs(3600);
            let nightly = full.run_scheduled(
                &schedule,
                redis,
                keys,
                name,
                replica,
                lock_ttl,
                stop_nightly,
            );
            if let Err(e) = nightly.await {
                tracing::error!(%schedule, error = %e, "invalid full-sync schedule; no full sync will run");
            }
        });
        // The suite's registry, read again every minute (apps registered after this one).
        let (suite, client, stop_refresh) =
            (kit.suite.clone(), kit.wrapper.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_refresh.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => suite.refresh(&client).await,
                }
            }
        });
        let lifecycle = crate::lifecycle::LifecycleWorker::new(
            kit.redis.clone(),
            kit.consumer.config(),
            kit.wrapper.clone(),
            kit.store.clone(),
            kit.loader.clone(),
            kit.hooks.clone(),
        );
        let lifecycle = tokio::spawn(lifecycle.run(cancel.clone()));
        let consuming = tokio::spawn(self.kit.consumer.run(cancel.clone()));
        let reporting = tokio::spawn(self.kit.status.run(cancel.clone()));
        let stop = cancel.clone();
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        cancel.cancel();
        consuming.await??;
        let _ = reporting.await;
        let _ = lifecycle.await;
        Ok(())
    }
}

/// Register `manifest` with the wrapper: once now, and while that fails (the wrapper down or
/// still starting), again in the background with capped backoff until it succeeds. Until then
/// the wrapper refuses consumptions of operations it has never seen declared.
async fn register(client: Arc<WrapperClient>, manifest: AppManifest) {
    match client.register(&manifest).await {
        Ok(()) => tracing::info!(app = %manifest.name, "registered with the wrapper"),
        Err(e) => {
            tracing::warn!(app = %manifest.name, error = %e, "registration failed; retrying in the background");
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(500);
                loop {
                    tokio::time::sleep(delay).await;
                    match client.register(&manifest).await {
                        Ok(()) => {
                            tracing::info!(app = %manifest.name, "registered with the wrapper");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(app = %manifest.name, error = %e, "registration failed; retrying");
                            delay = (delay * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            });
        }
    }
}
