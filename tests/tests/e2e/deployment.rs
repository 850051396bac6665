//! The deployment files run as written. Docker is not available here, so the test does what
//! `docker compose up` would with `docker-compose.yml`: it starts each of our services (the
//! `tenantsync/*` images: the Redis users job, the wrapper, the apps) as a process of the same
//! binary with the command and exactly the environment the file gives it, in the order of its
//! `depends_on` (a job must finish successfully, a service must pass the image's
//! HEALTHCHECK), runs nginx with the configuration file the file mounts, and walks the demo
//! through that edge: the platform admin signs in on the admin host, the first tenant's admin
//! (the file's bootstrap tenant) signs in through the edge, each app loads the tenant on its
//! first visit, a paid operation is charged, and a change at the wrapper reaches every app.
//!
//! What differs from a container runtime is the network, mapped and nothing else:
//! * a `host:port` of a service of the file is `127.0.0.1:<port of the test's own>` (`0.0.0.0`
//!   in a service's own listen address too), and the edge's fixed address on the compose
//!   network is a loopback address nginx connects from (`proxy_bind`);
//! * `postgres`, `redis` and `mongo` are the test's servers: the database is a fresh one (its
//!   role is created as the image's `POSTGRES_USER` would be), the MongoDB-wire server stands
//!   in for `mongo` + `mongo-init` and is no replica set (the `replicaSet` option is dropped),
//!   and Redis's operator account is the test server's default user;
//! * the namespace, and so the Redis users' names, and each app's MongoDB database are the
//!   test's own, so it runs beside the other tests on the shared servers;
//! * nginx's container paths (logs, pid, temp files) are under a directory of the test's.
//!
//! `TSYNC_COMPOSE_FILE` runs another compose file (an earlier revision's, to see this fail).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tsync_e2e::{eventually_some, free_port, nginx::Nginx, unique_name};

use crate::compose::yaml_documents;

const REPLICA: &str = env!("CARGO_BIN_EXE_replica");

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `host:port` of a URL from the test's environment.
fn authority(url: &str) -> anyhow::Result<String> {
    let url = Url::parse(url).with_context(|| format!("parsing {url}"))?;
    Ok(format!(
        "{}:{}",
        url.host_str().context("no host")?,
        url.port().context("no port")?
    ))
}

/// How the file's network maps onto the test's loopback.
struct Network {
    /// `host:port` in the file (a service's, or `postgres:5432`) to where the test serves it.
    addresses: BTreeMap<String, String>,
    /// Whole words replaced wherever they appear: the edge's address, the namespace.
    renames: Vec<(String, String)>,
    /// The namespace the file gives (its Redis users are `<namespace>-<service>`).
    namespace: (String, String),
    /// The fresh Postgres database.
    database: String,
}

/// `text` with every `from` replaced by `to` where `from` is not part of a longer name or
/// number (`redis:6379` in `@redis:6379/`, not in `xredis:63790`).
fn replace_bounded(text: &str, from: &str, to: &str) -> String {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + from.len()..].chars().next();
        let bounded =
            !before.is_some_and(part) && !after.is_some_and(|c| c.is_ascii_alphanumeric());
        out.push_str(&rest[..i]);
        out.push_str(if bounded { to } else { from });
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

impl Network {
    /// A value of a service's environment or command, mapped.
    fn map(&self, key: &str, value: &str) -> anyhow::Result<String> {
        let mut v = value.to_owned();
        for (from, to) in &self.addresses {
            v = replace_bounded(&v, from, to);
        }
        for (from, to) in &self.renames {
            v = replace_bounded(&v, from, to);
        }
        if key == "TSYNC_NAMESPACE" && v == self.namespace.0 {
            v.clone_from(&self.namespace.1);
        }
        if key == "APP_MONGO_DB" {
            v = unique_name();
        }
        if let Ok(mut url) = Url::parse(&v) {
            match url.scheme() {
                "postgres" | "postgresql" => {
                    url.set_path(&format!("/{}", self.database));
                    v = url.to_string();
                }
                "mongodb" => {
                    let kept: Vec<(String, String)> = url
                        .query_pairs()
                        .filter(|(k, _)| k != "replicaSet")
                        .map(|(k, v)| (k.into_owned(), v.into_owned()))
                        .collect();
                    url.query_pairs_mut().clear().extend_pairs(kept);
                    v = url.to_string().trim_end_matches('?').to_owned();
                }
                "redis" | "rediss" | "redis-cluster" => {
                    let user = url.username().to_owned();
                    let (from, to) = &self.namespace;
                    if let Some(service) = user.strip_prefix(&format!("{from}-")) {
                        url.set_username(&format!("{to}-{service}")).ok();
                    } else if user.is_empty() || user == "default" {
                        // The operator's account: the test server's default user.
                        url.set_username("").ok();
                        url.set_password(None).ok();
                    }
                    v = url.to_string();
                }
                _ => {}
            }
        }
        Ok(v)
    }
}

