//! `bench e2e`: REST write → change applied in the app's store, through the real wrapper (its
//! REST API, outbox and relay), Redis and the SDK consumer with the lazy loader.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use sync_sdk::{
    consumer::{Consumer, ConsumerConfig, NoHandler},
    contract::{Envelope, Event, StreamKeys},
    loader::{Loader, WrapperClient, WrapperConfig},
    store::{
        Applied, EntityKind, SnapshotItem, StoreError, SyncState, TenantStore, Versioned,
        mongo::MongoStore, postgres::PostgresStore,
    },
};
use sync_testkit::*;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// When each write (by its unique `fullName`) was committed in the app's store.
type Stamps = Arc<Mutex<HashMap<String, Instant>>>;

/// A store that stamps every `user.updated` it commits.
struct Timed<S> {
    inner: S,
    applied: Stamps,
}

impl<S: TenantStore> TenantStore for Timed<S> {
    async fn sync_state(&self, t: Uuid) -> Result<Option<SyncState>, StoreError> {
        self.inner.sync_state(t).await
    }
    async fn mark_loaded(&self, t: Uuid, w: i64) -> Result<(), StoreError> {
        self.inner.mark_loaded(t, w).await
    }
    async fn mark_loading(&self, t: Uuid) -> Result<(), StoreError> {
        self.inner.mark_loading(t).await
    }
    async fn upsert_many(&self, t: Uuid, items: Vec<SnapshotItem>) -> Result<(), StoreError> {
        self.inner.upsert_many(t, items).await
    }
    async fn loaded_tenants(&self) -> Result<Vec<Uuid>, StoreError> {
        self.inner.loaded_tenants().await
    }
    async fn loaded_count(&self) -> Result<u64, StoreError> {
        self.inner.loaded_count().await
    }
    async fn versions(&self, t: Uuid, k: EntityKind) -> Result<Vec<(Uuid, i64)>, StoreError> {
        self.inner.versions(t, k).await
    }
    async fn is_processed(&self, id: Uuid) -> Result<bool, StoreError> {
        self.inner.is_processed(id).await
    }
    async fn processed_among(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashSet<Uuid>, StoreError> {
        self.inner.processed_among(ids).await
    }
    async fn sync_states(&self, ts: &[Uuid]) -> Result<HashMap<Uuid, SyncState>, StoreError> {
        self.inner.sync_states(ts).await
    }
    async fn apply_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Applied>, StoreError> {
        let outcomes = self.inner.apply_batch(envelopes).await?;
        let now = Instant::now();
        let mut applied = self.applied.lock().unwrap();
        for e in envelopes {
            if let Event::UserUpdated(user) = &e.event {
                applied.entry(user.full_name.clone()).or_insert(now);
            }
        }
        Ok(outcomes)
    }
    async fn get(&self, k: EntityKind, t: Uuid, id: Uuid) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(k, t, id).await
    }
    async fn page(
        &self,
        k: EntityKind,
        t: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<(Uuid, Versioned)>, StoreError> {
        self.inner.page(k, t, after, limit).await
    }
    async fn credit_cost(&self, t: Uuid, a: &str, o: &str) -> Result<Option<i64>, StoreError> {
        self.inner.credit_cost(t, a, o).await
    }
    async fn memberships_of(&self, t: Uuid, u: Uuid) -> Result<Vec<serde_json::Value>, StoreError> {
        self.inner.memberships_of(t, u).await
    }
}

/// One phase of load: its name, the writes' response times, and backlog samples.
struct Phase {
    name: String,
    /// (seconds since the phase started, writes answered but not yet applied).
    backlog: Vec<(f64, usize)>,
    offered: Option<u32>,
    achieved: f64,
    errors: u64,
    catch_up: Option<Duration>,
    latency: Histogram<u64>,
}

struct Target {
    tenant: Uuid,
    user: Uuid,
    token: String,
}

/// `bench e2e [--store postgres|mongo] [--rates 100,200,400] [--seconds 15] [--burst 30]`.
pub async fn e2e(args: &[String]) -> anyhow::Result<()> {
    let arg = |name: &str| super::flag(args, name);
    let store = arg("--store").unwrap_or("postgres");
    let rates: Vec<u32> = arg("--rates")
        .unwrap_or("100,200,400")
        .split(',')
        .filter_map(|r| r.parse().ok())
        .collect();
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(15);
    let burst: u64 = arg("--burst").and_then(|s| s.parse().ok()).unwrap_or(30);
    let applied: Stamps = Arc::default();
    match store {
        "postgres" => {
            let db = fresh_database().await?;
            let pg = PostgresStore::new(db.pool.clone());
            pg.init().await?;
            let timed = Timed {
                inner: pg,
                applied: applied.clone(),
            };
            run(store, timed, applied, &rates, seconds, burst).await
        }
        "mongo" => {
            let mongo = MongoStore::new(fresh_mongo().await?);
            mongo.init().await?;
            let timed = Timed {
                inner: mongo,
                applied: applied.clone(),
            };
            run(store, timed, applied, &rates, seconds, burst).await
        }
        other => anyhow::bail!("--store postgres|mongo, not {other}"),
    }
}

async fn run<S: TenantStore>(
    label: &str,
    store: Timed<S>,
    applied: Stamps,
    rates: &[u32],
    seconds: u64,
    burst: u64,
) -> anyhow::Result<()> {
    let wrapper = tsync_e2e::wrapper_app::spawn_wrapper().await?;
    let secret = "bench-service-secret-long-enough";
    wrapper::startup::upsert_service_client(&wrapper.db.pool, "crm", secret).await?;
    let mut targets = Vec::new();
    for i in 0..20 {
        let t = wrapper.create_tenant(&format!("e2e{i}")).await;
        for u in 0..5 {
            let (user, _) = wrapper
                .create_member(&t, &format!("u{u}@e2e{i}.test"))
                .await;
            targets.push(Target {
                tenant: t.id,
                user,
                token: t.admin.clone(),
            });
        }
    }
    let store = Arc::new(store);
    let loader = Loader::new(
        WrapperClient::new(WrapperConfig {
            base_url: wrapper.url.clone(),
            client_id: "crm".into(),
            client_secret: secret.into(),
            page_size: 5_000,
            timeout: Duration::from_secs(30),
        }),
        store.clone(),
    );
    let keys = StreamKeys::new(
        wrapper.state.settings.namespace.clone(),
        wrapper.state.settings.partitions,
    )
    .unwrap();
    let mut config = ConsumerConfig::new("crm", keys);
    config.resync = Some(loader.resync_hook());
    let consumer = Consumer::new(
        redis_client(&redis_url()).await?,
        store.clone(),
        Arc::new(NoHandler),
        config,
    );
    let cancel = CancellationToken::new();
    let running = tokio::spawn(consumer.run(cancel.clone()));
    for t in targets.iter().step_by(5) {
        loader.ensure_tenant(t.tenant).await?;
    }
    let targets = Arc::new(targets);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let counter = Arc::new(AtomicU64::new(0));
    println!(
        "bench e2e, app store {label}: 20 tenants x 5 users, PATCH fullName through the wrapper's REST API"
    );
    let mut phases = Vec::new();
    for &rate in rates {
        let load = Load::new(&wrapper.url, &http, &targets, &counter, &applied);
        phases.push(
            load.run(
                format!("{rate}/s"),
                Some(rate),
                Duration::from_secs(seconds),
            )
            .await?,
        );
    }
    let load = Load::new(&wrapper.url, &http, &targets, &counter, &applied);
    phases.push(
        load.run("max (burst)".into(), None, Duration::from_secs(burst))
            .await?,
    );
    println!(
        "| phase | offered | answered/s | errors | p50 | p95 | p99 | max | catch-up after the load |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for p in &phases {
        let ms = |q: f64| p.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {} | {} | {:.0} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
            p.name,
            p.offered
                .map_or("closed loop, 64 writers".into(), |r| format!("{r}/s")),
            p.achieved,
            p.errors,
            ms(0.5),
            ms(0.95),
            ms(0.99),
            p.latency.max() as f64 / 1000.0,
            p.catch_up
                .map_or("not caught up in 120 s".into(), |d| format!(
                    "{:.2} s",
                    d.as_secs_f64()
                )),
        );
    }
    crate::plots::e2e(label, &phases_for_plot(&phases))?;
    cancel.cancel();
    running.await??;
    Ok(())
}

