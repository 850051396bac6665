//! `bench e2e`: REST write → change visible in each app's store, with the suite as users run
//! it: the wrapper, the CRM and the HRMS as processes of their release binaries, both apps on
//! one store server.
//!
//! * `--store mongo` (default): the `crm` and `hrms` binaries, each with its own database on the
//!   one MongoDB(-wire) server of `MONGODB_URL`.
//! * `--store postgres`: the shipped apps run on MongoDB only, so each app is the SDK consumer
//!   as a process (`replica consume`, the consumer groups `crm` and `hrms`), each into its own
//!   database on the one Postgres server.
//!
//! A change counts as visible in an app when the app's consumer acknowledges its stream entry,
//! which it does as soon as its store confirmed the write: the bench sees the `XACK` through
//! Redis `MONITOR` (so it works for any store and puts no load on the store server; a change
//! stream per app database doubled the MongoDB-wire server's cost per write) and reads the
//! partition streams to know which entry is which write (and when it was published).
//!
//! Phases: single changes on an idle system (one at a time, each waited for in both apps, then
//! a pause), open-loop rates over 20 tenants of 5 users (`--rates`, `--seconds` each), then 64
//! writers as fast as they go (`--burst` seconds). For each: the REST latency, the time from
//! the REST answer to the change being visible in each app, how long after the load the apps
//! converged, the backlog over time, and what each applied event cost the store server
//! (requests and statements, from its own `serverStatus` counters, so a real MongoDB reports
//! the same) and Redis (`INFO commandstats`).
//!
//! `--bin-dir DIR` takes the binaries from DIR (default: beside the `bench` binary), which is
//! how `bench compare` runs a base revision's build under the same harness.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use fred::prelude::*;
use hdrhistogram::Histogram;
use mongodb::bson::{Document, doc};
use serde_json::json;
use sync_sdk::{
    loader::Loader,
    store::postgres::PostgresStore,
    wrapper_client::{WrapperClient, WrapperConfig},
};
use sync_testkit::*;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tsync_e2e::{
    replicas::{Var, app_env, common_env, login, send, wrapper_env},
    wrapper_app::{PASSWORD, ROOT_EMAIL},
};
use uuid::Uuid;

const APPS: [&str; 2] = ["crm", "hrms"];
const SECRET: &str = "bench-service-secret-long-enough";
const PARTITIONS: u32 = 8;

/// Settings of one `bench e2e` run.
#[derive(Debug, Clone)]
pub struct Options {
    pub store: String,
    pub bin_dir: PathBuf,
    pub rates: Vec<u32>,
    pub seconds: u64,
    pub burst: u64,
    pub singles: usize,
    /// Write plots under docs/bench/ (not when comparing).
    pub plots: bool,
}

impl Options {
    pub fn parse(args: &[String]) -> anyhow::Result<Self> {
        let arg = |name: &str| super::flag(args, name);
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            arg(name).map_or(Ok(default), |v| {
                v.parse()
                    .with_context(|| format!("{name} {v}: not a number"))
            })
        };
        let bin_dir = match arg("--bin-dir") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::current_exe()?
                .parent()
                .context("the bench binary has no directory")?
                .to_owned(),
        };
        let rates = arg("--rates")
            .unwrap_or("50,100,200,400")
            .split(',')
            .filter(|r| !r.is_empty())
            .map(|r| r.parse().with_context(|| format!("--rates: {r}")))
            .collect::<anyhow::Result<_>>()?;
        let store = arg("--store").unwrap_or("mongo").to_owned();
        anyhow::ensure!(
            store == "mongo" || store == "postgres",
            "--store mongo|postgres, not {store}"
        );
        Ok(Self {
            store,
            bin_dir,
            rates,
            seconds: number("--seconds", 20)?,
            burst: number("--burst", 20)?,
            singles: number("--singles", 50)? as usize,
            plots: true,
        })
    }
}

/// `bench e2e [--store mongo|postgres] [--bin-dir DIR] [--rates 50,100,200,400] [--seconds 20]
/// [--burst 20] [--singles 50]`.
pub async fn e2e(args: &[String]) -> anyhow::Result<()> {
    let options = Options::parse(args)?;
    let phases = run(&options).await?;
    print_table(&options.store, &[("", &phases)]);
    print_breakdown(&phases);
    if options.plots {
        crate::plots::e2e(&options.store, &phases_for_plot(&phases))?;
    }
    Ok(())
}

