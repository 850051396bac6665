//! `spawn_wrapper()`: the real wrapper on port 0 with its own database and Redis namespace, and
//! typed helpers so tests read as scenarios.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wrapper::{
    config::Settings,
    startup::{AppState, Application},
};

use crate::{TestDatabase, fresh_database, redis_namespace, redis_url};

/// Password of every account the helpers create.
pub const PASSWORD: &str = "Correct-Horse-9-Battery";
/// The platform admin every test app starts with.
pub const ROOT_EMAIL: &str = "root@platform.test";
/// The key-encryption key every test wrapper seals its signing keys with.
pub const TEST_KEK: &str = "test-kek:dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM";
/// A second key-encryption key, for rotations.
pub const K2: &str = "k2:a2V5LWVuY3J5cHRpb24ta2V5LW51bWJlci10d28tMzI";

/// A running wrapper.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its database.
    pub db: TestDatabase,
    /// Its state (keys, settings).
    pub state: AppState,
    /// A client that keeps no cookies.
    pub http: reqwest::Client,
    /// The platform admin's token.
    pub root: String,
    settings: Settings,
    stop: CancellationToken,
}

impl TestApp {
    /// Stop serving (and the relay), as if the wrapper went down.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The settings this wrapper runs with (to start another one on its database).
    pub fn settings_for_test(&self) -> Settings {
        self.settings.clone()
    }

    /// Start the wrapper again on the same port and database (after [`stop`](Self::stop)).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_with(|_| {}).await
    }

    /// Like [`restart`](Self::restart), with the settings adjusted first (kept for later
    /// restarts).
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<()> {
        self.stop.cancel();
        adjust(&mut self.settings);
        let settings = self.settings.clone();
        let app = crate::eventually_some(std::time::Duration::from_secs(10), || {
            let settings = settings.clone();
            async move { Application::build(settings).await.ok() }
        })
        .await?;
        self.state = app.state().clone();
        self.stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(self.stop.clone()));
        Ok(())
    }
}

/// Another replica of a test wrapper, serving on its own port; it stops when dropped.
pub struct OtherReplica {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    stop: CancellationToken,
}

impl Drop for OtherReplica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestApp {
    /// Start another replica of this wrapper: the same database, Redis namespace and settings
    /// (relay, credit ingest, scheduled jobs included), on a port of its own.
    pub async fn another_replica(&self) -> anyhow::Result<OtherReplica> {
        let mut settings = self.settings.clone();
        settings.listen = "127.0.0.1:0".parse()?;
        let app = Application::build(settings).await?;
        let url = format!("http://{}", app.addr());
        let stop = CancellationToken::new();
        tokio::spawn(app.run_until_stopped(stop.clone()));
        Ok(OtherReplica { url, stop })
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A tenant created through the API, with its first admin signed in.
#[derive(Debug, Clone)]
pub struct TestTenant {
    /// Tenant id.
    pub id: Uuid,
    /// Subdomain.
    pub subdomain: String,
    /// The built-in admin role.
    pub admin_role: Uuid,
    /// The first admin's user id.
    pub admin_id: Uuid,
    /// The first admin's token.
    pub admin: String,
}

/// Start a wrapper with default settings adjusted for tests.
pub async fn spawn_wrapper() -> anyhow::Result<TestApp> {
    spawn_wrapper_with(|_| {}).await
}

/// Start a wrapper, letting the test adjust the settings first.
pub async fn spawn_wrapper_with(adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<TestApp> {
    let db = fresh_database().await?;
    let mut settings = Settings::defaults();
    settings.listen = "127.0.0.1:0".parse()?;
    settings.database_url = wrapper::config::Secret(db.url.clone());
    settings.redis_url = wrapper::config::Secret(redis_url());
    settings.namespace = redis_namespace();
    settings.cookie_secure = false;
    settings.cookie_domain = Some(".yourapp.test".into());
    settings.db_max_connections = 30;
    // Many wrappers share two cores while the suite runs: a hash may wait long for its slot.
    // The bound itself is tested with its own short wait (least_privilege).
    settings.password_hash_wait_ms = 20_000;
    settings.bootstrap_admin_email = Some(ROOT_EMAIL.into());
    settings.bootstrap_admin_password = Some(wrapper::config::Secret(PASSWORD.into()));
    settings.key_encryption_keys = Some(wrapper::config::Secret(TEST_KEK.into()));
    adjust(&mut settings);
    let app = Application::build(settings.clone()).await?;
    let url = format!("http://{}", app.addr());
    settings.listen = app.addr();
    let state = app.state().clone();
    let cancel = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(cancel.clone()));
    let http = reqwest::Client::builder().build()?;
    let mut test_app = TestApp {
        url,
        db,
        state,
        http,
        root: String::new(),
        settings,
        stop: cancel,
    };
    test_app.root = test_app.login(ROOT_EMAIL, PASSWORD, None).await?;
    Ok(test_app)
}

impl TestApp {
    /// Send a request; returns the status and the JSON body (Null when empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the wrapper answers");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GET as `token`, expecting 2xx.
    pub async fn get_ok(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, Some(token), None).await;
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    /// Send as `token`, expecting 2xx.
    pub async fn send_ok(&self, method: Method, path: &str, token: &str, body: Value) -> Value {
        let (status, resp) = self
            .call(method.clone(), path, Some(token), Some(body))
            .await;
        assert!(status.is_success(), "{method} {path}: {status} {resp}");
        resp
    }

    /// Sign in; returns the token.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        tenant: Option<&str>,
    ) -> anyhow::Result<String> {
        let (status, body) = self
            .call(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({"email": email, "password": password, "tenant": tenant})),
            )
            .await;
        anyhow::ensure!(status == StatusCode::OK, "login {email}: {status} {body}");
        Ok(body["token"].as_str().unwrap_or_default().to_owned())
    }

