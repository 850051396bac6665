//! # sync-testkit
//!
//! Helpers for tests against real servers (a dev-dependency only; nothing in production links it).
//!
//! Tests run in parallel on shared Redis, Postgres and MongoDB-wire servers, so each test gets
//! its own Postgres database, its own Redis key prefix and its own Mongo database, named
//! `tsync_t_<random>` (scripts/test drops leftovers of earlier runs by that prefix). Tests that
//! stop or restart Redis get a private `redis-server` on a free port. Nothing here sleeps to
//! synchronise: [`eventually`] polls a condition until a deadline.
//!
//! The servers come from the environment that `scripts/services` prints: `DATABASE_URL`,
//! `REDIS_URL`, `MONGODB_URL`.
#![warn(missing_docs)]

use std::{
    future::Future,
    net::{SocketAddr, TcpListener as StdListener},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgPoolOptions};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
    task::JoinHandle,
};
use uuid::Uuid;

pub mod hub;

/// Prefix of every per-test database, Mongo database and Redis namespace.
pub const TEST_PREFIX: &str = "tsync_t_";

/// A fresh name `tsync_t_<32 hex>`, unique to the calling test.
pub fn unique_name() -> String {
    format!("{TEST_PREFIX}{}", Uuid::new_v4().simple())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The shared Redis server (`REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    env_or("REDIS_URL", "redis://127.0.0.1:6379")
}

/// The shared Postgres server's admin URL (`DATABASE_URL`).
pub fn database_url() -> String {
    env_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// The shared MongoDB-wire server (`MONGODB_URL`).
pub fn mongodb_url() -> String {
    env_or("MONGODB_URL", "mongodb://127.0.0.1:27017/")
}

/// A Redis key namespace of the test's own, e.g. `tsync_t_4f…`.
pub fn redis_namespace() -> String {
    unique_name()
}

/// A Postgres database created for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// The database's name.
    pub name: String,
    /// A URL that connects to it.
    pub url: String,
    /// A pool connected to it.
    pub pool: PgPool,
}

/// Create an empty Postgres database for the calling test.
pub async fn fresh_database() -> anyhow::Result<TestDatabase> {
    let admin_url = database_url();
    let name = unique_name();
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .with_context(|| format!("connecting to Postgres at {admin_url}"))?;
    // The name is generated above from hex digits only, so interpolating it is safe; CREATE
    // DATABASE takes no bind parameters.
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .context("creating the test database")?;
    let url = with_database(&admin_url, &name)?;
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await?;
    Ok(TestDatabase { name, url, pool })
}

/// `url` with its database path replaced by `database`.
pub fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let scheme_end = url.find("://").context("database URL without a scheme")? + 3;
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    Ok(format!("{}/{database}{query}", &base[..host_end]))
}

/// A Mongo database of the calling test's own.
pub async fn fresh_mongo() -> anyhow::Result<mongodb::Database> {
    let client = mongodb::Client::with_uri_str(mongodb_url())
        .await
        .context("parsing MONGODB_URL")?;
    Ok(client.database(&unique_name()))
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private `redis-server` for tests that stop, kill or restart Redis.
///
/// It keeps its port across restarts, so clients can reconnect to the same URL. It persists
/// nothing unless asked (`with_aof`), and it is killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    aof: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Start a private server on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// Start a private server with the append-only file on, so data survives a restart.
    pub async fn start_with_aof() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(aof: bool) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique_name());
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port: free_port()?,
            dir,
            aof,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Start the server again on the same port (after [`stop`](Self::stop) or
    /// [`kill`](Self::kill)); waits until it answers PING.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("redis-server on port {} is already running", self.port);
        }
        let port = self.port.to_string();
        let aof = if self.aof { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", aof, "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning redis-server (is it installed? run scripts/services)")?;
        self.child = Some(child);
        let port = self.port;
        eventually(Duration::from_secs(10), || async move {
            redis_pings(port).await
        })
        .await
        .with_context(|| format!("private redis-server on port {port} did not answer"))?;
        Ok(())
    }

    /// Stop the server abruptly (SIGKILL) and wait until it is gone.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Stop the server (SIGKILL; the private server has nothing to flush unless AOF is on, and
    /// the AOF is written on every write with `appendfsync` left at its default).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.kill().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private six-node Redis Cluster (three masters, three replicas) for tests that kill a
/// master; the shared cluster of `scripts/services --redis-cluster` is for everything else.
/// Every node is killed when this is dropped.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<(u16, Option<Child>)>,
}

impl RedisCluster {
    /// Start six nodes on free ports and join them (`redis-cli --cluster create`), with a node
    /// timeout of 2 s so a dead master's replica is promoted within a few seconds.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique_name());
        std::fs::create_dir_all(&dir)?;
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port()?;
            nodes.push((port, Some(spawn_cluster_node(&dir, port)?)));
        }
        let cluster = Self { dir, nodes };
        for (port, _) in &cluster.nodes {
            let port = *port;
            eventually(Duration::from_secs(10), || redis_pings(port)).await?;
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await?;
        anyhow::ensure!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let first = cluster.nodes[0].0;
        eventually(Duration::from_secs(30), || cluster_state_ok(first)).await?;
        Ok(cluster)
    }

    /// A `redis-cluster://` URL naming every node as a seed.
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(|(p, _)| format!("127.0.0.1:{p}"));
        let first = nodes.next().unwrap_or_default();
        let rest: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
        format!("redis-cluster://{first}?{}", rest.join("&"))
    }

    /// The port of the master that serves `key` now.
    pub async fn master_of(&self, key: &str) -> anyhow::Result<u16> {
        let alive = self
            .nodes
            .iter()
            .find(|(_, c)| c.is_some())
            .context("no node is running")?
            .0;
        let slot: u16 = redis_cli(alive, &["cluster", "keyslot", key])
            .await?
            .trim()
            .parse()?;
        let nodes = redis_cli(alive, &["cluster", "nodes"]).await?;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| {
                let mut ends = range.split('-').filter_map(|n| n.parse::<u16>().ok());
                match (ends.next(), ends.next()) {
                    (Some(a), Some(b)) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                let port = f[1].split('@').next().and_then(|a| a.rsplit(':').next());
                return port
                    .and_then(|p| p.parse().ok())
                    .context("a node address without a port");
            }
        }
        bail!("no live master serves slot {slot}")
    }

    /// SIGKILL the node on `port` (its replica takes over once the others notice).
    pub async fn kill(&mut self, port: u16) -> anyhow::Result<()> {
        let node = self
            .nodes
            .iter_mut()
            .find(|(p, _)| *p == port)
            .context("no such node")?;
        if let Some(mut child) = node.1.take() {
            child.kill().await?;
        }
        Ok(())
    }
}