/// What one phase measured.
pub struct Phase {
    pub name: String,
    pub offered: String,
    pub answered: usize,
    pub achieved: f64,
    pub errors: u64,
    /// REST request → answer, µs.
    pub rest: Histogram<u64>,
    /// REST answer → visible, per app, µs.
    pub applied: Vec<Histogram<u64>>,
    /// REST answer → visible in every app, µs.
    pub all: Histogram<u64>,
    pub converged: Option<Duration>,
    /// REST answer → the entry in its partition stream (the relay's share), µs.
    pub in_stream: Histogram<u64>,
    /// Per app (Mongo mode: the apps' own metrics): mean store lookup and store write time per
    /// batch, ms, and the batches.
    pub consumer: Vec<Option<(f64, f64, f64)>>,
    /// (seconds since the phase started, writes answered but not yet visible in every app).
    pub backlog: Vec<(f64, usize)>,
    pub cost: Cost,
}

/// Run every phase once against a suite started from `options.bin_dir`.
pub async fn run(options: &Options) -> anyhow::Result<Vec<Phase>> {
    let suite = Suite::start(options).await?;
    println!(
        "bench e2e: {} store, binaries from {}, 20 tenants x 5 users, PATCH fullName through the wrapper's REST API",
        options.store,
        options.bin_dir.display()
    );
    // Warm-up (and a check that the whole path works): one write per tenant.
    let warm = suite.load(LoadKind::Singles(20), Duration::ZERO).await?;
    anyhow::ensure!(
        warm.converged.is_some() && warm.errors == 0,
        "the warm-up writes did not reach both apps"
    );
    let mut phases = Vec::new();
    if options.singles > 0 {
        let mut single = suite
            .load(LoadKind::Singles(options.singles), Duration::ZERO)
            .await?;
        single.name = "single change, idle".into();
        phases.push(single);
    }
    for &rate in &options.rates {
        let duration = Duration::from_secs(options.seconds);
        phases.push(suite.load(LoadKind::Rate(rate), duration).await?);
    }
    if options.burst > 0 {
        let duration = Duration::from_secs(options.burst);
        phases.push(suite.load(LoadKind::Closed(64), duration).await?);
    }
    suite.stop().await;
    Ok(phases)
}

/// `bench compare --base DIR [--head DIR] [--runs 2] [e2e flags]`: `bench e2e` with the base
/// build's binaries and with the head's (default: beside this `bench`), alternating, `--runs`
/// times each, under this one harness; one table of every run, the breakdown and the plots of
/// the head's last run.
pub async fn compare(args: &[String]) -> anyhow::Result<()> {
    let mut options = Options::parse(args)?;
    options.plots = false;
    let base = super::flag(args, "--base").context("--base DIR (the base build's binaries)")?;
    let head = match super::flag(args, "--head") {
        Some(dir) => PathBuf::from(dir),
        None => options.bin_dir.clone(),
    };
    let runs: usize = super::flag(args, "--runs").map_or(Ok(2), str::parse)?;
    let mut results: Vec<(String, Vec<Phase>)> = Vec::new();
    for run_number in 1..=runs {
        for (label, dir) in [("base", PathBuf::from(base)), ("head", head.clone())] {
            let options = Options {
                bin_dir: dir,
                ..options.clone()
            };
            results.push((format!("{label} {run_number}"), run(&options).await?));
        }
    }
    println!("\nbase: {base}\nhead: {}", head.display());
    let runs: Vec<(&str, &[Phase])> = results
        .iter()
        .map(|(label, phases)| (label.as_str(), phases.as_slice()))
        .collect();
    print_table(&options.store, &runs);
    if let Some((_, phases)) = results
        .iter()
        .rev()
        .find(|(label, _)| label.starts_with("head"))
    {
        print_breakdown(phases);
        crate::plots::e2e(&options.store, &phases_for_plot(phases))?;
    }
    Ok(())
}