/// How what depends on a unit waits for it.
enum Kind {
    /// Runs to completion, successfully (a compose service others wait for with
    /// `service_completed_successfully`, a Kubernetes Job).
    Job,
    /// Serves; ready when `GET <path>` on its first port answers 2xx (the image's
    /// HEALTHCHECK, the readiness probe).
    Server { health: String },
}

/// One of our services (a `tenantsync/*` image) as a deployment file describes it.
struct Unit {
    name: String,
    /// The image's binary (`tenantsync/<binary>:…`: the image's entrypoint).
    binary: String,
    /// Its command.
    args: Vec<String>,
    env: BTreeMap<String, String>,
    /// Its container ports (a Kubernetes Service of its name serves the same ports).
    ports: Vec<u16>,
    /// Files mounted into it: (mount path, file name → content).
    mounts: Vec<(String, BTreeMap<String, String>)>,
    kind: Kind,
}

/// A service's process; SIGKILLed when dropped. Its stderr is kept in a file, shown when the
/// walk fails.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(unit: &Unit, network: &Network, dir: &Path) -> anyhow::Result<Self> {
        // Mounted files in a directory of the test's, their paths mapped onto it.
        let mut mounts = Vec::new();
        for (i, (path, files)) in unit.mounts.iter().enumerate() {
            let local = dir.join(format!("{}-mount-{i}", unit.name));
            std::fs::create_dir_all(&local)?;
            for (file, content) in files {
                std::fs::write(local.join(file), content)?;
            }
            mounts.push((path.clone(), local.display().to_string()));
        }
        let map = |k: &str, v: &str| -> anyhow::Result<String> {
            let mut v = network.map(k, v)?;
            for (from, to) in &mounts {
                v = v.replace(from.as_str(), to);
            }
            Ok(v)
        };
        let mut env = BTreeMap::new();
        for (k, v) in &unit.env {
            env.insert(k.clone(), map(k, v)?);
        }
        let args: Vec<String> = unit
            .args
            .iter()
            .map(|a| map("", a))
            .collect::<anyhow::Result<_>>()?;
        let log = dir.join(format!("{}.log", unit.name));
        let child = Command::new(REPLICA)
            .arg(&unit.binary)
            .args(&args)
            .env_clear()
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", unit.name))?;
        Ok(Self {
            name: unit.name.clone(),
            child,
            log,
        })
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("--- {} (last lines of its stderr)\n{tail}", self.name)
    }
}

/// The edge as a deployment file describes it: nginx with a configuration file.
struct EdgeUnit {
    /// The configuration, as the file mounts it.
    conf: String,
    /// The port it listens on in its container.
    port: u16,
}

/// What a deployment file runs, in the order it starts it.
struct Plan {
    units: Vec<Unit>,
    edge: EdgeUnit,
    /// `host:port` of the servers the file uses but the test provides (`postgres:5432`) to
    /// the test's URL of that server.
    servers: Vec<(String, String)>,
    /// The Postgres role its database URLs connect as.
    db_role: String,
    /// The namespace it gives.
    namespace: String,
    /// Addresses of the file's network mapped onto loopback (the edge's address on the
    /// compose network, the pod network's range).
    renames: Vec<(String, String)>,
    /// The edge's own address on the network, when the file gives it one.
    edge_address: Option<String>,
    /// The wrapper's environment as the file gives it (unmapped): the walk's credentials.
    wrapper_env: BTreeMap<String, String>,
}