impl RedisCluster {
    /// Start a killed node again on its port: it reads its cluster configuration back and
    /// rejoins (a dead master comes back as a replica of the one promoted in its place).
    pub async fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let node = self
            .nodes
            .iter_mut()
            .find(|(p, _)| *p == port)
            .context("no such node")?;
        if node.1.is_none() {
            node.1 = Some(spawn_cluster_node(&dir, port)?);
        }
        eventually(Duration::from_secs(10), || redis_pings(port)).await
    }
}

fn spawn_cluster_node(dir: &std::path::Path, port: u16) -> anyhow::Result<Child> {
    // A directory per node: a replica's full sync writes the RDB it receives as dump.rdb there,
    // and a node starting up loads the dump.rdb it finds. Shared, the nodes read each other's.
    let dir = dir.join(port.to_string());
    std::fs::create_dir_all(&dir)?;
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--cluster-enabled", "yes"])
        .args(["--cluster-node-timeout", "2000", "--cluster-config-file"])
        .arg(dir.join("nodes.conf"))
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawning redis-server (is it installed? run scripts/services)")
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(child) = child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run `redis-cli -p <port> <args…>` against a loopback node; its standard output.
pub async fn redis_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "redis-cli {args:?} failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn cluster_state_ok(port: u16) -> bool {
    redis_cli(port, &["cluster", "info"])
        .await
        .is_ok_and(|info| info.contains("cluster_state:ok"))
}

async fn redis_pings(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").await.is_ok()
        && stream.read_exact(&mut reply).await.is_ok()
        && &reply == b"+PONG\r\n"
}