/// Print one table row per phase (and per labelled run, when comparing).
pub fn print_table(store: &str, runs: &[(&str, &[Phase])]) {
    let [a, b] = APPS;
    println!();
    println!(
        "| {}phase | offered | answered/s | errors | REST p50 / p99 | {a} p50 / p99 | {b} p50 / p99 | both p99 / max | converged after | store requests / statements per event | Redis cmds per event |",
        if runs.len() > 1 { "run | " } else { "" }
    );
    let columns = if runs.len() > 1 { 12 } else { 11 };
    println!("|{}", " --- |".repeat(columns));
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for (label, phases) in runs {
        for p in *phases {
            let apps: Vec<String> = p
                .applied
                .iter()
                .map(|h| format!("{:.1} / {:.1} ms", ms(h, 0.5), ms(h, 0.99)))
                .collect();
            println!(
                "| {}{} | {} | {:.0} | {} | {:.1} / {:.1} ms | {} | {} | {:.1} / {:.1} ms | {} | {} | {} |",
                if runs.len() > 1 {
                    format!("{label} | ")
                } else {
                    String::new()
                },
                p.name,
                p.offered,
                p.achieved,
                p.errors,
                ms(&p.rest, 0.5),
                ms(&p.rest, 0.99),
                apps[0],
                apps[1],
                ms(&p.all, 0.99),
                p.all.max() as f64 / 1000.0,
                p.converged.map_or("not within 120 s".into(), |d| format!(
                    "{:.2} s",
                    d.as_secs_f64()
                )),
                p.cost.store(store),
                p.cost.redis(),
            );
        }
    }
}

/// Where the time of a change goes, per phase: the relay's share (REST answer → entry in the
/// stream) and, per app, the means of its consumer's store lookups and store write per batch.
pub fn print_breakdown(phases: &[Phase]) {
    println!();
    println!(
        "| phase | REST answer → in the stream p50 / p99 | app: lookups / store write per batch (mean), batches | app: visible p50 |"
    );
    println!("| --- | --- | --- | --- |");
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for p in phases {
        let consumer: Vec<String> = APPS
            .iter()
            .zip(&p.consumer)
            .map(|(app, c)| match c {
                Some((lookup, apply, batches)) => {
                    format!("{app}: {lookup:.2} / {apply:.2} ms, {batches:.0}")
                }
                None => format!("{app}: –"),
            })
            .collect();
        let visible: Vec<String> = APPS
            .iter()
            .zip(&p.applied)
            .map(|(app, h)| format!("{app}: {:.1} ms", ms(h, 0.5)))
            .collect();
        println!(
            "| {} | {:.1} / {:.1} ms | {} | {} |",
            p.name,
            ms(&p.in_stream, 0.5),
            ms(&p.in_stream, 0.99),
            consumer.join("; "),
            visible.join("; ")
        );
    }
}

fn phases_for_plot(phases: &[Phase]) -> Vec<crate::plots::Series> {
    phases
        .iter()
        .map(|p| crate::plots::Series {
            name: p.name.clone(),
            backlog: p.backlog.clone(),
            percentiles: [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0]
                .iter()
                .map(|q| (*q, p.all.value_at_quantile(q / 100.0) as f64 / 1000.0))
                .collect(),
        })
        .collect()
}

/// What the applied events cost the servers during a phase (from the servers' own counters).
#[derive(Debug, Default, Clone)]
pub struct Cost {
    events: f64,
    /// Store requests (Mongo: `network.numRequests`, less the bench's own `serverStatus`;
    /// Postgres: transactions committed in the apps' databases).
    store_requests: f64,
    /// Mongo: documents and statements (`opcounters` insert + query + update + delete).
    store_statements: f64,
    /// Consumer-side Redis commands (XREADGROUP, XACK, XPENDING, XCLAIM, XAUTOCLAIM).
    redis_reads: f64,
}

impl Cost {
    fn store(&self, store: &str) -> String {
        if self.events == 0.0 {
            return "–".into();
        }
        match store {
            "mongo" => format!(
                "{:.2} / {:.2}",
                self.store_requests / self.events,
                self.store_statements / self.events
            ),
            _ => format!("{:.2} transactions", self.store_requests / self.events),
        }
    }

    fn redis(&self) -> String {
        if self.events == 0.0 {
            return "–".into();
        }
        format!("{:.2}", self.redis_reads / self.events)
    }
}

/// The servers' counters at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    store_requests: f64,
    store_statements: f64,
    redis_reads: f64,
}

struct Target {
    tenant: Uuid,
    user: Uuid,
    token: String,
}

/// A stream entry as the bench saw it: its write's name, and when each app acknowledged it.
type EntrySeen = (Option<String>, Vec<Option<Instant>>);