/// A stack a deployment file describes, running.
struct Stack {
    /// Every process (dropped: killed).
    running: Vec<Running>,
    nginx: Nginx,
    /// The wrapper's own address, mapped (as its published port, or its Service).
    wrapper_url: String,
    wrapper_env: BTreeMap<String, String>,
    db: sqlx::PgPool,
    /// The names of the Redis users the file's job made (in `namespace`): removed with the
    /// stack.
    redis_users: Vec<String>,
    namespace: String,
    /// The client address an Ingress in front of the edge forwards (Kubernetes), sent with
    /// `X-Forwarded-Proto: https` on every request to the edge.
    ingress_client: Option<String>,
    _dir: TempDir,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Stack {
    async fn up(plan: Plan) -> anyhow::Result<Self> {
        let dir = TempDir(std::env::temp_dir().join(unique_name()));
        std::fs::create_dir_all(&dir.0)?;
        let mut addresses = BTreeMap::new();
        for unit in &plan.units {
            for port in &unit.ports {
                let local = format!("127.0.0.1:{}", free_port()?);
                addresses.insert(format!("{}:{port}", unit.name), local);
            }
        }
        for (from, url) in &plan.servers {
            addresses.insert(from.clone(), authority(url)?);
        }
        let test_db = tsync_e2e::fresh_database().await?;
        // The database's role, as the postgres image makes POSTGRES_USER.
        let role = &plan.db_role;
        sqlx::query(&format!(
            "do $$ begin create role \"{role}\" login; \
             exception when duplicate_object or unique_violation then null; end $$"
        ))
        .execute(&test_db.pool)
        .await?;
        sqlx::query(&format!(
            "alter database \"{}\" owner to \"{role}\"",
            test_db.name
        ))
        .execute(&test_db.pool)
        .await?;
        let namespace = tsync_e2e::redis_namespace();
        let mut network = Network {
            addresses,
            renames: plan.renames,
            namespace: (plan.namespace, namespace.clone()),
            database: test_db.name.clone(),
        };

        let http = reqwest::Client::new();
        let mut running: Vec<Running> = Vec::new();
        let mut wrapper_url = None;
        let mut redis_users = Vec::new();
        for unit in &plan.units {
            // A unit's own listen address is its own port (0.0.0.0:<port> of another unit on
            // the same port would be wrong): set per unit.
            for port in &unit.ports {
                let local = network.addresses[&format!("{}:{port}", unit.name)].clone();
                network.addresses.insert(format!("0.0.0.0:{port}"), local);
            }
            if let Some(users) = unit.env.get("WRAPPER_REDIS_ACL_USERS") {
                redis_users.extend(
                    users
                        .split(',')
                        .filter_map(|u| u.split('=').next())
                        .map(|u| u.trim().to_owned()),
                );
            }
            let mut process = Running::start(unit, &network, &dir.0)?;
            match &unit.kind {
                Kind::Job => {
                    let status =
                        tokio::time::timeout(Duration::from_secs(60), process.child.wait())
                            .await
                            .with_context(|| format!("{} did not finish", unit.name))??;
                    anyhow::ensure!(status.success(), "{} failed\n{}", unit.name, process.tail());
                }
                Kind::Server { health } => {
                    let port = unit.ports.first().context("a service without a port")?;
                    let base = format!(
                        "http://{}",
                        network.addresses[&format!("{}:{port}", unit.name)]
                    );
                    if unit.name == "wrapper" {
                        wrapper_url = Some(base.clone());
                    }
                    let url = format!("{base}{health}");
                    running.push(process);
                    let http = http.clone();
                    let ready = eventually_some(Duration::from_secs(60), || {
                        let (http, url) = (http.clone(), url.clone());
                        let exited = running
                            .last_mut()
                            .is_some_and(|p| matches!(p.child.try_wait(), Ok(Some(_))));
                        async move {
                            if exited {
                                return Some(false);
                            }
                            let r = http.get(url).send().await.ok()?;
                            r.status().is_success().then_some(true)
                        }
                    })
                    .await;
                    if !matches!(ready, Ok(true)) {
                        let logs: Vec<String> = running.iter().map(Running::tail).collect();
                        anyhow::bail!("{} never ready ({url})\n{}", unit.name, logs.join("\n"));
                    }
                }
            }
        }
        let nginx = edge(&plan.edge, &network, plan.edge_address.as_deref(), &dir.0).await?;
        Ok(Self {
            running,
            nginx,
            wrapper_url: wrapper_url.context("no wrapper")?,
            wrapper_env: plan.wrapper_env,
            db: test_db.pool,
            redis_users,
            namespace,
            ingress_client: None,
            _dir: dir,
        })
    }

    /// A request to the edge as `host` (through the Ingress, if there is one).
    fn to_edge(&self, method: Method, path: &str, host: &str) -> reqwest::RequestBuilder {
        let request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.nginx.url()))
            .header("host", host);
        match &self.ingress_client {
            Some(client) => request
                .header("x-forwarded-for", client)
                .header("x-forwarded-proto", "https"),
            None => request,
        }
    }

    fn logs(&self) -> String {
        let logs: Vec<String> = self.running.iter().map(Running::tail).collect();
        logs.join("\n")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let users = std::mem::take(&mut self.redis_users);
        if users.is_empty() {
            return;
        }
        let url = tsync_e2e::redis_url();
        let namespace = self.namespace.clone();
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Some(keys) = sync_sdk::contract::StreamKeys::new(namespace, 1) {
                    let names: Vec<&str> = users.iter().map(String::as_str).collect();
                    let _ = wrapper::redis_acl::remove(&url, &keys, &names).await;
                }
            });
        })
        .join()
        .ok();
    }
}