    /// Give `tenant` `amount` credits and allocate them all to `app` (as the platform admin,
    /// then the tenant's admin).
    pub async fn fund_app(&self, tenant: &TestTenant, app: &str, amount: i64) {
        self.send_ok(
            Method::POST,
            "/api/admin/credits/allocate",
            &self.root,
            json!({"tenantId": tenant.id, "amount": amount}),
        )
        .await;
        self.send_ok(
            Method::POST,
            "/api/admin/credits/allocate/application",
            &tenant.admin,
            json!({"tenantId": tenant.id, "application": app, "amount": amount}),
        )
        .await;
    }

    /// Create tenant `subdomain` with admin `admin@<subdomain>.test`, signed in, on a plan with
    /// the `crm` and `hrms` features.
    pub async fn create_tenant(&self, subdomain: &str) -> TestTenant {
        self.create_tenant_with(subdomain, &["crm", "hrms"]).await
    }

    /// [`create_tenant`](Self::create_tenant) on a plan with `features`.
    pub async fn create_tenant_with(&self, subdomain: &str, features: &[&str]) -> TestTenant {
        let admin_email = format!("admin@{subdomain}.test");
        let body = self
            .send_ok(
                Method::POST,
                "/api/tenants",
                &self.root,
                json!({"name": subdomain.to_uppercase(), "subdomain": subdomain, "plan": "pro",
                       "features": features,
                       "admin": {"email": admin_email, "fullName": "First Admin", "password": PASSWORD}}),
            )
            .await;
        let id: Uuid = serde_json::from_value(body["id"].clone()).expect("tenant id");
        let admin = self
            .login(&admin_email, PASSWORD, Some(subdomain))
            .await
            .expect("admin login");
        TestTenant {
            id,
            subdomain: subdomain.to_owned(),
            admin_role: serde_json::from_value(body["adminRoleId"].clone()).expect("role id"),
            admin_id: serde_json::from_value(body["adminUserId"].clone()).expect("admin id"),
            admin,
        }
    }

    /// Create a member of `tenant` and sign them in; returns (user id, token).
    pub async fn create_member(&self, tenant: &TestTenant, email: &str) -> (Uuid, String) {
        let body = self
            .send_ok(
                Method::POST,
                &format!("/api/tenants/{}/users", tenant.id),
                &tenant.admin,
                json!({"email": email, "fullName": "A Member", "password": PASSWORD}),
            )
            .await;
        let id = serde_json::from_value(body["id"].clone()).expect("user id");
        let token = self
            .login(email, PASSWORD, Some(&tenant.subdomain))
            .await
            .expect("member login");
        (id, token)
    }

    /// Create a user of `tenant`, erase them (`POST …/erase`) and wait until every registered
    /// app confirmed (the operation is `done`): the lifecycle round trip, end to end.
    pub async fn erase_a_new_user(&self, tenant: &TestTenant) -> anyhow::Result<()> {
        let users = format!("/api/tenants/{}/users", tenant.id);
        let user = self
            .send_ok(
                Method::POST,
                &users,
                &tenant.admin,
                json!({"email": format!("leaving@{}.test", tenant.subdomain),
                       "fullName": "Leaving Soon"}),
            )
            .await;
        let erase = format!("{users}/{}/erase", user["id"].as_str().unwrap_or_default());
        let (status, op) = self
            .call(Method::POST, &erase, Some(&tenant.admin), None)
            .await;
        anyhow::ensure!(status == StatusCode::ACCEPTED, "erase: {status} {op}");
        let location = format!("/api/operations/{}", op["id"].as_str().unwrap_or_default());
        crate::eventually(std::time::Duration::from_secs(30), || async {
            self.get_ok(&location, &tenant.admin).await["status"] == "done"
        })
        .await
    }

    /// Every outbox envelope of `tenant`, in seq order.
    pub async fn outbox(&self, tenant: Uuid) -> Vec<Value> {
        sqlx::query_scalar("select envelope::jsonb from outbox where tenant_id = $1 order by seq")
            .bind(tenant)
            .fetch_all(&self.db.pool)
            .await
            .expect("outbox rows")
    }

    /// Row count of `table` (a fixed name from the test).
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("select count(*) from {table}"))
            .fetch_one(&self.db.pool)
            .await
            .expect("count")
    }
}

/// The shared app flags for an app talking to `wrapper`, with a Mongo database of its own.
pub fn app_args(wrapper: &TestApp, service_secret: &str) -> sync_sdk::app::AppArgs {
    sync_sdk::app::AppArgs {
        mongodb_url: crate::mongodb_url(),
        mongo_db: Some(crate::unique_name()),
        redis_url: crate::redis_url(),
        namespace: wrapper.state.settings.namespace.clone(),
        partitions: wrapper.state.settings.partitions,
        wrapper_url: wrapper.url.clone(),
        issuer: wrapper.state.keys.issuer().to_owned(),
        service_secret: service_secret.to_owned(),
        offline_allowance: 0,
        full_sync_schedule: sync_sdk::fullsync::DEFAULT_SCHEDULE.into(),
        public_path: None,
        login_url: "/auth/login".into(),
        suite_links: "CRM=/crm/,HRMS=/hrms/".into(),
        revocation_fail_closed: false,
    }
}
