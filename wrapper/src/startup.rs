//! Building and running the wrapper: connect, migrate, bind (port 0 in tests), serve until the
//! cancellation token fires, then drain in-flight requests.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Router, middleware};
use sqlx::{PgPool, postgres::PgPoolOptions};
use sync_contract::StreamKeys;
use sync_telemetry::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};
use uuid::Uuid;

use crate::{
    api,
    config::Settings,
    identity::{keys::KeyStore, password},
    model::hosts::DomainCache,
    validate,
};

pub use crate::state::AppState;

/// The process-wide Prometheus recorder (one per process, shared by every in-process app in
/// tests).
pub fn metrics_handle() -> PrometheusHandle {
    sync_telemetry::prometheus()
}

/// Connect to Postgres with the configured pool size.
pub async fn connect_db(settings: &Settings) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&settings.database_url.0)
        .await
        .context("connecting to Postgres (DATABASE_URL)")
}

/// A Redis client that reconnects with exponential backoff; commands wait for the connection.
pub async fn connect_redis(url: &str) -> anyhow::Result<fred::clients::Client> {
    sync_contract::streams::connect(url).context("connecting to Redis (REDIS_URL)")
}

/// The wrapper, bound to its port and ready to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
}

/// The relay for `state`'s database, Redis and settings.
pub fn relay_for(state: &AppState) -> Arc<crate::relay::Relay> {
    crate::relay::Relay::new(
        state.db.clone(),
        state.redis.clone(),
        state.stream_keys.clone(),
        state.settings.relay_config(),
    )
}

impl Application {
    /// Connect, migrate (if configured), load keys, bootstrap the admin, bind the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let keks = settings.keks()?;
        let db = connect_db(&settings).await?;
        if settings.migrate {
            crate::MIGRATOR
                .run(&db)
                .await
                .context("applying migrations")?;
        }
        if let (Some(email), Some(pw)) = (
            &settings.bootstrap_admin_email,
            &settings.bootstrap_admin_password,
        ) {
            create_platform_admin(&db, email, &pw.0, "Platform Admin").await?;
        }
        for client in &settings.bootstrap_service_clients {
            ensure_service_client(&db, &client.name, &client.secret)
                .await
                .with_context(|| format!("bootstrapping service client {}", client.name))?;
        }
        let redis = connect_redis(&settings.redis_url.0).await?;
        crate::webhooks::seal_all_secrets(&db, &keks).await?;
        let keys = KeyStore::load(db.clone(), settings.issuer.clone(), keks).await?;
        let stream_keys = StreamKeys::new(settings.namespace.clone(), settings.partitions)
            .context("TSYNC_NAMESPACE must be non-empty without braces and TSYNC_PARTITIONS > 0")?;
        let providers = match &settings.oidc_providers {
            Some(json) => crate::auth::oidc::parse_providers(&json.0)?,
            None => Vec::new(),
        };
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        let metrics = metrics_handle();
        crate::meters::describe(settings.partitions);
        let state = AppState {
            db,
            redis,
            keys: Arc::new(keys),
            stream_keys,
            domains: Arc::new(DomainCache::new(
                Duration::from_secs(settings.domain_cache_ttl_secs),
                settings.cookie_domain.clone(),
            )),
            metrics,
            oidc: Arc::new(crate::identity::oidc::Oidc::new(providers)),
            passwords: crate::identity::password::Hasher::new(
                settings.password_hash_concurrency,
                Duration::from_millis(settings.password_hash_wait_ms),
            ),
            settings: Arc::new(settings),
        };
        if let Some(tenant) = &state.settings.bootstrap_tenant {
            bootstrap_tenant(&state, &tenant.0)
                .await
                .context("WRAPPER_BOOTSTRAP_TENANT")?;
        }
        Ok(Self { listener, state })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `cancel` fires, then finish in-flight requests.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.addr(), "wrapper listening");
        let relay = self.state.settings.relay.then(|| {
            let ingest = crate::credit_ingest::CreditIngest::new(
                self.state.db.clone(),
                self.state.redis.clone(),
                self.state.stream_keys.clone(),
            );
            let (relay, cancel) = (relay_for(&self.state), cancel.clone());
            let db = self.state.db.clone();
            let every = Duration::from_secs(self.state.settings.credit_reconcile_secs);
            let settings = &self.state.settings;
            let webhooks = crate::webhooks::Webhooks::new(
                db.clone(),
                self.state.keys.keks().clone(),
                self.state.redis.clone(),
                self.state.stream_keys.clone(),
                settings,
            );
            let webhooks = {
                let cancel = cancel.clone();
                async move {
                    match webhooks {
                        Ok(w) => w.run(cancel).await,
                        Err(e) => tracing::error!(error = %e, "webhooks cannot run"),
                    }
                }
            };
            let grants = crate::grant_jobs::run_periodically(
                db.clone(),
                self.state.mirror(),
                Duration::from_secs(settings.credit_grants_secs),
                cancel.clone(),
            );
            let lag_history = crate::lag_history::run_periodically(
                db.clone(),
                self.state.redis.clone(),
                self.state.stream_keys.clone(),
                Duration::from_secs(settings.lag_history_secs),
                cancel.clone(),
            );
            let operations = crate::lifecycle::run(
                db.clone(),
                self.state.redis.clone(),
                self.state.stream_keys.clone(),
                Duration::from_secs(settings.lifecycle_resend_secs.max(1)),
                (settings.purge_grace_secs > 0)
                    .then(|| Duration::from_secs(settings.purge_grace_secs)),
                cancel.clone(),
            );
            tokio::spawn(async move {
                tokio::join!(
                    relay.run(cancel.clone()),
                    ingest.clone().run(cancel.clone()),
                    reconcile_periodically(db, ingest, every, cancel),
                    operations,
                    grants,
                    lag_history,
                    webhooks,
                );
            })
        });
        let app = router(self.state);
        let stop = cancel.clone();
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
        if let Some(relay) = relay {
            cancel.cancel();
            relay.await?;
        }
        Ok(())
    }
}

