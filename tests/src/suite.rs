//! The whole suite on loopback: the wrapper, the CRM, the HRMS and Projects (in-process, port 0) behind
//! the real nginx, as a browser reaches them at `http://<tenant>.yourapp.test:<port>/`.

use std::sync::Arc;

use sync_sdk::{fullsync::FullSync, store::mongo::MongoStore};
use tokio_util::sync::CancellationToken;
use wrapper::config::Settings;

use crate::{
    free_port,
    nginx::{Nginx, Upstreams},
    wrapper_app::{TestApp, app_args, spawn_wrapper_with},
};

/// The apps' service secret in suite tests.
pub const SERVICE_SECRET: &str = "suite-service-secret-end-to-end";

/// The Redis URL of ACL user `<namespace>-<user>` (password [`SERVICE_SECRET`]) on the test
/// Redis (a cluster URL keeps its seed nodes).
pub fn acl_url(namespace: &str, user: &str) -> String {
    let url = crate::redis_url();
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{namespace}-{user}:{SERVICE_SECRET}@{rest}"),
        None => url,
    }
}

/// A running suite; everything stops when dropped.
pub struct Suite {
    /// The wrapper (its database, keys, helpers).
    pub wrapper: TestApp,
    /// The edge.
    pub nginx: Nginx,
    /// The CRM's full sync (what its nightly schedule runs), to run on demand.
    pub crm_full_sync: Arc<FullSync<MongoStore, sync_sdk::app::DeclaredChecks>>,
    /// `http://127.0.0.1:<port>` of the CRM itself (behind nginx; for benchmarks).
    pub crm_url: String,
    /// `http://127.0.0.1:<port>` of the HRMS itself.
    pub hrms_url: String,
    /// The HRMS's full sync.
    pub hrms_full_sync: Arc<FullSync<MongoStore, sync_sdk::app::DeclaredChecks>>,
    /// Projects' MongoDB database (its synced copy and its `app.` collections).
    pub projects_db: mongodb::Database,
    /// Projects' full sync (owners and members checked).
    pub projects_full_sync: Arc<FullSync<MongoStore, sync_sdk::app::DeclaredChecks>>,
    /// The MongoDB databases of the CRM, the HRMS and Projects (in that order).
    pub mongo_dbs: Vec<String>,
    stop: CancellationToken,
}

impl Suite {
    /// Start everything, with nginx on a port of its own.
    pub async fn start(adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        Self::start_on(free_port()?, adjust).await
    }

    /// Start everything with nginx on `port`.
    pub async fn start_on(port: u16, adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        Self::start_inner(port, adjust, false).await
    }

    /// Start everything with each app and the wrapper on a Redis ACL user of its own
    /// (`wrapper redis-acl apply` for the test's namespace, password [`SERVICE_SECRET`]), as
    /// production runs them. [`acl_url`] gives a user's URL.
    pub async fn start_with_redis_users(
        adjust: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        Self::start_inner(free_port()?, adjust, true).await
    }

