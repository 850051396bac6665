//! Services as real processes (`replica <service>`, configured by environment as the shipped
//! binaries are), for tests that kill one or read what a whole process exports.

use std::{process::Stdio, time::Duration};

use anyhow::Context;
use reqwest::StatusCode;
use tokio::process::{Child, Command};

use crate::{
    eventually, free_port, mongodb_url, redis_url,
    wrapper_app::{PASSWORD, ROOT_EMAIL, TEST_KEK},
};

/// One variable of a replica's environment.
pub type Var = (&'static str, String);

/// What every service of one hub shares: Redis, the namespace and the partition count.
pub fn common_env(namespace: &str, partitions: u32) -> Vec<Var> {
    vec![
        ("REDIS_URL", redis_url()),
        ("TSYNC_NAMESPACE", namespace.to_owned()),
        ("TSYNC_PARTITIONS", partitions.to_string()),
    ]
}

/// A wrapper on `database_url`, bootstrapping the suite's platform admin.
pub fn wrapper_env(common: &[Var], database_url: &str) -> Vec<Var> {
    let mut env = common.to_vec();
    env.extend([
        ("DATABASE_URL", database_url.to_owned()),
        ("WRAPPER_KEY_ENCRYPTION_KEYS", TEST_KEK.to_owned()),
        ("WRAPPER_COOKIE_SECURE", "false".to_owned()),
        ("WRAPPER_COOKIE_DOMAIN", ".yourapp.test".to_owned()),
        ("WRAPPER_BOOTSTRAP_ADMIN_EMAIL", ROOT_EMAIL.to_owned()),
        ("WRAPPER_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD.to_owned()),
    ]);
    env
}

/// An app storing into MongoDB database `mongo_db`, told of `wrapper_urls` (comma list).
pub fn app_env(common: &[Var], mongo_db: &str, wrapper_urls: &str, secret: &str) -> Vec<Var> {
    let mut env = common.to_vec();
    env.extend([
        ("MONGODB_URL", mongodb_url()),
        ("APP_MONGO_DB", mongo_db.to_owned()),
        ("WRAPPER_URL", wrapper_urls.to_owned()),
        ("APP_SERVICE_SECRET", secret.to_owned()),
    ]);
    env
}

/// A service process (`replica <service>`), SIGKILLed when dropped.
pub struct Replica {
    /// Its loopback port.
    pub port: u16,
    /// The process.
    pub child: Child,
}

impl Replica {
    /// Start `service` with `env` and wait (60 s at most) until it answers `/health`. `exe` is
    /// the `replica` binary (`env!("CARGO_BIN_EXE_replica")`, known to the test crate only).
    pub async fn start(exe: &str, service: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::start_at(exe, service, free_port()?, env).await
    }

    /// [`start`](Self::start) on `port`.
    pub async fn start_at(
        exe: &str,
        service: &str,
        port: u16,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let listen = format!("{}_LISTEN", service.to_uppercase());
        eprintln!("{service} on {port}");
        let child = Command::new(exe)
            .arg(service)
            .env(listen, format!("127.0.0.1:{port}"))
            // Loads and full syncs are what a failure here needs to show (in the test's output).
            .env(
                "RUST_LOG",
                "warn,sync_sdk::loader=info,sync_sdk::fullsync=info",
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let replica = Self { port, child };
        let url = format!("{}/health", replica.url());
        eventually(Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                reqwest::get(url)
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK)
            }
        })
        .await
        .with_context(|| format!("{service} on {port} did not answer /health"))?;
        Ok(replica)
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A whole hub as processes: one wrapper, one CRM and one HRMS (each with `extra` in its
/// environment), nginx in front (rate limits raised for polling), and a tenant whose admin
/// visited both apps (so both loaded it).
pub struct Hub {
    /// The wrapper process.
    pub wrapper: Replica,
    /// The CRM process.
    pub crm: Replica,
    /// The HRMS process.
    pub hrms: Replica,
    /// The edge.
    pub nginx: crate::nginx::Nginx,
    /// The wrapper's database.
    pub db: crate::TestDatabase,
    /// The tenant's id.
    pub tenant_id: String,
    /// Its subdomain.
    pub subdomain: String,
    /// Its admin's user id.
    pub admin_id: String,
    /// Its admin's token.
    pub admin: String,
    /// The platform admin's token.
    pub root: String,
    /// A client.
    pub http: reqwest::Client,
    /// The CRM's and the HRMS's MongoDB databases.
    pub mongo_dbs: [String; 2],
    /// The namespace of the hub's Redis keys.
    pub namespace: String,
    exe: String,
    app_envs: [Vec<Var>; 2],
}

/// The service secret of the hub's apps.
const HUB_SECRET: &str = "hub-service-secret-long-enough";

impl Hub {
    /// Start it (`exe`: the `replica` binary).
    pub async fn start(exe: &str, extra: &[Var]) -> anyhow::Result<Self> {
        let db = crate::fresh_database().await?;
        let namespace = crate::redis_namespace();
        let common = common_env(&namespace, 4);
        let mut env = wrapper_env(&common, &db.url);
        env.extend(extra.iter().cloned());
        let wrapper = Replica::start(exe, "wrapper", &env).await?;
        for app in ["crm", "hrms"] {
            wrapper::startup::upsert_service_client(&db.pool, app, HUB_SECRET).await?;
        }
        let http = reqwest::Client::new();
        let w = wrapper.url();
        let root = login(&http, &w, None, ROOT_EMAIL).await?;
        let subdomain = format!("hub-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let admin_email = format!("admin@{subdomain}.test");
        let body = serde_json::json!({"name": subdomain, "subdomain": subdomain, "plan": "pro",
            "features": ["crm", "hrms"],
            "admin": {"email": admin_email, "fullName": "First Admin", "password": PASSWORD}});
        let tenant = send(
            &http,
            reqwest::Method::POST,
            &format!("{w}/api/tenants"),
            &root,
            body,
        )
        .await?;
        let admin = login(&http, &w, Some(&subdomain), &admin_email).await?;
        let mongo_dbs = [crate::unique_name(), crate::unique_name()];
        let app_envs = mongo_dbs.clone().map(|db| {
            let mut env = app_env(&common, &db, &w, HUB_SECRET);
            env.extend(extra.iter().cloned());
            env
        });
        let mut apps = Vec::new();
        for (app, env) in ["crm", "hrms"].into_iter().zip(&app_envs) {
            apps.push(Replica::start(exe, app, env).await?);
        }
        let hrms = apps.pop().expect("two apps");
        let crm = apps.pop().expect("two apps");
        let upstreams = crate::nginx::Upstreams {
            wrapper: vec![wrapper.port],
            crm: vec![crm.port],
            hrms: vec![hrms.port],
            projects: vec![free_port()?],
        };
        // Limits far above what a test sends (it polls): production's would answer 429.
        let nginx = crate::nginx::Nginx::start_upstreams_at(
            free_port()?,
            Some(1000),
            Some(5000),
            &upstreams,
        )
        .await?;
        let hub = Self {
            tenant_id: tenant["id"].as_str().unwrap_or_default().to_owned(),
            admin_id: tenant["adminUserId"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            wrapper,
            crm,
            hrms,
            nginx,
            db,
            subdomain,
            admin,
            root,
            http,
            mongo_dbs,
            namespace,
            exe: exe.to_owned(),
            app_envs,
        };
        // The first visit loads the tenant into each app (the lazy load).
        let edge = hub.edge();
        for path in ["/crm/accounts", "/hrms/employees"] {
            let (status, body) = edge
                .send(reqwest::Method::GET, path, &hub.admin, None)
                .await?;
            anyhow::ensure!(status.is_success(), "GET {path}: {status} {body}");
        }
        Ok(hub)
    }

    /// Start app `app` (`crm` or `hrms`) again after it was stopped, on the same port (nginx
    /// knows it there).
    pub async fn restart(&mut self, app: &str) -> anyhow::Result<()> {
        let i = usize::from(app != "crm");
        let old = if i == 0 { &self.crm } else { &self.hrms };
        let replica = Replica::start_at(&self.exe, app, old.port, &self.app_envs[i]).await?;
        if i == 0 {
            self.crm = replica;
        } else {
            self.hrms = replica;
        }
        Ok(())
    }

    /// `GET path` at the wrapper as the platform admin: the JSON answer.
    pub async fn get_as_root(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.wrapper.url());
        let response = self.http.get(&url).bearer_auth(&self.root).send().await?;
        Ok(response.json().await?)
    }

    /// Requests through nginx as the tenant's host.
    pub fn edge(&self) -> crate::suite::Edge {
        crate::suite::Edge::new(self.nginx.url(), format!("{}.yourapp.test", self.subdomain))
    }
}

/// A bearer token of `email` (password [`PASSWORD`]) in tenant `tenant` (a subdomain), or a
/// platform admin's with `None`.
pub async fn login(
    http: &reqwest::Client,
    wrapper: &str,
    tenant: Option<&str>,
    email: &str,
) -> anyhow::Result<String> {
    let body = serde_json::json!({"email": email, "password": PASSWORD, "tenant": tenant});
    let response = http
        .post(format!("{wrapper}/auth/login"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "login {email}: {}",
        response.status()
    );
    let reply: serde_json::Value = response.json().await?;
    Ok(reply["token"].as_str().unwrap_or_default().to_owned())
}

/// `method url` as `token` with a JSON body, expecting 2xx; the JSON answer.
pub async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let response = http
        .request(method.clone(), url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let reply: serde_json::Value = response.json().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{method} {url}: {status} {reply}");
    Ok(reply)
}