/// Reconcile credit mirrors every `every` (zero: never) until cancelled, once per interval
/// across the wrapper's replicas.
async fn reconcile_periodically(
    db: PgPool,
    ingest: Arc<crate::credit_ingest::CreditIngest>,
    every: Duration,
    cancel: CancellationToken,
) {
    crate::jobs::on_ticks(db, "credit_reconcile", every, cancel, || async {
        match ingest.reconcile().await {
            Ok(c) if !c.is_empty() => {
                tracing::warn!(corrections = c.len(), "credit mirrors corrected")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "credit reconciliation failed"),
        }
    })
    .await
}

/// The full router with its middleware.
pub fn router(state: AppState) -> Router {
    let timeout = state.settings.request_timeout();
    let body_limit = state.settings.body_limit;
    let (routes, _) = api::router().split_for_parts();
    routes
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(middleware::from_fn(csrf_guard))
        .layer(middleware::from_fn(sync_web::problem::problems_only))
        .layer(middleware::from_fn_with_state(
            crate::context::TrustedProxies(Arc::new(state.settings.trusted_proxies.clone())),
            crate::context::attach,
        ))
        .with_state(state)
}

/// Refuse state-changing browser requests (session cookie or form post) that come from another
/// host's page (see `sync_web::csrf`).
async fn csrf_guard(
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    match sync_web::csrf::check(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::warn!(path = %req.uri().path(), reason = %e, "possible CSRF refused");
            metrics::counter!("tsync_wrapper_csrf_refusals_total").increment(1);
            // A browser posting a form from another site is shown a page, a client the problem.
            let browser = req
                .headers()
                .get(axum::http::header::ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            if browser {
                return sync_web::page::html(
                    axum::http::StatusCode::FORBIDDEN,
                    "Not allowed",
                    &format!(
                        r#"<h1>Not allowed</h1><p class="error" id="error">{}. Nothing was changed.</p><p><a href="/">Back</a></p>"#,
                        sync_web::html::escape(&e.to_string())
                    ),
                );
            }
            crate::error::problem(
                axum::http::StatusCode::FORBIDDEN,
                "Forbidden",
                serde_json::json!({"detail": e.to_string(), "reason": "csrf"}),
            )
        }
    }
}

