//! [`TestHub`]: what an app's own tests need of Tenantsync, from any repository — a wrapper
//! process on a fresh Postgres database and a Redis namespace of the test's own, the app's
//! service client made, and helpers to make tenants, users and credits through the wrapper's
//! API as a platform admin and a tenant admin would.
//!
//! The wrapper is the `wrapper` binary on `PATH` (`cargo install --path wrapper` from a clone
//! of the suite), or the command in `TSYNC_WRAPPER_BIN` (words split on spaces, e.g.
//! `/path/to/wrapper`). It is configured by environment only, as a deployment configures it
//! (bootstrap admin, the app's service client from `WRAPPER_BOOTSTRAP_SERVICE_CLIENTS`,
//! migrations at start), and is killed when the hub is dropped.
//!
//! ```ignore
//! # async fn t() -> anyhow::Result<()> {
//! use sync_testkit::hub::TestHub;
//! let hub = TestHub::start("notes").await?;
//! let acme = hub.tenant("acme", &["notes"]).await?;
//! hub.fund(&acme, 100).await?;
//! // The app under test as a process (or in the test's own with hub.app_args()), called as
//! // acme's admin.
//! let app = hub.spawn_app(env!("CARGO_BIN_EXE_notes"), "NOTES_LISTEN").await?;
//! let (status, people) = app.client(&acme).get("/people").await?;
//! # Ok(()) }
//! ```

use std::{process::Stdio, time::Duration};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::{TestDatabase, eventually, free_port, fresh_database, unique_name};

/// The platform admin every hub makes.
pub const ROOT_EMAIL: &str = "root@hub.test";
/// The password of every account a hub makes (the platform admin, tenant admins, users).
pub const PASSWORD: &str = "Hub-Test-Password-1";
/// The key-encryption key a hub seals its signing keys with (tests only).
const KEK: &str = "testhub:dGVzdGh1Yi1rZXktZW5jcnlwdGlvbi1rZXktMzItYnk";

/// A running wrapper for one app's tests; stopped when dropped.
pub struct TestHub {
    /// Where the wrapper listens (`http://127.0.0.1:<port>`).
    pub wrapper_url: String,
    /// The app the hub was made for: its service client exists.
    pub app: String,
    /// The app's service secret (`APP_SERVICE_SECRET`).
    pub service_secret: String,
    /// The Redis namespace (`TSYNC_NAMESPACE`) of this hub's streams.
    pub namespace: String,
    /// The wrapper's database.
    pub db: TestDatabase,
    /// The platform admin's token.
    pub root_token: String,
    http: reqwest::Client,
    child: Child,
}

/// A tenant a hub made, with its first admin signed in.
#[derive(Debug, Clone)]
pub struct HubTenant {
    /// Its id.
    pub id: Uuid,
    /// Its subdomain (what `X-Tenant` names).
    pub subdomain: String,
    /// Its admin's user id.
    pub admin_id: Uuid,
    /// Its admin's bearer token.
    pub admin_token: String,
}

impl TestHub {
    /// Start a wrapper for `app` (see the module docs for which binary).
    pub async fn start(app: &str) -> anyhow::Result<Self> {
        let command = std::env::var("TSYNC_WRAPPER_BIN").unwrap_or_else(|_| "wrapper".to_owned());
        let mut words = command.split_whitespace();
        let program = words.next().context("TSYNC_WRAPPER_BIN is empty")?;
        let db = fresh_database().await?;
        let namespace = unique_name();
        let service_secret = format!("{app}-{}", unique_name());
        let port = free_port()?;
        let child = Command::new(program)
            .args(words)
            .env("WRAPPER_LISTEN", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &db.url)
            .env("REDIS_URL", crate::redis_url())
            .env("TSYNC_NAMESPACE", &namespace)
            .env("WRAPPER_MIGRATE", "true")
            .env("WRAPPER_KEY_ENCRYPTION_KEYS", KEK)
            .env("WRAPPER_COOKIE_SECURE", "false")
            .env("WRAPPER_BOOTSTRAP_ADMIN_EMAIL", ROOT_EMAIL)
            .env("WRAPPER_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD)
            .env(
                "WRAPPER_BOOTSTRAP_SERVICE_CLIENTS",
                format!("{app}={service_secret}"),
            )
            // Tests sign in often on shared cores: wait for a hashing slot rather than 503.
            .env("WRAPPER_PASSWORD_HASH_WAIT_MS", "20000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("starting the wrapper ({command}): install it or set TSYNC_WRAPPER_BIN")
            })?;
        let wrapper_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        healthy(&http, &wrapper_url)
            .await
            .context("the wrapper did not become ready")?;
        let mut hub = Self {
            wrapper_url,
            app: app.to_owned(),
            service_secret,
            namespace,
            db,
            root_token: String::new(),
            http,
            child,
        };
        hub.root_token = hub.sign_in(None, ROOT_EMAIL).await?;
        Ok(hub)
    }