    async fn start_inner(
        port: u16,
        adjust: impl FnOnce(&mut Settings),
        redis_users: bool,
    ) -> anyhow::Result<Self> {
        let namespace = crate::redis_namespace();
        if redis_users {
            let keys = sync_sdk::contract::StreamKeys::new(namespace.clone(), 8)
                .ok_or_else(|| anyhow::anyhow!("bad namespace"))?;
            let users: Vec<wrapper::redis_acl::UserSpec> = ["wrapper", "crm", "hrms", "projects"]
                .iter()
                .map(|u| format!("{u}={SERVICE_SECRET}").parse())
                .collect::<Result<_, _>>()
                .map_err(|e: String| anyhow::anyhow!(e))?;
            wrapper::redis_acl::apply(&crate::redis_url(), &keys, &users).await?;
        }
        let user_url = |user: &str| {
            if redis_users {
                acl_url(&namespace, user)
            } else {
                crate::redis_url()
            }
        };
        let wrapper_url = user_url("wrapper");
        let wrapper = spawn_wrapper_with(|s| {
            s.namespace = namespace.clone();
            s.redis_url = wrapper::config::Secret(wrapper_url);
            adjust(s);
        })
        .await?;
        for app in ["crm", "hrms", "projects"] {
            wrapper::startup::upsert_service_client(&wrapper.db.pool, app, SERVICE_SECRET).await?;
        }
        let args = |app: &str| sync_sdk::app::AppArgs {
            redis_url: user_url(app),
            ..app_args(&wrapper, SERVICE_SECRET)
        };
        let stop = CancellationToken::new();
        let (crm_args, hrms_args) = (args("crm"), args("hrms"));
        let mut mongo_dbs: Vec<String> = [&crm_args, &hrms_args]
            .iter()
            .filter_map(|a| a.mongo_db.clone())
            .collect();
        let crm = crm::build(crm::Settings {
            listen: "127.0.0.1:0".parse()?,
            app: crm_args,
        })
        .await?;
        let crm_port = crm.addr().port();
        let crm_full_sync = crm.full_sync();
        tokio::spawn(crm.run_until_stopped(stop.clone()));
        let hrms = hrms::build(hrms::Settings {
            listen: "127.0.0.1:0".parse()?,
            app: hrms_args,
        })
        .await?;
        let hrms_port = hrms.addr().port();
        let hrms_full_sync = hrms.full_sync();
        tokio::spawn(hrms.run_until_stopped(stop.clone()));
        let projects_args = args("projects");
        mongo_dbs.extend(projects_args.mongo_db.clone());
        let projects_db = mongodb::Client::with_uri_str(&projects_args.mongodb_url)
            .await?
            .database(projects_args.mongo_db.as_deref().unwrap_or("projects"));
        let projects = projects::build(projects::Settings {
            listen: "127.0.0.1:0".parse()?,
            app: projects_args,
        })
        .await?;
        let projects_port = projects.addr().port();
        let projects_full_sync = projects.full_sync();
        tokio::spawn(projects.run_until_stopped(stop.clone()));
        let wrapper_port: u16 = wrapper
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no port in {}", wrapper.url))?;
        // Scenario tests send many requests of one tenant; limits are tested in nginx.rs.
        let upstreams = Upstreams {
            wrapper: vec![wrapper_port],
            crm: vec![crm_port],
            hrms: vec![hrms_port],
            projects: vec![projects_port],
        };
        let nginx = Nginx::start_upstreams(port, Some(500), &upstreams).await?;
        Ok(Self {
            wrapper,
            nginx,
            crm_full_sync,
            hrms_full_sync,
            projects_full_sync,
            projects_db,
            mongo_dbs,
            crm_url: format!("http://127.0.0.1:{crm_port}"),
            hrms_url: format!("http://127.0.0.1:{hrms_port}"),
            stop,
        })
    }

    /// Tenant `subdomain` with 1,000 credits for the CRM and one CRM account (Initech, owned
    /// by its admin) created through the edge: the lazy load, the fast path and the event
    /// stream have all run once. The tenant and its edge.
    pub async fn tenant_with_a_crm_account(
        &self,
        subdomain: &str,
    ) -> anyhow::Result<(crate::wrapper_app::TestTenant, Edge)> {
        let tenant = self.wrapper.create_tenant(subdomain).await;
        self.wrapper.fund_app(&tenant, "crm", 1000).await;
        let edge = self.edge(subdomain);
        let (status, account) = edge
            .send(
                reqwest::Method::POST,
                "/crm/accounts",
                &tenant.admin,
                Some(serde_json::json!({"name": "Initech", "value": 5000,
                                        "ownerId": tenant.admin_id})),
            )
            .await?;
        anyhow::ensure!(
            status == reqwest::StatusCode::CREATED,
            "creating the account: {status} {account}"
        );
        Ok((tenant, edge))
    }

    /// `http://<tenant>.yourapp.test:<port><path>`, the address a browser uses.
    pub fn url(&self, tenant: &str, path: &str) -> String {
        format!("http://{tenant}.yourapp.test:{}{path}", self.nginx.port)
    }

    /// Requests to the edge as `tenant`'s host (`<tenant>.yourapp.test`).
    pub fn edge(&self, tenant: &str) -> Edge {
        Edge {
            base: self.nginx.url(),
            host: format!("{tenant}.yourapp.test"),
            http: reqwest::Client::new(),
        }
    }

    /// The `Host` (with port) of a tenant, for requests sent to nginx directly.
    pub fn host(&self, tenant: &str) -> String {
        format!("{tenant}.yourapp.test:{}", self.nginx.port)
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Requests to nginx on one tenant's host, as an API client sends them (bearer token).
pub struct Edge {
    base: String,
    host: String,
    http: reqwest::Client,
}

impl Edge {
    /// Requests to nginx at `base` (`http://127.0.0.1:<port>`) as `host`'s (`<tenant>.yourapp.test`).
    pub fn new(base: impl Into<String>, host: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            host: host.into(),
            http: reqwest::Client::new(),
        }
    }

    /// `method path` with `token` and a JSON `body`: the status and the JSON answer (`null` when
    /// the answer is not JSON).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
        self.send_keyed(method, path, token, body, None).await
    }

    /// [`send`](Self::send) with an `Idempotency-Key`.
    pub async fn send_keyed(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("host", &self.host)
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let resp = req.send().await?;
        let status = resp.status();
        Ok((status, resp.json().await.unwrap_or(serde_json::Value::Null)))
    }

    /// `GET path` as HTML (a dashboard): the status and the page.
    pub async fn page(
        &self,
        path: &str,
        token: &str,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("host", &self.host)
            .bearer_auth(token)
            .send()
            .await?;
        Ok((resp.status(), resp.text().await?))
    }
}