/// Create a platform admin unless one with that email exists. Returns the user id.
pub async fn create_platform_admin(
    db: &PgPool,
    email: &str,
    password_text: &str,
    name: &str,
) -> anyhow::Result<Uuid> {
    let email = validate::email("email", email)?;
    validate::password("password", password_text)?;
    let name = validate::full_name("name", name)?;
    let hash = {
        let password_text = password_text.to_owned();
        tokio::task::spawn_blocking(move || password::hash_now(&password_text)).await??
    };
    let id: Option<Uuid> = sqlx::query_scalar(
        "insert into users (id, tenant_id, email, full_name, password_hash, is_platform_admin, email_verified)
         values ($1, null, $2, $3, $4, true, true)
         on conflict do nothing returning id",
    )
    .bind(Uuid::now_v7())
    .bind(&email)
    .bind(&name)
    .bind(&hash)
    .fetch_optional(db)
    .await?;
    match id {
        Some(id) => Ok(id),
        None => Ok(sqlx::query_scalar(
            "select id from users where tenant_id is null and lower(email) = $1",
        )
        .bind(&email)
        .fetch_one(db)
        .await?),
    }
}

/// Create the tenant `spec` describes (a `POST /api/tenants` body, or `@<file>` holding one)
/// unless a tenant already has its subdomain.
async fn bootstrap_tenant(state: &AppState, spec: &str) -> anyhow::Result<()> {
    let text = match spec.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => spec.to_owned(),
    };
    let req: crate::api::tenants::CreateTenant =
        serde_json::from_str(&text).context("not a tenant: the body of POST /api/tenants")?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from tenants where subdomain = $1)")
            .bind(req.subdomain.trim().to_lowercase())
            .fetch_one(&state.db)
            .await?;
    if exists {
        return Ok(());
    }
    let ctx = crate::context::Ctx {
        request_id: "bootstrap".to_owned(),
        correlation_id: uuid::Uuid::now_v7().to_string(),
        client_ip: None,
        traceparent: None,
    };
    let tenant = crate::api::tenants::create_tenant(state, &ctx, req)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(tenant = %tenant["subdomain"], "bootstrap tenant created");
    Ok(())
}

/// Make sure `app`'s service client exists with `secret`: left as it is when its stored secret
/// already matches (no new hash at every start), created or replaced otherwise.
pub async fn ensure_service_client(db: &PgPool, app: &str, secret: &str) -> anyhow::Result<()> {
    let stored: Option<String> =
        sqlx::query_scalar("select secret_hash from service_clients where client_id = $1")
            .bind(app)
            .fetch_optional(db)
            .await?;
    if let Some(stored) = stored {
        let secret = secret.to_owned();
        let matches =
            tokio::task::spawn_blocking(move || password::verify_now(&secret, Some(stored)))
                .await?;
        if matches {
            return Ok(());
        }
    }
    upsert_service_client(db, app, secret).await
}

/// Create or replace the service client of `app` (client id = app name).
pub async fn upsert_service_client(db: &PgPool, app: &str, secret: &str) -> anyhow::Result<()> {
    validate::short_text("app", app, 40)?;
    anyhow::ensure!(
        secret.len() >= 24,
        "a service secret needs at least 24 characters"
    );
    let hash = {
        let secret = secret.to_owned();
        tokio::task::spawn_blocking(move || password::hash_now(&secret)).await??
    };
    sqlx::query(
        "insert into service_clients (client_id, secret_hash, application) values ($1, $2, $1)
         on conflict (client_id) do update set secret_hash = excluded.secret_hash",
    )
    .bind(app)
    .bind(hash)
    .execute(db)
    .await?;
    Ok(())
}