    /// The app's configuration against this hub (its own fresh MongoDB database), for an app
    /// started in the test's process.
    #[cfg(feature = "app")]
    pub fn app_args(&self) -> sync_sdk::app::AppArgs {
        sync_sdk::app::AppArgs {
            mongodb_url: crate::mongodb_url(),
            mongo_db: Some(unique_name()),
            redis_url: crate::redis_url(),
            namespace: self.namespace.clone(),
            partitions: 8,
            wrapper_url: self.wrapper_url.clone(),
            issuer: "tenantsync".into(),
            service_secret: self.service_secret.clone(),
            offline_allowance: 0,
            full_sync_schedule: sync_sdk::fullsync::DEFAULT_SCHEDULE.into(),
            public_path: None,
            login_url: "/auth/login".into(),
            suite_links: String::new(),
            revocation_fail_closed: false,
        }
    }

    /// The same configuration as environment variables, for an app started as a process.
    pub fn app_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MONGODB_URL", crate::mongodb_url()),
            ("APP_MONGO_DB", unique_name()),
            ("REDIS_URL", crate::redis_url()),
            ("TSYNC_NAMESPACE", self.namespace.clone()),
            ("WRAPPER_URL", self.wrapper_url.clone()),
            ("APP_SERVICE_SECRET", self.service_secret.clone()),
        ]
    }

    /// A bearer token of `email` (password [`PASSWORD`]) in tenant `subdomain`, or a platform
    /// admin's with `None`.
    pub async fn sign_in(&self, subdomain: Option<&str>, email: &str) -> anyhow::Result<String> {
        let reply = self
            .call(
                reqwest::Method::POST,
                "/auth/login",
                None,
                json!({"email": email, "password": PASSWORD, "tenant": subdomain}),
            )
            .await?;
        reply["token"]
            .as_str()
            .map(str::to_owned)
            .context("no token in the sign-in answer")
    }

    /// A tenant `subdomain` with `features` (the app's feature, usually), its admin
    /// `admin@<subdomain>.test` signed in.
    pub async fn tenant(&self, subdomain: &str, features: &[&str]) -> anyhow::Result<HubTenant> {
        let admin_email = format!("admin@{subdomain}.test");
        let body = json!({"name": subdomain, "subdomain": subdomain, "plan": "pro",
            "features": features,
            "admin": {"email": admin_email, "fullName": "First Admin", "password": PASSWORD}});
        let created = self
            .call(
                reqwest::Method::POST,
                "/api/tenants",
                Some(&self.root_token),
                body,
            )
            .await?;
        Ok(HubTenant {
            id: uuid_of(&created, "id")?,
            subdomain: subdomain.to_owned(),
            admin_id: uuid_of(&created, "adminUserId")?,
            admin_token: self.sign_in(Some(subdomain), &admin_email).await?,
        })
    }

    /// A user of `tenant` (made by its admin); its id.
    pub async fn user(&self, tenant: &HubTenant, email: &str, name: &str) -> anyhow::Result<Uuid> {
        let path = format!("/api/tenants/{}/users", tenant.id);
        let body = json!({"email": email, "fullName": name, "password": PASSWORD});
        let created = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(&tenant.admin_token),
                body,
            )
            .await?;
        uuid_of(&created, "id")
    }

    /// Change user `id` of `tenant` with `change` (a body of `PATCH /api/tenants/{t}/users/{u}`,
    /// e.g. `{"email": …}`): an event every app receives.
    pub async fn change_user(
        &self,
        tenant: &HubTenant,
        id: Uuid,
        change: Value,
    ) -> anyhow::Result<Value> {
        let path = format!("/api/tenants/{}/users/{id}", tenant.id);
        self.call(
            reqwest::Method::PATCH,
            &path,
            Some(&tenant.admin_token),
            change,
        )
        .await
    }

    /// `amount` credits for the hub's app in `tenant`: the platform admin funds the tenant's
    /// pool, its admin moves them to the app.
    pub async fn fund(&self, tenant: &HubTenant, amount: i64) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/api/admin/credits/allocate",
            Some(&self.root_token),
            json!({"tenantId": tenant.id, "amount": amount}),
        )
        .await?;
        self.call(
            reqwest::Method::POST,
            "/api/admin/credits/allocate/application",
            Some(&tenant.admin_token),
            json!({"tenantId": tenant.id, "application": self.app, "amount": amount}),
        )
        .await?;
        Ok(())
    }

    /// `method path` at the wrapper with a JSON body, as `token`; the JSON answer of a 2xx, else
    /// an error with the status and the problem.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.wrapper_url))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let reply: Value = response.json().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {reply}");
        Ok(reply)
    }

    /// The hub's app's balance in `tenant` (what the wrapper's ledger holds now; paid
    /// operations reach it asynchronously, so poll it with [`eventually`]).
    pub async fn balance(&self, tenant: &HubTenant) -> anyhow::Result<i64> {
        let path = format!("/api/credits/balance?tenantId={}", tenant.id);
        let reply = self
            .call(
                reqwest::Method::GET,
                &path,
                Some(&tenant.admin_token),
                Value::Null,
            )
            .await?;
        let scope = format!("app:{}", self.app);
        Ok(reply["balances"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["scope"] == scope.as_str())
            .and_then(|b| b["balance"].as_i64())
            .unwrap_or(0))
    }

    /// Start the app's binary `exe` (an integration test has it as
    /// `env!("CARGO_BIN_EXE_<name>")`) against the hub: [`app_env`](Self::app_env), listening
    /// where `listen_var` (e.g. `NOTES_LISTEN`) says, and wait until it answers `/health`.
    /// Killed when the returned [`RunningApp`] is dropped.
    pub async fn spawn_app(&self, exe: &str, listen_var: &str) -> anyhow::Result<RunningApp> {
        let port = free_port()?;
        let child = Command::new(exe)
            .envs(self.app_env())
            .env(listen_var, format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {exe}"))?;
        let app = RunningApp {
            url: format!("http://127.0.0.1:{port}"),
            http: self.http.clone(),
            _child: child,
        };
        healthy(&app.http, &app.url)
            .await
            .with_context(|| format!("{exe} did not answer /health"))?;
        Ok(app)
    }

    /// Whether the wrapper process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Wait (60 s at most) until `base` answers `GET /health` with a 2xx.
pub async fn healthy(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let health = format!("{base}/health");
    eventually(Duration::from_secs(60), || {
        let (http, health) = (http.clone(), health.clone());
        async move {
            http.get(health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
}

fn uuid_of(v: &Value, field: &str) -> anyhow::Result<Uuid> {
    v[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no {field} in {v}"))
}

/// An app process a hub started; killed when dropped.
pub struct RunningApp {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    http: reqwest::Client,
    _child: Child,
}

impl RunningApp {
    /// Requests to the app as `tenant`'s admin: its bearer token and `X-Tenant`, as the edge
    /// would pass them.
    pub fn client(&self, tenant: &HubTenant) -> AppClient {
        self.client_as(tenant, &tenant.admin_token)
    }

    /// Requests to the app as the holder of `token` in `tenant`.
    pub fn client_as(&self, tenant: &HubTenant, token: &str) -> AppClient {
        AppClient {
            base: self.url.clone(),
            tenant: tenant.subdomain.clone(),
            token: token.to_owned(),
            http: self.http.clone(),
        }
    }
}

/// Calls to an app as one user of one tenant: each answers its status and its JSON body
/// (`null` when it has none).
#[derive(Clone)]
pub struct AppClient {
    base: String,
    tenant: String,
    token: String,
    http: reqwest::Client,
}

impl AppClient {
    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.send(reqwest::Method::GET, path, None, None).await
    }

    /// `POST path` with a JSON `body` and, when given, an `Idempotency-Key`.
    pub async fn post(
        &self,
        path: &str,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        self.send(reqwest::Method::POST, path, Some(body), idempotency_key)
            .await
    }

    /// `method path`, with a JSON body and an `Idempotency-Key` when given.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("x-tenant", &self.tenant);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or_default()))
    }
}