/// When each app's store had each write (by its unique `fullName`): when its consumer
/// acknowledged the write's stream entry, which it does as soon as its store confirmed the
/// write (seen through Redis `MONITOR`, so measuring puts no load on the store server).
struct Seen {
    apps: Vec<Mutex<HashMap<String, Instant>>>,
    /// When a reader of the partition streams saw each write's entry.
    in_stream: Mutex<HashMap<String, Instant>>,
    /// Per stream entry (`<stream> <id>`: ids repeat across streams): the write's name once the stream reader saw it, and per app when
    /// the entry was acknowledged (an acknowledgement can be seen first).
    entries: Mutex<HashMap<String, EntrySeen>>,
    changed: tokio::sync::Notify,
}

impl Seen {
    fn new() -> Self {
        Self {
            apps: APPS.iter().map(|_| Mutex::default()).collect(),
            in_stream: Mutex::default(),
            entries: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The stream reader saw entry `id` of write `name` at `at`.
    fn in_stream(&self, id: String, name: String, at: Instant) {
        self.in_stream
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_insert(at);
        let mut entries = self.entries.lock().unwrap();
        let entry = entries
            .entry(id)
            .or_insert_with(|| (None, vec![None; APPS.len()]));
        entry.0 = Some(name.clone());
        for (app, acked) in entry.1.iter().enumerate() {
            if let Some(at) = acked {
                self.stamp(app, &name, *at);
            }
        }
    }

    /// App `app` acknowledged entry `id` at `at`.
    fn acked(&self, app: usize, id: String, at: Instant) {
        let mut entries = self.entries.lock().unwrap();
        let entry = entries
            .entry(id)
            .or_insert_with(|| (None, vec![None; APPS.len()]));
        entry.1[app].get_or_insert(at);
        if let Some(name) = &entry.0 {
            self.stamp(app, name, at);
        }
    }

    fn stamp(&self, app: usize, name: &str, at: Instant) {
        self.apps[app]
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_insert(at);
        self.changed.notify_waiters();
    }

    fn everywhere(&self, name: &str) -> bool {
        self.apps
            .iter()
            .all(|a| a.lock().unwrap().contains_key(name))
    }
}

/// The suite as processes, its tenants, and the watchers of the apps' stores.
struct Suite {
    http: reqwest::Client,
    wrapper_url: String,
    targets: Arc<Vec<Target>>,
    seen: Arc<Seen>,
    counter: Arc<AtomicU64>,
    mongo: Option<mongodb::Client>,
    app_dbs: Vec<TestDatabase>,
    /// The apps' base URLs (Mongo mode), for their metrics.
    app_urls: Vec<String>,
    stop: CancellationToken,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    _processes: Vec<Child>,
    _db: TestDatabase,
}

#[derive(Clone, Copy)]
enum LoadKind {
    /// One write at a time, each waited for in every app, then a pause.
    Singles(usize),
    /// Open loop at this many writes per second.
    Rate(u32),
    /// This many writers, each writing again as soon as answered.
    Closed(usize),
}

/// Start `program` with `args` and `env`, its output in a log file under the temp directory;
/// killed when dropped.
fn spawn(program: &Path, args: &[&str], env: &[Var], log: &str) -> anyhow::Result<Child> {
    let log = std::env::temp_dir().join(format!("bench-e2e-{log}.log"));
    let stderr = std::fs::File::create(&log)?;
    Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// Wait (60 s at most) until `url` answers `/health`.
async fn healthy(http: &reqwest::Client, url: &str, what: &str) -> anyhow::Result<()> {
    sync_testkit::hub::healthy(http, url)
        .await
        .with_context(|| format!("{what} at {url} did not become healthy"))
}

impl Suite {
    async fn start(options: &Options) -> anyhow::Result<Self> {
        let bin = |name: &str| options.bin_dir.join(name);
        let db = fresh_database().await?;
        let namespace = redis_namespace();
        let common = common_env(&namespace, PARTITIONS);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        let mut processes = Vec::new();
        let port = free_port()?;
        let mut env = wrapper_env(&common, &db.url);
        env.extend([
            ("WRAPPER_LISTEN", format!("127.0.0.1:{port}")),
            ("WRAPPER_PASSWORD_HASH_WAIT_MS", "20000".to_owned()),
        ]);
        processes.push(spawn(&bin("wrapper"), &[], &env, "wrapper")?);
        let wrapper_url = format!("http://127.0.0.1:{port}");
        healthy(&http, &wrapper_url, "the wrapper").await?;
        for app in APPS {
            wrapper::startup::upsert_service_client(&db.pool, app, SECRET).await?;
        }
        let root = login(&http, &wrapper_url, None, ROOT_EMAIL).await?;
        let mut targets = Vec::new();
        let mut tenants = Vec::new();
        for i in 0..20 {
            let subdomain = format!("e2e{i}-{}", &Uuid::now_v7().simple().to_string()[24..]);
            let admin_email = format!("admin@{subdomain}.test");
            let body = json!({"name": subdomain, "subdomain": subdomain, "plan": "pro",
                "features": APPS,
                "admin": {"email": admin_email, "fullName": "First Admin", "password": PASSWORD}});
            let url = format!("{wrapper_url}/api/tenants");
            let tenant = send(&http, reqwest::Method::POST, &url, &root, body).await?;
            let id: Uuid = tenant["id"].as_str().unwrap_or_default().parse()?;
            let token = login(&http, &wrapper_url, Some(&subdomain), &admin_email).await?;
            for u in 0..5 {
                let body = json!({"email": format!("u{u}@{subdomain}.test"),
                    "fullName": format!("User {u}"), "password": PASSWORD});
                let url = format!("{wrapper_url}/api/tenants/{id}/users");
                let user = send(&http, reqwest::Method::POST, &url, &token, body).await?;
                targets.push(Target {
                    tenant: id,
                    user: user["id"].as_str().unwrap_or_default().parse()?,
                    token: token.clone(),
                });
            }
            tenants.push((id, subdomain, token));
        }
        let seen = Arc::new(Seen::new());
        let stop = CancellationToken::new();
        let mut watchers = Vec::new();
        let mut mongo = None;
        let mut app_dbs = Vec::new();
        let mut app_urls = Vec::new();
        let keys = sync_sdk::contract::StreamKeys::new(namespace.clone(), PARTITIONS)
            .context("stream keys")?;
        for stream in keys.all_events() {
            watchers.push(watch_stream(stream, seen.clone(), stop.clone()).await?);
        }
        watchers.push(watch_acks(&namespace, seen.clone(), stop.clone()).await?);
        if options.store == "mongo" {
            let client = mongodb::Client::with_uri_str(mongodb_url()).await?;
            for app in APPS {
                let mongo_db = unique_name();
                let port = free_port()?;
                let mut env = app_env(&common, &mongo_db, &wrapper_url, SECRET);
                let listen = if app == "crm" {
                    "CRM_LISTEN"
                } else {
                    "HRMS_LISTEN"
                };
                env.push((listen, format!("127.0.0.1:{port}")));
                processes.push(spawn(&bin(app), &[], &env, app)?);
                let url = format!("http://127.0.0.1:{port}");
                healthy(&http, &url, app).await?;
                // The first visit of each tenant loads it (the lazy load).
                let path = if app == "crm" {
                    "/accounts"
                } else {
                    "/employees"
                };
                for (_, subdomain, token) in &tenants {
                    let response = http
                        .get(format!("{url}{path}"))
                        .bearer_auth(token)
                        .header("X-Tenant", subdomain)
                        .send()
                        .await?;
                    anyhow::ensure!(
                        response.status().is_success(),
                        "{app}{path} as {subdomain}: {}",
                        response.status()
                    );
                }
                app_urls.push(url);
            }
            mongo = Some(client);
        } else {
            for app in APPS {
                let store_db = fresh_database().await?;
                let store = Arc::new(PostgresStore::new(store_db.pool.clone()));
                store.init().await?;
                let loader = Loader::new(
                    WrapperClient::new(WrapperConfig {
                        base_url: wrapper_url.clone(),
                        client_id: app.into(),
                        client_secret: SECRET.into(),
                        page_size: 5_000,
                        timeout: Duration::from_secs(30),
                    }),
                    store,
                );
                for (tenant, _, _) in &tenants {
                    loader.ensure_tenant(*tenant).await?;
                }
                let mut env = common.clone();
                env.extend([
                    ("DATABASE_URL", store_db.url.clone()),
                    ("TSYNC_APP", app.to_owned()),
                    ("HANDLER_DELAY_MS", "0".to_owned()),
                ]);
                processes.push(spawn(&bin("replica"), &["consume"], &env, app)?);
                app_dbs.push(store_db);
            }
        }
        Ok(Self {
            http,
            wrapper_url,
            targets: Arc::new(targets),
            seen,
            counter: Arc::new(AtomicU64::new(0)),
            mongo,
            app_dbs,
            app_urls,
            stop,
            watchers,
            _processes: processes,
            _db: db,
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        for w in self.watchers {
            let _ = w.await;
        }
    }

    /// Per app: the sums and counts of its consumer's lookup and store-write histograms.
    async fn consumer_metrics(&self) -> anyhow::Result<Vec<[f64; 4]>> {
        let mut out = Vec::new();
        for url in &self.app_urls {
            let text = self
                .http
                .get(format!("{url}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            let value = |name: &str| {
                text.lines()
                    .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            };
            out.push([
                value("tsync_consumer_lookup_seconds_sum"),
                value("tsync_consumer_lookup_seconds_count"),
                value("tsync_consumer_apply_seconds_sum"),
                value("tsync_consumer_apply_seconds_count"),
            ]);
        }
        Ok(out)
    }

    /// The servers' counters now.
    async fn counters(&self) -> anyhow::Result<Counters> {
        let mut c = Counters::default();
        if let Some(mongo) = &self.mongo {
            let status = mongo
                .database("admin")
                .run_command(doc! {"serverStatus": 1})
                .await?;
            let number = |d: &Document, key: &str| {
                d.get(key)
                    .and_then(|v| {
                        v.as_i64()
                            .or_else(|| v.as_i32().map(i64::from))
                            .or_else(|| v.as_f64().map(|f| f as i64))
                    })
                    .unwrap_or(0) as f64
            };
            let network = status.get_document("network")?;
            let ops = status.get_document("opcounters")?;
            c.store_requests = number(network, "numRequests");
            c.store_statements = ["insert", "query", "update", "delete"]
                .iter()
                .map(|k| number(ops, k))
                .sum();
        } else {
            for db in &self.app_dbs {
                let commits: i64 = sqlx::query_scalar(
                    "select xact_commit from pg_stat_database where datname = current_database()",
                )
                .fetch_one(&db.pool)
                .await?;
                c.store_requests += commits as f64;
            }
        }
        let redis = redis_client(&redis_url()).await?;
        let stats: String = redis
            .info(Some(fred::types::InfoKind::CommandStats))
            .await?;
        for line in stats.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            if ["xreadgroup", "xack", "xpending", "xclaim", "xautoclaim"].contains(&name) {
                let calls = rest
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
                c.redis_reads += calls;
            }
        }
        let _ = redis.quit().await;
        Ok(c)
    }

    /// One phase of `kind` for `duration` (singles: until done); then wait until every answered
    /// write is visible in every app (120 s at most).
    async fn load(&self, kind: LoadKind, duration: Duration) -> anyhow::Result<Phase> {
        let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let rest = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
            1,
            600_000_000,
            3,
        )?));
        let errors = Arc::new(AtomicU64::new(0));
        let before = self.counters().await?;
        let metrics_before = self.consumer_metrics().await?;
        let started = Instant::now();
        let stop_sampling = CancellationToken::new();
        let sampler = {
            let (sent, seen, stop) = (sent.clone(), self.seen.clone(), stop_sampling.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.is_cancelled() {
                    let names: Vec<String> = sent.lock().unwrap().keys().cloned().collect();
                    let backlog = names.iter().filter(|n| !seen.everywhere(n)).count();
                    samples.push((started.elapsed().as_secs_f64(), backlog));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                samples
            })
        };
        let writer = Writer {
            url: self.wrapper_url.clone(),
            http: self.http.clone(),
            targets: self.targets.clone(),
            counter: self.counter.clone(),
            sent: sent.clone(),
            rest: rest.clone(),
            errors: errors.clone(),
        };
        let mut tasks = tokio::task::JoinSet::new();
        let (name, offered) = match kind {
            LoadKind::Singles(n) => {
                for _ in 0..n {
                    if let Some(name) = writer.write_once().await {
                        let seen = self.seen.clone();
                        let visible = eventually_notified(&seen, Duration::from_secs(30), || {
                            seen.everywhere(&name)
                        });
                        if !visible.await {
                            anyhow::bail!("a single change was not visible in both apps in 30 s");
                        }
                    }
                    // Idle between changes: nothing else is in flight when the next one starts.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                ("single changes".to_owned(), "one at a time".to_owned())
            }
            LoadKind::Rate(rate) => {
                let mut n = 0u64;
                loop {
                    let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate));
                    if due >= started + duration {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    let writer = writer.clone();
                    tasks.spawn(async move {
                        writer.write_once().await;
                    });
                    n += 1;
                }
                (format!("{rate}/s"), format!("{rate}/s"))
            }
            LoadKind::Closed(writers) => {
                for _ in 0..writers {
                    let writer = writer.clone();
                    tasks.spawn(async move {
                        while started.elapsed() < duration {
                            writer.write_once().await;
                        }
                    });
                }
                ("max (burst)".to_owned(), format!("{writers} writers"))
            }
        };
        while tasks.join_next().await.is_some() {}
        let load_ended = Instant::now();
        let answered = sent.lock().unwrap().len();
        let achieved = answered as f64 / load_ended.duration_since(started).as_secs_f64();
        let names: Vec<String> = sent.lock().unwrap().keys().cloned().collect();
        let seen = self.seen.clone();
        let converged = eventually_notified(&seen, Duration::from_secs(120), || {
            names.iter().all(|n| seen.everywhere(n))
        })
        .await
        .then(|| load_ended.elapsed());
        stop_sampling.cancel();
        let backlog = sampler.await?;
        if converged.is_none() {
            let missing: Vec<&String> = names.iter().filter(|n| !self.seen.everywhere(n)).collect();
            let in_stream = self.seen.in_stream.lock().unwrap();
            let unseen = missing
                .iter()
                .filter(|n| !in_stream.contains_key(**n))
                .count();
            let per_app: Vec<usize> = self
                .seen
                .apps
                .iter()
                .map(|a| {
                    let a = a.lock().unwrap();
                    missing.iter().filter(|n| !a.contains_key(**n)).count()
                })
                .collect();
            eprintln!(
                "  not converged: {} writes missing (per app {per_app:?}), {unseen} of them never seen in a stream",
                missing.len()
            );
        }
        let after = self.counters().await?;
        let metrics_after = self.consumer_metrics().await?;
        let consumer = metrics_after
            .iter()
            .zip(&metrics_before)
            .map(|(a, b)| {
                let d: Vec<f64> = a.iter().zip(b).map(|(a, b)| a - b).collect();
                (d[1] > 0.0 && d[3] > 0.0)
                    .then(|| (1000.0 * d[0] / d[1], 1000.0 * d[2] / d[3], d[3]))
            })
            .collect();
        let mut in_stream = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        {
            let sent = sent.lock().unwrap();
            let stream = self.seen.in_stream.lock().unwrap();
            for (name, answered_at) in sent.iter() {
                if let Some(at) = stream.get(name) {
                    let us = at.saturating_duration_since(*answered_at).as_micros() as u64;
                    in_stream.record(us.max(1))?;
                }
            }
        }
        let mut applied = vec![Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?; APPS.len()];
        let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        {
            let sent = sent.lock().unwrap();
            let stamps: Vec<_> = self.seen.apps.iter().map(|a| a.lock().unwrap()).collect();
            for (name, answered_at) in sent.iter() {
                let mut last = Some(*answered_at);
                for (i, stamps) in stamps.iter().enumerate() {
                    match stamps.get(name) {
                        Some(at) => {
                            let us = at.saturating_duration_since(*answered_at).as_micros() as u64;
                            applied[i].record(us.max(1))?;
                            last = last.map(|l| l.max(*at));
                        }
                        None => last = None,
                    }
                }
                if let Some(last) = last {
                    let us = last.saturating_duration_since(*answered_at).as_micros() as u64;
                    all.record(us.max(1))?;
                }
            }
        }
        let events = (answered * APPS.len()) as f64;
        let rest = rest.lock().unwrap().clone();
        let phase = Phase {
            name,
            offered,
            answered,
            achieved,
            errors: errors.load(Ordering::SeqCst),
            rest,
            applied,
            all,
            converged,
            in_stream,
            consumer,
            backlog,
            cost: Cost {
                events,
                store_requests: after.store_requests - before.store_requests - 1.0,
                store_statements: after.store_statements - before.store_statements,
                redis_reads: after.redis_reads - before.redis_reads,
            },
        };
        eprintln!(
            "  {}: {} writes, visible in both apps p50 {:.1} ms, p99 {:.1} ms",
            phase.name,
            phase.answered,
            phase.all.value_at_quantile(0.5) as f64 / 1000.0,
            phase.all.value_at_quantile(0.99) as f64 / 1000.0
        );
        Ok(phase)
    }
}

/// Wait until `done()` holds, checking whenever a watcher stamps a write; false after `limit`.
async fn eventually_notified(seen: &Seen, limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let changed = seen.changed.notified();
        if done() {
            return true;
        }
        // A stamp between the check and the wait is not missed: `notified` was created first
        // and the timeout bounds the wait anyway.
        tokio::select! {
            _ = changed => {},
            _ = tokio::time::sleep(Duration::from_millis(50)) => {},
        }
        if tokio::time::Instant::now() >= deadline {
            return done();
        }
    }
}

/// Stamp every write's entry when it appears in `stream`.
async fn watch_stream(
    stream: String,
    seen: Arc<Seen>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let redis = redis_client(&redis_url()).await?;
    let name = stream.clone();
    crate::follow_stream(redis, stream, stop, move |id, envelope, at| {
        if let sync_sdk::contract::Event::UserUpdated(user) = envelope.event {
            seen.in_stream(format!("{name} {id}"), user.full_name, at);
        }
    })
    .await
}

/// Stamp each app's acknowledgements of the namespace's stream entries, from Redis `MONITOR`
/// (every command the server runs, as it runs it; a few thousand a second here).
async fn watch_acks(
    namespace: &str,
    seen: Arc<Seen>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let url = redis_url();
    let address = url
        .strip_prefix("redis://")
        .context("bench e2e needs a redis:// REDIS_URL (one server, for MONITOR)")?
        .split(['/', '?'])
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut connection = tokio::net::TcpStream::connect(&address).await?;
    connection.write_all(b"MONITOR\r\n").await?;
    let mut lines = BufReader::new(connection).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    anyhow::ensure!(first == "+OK", "MONITOR at {address}: {first}");
    let prefix = format!("\"{namespace}");
    Ok(tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                _ = stop.cancelled() => return,
                line = lines.next_line() => line,
            };
            let Ok(Some(line)) = line else {
                eprintln!("bench: MONITOR ended");
                return;
            };
            let now = Instant::now();
            // +<time> [<db> <client>] "XACK" "<stream>" "<group>" "<id>" ...
            let Some((_, command)) = line.split_once("] ") else {
                continue;
            };
            if !command.starts_with("\"XACK\" ") && !command.starts_with("\"xack\" ") {
                continue;
            }
            let words: Vec<&str> = command.split(' ').map(|w| w.trim_matches('"')).collect();
            if words.len() < 4 || !command[7..].starts_with(&prefix) {
                continue;
            }
            let Some(app) = APPS.iter().position(|a| *a == words[2]) else {
                continue;
            };
            for id in &words[3..] {
                seen.acked(app, format!("{} {id}", words[1]), now);
            }
        }
    }))
}