fn phases_for_plot(phases: &[Phase]) -> Vec<crate::plots::Series> {
    phases
        .iter()
        .map(|p| crate::plots::Series {
            name: p.name.clone(),
            backlog: p.backlog.clone(),
            percentiles: [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0]
                .iter()
                .map(|q| (*q, p.latency.value_at_quantile(q / 100.0) as f64 / 1000.0))
                .collect(),
        })
        .collect()
}

struct Load<'a> {
    url: &'a str,
    http: &'a reqwest::Client,
    targets: &'a Arc<Vec<Target>>,
    counter: &'a Arc<AtomicU64>,
    applied: &'a Stamps,
}

impl<'a> Load<'a> {
    fn new(
        url: &'a str,
        http: &'a reqwest::Client,
        targets: &'a Arc<Vec<Target>>,
        counter: &'a Arc<AtomicU64>,
        applied: &'a Stamps,
    ) -> Self {
        Self {
            url,
            http,
            targets,
            counter,
            applied,
        }
    }

    /// Writes at `rate` per second (open loop), or as fast as 64 writers go (closed loop), for
    /// `duration`; then waits for every answered write to be applied.
    async fn run(
        &self,
        name: String,
        rate: Option<u32>,
        duration: Duration,
    ) -> anyhow::Result<Phase> {
        let sent: Stamps = Arc::default();
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let stop_sampling = CancellationToken::new();
        let sampler = {
            let (sent, applied, stop) = (sent.clone(), self.applied.clone(), stop_sampling.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while !stop.is_cancelled() {
                    let backlog = {
                        let sent = sent.lock().unwrap();
                        let applied = applied.lock().unwrap();
                        sent.keys().filter(|k| !applied.contains_key(*k)).count()
                    };
                    samples.push((started.elapsed().as_secs_f64(), backlog));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                samples
            })
        };
        let mut tasks = tokio::task::JoinSet::new();
        match rate {
            Some(rate) => {
                let mut n = 0u64;
                loop {
                    let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate));
                    if due >= started + duration {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    tasks.spawn(self.write(sent.clone(), errors.clone()));
                    n += 1;
                }
            }
            None => {
                for _ in 0..64 {
                    let (load, sent, errors) = (self.owned(), sent.clone(), errors.clone());
                    tasks.spawn(async move {
                        while started.elapsed() < duration {
                            load.write_once(&sent, &errors).await;
                        }
                    });
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        let load_ended = Instant::now();
        let answered = sent.lock().unwrap().len();
        let achieved = answered as f64 / load_ended.duration_since(started).as_secs_f64();
        let deadline = load_ended + Duration::from_secs(120);
        let mut caught_up = None;
        while Instant::now() < deadline {
            let all = {
                let sent = sent.lock().unwrap();
                let applied = self.applied.lock().unwrap();
                sent.keys().all(|k| applied.contains_key(k))
            };
            if all {
                caught_up = Some(load_ended.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop_sampling.cancel();
        let backlog = sampler.await?;
        let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        {
            let sent = sent.lock().unwrap();
            let applied = self.applied.lock().unwrap();
            for (name, answered_at) in sent.iter() {
                if let Some(at) = applied.get(name) {
                    let us = at.saturating_duration_since(*answered_at).as_micros() as u64;
                    latency.record(us.max(1))?;
                }
            }
        }
        Ok(Phase {
            name,
            backlog,
            offered: rate,
            achieved,
            errors: errors.load(Ordering::SeqCst),
            catch_up: caught_up,
            latency,
        })
    }

    fn owned(&self) -> OwnedLoad {
        OwnedLoad {
            url: self.url.to_owned(),
            http: self.http.clone(),
            targets: self.targets.clone(),
            counter: self.counter.clone(),
        }
    }

    fn write(
        &self,
        sent: Stamps,
        errors: Arc<AtomicU64>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let load = self.owned();
        async move { load.write_once(&sent, &errors).await }
    }
}

struct OwnedLoad {
    url: String,
    http: reqwest::Client,
    targets: Arc<Vec<Target>>,
    counter: Arc<AtomicU64>,
}

impl OwnedLoad {
    async fn write_once(&self, sent: &Stamps, errors: &AtomicU64) {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let target = &self.targets[n as usize % self.targets.len()];
        let name = format!("w{n}");
        let resp = self
            .http
            .patch(format!(
                "{}/api/tenants/{}/users/{}",
                self.url, target.tenant, target.user
            ))
            .bearer_auth(&target.token)
            .json(&serde_json::json!({"fullName": name}))
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                sent.lock().unwrap().insert(name, Instant::now());
            }
            _ => {
                errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