/// A number below `n` (for the edge's loopback address), from the clock.
fn clock_number(n: u32) -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        % n
}

/// nginx with the configuration the file mounts, mapped onto the test's network.
async fn edge(
    unit: &EdgeUnit,
    network: &Network,
    address: Option<&str>,
    dir: &Path,
) -> anyhow::Result<Nginx> {
    let mut conf = unit.conf.clone();
    for (from, to) in network
        .addresses
        .iter()
        .chain(network.renames.iter().map(|(f, t)| (f, t)))
    {
        if !from.starts_with("0.0.0.0:") {
            conf = replace_bounded(&conf, from, to);
        }
    }
    let port = free_port()?;
    let prefix = dir.join("nginx");
    conf = conf.replace(
        &format!("listen {};", unit.port),
        &format!("listen 127.0.0.1:{port};"),
    );
    let p = prefix.display();
    conf = conf
        .replace("/var/log/nginx/", &format!("{p}/logs/"))
        .replace("/run/nginx.pid", &format!("{p}/nginx.pid"))
        .replace("/var/cache/nginx/", &format!("{p}/tmp/"));
    // Its address on the network: what the services see it connect from.
    if let Some(address) = address {
        let mapped = network
            .renames
            .iter()
            .find(|(from, _)| from == address)
            .map_or(address, |(_, to)| to.as_str());
        conf = conf.replacen("http {", &format!("http {{\n    proxy_bind {mapped};"), 1);
    }
    Nginx::run(port, prefix, &conf).await
}