#[derive(Clone)]
struct Writer {
    url: String,
    http: reqwest::Client,
    targets: Arc<Vec<Target>>,
    counter: Arc<AtomicU64>,
    sent: Arc<Mutex<HashMap<String, Instant>>>,
    rest: Arc<Mutex<Histogram<u64>>>,
    errors: Arc<AtomicU64>,
}

impl Writer {
    /// One PATCH of a user's `fullName` to a new unique name; the name when it was answered 2xx.
    async fn write_once(&self) -> Option<String> {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let target = &self.targets[n as usize % self.targets.len()];
        let name = format!("w{n}");
        let started = Instant::now();
        let response = self
            .http
            .patch(format!(
                "{}/api/tenants/{}/users/{}",
                self.url, target.tenant, target.user
            ))
            .bearer_auth(&target.token)
            .json(&json!({"fullName": name}))
            .send()
            .await;
        let answered = Instant::now();
        match response {
            Ok(r) if r.status().is_success() => {
                let us = answered.duration_since(started).as_micros() as u64;
                let _ = self.rest.lock().unwrap().record(us.max(1));
                self.sent.lock().unwrap().insert(name.clone(), answered);
                Some(name)
            }
            _ => {
                self.errors.fetch_add(1, Ordering::SeqCst);
                None
            }
        }
    }
}