/// Poll `condition` every 20 ms until it returns true, or fail after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll `probe` until it yields `Some`, or fail after `timeout`; returns the value.
pub async fn eventually_some<T, F, Fut>(timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("no value within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An axum router served on a random loopback port for the duration of a test.
#[derive(Debug)]
pub struct TestServer {
    /// Where the router listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TestServer {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve `router` on `127.0.0.1:0`; the server stops when the returned handle is dropped.
pub async fn serve(router: axum::Router) -> anyhow::Result<TestServer> {
    serve_listener(tokio::net::TcpListener::bind("127.0.0.1:0").await?, router)
}

/// Serve `router` on a listener bound earlier (when the router must know its own address).
pub fn serve_listener(
    listener: tokio::net::TcpListener,
    router: axum::Router,
) -> anyhow::Result<TestServer> {
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(TestServer { addr, task })
}

/// A connected fred client for `url`.
pub async fn redis_client(url: &str) -> anyhow::Result<fred::clients::Client> {
    use fred::prelude::*;
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    Ok(client)
}

/// Every entry of every partition stream under `keys`, decoded, in stream order per partition.
pub async fn read_all_events(
    redis: &fred::clients::Client,
    keys: &sync_contract::StreamKeys,
) -> anyhow::Result<Vec<(String, sync_contract::Envelope)>> {
    use fred::prelude::*;
    let mut out = Vec::new();
    for stream in keys.all_events() {
        let entries: Vec<(String, std::collections::HashMap<String, String>)> =
            redis.xrange(&stream, "-", "+", None).await?;
        for (id, fields) in entries {
            out.push((id, sync_contract::Envelope::from_stream_fields(fields)?));
        }
    }
    Ok(out)
}

/// Checks that, per tenant, the first occurrences of events come in strictly increasing `seq`
/// and that every duplicate repeats an earlier event exactly (same eventId and seq). Returns the
/// number of distinct events.
pub fn check_per_tenant_order(events: &[(String, sync_contract::Envelope)]) -> usize {
    use std::collections::{HashMap, HashSet};
    let mut last: HashMap<uuid::Uuid, i64> = HashMap::new();
    let mut seen: HashMap<uuid::Uuid, i64> = HashMap::new();
    let mut distinct = HashSet::new();
    for (_, e) in events {
        if let Some(seq) = seen.get(&e.event_id) {
            assert_eq!(*seq, e.seq, "a duplicate must repeat the same event");
            continue;
        }
        seen.insert(e.event_id, e.seq);
        distinct.insert(e.event_id);
        let prev = last.insert(e.tenant_id, e.seq).unwrap_or(0);
        assert_eq!(
            e.seq,
            prev + 1,
            "tenant {} jumped from seq {prev} to {}",
            e.tenant_id,
            e.seq
        );
    }
    distinct.len()
}

/// A `user.*` event for tests: `user` of `tenant` at `version`, with `seq`.
pub fn user_event(
    tenant: Uuid,
    user: Uuid,
    version: i64,
    seq: i64,
    email: &str,
) -> sync_contract::Envelope {
    use sync_contract::{CONTRACT_VERSION, Envelope, Event, UserState};
    let state = UserState {
        id: user,
        tenant_id: tenant,
        email: email.to_owned(),
        full_name: format!("User {version}"),
        avatar_url: None,
        email_verified: false,
        active: true,
        deleted_at: None,
    };
    Envelope {
        event_id: Uuid::now_v7(),
        event_version: CONTRACT_VERSION,
        tenant_id: tenant,
        seq,
        aggregate_id: user.to_string(),
        aggregate_version: version,
        // The wire carries milliseconds; keep test envelopes exactly representable.
        occurred_at: chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
            .unwrap_or_default(),
        source: "test".into(),
        correlation_id: Some(format!("corr-{seq}")),
        traceparent: None,
        event: if version == 1 {
            Event::UserCreated(state)
        } else {
            Event::UserUpdated(state)
        },
    }
}

/// The conformance suite every [`sync_sdk::store::TenantStore`] must pass.
pub async fn store_conformance<S: sync_sdk::store::TenantStore>(store: &S) -> anyhow::Result<()> {
    use sync_sdk::store::{Applied, EntityKind, SyncState};
    let (tenant, other, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    anyhow::ensure!(
        store.sync_state(tenant).await?.is_none(),
        "a tenant never loaded has no sync state"
    );
    store.mark_loaded(tenant, 0).await?;

    let v1 = user_event(tenant, user, 1, 1, "v1@x.test");
    anyhow::ensure!(store.apply(&v1).await? == Applied::Applied, "first apply");
    anyhow::ensure!(
        store.apply(&v1).await? == Applied::Duplicate,
        "the same event twice is a no-op"
    );
    anyhow::ensure!(
        store.is_processed(v1.event_id).await?,
        "the event id is recorded"
    );

    let v3 = user_event(tenant, user, 3, 3, "v3@x.test");
    let v2 = user_event(tenant, user, 2, 2, "v2@x.test");
    anyhow::ensure!(
        store.apply(&v3).await? == Applied::Applied,
        "a newer version applies"
    );
    anyhow::ensure!(
        store.apply(&v2).await? == Applied::Stale,
        "an older version is stale"
    );
    anyhow::ensure!(
        store.is_processed(v2.event_id).await?,
        "a stale event is still recorded"
    );
    let same = user_event(tenant, user, 3, 4, "other@x.test");
    anyhow::ensure!(
        store.apply(&same).await? == Applied::Stale,
        "an equal version is stale"
    );

    let got = store
        .get(EntityKind::User, tenant, user)
        .await?
        .ok_or_else(|| anyhow::anyhow!("user missing"))?;
    anyhow::ensure!(got.version == 3, "version {} instead of 3", got.version);
    anyhow::ensure!(got.state["email"] == "v3@x.test", "state {}", got.state);
    anyhow::ensure!(
        store.sync_state(tenant).await?
            == Some(SyncState {
                snapshot_seq: 0,
                last_seq: 4
            }),
        "last_seq is the highest applied seq"
    );
    store.mark_loaded(tenant, 2).await?;
    anyhow::ensure!(
        store.sync_state(tenant).await?
            == Some(SyncState {
                snapshot_seq: 2,
                last_seq: 4
            }),
        "a reload sets the snapshot watermark and never lowers last_seq"
    );
    anyhow::ensure!(
        store.get(EntityKind::User, other, user).await?.is_none(),
        "another tenant sees nothing"
    );
    // An event naming the same aggregate under another tenant (a forged or corrupted entry)
    // writes nothing, however new its version; upsert_many (a snapshot page) neither.
    let forged = user_event(other, user, 9, 1, "forged@x.test");
    anyhow::ensure!(
        store.apply(&forged).await? != Applied::Applied,
        "an aggregate of one tenant is not overwritten by an event of another"
    );
    store
        .upsert_many(
            other,
            vec![(
                EntityKind::User,
                user,
                10,
                serde_json::json!({"email": "forged@x.test"}),
            )],
        )
        .await?;
    let kept = store.get(EntityKind::User, tenant, user).await?;
    anyhow::ensure!(
        kept.as_ref()
            .is_some_and(|v| v.version == 3 && v.state["email"] == "v3@x.test"),
        "the tenant's aggregate is untouched: {kept:?}"
    );
    anyhow::ensure!(
        store.get(EntityKind::User, other, user).await?.is_none(),
        "the other tenant got nothing either"
    );
    anyhow::ensure!(
        store.sync_state(other).await?.is_none(),
        "loading one tenant loads no other"
    );
    page_conformance(store, tenant, user).await?;
    batch_conformance(store).await
}

/// Listing: pages in id order after a cursor, the tenant's aggregates only.
async fn page_conformance<S: sync_sdk::store::TenantStore>(
    store: &S,
    tenant: Uuid,
    first: Uuid,
) -> anyhow::Result<()> {
    use sync_sdk::store::EntityKind;
    let more: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (i, id) in more.iter().enumerate() {
        store
            .apply(&user_event(tenant, *id, 1, 10 + i as i64, "p@x.test"))
            .await?;
    }
    let stranger = Uuid::now_v7();
    store
        .apply(&user_event(Uuid::now_v7(), stranger, 1, 1, "s@x.test"))
        .await?;
    let mut all = vec![first];
    all.extend(&more);
    all.sort();
    let page1 = store.page(EntityKind::User, tenant, None, 3).await?;
    let ids1: Vec<Uuid> = page1.iter().map(|(id, _)| *id).collect();
    anyhow::ensure!(ids1 == all[..3], "first page in id order: {ids1:?}");
    let page2 = store
        .page(EntityKind::User, tenant, ids1.last().copied(), 3)
        .await?;
    let ids2: Vec<Uuid> = page2.iter().map(|(id, _)| *id).collect();
    anyhow::ensure!(ids2 == all[3..], "the page after the cursor: {ids2:?}");
    anyhow::ensure!(
        page2.iter().all(|(_, v)| v.version >= 1),
        "versions come with the states"
    );
    Ok(())
}

/// The batch path: one [`sync_sdk::store::TenantStore::apply_batch`] over two tenants with an
/// event recorded before, a duplicate inside the batch and versions out of order.
async fn batch_conformance<S: sync_sdk::store::TenantStore>(store: &S) -> anyhow::Result<()> {
    use sync_sdk::store::{Applied, EntityKind};
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let (ann, bob, cy) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store.mark_loaded(a, 0).await?;
    store.mark_loaded(b, 0).await?;
    let before = user_event(a, cy, 1, 1, "cy1@x.test");
    store.apply(&before).await?;
    let ann3 = user_event(a, ann, 3, 2, "ann3@x.test");
    let ann1 = user_event(a, ann, 1, 3, "ann1@x.test");
    let ann2 = user_event(a, ann, 2, 4, "ann2@x.test");
    let bob1 = user_event(b, bob, 1, 1, "bob1@x.test");
    let bob2 = user_event(b, bob, 2, 2, "bob2@x.test");
    let batch = vec![
        ann3.clone(),
        before.clone(),
        bob1.clone(),
        ann1.clone(),
        bob1.clone(),
        bob2.clone(),
        ann2.clone(),
    ];
    let outcomes = store.apply_batch(&batch).await?;
    use Applied::*;
    anyhow::ensure!(
        outcomes == vec![Applied, Duplicate, Stale, Stale, Duplicate, Applied, Stale],
        "batch outcomes {outcomes:?}"
    );
    let version = |tenant, user| async move {
        store
            .get(EntityKind::User, tenant, user)
            .await
            .ok()
            .flatten()
            .map(|v| (v.version, v.state["email"].clone()))
    };
    anyhow::ensure!(
        version(a, ann).await == Some((3, "ann3@x.test".into())),
        "the newest version in the batch wins"
    );
    anyhow::ensure!(
        version(b, bob).await == Some((2, "bob2@x.test".into())),
        "a version after another of the same aggregate in one batch applies"
    );
    for e in [&ann3, &ann1, &ann2, &bob1, &bob2] {
        anyhow::ensure!(
            store.is_processed(e.event_id).await?,
            "every event of the batch is recorded"
        );
    }
    let states = store.sync_states(&[a, b, Uuid::now_v7()]).await?;
    anyhow::ensure!(states.len() == 2, "sync_states knows loaded tenants only");
    anyhow::ensure!(
        states[&a].last_seq == 4 && states[&b].last_seq == 2,
        "last_seq per tenant is its highest seq in the batch: {states:?}"
    );
    let done = store
        .processed_among(&[ann3.event_id, Uuid::now_v7(), bob2.event_id])
        .await?;
    anyhow::ensure!(
        done.len() == 2 && done.contains(&ann3.event_id) && done.contains(&bob2.event_id),
        "processed_among finds exactly the recorded ids"
    );
    anyhow::ensure!(
        store
            .apply_batch(&batch)
            .await?
            .iter()
            .all(|o| *o == Duplicate),
        "the whole batch again is a no-op"
    );
    anyhow::ensure!(store.apply_batch(&[]).await?.is_empty(), "an empty batch");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_the_path() {
        let cases = [
            ("postgres://u@h:5432/postgres", "postgres://u@h:5432/x"),
            ("postgres://u@h:5432", "postgres://u@h:5432/x"),
            (
                "postgres://u@h/db?sslmode=disable",
                "postgres://u@h/x?sslmode=disable",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(with_database(input, "x").unwrap(), want);
        }
    }
}