/// A value as text (YAML numbers and booleans as written).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The services of the compose file in the order its `depends_on` allows.
fn start_order(services: &serde_json::Map<String, Value>) -> Vec<String> {
    let deps = |service: &Value| -> Vec<String> {
        match &service["depends_on"] {
            Value::Object(m) => m.keys().cloned().collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut order: Vec<String> = Vec::new();
    while order.len() < services.len() {
        let before = order.len();
        for (name, service) in services {
            if !order.contains(name) && deps(service).iter().all(|d| order.contains(d)) {
                order.push(name.clone());
            }
        }
        assert!(order.len() > before, "depends_on has a cycle: {order:?}");
    }
    order
}

/// The path the images' HEALTHCHECK asks for (the Dockerfile's `…/health/…` URL).
fn healthcheck_path() -> anyhow::Result<String> {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile"))?;
    let after = dockerfile
        .split("HEALTH_PORT}")
        .nth(1)
        .context("the Dockerfile's HEALTHCHECK names no URL on ${HEALTH_PORT}")?;
    Ok(after
        .split(|c: char| c == '"' || c.is_whitespace())
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// What `docker compose up` would run of `file`.
fn compose_plan(file: &str) -> anyhow::Result<Plan> {
    let compose = yaml_documents(file).remove(0);
    let services = compose["services"].as_object().context("no services")?;
    let health = healthcheck_path()?;
    let mut units = Vec::new();
    for name in start_order(services) {
        let service = &services[&name];
        let Some(binary) = service["image"]
            .as_str()
            .and_then(|i| i.strip_prefix("tenantsync/"))
            .and_then(|i| i.split(':').next())
        else {
            continue; // postgres, redis, mongo (the test's), nginx (below), Prometheus, Grafana
        };
        let completes = services
            .values()
            .any(|s| s["depends_on"][&name]["condition"] == "service_completed_successfully");
        units.push(Unit {
            name: name.clone(),
            binary: binary.to_owned(),
            args: service["command"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect(),
            env: service["environment"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), text(v)))
                .collect(),
            ports: published(service),
            mounts: Vec::new(),
            kind: if completes {
                Kind::Job
            } else {
                Kind::Server {
                    health: health.clone(),
                }
            },
        });
    }
    let nginx = &services["nginx"];
    let mount = nginx["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|v| v.contains(":/etc/nginx/nginx.conf"))
        .context("nginx mounts no nginx.conf")?;
    let source = mount.split(':').next().unwrap_or_default();
    let edge_address = nginx["networks"]["default"]["ipv4_address"]
        .as_str()
        .map(str::to_owned);
    let wrapper_env = units
        .iter()
        .find(|u| u.name == "wrapper")
        .map(|u| u.env.clone())
        .context("no wrapper")?;
    Ok(Plan {
        edge: EdgeUnit {
            conf: std::fs::read_to_string(root().join(source))?,
            port: *published(nginx)
                .first()
                .context("nginx publishes no port")?,
        },
        units,
        servers: vec![
            ("postgres:5432".into(), tsync_e2e::database_url()),
            ("redis:6379".into(), tsync_e2e::redis_url()),
            ("mongo:27017".into(), tsync_e2e::mongodb_url()),
        ],
        db_role: services["postgres"]["environment"]["POSTGRES_USER"]
            .as_str()
            .context("POSTGRES_USER")?
            .to_owned(),
        namespace: wrapper_env
            .get("TSYNC_NAMESPACE")
            .cloned()
            .unwrap_or_default(),
        // The edge's fixed address on the compose network: a loopback address of its own.
        renames: edge_address
            .iter()
            .map(|a| {
                (
                    a.clone(),
                    format!("127.0.{}.{}", 10 + clock_number(200), 1 + clock_number(250)),
                )
            })
            .collect(),
        edge_address,
        wrapper_env,
    })
}

/// The container ports a compose service publishes.
fn published(service: &Value) -> Vec<u16> {
    service["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str()?.rsplit(':').next()?.parse().ok())
        .collect()
}

/// `method path` through the edge as `host`, with `token`: the status and the JSON answer.
async fn through_edge(
    stack: &Stack,
    host: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = stack.to_edge(method, path, host);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    Ok((status, response.json().await.unwrap_or_default()))
}

/// `POST path` with `body` through the edge, sent again while the app answers 400 (it has not
/// applied the user the body names yet: nothing is written or charged) for at most 15 s; the
/// last answer.
async fn once_known(
    stack: &Stack,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer =
            through_edge(stack, host, Method::POST, path, token, Some(body.clone())).await?;
        if answer.0 != StatusCode::BAD_REQUEST || std::time::Instant::now() > deadline {
            return Ok(answer);
        }
        tokio::task::yield_now().await;
    }
}

/// Expect a 2xx answer; else fail with it and the services' logs.
fn ok(stack: &Stack, what: &str, (status, body): (StatusCode, Value)) -> anyhow::Result<Value> {
    anyhow::ensure!(
        status.is_success(),
        "{what}: {status} {body}\n{}",
        stack.logs()
    );
    Ok(body)
}

/// The demo's walk through the edge of a running stack. The throttle must count `client` (the
/// test's address, or the one its Ingress forwards), never the edge.
async fn walk(stack: &Stack, client: &str) -> anyhow::Result<()> {
    let env = |k: &str| stack.wrapper_env.get(k).cloned().unwrap_or_default();

    // The platform admin signs in on the admin host, at the wrapper.
    let response = reqwest::Client::new()
        .post(format!("{}/auth/login", stack.wrapper_url))
        .header("host", env("WRAPPER_ADMIN_HOST"))
        .json(&json!({"email": env("WRAPPER_BOOTSTRAP_ADMIN_EMAIL"),
                      "password": env("WRAPPER_BOOTSTRAP_ADMIN_PASSWORD")}))
        .send()
        .await?;
    let status = response.status();
    let root = ok(
        stack,
        "the platform admin's sign-in",
        (status, response.json().await.unwrap_or_default()),
    )?;
    let root = root["token"].as_str().unwrap_or_default().to_owned();

    // The first tenant's admin signs in through the edge, on the tenant's host.
    let tenant: Value = serde_json::from_str(&env("WRAPPER_BOOTSTRAP_TENANT"))
        .context("the file creates no first tenant (WRAPPER_BOOTSTRAP_TENANT)")?;
    let host = format!(
        "{}{}",
        tenant["subdomain"].as_str().unwrap_or_default(),
        env("WRAPPER_COOKIE_DOMAIN")
    );
    let admin = &tenant["admin"];
    let sign_in = |password: Value| {
        stack
            .to_edge(Method::POST, "/auth/login", &host)
            .json(&json!({"email": admin["email"], "password": password}))
            .send()
    };
    let response = sign_in(admin["password"].clone()).await?;
    let status = response.status();
    let signed_in = ok(
        stack,
        "the tenant admin's sign-in through the edge",
        (status, response.json().await.unwrap_or_default()),
    )?;
    let token = signed_in["token"].as_str().unwrap_or_default().to_owned();
    let tenant_id = signed_in["tenantId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let token = Some(token.as_str());

    // The wrapper saw the client the edge forwarded, not the edge: a failed sign-in is
    // counted against the client's address.
    let status = sign_in(json!("Wrong-Password-1")).await?.status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let sources: Vec<String> = sqlx::query_scalar(
        "select key from sign_in_failures where key like 'source:%' and failures > 0",
    )
    .fetch_all(&stack.db)
    .await?;
    assert_eq!(
        sources,
        [format!("source:{client}")],
        "the throttle does not count the client"
    );

    // Each app loads the tenant on its first visit.
    for path in ["/crm/accounts", "/hrms/employees", "/projects/people"] {
        let answer = through_edge(stack, &host, Method::GET, path, token, None).await?;
        ok(stack, &format!("the first visit to {path}"), answer)?;
    }

    // A user, and a paid operation: the platform admin funds the tenant, its admin the CRM.
    let users = format!("/api/tenants/{tenant_id}/users");
    let ada = through_edge(
        stack,
        &host,
        Method::POST,
        &users,
        token,
        Some(json!({"email": "ada@acme.test", "fullName": "Ada Lovelace"})),
    )
    .await?;
    let ada = ok(stack, "creating a user", ada)?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let funded = reqwest::Client::new()
        .post(format!("{}/api/admin/credits/allocate", stack.wrapper_url))
        .header("host", env("WRAPPER_ADMIN_HOST"))
        .bearer_auth(&root)
        .json(&json!({"tenantId": tenant_id, "amount": 100}))
        .send()
        .await?;
    ok(stack, "funding the tenant", (funded.status(), Value::Null))?;
    let allocated = through_edge(
        stack,
        &host,
        Method::POST,
        "/api/admin/credits/allocate/application",
        token,
        Some(json!({"tenantId": tenant_id, "application": "crm", "amount": 100})),
    )
    .await?;
    ok(stack, "funding the CRM", allocated)?;
    // The new user reaches each app like any change: a create naming them is refused (400,
    // nothing written or charged) until it has.
    let account = once_known(
        stack,
        &host,
        "/crm/accounts",
        token,
        json!({"name": "Initech", "value": 5000, "ownerId": ada}),
    )
    .await?;
    ok(stack, "a paid CRM operation", account)?;
    let balance = through_edge(
        stack,
        &host,
        Method::GET,
        &format!("/api/credits/balance?tenantId={tenant_id}"),
        token,
        None,
    )
    .await?;
    let balance = ok(stack, "the balance", balance)?;
    let crm = balance["balances"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["scope"] == "app:crm")
        .cloned()
        .unwrap_or_default();
    assert!(
        crm["balance"].as_i64().is_some_and(|b| b < 100),
        "not charged: {balance}"
    );
    let employee = once_known(
        stack,
        &host,
        "/hrms/employees",
        token,
        json!({"userId": ada, "department": "Engineering", "salary": 90000}),
    )
    .await?;
    ok(stack, "an HRMS employee", employee)?;

    // A change at the wrapper reaches every app.
    let changed = through_edge(
        stack,
        &host,
        Method::PATCH,
        &format!("{users}/{ada}"),
        token,
        Some(json!({"email": "ada@analytical.engine"})),
    )
    .await?;
    ok(stack, "changing the user's address", changed)?;
    for path in ["/crm/accounts", "/hrms/employees", "/projects/people"] {
        let seen = eventually_some(Duration::from_secs(30), || async {
            let (status, body) = through_edge(stack, &host, Method::GET, path, token, None)
                .await
                .ok()?;
            (status.is_success() && body.to_string().contains("ada@analytical.engine"))
                .then_some(())
        })
        .await;
        anyhow::ensure!(
            seen.is_ok(),
            "{path} never showed the change\n{}",
            stack.logs()
        );
    }
    Ok(())
}

/// Whether the test Redis is a cluster (the Redis Cluster pass of scripts/test).
fn on_a_cluster() -> bool {
    tsync_e2e::redis_url().starts_with("redis-cluster://")
}

#[tokio::test]
async fn the_compose_file_runs_the_demo_through_its_edge() -> anyhow::Result<()> {
    if on_a_cluster() {
        eprintln!("compose runs one Redis: this test runs in the single-node pass");
        return Ok(());
    }
    let file = std::env::var("TSYNC_COMPOSE_FILE").unwrap_or_else(|_| "docker-compose.yml".into());
    let stack = Stack::up(compose_plan(&file)?).await?;
    walk(&stack, "127.0.0.1").await
}

/// A `ConfigMap`'s data or a `Secret`'s stringData of `file`.
fn data_of(file: &str, field: &str) -> BTreeMap<String, String> {
    yaml_documents(file).remove(0)[field]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), text(v)))
        .collect()
}

/// The container of a Deployment or Job of `file` as a unit, its configuration from `config`
/// and `secrets` (`tenantsync-config`, `tenantsync-secrets`).
fn k8s_unit(
    file: &str,
    config: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> anyhow::Result<Unit> {
    let docs = yaml_documents(file);
    let workload = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" || d["kind"] == "Job")
        .with_context(|| format!("{file}: no Deployment or Job"))?;
    let pod = &workload["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let image = container["image"].as_str().unwrap_or_default();
    let binary = image
        .strip_prefix("tenantsync/")
        .and_then(|i| i.split(':').next())
        .with_context(|| format!("{file}: not one of our images"))?;
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap_or_default().to_owned();
        let from = &var["valueFrom"];
        let value = if let Some(v) = var.get("value") {
            Some(text(v))
        } else if let Some(r) = from.get("configMapKeyRef") {
            anyhow::ensure!(r["name"] == "tenantsync-config", "{file}: {name} from {r}");
            config.get(r["key"].as_str().unwrap_or_default()).cloned()
        } else if let Some(r) = from.get("secretKeyRef") {
            anyhow::ensure!(r["name"] == "tenantsync-secrets", "{file}: {name} from {r}");
            let v = secrets.get(r["key"].as_str().unwrap_or_default()).cloned();
            anyhow::ensure!(
                v.is_some() || r["optional"] == true,
                "{file}: no secret for {name}"
            );
            v
        } else {
            anyhow::bail!("{file}: {name} has no value")
        };
        if let Some(value) = value {
            env.insert(name, value);
        }
    }
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .with_context(|| format!("{file}: no volume {}", mount["name"]))?;
        anyhow::ensure!(
            volume["secret"]["secretName"] == "tenantsync-secrets",
            "{file}: {volume}"
        );
        let files = volume["secret"]["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| {
                let key = item["key"].as_str().unwrap_or_default();
                (
                    item["path"].as_str().unwrap_or_default().to_owned(),
                    secrets.get(key).cloned().unwrap_or_default(),
                )
            })
            .collect();
        mounts.push((
            mount["mountPath"].as_str().unwrap_or_default().to_owned(),
            files,
        ));
    }
    let args = container["args"]
        .as_array()
        .or(container["command"].as_array())
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    Ok(Unit {
        name: workload["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        binary: binary.to_owned(),
        args,
        env,
        ports: container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64()?.try_into().ok())
            .collect(),
        mounts,
        kind: if workload["kind"] == "Job" {
            Kind::Job
        } else {
            Kind::Server {
                health: container["readinessProbe"]["httpGet"]["path"]
                    .as_str()
                    .with_context(|| format!("{file}: no readiness probe"))?
                    .to_owned(),
            }
        },
    })
}

/// What `kubectl apply -k deploy/k8s` would run, after an operator replaced the Secret's
/// placeholders as secrets.yaml says (a key-encryption key made by `wrapper keys new-kek`) and
/// added its optional first tenant: the Jobs first (Redis users, migrations), then the
/// wrapper, the apps of nginx/apps and the edge.
fn kubernetes_plan() -> anyhow::Result<Plan> {
    let config = data_of("deploy/k8s/config.yaml", "data");
    let mut secrets = data_of("deploy/k8s/secrets.yaml", "stringData");
    // Each placeholder replaced by a value of the operator's, the same one wherever it
    // appears (a Redis user's password in redis-acl-users and in that user's URL).
    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    for value in secrets.values_mut() {
        while let Some(i) = value.find("CHANGE-ME") {
            let end = value[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(value.len(), |e| i + e);
            let placeholder = value[i..end].to_owned();
            let n = chosen.len();
            let mine = chosen
                .entry(placeholder.clone())
                .or_insert_with(|| format!("Operator-{n}-{}", &unique_name()[8..24]))
                .clone();
            value.replace_range(i..end, &mine);
        }
    }
    secrets.insert(
        "key-encryption-keys".into(),
        wrapper::identity::keys::Keks::generate()?,
    );
    let domain = config.get("cookie-domain").cloned().unwrap_or_default();
    secrets.insert(
        "bootstrap-tenant".into(),
        json!({"name": "Acme", "subdomain": "acme", "plan": "pro",
               "features": ["crm", "hrms", "projects"],
               "admin": {"email": format!("admin@acme{domain}"), "fullName": "Acme Admin",
                         "password": "Acme-Admin-Pass-1"}})
        .to_string(),
    );
    let mut units = Vec::new();
    for file in ["redis-acl-job", "migrate-job", "wrapper"] {
        units.push(k8s_unit(
            &format!("deploy/k8s/{file}.yaml"),
            &config,
            &secrets,
        )?);
    }
    for (app, _) in crate::compose::listed_apps() {
        units.push(k8s_unit(
            &format!("deploy/k8s/{app}.yaml"),
            &config,
            &secrets,
        )?);
    }
    let edge = data_of("deploy/k8s/nginx-config.yaml", "data");
    let edge_port = yaml_documents("deploy/k8s/nginx.yaml")
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .and_then(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"].as_u64()
        })
        .context("the edge's port")?;
    let database = Url::parse(secrets.get("database-url").context("database-url")?)?;
    let wrapper_env = units
        .iter()
        .find(|u| u.name == "wrapper")
        .map(|u| u.env.clone())
        .context("no wrapper")?;
    Ok(Plan {
        units,
        edge: EdgeUnit {
            conf: edge.get("nginx.conf").cloned().context("nginx.conf")?,
            port: edge_port.try_into()?,
        },
        servers: vec![
            ("postgres:5432".into(), tsync_e2e::database_url()),
            ("redis:6379".into(), tsync_e2e::redis_url()),
            ("mongo:27017".into(), tsync_e2e::mongodb_url()),
        ],
        db_role: database.username().to_owned(),
        namespace: config.get("namespace").cloned().unwrap_or_default(),
        // The pod network is loopback.
        renames: config
            .get("trusted-proxies")
            .into_iter()
            .flat_map(|r| r.split(','))
            .map(|range| (range.trim().to_owned(), "127.0.0.0/8".to_owned()))
            .collect(),
        edge_address: None,
        wrapper_env,
    })
}

/// deploy/k8s as processes on the Redis Cluster (the manifests' Redis is one), behind an
/// Ingress the test plays: it forwards a client address and `https`.
#[tokio::test]
async fn the_kubernetes_manifests_run_the_demo_through_their_edge() -> anyhow::Result<()> {
    if !on_a_cluster() {
        eprintln!("the manifests use a Redis Cluster: this test runs in the Redis Cluster pass");
        return Ok(());
    }
    let mut stack = Stack::up(kubernetes_plan()?).await?;
    stack.ingress_client = Some("203.0.113.7".into());
    walk(&stack, "203.0.113.7").await
}

#[test]
fn a_host_is_mapped_only_where_it_is_the_whole_name_and_port() {
    let to = "127.0.0.1:4000";
    assert_eq!(
        replace_bounded("redis://u:p@redis:6379/0", "redis:6379", to),
        "redis://u:p@127.0.0.1:4000/0"
    );
    assert_eq!(
        replace_bounded("http://xredis:6379 redis:63790", "redis:6379", to),
        "http://xredis:6379 redis:63790"
    );
    assert_eq!(
        replace_bounded("a,redis:6379,b", "redis:6379", to),
        "a,127.0.0.1:4000,b"
    );
}
